"""The role author's API: every resource kind a role declares, from one import.

`from opskit.resources import File, Template, Service, CronEntry` -- the kinds live in files.py,
system.py and cron.py; the base (Resource, Plan) in opskit.core.resource, which the engine uses.
"""

from opskit.core.resource import (
    BACKUP_DIR,
    DIFF_LIMIT,
    NOTHING,
    Plan,
    Resource,
    backup_path,
    ids,
    q,
    unified_diff,
)
from opskit.resources.cron import CronEntry
from opskit.resources.files import (
    Absent,
    Directory,
    File,
    FileState,
    HostProgram,
    Line,
    Symlink,
    Template,
    parse_stat,
)
from opskit.resources.system import (
    Command,
    DaemonReload,
    Packages,
    Service,
    User,
)

__all__ = [
    "BACKUP_DIR",
    "DIFF_LIMIT",
    "NOTHING",
    "Absent",
    "Command",
    "CronEntry",
    "DaemonReload",
    "Directory",
    "File",
    "FileState",
    "HostProgram",
    "Line",
    "Packages",
    "Plan",
    "Resource",
    "Service",
    "Symlink",
    "Template",
    "User",
    "backup_path",
    "ids",
    "parse_stat",
    "q",
    "unified_diff",
]
