"""Event arguments as users read them: names from Falco's event table, flags as symbols.

``event_args(ev)`` gives an ordered dict of an event's arguments, typed (fds as signed
ints, paths as strings, flag words as ``O_RDONLY|O_CLOEXEC``), the same way for live
events and replayed captures. ``result(ev)`` is Falco's ``evt.res``: ``SUCCESS`` or the
errno name.
"""

from __future__ import annotations

import errno
from typing import Any

from .schema import AF_INET, AF_INET6, AF_UNIX, Event, EventType
from .syscalls import BY_NR

AT_FDCWD = -100


def s32(v: int) -> int:
    """A raw 64-bit register holding a C int, as the int."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def s64(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v & (1 << 63) else v


def errno_name(ret: int) -> str:
    if ret >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-ret, f"E{-ret}")


def _flags(value: int, table: list[tuple[int, str]], zero: str = "") -> str:
    names = []
    rest = value
    for bit, name in table:
        if bit and value & bit == bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names) if names else zero


_OPEN_FLAGS = [
    (0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"), (0o20000, "FASYNC"),
    (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"),
    (0o4000000 | 0o10000, "O_SYNC"), (0o10000000, "O_PATH"), (0o20000000 | 0o200000, "O_TMPFILE"),
]


def open_flags(v: int) -> str:
    """open(2) flags as Falco prints them: the access mode first, then the rest."""
    acc = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}.get(v & 3, "O_ACCMODE")
    rest = _flags(v & ~3, _OPEN_FLAGS)
    return acc + ("|" + rest if rest else "")


def is_open_read(v: int) -> bool:
    return (v & 3) in (0, 2)


def is_open_write(v: int) -> bool:
    return (v & 3) in (1, 2)


_DOMAINS = {AF_UNIX: "AF_UNIX", AF_INET: "AF_INET", AF_INET6: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET"}
_PTRACE = {
    0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSR",
    4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR", 7: "PTRACE_CONT",
    8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
    16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 24: "PTRACE_SYSCALL", 0x4200: "PTRACE_SETOPTIONS",
    0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT",
}
_CLONE_NS = [
    (0x00020000, "CLONE_NEWNS"), (0x02000000, "CLONE_NEWCGROUP"), (0x04000000, "CLONE_NEWUTS"),
    (0x08000000, "CLONE_NEWIPC"), (0x10000000, "CLONE_NEWUSER"), (0x20000000, "CLONE_NEWPID"),
    (0x40000000, "CLONE_NEWNET"), (0x00000200, "CLONE_FILES"), (0x00000400, "CLONE_FS"),
]
_FCNTL = {0: "F_DUPFD", 1: "F_GETFD", 2: "F_SETFD", 3: "F_GETFL", 4: "F_SETFL", 1030: "F_DUPFD_CLOEXEC"}
_AT_FLAGS = [(0x100, "AT_SYMLINK_NOFOLLOW"), (0x200, "AT_REMOVEDIR"), (0x400, "AT_SYMLINK_FOLLOW"), (0x1000, "AT_EMPTY_PATH")]

_FD_PARAMS = {"fd", "dirfd", "olddirfd", "newdirfd", "olddir", "newdir", "linkdirfd", "oldfd", "newfd", "mountfd"}
_UID_PARAMS = {"uid", "gid", "ruid", "euid", "suid", "rgid", "egid", "sgid"}


def _arg_value(name: str, raw: int, ev: Event) -> Any:
    if name in _FD_PARAMS:
        v = s32(raw)
        return v
    if name in _UID_PARAMS:
        return s32(raw)
    if name == "flags" and ev.name in ("open", "openat", "openat2"):
        return open_flags(raw)
    if name == "flags" and ev.name in ("unlinkat", "linkat", "fchownat", "fchmodat2"):
        return _flags(raw, _AT_FLAGS, "0")
    if name == "flags" and ev.name in ("unshare",):
        return _flags(raw, _CLONE_NS, "0")
    if name == "mode":
        m = raw & 0o7777
        return f"0{m:o}" if m else "0"
    if name == "domain":
        return _DOMAINS.get(raw, str(raw))
    if name == "type" and ev.name in ("socket", "socketpair"):
        base = _SOCK_TYPES.get(raw & 0xF, str(raw & 0xF))
        extra = _flags(raw & ~0xF, [(0o2000000, "SOCK_CLOEXEC"), (0o4000, "SOCK_NONBLOCK")])
        return base + ("|" + extra if extra else "")
    if name == "flags" and ev.name in ("accept4", "socket", "pipe2", "dup3", "eventfd2", "memfd_create"):
        return _flags(raw, [(0o2000000, "O_CLOEXEC" if ev.name in ("pipe2", "dup3") else "SOCK_CLOEXEC"),
                            (0o4000, "O_NONBLOCK" if ev.name in ("pipe2", "dup3") else "SOCK_NONBLOCK")], "0")
    if name == "request":
        return _PTRACE.get(raw, str(raw))
    if name == "cmd" and ev.name == "fcntl":
        return _FCNTL.get(s32(raw), str(s32(raw)))
    if name in ("pid", "sig", "backlog", "how", "nstype", "tgid", "tid"):
        return s32(raw)
    return raw


def event_args(ev: Event) -> dict[str, Any]:
    """The event's arguments by Falco name, typed for people and JSON."""
    out: dict[str, Any] = {}
    if ev.type == EventType.EXEC and ev.exec is not None:
        x = ev.exec
        out["exe"] = x.argv[0] if x.argv else x.filename
        out["args"] = x.argv[1:]
        out["exepath"] = x.exepath
        out["filename"] = x.filename
        out["cwd"] = x.cwd
        out["ppid"] = x.ppid
        out["loginuid"] = s32(x.loginuid)
        out["tty"] = x.tty
        out["cap_effective"] = hex(x.cap_effective)
        flags = [n for b, n in ((1, "EXE_FROM_MEMFD"), (2, "EXE_UPPER_LAYER"), (4, "EXE_LOWER_LAYER"), (8, "EXE_WRITABLE")) if x.exe_flags & b]
        out["flags"] = "|".join(flags) if flags else "0"
        return out
    if ev.type == EventType.FORK:
        return {"child_tid": ev.args[0], "child_pid": ev.args[1], "thread": ev.args[1] == ev.pid}
    if ev.type == EventType.EXIT:
        status = ev.ret
        out = {"status": status, "code": (status >> 8) & 0xFF, "last_thread": bool(ev.args[0])}
        if status & 0x7F:
            out["signal"] = status & 0x7F
        return out
    spec = BY_NR.get(ev.nr)
    if spec is None:
        return {f"arg{i}": a for i, a in enumerate(ev.args)}
    strs = dict(zip(spec.string_params, ev.strings))
    for i, name in enumerate(spec.params):
        if name in strs:
            out[name] = strs[name]
        elif name in ("addr", "msg", "data", "argv", "envp", "img", "handle", "attr", "header", "sv", "pipefd") or (
            name == "addrlen" and ev.name in ("accept", "accept4")
        ):
            continue  # pointers: their content, where copied, is shown elsewhere
        else:
            out[name] = _arg_value(name, ev.args[i], ev)
    if spec.fdpair is not None and ev.ret == 0:
        out["fd1"] = s32(ev.args[4])
        out["fd2"] = s32(ev.args[5])
    if ev.sock is not None:
        t = ev.sock.tuple_str() if ev.sock.family != AF_UNIX else ev.sock.path
        if t and t not in ("0.0.0.0:0->0.0.0.0:0", ":::0->:::0"):
            out["tuple"] = t
    return out


def result(ev: Event) -> str:
    if ev.type != EventType.SYSCALL:
        return "SUCCESS"
    return errno_name(ev.ret)
