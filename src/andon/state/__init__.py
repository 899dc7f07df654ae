"""Process, fd, container and user state: what turns a raw event into Falco's fields.

- :mod:`.process`: :class:`ProcessTable` (seeded from /proc, kept true by events), :class:`Process`
- :mod:`.fd`: per-process :class:`FdTable` of :class:`FdInfo` (``fd.*`` fields)
- :mod:`.container`: container id from cgroups, metadata from the runtime (:class:`ContainerRegistry`)
- :mod:`.users`: uid/gid -> names (:class:`UserDb`)

Pure Python: the only things read are /proc, /etc and the container runtime.
"""

from .container import ContainerInfo, ContainerRegistry, ContainerSettings, container_id_from_cgroup, match_cgroup
from .fd import FdInfo, FdTable
from .process import Process, ProcessTable, StateSettings
from .users import UserDb

__all__ = [
    "ContainerInfo",
    "ContainerRegistry",
    "ContainerSettings",
    "FdInfo",
    "FdTable",
    "Process",
    "ProcessTable",
    "StateSettings",
    "UserDb",
    "container_id_from_cgroup",
    "match_cgroup",
]
