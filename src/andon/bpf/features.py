"""What this kernel can do for andon, found by trying each thing: the checks behind ``andon doctor``.

Every BPF feature is probed the same way (cilium/ebpf ``internal/feature.go``): open
``probes/features.bpf.o``, turn autoload on for the one program that exercises the
feature, load, attach, trigger the hook, read the program's hit counter, detach, close.
Each probe runs on its own object, so one missing feature cannot hide another, and
nothing of ours is left in the kernel afterwards. No decision here reads a version
string; the kernel release is shown for information only.

The file-system checks (BTF, tracefs, bpffs, cgroup v2, lockdown, privileges) come first
because the probes depend on them: tracepoints need tracefs, cgroup hooks need the
cgroup v2 root. tracefs, bpffs and securityfs are mounted when missing, and the row says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import platform
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AndonError, BpfError, NotSupported, PermissionDenied, VerifierError
from . import libbpf as lb
from .object import BpfObject, Program

log = logging.getLogger("andon.features")


@dataclass(frozen=True)
class Feature:
    """One row of ``andon doctor``.

    ``detail`` says what was found; ``consequence`` says, in one line, what the user loses
    when ``ok`` is false (or what to know when it is true but limited, as for lockdown).
    """

    name: str
    ok: bool
    detail: str
    consequence: str


#: What the sensor core (process and syscall events streamed through one ring) cannot do
#: without. ``andon doctor`` exits 1 when any of these is missing or not ok.
CORE = ("privileges", "btf", "tracepoint", "raw_tp", "ringbuf", "bpf_probe_read_kernel")

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
_CAP_NAMES = {CAP_BPF: "CAP_BPF", CAP_PERFMON: "CAP_PERFMON", CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_NET_ADMIN: "CAP_NET_ADMIN"}


def default_object() -> Path:
    env = os.environ.get("ANDON_BPF_DIR")
    base = Path(env) if env else Path(__file__).resolve().parents[3] / "build" / "bpf"
    return base / "probes" / "features.bpf.o"


# --- mounts ----------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) for every line of /proc/self/mounts."""
    out = []
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                out.append((parts[1].replace("\\040", " "), parts[2]))
    except OSError:
        pass
    return out


def _mounted(fstype: str) -> str | None:
    return next((mp for mp, t in _mounts() if t == fstype), None)


def _mount(fstype: str, target: str) -> None:
    """mount(2) fstype at target; raises OSError with the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} {target}: {os.strerror(err)}")


def _ensure_mount(fstype: str, target: str, mount: bool) -> tuple[str | None, str]:
    """The mount point of fstype (mounting it at target when allowed) and what happened."""
    where = _mounted(fstype)
    if where:
        return where, f"mounted at {where}"
    if not mount:
        return None, f"not mounted (doctor was told not to mount it at {target})"
    if os.geteuid() != 0:
        return None, f"not mounted; mounting it at {target} needs root"
    try:
        _mount(fstype, target)
    except OSError as e:
        return None, f"not mounted, and mounting it at {target} failed: {errno.errorcode.get(e.errno or 0, e.errno)}"
    return target, f"was not mounted: doctor mounted it at {target}"


# --- checks that load nothing ------------------------------------------------------------


def _kernel() -> Feature:
    u = os.uname()
    return Feature("kernel", True, f"{u.release} {u.machine}", "informative only: every feature below was tried, not guessed from this")


def _caps() -> tuple[int, int]:
    """(euid, effective capability mask) from /proc/self/status."""
    cap_eff = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                cap_eff = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return os.geteuid(), cap_eff


def privileged(cap_eff: int) -> bool:
    """Enough to load and attach tracing programs: CAP_BPF+CAP_PERFMON, or CAP_SYS_ADMIN before 5.8's split."""
    has = lambda c: bool(cap_eff >> c & 1)  # noqa: E731
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def _privileges() -> Feature:
    euid, cap_eff = _caps()
    have = [n for c, n in _CAP_NAMES.items() if cap_eff >> c & 1]
    lack = [n for c, n in _CAP_NAMES.items() if not cap_eff >> c & 1]
    detail = f"euid {euid}; effective caps: {' '.join(have) or 'none of ours'}" + (f"; lacks {' '.join(lack)}" if lack else "")
    if not privileged(cap_eff):
        return Feature("privileges", False, detail, "run as root (sudo andon ...): loading BPF needs CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN")
    if "CAP_NET_ADMIN" in lack:
        return Feature("privileges", True, detail, "without CAP_NET_ADMIN the XDP, TC and cgroup network hooks cannot attach")
    return Feature("privileges", True, detail, "")


def _lockdown(mount: bool) -> Feature:
    path = Path("/sys/kernel/security/lockdown")
    note = ""
    if not path.exists() and _mounted("securityfs") is None:
        where, note = _ensure_mount("securityfs", "/sys/kernel/security", mount)
        note = f" (securityfs {note})"
    try:
        text = path.read_text().strip()
    except OSError as e:
        why = "no lockdown LSM in this kernel" if path.parent.exists() and _mounted("securityfs") else "securityfs unavailable"
        return Feature("lockdown", True, f"unknown: cannot read {path} ({e.strerror}; {why}){note}",
                       "the helper probes below show what the kernel allows")
    m = re.search(r"\[(\w+)\]", text)
    mode = m.group(1) if m else text
    detail = f"{mode} (of: {text.replace('[', '').replace(']', '')}){note}"
    if mode == "none":
        return Feature("lockdown", True, detail, "")
    if mode == "integrity":
        return Feature("lockdown", True, detail, "bpf_probe_write_user is refused by design; andon does not need it")
    return Feature("lockdown", False, detail,
                   "confidentiality refuses bpf_probe_read_kernel, perf and tracefs reads: sensors cannot read kernel state")


def _btf() -> Feature:
    path = Path("/sys/kernel/btf/vmlinux")
    try:
        with path.open("rb") as f:
            magic = f.read(2)
        size = path.stat().st_size
    except OSError as e:
        return Feature("btf", False, f"{path}: {e.strerror}",
                       "no kernel BTF: CO-RE objects cannot be relocated, andon cannot run (needs CONFIG_DEBUG_INFO_BTF)")
    if magic not in (b"\x9f\xeb", b"\xeb\x9f"):
        return Feature("btf", False, f"{path} is not BTF (magic {magic.hex()})", "CO-RE objects cannot be relocated: andon cannot run")
    return Feature("btf", True, f"{path} readable, {size} bytes", "")


def _tracefs(mount: bool) -> Feature:
    where, detail = _ensure_mount("tracefs", "/sys/kernel/tracing", mount)
    if where is None:
        return Feature("tracefs", False, detail, "tracepoint programs cannot look up their event ids: tracepoint sensors fail")
    return Feature("tracefs", True, detail, "")


def _bpffs(mount: bool) -> Feature:
    where, detail = _ensure_mount("bpf", "/sys/fs/bpf", mount)
    if where is None:
        return Feature("bpffs", False, detail, "nothing can be pinned: maps and links die with the agent process")
    return Feature("bpffs", True, detail, "")


def cgroup2_root() -> str | None:
    """The first cgroup v2 mount: /sys/fs/cgroup on unified hosts, .../unified on hybrid ones."""
    return _mounted("cgroup2")


def _cgroup2() -> Feature:
    root = cgroup2_root()
    if root is None:
        return Feature("cgroup2", False, "no cgroup2 mount in /proc/self/mounts",
                       "cgroup_skb and connect4 hooks have nowhere to attach; container ids still come from cgroup v1 names")
    v1 = sum(1 for _, t in _mounts() if t == "cgroup")
    mode = f"hybrid: {v1} cgroup v1 hierarchies beside it" if v1 else "unified"
    return Feature("cgroup2", True, f"{root} ({mode})", "")


# --- BPF probes ------------------------------------------------------------------------


class _NotFired(AndonError):
    """Attached, but the hook never ran when triggered."""


_STRERROR = {os.strerror(e): e for e in errno.errorcode}
_LOAD_ERRNO = re.compile(r"failed to load: -(\d+)")
_PROG_CFG = struct.Struct("<IIQ")  # probe_cfg in features.bpf.c: tgid, tid, write_addr


def _errname(err: int | None) -> str:
    return errno.errorcode.get(err or 0, f"error {err}")


def _hits(obj: BpfObject) -> int:
    raw = obj.map("probe_hits").lookup(b"\0\0\0\0", 8)
    return struct.unpack("<Q", raw)[0] if raw else 0


def _fire(obj: BpfObject, trigger: Callable[[], object], tries: int = 20) -> int:
    """Trigger until the program's counter moves; the count, or 0 when it never fired."""
    for _ in range(tries):
        trigger()
        n = _hits(obj)
        if n:
            return n
        time.sleep(0.01)
    return 0


def _fired(obj: BpfObject, trigger: Callable[[], object], what: str) -> str:
    if not _fire(obj, trigger):
        raise _NotFired(f"loaded and attached to {what}, but it never fired when triggered")
    return f"loaded, attached to {what}, fired"


@functools.lru_cache(maxsize=4)
def _in_kallsyms(names: tuple[str, ...]) -> frozenset[str]:
    """Which of names /proc/kallsyms lists."""
    found = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in names:
                    found.add(parts[2])
    except OSError:
        pass
    return frozenset(found)


def _kallsyms(names: tuple[str, ...]) -> str:
    """The first of names the kernel has, else the first name (and the attach will say why)."""
    present = _in_kallsyms(names)
    return next((n for n in names if n in present), names[0])


_OPEN_TARGETS = ("do_sys_openat2", "do_sys_open", "vfs_open")


def _open_something() -> None:
    with open("/proc/self/stat", "rb") as f:
        f.read(1)


def _udp_to_lo(connect: bool = False) -> None:
    """A datagram to 127.0.0.1:9 (discard): it leaves a socket, crosses lo, comes back in."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if connect:
            s.connect(("127.0.0.1", 9))
            s.send(b"andon doctor")
        else:
            s.sendto(b"andon doctor", ("127.0.0.1", 9))


def _libc_path() -> str:
    """The libc mapped into this process (so a uprobe on it sees our own calls)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and re.search(r"/libc(\.so\.|-[\d.]+\.so)", parts[5]):
            return parts[5].strip()
    raise NotSupported("uprobe", "no libc mapped in this process")


class _UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts up to func_name (libbpf 1.0); libbpf accepts an older, smaller sz."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


def _attach_uprobe(prog: Program, retprobe: bool) -> str:
    if not lb.has("bpf_program__attach_uprobe_opts"):
        raise NotSupported("uprobe", "this libbpf has no bpf_program__attach_uprobe_opts")
    libc = _libc_path()
    opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe, func_name=b"getpid")
    prog.attach_with("bpf_program__attach_uprobe_opts", os.getpid(), libc.encode(), 0, ctypes.addressof(opts))
    return f"{os.path.basename(libc)}:getpid"


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr as of PERF_ATTR_SIZE_VER5 (112 bytes)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64), ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16), ("_reserved", ctypes.c_uint16),
    ]


# perf_event_open has no libc wrapper; its number differs per architecture
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319, "s390x": 331, "loongarch64": 241}
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, PERF_FLAG_FD_CLOEXEC = 1, 0, 8


def _perf_cpu_clock() -> int:
    """A cpu-clock sampling event on this thread, one sample per millisecond of CPU."""
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise NotSupported("perf_event", f"perf_event_open syscall number unknown for {platform.machine()}")
    attr = _PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(_PerfEventAttr),
                          config=PERF_COUNT_SW_CPU_CLOCK, sample_period=1_000_000)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.byref(attr), 0, -1, -1, ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        raise BpfError("perf_event_open(cpu-clock)", ctypes.get_errno())
    return fd


def _burn_cpu(seconds: float = 0.02) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2


def _tc_on_lo(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    lib = lb.lib()
    ifindex = socket.if_nametoindex("lo")
    hook = lb.bpf_tc_hook(sz=ctypes.sizeof(lb.bpf_tc_hook), ifindex=ifindex, attach_point=BPF_TC_INGRESS)
    rc = lib.bpf_tc_hook_create(ctypes.byref(hook))
    if rc < 0 and rc != -errno.EEXIST:
        raise BpfError("bpf_tc_hook_create(lo, clsact)", rc)
    created = rc == 0
    if created:
        def destroy() -> None:
            # INGRESS|EGRESS deletes the clsact qdisc we added; INGRESS alone would flush its filters
            whole = lb.bpf_tc_hook(sz=ctypes.sizeof(lb.bpf_tc_hook), ifindex=ifindex,
                                   attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
            lib.bpf_tc_hook_destroy(ctypes.byref(whole))
        cleanup.callback(destroy)
    opts = lb.bpf_tc_opts(sz=ctypes.sizeof(lb.bpf_tc_opts), prog_fd=prog.fd)
    rc = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if rc < 0:
        raise BpfError("bpf_tc_attach(lo ingress)", rc)

    def detach() -> None:
        # detach names the filter by handle and priority only; prog_fd/prog_id/flags must be 0
        which = lb.bpf_tc_opts(sz=ctypes.sizeof(lb.bpf_tc_opts), handle=opts.handle, priority=opts.priority)
        lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(which))
    cleanup.callback(detach)
    clsact = "clsact, created for the probe and removed after" if created else "clsact already present"
    return _fired(obj, _udp_to_lo, f"lo ingress ({clsact})")


def _xdp_on_lo(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    # lo has no native XDP driver hook, so the kernel attaches in generic (SKB) mode
    try:
        prog.attach_with("bpf_program__attach_xdp", socket.if_nametoindex("lo"))
    except BpfError as e:
        if e.errno in (errno.EBUSY, errno.EEXIST):
            return f"loaded; lo already carries another XDP program ({_errname(e.errno)}), so XDP attach works here"
        raise
    return _fired(obj, _udp_to_lo, "lo in generic (SKB) mode")


def _on_cgroup_root(trigger: Callable[[], object]) -> Callable[[BpfObject, Program, contextlib.ExitStack], str]:
    def run(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
        root = cgroup2_root()
        if root is None:
            raise NotSupported("cgroup hooks", "no cgroup2 mount to attach to")
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            prog.attach_with("bpf_program__attach_cgroup", fd)
        finally:
            os.close(fd)  # the link holds its own reference to the cgroup
        return _fired(obj, trigger, f"the cgroup v2 root {root}")
    return run


def _kprobe(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    sym = _kallsyms(_OPEN_TARGETS)
    prog.attach_with("bpf_program__attach_kprobe", False, sym.encode())
    return _fired(obj, _open_something, sym)


def _retarget_fentry(obj: BpfObject, prog: Program) -> None:
    sym = _kallsyms(_OPEN_TARGETS)
    if sym != "do_sys_openat2" and lb.has("bpf_program__set_attach_target"):
        lb.check_rc(lb.lib().bpf_program__set_attach_target(prog._ptr, 0, sym.encode()), f"retarget {prog.name} to {sym}")


def _fentry(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    prog.attach()
    return _fired(obj, _open_something, _kallsyms(_OPEN_TARGETS))


def _section(trigger: Callable[[], object], what: str) -> Callable[[BpfObject, Program, contextlib.ExitStack], str]:
    """Attach as the section name says, then trigger."""
    def run(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
        prog.attach()
        return _fired(obj, trigger, what)
    return run


def _uprobe(retprobe: bool) -> Callable[[BpfObject, Program, contextlib.ExitStack], str]:
    def run(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
        where = _attach_uprobe(prog, retprobe)
        return _fired(obj, os.getpid, where)  # os.getpid() calls libc's getpid()
    return run


def _perf_event(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    fd = _perf_cpu_clock()
    try:
        prog.attach_with("bpf_program__attach_perf_event", fd)  # the link owns fd from here
    except Exception:
        os.close(fd)
        raise
    return _fired(obj, _burn_cpu, "a software cpu-clock event on this thread")


def _ringbuf(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    from .ringbuf import RingReader

    prog.attach()
    if not _fire(obj, os.getpid):
        raise _NotFired("loaded and attached, but bpf_ringbuf_output never succeeded")
    ring = obj.map("probe_ring")
    reader = RingReader(ring.fd, ring.max_entries)  # maps it as andon's reader does
    try:
        pos = reader.producer_pos
    finally:
        reader.close()
    if pos <= 0:
        raise _NotFired("bpf_ringbuf_output returned 0 but the mapped producer position did not move")
    return f"map created, bpf_ringbuf_output wrote {pos} bytes, read back through mmap"


def _send_signal(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    prog.attach()
    if not _fire(obj, os.getpid):
        raise _NotFired("loaded and attached, but bpf_send_signal(0) never returned 0")
    return "bpf_send_signal(0) returned 0 in a raw_tp program (signal 0 delivers nothing)"


def _write_user(buf: ctypes.Array[ctypes.c_char]) -> Callable[[BpfObject, Program, contextlib.ExitStack], str]:
    def run(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
        prog.attach()
        _fire(obj, os.getpid)
        if buf.raw[:8] != b"andon-ok":
            raise _NotFired("loaded and attached, but the test buffer was not written")
        return "wrote 8 bytes into a buffer of this process from a raw_tp program"
    return run


def _override(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    real = os.getppid()
    prog.attach()  # ksyscall/getppid: libbpf finds the arch's syscall wrapper
    got = os.getppid()  # only this thread is affected (probe_cfg.tid)
    if got == real:
        raise _NotFired(f"attached, but getppid() still returned {real}")
    return f"kprobe on the getppid syscall made getppid() return {got} instead of {real}"


def _read_kernel(obj: BpfObject, prog: Program, cleanup: contextlib.ExitStack) -> str:
    prog.attach()
    if not _fire(obj, os.getpid):
        raise _NotFired("loaded and attached, but the CO-RE read of task->tgid never matched")
    return "CO-RE read of current->tgid in a raw_tp program matched bpf_get_current_pid_tgid()"


@dataclass(frozen=True)
class _Probe:
    name: str
    program: str
    run: Callable[[BpfObject, Program, contextlib.ExitStack], str]
    consequence: str
    prepare: Callable[[BpfObject, Program], None] | None = None
    explain: Callable[[str, int | None, str], str] | None = None  # (stage, errno, message) -> what it means here


def _explain_kprobe(stage: str, err: int | None, text: str) -> str:
    if stage != "attach" or err not in (errno.ENOENT, errno.EOPNOTSUPP):
        return ""
    pmu = Path("/sys/bus/event_source/devices/kprobe").exists()
    tracefs = _mounted("tracefs")
    events = bool(tracefs) and Path(tracefs, "kprobe_events").exists()
    sym = _kallsyms(_OPEN_TARGETS)
    if sym not in _in_kallsyms(_OPEN_TARGETS):
        return f"{sym} is not in /proc/kallsyms"
    if not pmu and not events:
        return f"{sym} exists, but there is no kprobe PMU and no tracefs kprobe_events: the kernel was built without kprobe events"
    return f"on {sym}"


def _explain_lsm(stage: str, err: int | None, text: str) -> str:
    try:
        active = Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    except OSError:
        return ""
    if "bpf" in active:
        return f"bpf is in the active LSM list ({','.join(active)})"
    return f"bpf is not in the active LSM list ({','.join(active)}): boot with lsm=...,bpf"


def _explain_write_user(stage: str, err: int | None, text: str) -> str:
    if "cannot use helper" not in text:
        return ""
    # bpf_tracing_func_proto hides the helper when security_locked_down(LOCKDOWN_BPF_WRITE_USER)
    try:
        mode = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        return ""
    m = re.search(r"\[(\w+)\]", mode)
    if m and m.group(1) != "none":
        return f"expected under lockdown={m.group(1)}"
    return ""


def _explain_override(stage: str, err: int | None, text: str) -> str:
    # kprobe_prog_func_proto offers the helper only #ifdef CONFIG_BPF_KPROBE_OVERRIDE
    return "the kernel was built without CONFIG_BPF_KPROBE_OVERRIDE" if "cannot use helper" in text else ""


def _probes(write_buf: ctypes.Array[ctypes.c_char]) -> list[_Probe]:
    return [
        _Probe("tracepoint", "tracepoint__syscalls__sys_enter_getpid", _section(os.getpid, "syscalls/sys_enter_getpid"),
               "sensors on syscalls/* and sched/* tracepoints cannot attach: andon cannot run (see tracefs)"),
        _Probe("raw_tp", "raw_tp__sys_enter", _section(os.getpid, "sys_enter"),
               "the sensor core (raw_tp sched and sys_exit hooks) cannot attach: andon cannot run"),
        _Probe("tp_btf", "tp_btf__sys_enter", _section(os.getpid, "sys_enter (BTF-typed)"),
               "tp_btf: andon uses raw_tp with CO-RE reads instead; nothing lost"),
        _Probe("ringbuf", "ringbuf__output", _ringbuf,
               "no BPF ring buffer (BPF_MAP_TYPE_RINGBUF): andon cannot stream events"),
        _Probe("bpf_probe_read_kernel", "probe_read_kernel", _read_kernel,
               "sensors cannot read kernel structures (lockdown=confidentiality?): andon cannot run"),
        _Probe("uprobe", "uprobe__getpid", _uprobe(False),
               "no user-space probes: TLS plaintext capture and library tracing are off"),
        _Probe("uretprobe", "uretprobe__getpid", _uprobe(True),
               "no return probes: SSL_read plaintext and call latencies cannot be captured"),
        _Probe("perf_event", "perf_event__cpu_clock", _perf_event,
               "no BPF on perf events: the CPU profiler is off"),
        _Probe("xdp", "xdp__pass", _xdp_on_lo,
               "no XDP: network policy cannot drop at the driver; it drops at TC instead"),
        _Probe("tc", "tc__ingress", _tc_on_lo,
               "no TC clsact programs: per-interface network policy and flow capture are off"),
        _Probe("cgroup_skb", "cgroup_skb__egress", _on_cgroup_root(_udp_to_lo),
               "no cgroup_skb: per-cgroup (per-container) traffic accounting and policy are off"),
        _Probe("cgroup/connect4", "cgroup__connect4", _on_cgroup_root(lambda: _udp_to_lo(connect=True)),
               "no connect4 hook: policy cannot refuse connect() before a packet leaves"),
        _Probe("kprobe", "kprobe__open", _kprobe,
               "kprobe: andon uses syscall tracepoints instead; nothing lost", explain=_explain_kprobe),
        _Probe("fentry", "fentry__open", _fentry,
               "fentry: andon uses raw_tp and tracepoints instead; nothing lost", prepare=_retarget_fentry),
        _Probe("lsm", "lsm__file_open", _section(_open_something, "the file_open LSM hook"),
               "LSM: enforcement falls back to bpf_send_signal(SIGKILL) at exec", explain=_explain_lsm),
        _Probe("bpf_send_signal", "send_signal", _send_signal,
               "no bpf_send_signal: enforcement without LSM can only alert, not kill"),
        _Probe("bpf_probe_write_user", "probe_write_user", _write_user(write_buf),
               "andon never writes user memory: nothing lost", explain=_explain_write_user),
        _Probe("bpf_override_return", "ksyscall__getppid", _override,
               "enforcement cannot fail a syscall with an error; it kills (bpf_send_signal) or alerts instead",
               explain=_explain_override),
    ]


#: Row names of the BPF probes, in the order probe_all reports them.
BPF_FEATURES = tuple(p.name for p in _probes(ctypes.create_string_buffer(8)))


_NOISE = ("failed to load object", "failed to load: -", "BPF program load failed", "permission error while running as root")


def _why(lines: list[str]) -> str:
    """The line that says why: the verifier's verdict, or libbpf's last complaint."""
    for line in reversed(lines):
        line = line.strip().removeprefix("libbpf: ")
        if not line or line.startswith(("processed ", "verification time", "stack depth", "-- END")):
            continue
        if any(n in line for n in _NOISE):
            continue
        return line
    return ""


def _describe(probe: _Probe, stage: str, exc: BaseException, lines: list[str]) -> str:
    text = "\n".join(lines)
    err: int | None = getattr(exc, "errno", None)
    if not err and isinstance(exc, NotSupported):
        err = _STRERROR.get(exc.hint)
    if not err and stage == "load":
        m = _LOAD_ERRNO.search(text)
        err = int(m.group(1)) if m else None
    parts = [f"{_errname(err)} at {stage}" if err else f"failed at {stage}"]
    extra = probe.explain(stage, err, text) if probe.explain else ""
    if isinstance(exc, VerifierError):
        parts.append(f"verifier: {_why(exc.log.splitlines()) or 'see its log'}")
    elif stage == "load" and "-- BEGIN PROG LOAD LOG --" not in text:
        parts.append("refused before the verifier ran (no verifier log)")
    elif isinstance(exc, NotSupported) and exc.hint and exc.hint not in _STRERROR:
        parts.append(exc.hint)
    elif stage == "attach" and not extra:
        why = _why([ln for ln in lines if "failed" in ln or "error" in ln.lower()])
        if why:
            parts.append(why)
    if extra:
        parts.append(extra)
    return "; ".join(parts)


@contextlib.contextmanager
def _quiet_libbpf() -> Iterator[None]:
    """Expected failures are rows in the table, not warnings on stderr; the rows carry the messages."""
    logger = logging.getLogger("andon.libbpf")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _run(path: Path, probe: _Probe, buf: ctypes.Array[ctypes.c_char]) -> Feature:
    stage = "open"
    obj: BpfObject | None = None
    with lb.capture_messages() as lines:
        try:
            obj = BpfObject(path)
            prog = obj.program(probe.program)
            for p in obj.programs():
                p.autoload = p.name == probe.program
            if lb.has("bpf_map__set_autocreate"):
                ring = obj.map("probe_ring")
                lb.check_rc(lb.lib().bpf_map__set_autocreate(ring._ptr, probe.program == "ringbuf__output"),
                            "autocreate of probe_ring")
            # always set: with write_addr 0 the verifier would prune the helper call unseen
            obj.set_rodata(_PROG_CFG.pack(os.getpid(), threading.get_native_id(), ctypes.addressof(buf)))
            if probe.prepare:
                probe.prepare(obj, prog)
            stage = "load"
            obj.load()
            stage = "attach"
            with contextlib.ExitStack() as cleanup:
                detail = probe.run(obj, prog, cleanup)
            return Feature(probe.name, True, detail, "")
        except _NotFired as e:
            return Feature(probe.name, False, str(e), probe.consequence)
        except PermissionDenied:
            return Feature(probe.name, False, f"EPERM at {stage}: needs root", probe.consequence)
        except FileNotFoundError as e:
            return Feature(probe.name, False, f"{e}", probe.consequence)
        except (OSError, AndonError, KeyError) as e:
            log.debug("probe %s failed at %s: %s", probe.name, stage, e)
            return Feature(probe.name, False, _describe(probe, stage, e, lines), probe.consequence)
        finally:
            if obj is not None:
                obj.close()


def probe_all(obj_path: str | os.PathLike[str] | None = None, *, mount: bool = True) -> list[Feature]:
    """Every row of ``andon doctor``, in display order.

    ``obj_path`` is the built ``probes/features.bpf.o`` (default: build/bpf, or
    $ANDON_BPF_DIR). With ``mount`` (the default) missing tracefs, bpffs and securityfs
    are mounted, as root only. Never raises for a missing feature: that is a row.
    """
    path = Path(obj_path) if obj_path else default_object()
    rows = [_kernel(), _privileges(), _lockdown(mount), _btf(), _tracefs(mount), _bpffs(mount), _cgroup2()]
    buf = ctypes.create_string_buffer(8)  # bpf_probe_write_user's target; lives across its probe
    probes = _probes(buf)
    euid, cap_eff = _caps()
    if not privileged(cap_eff):
        why = f"not tried: needs root (euid {euid}, no CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)"
        return rows + [Feature(p.name, False, why, p.consequence) for p in probes]
    if not path.exists():
        why = f"not tried: {path} not found (run `make bpf`)"
        return rows + [Feature(p.name, False, why, p.consequence) for p in probes]
    with _quiet_libbpf():
        for probe in probes:
            rows.append(_run(path, probe, buf))
    return rows
