"""The benchmark: opskit, Ansible and pyinfra converge the same slice on the same lab hosts.

`bench/run` (or `.venv/bin/python -m bench`) is the one command; bench/README.md explains it and
bench/RESULTS.md holds the last full run.
"""
