"""The event stream as the agent runs it: source -> state -> filter -> sink.

Used by ``andon events`` (live or from a capture) and ``andon capture``. It owns the
stopping rules (``--duration``, ``--count``, SIGINT/SIGTERM) and the closing counts:
events seen, shown, lost in the kernel (ring full) and truncated.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events.capture import CaptureHeader, CaptureReader, CaptureWriter
from .enrich import Tracker
from ..events.live import LiveSource, SensorSettings
import numpy as np

from ..events.schema import EVENT_DTYPE, REC_SMALL, Event, EventType, decode_batch, decode_record
from ..state.container import match_cgroup
from ..events.syscalls import ALL_TYPES, BY_NAME, PROCESS_TYPES

# What the state tables need to stay true, switched on beside what the user asked for.
LIFECYCLE_TYPES = frozenset({"execve", "clone", "procexit"})
FD_STATE_TYPES = frozenset(
    {
        "open", "openat", "openat2", "creat", "memfd_create", "close", "close_range", "dup", "dup2",
        "dup3", "fcntl", "pipe", "pipe2", "socket", "socketpair", "connect", "accept", "accept4",
        "bind", "chdir", "fchdir", "eventfd2", "signalfd4", "timerfd_create", "inotify_init1",
        "epoll_create1", "userfaultfd", "setuid", "setgid", "setreuid", "setregid", "setresuid",
        "setresgid",
    }
)


def kernel_types(wanted: set[str] | frozenset[str], state: bool = True) -> frozenset[str]:
    """The types to switch on in the kernel for what the user wants to see.

    With state tracking, process lifecycle is always on (names, parents, containers) and
    fd tracking when some wanted event refers to an fd (file and net syscalls)."""
    out = set(wanted)
    if state:
        out |= LIFECYCLE_TYPES
        if any(t in BY_NAME and t not in PROCESS_TYPES for t in wanted):
            out |= FD_STATE_TYPES
    if "execveat" in out:
        out.add("execve")  # both successful forms come from sched_process_exec
    return frozenset(t for t in out if t in ALL_TYPES)


def prefilter(flt: EventFilter) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised mask over raw records for the filters that need no state (type, pid,
    comm): records that cannot match are never decoded."""
    nrs = np.array(sorted(BY_NAME[t].nr for t in flt.types if t in BY_NAME), dtype=np.uint16)
    kinds = [k for t, k in (("execve", EventType.EXEC), ("execveat", EventType.EXEC), ("clone", EventType.FORK),
                            ("procexit", EventType.EXIT)) if t in flt.types]
    kinds_arr = np.array(kinds, dtype=np.uint16)
    pids = np.array(sorted(flt.pids), dtype=np.uint32)
    comms = np.array(sorted(c.encode()[:15] for c in flt.comms), dtype="S16")

    def mask(recs: np.ndarray) -> np.ndarray:
        typ = recs["type"]
        m = ((typ == EventType.SYSCALL) & np.isin(recs["nr"], nrs)) | np.isin(typ, kinds_arr)
        if len(pids):
            m &= np.isin(recs["pid"], pids) | np.isin(recs["tid"], pids)
        if len(comms):
            m &= np.isin(recs["comm"], comms)
        return m

    return mask


@dataclass
class EventFilter:
    types: frozenset[str] = frozenset(ALL_TYPES)
    pids: frozenset[int] = frozenset()
    comms: frozenset[str] = frozenset()
    containers: frozenset[str] = frozenset()

    def match(self, ev: Event, proc: Any = None) -> bool:
        if ev.name not in self.types:
            if not (ev.type == EventType.EXEC and "execveat" in self.types):
                return False
        if self.pids and ev.pid not in self.pids and ev.tid not in self.pids:
            return False
        if self.comms and ev.comm not in self.comms:
            return False
        if self.containers:
            cid = getattr(proc, "container_id", None) or "host"
            name = (getattr(proc, "container_name", None) or "") if not self.containers & {cid} else ""
            if not any(
                c == cid or (len(c) >= 3 and cid.startswith(c)) or (name and c == name) for c in self.containers
            ):
                return False
        return True


@dataclass
class Counts:
    seen: int = 0
    shown: int = 0
    lost: int = 0
    truncated: int = 0
    read_errors: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class StopFlag:
    """Set by SIGINT/SIGTERM so loops end cleanly and detach everything."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.stop:  # a second Ctrl-C: leave now
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def polls(stop: StopFlag, deadline: float | None, every: float = 0.2) -> Iterator[float]:
    """The wait for each read of a stream loop, until Ctrl-C/SIGTERM or the deadline."""
    while not stop.stop:
        timeout = every
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            timeout = min(timeout, left)
        yield timeout


def make_state(*, boot_offset: int = 0, snapshot: dict[str, Any] | None = None, offline: bool = False) -> Tracker:
    """The process/fd/container/user tables: empty for live use (seed after the sensor is
    attached), or restored from a capture's snapshot for replay."""
    return Tracker(boot_offset=boot_offset, snapshot=snapshot, offline=offline)


def run_live(
    flt: EventFilter,
    sink: Callable[[Event, Any], None],
    *,
    duration: float | None = None,
    count: int | None = None,
    ring_bytes: int = 64 << 20,
    state: Tracker | None = None,
) -> Counts:
    """Stream live events through state and filter into sink until a stop rule fires."""
    counts = Counts()
    settings = SensorSettings(types=kernel_types(flt.types, state is not None), ring_bytes=ring_bytes)
    src = LiveSource(settings)
    # without state every record that cannot match is dropped before decoding
    pre = prefilter(flt) if state is None else None
    deadline = time.monotonic() + duration if duration else None
    with StopFlag() as stop:
        src.start()
        try:
            if state is not None:
                state.table.boot_offset = src.boot_offset
                state.seed()  # after attach: what /proc misses, the ring has
            for timeout in polls(stop, deadline):
                for ev in src.read(timeout, pre, counts):
                    proc = state(ev) if state is not None else None
                    if flt.match(ev, proc):
                        sink(ev, proc)
                        counts.shown += 1
                        if count is not None and counts.shown >= count:
                            stop.stop = True
                            break
        finally:
            st = src.stats()
            counts.lost, counts.truncated, counts.read_errors = st["drops"], st["truncated"], st["read_errors"]
            src.close()
    return counts


def run_replay(
    path: str | Path,
    flt: EventFilter,
    sink: Callable[[Event, Any], None],
    *,
    count: int | None = None,
    state_factory: Callable[[dict[str, Any]], Tracker] | None = None,
) -> tuple[Counts, CaptureReader]:
    counts = Counts()
    reader = CaptureReader(path)
    state = state_factory(reader.header.state) if state_factory else None
    if state is not None:
        state.follow_capture(reader)
    with reader, StopFlag() as stop:
        for ev in reader.events():
            if stop.stop:
                break
            counts.seen += 1
            proc = state(ev) if state is not None else None
            if ev.truncated:
                counts.truncated += 1
            if flt.match(ev, proc):
                sink(ev, proc)
                counts.shown += 1
                if count is not None and counts.shown >= count:
                    break
    return counts, reader


def run_capture(
    path: str | Path,
    types: Iterable[str],
    *,
    duration: float | None = None,
    count: int | None = None,
    ring_bytes: int = 64 << 20,
    progress: Callable[[Counts], None] | None = None,
) -> Counts:
    """Write the live stream, as raw records, to a capture file whose header carries the
    process table as /proc showed it right after the sensor attached, and container
    metadata as side records where the runtime's answer came in (containers seen at the
    start, started later, or announced by the runtime's event stream).

    The records stay raw: a new container is found by a vectorised look at the exec
    records' cgroup ids; only an exec from a cgroup not seen before is decoded."""
    counts = Counts()
    ktypes = kernel_types(frozenset(types))
    src = LiveSource(SensorSettings(types=ktypes, ring_bytes=ring_bytes))
    deadline = time.monotonic() + duration if duration else None
    last_progress = time.monotonic()
    with StopFlag() as stop:
        src.start()
        tracker = Tracker(boot_offset=src.boot_offset)
        reg = tracker.containers
        reg.keep_news = True
        seen_cgroups: set[int] = set()
        try:
            tracker.seed()
            for p in list(tracker.table.procs.values()):
                if p.container:
                    reg.get(p.container)  # containers running now: asked in the background
            header = CaptureHeader(boot_offset=src.boot_offset, types=sorted(ktypes), state=tracker.snapshot())
            w = CaptureWriter(path, header)
            for timeout in polls(stop, deadline):
                for arr, big in src.read_raw(timeout):
                    if arr is not None:
                        if count is not None:
                            arr = arr[: max(0, count - counts.seen)]
                        w.write_batch(arr)
                        counts.seen += len(arr)
                        _new_containers(arr, seen_cgroups, reg, src.boot_offset)
                    else:
                        w.write_record(big)
                        counts.seen += 1
                        hdr = np.frombuffer(big[:REC_SMALL].ljust(REC_SMALL, b"\0"), dtype=EVENT_DTYPE)
                        _new_containers(hdr, seen_cgroups, reg, src.boot_offset, big)
                    for info in reg.drain_resolved():
                        w.write_container(info.to_dict())
                    if count is not None and counts.seen >= count:
                        stop.stop = True
                        break
                for info in reg.drain_resolved():
                    w.write_container(info.to_dict())
                if progress is not None and time.monotonic() - last_progress >= 1.0:
                    last_progress = time.monotonic()
                    st = src.stats()
                    counts.lost = st["drops"]
                    progress(counts)
        finally:
            st = src.stats()
            counts.lost, counts.truncated, counts.read_errors = st["drops"], st["truncated"], st["read_errors"]
            src.close()
            tracker.close()
            if "w" in locals():
                for info in reg.drain_resolved():
                    w.write_container(info.to_dict())
                w.close()
    counts.shown = counts.seen
    return counts


def _new_containers(recs: np.ndarray, seen: set[int], reg: Any, boot_offset: int, big: bytes | None = None) -> None:
    """Ask the registry (in the background) about the container of every exec record from
    a cgroup not seen before. Vectorised: only such records are decoded."""
    execs = recs["cgroup_id"][recs["type"] == EventType.EXEC]
    if not len(execs):
        return
    for cg in np.unique(execs).tolist():
        if cg in seen:
            continue
        seen.add(cg)
        if big is not None:
            ev = decode_record(big, boot_offset)
        else:
            i = int(np.flatnonzero((recs["type"] == EventType.EXEC) & (recs["cgroup_id"] == cg))[0])
            ev = decode_batch(recs[i : i + 1], boot_offset)[0]
        x = ev.exec
        m = (match_cgroup(x.cgroup) or match_cgroup(x.cgroup2)) if x is not None else None
        if m is not None:
            reg.get(m.id)


def iter_types(words: Iterable[str]) -> Iterator[str]:
    for w in words:
        yield from (x for x in w.split(",") if x)
