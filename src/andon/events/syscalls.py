"""The syscalls andon traces, and what the kernel side copies for each.

This table is the one source of truth for syscall events: the loader turns each entry
into a ``struct andon_sc_spec`` in the BPF map ``sc_specs``; the decoder uses the same
entry to name the arguments the way Falco's event table does (``evt.arg.flags``,
``evt.arg.linkpath``...). ``params`` lists the six raw argument slots in order; the
strings the kernel copied are named by ``strings`` (which raw slot each came from).

Categories group the types for ``andon events --type``: ``file``, ``net``, ``process``,
``fd`` (syscalls that only keep the fd table true).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .nr_ia32 import IA32_SYSCALL_NAMES
from .nr_x86_64 import SYSCALL_NAMES, SYSCALL_NUMBERS

NONE = 0xFF
RET = 6  # "the return value is the fd" for sock_fd


@dataclass(frozen=True)
class SyscallSpec:
    name: str
    category: str
    params: tuple[str, ...]  # names of raw args 0..n, as Falco names them
    str0: int | None = None  # raw arg index of a user string
    str1: int | None = None
    sock_fd: int | None = None  # raw arg index of a socket fd, or RET
    sa: int | None = None  # raw arg index of a struct sockaddr *
    salen: int | None = None  # raw arg index of its length
    msghdr: int | None = None  # raw arg index of a struct msghdr *
    how: int | None = None  # raw arg index of a struct open_how * (openat2)
    fdpair: int | None = None  # raw arg index of an int[2] filled by the call
    sa_local: bool = False  # the sockaddr is our own address (bind), not the peer
    returns_fd: bool = False  # a non-negative return value is a new fd
    nr: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nr", SYSCALL_NUMBERS[self.name])

    def pack(self, enabled: bool) -> bytes:
        """The ``struct andon_sc_spec`` for the kernel (16 bytes)."""

        def b(v: int | None) -> int:
            return NONE if v is None else v

        return struct.pack(
            "<10B6x",
            1 if enabled else 0,
            b(self.str0),
            b(self.str1),
            b(self.sock_fd),
            b(self.sa),
            b(self.salen),
            b(self.msghdr),
            b(self.how),
            b(self.fdpair),
            1 if self.sa_local else 0,
        )

    @property
    def string_params(self) -> tuple[str, ...]:
        """Names of the strings in the record's data, in order."""
        out = []
        for idx in (self.str0, self.str1):
            if idx is not None:
                out.append(self.params[idx])
        return tuple(out)


S = SyscallSpec
SPECS: tuple[SyscallSpec, ...] = (
    # -- file ---------------------------------------------------------------------------
    S("open", "file", ("name", "flags", "mode"), str0=0, returns_fd=True),
    S("openat", "file", ("dirfd", "name", "flags", "mode"), str0=1, returns_fd=True),
    S("openat2", "file", ("dirfd", "name", "flags", "mode", "resolve"), str0=1, how=2, returns_fd=True),
    S("creat", "file", ("name", "mode"), str0=0, returns_fd=True),
    S("open_by_handle_at", "file", ("mountfd", "handle", "flags"), returns_fd=True),
    S("memfd_create", "file", ("name", "flags"), str0=0, returns_fd=True),
    S("rename", "file", ("oldpath", "newpath"), str0=0, str1=1),
    S("renameat", "file", ("olddirfd", "oldpath", "newdirfd", "newpath"), str0=1, str1=3),
    S("renameat2", "file", ("olddirfd", "oldpath", "newdirfd", "newpath", "flags"), str0=1, str1=3),
    S("unlink", "file", ("path",), str0=0),
    S("unlinkat", "file", ("dirfd", "name", "flags"), str0=1),
    S("link", "file", ("oldpath", "newpath"), str0=0, str1=1),
    S("linkat", "file", ("olddir", "oldpath", "newdir", "newpath", "flags"), str0=1, str1=3),
    S("symlink", "file", ("target", "linkpath"), str0=0, str1=1),
    S("symlinkat", "file", ("target", "linkdirfd", "linkpath"), str0=0, str1=2),
    S("mkdir", "file", ("path", "mode"), str0=0),
    S("mkdirat", "file", ("dirfd", "path", "mode"), str0=1),
    S("rmdir", "file", ("path",), str0=0),
    S("chmod", "file", ("filename", "mode"), str0=0),
    S("fchmod", "file", ("fd", "mode")),
    S("fchmodat", "file", ("dirfd", "filename", "mode"), str0=1),
    S("fchmodat2", "file", ("dirfd", "filename", "mode", "flags"), str0=1),
    S("chown", "file", ("path", "uid", "gid"), str0=0),
    S("lchown", "file", ("path", "uid", "gid"), str0=0),
    S("fchown", "file", ("fd", "uid", "gid")),
    S("fchownat", "file", ("dirfd", "pathname", "uid", "gid", "flags"), str0=1),
    S("truncate", "file", ("path", "length"), str0=0),
    S("chdir", "file", ("path",), str0=0),
    S("fchdir", "file", ("fd",)),
    S("chroot", "file", ("path",), str0=0),
    S("mount", "file", ("dev", "dir", "type", "flags"), str0=0, str1=1),
    S("umount2", "file", ("name", "flags"), str0=0),
    # -- fd table -----------------------------------------------------------------------
    S("close", "fd", ("fd",)),
    S("close_range", "fd", ("fd", "max_fd", "flags")),
    S("dup", "fd", ("oldfd",), returns_fd=True),
    S("dup2", "fd", ("oldfd", "newfd"), returns_fd=True),
    S("dup3", "fd", ("oldfd", "newfd", "flags"), returns_fd=True),
    S("fcntl", "fd", ("fd", "cmd", "arg")),
    S("pipe", "fd", ("pipefd",), fdpair=0),
    S("pipe2", "fd", ("pipefd", "flags"), fdpair=0),
    S("eventfd2", "fd", ("initval", "flags"), returns_fd=True),
    S("signalfd4", "fd", ("fd", "mask", "sizemask", "flags"), returns_fd=True),
    S("timerfd_create", "fd", ("clockid", "flags"), returns_fd=True),
    S("inotify_init1", "fd", ("flags",), returns_fd=True),
    S("epoll_create1", "fd", ("flags",), returns_fd=True),
    S("userfaultfd", "fd", ("flags",), returns_fd=True),
    # -- net ----------------------------------------------------------------------------
    S("socket", "net", ("domain", "type", "proto"), sock_fd=RET, returns_fd=True),
    S("socketpair", "net", ("domain", "type", "proto", "sv"), fdpair=3),
    S("connect", "net", ("fd", "addr", "addrlen"), sock_fd=0, sa=1, salen=2),
    S("accept", "net", ("fd", "addr", "addrlen"), sock_fd=RET, returns_fd=True),
    S("accept4", "net", ("fd", "addr", "addrlen", "flags"), sock_fd=RET, returns_fd=True),
    S("bind", "net", ("fd", "addr", "addrlen"), sock_fd=0, sa=1, salen=2, sa_local=True),
    S("listen", "net", ("fd", "backlog"), sock_fd=0),
    S("sendto", "net", ("fd", "data", "size", "flags", "addr", "addrlen"), sock_fd=0, sa=4, salen=5),
    S("sendmsg", "net", ("fd", "msg", "flags"), sock_fd=0, msghdr=1),
    S("shutdown", "net", ("fd", "how"), sock_fd=0),
    # -- process and privileges -----------------------------------------------------------
    S("execve", "process", ("filename", "argv", "envp"), str0=0),
    S("execveat", "process", ("dirfd", "pathname", "argv", "envp", "flags"), str0=1),
    S("ptrace", "process", ("request", "pid", "addr", "data")),
    S("init_module", "process", ("img", "length", "uargs"), str0=2),
    S("finit_module", "process", ("fd", "uargs", "flags"), str0=1),
    S("delete_module", "process", ("name", "flags"), str0=0),
    S("setuid", "process", ("uid",)),
    S("setgid", "process", ("gid",)),
    S("setreuid", "process", ("ruid", "euid")),
    S("setregid", "process", ("rgid", "egid")),
    S("setresuid", "process", ("ruid", "euid", "suid")),
    S("setresgid", "process", ("rgid", "egid", "sgid")),
    S("setfsuid", "process", ("uid",)),
    S("setfsgid", "process", ("gid",)),
    S("capset", "process", ("header", "data")),
    S("setsid", "process", ()),
    S("setpgid", "process", ("pid", "pgid")),
    S("prctl", "process", ("option", "arg2", "arg3", "arg4", "arg5")),
    S("unshare", "process", ("flags",)),
    S("setns", "process", ("fd", "nstype")),
    S("kill", "process", ("pid", "sig")),
    S("tgkill", "process", ("tgid", "tid", "sig")),
    S("bpf", "process", ("cmd", "attr", "size")),
    S("seccomp", "process", ("op", "flags", "args")),
)
del S

BY_NAME: dict[str, SyscallSpec] = {s.name: s for s in SPECS}
BY_NR: dict[int, SyscallSpec] = {s.nr: s for s in SPECS}

# Event types that do not come from sys_exit, and their Falco names.
PROCESS_TYPES = ("execve", "execveat", "clone", "procexit")

CATEGORIES: dict[str, tuple[str, ...]] = {
    "file": tuple(s.name for s in SPECS if s.category == "file"),
    "fd": tuple(s.name for s in SPECS if s.category == "fd"),
    "net": tuple(s.name for s in SPECS if s.category == "net"),
    "process": PROCESS_TYPES + tuple(s.name for s in SPECS if s.category == "process"),
}

# Short names users type, as in `andon events --type exec,open,connect`
ALIASES: dict[str, tuple[str, ...]] = {
    "exec": ("execve", "execveat"),
    "open": ("open", "openat", "openat2", "creat", "open_by_handle_at"),
    "fork": ("clone",),
    "exit": ("procexit",),
    **CATEGORIES,
}

ALL_TYPES: tuple[str, ...] = tuple(dict.fromkeys(PROCESS_TYPES + tuple(BY_NAME)))


def _ia32_map() -> dict[int, int]:
    """i386 syscall number -> x86_64 number, for the syscalls andon traces. The 32-bit
    uid calls (``setuid32``...) and ``fcntl64`` are the same calls with wider types; the
    old 16-bit ``setuid`` etc. map to the same syscall too."""
    out: dict[int, int] = {}
    for nr32, name in IA32_SYSCALL_NAMES.items():
        base = name
        for suffix in ("32", "64"):
            if base.endswith(suffix) and base[: -len(suffix)] in BY_NAME:
                base = base[: -len(suffix)]
        if base in BY_NAME:
            out[nr32] = BY_NAME[base].nr
    return out


IA32_TO_X86_64: dict[int, int] = _ia32_map()


def expand_types(words: list[str] | tuple[str, ...]) -> set[str]:
    """Turn user words (names, aliases, categories) into the set of event type names."""
    from ..errors import UsageError

    out: set[str] = set()
    for w in words:
        w = w.strip()
        if not w:
            continue
        if w == "all":
            out.update(ALL_TYPES)
        elif w in ALIASES:
            out.update(ALIASES[w])
        elif w in ALL_TYPES:
            out.add(w)
        else:
            raise UsageError(
                f"unknown event type {w!r}; use a syscall name ({', '.join(sorted(BY_NAME)[:6])}, ...), "
                f"or one of: {', '.join(sorted(ALIASES))}, all"
            )
    return out


def syscall_name(nr: int) -> str:
    return SYSCALL_NAMES.get(nr, f"syscall_{nr}")
