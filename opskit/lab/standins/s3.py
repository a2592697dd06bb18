"""The lab's S3: moto's server, on the bridge address (never a wildcard), requests not logged.

Run as ``python -m opskit.lab.standins.s3 --listen ADDR --port N``. State is in memory: buckets and
objects last as long as the process (``inv lab.down`` forgets them). Lab hosts and the laptop
reach it at ``http://<gateway>:<port>`` (``backup_s3_endpoint`` in the lab inventory); moto
accepts any credentials, which the lab still passes as secrets (lab secrets file). moto's server
mode: https://docs.getmoto.org/en/latest/docs/server_mode.html.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address (the bridge's or 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.listen in ("0.0.0.0", "::", ""):
        parser.error("refusing to listen on a wildcard address")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request is noise
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.listen, port=args.port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
