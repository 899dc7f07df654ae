"""Enrichment: each event with the process, fd, user and container it belongs to.

One :class:`Tracker` owns the process table, the container registry and the user
database. ``tracker(ev)`` applies the event to the tables and returns a
:class:`Context` for consumers (the printer now, the rule engine later). The fd an
event names is looked up *before* the event is applied, so ``close`` still knows what
it closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events.format import s32
from ..events.schema import Event, EventType
from ..events.syscalls import BY_NR
from ..state.container import ContainerInfo, ContainerRegistry, ContainerSettings
from ..state.fd import FdInfo
from ..state.process import Process, ProcessTable, StateSettings
from ..state.hosts import HostNames
from ..state.users import UserDb

# syscalls whose raw arg 0 is an fd worth resolving to its name
_FD_ARG0 = frozenset(
    nr for nr, s in BY_NR.items() if s.params and s.params[0] in ("fd", "oldfd") and s.category in ("fd", "net", "file")
)


@dataclass(slots=True)
class Context:
    """What andon knows about an event beyond the record itself."""

    proc: Process | None
    fd: FdInfo | None
    tracker: Tracker
    num: int = 0  # Falco's evt.num: this event's number in the tracker's stream (from 1)

    # -- the names the printer and JSON use ------------------------------------------------
    @property
    def ppid(self) -> int | None:
        return self.proc.ppid if self.proc is not None else None

    @property
    def exepath(self) -> str | None:
        return self.proc.exepath if self.proc is not None else None

    @property
    def cmdline(self) -> str | None:
        return self.proc.cmdline if self.proc is not None else None

    @property
    def cwd(self) -> str | None:
        return self.proc.cwd if self.proc is not None else None

    @property
    def user(self) -> str | None:
        if self.proc is None:
            return None
        root, key = self.tracker.users.for_process(self.proc)
        return self.tracker.users.user_name(self.proc.uid, root, key)

    @property
    def container_id(self) -> str:
        return self.proc.container_id if self.proc is not None else "host"

    @property
    def container(self) -> ContainerInfo | None:
        if self.proc is None or not self.proc.container:
            return None
        return self.tracker.containers.get(self.proc.container)

    @property
    def container_name(self) -> str | None:
        c = self.container
        return c.name if c is not None else None

    @property
    def container_image(self) -> str | None:
        c = self.container
        return c.image if c is not None else None

    @property
    def fd_name(self) -> str | None:
        return self.fd.name if self.fd is not None else None


class Tracker:
    """Process, fd, container and user state for a stream of events."""

    def __init__(
        self,
        *,
        boot_offset: int = 0,
        offline: bool = False,
        snapshot: dict[str, Any] | None = None,
        container_lookups: bool = True,
    ) -> None:
        settings = StateSettings(proc_root=None) if offline else StateSettings()
        self.containers = ContainerRegistry(ContainerSettings(lookups=container_lookups and not offline))
        if snapshot:
            self.table = ProcessTable.restore(snapshot, settings, containers=self.containers)
        else:
            self.table = ProcessTable(settings, boot_offset=boot_offset, containers=self.containers)
        self.users = UserDb()
        # fd.*ip.name: /etc/hosts of this machine live; nothing when replaying elsewhere
        self.dns_names = HostNames() if not offline else None
        self.nevents = 0  # events seen, for evt.num

    def seed(self) -> int:
        """Read /proc. Call after the sensor is attached, so nothing falls in between."""
        return self.table.seed_from_proc()

    def __call__(self, ev: Event) -> Context:
        t = self.table
        fd = None
        if ev.type == EventType.SYSCALL and ev.nr in _FD_ARG0:
            fd = t.fd_info(ev.pid, s32(ev.args[0]))
        t.apply(ev)
        proc = t.for_event(ev)
        if fd is None and ev.type == EventType.SYSCALL and ev.ret >= 0:
            spec = BY_NR.get(ev.nr)
            if spec is not None and spec.returns_fd:
                fd = t.fd_info(ev.pid, ev.ret)
        self.nevents += 1
        return Context(proc, fd, self, self.nevents)

    def snapshot(self) -> dict[str, Any]:
        return self.table.snapshot()

    def close(self) -> None:
        self.containers.close()
