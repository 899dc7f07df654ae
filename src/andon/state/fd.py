"""Per-process file descriptor tables, kept true by the fd syscalls.

One :class:`FdTable` per process (threads share it, as CLONE_FILES threads do). Each entry
is an :class:`FdInfo` whose attributes serve Falco's ``fd.*`` fields: ``fd.type`` and
``fd.typechar`` use libsinsp's values (``userspace/libsinsp/fdinfo.cpp``), ``fd.name`` is the
normalised absolute path for files and ``cip:cport->sip:sport`` (client to server) for inet
sockets, ``fd.nameraw`` the path as the program passed it.

A fork gives the child a copy of the parent's table. Copying thousands of entries on every
fork would cost more than the fork event is worth, so tables are copy-on-write: the child
shares the parent's dict until either side changes it. Entries themselves are shared by
fork and dup, as the kernel shares the open file: a connect() seen on one fd renames the
socket for every fd that refers to it. What is per-descriptor (close-on-exec) is changed by
replacing the entry, never in place.

:class:`FdTracker` turns syscall events into table updates; the process table calls it.
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..events.schema import AF_INET, AF_INET6, AF_UNIX, Event, Sock
from ..events.syscalls import BY_NAME

# Linux open(2) flags (asm-generic/fcntl.h) and friends
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_TRUNC = 0o1000
O_DIRECTORY = 0o200000
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE: O_TMPFILE carries O_DIRECTORY too, yet opens a file
O_CLOEXEC = 0o2000000
FD_CLOEXEC = 1
F_DUPFD = 0
F_SETFD = 2
F_DUPFD_CLOEXEC = 1030
MFD_CLOEXEC = 0x1
CLOSE_RANGE_UNSHARE = 0x2
CLOSE_RANGE_CLOEXEC = 0x4
AT_FDCWD = -100
EINPROGRESS = 115
EBADF = 9
AF_NETLINK = 16
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
IPPROTO_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_RAW = 0, 1, 6, 17, 255

# fd.type -> fd.typechar, as libsinsp prints them. Server sockets have the same type
# strings as client ones ("ipv4"/"ipv6"); "<NA>" is an fd of a kind we could not tell.
TYPECHAR: dict[str, str] = {
    "file": "f",
    "directory": "d",
    "ipv4": "4",
    "ipv6": "6",
    "unix": "u",
    "pipe": "p",
    "event": "e",
    "signalfd": "s",
    "eventpoll": "l",
    "inotify": "i",
    "timerfd": "t",
    "netlink": "n",
    "bpf": "b",
    "userfaultfd": "u",
    "io_uring": "r",
    "memfd": "m",
    "pidfd": "P",
    "<NA>": "o",
}

# bpf(2) commands whose non-negative return value is a new fd (include/uapi/linux/bpf.h)
BPF_FD_CMDS = frozenset({0, 5, 7, 13, 14, 17, 18, 19, 28, 30})

NA = "<NA>"


def s32(v: int) -> int:
    """A raw syscall argument as the C ``int`` it was: AT_FDCWD arrives as 2**64-100 or
    2**32-100 depending on how the register was filled."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def normalize(path: str) -> str:
    """Falco's path normalisation (sinsp_utils::concatenate_paths): collapse ``//``, ``.``
    and ``..`` (never above ``/``). Absolute paths only."""
    if "//" not in path and "/." not in path and not path.endswith("/"):
        return path
    out = posixpath.normpath(path)
    if out.startswith("//"):  # POSIX keeps a leading '//'; Falco does not
        out = "/" + out.lstrip("/")
    return out


def join(base: str, path: str) -> str:
    """``path`` made absolute against the directory ``base``, normalised."""
    if path.startswith("/"):
        return normalize(path)
    if not path:
        return normalize(base) if base else ""
    if base.endswith("/"):
        return normalize(base + path)
    return normalize(base + "/" + path)


def _unmap(addr: str) -> str | None:
    """The IPv4 address inside an IPv4-mapped (or all-zero) IPv6 address, else None."""
    if addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    if addr == "::":
        return "0.0.0.0"
    return None


def l4proto_of(family: int, stype: int, proto: int) -> str:
    """Falco's fd.l4proto for a socket() call (parsers.cpp add_socket)."""
    if family not in (AF_INET, AF_INET6):
        return ""
    stype &= 0xFF
    if proto == IPPROTO_TCP:
        return "raw" if stype == SOCK_RAW else "tcp"
    if proto == IPPROTO_UDP:
        return "raw" if stype == SOCK_RAW else "udp"
    if proto == IPPROTO_IP:
        return {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}.get(stype, "")
    if proto in (IPPROTO_ICMP, 58):
        return "raw" if stype == SOCK_RAW else "icmp"
    if proto == IPPROTO_RAW:
        return "raw"
    return ""


def sock_type_of(family: int) -> str:
    if family == AF_INET:
        return "ipv4"
    if family == AF_INET6:
        return "ipv6"
    if family == AF_UNIX:
        return "unix"
    if family == AF_NETLINK:
        return "netlink"
    return NA


class FdInfo:
    """One open file descriptor. Attribute names follow Falco's ``fd.*`` fields."""

    __slots__ = (
        "num",
        "type",
        "name",
        "nameraw",
        "flags",
        "l4proto",
        "role",
        "cip",
        "cport",
        "sip",
        "sport",
        "connected",
        "listening",
        "ino",
    )

    def __init__(
        self,
        num: int,
        type: str,
        name: str = "",
        nameraw: str = "",
        flags: int = 0,
        *,
        l4proto: str = "",
        role: str = "",
        cip: str = "",
        cport: int = 0,
        sip: str = "",
        sport: int = 0,
        connected: bool = False,
        listening: bool = False,
        ino: int = 0,
    ) -> None:
        self.num = num
        self.type = type  # fd.type
        self.name = name  # fd.name
        self.nameraw = nameraw  # fd.nameraw
        self.flags = flags  # open flags (Linux O_*), O_CLOEXEC tracked
        self.l4proto = l4proto  # fd.l4proto: tcp, udp, icmp, raw or ""
        self.role = role  # "client", "server" or ""
        self.cip = cip  # fd.cip / fd.cport: the client side of an inet socket
        self.cport = cport
        self.sip = sip  # fd.sip / fd.sport: the server side
        self.sport = sport
        self.connected = connected  # fd.connected
        self.listening = listening
        self.ino = ino  # pipe/socket inode when known (from /proc)

    # -- Falco's derived fields ---------------------------------------------------------
    @property
    def typechar(self) -> str:
        return TYPECHAR.get(self.type, "?")

    @property
    def cloexec(self) -> bool:
        return bool(self.flags & O_CLOEXEC)

    @property
    def is_socket(self) -> bool:
        return self.type in ("ipv4", "ipv6", "unix")

    @property
    def is_server(self) -> bool:
        return self.role == "server"

    @property
    def lip(self) -> str:
        return self.sip if self.role == "server" else self.cip

    @property
    def lport(self) -> int:
        return self.sport if self.role == "server" else self.cport

    @property
    def rip(self) -> str:
        return self.cip if self.role == "server" else self.sip

    @property
    def rport(self) -> int:
        return self.cport if self.role == "server" else self.sport

    @property
    def directory(self) -> str:
        """fd.directory: the directory holding a file ("" for non-files)."""
        if self.type == "directory":
            return self.name
        if self.type != "file" or "/" not in self.name:
            return ""
        d = self.name.rsplit("/", 1)[0]
        return d or "/"

    @property
    def filename(self) -> str:
        """fd.filename: the last path component of a file ("" for non-files)."""
        if self.type not in ("file", "directory") or "/" not in self.name:
            return ""
        return self.name.rsplit("/", 1)[1]

    # -- copies and serialisation -------------------------------------------------------
    def copy(self, num: int | None = None) -> FdInfo:
        c = FdInfo.__new__(FdInfo)
        for k in FdInfo.__slots__:
            setattr(c, k, getattr(self, k))
        if num is not None:
            c.num = num
        return c

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"num": self.num, "type": self.type, "name": self.name}
        if self.nameraw:
            d["nameraw"] = self.nameraw
        if self.flags:
            d["flags"] = self.flags
        for k in ("l4proto", "role", "cip", "cport", "sip", "sport", "connected", "listening", "ino"):
            v = getattr(self, k)
            if v:
                d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FdInfo:
        return cls(
            int(d["num"]),
            str(d["type"]),
            str(d.get("name", "")),
            str(d.get("nameraw", "")),
            int(d.get("flags", 0)),
            l4proto=str(d.get("l4proto", "")),
            role=str(d.get("role", "")),
            cip=str(d.get("cip", "")),
            cport=int(d.get("cport", 0)),
            sip=str(d.get("sip", "")),
            sport=int(d.get("sport", 0)),
            connected=bool(d.get("connected", False)),
            listening=bool(d.get("listening", False)),
            ino=int(d.get("ino", 0)),
        )

    def __repr__(self) -> str:
        return f"FdInfo({self.num}, {self.type!r}, {self.name!r})"


def inet_name(cip: str, cport: int, sip: str, sport: int) -> str:
    """Falco's fd.name of a connected inet socket: client to server."""
    return f"{cip}:{cport}->{sip}:{sport}"


def set_inet_tuple(fi: FdInfo, family: int, lip: str, lport: int, rip: str, rport: int, role: str) -> None:
    """Fill an inet socket's tuple from its local and remote sides and the role of the
    local side; IPv4-mapped IPv6 pairs become IPv4, as libsinsp does."""
    if family == AF_INET6:
        a, b = _unmap(lip), _unmap(rip)
        if a is not None and b is not None:
            family, lip, rip = AF_INET, a, b
    fi.type = "ipv4" if family == AF_INET else "ipv6"
    if role == "server":
        fi.sip, fi.sport, fi.cip, fi.cport = lip, lport, rip, rport
    else:
        fi.cip, fi.cport, fi.sip, fi.sport = lip, lport, rip, rport
    fi.role = role
    fi.name = inet_name(fi.cip, fi.cport, fi.sip, fi.sport)


class FdTable:
    """The fd table of one process: ``fd -> FdInfo``, copy-on-write across fork.

    ``max_fds`` bounds it; an fd that does not fit is not tracked and ``dropped`` counts it.
    """

    __slots__ = ("_d", "_ref", "max_fds", "dropped")

    def __init__(self, max_fds: int = 4096) -> None:
        self._d: dict[int, FdInfo] = {}
        self._ref = [1]  # how many tables share _d
        self.max_fds = max_fds
        self.dropped = 0

    # -- reading ------------------------------------------------------------------------
    def get(self, fd: int) -> FdInfo | None:
        return self._d.get(fd)

    def __getitem__(self, fd: int) -> FdInfo:
        return self._d[fd]

    def __contains__(self, fd: object) -> bool:
        return fd in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._d))

    def items(self) -> list[tuple[int, FdInfo]]:
        return sorted(self._d.items())

    # -- copy-on-write ------------------------------------------------------------------
    def fork(self) -> FdTable:
        """The child's table after fork: shares entries until either side writes."""
        t = FdTable.__new__(FdTable)
        t._d = self._d
        t._ref = self._ref
        t.max_fds = self.max_fds
        t.dropped = 0
        self._ref[0] += 1
        return t

    def _own(self) -> dict[int, FdInfo]:
        if self._ref[0] > 1:
            self._ref[0] -= 1
            self._d = dict(self._d)
            self._ref = [1]
        return self._d

    def release(self) -> None:
        """Drop this table (process gone): the other sharers stop counting it."""
        if self._ref[0] > 1:
            self._ref[0] -= 1
            self._ref = [1]
        self._d = {}

    @property
    def shared(self) -> bool:
        return self._ref[0] > 1

    # -- writing ------------------------------------------------------------------------
    def add(self, fi: FdInfo) -> FdInfo | None:
        d = self._own()
        if fi.num not in d and len(d) >= self.max_fds:
            self.dropped += 1
            return None
        d[fi.num] = fi
        return fi

    def add_remove(self, fd: int) -> None:
        """``add`` of a new entry for ``fd`` and at once ``remove(fd)``: what an open closed
        right away leaves, without building the entry (an entry already there is gone; a
        full table counts the add it refused)."""
        d = self._d
        if fd in d:
            self._own().pop(fd, None)
        elif len(d) >= self.max_fds:
            self.dropped += 1

    def remove(self, fd: int) -> FdInfo | None:
        if fd not in self._d:
            return None
        return self._own().pop(fd, None)

    def dup(self, old: int, new: int, cloexec: bool) -> FdInfo | None:
        """``new`` becomes a copy of ``old`` (dup, dup2, dup3, F_DUPFD): same file, its own
        close-on-exec bit."""
        src = self._d.get(old)
        if src is None:
            self.remove(new)  # dup2 closed whatever new was; we do not know what it is now
            return None
        c = src.copy(new)
        c.flags = (c.flags | O_CLOEXEC) if cloexec else (c.flags & ~O_CLOEXEC)
        return self.add(c)

    def set_cloexec(self, fd: int, on: bool) -> None:
        fi = self._d.get(fd)
        if fi is None or fi.cloexec == on:
            return
        c = fi.copy()
        c.flags = (c.flags | O_CLOEXEC) if on else (c.flags & ~O_CLOEXEC)
        self._own()[fd] = c

    def close_range(self, first: int, last: int, cloexec: bool) -> int:
        """close_range(2): close (or mark close-on-exec) every fd in [first, last]."""
        hit = [fd for fd in self._d if first <= fd <= last]
        if not hit:
            return 0
        if cloexec:
            for fd in hit:
                self.set_cloexec(fd, True)
        else:
            d = self._own()
            for fd in hit:
                del d[fd]
        return len(hit)

    def exec(self) -> int:
        """execve(2) closes the close-on-exec fds; returns how many."""
        hit = [fd for fd, fi in self._d.items() if fi.flags & O_CLOEXEC]
        if hit:
            d = self._own()
            for fd in hit:
                del d[fd]
        return len(hit)

    def clear(self) -> None:
        self._own().clear()

    # -- serialisation ------------------------------------------------------------------
    def to_list(self) -> list[dict[str, Any]]:
        return [fi.to_dict() for _, fi in self.items()]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]], max_fds: int = 4096) -> FdTable:
        t = cls(max_fds)
        for d in items:
            t.add(FdInfo.from_dict(d))
        return t


# ---------------------------------------------------------------------------------------
# Events -> table updates
# ---------------------------------------------------------------------------------------
_NR = {name: spec.nr for name, spec in BY_NAME.items()}


# the path calls whose fd entry ``open_args`` can make from raw records
OPEN_PATH_NRS = frozenset(_NR[n] for n in ("open", "openat", "openat2", "creat"))
_CREAT_FLAGS = O_CREAT | O_WRONLY | O_TRUNC


def open_args(nr: np.ndarray, args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dirfd, flags)`` of a batch of path opens (``nr`` in OPEN_PATH_NRS, ``args`` the
    records' (n, 6) raw arguments), each as the ``FdTracker._on_<call>`` handler reads it."""
    a0 = (args[:, 0] & 0xFFFFFFFF).astype(np.int64)
    dirfd_at = np.where(a0 >= 1 << 31, a0 - (1 << 32), a0)  # s32
    at = (nr == _NR["openat"]) | (nr == _NR["openat2"])
    dirfd = np.where(at, dirfd_at, AT_FDCWD)
    flags = np.where(nr == _NR["openat"], args[:, 2] & 0xFFFFFFFF, args[:, 2])  # openat2: open_how.flags
    flags = np.where(nr == _NR["open"], args[:, 1] & 0xFFFFFFFF, flags)
    flags = np.where(nr == _NR["creat"], _CREAT_FLAGS, flags)
    return dirfd, flags


class FdTracker:
    """Applies fd syscall events to a process's :class:`FdTable`.

    ``handlers`` maps syscall numbers to ``handler(proc, ev)``, where ``proc`` has ``fds``
    (an FdTable) and ``cwd``; the process table merges it into its own dispatch so one
    dict lookup routes every syscall event.
    """

    def __init__(self) -> None:
        self.handlers: dict[int, Callable[[Any, Event], None]] = {}
        h = self.handlers
        for name in ("open", "openat", "openat2", "creat", "open_by_handle_at"):
            h[_NR[name]] = getattr(self, "_on_" + name)
        h[_NR["memfd_create"]] = self._on_memfd_create
        h[_NR["close"]] = self._on_close
        h[_NR["close_range"]] = self._on_close_range
        h[_NR["dup"]] = self._on_dup
        h[_NR["dup2"]] = self._on_dup
        h[_NR["dup3"]] = self._on_dup3
        h[_NR["fcntl"]] = self._on_fcntl
        h[_NR["pipe"]] = self._on_pipe
        h[_NR["pipe2"]] = self._on_pipe
        h[_NR["socketpair"]] = self._on_socketpair
        simple = {
            "eventfd2": ("event", 1),
            "signalfd4": ("signalfd", 3),
            "timerfd_create": ("timerfd", 1),
            "inotify_init1": ("inotify", 0),
            "epoll_create1": ("eventpoll", 0),
            "userfaultfd": ("userfaultfd", 0),
        }
        for name, (typ, flag_arg) in simple.items():
            h[_NR[name]] = self._simple(typ, flag_arg)
        h[_NR["bpf"]] = self._on_bpf
        h[_NR["socket"]] = self._on_socket
        h[_NR["connect"]] = self._on_connect
        h[_NR["accept"]] = self._on_accept
        h[_NR["accept4"]] = self._on_accept
        h[_NR["bind"]] = self._on_bind
        h[_NR["listen"]] = self._on_listen
        h[_NR["sendto"]] = self._on_send
        h[_NR["sendmsg"]] = self._on_send

    # -- paths --------------------------------------------------------------------------
    @staticmethod
    def resolve(proc: Any, dirfd: int, path: str) -> str:
        """Falco's fd.name for a path relative to ``dirfd`` (AT_FDCWD: the cwd)."""
        if path.startswith("/"):
            return normalize(path)
        if dirfd == AT_FDCWD:
            return join(proc.cwd or "/", path)
        d = proc.fds.get(dirfd)
        if d is None or not d.name:
            return "<UNKNOWN>/" + path  # libsinsp says <UNKNOWN> for a dirfd it never saw
        return join(d.name, path)

    @staticmethod
    def opened(proc: Any, fd: int, dirfd: int, flags: int, raw: str) -> None:
        """The entry a successful open of ``raw`` (relative to ``dirfd``) returning ``fd``
        makes; also called with raw record values, without an Event (the agent's lean path)."""
        if raw[:1] == "/" and "//" not in raw and "/." not in raw and raw[-1] != "/":
            name = raw  # resolve() of a clean absolute path, the common case, without the calls
        else:
            name = FdTracker.resolve(proc, dirfd, raw) if raw else ""
        typ = "directory" if flags & O_DIRECTORY and not flags & O_TMPFILE_BIT else "file"
        proc.fds.add(FdInfo(fd, typ, name, raw, flags))

    @staticmethod
    def _open(proc: Any, ev: Event, dirfd: int, flags: int) -> None:
        if ev.ret >= 0:
            FdTracker.opened(proc, ev.ret, dirfd, flags, ev.strings[0] if ev.strings else "")

    def _on_open(self, proc: Any, ev: Event) -> None:
        self._open(proc, ev, AT_FDCWD, ev.args[1] & 0xFFFFFFFF)

    def _on_openat(self, proc: Any, ev: Event) -> None:
        self._open(proc, ev, s32(ev.args[0]), ev.args[2] & 0xFFFFFFFF)

    def _on_openat2(self, proc: Any, ev: Event) -> None:
        # the kernel side put open_how.flags in args[2]
        self._open(proc, ev, s32(ev.args[0]), ev.args[2])

    def _on_creat(self, proc: Any, ev: Event) -> None:
        self._open(proc, ev, AT_FDCWD, _CREAT_FLAGS)

    def _on_open_by_handle_at(self, proc: Any, ev: Event) -> None:
        if ev.ret >= 0:
            proc.fds.add(FdInfo(ev.ret, "file", "", "", ev.args[2] & 0xFFFFFFFF))

    def _on_memfd_create(self, proc: Any, ev: Event) -> None:
        if ev.ret < 0:
            return
        name = ev.strings[0] if ev.strings else ""
        flags = O_RDWR | (O_CLOEXEC if ev.args[1] & MFD_CLOEXEC else 0)
        proc.fds.add(FdInfo(ev.ret, "memfd", name, name, flags))

    # -- closing and duplicating ----------------------------------------------------------
    def _on_close(self, proc: Any, ev: Event) -> None:
        # EBADF also means "not open": drop a stale entry we may have kept
        if ev.ret == 0 or ev.ret == -EBADF:
            proc.fds.remove(s32(ev.args[0]))

    def _on_close_range(self, proc: Any, ev: Event) -> None:
        if ev.ret != 0:
            return
        first, last, flags = ev.args[0] & 0xFFFFFFFF, ev.args[1] & 0xFFFFFFFF, ev.args[2]
        proc.fds.close_range(first, last, bool(flags & CLOSE_RANGE_CLOEXEC))

    def _on_dup(self, proc: Any, ev: Event) -> None:  # dup, dup2
        old = s32(ev.args[0])
        if ev.ret < 0 or ev.ret == old:
            return
        proc.fds.dup(old, ev.ret, False)

    def _on_dup3(self, proc: Any, ev: Event) -> None:
        if ev.ret < 0:
            return
        proc.fds.dup(s32(ev.args[0]), ev.ret, bool(ev.args[2] & O_CLOEXEC))

    def _on_fcntl(self, proc: Any, ev: Event) -> None:
        if ev.ret < 0:
            return
        cmd = ev.args[1] & 0xFFFFFFFF
        fd = s32(ev.args[0])
        if cmd == F_DUPFD or cmd == F_DUPFD_CLOEXEC:
            proc.fds.dup(fd, ev.ret, cmd == F_DUPFD_CLOEXEC)
        elif cmd == F_SETFD:
            proc.fds.set_cloexec(fd, bool(ev.args[2] & FD_CLOEXEC))

    # -- anonymous fds ----------------------------------------------------------------------
    def _on_pipe(self, proc: Any, ev: Event) -> None:
        if ev.ret != 0:
            return
        flags = ev.args[1] & 0xFFFFFFFF if ev.nr == _NR["pipe2"] else 0
        a, b = s32(ev.args[4]), s32(ev.args[5])
        if a < 0 or b < 0 or a == b:
            return
        proc.fds.add(FdInfo(a, "pipe", "", "", flags & ~O_WRONLY))
        proc.fds.add(FdInfo(b, "pipe", "", "", (flags & ~O_RDWR) | O_WRONLY))

    def _on_socketpair(self, proc: Any, ev: Event) -> None:
        if ev.ret != 0:
            return
        a, b = s32(ev.args[4]), s32(ev.args[5])
        if a < 0 or b < 0 or a == b:
            return
        family, stype, proto = ev.args[0] & 0xFFFF, ev.args[1] & 0xFFFFFFFF, ev.args[2] & 0xFFFFFFFF
        typ = sock_type_of(family)
        l4 = l4proto_of(family, stype, proto)
        flags = O_RDWR | (O_CLOEXEC if stype & O_CLOEXEC else 0)  # SOCK_CLOEXEC == O_CLOEXEC
        proc.fds.add(FdInfo(a, typ, "", "", flags, l4proto=l4, connected=True))
        proc.fds.add(FdInfo(b, typ, "", "", flags, l4proto=l4, connected=True))

    @staticmethod
    def _simple(typ: str, flag_arg: int) -> Callable[[Any, Event], None]:
        def handler(proc: Any, ev: Event) -> None:
            if ev.ret < 0:
                return
            # every *_CLOEXEC flag of these calls has O_CLOEXEC's value
            flags = O_CLOEXEC if ev.args[flag_arg] & O_CLOEXEC else 0
            proc.fds.add(FdInfo(ev.ret, typ, "", "", flags))

        return handler

    def _on_bpf(self, proc: Any, ev: Event) -> None:
        if ev.ret >= 0 and (ev.args[0] & 0xFFFFFFFF) in BPF_FD_CMDS:
            proc.fds.add(FdInfo(ev.ret, "bpf", "", "", O_CLOEXEC))

    # -- sockets ------------------------------------------------------------------------
    def _on_socket(self, proc: Any, ev: Event) -> None:
        if ev.ret < 0:
            return
        domain, stype, proto = ev.args[0] & 0xFFFF, ev.args[1] & 0xFFFFFFFF, ev.args[2] & 0xFFFFFFFF
        flags = O_RDWR | (O_CLOEXEC if stype & O_CLOEXEC else 0)
        proc.fds.add(FdInfo(ev.ret, sock_type_of(domain), "", "", flags, l4proto=l4proto_of(domain, stype, proto)))

    @staticmethod
    def _sock_fd(proc: Any, fd: int, s: Sock | None) -> FdInfo | None:
        """The table's entry for a socket fd, made from the event's tuple when the socket
        was opened before we looked (or its event was lost)."""
        fi = proc.fds.get(fd)
        if fi is not None:
            if fi.is_socket or s is None:
                return fi
        if s is None or not s.family:
            return None
        fi = FdInfo(fd, sock_type_of(s.family), "", "", O_RDWR, l4proto=s.l4proto)
        return proc.fds.add(fi)

    def _on_connect(self, proc: Any, ev: Event) -> None:
        if ev.ret < 0 and ev.ret != -EINPROGRESS:
            return
        s = ev.sock
        fi = self._sock_fd(proc, s32(ev.args[0]), s)
        if fi is None or s is None:
            return
        if s.family == AF_UNIX:
            fi.type = "unix"
            if s.path:
                fi.name = s.path
            if not fi.role:
                fi.role = "client"
        elif s.family in (AF_INET, AF_INET6):
            if s.l4proto:
                fi.l4proto = s.l4proto
            # a UDP server that connect()s keeps its server side local
            role = "server" if fi.role == "server" and fi.l4proto == "udp" else "client"
            set_inet_tuple(fi, s.family, s.saddr, s.sport, s.daddr, s.dport, role)
        else:
            return
        fi.connected = True

    def _on_accept(self, proc: Any, ev: Event) -> None:
        if ev.ret < 0:
            return
        s = ev.sock
        flags = O_RDWR
        if ev.nr == _NR["accept4"] and ev.args[3] & O_CLOEXEC:
            flags |= O_CLOEXEC
        if s is None or not s.family:
            lst = proc.fds.get(s32(ev.args[0]))
            typ = lst.type if lst is not None else NA
            proc.fds.add(FdInfo(ev.ret, typ, "", "", flags, role="server", connected=True))
            return
        fi = FdInfo(ev.ret, sock_type_of(s.family), "", "", flags, l4proto=s.l4proto, connected=True)
        if s.family == AF_UNIX:
            fi.role = "server"
            lst = proc.fds.get(s32(ev.args[0]))  # the listening socket knows the path
            fi.name = s.path or (lst.name if lst is not None else "")
        else:
            # the new fd's local side is the server, its peer the client
            set_inet_tuple(fi, s.family, s.saddr, s.sport, s.daddr, s.dport, "server")
        proc.fds.add(fi)

    def _on_bind(self, proc: Any, ev: Event) -> None:
        if ev.ret != 0:
            return
        s = ev.sock
        fi = self._sock_fd(proc, s32(ev.args[0]), s)
        if fi is None or s is None:
            return
        if s.family == AF_UNIX:
            fi.type = "unix"
            fi.name = s.path
            fi.role = "server"
            return
        if s.family not in (AF_INET, AF_INET6):
            return
        if s.l4proto:
            fi.l4proto = s.l4proto
        ip, port, fam = s.saddr, s.sport, s.family
        if fam == AF_INET6:
            m = _unmap(ip)
            if m is not None and ip != "::":
                fam, ip = AF_INET, m
        fi.type = "ipv4" if fam == AF_INET else "ipv6"
        fi.name = f"{ip}:{port}"  # libsinsp names a bound socket by its address
        if port > 0:  # as libsinsp: a bound port makes it a server socket
            fi.role = "server"
            fi.sip, fi.sport = ip, port

    def _on_listen(self, proc: Any, ev: Event) -> None:
        if ev.ret != 0:
            return
        s = ev.sock
        fi = self._sock_fd(proc, s32(ev.args[0]), s)
        if fi is None:
            return
        fi.role = "server"
        fi.listening = True
        if s is not None and s.family in (AF_INET, AF_INET6) and not fi.sport:
            fi.sip, fi.sport = s.saddr, s.sport
            if not fi.name:
                fi.name = f"{s.saddr}:{s.sport}"

    def _on_send(self, proc: Any, ev: Event) -> None:
        # an unconnected UDP socket is named by the last peer it sent to (fd.name_changed)
        s = ev.sock
        if ev.ret < 0 or s is None or s.family not in (AF_INET, AF_INET6) or not s.from_arg:
            return
        fd = s32(ev.args[0])
        fi = proc.fds.get(fd)
        if fi is None:
            # libsinsp guesses UDP for a send on a socket it never saw created
            fi = proc.fds.add(FdInfo(fd, sock_type_of(s.family), "", "", O_RDWR, l4proto=s.l4proto or "udp"))
            if fi is None:
                return
        if fi.connected or fi.l4proto != "udp":
            return
        role = "server" if fi.role == "server" else "client"
        set_inet_tuple(fi, s.family, s.saddr, s.sport, s.daddr, s.dport, role)


def fd_type_from_link(target: str) -> tuple[str, str]:
    """fd.type and fd.name for a /proc/<pid>/fd/<n> link target (sockets excepted)."""
    if target.startswith("/"):
        if target.startswith("/memfd:"):
            name = target[7:]
            if name.endswith(" (deleted)"):
                name = name[:-10]
            return "memfd", name
        return "file", target
    if target.startswith("pipe:"):
        return "pipe", target
    if target.startswith("anon_inode:"):
        kind = target[11:].strip("[]")
        typ = {
            "eventfd": "event",
            "signalfd": "signalfd",
            "eventpoll": "eventpoll",
            "inotify": "inotify",
            "timerfd": "timerfd",
            "userfaultfd": "userfaultfd",
            "io_uring": "io_uring",
            "pidfd": "pidfd",
        }.get(kind)
        if typ is None and kind.startswith("bpf"):
            typ = "bpf"
        return (typ or NA), ""
    return NA, target


def ipv6_str(raw_hex: str) -> str:
    """An address as /proc/net/tcp6 prints it (four host-order 32-bit words) -> text."""
    b = bytes.fromhex(raw_hex)
    fixed = b"".join(b[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(fixed))


def ipv4_str(raw_hex: str) -> str:
    v = int(raw_hex, 16)
    return f"{v & 0xFF}.{(v >> 8) & 0xFF}.{(v >> 16) & 0xFF}.{v >> 24}"
