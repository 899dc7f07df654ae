"""Falco's fields over andon's events: ``FIELDS.lookup(name, arg) -> Extractor``.

An :class:`Extractor` is a small callable made once per field use (``proc.aname[2]`` and
``proc.aname[3]`` are two extractors); ``ex(ev, ctx)`` returns the value or ``None`` (Falco's
``<NA>``). ``ex.fn`` is the same function without the method call, for the compiler's hot
path. Values are plain Python: ``str``, ``int``, ``bool``, IP addresses as text
(``"10.0.0.1"``, ``"::1"``) and :class:`~andon.rules.types.Multi` for the fields that hold
several values at once (``fd.ip``, ``fd.port``, ``fd.net``, ``proc.aname`` without an index).
For a ``Multi``, ``=``/``in`` are true if any element matches and ``!=`` is true when *no*
element equals (libsinsp compares ``fd.ip != X`` as "both ends differ").

The semantics are libsinsp's (``sinsp_filtercheck_{event,gen_event,thread,fd,user,group}.cpp``)
and the container plugin's (``plugins/container/src/caps/extract/extract.cpp``), read on andon's
exit-only events, the way modern Falco sees them:

- ``fd.*`` exist only for event types that create, use or destroy an fd (libsinsp's
  ``EF_CREATES_FD | EF_USES_FD | EF_DESTROYS_FD``; table ``FD_EVENTS`` below); for every other
  event (execve, rename, unlink, chmod, mkdir, ptrace, ...) every ``fd.*`` is ``<NA>``. The fd
  of an event: the new fd when a creating call succeeds (open, socket, accept, dup's new fd,
  pipe's first end...), ``fd.num`` -1 when it fails; the fd argument for the others (``dirfd``
  of ``*at`` calls, ``linkdirfd`` of symlinkat). A socket's ``fd.name`` is its tuple
  ``cip:cport->sip:sport``; when the fd is not in the table, ``fd.name`` comes from the event
  (open/openat/creat path made absolute, connect/accept tuple), else ``""``.
- ``proc.*``/``user.*``/``group.*`` are ``<NA>`` when andon has no process for the event;
  ``thread.tid`` still answers. ``proc.pname`` & co are ``<NA>`` when the parent is unknown.
- ``container.id`` is ``host`` on the host; the plugin's built-in "host" container gives
  ``container.name``/``full_id``/``type`` = ``host``, image fields ``""`` and ``privileged``
  false. For a container whose runtime has not answered yet, only ``container.id`` and
  ``container.start_ts`` have values.
- ``user.name``/``group.name``/``user.loginname`` are the *string* ``"<NA>"`` (not missing)
  for an id nobody names, ``root`` for 0 (libsinsp); ``user.loginuid`` is -1 when unset.

Deviations, where andon lacks the data or the shape differs:

- ``evt.num`` is andon's own count of events seen by the Tracker (Falco counts every event
  the driver sent); ``evt.cpu`` and latency fields are not provided.
- ``evt.arg.*`` renders flag words andon-style for calls whose Falco tables are not copied
  here (``unlinkat``, ``linkat``, ``unshare``, ``fcntl``...); open flags, execve flags,
  socket domain/type, ptrace requests, modes and fds are rendered as Falco renders them.
  Parameters andon does not collect (open's ``dev``/``ino``, execve's ``env``,
  ``vm_*``, ``pgft_*``, accept's ``queuepct``...) are ``<NA>``; ``O_F_CREATED`` and the fd
  overlay bits are never in ``evt.arg.flags``, so ``evt.is_open_create`` is only true for a
  successful ``O_TMPFILE`` open.
- ``fd.name_changed`` is only computed for sends on unconnected UDP sockets (the case Falco
  documents); it is false for every other fd event.
- ``fd.lip``/``fd.rip``/``fd.lport``/``fd.rport``/``fd.is_server`` follow libsinsp's "is the
  client address one of ours" rule, with "ours" = loopback, the addresses in
  ``tracker.local_addrs`` (if the tracker has that attribute), or the client side of a socket
  this process connected. A loopback connection therefore has ``lip == cip`` on both ends, as
  in Falco.
- ``fd.*ip.name`` use only names andon learnt without asking the network
  (``tracker.dns_names``: address -> name, if present); otherwise ``<NA>``.
- ``proc.exe_ino``, ``fd.dev``/``fd.ino``, ``thread.cap_inheritable``, ``proc.env`` are not
  collected: ``proc.exe_ino`` is registered and always ``<NA>``, the others are unknown fields.
- ``proc.apid`` without an index is the ancestors' pids as a ``Multi`` (Falco compares it
  against every ancestor, but prints the process's own pid).
- ``k8s.*`` come from ``io.kubernetes.pod.*`` container labels when a runtime reported them,
  else ``<NA>`` (no Kubernetes API).
- ``evt.time``/``evt.datetime`` use the local time zone, as libsinsp does.
"""

from __future__ import annotations

import difflib
import errno as _errno
import ipaddress
import os
import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import FieldArgError, UnknownFieldError
from ..events import format as _fmt
from ..events.schema import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    EXE_FROM_MEMFD,
    EXE_LOWER_LAYER,
    EXE_UPPER_LAYER,
    EXE_WRITABLE,
    Event,
    EventType,
)
from ..events.syscalls import BY_NAME, BY_NR
from ..state.fd import TYPECHAR, join, normalize
from .types import FieldType, Multi

NA = "<NA>"
T = FieldType
_SYSCALL = int(EventType.SYSCALL)
_EXEC = int(EventType.EXEC)
_FORK = int(EventType.FORK)
_EXIT = int(EventType.EXIT)
AT_FDCWD = -100
Fn = Callable[[Event, Any], Any]


# =========================================================================================
# registry
# =========================================================================================
class Extractor:
    """One field as used in a rule: ``name``, ``arg`` (or None), ``type`` and the function."""

    __slots__ = ("name", "arg", "type", "fn")

    def __init__(self, name: str, arg: str | None, type: FieldType, fn: Fn) -> None:
        self.name = name
        self.arg = arg
        self.type = type
        self.fn = fn

    def __call__(self, ev: Event, ctx: Any) -> Any:
        return self.fn(ev, ctx)

    @property
    def text(self) -> str:
        """The field as written in a rule: ``proc.aname[2]``."""
        return self.name if self.arg is None else f"{self.name}[{self.arg}]"

    def __repr__(self) -> str:
        return f"Extractor({self.text!r}, {self.type.name})"


NO_ARG, ARG_OPTIONAL, ARG_REQUIRED = "none", "optional", "required"


@dataclass(frozen=True)
class FieldInfo:
    """What ``andon rules fields`` lists about a field."""

    name: str
    type: FieldType
    desc: str
    arg: str = NO_ARG  # none / optional / required
    arg_kind: str = ""  # "index", "name", "index or name"
    filter_only: bool = False


class FieldRegistry:
    """Every field andon knows, by name. ``lookup`` makes extractors."""

    def __init__(self) -> None:
        self._fields: dict[str, tuple[FieldInfo, Callable[[str | None], Fn]]] = {}

    def add(self, info: FieldInfo, make: Callable[[str | None], Fn]) -> None:
        self._fields[info.name] = (info, make)

    def names(self) -> list[str]:
        return sorted(self._fields)

    def info(self, name: str) -> FieldInfo:
        try:
            return self._fields[name][0]
        except KeyError:
            raise UnknownFieldError(self._unknown_message(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def lookup(self, name: str, arg: str | None = None) -> Extractor:
        """The extractor for ``name`` (``evt.arg.flags`` and ``proc.aname[2]`` forms are
        accepted too). Raises UnknownFieldError / FieldArgError."""
        if arg is None and name.endswith("]") and "[" in name:
            name, _, rest = name.partition("[")
            arg = rest[:-1]
        entry = self._fields.get(name)
        if entry is None:
            # evt.arg.NAME, evt.rawarg.NAME: the name is the argument
            for prefix in ("evt.arg.", "evt.rawarg."):
                if name.startswith(prefix) and len(name) > len(prefix) and arg is None:
                    base = prefix[:-1]
                    return self._make(base, self._fields[base], name[len(prefix) :], display=name)
            raise UnknownFieldError(self._unknown_message(name))
        return self._make(name, entry, arg)

    def _make(self, name: str, entry: tuple[FieldInfo, Callable[[str | None], Fn]], arg: str | None,
              display: str | None = None) -> Extractor:  # fmt: skip
        info, make = entry
        if arg is not None and info.arg == NO_ARG:
            raise FieldArgError(f"field {name} takes no argument (got {name}[{arg}])")
        if arg is None and info.arg == ARG_REQUIRED:
            raise FieldArgError(f"field {name} needs an argument ({info.arg_kind}), e.g. {_ARG_EXAMPLE.get(name, name + '[0]')}")
        fn = make(arg)
        typ = info.type
        if name == "evt.rawarg" and arg is not None:
            typ = _rawarg_type(arg)
        ex = Extractor(display or name, None if display else arg, typ, fn)
        return ex

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._fields.keys(), n=3, cutoff=0.6)
        msg = f"unknown field {name!r}"
        if close:
            msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        elif "." in name and not any(k.startswith(name.split(".")[0] + ".") for k in self._fields):
            classes = sorted({k.split(".")[0] for k in self._fields})
            msg += f"; field classes are: {', '.join(classes)}"
        return msg


_ARG_EXAMPLE = {"evt.arg": "evt.arg.flags or evt.arg[1]", "evt.rawarg": "evt.rawarg.flags"}


def _parse_index(name: str, arg: str | None) -> int | None:
    if arg is None:
        return None
    try:
        n = int(arg)
    except ValueError:
        raise FieldArgError(f"field {name} takes a number as argument, not {arg!r}") from None
    if n < 0:
        raise FieldArgError(f"field {name} takes a non-negative index, not {n}")
    return n


# =========================================================================================
# rendering
# =========================================================================================
def render(value: Any, type: FieldType) -> str:
    """The text Falco prints for a value in an output string."""
    if value is None:
        return NA
    if isinstance(value, Multi):
        if not value:
            return NA
        return " ".join(render(v, type) for v in value)
    if type is T.BOOL or isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if type is T.DOUBLE and isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def json_value(value: Any, type: FieldType) -> Any:
    """The typed JSON value Falco puts in ``output_fields`` (null for ``<NA>``)."""
    if value is None:
        return None
    if isinstance(value, Multi):
        if not value:
            return None
        return render(value, type)
    if type is T.BOOL:
        return bool(value)
    if type.numeric:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


# =========================================================================================
# event tables (Falco's event table, exit events)
# =========================================================================================
# fd events: syscall -> (kind, index of the fd argument in andon's raw args)
#   "new": the return value is a new fd; "use": the argument is the fd; "dup": uses the
#   argument, a success makes the return value the event's fd; "pair": the first of the
#   two fds the call returns.
FD_EVENTS: dict[str, tuple[str, int]] = {
    **{n: ("new", -1) for n in ("open", "openat", "openat2", "creat", "open_by_handle_at", "memfd_create",
                                 "eventfd2", "signalfd4", "timerfd_create", "inotify_init1", "epoll_create1",
                                 "userfaultfd", "socket", "accept", "accept4", "bpf")},
    **{n: ("pair", 4) for n in ("pipe", "pipe2", "socketpair")},
    **{n: ("dup", 0) for n in ("dup", "dup2", "dup3", "fcntl")},
    **{n: ("use", 0) for n in ("close", "fchmod", "fchown", "fchdir", "fchmodat", "fchownat", "mkdirat",
                                "unlinkat", "connect", "bind", "listen", "sendto", "sendmsg", "shutdown",
                                "finit_module", "setns")},
    "symlinkat": ("use", 1),
}  # fmt: skip
_FD_BY_NR: dict[int, tuple[str, int]] = {BY_NAME[n].nr: v for n, v in FD_EVENTS.items()}

# what fd.typechar says for a creating event whose fd is not in the table (sinsp_evt::extract_typechar)
_EVT_TYPECHAR = {
    "openat": "f", "openat2": "f", "creat": "f", "socket": "4", "accept": "4", "accept4": "4",
    "pipe": "p", "pipe2": "p", "eventfd2": "e", "signalfd4": "s", "timerfd_create": "t", "inotify_init1": "i",
}  # fmt: skip
_EVT_TYPECHAR_NR = {BY_NAME[n].nr: c for n, c in _EVT_TYPECHAR.items()}

# Falco's PPM open flags, in the order Falco prints them (driver/flags_table.c file_flags)
_O = {"O_LARGEFILE": 1 << 11, "O_DIRECTORY": 1 << 10, "O_DIRECT": 1 << 9, "O_TRUNC": 1 << 8, "O_SYNC": 1 << 7,
      "O_NONBLOCK": 1 << 6, "O_EXCL": 1 << 5, "O_DSYNC": 1 << 4, "O_APPEND": 1 << 3, "O_CREAT": 1 << 2,
      "O_RDWR": 3, "O_WRONLY": 2, "O_RDONLY": 1, "O_CLOEXEC": 1 << 12, "O_NONE": 0, "O_TMPFILE": 1 << 13}  # fmt: skip


def open_flags_to_ppm(v: int) -> int:
    """Linux open(2) flags -> Falco's PPM_O_* (driver/ppm_flag_helpers.h open_flags_to_scap,
    with its quirks: ``flags & O_SYNC`` and ``flags & O_TMPFILE`` test any of their bits)."""
    acc = v & 3
    r = 2 if acc == 1 else 3 if acc == 2 else 1
    if v & 0o100:
        r |= 1 << 2
    if v & (0o20000000 | 0o200000):  # O_TMPFILE = __O_TMPFILE | O_DIRECTORY
        r |= 1 << 13
    if v & 0o2000:
        r |= 1 << 3
    if v & 0o10000:
        r |= 1 << 4
    if v & 0o200:
        r |= 1 << 5
    if v & 0o4000:
        r |= 1 << 6
    if v & (0o4000000 | 0o10000):  # O_SYNC = __O_SYNC | O_DSYNC
        r |= 1 << 7
    if v & 0o1000:
        r |= 1 << 8
    if v & 0o40000:
        r |= 1 << 9
    if v & 0o200000:
        r |= 1 << 10
    if v & 0o100000:
        r |= 1 << 11
    if v & 0o2000000:
        r |= 1 << 12
    return r


def _ppm_flags_text(val: int, table: list[tuple[str, int]]) -> str:
    """Falco's rendering of a flags parameter (sinsp_evt::get_param_as_str, PT_FLAGS*)."""
    out = []
    initial = val
    for name, bit in table:
        if (bit == 0 and initial == 0) or (bit != 0 and val & bit == bit and val != 0):
            out.append(name)
            val &= ~bit
            if bit == initial:
                break
    return "|".join(out) if out else str(initial)


_OPEN_TABLE = list(_O.items())
_EXE_TABLE = [("EXE_WRITABLE", EXE_WRITABLE), ("EXE_UPPER_LAYER", EXE_UPPER_LAYER),
              ("EXE_FROM_MEMFD", EXE_FROM_MEMFD), ("EXE_LOWER_LAYER", EXE_LOWER_LAYER)]  # fmt: skip
_MODE_TABLE = [("S_IXOTH", 0o1), ("S_IWOTH", 0o2), ("S_IROTH", 0o4), ("S_IXGRP", 0o10), ("S_IWGRP", 0o20),
               ("S_IRGRP", 0o40), ("S_IXUSR", 0o100), ("S_IWUSR", 0o200), ("S_IRUSR", 0o400),
               ("S_ISVTX", 0o1000), ("S_ISGID", 0o2000), ("S_ISUID", 0o4000)]  # fmt: skip


def open_flags_text(v: int) -> str:
    """evt.arg.flags of an open as Falco prints it: ``O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC``."""
    return _ppm_flags_text(open_flags_to_ppm(v), _OPEN_TABLE)


def exe_flags_text(v: int) -> str:
    return _ppm_flags_text(v, _EXE_TABLE)


def mode_text(v: int) -> str:
    """A PT_MODE parameter (chmod's mode): permission bit names, ``S_IXOTH|...``."""
    v &= 0o7777
    out = [n for n, b in _MODE_TABLE if v & b]
    return "|".join(out) if out else "0"


# socket domains: AF_UNIX matches two names in Falco's enum table and both are printed
_DOMAIN_TEXT = {AF_UNIX: "AF_LOCAL|AF_UNIX", AF_INET: "AF_INET", AF_INET6: "AF_INET6", 16: "AF_NETLINK",
                17: "AF_PACKET", 0: "AF_UNSPEC"}  # fmt: skip
_PTRACE_TEXT = {0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSR",
                4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR", 7: "PTRACE_CONT",
                8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
                14: "PTRACE_GETFPREGS", 15: "PTRACE_SETFPREGS", 16: "PTRACE_ATTACH", 17: "PTRACE_DETACH",
                18: "PTRACE_GETFPXREGS", 19: "PTRACE_SETFPXREGS", 21: "PTRACE_OLDSETOPTIONS",
                22: "PTRACE_GET_THREAD_AREA", 23: "PTRACE_SET_THREAD_AREA", 24: "PTRACE_SYSCALL",
                30: "PTRACE_ARCH_PRCTL", 31: "PTRACE_SYSEMU", 32: "PTRACE_SYSEMU_SINGLESTEP",
                33: "PTRACE_SINGLEBLOCK", 0x4200: "PTRACE_SETOPTIONS", 0x4201: "PTRACE_GETEVENTMSG",
                0x4202: "PTRACE_GETSIGINFO", 0x4203: "PTRACE_SETSIGINFO", 0x4204: "PTRACE_GETREGSET",
                0x4205: "PTRACE_SETREGSET", 0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT",
                0x4208: "PTRACE_LISTEN", 0x4209: "PTRACE_PEEKSIGINFO", 0x420A: "PTRACE_GETSIGMASK",
                0x420B: "PTRACE_SETSIGMASK"}  # fmt: skip


def errno_text(ret: int) -> str:
    """A negative return value as Falco names it (``ENOENT``); the number otherwise."""
    if ret >= 0:
        return str(ret)
    return _errno.errorcode.get(-ret, str(ret))


# -- Falco parameter lists of the exit events, over andon's raw data -----------------------
# Each parameter: (name, kind, source). kind says how Falco renders it; source where andon
# has it: an int = raw arg index, "ret", "s0"/"s1" = the call's first/second string, "tuple",
# "addr", or None = not collected.
P = tuple[str, str, Any]
_RET_FD: P = ("fd", "fd", "ret")
_RES: P = ("res", "errno", "ret")
FALCO_PARAMS: dict[str, tuple[P, ...]] = {
    "open": (_RET_FD, ("name", "path", "s0"), ("flags", "oflags", 1), ("mode", "oct", 2), ("dev", "hex", None),
             ("ino", "dec", None)),
    "openat": (_RET_FD, ("dirfd", "fd", 0), ("name", "relpath:dirfd", "s0"), ("flags", "oflags", 2),
               ("mode", "oct", 3), ("dev", "hex", None), ("ino", "dec", None)),
    "openat2": (_RET_FD, ("dirfd", "fd", 0), ("name", "relpath:dirfd", "s0"), ("flags", "oflags", 2),
                ("mode", "oct", 3), ("resolve", "hex", 4), ("dev", "hex", None), ("ino", "dec", None)),
    "creat": (_RET_FD, ("name", "path", "s0"), ("mode", "oct", 1), ("dev", "hex", None), ("ino", "dec", None),
              ("creat_flags", "hex", None)),
    "open_by_handle_at": (_RET_FD, ("mountfd", "fd", 0), ("flags", "oflags", 2), ("path", "path", None),
                          ("dev", "hex", None), ("ino", "dec", None)),
    "memfd_create": (_RET_FD, ("name", "str", "s0"), ("flags", "andon", 1)),
    "rename": (_RES, ("oldpath", "path", "s0"), ("newpath", "path", "s1")),
    "renameat": (_RES, ("olddirfd", "fd", 0), ("oldpath", "relpath:olddirfd", "s0"), ("newdirfd", "fd", 2),
                 ("newpath", "relpath:newdirfd", "s1")),
    "renameat2": (_RES, ("olddirfd", "fd", 0), ("oldpath", "relpath:olddirfd", "s0"), ("newdirfd", "fd", 2),
                  ("newpath", "relpath:newdirfd", "s1"), ("flags", "hex", 4)),
    "unlink": (_RES, ("path", "path", "s0")),
    "unlinkat": (_RES, ("dirfd", "fd", 0), ("name", "relpath:dirfd", "s0"), ("flags", "andon", 2)),
    "link": (_RES, ("oldpath", "path", "s0"), ("newpath", "path", "s1")),
    "linkat": (_RES, ("olddir", "fd", 0), ("oldpath", "relpath:olddir", "s0"), ("newdir", "fd", 2),
               ("newpath", "relpath:newdir", "s1"), ("flags", "andon", 4)),
    "symlink": (_RES, ("target", "str", "s0"), ("linkpath", "path", "s1")),
    "symlinkat": (_RES, ("target", "str", "s0"), ("linkdirfd", "fd", 1), ("linkpath", "relpath:linkdirfd", "s1")),
    "mkdir": (_RES, ("path", "path", "s0"), ("mode", "hexmode", 1)),
    "mkdirat": (_RES, ("dirfd", "fd", 0), ("path", "relpath:dirfd", "s0"), ("mode", "hexmode", 2)),
    "rmdir": (_RES, ("path", "path", "s0")),
    "chmod": (_RES, ("filename", "path", "s0"), ("mode", "mode", 1)),
    "fchmod": (_RES, ("fd", "fd", 0), ("mode", "mode", 1)),
    "fchmodat": (_RES, ("dirfd", "fd", 0), ("filename", "relpath:dirfd", "s0"), ("mode", "mode", 2)),
    "fchmodat2": (_RES, ("dirfd", "fd", 0), ("filename", "relpath:dirfd", "s0"), ("mode", "mode", 2),
                  ("flags", "andon", 3)),
    "chown": (_RES, ("path", "path", "s0"), ("uid", "u32", 1), ("gid", "u32", 2)),
    "lchown": (_RES, ("path", "path", "s0"), ("uid", "u32", 1), ("gid", "u32", 2)),
    "fchown": (_RES, ("fd", "fd", 0), ("uid", "u32", 1), ("gid", "u32", 2)),
    "fchownat": (_RES, ("dirfd", "fd", 0), ("pathname", "relpath:dirfd", "s0"), ("uid", "u32", 2),
                 ("gid", "u32", 3), ("flags", "andon", 4)),
    "truncate": (_RES, ("path", "path", "s0"), ("length", "dec", 1)),
    "chdir": (_RES, ("path", "str", "s0")),
    "fchdir": (_RES, ("fd", "fd", 0)),
    "chroot": (_RES, ("path", "path", "s0")),
    "mount": (_RES, ("dev", "str", "s0"), ("dir", "path", "s1"), ("type", "str", None), ("flags", "hex", 3)),
    "umount2": (_RES, ("name", "path", "s0"), ("flags", "hex", 1)),
    "close": (_RES, ("fd", "fd", 0)),
    "close_range": (_RES, ("first", "u32", 0), ("last", "u32", 1), ("flags", "hex", 2)),
    "dup": (("res", "fd", "ret"), ("oldfd", "fd", 0)),
    "dup2": (("res", "fd", "ret"), ("oldfd", "fd", 0), ("newfd", "fd", 1)),
    "dup3": (("res", "fd", "ret"), ("oldfd", "fd", 0), ("newfd", "fd", 1), ("flags", "andon", 2)),
    "fcntl": (("res", "fd", "ret"), ("fd", "fd", 0), ("cmd", "andon", 1), ("arg", "hex", 2)),
    "pipe": (_RES, ("fd1", "fd", "fd1"), ("fd2", "fd", "fd2"), ("ino", "dec", None)),
    "pipe2": (_RES, ("fd1", "fd", "fd1"), ("fd2", "fd", "fd2"), ("ino", "dec", None), ("flags", "andon", 1)),
    "eventfd2": (("res", "fd", "ret"), ("flags", "hex", 1), ("initval", "dec", 0)),
    "signalfd4": (("res", "fd", "ret"), ("flags", "hex", 3), ("fd", "fd", 0), ("mask", "hex", 1)),
    "timerfd_create": (("res", "fd", "ret"), ("clockid", "dec", 0), ("flags", "hex", 1)),
    "inotify_init1": (("res", "fd", "ret"), ("flags", "hex", 0)),
    "epoll_create1": (_RES, ("flags", "hex", 0)),
    "userfaultfd": (_RES, ("flags", "hex", 0)),
    "socket": (_RET_FD, ("domain", "domain", 0), ("type", "u32", 1), ("proto", "u32", 2), ("flags", "hex", None)),
    "socketpair": (_RES, ("fd1", "fd", "fd1"), ("fd2", "fd", "fd2"), ("source", "hex", None), ("peer", "hex", None),
                   ("domain", "domain", 0), ("type", "u32", 1), ("proto", "u32", 2)),
    "connect": (_RES, ("tuple", "tuple", "tuple"), ("fd", "fd", 0), ("addr", "sockaddr", "addr")),
    "accept": (_RET_FD, ("tuple", "tuple", "tuple"), ("queuepct", "dec", None), ("queuelen", "dec", None),
               ("queuemax", "dec", None)),
    "accept4": (_RET_FD, ("tuple", "tuple", "tuple"), ("queuepct", "dec", None), ("queuelen", "dec", None),
                ("queuemax", "dec", None), ("flags", "hex", 3)),
    "bind": (_RES, ("addr", "sockaddr", "local"), ("fd", "fd", 0)),
    "listen": (_RES, ("fd", "fd", 0), ("backlog", "i32", 1)),
    "sendto": (_RES, ("data", "bytes", None), ("fd", "fd", 0), ("size", "u32", 2), ("tuple", "tuple", "tuple")),
    "sendmsg": (_RES, ("data", "bytes", None), ("fd", "fd", 0), ("size", "u32", None), ("tuple", "tuple", "tuple")),
    "shutdown": (_RES, ("fd", "fd", 0), ("how", "dec", 1)),
    "execve": (_RES, ("exe", "str", None), ("args", "str", None), ("filename", "path", "s0")),  # failed execve
    "execveat": (_RES, ("dirfd", "fd", 0), ("pathname", "relpath:dirfd", "s0"), ("flags", "hex", 4)),
    "ptrace": (_RES, ("addr", "hex", 2), ("data", "hex", 3), ("request", "ptrace", 0), ("pid", "pid", 1)),
    "init_module": (_RES, ("img", "bytes", None), ("length", "dec", 1), ("uargs", "str", "s0")),
    "finit_module": (_RES, ("fd", "fd", 0), ("uargs", "str", "s0"), ("flags", "hex", 2)),
    "delete_module": (_RES, ("name", "str", "s0"), ("flags", "hex", 1)),
    "setuid": (_RES, ("uid", "u32", 0)),
    "setgid": (_RES, ("gid", "u32", 0)),
    "setreuid": (_RES, ("ruid", "u32", 0), ("euid", "u32", 1)),
    "setregid": (_RES, ("rgid", "u32", 0), ("egid", "u32", 1)),
    "setresuid": (_RES, ("ruid", "u32", 0), ("euid", "u32", 1), ("suid", "u32", 2)),
    "setresgid": (_RES, ("rgid", "u32", 0), ("egid", "u32", 1), ("sgid", "u32", 2)),
    "setfsuid": (_RES, ("uid", "u32", 0)),
    "setfsgid": (_RES, ("gid", "u32", 0)),
    "capset": (_RES, ("cap_inheritable", "hex", None), ("cap_permitted", "hex", None), ("cap_effective", "hex", None)),
    "setsid": (("res", "dec", "ret"),),
    "setpgid": (_RES, ("pid", "pid", 0), ("pgid", "pid", 1)),
    "prctl": (_RES, ("option", "dec", 0), ("arg2_str", "str", None), ("arg2_int", "dec", 1)),
    "unshare": (_RES, ("flags", "andon", 0)),
    "setns": (_RES, ("fd", "fd", 0), ("nstype", "andon", 1)),
    "kill": (_RES, ("pid", "pid", 0), ("sig", "dec", 1)),
    "tgkill": (_RES, ("pid", "pid", 0), ("tid", "pid", 1), ("sig", "dec", 2)),
    "bpf": (_RET_FD, ("cmd", "dec", 0)),
    "seccomp": (_RES, ("op", "dec", 0), ("flags", "hex", 1)),
}  # fmt: skip
# execve exit (the successful exec event): Falco's PPME_SYSCALL_EXECVE_19_X
_EXEC_PARAMS: tuple[P, ...] = (
    ("res", "errno", "ret"), ("exe", "str", "x.exe"), ("args", "str", "x.args"), ("tid", "pid", "tid"),
    ("pid", "pid", "pid"), ("ptid", "pid", "x.ppid"), ("cwd", "str", "x.cwd"), ("fdlimit", "dec", None),
    ("pgft_maj", "dec", None), ("pgft_min", "dec", None), ("vm_size", "dec", None), ("vm_rss", "dec", None),
    ("vm_swap", "dec", None), ("comm", "str", "comm"), ("cgroups", "str", "x.cgroups"), ("env", "str", None),
    ("tty", "dec", "x.tty"), ("vpgid", "pid", None), ("loginuid", "u32", "x.loginuid"), ("flags", "exeflags", "x.flags"),
    ("cap_inheritable", "hex", None), ("cap_permitted", "hex", "x.cap_permitted"),
    ("cap_effective", "hex", "x.cap_effective"), ("exe_ino", "dec", None), ("exe_ino_ctime", "dec", "x.exe_ctime"),
    ("exe_ino_mtime", "dec", "x.exe_mtime"), ("uid", "u32", "uid"), ("trusted_exepath", "path", "x.exepath"),
    ("pgid", "pid", None), ("gid", "u32", "gid"), ("filename", "path", "x.filename"),
)  # fmt: skip
_CLONE_PARAMS: tuple[P, ...] = (
    ("res", "pid", "ret"), ("exe", "str", "p.exe"), ("args", "str", "p.args"), ("tid", "pid", "tid"),
    ("pid", "pid", "pid"), ("ptid", "pid", "p.ppid"), ("cwd", "str", "p.cwd"), ("fdlimit", "dec", None),
    ("pgft_maj", "dec", None), ("pgft_min", "dec", None), ("vm_size", "dec", None), ("vm_rss", "dec", None),
    ("vm_swap", "dec", None), ("comm", "str", "comm"), ("cgroups", "str", None), ("flags", "hex", None),
    ("uid", "u32", "uid"), ("gid", "u32", "gid"), ("vtid", "pid", None), ("vpid", "pid", None),
    ("pidns_init_start_ts", "dec", None),
)  # fmt: skip
_PROCEXIT_PARAMS: tuple[P, ...] = (("status", "dec", "ret"), ("ret", "dec", "code"), ("sig", "dec", "sig"),
                                   ("core", "dec", "core"))  # fmt: skip

_PARAMS_BY_NR: dict[int, tuple[P, ...]] = {BY_NAME[n].nr: v for n, v in FALCO_PARAMS.items() if n in BY_NAME}
_STRING_KINDS = {"str", "path", "bytes", "tuple", "sockaddr"}
_ALL_PARAM_NAMES: dict[str, str] = {}
for _plist in (*FALCO_PARAMS.values(), _EXEC_PARAMS, _CLONE_PARAMS, _PROCEXIT_PARAMS):
    for _n, _k, _s in _plist:
        _ALL_PARAM_NAMES.setdefault(_n, _k)


def _rawarg_type(name: str) -> FieldType:
    k = _ALL_PARAM_NAMES.get(name, "dec")
    if k in _STRING_KINDS or k.startswith("relpath"):
        return T.CHARBUF
    if k in ("u32", "oflags", "mode", "hexmode", "oct"):
        return T.UINT32
    if k in ("hex", "exeflags"):
        return T.UINT64
    return T.INT64


def _params_for(ev: Event) -> tuple[P, ...] | None:
    t = ev.type
    if t == _SYSCALL:
        return _PARAMS_BY_NR.get(ev.nr)
    if t == _EXEC:
        return _EXEC_PARAMS
    if t == _FORK:
        return _CLONE_PARAMS
    if t == _EXIT:
        return _PROCEXIT_PARAMS
    return None


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _raw_param(ev: Event, ctx: Any, p: P) -> Any:
    """The raw value of one Falco parameter (Falco's evt.rawarg), None when not collected."""
    name, kind, src = p
    if src is None:
        return None
    if isinstance(src, int):
        v = ev.args[src]
        if kind == "fd" or kind == "pid" or kind == "i32":
            return _s32(v)
        if kind in ("u32", "oflags"):
            return v & 0xFFFFFFFF
        return v
    if src == "ret":
        if ev.type == _FORK:
            return ev.args[0]  # the parent's side of clone returns the child's tid
        if ev.type == _EXIT:
            return ev.ret
        return ev.ret
    if src == "s0" or src == "s1":
        i = 0 if src == "s0" else 1
        return ev.strings[i] if len(ev.strings) > i else None
    if src == "fd1" or src == "fd2":
        if ev.ret != 0:
            return None
        return _s32(ev.args[4] if src == "fd1" else ev.args[5])
    if src in ("tuple", "addr", "local"):
        s = ev.sock
        if s is None:
            return None
        if s.family == AF_UNIX:
            return s.path
        if src == "tuple":
            return s.tuple_str()
        if src == "local":
            return f"{s.saddr}:{s.sport}"
        return f"{s.daddr}:{s.dport}"
    if src == "tid":
        return ev.tid
    if src == "pid":
        return ev.pid
    if src == "comm":
        return ev.comm
    if src == "uid":
        return ev.uid
    if src == "gid":
        return ev.gid
    if src == "code":
        return (ev.ret >> 8) & 0xFF
    if src == "sig":
        return ev.ret & 0x7F
    if src == "core":
        return int(bool(ev.ret & 0x80))
    if src.startswith("x."):
        x = ev.exec
        if x is None:
            return None
        f = src[2:]
        if f == "exe":
            return x.argv[0] if x.argv else x.filename
        if f == "args":
            return " ".join(x.argv[1:])
        if f == "flags":
            return x.exe_flags
        if f == "cgroups":
            parts = []
            if x.cgroup2:
                parts.append(x.cgroup2)
            if x.cgroup:
                parts.append(x.cgroup)
            return " ".join(parts)
        return getattr(x, f)
    if src.startswith("p."):
        pr = ctx.proc if ctx is not None else None
        if pr is None:
            return None
        f = src[2:]
        if f == "args":
            return pr.args_str
        return getattr(pr, f)
    return None


def _fd_text(ev: Event, ctx: Any, fd: int) -> str:
    """A PT_FD parameter as Falco shows it: ``<f>/etc/passwd``, ``<4t>1.2.3.4:5->...``,
    ``AT_FDCWD``, an errno name for a negative return, else the number."""
    if fd >= 0:
        fi = _fd_of(ctx, fd) if ctx is not None else None
        if fi is None:
            return str(fd)
        proto = ""
        if fi.type in ("ipv4", "ipv6"):
            proto = {"tcp": "t", "udp": "u", "icmp": "i", "raw": "r"}.get(fi.l4proto, "")
        return f"<{fi.typechar}{proto}>{fi.name}"
    if fd == AT_FDCWD:
        return "AT_FDCWD"
    name = _errno.errorcode.get(-fd)
    return name if name else str(fd)


def _fd_of(ctx: Any, fd: int) -> Any:
    f = ctx.fd
    if f is not None and f.num == fd:
        return f
    p = ctx.proc
    if p is None:
        return None
    return p.fds.get(fd)


def _dir_of(ev: Event, ctx: Any, params: tuple[P, ...], fdname: str) -> str:
    """The directory a PT_FSRELPATH parameter is relative to (sinsp_evt::get_base_dir)."""
    p = ctx.proc if ctx is not None else None
    cwd = (p.cwd or "/") if p is not None else "/"
    for q in params:
        if q[0] == fdname:
            d = _raw_param(ev, ctx, q)
            if d is None or d == AT_FDCWD:
                return cwd
            fi = _fd_of(ctx, d)
            return fi.name if fi is not None and fi.name else "<UNKNOWN>"
    return cwd


def _text_param(ev: Event, ctx: Any, params: tuple[P, ...], p: P) -> str | None:
    """One parameter as Falco's evt.arg shows it (the resolved form when there is one)."""
    name, kind, src = p
    raw = _raw_param(ev, ctx, p)
    if raw is None:
        return None
    if kind == "fd":
        return _fd_text(ev, ctx, raw)
    if kind == "errno":
        return errno_text(raw)
    if kind == "path" or kind.startswith("relpath"):
        if not raw or raw.startswith("/"):
            return raw
        if kind == "path":
            pr = ctx.proc if ctx is not None else None
            base = (pr.cwd or "/") if pr is not None else "/"
        else:
            base = _dir_of(ev, ctx, params, kind.split(":", 1)[1])
        return join(base, raw)
    if kind == "oflags":
        return open_flags_text(raw)
    if kind == "exeflags":
        return exe_flags_text(raw)
    if kind == "mode":
        return mode_text(raw)
    if kind == "oct":
        m = raw & 0o7777777
        return f"0{m:o}" if m else "0"
    if kind == "hexmode":
        return f"{raw & 0xFFFFFFFF:X}"
    if kind == "hex":
        return f"{raw:X}" if isinstance(raw, int) else str(raw)
    if kind == "domain":
        return _DOMAIN_TEXT.get(raw & 0xFFFFFFFF, str(raw & 0xFFFFFFFF))
    if kind == "ptrace":
        return _PTRACE_TEXT.get(raw & 0xFFFF, str(raw & 0xFFFF))
    if kind == "pid":
        return str(raw)
    if kind == "andon":
        try:
            return str(_fmt._arg_value(name, ev.args[src], ev))
        except Exception:  # noqa: BLE001 - a renderer quirk must not break a rule
            return str(raw)
    if kind == "i32":
        return str(raw)
    return raw if isinstance(raw, str) else str(raw)


def event_params(ev: Event, ctx: Any) -> list[tuple[str, str | None]]:
    """Every Falco parameter of the event with its text (None: not collected)."""
    params = _params_for(ev)
    if params is None:
        return []
    return [(p[0], _text_param(ev, ctx, params, p)) for p in params]


# =========================================================================================
# the event's fd (libsinsp's evt->get_fd_info() / m_lastevent_fd)
# =========================================================================================
def _event_fd_num(ev: Event) -> int | None:
    """fd.num, or None when the event type has no fd at all."""
    if ev.type != _SYSCALL:
        return None
    spec = _FD_BY_NR.get(ev.nr)
    if spec is None:
        return None
    kind, idx = spec
    if kind == "new":
        return ev.ret if ev.ret >= 0 else -1
    if kind == "pair":
        return _s32(ev.args[4]) if ev.ret == 0 else -1
    if kind == "dup":
        if ev.ret >= 0 and (ev.nr != _NR_FCNTL or (ev.args[1] & 0xFFFFFFFF) in (0, 1030)):
            return ev.ret
        return _s32(ev.args[idx])
    return _s32(ev.args[idx])


_NR_FCNTL = BY_NAME["fcntl"].nr


def event_fd(ev: Event, ctx: Any) -> Any:
    """The FdInfo libsinsp would attach to this event, or None."""
    n = _event_fd_num(ev)
    if n is None or n < 0:
        return None
    f = ctx.fd
    if f is not None and f.num == n:
        return f
    p = ctx.proc
    if p is None:
        return None
    return p.fds.get(n)


_NR_OPEN = BY_NAME["open"].nr
_NR_OPENAT = BY_NAME["openat"].nr
_NR_OPENAT2 = BY_NAME["openat2"].nr
_NR_CREAT = BY_NAME["creat"].nr
_NR_OBH = BY_NAME["open_by_handle_at"].nr
_NR_CONNECT = BY_NAME["connect"].nr
_NR_ACCEPT = BY_NAME["accept"].nr
_NR_ACCEPT4 = BY_NAME["accept4"].nr
_NR_SENDTO = BY_NAME["sendto"].nr
_NR_SENDMSG = BY_NAME["sendmsg"].nr
_OPEN_NRS = frozenset({_NR_OPEN, _NR_OPENAT, _NR_OPENAT2, _NR_OBH})


def _fdname_from_event(ev: Event, ctx: Any, raw: bool) -> str:
    """fd.name when libsinsp has no fdinfo (extract_fdname_from_event)."""
    nr = ev.nr
    if nr in (_NR_OPEN, _NR_CREAT, _NR_OPENAT, _NR_OPENAT2):
        name = ev.strings[0] if ev.strings else ""
        if raw or name.startswith("/") or not name:
            return normalize(name) if name.startswith("/") and not raw else name
        p = ctx.proc
        if nr in (_NR_OPEN, _NR_CREAT):
            base = (p.cwd or "/") if p is not None else "/"
        else:
            d = _s32(ev.args[0])
            if d == AT_FDCWD:
                base = (p.cwd or "/") if p is not None else "/"
            else:
                fi = p.fds.get(d) if p is not None else None
                base = fi.name if fi is not None and fi.name else "<UNKNOWN>"
        return join(base, name)
    if nr in (_NR_CONNECT, _NR_ACCEPT, _NR_ACCEPT4):
        s = ev.sock
        if s is None:
            return ""
        return s.path if s.family == AF_UNIX else s.tuple_str()
    return ""


# =========================================================================================
# small helpers over the context
# =========================================================================================
def _proc(ctx: Any) -> Any:
    return ctx.proc


def _table(ctx: Any) -> Any:
    return ctx.tracker.table


def _parent(ctx: Any) -> Any:
    p = ctx.proc
    if p is None:
        return None
    return ctx.tracker.table.parent(p)


def _ancestor(ctx: Any, n: int) -> Any:
    p = ctx.proc
    if p is None:
        return None
    return ctx.tracker.table.ancestor(p, n)


_LOOPBACK4 = "127."


def _is_local_ip(ctx: Any, ip: str, fi: Any) -> bool:
    """libsinsp's is_ipv4addr_in_local_machine, approximated (see the module docstring):
    loopback, the tracker's known local addresses, or the side of the socket this process
    holds (the client side when it connected, the server side when it accepted)."""
    if not ip:
        return False
    if ip.startswith(_LOOPBACK4) or ip == "::1":
        return True
    local = getattr(ctx.tracker, "local_addrs", None)
    if local and ip in local:
        return True
    role = fi.role
    return (role == "client" and ip == fi.cip) or (role == "server" and ip == fi.sip)


def _is_servsock(fi: Any) -> bool:
    """libsinsp's SCAP_FD_IPV*_SERVSOCK: bound or listening, no peer."""
    return fi.role == "server" and not fi.cip and not fi.cport


def _is_inet(fi: Any) -> bool:
    return fi.type == "ipv4" or fi.type == "ipv6"


# =========================================================================================
# field definitions
# =========================================================================================
FIELDS = FieldRegistry()
_reg = FIELDS


def field(name: str, type: FieldType, desc: str, *, arg: str = NO_ARG, arg_kind: str = "",
          filter_only: bool = False) -> Callable[[Callable[[str | None], Fn]], Callable[[str | None], Fn]]:  # fmt: skip
    """Register a field whose extractor is made by the decorated factory ``make(arg) -> fn``."""

    def deco(make: Callable[[str | None], Fn]) -> Callable[[str | None], Fn]:
        _reg.add(FieldInfo(name, type, desc, arg, arg_kind, filter_only), make)
        return make

    return deco


def simple(name: str, type: FieldType, desc: str, fn: Fn, **kw: Any) -> None:
    """Register a field without argument whose extractor is ``fn`` itself."""
    _reg.add(FieldInfo(name, type, desc, **kw), lambda _arg, _fn=fn: _fn)


def proc_field(name: str, type: FieldType, desc: str, get: Callable[[Any], Any]) -> None:
    """A field of the event's process: ``get(proc)``; <NA> without a process."""

    def fn(ev: Event, ctx: Any) -> Any:
        p = ctx.proc
        if p is None:
            return None
        return get(p)

    simple(name, type, desc, fn)


# -- evt.* ---------------------------------------------------------------------------------
def _local_parts(ts: int) -> tuple[_time.struct_time, int]:
    return _time.localtime(ts // 1_000_000_000), ts % 1_000_000_000


def _evt_time(ev: Event, ctx: Any) -> str:
    t, ns = _local_parts(ev.ts)
    return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ns:09d}"


def _evt_time_s(ev: Event, ctx: Any) -> str:
    t, _ = _local_parts(ev.ts)
    return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def _evt_iso(ev: Event, ctx: Any) -> str:
    t = _time.gmtime(ev.ts // 1_000_000_000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ev.ts % 1_000_000_000:09d}+0000"


def _evt_datetime(ev: Event, ctx: Any) -> str:
    t, ns = _local_parts(ev.ts)
    return _time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{ns:09d}"


def _evt_datetime_s(ev: Event, ctx: Any) -> str:
    t, _ = _local_parts(ev.ts)
    return _time.strftime("%Y-%m-%d %H:%M:%S", t)


simple("evt.num", T.UINT64, "event number (andon's count of the events the tracker saw).",
       lambda ev, ctx: getattr(ctx, "num", None) or None)  # fmt: skip
simple("evt.time", T.CHARBUF, "event timestamp as a time string with nanoseconds (local time).", _evt_time)
simple("evt.time.s", T.CHARBUF, "event timestamp as a time string with no nanoseconds.", _evt_time_s)
simple("evt.time.iso8601", T.CHARBUF, "event timestamp in ISO 8601 format, with nanoseconds and time zone (UTC).",
       _evt_iso)  # fmt: skip
simple("evt.datetime", T.CHARBUF, "event timestamp as a time string that includes the date.", _evt_datetime)
simple("evt.datetime.s", T.CHARBUF, "event timestamp as a datetime string with no nanoseconds.", _evt_datetime_s)
simple("evt.rawtime", T.ABSTIME, "absolute event timestamp, i.e. nanoseconds from epoch.", lambda ev, ctx: ev.ts)
simple("evt.rawtime.s", T.ABSTIME, "integer part of the event timestamp (seconds since epoch).",
       lambda ev, ctx: ev.ts // 1_000_000_000)  # fmt: skip
simple("evt.rawtime.ns", T.ABSTIME, "fractional part of the absolute event timestamp.",
       lambda ev, ctx: ev.ts % 1_000_000_000)  # fmt: skip
simple("evt.dir", T.CHARBUF, "event direction: always '<' (andon reports exit events only, as modern Falco).",
       lambda ev, ctx: "<")  # fmt: skip
simple("evt.type", T.CHARBUF, "The name of the event (e.g. 'open').", lambda ev, ctx: ev.name)
simple("evt.source", T.CHARBUF, "the name of the source that produced the event ('syscall').",
       lambda ev, ctx: "syscall")  # fmt: skip
simple("evt.is_async", T.BOOL, "'true' for asynchronous meta-events (never, in andon).", lambda ev, ctx: False)


@field("evt.hostname", T.CHARBUF, "The hostname of the underlying host.")
def _mk_hostname(arg: str | None) -> Fn:
    host = os.uname().nodename

    def fn(ev: Event, ctx: Any) -> str:
        return getattr(ctx.tracker, "hostname", None) or host

    return fn


def _rawres(ev: Event, ctx: Any) -> int | None:
    t = ev.type
    if t == _SYSCALL or t == _EXEC:
        return ev.ret
    if t == _FORK:
        return ev.args[0]
    return None


def _res(ev: Event, ctx: Any) -> str | None:
    r = _rawres(ev, ctx)
    if r is None:
        return None
    return "SUCCESS" if r >= 0 else errno_text(r)


def _failed(ev: Event, ctx: Any) -> bool | None:
    r = _rawres(ev, ctx)
    if r is None:
        return None
    return r < 0


simple("evt.res", T.CHARBUF, "event return value, as a string: 'SUCCESS' or the error code (e.g. 'ENOENT').", _res)
simple("evt.rawres", T.INT64, "event return value, as a number (e.g. -2).", _rawres)
simple("evt.failed", T.BOOL, "'true' for events that returned an error status.", _failed)


def _open_flags(ev: Event) -> int | None:
    """Linux flags of an open event (open/openat/openat2/open_by_handle_at), else None."""
    if ev.type != _SYSCALL:
        return None
    nr = ev.nr
    if nr == _NR_OPENAT or nr == _NR_OPENAT2 or nr == _NR_OBH:
        return ev.args[2] & 0xFFFFFFFF
    if nr == _NR_OPEN:
        return ev.args[1] & 0xFFFFFFFF
    return None


def _is_open_read(ev: Event, ctx: Any) -> bool:
    f = _open_flags(ev)
    return f is not None and (f & 3) != 1


def _is_open_write(ev: Event, ctx: Any) -> bool:
    f = _open_flags(ev)
    return f is not None and (f & 3) in (1, 2)


def _mode_of_open(ev: Event) -> int:
    nr = ev.nr
    if nr == _NR_OPEN:
        return ev.args[2]
    return ev.args[3]


def _is_open_exec(ev: Event, ctx: Any) -> bool:
    if ev.type != _SYSCALL:
        return False
    if ev.nr == _NR_CREAT:
        return bool(ev.args[1] & 0o111)
    f = _open_flags(ev)
    if f is None or ev.nr == _NR_OBH:
        return False
    if f & (0o100 | 0o20000000):  # O_CREAT or O_TMPFILE: a mode applies
        return bool(_mode_of_open(ev) & 0o111)
    return False


def _is_open_create(ev: Event, ctx: Any) -> bool:
    f = _open_flags(ev)
    return f is not None and bool(f & 0o20000000) and ev.ret >= 0


simple("evt.is_open_read", T.BOOL, "'true' for open/openat/openat2/open_by_handle_at events where the path was "
       "opened for reading", _is_open_read)  # fmt: skip
simple("evt.is_open_write", T.BOOL, "'true' for open/openat/openat2/open_by_handle_at events where the path was "
       "opened for writing", _is_open_write)  # fmt: skip
simple("evt.is_open_exec", T.BOOL, "'true' for open/openat/openat2/creat events where a file is created with "
       "execute permissions", _is_open_exec)  # fmt: skip
simple("evt.is_open_create", T.BOOL, "'true' for open/openat/openat2 events where a file is created (O_TMPFILE "
       "only in andon: see the deviations).", _is_open_create)  # fmt: skip


def _evt_args(ev: Event, ctx: Any) -> str:
    return " ".join(f"{n}={'<NA>' if v is None else v}" for n, v in event_params(ev, ctx))


simple("evt.args", T.CHARBUF, "all the event arguments, aggregated into a single string.", _evt_args)


@field("evt.arg", T.CHARBUF, "one of the event arguments specified by name or by number, as text "
       "(fds as <f>/path, flags as names). E.g. 'evt.arg.fd' or 'evt.arg[0]'.", arg=ARG_REQUIRED,
       arg_kind="index or name")  # fmt: skip
def _mk_evt_arg(arg: str | None) -> Fn:
    assert arg is not None
    if arg.isdigit():
        idx = int(arg)

        def by_index(ev: Event, ctx: Any) -> str | None:
            params = _params_for(ev)
            if params is None or idx >= len(params):
                return None
            return _text_param(ev, ctx, params, params[idx])

        return by_index
    if arg not in _ALL_PARAM_NAMES:
        close = difflib.get_close_matches(arg, _ALL_PARAM_NAMES.keys(), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise FieldArgError(f"unknown event argument {arg!r} in evt.arg.{arg}{hint}")
    cache: dict[int, P | None] = {}

    def by_name(ev: Event, ctx: Any) -> str | None:
        params = _params_for(ev)
        if params is None:
            return None
        key = id(params)
        p = cache.get(key, False)
        if p is False:
            p = next((q for q in params if q[0] == arg), None)
            cache[key] = p
        if p is None:
            return None
        return _text_param(ev, ctx, params, p)

    return by_name


@field("evt.rawarg", T.INT64, "one of the event arguments specified by name, as its raw value "
       "(numbers stay numbers). E.g. 'evt.rawarg.res < 0'.", arg=ARG_REQUIRED, arg_kind="name")  # fmt: skip
def _mk_evt_rawarg(arg: str | None) -> Fn:
    assert arg is not None
    if arg not in _ALL_PARAM_NAMES:
        close = difflib.get_close_matches(arg, _ALL_PARAM_NAMES.keys(), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise FieldArgError(f"unknown event argument {arg!r} in evt.rawarg.{arg}{hint}")
    cache: dict[int, P | None] = {}

    def fn(ev: Event, ctx: Any) -> Any:
        params = _params_for(ev)
        if params is None:
            return None
        key = id(params)
        p = cache.get(key, False)
        if p is False:
            p = next((q for q in params if q[0] == arg), None)
            cache[key] = p
        if p is None:
            return None
        return _raw_param(ev, ctx, p)

    return fn


# -- proc.* / thread.* -----------------------------------------------------------------------
proc_field("proc.pid", T.INT64, "the id of the process generating the event.", lambda p: p.pid)
proc_field("proc.name", T.CHARBUF, "the name (task->comm, truncated after 16 characters) of the process "
           "generating the event.", lambda p: p.name)  # fmt: skip
proc_field("proc.exe", T.CHARBUF, "the first command line argument (argv[0]).", lambda p: p.exe)
proc_field("proc.exepath", T.CHARBUF, "the full executable path of the process.", lambda p: p.exepath)
proc_field("proc.cmdline", T.CHARBUF, "full process command line, i.e. proc.name + proc.args.", lambda p: p.cmdline)
proc_field("proc.exeline", T.CHARBUF, "full process command line, with exe as first argument.", lambda p: p.exeline)
proc_field("proc.cwd", T.CHARBUF, "the current working directory of the event (with a trailing '/').",
           lambda p: p.proc_cwd)  # fmt: skip
proc_field("proc.tty", T.UINT32, "the controlling terminal of the process; 0 without one.", lambda p: p.tty)
proc_field("proc.sid", T.INT64, "the session id of the process.", lambda p: p.sid)
proc_field("proc.vpid", T.INT64, "the id of the process as seen from its pid namespace.",
           lambda p: p.vpid if p.vpid else None)  # fmt: skip
proc_field("proc.nthreads", T.UINT64, "the number of alive threads of the process.", lambda p: p.nthreads)
proc_field("proc.nchilds", T.UINT64, "the number of alive not-leader threads of the process.",
           lambda p: p.nthreads - 1)  # fmt: skip
proc_field("proc.is_exe_writable", T.BOOL, "'true' if the executable is writable by the same user that spawned it.",
           lambda p: bool(p.exe_flags & EXE_WRITABLE))  # fmt: skip
proc_field("proc.is_exe_upper_layer", T.BOOL, "'true' if the executable is in the upper layer of an overlayfs.",
           lambda p: bool(p.exe_flags & EXE_UPPER_LAYER))  # fmt: skip
proc_field("proc.is_exe_lower_layer", T.BOOL, "'true' if the executable is in the lower layer of an overlayfs.",
           lambda p: bool(p.exe_flags & EXE_LOWER_LAYER))  # fmt: skip
proc_field("proc.is_exe_from_memfd", T.BOOL, "'true' if the executable is a memfd_create() file run by its fd.",
           lambda p: bool(p.exe_flags & EXE_FROM_MEMFD))  # fmt: skip
proc_field("proc.is_sid_leader", T.BOOL, "'true' if this process is the leader of its session.",
           lambda p: p.sid == p.vpid)  # fmt: skip
proc_field("proc.exe_ino", T.INT64, "inode of the executable (not collected by andon: always <NA>).", lambda p: None)
proc_field("proc.exe_ino.ctime", T.ABSTIME, "last status change time of the executable (ns since epoch).",
           lambda p: p.exe_ctime or None)  # fmt: skip
proc_field("proc.exe_ino.mtime", T.ABSTIME, "last modification time of the executable (ns since epoch).",
           lambda p: p.exe_mtime or None)  # fmt: skip


@field("proc.args", T.CHARBUF, "the arguments of the command line (excluding argv[0]); proc.args[N] is one of them.",
       arg=ARG_OPTIONAL, arg_kind="index")  # fmt: skip
def _mk_args(arg: str | None) -> Fn:
    n = _parse_index("proc.args", arg)
    if n is None:
        return lambda ev, ctx: ctx.proc.args_str if ctx.proc is not None else None

    def fn(ev: Event, ctx: Any) -> str | None:
        p = ctx.proc
        if p is None:
            return None
        return p.args[n] if n < len(p.args) else ""

    return fn


def _thread_tid(ev: Event, ctx: Any) -> int:
    return ev.tid


def _thread_vtid(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None or not p.vpid:
        return None
    if p.vpid == p.pid:
        return ev.tid
    return p.vpid if ev.tid == ev.pid else None


simple("thread.tid", T.INT64, "the id of the thread generating the event.", _thread_tid)
simple("thread.vtid", T.INT64, "the id of the thread as seen from its pid namespace.", _thread_vtid)
simple("thread.ismain", T.BOOL, "'true' if the thread generating the event is the main one in the process.",
       lambda ev, ctx: ev.tid == ev.pid)  # fmt: skip


def caps_text(mask: int) -> str:
    """Falco's rendering of a capability set (sinsp_utils::caps_to_string)."""
    return " ".join(name for i, name in enumerate(_CAPS) if mask >> i & 1)


_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

proc_field("thread.cap_effective", T.CHARBUF, "The effective capabilities set (names separated by spaces).",
           lambda p: caps_text(p.cap_effective))  # fmt: skip
proc_field("thread.cap_permitted", T.CHARBUF, "The permitted capabilities set (names separated by spaces).",
           lambda p: caps_text(p.cap_permitted))  # fmt: skip


def _parent_field(name: str, type: FieldType, desc: str, get: Callable[[Any], Any]) -> None:
    def fn(ev: Event, ctx: Any) -> Any:
        q = _parent(ctx)
        return get(q) if q is not None else None

    simple(name, type, desc, fn)


_parent_field("proc.ppid", T.INT64, "the pid of the parent of the process generating the event.", lambda q: q.pid)
_parent_field("proc.pname", T.CHARBUF, "the proc.name of the parent process.", lambda q: q.name)
_parent_field("proc.pexe", T.CHARBUF, "the proc.exe (argv[0]) of the parent process.", lambda q: q.exe)
_parent_field("proc.pexepath", T.CHARBUF, "the proc.exepath of the parent process.", lambda q: q.exepath)
_parent_field("proc.pcmdline", T.CHARBUF, "the proc.cmdline of the parent process.", lambda q: q.cmdline)
_parent_field("proc.pvpid", T.INT64, "the vpid of the parent process.", lambda q: q.vpid if q.vpid else None)


def _ancestor_field(name: str, type: FieldType, desc: str, get: Callable[[Any], Any]) -> None:
    @field(name, type, desc, arg=ARG_OPTIONAL, arg_kind="index")
    def make(arg: str | None) -> Fn:
        n = _parse_index(name, arg)
        if n is None:

            def any_ancestor(ev: Event, ctx: Any) -> Multi | None:
                p = ctx.proc
                if p is None:
                    return None
                vals = Multi(get(a) for a in ctx.tracker.table.ancestors(p))
                return vals if vals else None

            return any_ancestor

        def nth(ev: Event, ctx: Any) -> Any:
            a = _ancestor(ctx, n)
            return get(a) if a is not None else None

        return nth


_ancestor_field("proc.aname", T.CHARBUF, "the proc.name of an ancestor: proc.aname[1] is the parent, [2] the "
                "grandparent...; without index, any ancestor.", lambda a: a.name)  # fmt: skip
_ancestor_field("proc.apid", T.INT64, "the pid of an ancestor; without index, any ancestor.", lambda a: a.pid)
_ancestor_field("proc.aexe", T.CHARBUF, "the proc.exe of an ancestor; without index, any ancestor.", lambda a: a.exe)
_ancestor_field("proc.aexepath", T.CHARBUF, "the proc.exepath of an ancestor; without index, any ancestor.",
                lambda a: a.exepath)  # fmt: skip
_ancestor_field("proc.acmdline", T.CHARBUF, "the proc.cmdline of an ancestor; without index, any ancestor.",
                lambda a: a.cmdline)  # fmt: skip
_ancestor_field("proc.aargs", T.CHARBUF, "the proc.args of an ancestor; without index, any ancestor.",
                lambda a: a.args_str)  # fmt: skip


def _sname(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    q = ctx.tracker.table.session_leader(p)
    return q.name if q is not None else None


simple("proc.sname", T.CHARBUF, "the name of the current process's session leader: the process with pid=proc.sid, "
       "or the eldest ancestor with the same sid.", _sname)  # fmt: skip


def _start_ts(ctx: Any, p: Any) -> int:
    return ctx.tracker.table.start_ts(p)


def _duration(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None or not p.start_time:
        return None
    return ev.ts - _start_ts(ctx, p)


def _pid_ts(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None or not p.start_time:
        return None
    return _start_ts(ctx, p)


def _ppid_ts(ev: Event, ctx: Any) -> int | None:
    q = _parent(ctx)
    if q is None or not q.start_time:
        return None
    return _start_ts(ctx, q)


def _ppid_duration(ev: Event, ctx: Any) -> int | None:
    ts = _ppid_ts(ev, ctx)
    return ev.ts - ts if ts is not None else None


simple("proc.duration", T.RELTIME, "number of nanoseconds since the process started.", _duration)
simple("proc.pid.ts", T.ABSTIME, "start of the process as epoch timestamp in nanoseconds.", _pid_ts)
simple("proc.ppid.ts", T.ABSTIME, "start of the parent process as epoch timestamp in nanoseconds.", _ppid_ts)
simple("proc.ppid.duration", T.RELTIME, "number of nanoseconds since the parent process started.", _ppid_duration)


def pidns_init_start_ts(ctx: Any, p: Any) -> int | None:
    """proc.pidns_init_start_ts: boot time for host processes, the start of the init of the
    pid namespace for the others (None when that init is unknown)."""
    t = ctx.tracker.table
    if not p.vpid or p.vpid == p.pid:
        return t.boot_offset or None
    init = t.pidns_init(p)
    if init is None or not init.start_time:
        return None
    return t.start_ts(init)


def _pidns_ts(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    return pidns_init_start_ts(ctx, p) if p is not None else None


simple("proc.pidns_init_start_ts", T.UINT64, "start of the init process of the pid namespace (ns since epoch).",
       _pidns_ts)  # fmt: skip


def _ctime_dur_proc_start(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None or not p.exe_ctime or not p.start_time:
        return None
    d = _start_ts(ctx, p) - p.exe_ctime
    return d if d > 0 else None


def _ctime_dur_pidns_start(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None or not p.exe_ctime:
        return None
    ts = pidns_init_start_ts(ctx, p)
    if ts is None or p.exe_ctime <= ts:
        return None
    return p.exe_ctime - ts


simple("proc.exe_ino.ctime_duration_proc_start", T.ABSTIME, "nanoseconds between the last status change of the "
       "executable and the start of the process.", _ctime_dur_proc_start)  # fmt: skip
simple("proc.exe_ino.ctime_duration_pidns_start", T.ABSTIME, "nanoseconds between the start of the pid namespace "
       "init and the last status change of the executable.", _ctime_dur_pidns_start)  # fmt: skip


def _loginshellid(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None:
        return None
    res = p.pid if p.name.endswith("sh") else None
    for a in ctx.tracker.table.ancestors(p):
        if a.name.endswith("sh"):
            res = a.pid
    return res


simple("proc.loginshellid", T.INT64, "the pid of the oldest shell among the ancestors of the process.",
       _loginshellid)  # fmt: skip


# -- user.* / group.* -------------------------------------------------------------------------
def _users(ctx: Any, p: Any) -> tuple[Any, str | None, str | None]:
    db = ctx.tracker.users
    root, key = db.for_process(p)
    return db, root, key


def _user_name(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    db, root, key = _users(ctx, p)
    n = db.user_name(p.uid, root, key)
    if n == NA and p.uid == 0:
        return "root"
    return n


def _user_home(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    db, root, key = _users(ctx, p)
    e = db.user_entry(p.uid, root, key)
    if e is None:
        return "/root" if p.uid == 0 else NA
    return e[1]


def _user_shell(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    db, root, key = _users(ctx, p)
    e = db.user_entry(p.uid, root, key)
    return e[2] if e is not None else NA


def _loginuid(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    return p.loginuid_value if p is not None else None


def _loginname(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    lu = p.loginuid_value
    if lu < 0:
        return NA
    db, root, key = _users(ctx, p)
    n = db.user_name(lu, root, key)
    if n == NA and lu == 0:
        return "root"
    return n


def _group_name(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    db, root, key = _users(ctx, p)
    n = db.group_name(p.gid, root, key)
    if n == NA and p.gid == 0:
        return "root"
    return n


proc_field("user.uid", T.UINT32, "user ID.", lambda p: p.uid)
simple("user.name", T.CHARBUF, "user name.", _user_name)
simple("user.homedir", T.CHARBUF, "home directory of the user.", _user_home)
simple("user.shell", T.CHARBUF, "user's shell.", _user_shell)
simple("user.loginuid", T.INT64, "audit user id (auid); -1 when unset.", _loginuid)
simple("user.loginname", T.CHARBUF, "audit user name (auid).", _loginname)
proc_field("group.gid", T.UINT32, "group ID.", lambda p: p.gid)
simple("group.name", T.CHARBUF, "group name.", _group_name)


# -- fd.* -------------------------------------------------------------------------------------
def _fd_num(ev: Event, ctx: Any) -> int | None:
    if ctx.proc is None:
        return None
    return _event_fd_num(ev)


simple("fd.num", T.INT64, "the unique number identifying the file descriptor.", _fd_num)


def fd_field(name: str, type: FieldType, desc: str, get: Callable[[Event, Any, Any], Any], **kw: Any) -> None:
    """A field of the event's fd: ``get(ev, ctx, fdinfo)``; <NA> for events without an fd."""

    def fn(ev: Event, ctx: Any) -> Any:
        if ev.type != _SYSCALL or ev.nr not in _FD_BY_NR or ctx.proc is None:
            return None
        fi = event_fd(ev, ctx)
        if fi is None:
            return None
        return get(ev, ctx, fi)

    simple(name, type, desc, fn, **kw)


def _has_fd(ev: Event, ctx: Any) -> bool:
    return ev.type == _SYSCALL and ev.nr in _FD_BY_NR and ctx.proc is not None


def _fd_name(ev: Event, ctx: Any) -> str | None:
    if not _has_fd(ev, ctx):
        return None
    fi = event_fd(ev, ctx)
    if fi is None:
        return _fdname_from_event(ev, ctx, False)
    return fi.name


def _fd_nameraw(ev: Event, ctx: Any) -> str | None:
    if not _has_fd(ev, ctx):
        return None
    fi = event_fd(ev, ctx)
    if fi is None:
        name = _fdname_from_event(ev, ctx, True)
    else:
        name = fi.nameraw
    while "//" in name:
        name = name.replace("//", "/")
    return name


def _fd_directory(ev: Event, ctx: Any) -> str | None:
    if not _has_fd(ev, ctx):
        return None
    fi = event_fd(ev, ctx)
    if fi is None:
        s = _fdname_from_event(ev, ctx, False)
    elif fi.type == "directory":
        return fi.name
    elif fi.type == "file":
        s = fi.name
    else:
        return None
    pos = s.rfind("/")
    if pos > 0:
        return s[:pos] if pos < len(s) - 1 else s
    return "/"


def _fd_filename(ev: Event, ctx: Any, fi: Any) -> str | None:
    if fi.type != "file":
        return None
    s = fi.name
    pos = s.rfind("/")
    if pos < 0:
        return "/"
    return s[pos + 1 :] if pos < len(s) - 1 else s


def _fd_typechar(ev: Event, ctx: Any) -> str | None:
    if not _has_fd(ev, ctx):
        return None
    fi = event_fd(ev, ctx)
    if fi is None:
        return _EVT_TYPECHAR_NR.get(ev.nr, "o")
    return TYPECHAR.get(fi.type, "o")


simple("fd.name", T.CHARBUF, "FD full name: the full path of a file, the connection tuple of a socket.", _fd_name)
simple("fd.nameraw", T.CHARBUF, "FD name as the program passed it (files), not made absolute.", _fd_nameraw)
simple("fd.directory", T.CHARBUF, "If the fd is a file, the directory that contains it.", _fd_directory)
simple("fd.typechar", T.CHARBUF, "type of FD as a single character ('f' file, '4'/'6' inet, 'u' unix, 'p' pipe...).",
       _fd_typechar)  # fmt: skip
fd_field("fd.filename", T.CHARBUF, "If the fd is a file, the filename without the path.", _fd_filename)
fd_field("fd.type", T.CHARBUF, "type of FD: 'file', 'directory', 'ipv4', 'ipv6', 'unix', 'pipe', 'event', "
         "'signalfd', 'eventpoll', 'inotify', 'memfd'...", lambda ev, ctx, fi: fi.type)  # fmt: skip


def _role_inet(fi: Any) -> bool:
    return _is_inet(fi) and bool(fi.role) and not _is_servsock(fi)


def _cip(ev: Event, ctx: Any, fi: Any) -> str | None:
    return fi.cip if _role_inet(fi) else None


def _sip(ev: Event, ctx: Any, fi: Any) -> str | None:
    if not _is_inet(fi):
        return None
    if _is_servsock(fi):
        return fi.sip or None
    return fi.sip if fi.role else None


def _cport(ev: Event, ctx: Any, fi: Any) -> int | None:
    return fi.cport if _role_inet(fi) else None


def _sport(ev: Event, ctx: Any, fi: Any) -> int | None:
    if not _is_inet(fi):
        return None
    if _is_servsock(fi):
        return fi.sport
    return fi.sport if fi.role else None


def _client_is_local(ctx: Any, fi: Any) -> bool:
    return _is_local_ip(ctx, fi.cip, fi)


def _lip(ev: Event, ctx: Any, fi: Any) -> str | None:
    if not _role_inet(fi):
        return None
    return fi.cip if _client_is_local(ctx, fi) else fi.sip


def _rip(ev: Event, ctx: Any, fi: Any) -> str | None:
    if not _role_inet(fi):
        return None
    return fi.sip if _client_is_local(ctx, fi) else fi.cip


def _lport(ev: Event, ctx: Any, fi: Any) -> int | None:
    if not _role_inet(fi):
        return None
    return fi.cport if _client_is_local(ctx, fi) else fi.sport


def _rport(ev: Event, ctx: Any, fi: Any) -> int | None:
    if not _role_inet(fi):
        return None
    return fi.sport if _client_is_local(ctx, fi) else fi.cport


def _ips(ev: Event, ctx: Any, fi: Any) -> Multi | None:
    if not _is_inet(fi):
        return None
    if _is_servsock(fi):
        return Multi((fi.sip,)) if fi.sip else None
    if not fi.cip and not fi.sip:
        return None
    return Multi(x for x in (fi.cip, fi.sip) if x)


def _ports(ev: Event, ctx: Any, fi: Any) -> Multi | None:
    if not _is_inet(fi):
        return None
    if _is_servsock(fi):
        return Multi((fi.sport,))
    if not fi.role and not fi.cport and not fi.sport:
        return None
    return Multi((fi.cport, fi.sport))


def _is_server(ev: Event, ctx: Any, fi: Any) -> bool:
    if not _is_inet(fi):
        return False
    if _is_servsock(fi):
        return True
    return _is_local_ip(ctx, fi.sip, fi)


def _sockfamily(ev: Event, ctx: Any, fi: Any) -> str | None:
    if _is_inet(fi):
        return "ip"
    if fi.type == "unix":
        return "unix"
    return None


def _l4proto(ev: Event, ctx: Any, fi: Any) -> str:
    return fi.l4proto or NA


def _name_changed(ev: Event, ctx: Any, fi: Any) -> bool:
    # sends on an unconnected UDP socket rename it to the last peer (libsinsp update_fd)
    if ev.nr not in (_NR_SENDTO, _NR_SENDMSG) or ev.ret < 0:
        return False
    s = ev.sock
    if s is None or not s.from_arg or fi.connected or fi.l4proto != "udp":
        return False
    prev = getattr(ctx, "fd_name_before", None)
    return prev is None or prev != fi.name


def _dns_name(ctx: Any, ip: str | None) -> str | None:
    if not ip:
        return None
    names = getattr(ctx.tracker, "dns_names", None)
    if not names:
        return None
    return names.get(ip)


fd_field("fd.cip", T.IPADDR, "client IP address.", _cip)
fd_field("fd.sip", T.IPADDR, "server IP address.", _sip)
fd_field("fd.lip", T.IPADDR, "local IP address.", _lip)
fd_field("fd.rip", T.IPADDR, "remote IP address.", _rip)
fd_field("fd.cport", T.PORT, "for TCP/UDP FDs, the client port.", _cport)
fd_field("fd.sport", T.PORT, "for TCP/UDP FDs, server port.", _sport)
fd_field("fd.lport", T.PORT, "for TCP/UDP FDs, the local port.", _lport)
fd_field("fd.rport", T.PORT, "for TCP/UDP FDs, the remote port.", _rport)
fd_field("fd.ip", T.IPADDR, "matches the ip address (client or server) of the fd.", _ips, filter_only=True)
fd_field("fd.port", T.PORT, "matches the port (either client or server) of the fd.", _ports, filter_only=True)
fd_field("fd.net", T.IPNET, "matches the IP network (client or server) of the fd.", _ips, filter_only=True)
fd_field("fd.cnet", T.IPNET, "matches the client IP network of the fd.", _cip, filter_only=True)
fd_field("fd.snet", T.IPNET, "matches the server IP network of the fd.", _sip, filter_only=True)
fd_field("fd.lnet", T.IPNET, "matches the local IP network of the fd.", _lip, filter_only=True)
fd_field("fd.rnet", T.IPNET, "matches the remote IP network of the fd.", _rip, filter_only=True)
fd_field("fd.l4proto", T.CHARBUF, "the IP protocol of a socket: 'tcp', 'udp', 'icmp' or 'raw'.", _l4proto)
fd_field("fd.sockfamily", T.CHARBUF, "the socket family for socket events: 'ip' or 'unix'.", _sockfamily)
fd_field("fd.is_server", T.BOOL, "'true' if the process owning this FD is the server endpoint in the connection.",
         _is_server)  # fmt: skip
fd_field("fd.connected", T.BOOL, "for TCP/UDP FDs, 'true' if the socket is connected.",
         lambda ev, ctx, fi: bool(fi.connected))  # fmt: skip
fd_field("fd.name_changed", T.BOOL, "True when an event changes the name of an fd used by this event (udp sends).",
         _name_changed)  # fmt: skip
fd_field("fd.cip.name", T.CHARBUF, "Domain name associated with the client IP address.",
         lambda ev, ctx, fi: _dns_name(ctx, _cip(ev, ctx, fi)))  # fmt: skip
fd_field("fd.sip.name", T.CHARBUF, "Domain name associated with the server IP address.",
         lambda ev, ctx, fi: _dns_name(ctx, _sip(ev, ctx, fi) if not _is_servsock(fi) else None))  # fmt: skip
fd_field("fd.lip.name", T.CHARBUF, "Domain name associated with the local IP address.",
         lambda ev, ctx, fi: _dns_name(ctx, _lip(ev, ctx, fi)))  # fmt: skip
fd_field("fd.rip.name", T.CHARBUF, "Domain name associated with the remote IP address.",
         lambda ev, ctx, fi: _dns_name(ctx, _rip(ev, ctx, fi)))  # fmt: skip
fd_field("fd.cproto", T.CHARBUF, "for TCP/UDP FDs, the client protocol (the port, as andon never resolves ports).",
         lambda ev, ctx, fi: str(fi.cport) if _role_inet(fi) else None)  # fmt: skip
fd_field("fd.sproto", T.CHARBUF, "for TCP/UDP FDs, the server protocol (the port).",
         lambda ev, ctx, fi: (str(fi.sport) if _role_inet(fi) else None))  # fmt: skip


def _fd_uid(ev: Event, ctx: Any) -> str | None:
    n = _fd_num(ev, ctx)
    if n is None:
        return None
    return f"{ev.tid}{n}"


simple("fd.uid", T.CHARBUF, "a unique identifier for the FD: the thread id and the FD number chained.", _fd_uid)


def _fd_containername(ev: Event, ctx: Any) -> str | None:
    n = _fd_name(ev, ctx)
    return None if n is None else f"{_container_id(ev, ctx)}:{n}"


def _fd_containerdirectory(ev: Event, ctx: Any) -> str | None:
    d = _fd_directory(ev, ctx)
    return None if d is None else f"{_container_id(ev, ctx)}:{d}"


simple("fd.containername", T.CHARBUF, "chaining of the container ID and the FD name.", _fd_containername)
simple("fd.containerdirectory", T.CHARBUF, "chaining of the container ID and the directory name.",
       _fd_containerdirectory)  # fmt: skip


# -- container.* / k8s.* ------------------------------------------------------------------------
_RUNTIME_TYPE = {"docker": "docker", "podman": "podman", "cri-o": "cri-o", "containerd": "containerd", "cri": "cri",
                 "lxc": "lxc"}  # fmt: skip


def _container_id(ev: Event, ctx: Any) -> str | None:
    p = ctx.proc
    if p is None:
        return None
    return p.container[:12] if p.container else "host"


def _cinfo(ctx: Any) -> Any:
    """(is_host, ContainerInfo or None): the container plugin's view of the process."""
    p = ctx.proc
    c = p.container
    if not c:
        return _HOST
    reg = ctx.tracker.containers
    info = reg.get(c) if reg is not None else None
    if info is None or not info.resolved:
        return None
    return info


_HOST = object()


def container_field(name: str, type: FieldType, desc: str, host: Any, get: Callable[[Any], Any]) -> None:
    def fn(ev: Event, ctx: Any) -> Any:
        if ctx.proc is None:
            return None
        info = _cinfo(ctx)
        if info is None:
            return None
        if info is _HOST:
            return host
        return get(info)

    simple(name, type, desc, fn)


simple("container.id", T.CHARBUF, "The truncated container ID (first 12 characters); 'host' for host processes.",
       _container_id)  # fmt: skip
container_field("container.full_id", T.CHARBUF, "The full container ID.", "host", lambda i: i.id)
container_field("container.name", T.CHARBUF, "The container name ('host' for host processes).", "host",
                lambda i: i.name)  # fmt: skip
container_field("container.image", T.CHARBUF, "The container image name (e.g. falcosecurity/falco:latest).", "",
                lambda i: i.image)  # fmt: skip
container_field("container.image.id", T.CHARBUF, "The container image id.", "", lambda i: i.image_id)
container_field("container.image.repository", T.CHARBUF, "The container image repository (e.g. falcosecurity/falco).",
                "", lambda i: i.image_repository)  # fmt: skip
container_field("container.image.tag", T.CHARBUF, "The container image tag (e.g. stable, latest).", "",
                lambda i: i.image_tag)  # fmt: skip
container_field("container.image.digest", T.CHARBUF, "The container image registry digest.", "",
                lambda i: i.image_digest)  # fmt: skip
container_field("container.type", T.CHARBUF, "The container type, e.g. docker, podman, cri-o, containerd; 'host'.",
                "host", lambda i: _RUNTIME_TYPE.get(i.runtime, i.runtime or None))  # fmt: skip
container_field("container.privileged", T.BOOL, "'true' for containers running as privileged, 'false' otherwise.",
                False, lambda i: i.privileged)  # fmt: skip
container_field("k8s.pod.name", T.CHARBUF, "The Kubernetes pod name (from the container's labels).", None,
                lambda i: i.labels.get("io.kubernetes.pod.name"))  # fmt: skip
container_field("k8s.ns.name", T.CHARBUF, "The Kubernetes namespace name (from the container's labels).", None,
                lambda i: i.labels.get("io.kubernetes.pod.namespace"))  # fmt: skip
container_field("k8s.pod.uid", T.CHARBUF, "The Kubernetes pod UID (from the container's labels).", None,
                lambda i: i.labels.get("io.kubernetes.pod.uid"))  # fmt: skip


def _container_start(ev: Event, ctx: Any) -> int | None:
    p = ctx.proc
    if p is None:
        return None
    return pidns_init_start_ts(ctx, p)


def _container_duration(ev: Event, ctx: Any) -> int | None:
    ts = _container_start(ev, ctx)
    return ev.ts - ts if ts is not None else None


simple("container.start_ts", T.ABSTIME, "Container start as epoch timestamp in nanoseconds, from "
       "proc.pidns_init_start_ts.", _container_start)  # fmt: skip
simple("container.duration", T.RELTIME, "Number of nanoseconds since container.start_ts.", _container_duration)


# keep ipaddress imported for callers that compare IPNET values with our text addresses
ip_address = ipaddress.ip_address

__all__ = [
    "FIELDS",
    "Extractor",
    "FieldInfo",
    "FieldRegistry",
    "FD_EVENTS",
    "FALCO_PARAMS",
    "caps_text",
    "event_fd",
    "event_params",
    "exe_flags_text",
    "json_value",
    "open_flags_text",
    "render",
]
