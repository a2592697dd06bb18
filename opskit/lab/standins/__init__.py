"""Stand-ins for the outside world of the lab, each run as ``python -m opskit.lab.standins.<name>``;
their registry is opskit.lab.registry."""
