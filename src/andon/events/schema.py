"""The event schema, defined once: Python's mirror of ``bpf/abi/events.h``.

``EVENT_DTYPE`` is the numpy view of one ring slot (the 8-byte ring header plus
``struct andon_event``); :class:`Event` is what consumers see. The field names are the
C names; ``tests/unit/test_abi.py`` checks every offset and size here against the BTF
of the built objects, so C and Python cannot drift apart unnoticed.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SLOT = 256
REC_SMALL = SLOT - 8
HDR_SIZE = 112
DATA_SMALL = REC_SMALL - HDR_SIZE
RINGBUF_BUSY = 1 << 31
RINGBUF_DISCARD = 1 << 30


class EventType(enum.IntEnum):
    SYSCALL = 1
    EXEC = 2
    FORK = 3
    EXIT = 4


F_TRUNCATED = 0x01
F_SOCK = 0x02
F_EXEC_INFO = 0x04
F_IA32 = 0x08  # made through int $0x80 by a 64-bit task; nr is the x86_64 equivalent

EXE_FROM_MEMFD = 0x1
EXE_UPPER_LAYER = 0x2
EXE_LOWER_LAYER = 0x4
EXE_WRITABLE = 0x8

# struct andon_event, C field order (see the field comments in events.h)
EVENT_FIELDS: list[tuple[str, Any]] = [
    ("ts", "<u8"),
    ("cgroup_id", "<u8"),
    ("ret", "<i8"),
    ("args", "<u8", (6,)),
    ("pid", "<u4"),
    ("tid", "<u4"),
    ("uid", "<u4"),
    ("gid", "<u4"),
    ("type", "<u2"),
    ("nr", "<u2"),
    ("size", "<u2"),
    ("nstr", "u1"),
    ("flags", "u1"),
    ("comm", "S16"),
    ("data", "u1", (DATA_SMALL,)),
]
EVENT_DTYPE = np.dtype(EVENT_FIELDS, align=False)
assert EVENT_DTYPE.itemsize == REC_SMALL, EVENT_DTYPE.itemsize
HEADER_DTYPE = np.dtype(EVENT_FIELDS[:-1])
assert HEADER_DTYPE.itemsize == HDR_SIZE

# one ring slot: ring header (len, pg_off) + the record
SLOT_DTYPE = np.dtype([("rb_len", "<u4"), ("rb_pgoff", "<u4"), ("ev", EVENT_DTYPE)])
assert SLOT_DTYPE.itemsize == SLOT

_HDR = struct.Struct("<QQq6QIIIIHHHBB16s")
assert _HDR.size == HDR_SIZE

# struct andon_sock
SOCK = struct.Struct("<HHHHHH16s16s")
# struct andon_exec_info
EXEC_INFO = struct.Struct("<QQQQQ" + "I" * 12)
# struct andon_config
CONFIG = struct.Struct("<IIII")

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10


@dataclass(slots=True)
class Sock:
    """A socket tuple: the local side is ``s*``, the remote ``d*`` (ports host order)."""

    family: int
    type: int
    proto: int
    sport: int
    dport: int
    saddr: str
    daddr: str
    from_arg: bool
    path: str = ""  # unix socket path, '@name' when abstract

    @property
    def l4proto(self) -> str:
        if self.family in (AF_INET, AF_INET6):
            return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(self.proto, "raw")
        return ""

    @property
    def is_inet(self) -> bool:
        return self.family in (AF_INET, AF_INET6)

    def tuple_str(self) -> str:
        """Falco's fd.name for a socket: ``sip:sport->dip:dport`` (client->server order is the caller's)."""
        if self.family == AF_UNIX:
            return self.path
        if not self.is_inet:
            return ""
        if self.family == AF_INET6:
            return f"{self.saddr}:{self.sport}->{self.daddr}:{self.dport}"
        return f"{self.saddr}:{self.sport}->{self.daddr}:{self.dport}"

    def to_dict(self) -> dict[str, Any]:
        d = {
            "family": _FAMILY_NAMES.get(self.family, str(self.family)),
            "type": _SOCKTYPE_NAMES.get(self.type, str(self.type)),
            "proto": self.l4proto or str(self.proto),
            "sport": self.sport,
            "dport": self.dport,
            "saddr": self.saddr,
            "daddr": self.daddr,
        }
        if self.path:
            d["path"] = self.path
        return d


_FAMILY_NAMES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet"}
_SOCKTYPE_NAMES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}


@dataclass(slots=True)
class ExecInfo:
    cap_effective: int
    cap_permitted: int
    start_time: int  # ns since boot
    exe_ctime: int  # ns since epoch
    exe_mtime: int
    ppid: int
    ruid: int
    rgid: int
    loginuid: int
    tty: int  # encoded as Falco's proc.tty (new_encode_dev)
    sid: int
    vpid: int
    pidns: int
    mntns: int
    netns: int
    exe_flags: int
    exepath: str = ""
    filename: str = ""
    cwd: str = ""
    cgroup: str = ""  # leaf of the v1 hierarchy chosen at load
    cgroup2: str = ""  # leaf of the default (v2) hierarchy
    argv: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Event:
    """One decoded kernel event. ``ts`` is wall-clock ns since the epoch."""

    ts: int
    type: int
    nr: int
    pid: int
    tid: int
    uid: int
    gid: int
    cgroup_id: int
    ret: int
    args: tuple[int, ...]
    comm: str
    flags: int = 0
    strings: tuple[str, ...] = ()
    sock: Sock | None = None
    exec: ExecInfo | None = None

    @property
    def name(self) -> str:
        """Falco's evt.type."""
        try:
            return _NAMES[(self.type << 16) | self.nr]
        except KeyError:
            return _name_of(self.type, self.nr)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & F_TRUNCATED)


# Event.name is read for every event by every consumer (the rule index, evt.type): a table
# filled on first use per (type, nr) instead of a function call and an import each time
_NAMES: dict[int, str] = {}


def _name_of(typ: int, nr: int) -> str:
    if typ == EventType.SYSCALL:
        from .syscalls import syscall_name  # syscalls imports this module

        name = syscall_name(nr)
    elif typ == EventType.EXEC:
        name = "execve"
    elif typ == EventType.FORK:
        name = "clone"
    elif typ == EventType.EXIT:
        name = "procexit"
    else:
        name = f"type_{typ}"
    _NAMES[(typ << 16) | nr] = name
    return name


def _decode_str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _split_strings(data: bytes, n: int) -> tuple[list[str], int]:
    out: list[str] = []
    pos = 0
    for _ in range(n):
        end = data.find(b"\0", pos)
        if end < 0:
            out.append(_decode_str(data[pos:]))
            pos = len(data)
            break
        out.append(_decode_str(data[pos:end]))
        pos = end + 1
    return out, pos


def _ip(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(raw))
    return ""


def _tty_encode(mkdev: int) -> int:
    """The kernel's new_encode_dev(MKDEV(major, minor)), which is what Falco shows as proc.tty."""
    major, minor = mkdev >> 20, mkdev & 0xFFFFF
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_record(buf: bytes | memoryview, boot_offset: int) -> Event:
    """Decode one record (``struct andon_event`` bytes, any size) into an Event.

    ``boot_offset`` turns the kernel's boot-time stamp into wall-clock ns.
    """
    (ts, cg, ret, a0, a1, a2, a3, a4, a5, pid, tid, uid, gid, typ, nr, size, nstr, flags, comm) = _HDR.unpack_from(
        buf, 0
    )
    data = bytes(buf[HDR_SIZE : max(size, HDR_SIZE) if size else len(buf)])
    ev = Event(
        ts=ts + boot_offset,
        type=typ,
        nr=nr,
        pid=pid,
        tid=tid,
        uid=uid,
        gid=gid,
        cgroup_id=cg,
        ret=ret,
        args=(a0, a1, a2, a3, a4, a5),
        comm=_decode_str(comm.split(b"\0", 1)[0]),
        flags=flags,
    )
    _decode_data(ev, data, nstr)
    return ev


def _decode_data(ev: Event, data: bytes, nstr: int) -> None:
    """Parse the data area: socket tuple, exec facts, strings, as the flags say."""
    flags = ev.flags
    off = 0
    if flags & F_SOCK:
        fam, styp, proto, sport, dport, from_arg, saddr, daddr = SOCK.unpack_from(data, 0)
        ev.sock = Sock(fam, styp, proto, sport, dport, _ip(fam, saddr), _ip(fam, daddr), bool(from_arg))
        off = SOCK.size
    if flags & F_EXEC_INFO:
        v = EXEC_INFO.unpack_from(data, 0)
        off = EXEC_INFO.size
        argv_len = v[-1]
        info = ExecInfo(*v[:9], _tty_encode(v[9]), *v[10:16])
        strs, used = _split_strings(data[off:], 5)
        strs += [""] * (5 - len(strs))
        info.exepath, info.filename, info.cwd, info.cgroup, info.cgroup2 = strs
        raw_argv = data[off + used : off + used + argv_len]
        if raw_argv.endswith(b"\0"):
            raw_argv = raw_argv[:-1]
        info.argv = [_decode_str(a) for a in raw_argv.split(b"\0")] if raw_argv else []
        ev.exec = info
        return
    if nstr:
        strs, _ = _split_strings(data[off:], nstr)
        if ev.sock is not None and ev.sock.family == AF_UNIX and strs:
            ev.sock.path = strs.pop(0)
        ev.strings = tuple(strs)


_COLS = ["ts", "cgroup_id", "ret", "pid", "tid", "uid", "gid", "type", "nr", "nstr", "flags"]


def decode_batch(recs: np.ndarray, boot_offset: int) -> list[Event]:
    """Decode an array of one-slot records (dtype EVENT_DTYPE).

    Columns are pulled out with numpy in one pass each; only the data area of records
    that carry strings, a socket or exec facts is parsed per record."""
    n = len(recs)
    if n == 0:
        return []
    ts = (recs["ts"].astype(np.int64) + boot_offset).tolist()
    cg = recs["cgroup_id"].tolist()
    ret = recs["ret"].tolist()
    pid = recs["pid"].tolist()
    tid = recs["tid"].tolist()
    uid = recs["uid"].tolist()
    gid = recs["gid"].tolist()
    typ = recs["type"].tolist()
    nr = recs["nr"].tolist()
    nstr = recs["nstr"].tolist()
    flags = recs["flags"].tolist()
    a = recs["args"]
    args = list(zip(*(a[:, j].tolist() for j in range(6))))  # the tuples made in C, not per row
    # as decode_record: comm ends at its first NUL (numpy only strips trailing ones)
    comm = [(c.split(b"\0", 1)[0] if b"\0" in c else c).decode("utf-8", "surrogateescape")
            for c in recs["comm"].tolist()]
    data = recs["data"]
    blob = data.tobytes()
    # where the first string of each record ends, for all records at once (no NUL at all:
    # the whole data area, as decode_record reads it)
    zero = data == 0
    first_len = np.where(zero.any(axis=1), zero.argmax(axis=1), DATA_SMALL).tolist()
    out: list[Event] = []
    append = out.append
    for i in range(n):
        ev = Event(ts[i], typ[i], nr[i], pid[i], tid[i], uid[i], gid[i], cg[i], ret[i], args[i], comm[i], flags[i])
        f = flags[i]
        k = nstr[i]
        if f & (F_SOCK | F_EXEC_INFO):
            base = i * DATA_SMALL
            _decode_data(ev, blob[base : base + DATA_SMALL], k)
        elif k == 1:
            base = i * DATA_SMALL
            ev.strings = (blob[base : base + first_len[i]].decode("utf-8", "surrogateescape"),)
        elif k:
            base = i * DATA_SMALL
            ev.strings = tuple(_split_strings(blob[base : base + DATA_SMALL], k)[0])
        append(ev)
    return out


def pack_config(self_tgid: int, wakeup_bytes: int, cgroup_subsys: int) -> bytes:
    return CONFIG.pack(self_tgid, wakeup_bytes, cgroup_subsys, 0)


def encode_record(ev: Event, boot_offset: int = 0) -> bytes:
    """The inverse of decode_record, for synthetic sources and tests: a record as the kernel writes it."""
    data = b""
    flags = ev.flags
    nstr = 0
    if ev.exec is not None:
        x = ev.exec
        argv = b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in x.argv)
        major, minor = (x.tty >> 8) & 0xFFF, (x.tty & 0xFF) | ((x.tty >> 12) & 0xFFF00)
        data = EXEC_INFO.pack(
            x.cap_effective, x.cap_permitted, x.start_time, x.exe_ctime, x.exe_mtime,
            x.ppid, x.ruid, x.rgid, x.loginuid, (major << 20) | minor, x.sid, x.vpid,
            x.pidns, x.mntns, x.netns, x.exe_flags, len(argv),
        )
        for s in (x.exepath, x.filename, x.cwd, x.cgroup, x.cgroup2):
            data += s.encode("utf-8", "surrogateescape") + b"\0"
        data += argv
        nstr = 6
        flags |= F_EXEC_INFO
    else:
        if ev.sock is not None:
            s = ev.sock
            fam = s.family

            def raw(a: str) -> bytes:
                if not a:
                    return b"\0" * 16
                if fam == AF_INET:
                    return socket.inet_pton(socket.AF_INET, a) + b"\0" * 12
                return socket.inet_pton(socket.AF_INET6, a)

            data = SOCK.pack(fam, s.type, s.proto, s.sport, s.dport, int(s.from_arg), raw(s.saddr), raw(s.daddr))
            flags |= F_SOCK
            if s.path:
                data += s.path.encode("utf-8", "surrogateescape") + b"\0"
                nstr += 1
        for st in ev.strings:
            data += st.encode("utf-8", "surrogateescape") + b"\0"
            nstr += 1
    if len(data) <= DATA_SMALL:
        size = REC_SMALL
        data = data.ljust(DATA_SMALL, b"\0")
    else:
        size = ((HDR_SIZE + len(data) + 8 + SLOT - 1) // SLOT) * SLOT - 8
        data = data.ljust(size - HDR_SIZE, b"\0")
    hdr = _HDR.pack(
        ev.ts - boot_offset, ev.cgroup_id, ev.ret, *ev.args, ev.pid, ev.tid, ev.uid, ev.gid,
        ev.type, ev.nr, size, nstr, flags, ev.comm.encode()[:16],
    )
    return hdr + data
