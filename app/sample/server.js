// The opskit sample app: a small HTTP server for the lab and the tests.
//   GET /        {"app", "version", "release", "pid", "uptime"}  (the version comes from VERSION)
//   GET /health  200 {"status":"healthy"}, or 503 {"status":"unhealthy"} when the release holds a
//                file named BROKEN (how the lab builds a release that fails its health check)
//   GET /upload-count  {"uploads": N}: how many entries uploads/ holds (inventories/lab.yml
//                shares it between releases: app_shared_paths), null when the release has none
//   GET /ws      answers a websocket upgrade with 101 and echoes, for the proxy's websocket test
// A release holding a file named SLOW (a number of seconds) starts listening only that long
// after it started: how the lab builds a release that is slow to start but healthy.
// It listens on HOST:PORT (127.0.0.1:3000 by default) and stops gracefully on SIGINT/SIGTERM.
"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");
const ms = require("ms"); // the app's one npm dependency: proves the release installed them
const admin = require("./admin"); // toggles and killswitch (admin.js)

const HOST = process.env.HOST || "127.0.0.1";
const PORT = Number(process.env.PORT || 3000);
const here = __dirname; // the real release directory (node resolves the `current` symlink)

function readText(name, fallback) {
  try {
    return fs.readFileSync(path.join(here, name), "utf8").trim();
  } catch {
    return fallback;
  }
}

const VERSION = readText("VERSION", "unknown");
const BROKEN = fs.existsSync(path.join(here, "BROKEN"));
const SLOW = Number(readText("SLOW", "0")) || 0;
const started = Date.now();

function send(res, code, body) {
  const text = JSON.stringify(body) + "\n";
  res.writeHead(code, { "Content-Type": "application/json", "Cache-Control": "no-store" });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const url = req.url.split("?")[0];
  if (admin.handle(req, res, url, send)) return;
  if (url === "/health") {
    if (BROKEN) return send(res, 503, { status: "unhealthy", reason: readText("BROKEN", "") });
    return send(res, 200, { status: "healthy" });
  }
  if (url === "/upload-count") {
    let count = null;
    try {
      count = fs.readdirSync(path.join(here, "uploads")).length;
    } catch {
      // no uploads/ in this release
    }
    return send(res, 200, { uploads: count });
  }
  if (url === "/" || url === "/version") {
    return send(res, 200, {
      app: "opskit-sample-app",
      version: VERSION,
      release: path.basename(here),
      sentry_release: process.env.SENTRY_RELEASE || null,
      environment: process.env.SENTRY_ENVIRONMENT || null,
      greeting: process.env.GREETING || null,
      pid: process.pid,
      uptime: ms(Date.now() - started),
    });
  }
  return send(res, 404, { error: "not found", path: url });
});

// A minimal websocket-style upgrade: enough to prove the proxy passes Upgrade/Connection.
server.on("upgrade", (req, socket) => {
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
  );
  socket.on("data", (data) => socket.write(data));
  socket.on("error", () => socket.destroy());
});

server.keepAliveTimeout = 5000;
setTimeout(() => {
  server.listen(PORT, HOST, () => {
    console.log(`opskit sample app ${VERSION} listening on ${HOST}:${PORT} (pid ${process.pid})`);
  });
}, SLOW * 1000);

function stop(signal) {
  console.log(`${signal}: closing the server`);
  server.close(() => process.exit(0));
  server.closeIdleConnections(); // idle keep-alive connections (nginx's) would hold close() up
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on("SIGINT", () => stop("SIGINT"));
process.on("SIGTERM", () => stop("SIGTERM"));
