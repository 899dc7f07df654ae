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

# how long an alert that needs a container's metadata waits for a lookup under way: podman
# inspect answers in 100-300 ms, and the runtime's create event usually starts it earlier
CONTAINER_WAIT = 0.5

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
        """Read /proc. Call after the sensor is attached, so nothing falls in between.
        Live, this also starts following the container runtimes' event streams."""
        self.containers.watch()
        return self.table.seed_from_proc()

    def pending_container(self, ctx: Context) -> str:
        """The full id of the event's container when its metadata is not known yet but
        an answer is on its way (a lookup running, or further on in a capture); else ""."""
        p = ctx.proc
        if p is None or not p.container:
            return ""
        return p.container if self.containers.pending(p.container) else ""

    def await_container(self, cid: str, timeout: float = CONTAINER_WAIT) -> bool:
        """Wait, at most ``timeout`` seconds and at most once per container in vain, for
        the pending answer about ``cid``; True if it is known now."""
        info = self.containers.wait(cid, timeout)
        return info is not None and info.resolved

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

    # -- the lean paths: the same state changes as __call__, without a Context ------------
    def advance(self, ev: Event) -> None:
        """``self(ev)`` for an event no consumer looks at: state and evt.num only."""
        t = self.table
        t.apply(ev)
        t.for_event(ev)  # an unknown pid is loaded or made here, as __call__ does
        self.nevents += 1

    def close_raw(self, pid: int, ts: int, fd: int, ret: int) -> bool:
        """``advance`` for a ``close`` given by its raw values (``ts`` already wall-clock,
        ``fd`` as the C int). False when the full event is needed (pid not known yet)."""
        if not self.table.apply_close(pid, ts, fd, ret):
            return False
        self.nevents += 1
        return True

    def open_raw(self, pid: int, ts: int, fd: int, dirfd: int, flags: int, path: str, fresh: bool = False) -> bool:
        """``advance`` for a path open given by its raw values (see
        :meth:`~andon.state.process.ProcessTable.apply_open`). False when the full event
        is needed."""
        if not self.table.apply_open(pid, ts, fd, dirfd, flags, path, fresh):
            return False
        self.nevents += 1
        return True

    def open_close_raw(self, pid: int, ts_open: int, ts_close: int, fd: int, close_ret: int) -> bool:
        """``open_raw`` then ``close_raw`` of two consecutive records, an open that returned
        ``fd`` and its close (see :meth:`~andon.state.process.ProcessTable.apply_open_close`).
        False when they must be applied one by one."""
        if not self.table.apply_open_close(pid, ts_open, ts_close, fd, close_ret):
            return False
        self.nevents += 2
        return True

    def follow_capture(self, reader: Any) -> None:
        """Replay: take container metadata from the capture's side records where they
        are, and let a pending container look a bounded stretch ahead for its record."""
        reg = self.containers

        def on_side(d: dict[str, Any]) -> None:
            if d.get("kind") == "container" and isinstance(d.get("info"), dict):
                reg.add(ContainerInfo.from_dict(d["info"]))

        def lookahead(cid: str, seconds: float) -> ContainerInfo | None:
            found = reader.lookahead_container(cid, seconds)
            return ContainerInfo.from_dict(found) if found else None

        reader.on_side = on_side
        if getattr(reader, "version", 1) >= 2:
            reg.lookahead = lookahead

    def snapshot(self) -> dict[str, Any]:
        return self.table.snapshot()

    def close(self) -> None:
        self.containers.close()


_CONTAINER_FIELDS = ("container.", "k8s.")


class ContainerWait:
    """Which events and alerts of one rule engine wait for a container lookup under way.

    Only two cases wait, each at most ``CONTAINER_WAIT`` and once per container in vain:
    an event whose rules read ``container.*``/``k8s.*`` fields in their *condition* (it
    waits before the rules run: the condition would see <NA>), and an alert whose *output*
    has such a field still <NA> (formatted again once the answer is in). Every other event
    goes straight through.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._by_type: dict[str, bool] = {}
        self._rules = {r.name: r for r in engine.rules}

    def _condition_needs(self, evtype: str) -> bool:
        need = self._by_type.get(evtype)
        if need is None:
            need = any(
                f.startswith(_CONTAINER_FIELDS)
                for r in self.engine.rules_for(evtype)
                for f in getattr(r.filter, "fields", ())
            )
            self._by_type[evtype] = need
        return need

    def before(self, ev: Event, ctx: Context, tracker: Tracker) -> None:
        cid = tracker.pending_container(ctx)
        if cid and self._condition_needs(ev.name):
            tracker.await_container(cid)

    def after(self, alerts: list[Any], ev: Event, ctx: Context, tracker: Tracker) -> list[Any]:
        if not alerts:
            return alerts
        cid = tracker.pending_container(ctx)
        if not cid:
            return alerts
        stale = [
            any(v is None and k.startswith(_CONTAINER_FIELDS) for k, v in a.output_fields.items()) for a in alerts
        ]
        if not any(stale) or not tracker.await_container(cid):
            return alerts
        # the engine's own formatting (append_output included), now with the metadata
        return [self.engine._alert(self._rules[a.rule], ev, ctx) if s else a for a, s in zip(alerts, stale)]
