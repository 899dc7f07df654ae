"""The live event source: load andon's sensor objects, switch on what is asked, read the ring.

Two objects feed one ring: ``process/sched.bpf.o`` (exec, fork, exit) and
``syscalls/sys_exit.bpf.o`` (every traced syscall, filtered in the kernel by number).
The first one loaded creates the ring and the counters; the second reuses them, so the
stream is in commit order across both.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bpf.object import BpfObject, Link
from ..bpf.ringbuf import RingReader, page_aligned_size
from ..errors import BpfError, NotSupported, PermissionDenied
from .schema import EVENT_DTYPE, Event, decode_batch, decode_record, pack_config
from .syscalls import BY_NAME, BY_NR, IA32_TO_X86_64, PROCESS_TYPES, SPECS

log = logging.getLogger("andon.sensor")

STAT_NAMES = ("events", "drops", "truncated", "read_errors")


def default_bpf_dir() -> Path:
    env = os.environ.get("ANDON_BPF_DIR")
    if env:
        return Path(env)
    # src/andon/events/live.py -> <repo>/build/bpf
    return Path(__file__).resolve().parents[3] / "build" / "bpf"


def boot_offset_ns() -> int:
    """Wall clock minus boot clock: add it to a bpf_ktime_get_boot_ns() stamp."""
    a = time.clock_gettime_ns(time.CLOCK_REALTIME)
    b = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    c = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return (a + c) // 2 - b


def cgroup_v1_subsys() -> int:
    """Index (cgroup_subsys_id order, as /proc/cgroups lists them) of a v1 controller that is
    mounted, so exec events carry the cgroup leaf a container runtime named; 255 if none."""
    try:
        lines = Path("/proc/cgroups").read_text().splitlines()[1:]
    except OSError:
        return 255
    prefer = ("memory", "pids", "cpu", "cpuset", "devices")
    found: dict[str, int] = {}
    for idx, line in enumerate(lines):
        parts = line.split()
        if len(parts) >= 4 and parts[1] != "0" and parts[3] == "1":
            found[parts[0]] = idx
    for name in prefer:
        if name in found:
            return found[name]
    return next(iter(found.values()), 255)


def possible_cpus() -> int:
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return int(text.split("-")[-1]) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SensorSettings:
    """What the live source loads and how. ``types`` are Falco event type names."""

    types: frozenset[str]
    ring_bytes: int = 64 << 20
    wakeup_bytes: int = 0  # 0: the kernel's adaptive wake-up
    bpf_dir: Path = field(default_factory=default_bpf_dir)


class LiveSource:
    """Owns the loaded objects, their links and the ring reader; close() releases all."""

    def __init__(self, settings: SensorSettings) -> None:
        self.settings = settings
        self.boot_offset = boot_offset_ns()
        self._objs: list[BpfObject] = []
        self._links: list[Link] = []
        self.reader: RingReader | None = None
        self._stats_map = None
        self._ncpu = possible_cpus()
        self.enabled_syscalls: list[str] = []
        self.enabled_process: list[str] = []
        self.syscall_hook = ""
        self._sc_obj: BpfObject | None = None

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PermissionDenied("the live sensor needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")
        types = self.settings.types
        self.enabled_process = [t for t in PROCESS_TYPES if t in types and t != "execveat"]
        self.enabled_syscalls = [s.name for s in SPECS if s.name in types]
        ring = page_aligned_size(self.settings.ring_bytes)
        cfg = pack_config(os.getpid(), self.settings.wakeup_bytes, cgroup_v1_subsys())
        try:
            shared: dict[str, int] = {}
            if self.enabled_process or "execve" in types:
                obj = self._open("process/sched.bpf.o", ring, cfg, shared)
                want = {"execve": "sched_process_exec", "clone": "sched_process_fork", "procexit": "sched_process_exit"}
                for t, prog in want.items():
                    obj.program(prog).autoload = t in types
                self._load(obj, shared)
            if self.enabled_syscalls:
                self._sc_obj = self._load_syscalls(ring, cfg, shared)
                self._select(types)
            if not self._objs:
                raise NotSupported("event selection", "no event type selected")
            # attach last, after every map is filled: no event sees a half-set filter
            for obj in self._objs:
                self._links += obj.attach_all()
            self.reader = RingReader(shared["events"], ring)
        except BaseException:
            self.close()
            raise

    def _select(self, types: frozenset[str], before: frozenset[str] = frozenset()) -> None:
        """Fill the per-syscall selection maps: entries for ``types`` on, the rest of
        ``before`` off. Each entry is one map update, read by the next syscall."""
        assert self._sc_obj is not None
        specs = self._sc_obj.map("sc_specs")
        for spec in SPECS:
            if spec.name in types:
                specs.update(spec.nr.to_bytes(4, "little"), spec.pack(True))
            elif spec.name in before:
                specs.update(spec.nr.to_bytes(4, "little"), spec.pack(False))
        ia32 = self._sc_obj.map("sc_ia32")
        for nr32, nr64 in IA32_TO_X86_64.items():
            name = BY_NR[nr64].name
            if name in types:
                ia32.update(nr32.to_bytes(4, "little"), (nr64 + 1).to_bytes(2, "little"))
            elif name in before:
                ia32.update(nr32.to_bytes(4, "little"), (0).to_bytes(2, "little"))

    def set_types(self, types: frozenset[str]) -> None:
        """Change the syscall selection of a running sensor (rules reloaded). Process
        events (exec, fork, exit) stay as loaded: state tracking always needs them."""
        if self._sc_obj is None:
            raise NotSupported("changing the event selection", "the syscall program was not loaded at start")
        before = frozenset(self.enabled_syscalls)
        self._select(types, before)
        self.enabled_syscalls = [s.name for s in SPECS if s.name in types]

    def _open(self, rel: str, ring: int, cfg: bytes, shared: dict[str, int]) -> BpfObject:
        obj = BpfObject(self.settings.bpf_dir / rel)
        self._objs.append(obj)
        obj.set_rodata(cfg)
        if "events" in shared:
            obj.reuse_map("events", shared["events"])
            obj.reuse_map("stats", shared["stats"])
        else:
            obj.set_max_entries("events", ring)
        return obj

    def _load_syscalls(self, ring: int, cfg: bytes, shared: dict[str, int]) -> BpfObject:
        """tp_btf first (plain loads, cheaper per event), raw_tp where tp_btf cannot load."""
        try:
            obj = self._open("syscalls/sys_exit_btf.bpf.o", ring, cfg, shared)
            self._load(obj, shared)
            self.syscall_hook = "tp_btf/sys_exit"
            return obj
        except (BpfError, NotSupported, FileNotFoundError) as e:
            log.info("tp_btf/sys_exit unavailable (%s); using raw_tp/sys_exit", e)
            if self._objs and self._objs[-1].path.name == "sys_exit_btf.bpf.o":
                self._objs.pop().close()
        obj = self._open("syscalls/sys_exit.bpf.o", ring, cfg, shared)
        self._load(obj, shared)
        self.syscall_hook = "raw_tp/sys_exit"
        return obj

    def _load(self, obj: BpfObject, shared: dict[str, int]) -> None:
        obj.load()
        if "events" not in shared:
            shared["events"] = obj.map("events").fd
            shared["stats"] = obj.map("stats").fd
            self._stats_map = obj.map("stats")

    # -- reading --------------------------------------------------------------------------
    def read_raw(self, timeout: float = 0.1) -> Iterator[tuple[np.ndarray | None, bytes | None]]:
        """Wait up to timeout for data, then yield what is there (see RingReader.read)."""
        assert self.reader is not None, "start() first"
        if self.reader.wait(timeout):
            yield from self.reader.read()

    def read(self, timeout: float = 0.1, mask: Any = None, counts: Any = None) -> Iterator[Event]:
        """Decoded events. ``mask(records) -> bool array`` drops records before decoding;
        ``counts.seen`` (if given) counts every record read, kept or not."""
        for arr, big in self.read_raw(timeout):
            if arr is not None:
                if counts is not None:
                    counts.seen += len(arr)
                if mask is not None:
                    arr = arr[mask(arr)]
                yield from decode_batch(arr, self.boot_offset)
            else:
                if counts is not None:
                    counts.seen += 1
                ev = decode_record(big, self.boot_offset)
                if mask is not None:
                    hdr = np.frombuffer(big[:248].ljust(248, b"\0"), dtype=EVENT_DTYPE)
                    if not mask(hdr)[0]:
                        continue
                yield ev

    def stats(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs: events sent, drops (ring full), ..."""
        out = dict.fromkeys(STAT_NAMES, 0)
        if self._stats_map is None:
            return out
        for idx, name in enumerate(STAT_NAMES):
            raw = self._stats_map.lookup(idx.to_bytes(4, "little"), 8 * self._ncpu)
            if raw:
                out[name] = int(np.frombuffer(raw, dtype="<u8").sum())
        return out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        for link in reversed(self._links):
            link.destroy()
        self._links.clear()
        for obj in reversed(self._objs):
            obj.close()
        self._objs.clear()
        self._stats_map = None
        self._sc_obj = None

    def __enter__(self) -> LiveSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LiveSource", "SensorSettings", "EVENT_DTYPE", "BY_NAME"]
