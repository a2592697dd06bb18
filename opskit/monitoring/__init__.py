"""Monitoring from the laptop: UptimeRobot monitors and Sentry alert rules as code, Sentry
releases for deploys, and the hosts' health checks on demand.

`inv monitoring.sync` reads what the inventory declares (declared.py: the `healthcheck_*`
variables of the hosts with the healthcheck role), reads what the services have, and plans
(pure: monitors.py, rules.py) which monitors and rules to create, update or delete; `--apply`
carries the plan out (sync.py). releases.py records deploys in Sentry; health.py runs or reads
the health check (opskit.hostside.healthcheck) on the hosts; spec.py is what the role shares.
"""
