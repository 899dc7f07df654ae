"""The socket data source: load ``net/sockdata.bpf.o``, read its ring, decode its records.

What the kernel side captures, and how, is told in ``bpf/net/sockdata.bpf.c``; the wire
structs are ``bpf/abi/sockdata.h``, mirrored here field by field (the struct formats
below; ``tests/kernel/test_sockdata.py`` checks them against the BTF of the built
object). The source yields three kinds of record, in ring order::

    ConnOpen   a connection was seen (connect, accept, or its first read/write)
    Data       one read/write of a connection whose protocol is switched on
    ConnClose  its end (close(2), close_range(2), an exec, the process's exit, or its fd
               reused), with the bytes sent and received while traced

and one it acts on itself: a process mapped a libssl file, or ran an executable new to the
sensor (``REC_LIB``, ``addr`` 0), whose TLS uprobes :class:`~andon.events.tls.TlsAttacher`
then puts on at once when it has OpenSSL (:class:`LibMapped`, not handed on by
:meth:`SockSource.read_into`).

Each :class:`Data` carries its byte position in its direction; the source keeps the
next expected position per connection and direction and puts the difference in
``gap`` (bytes lost before this chunk: ring full, chunks before the protocol was
known), so :meth:`Data.chunk` gives the parsers a :class:`~andon.protocols.base.DataChunk`
that says what is missing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bpf.object import BpfObject, Link
from ..bpf.ringbuf import page_aligned_size
from ..bpf.varring import VarRingReader
from ..errors import BpfError, NotSupported, PermissionDenied, UsageError
from ..protocols.base import DataChunk, Direction, Protocol, Role
from .live import boot_offset_ns, default_bpf_dir, possible_cpus
from .tls import GO_PROGRAMS as GO_TLS_PROGRAMS
from .tls import PROGRAMS as TLS_PROGRAMS
from .tls import TlsAttacher

log = logging.getLogger("andon.sockdata")

COPY_MAX = 16384  # SD_COPY_MAX
PROTO_MAX = 16  # SD_PROTO_MAX

REC_OPEN, REC_DATA, REC_CLOSE, REC_LIB = 1, 2, 3, 4
# times an executable is forgotten in the sensor (so that its next exec is reported again) when
# its process exited before the reader could look at it
EXE_RETRIES = 3
ORIGIN_CONNECT, ORIGIN_ACCEPT, ORIGIN_DATA = 1, 2, 3
CLOSE_SYSCALL, CLOSE_REUSED, CLOSE_EXEC, CLOSE_EXIT = 1, 2, 3, 4
F_TRUNCATED, F_ADDR, F_ENCRYPTED, F_NOCOPY = 0x01, 0x02, 0x04, 0x08
NR_SENDFILE, NR_SPLICE = 40, 275  # a record with F_NOCOPY: which call moved the bytes
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10

# struct andon_sd_hdr: type role protocol pid tid fd ts conn_id
HDR = struct.Struct("<HBBIIiQQ")
# struct andon_sd_open: hdr family l4 lport rport laddr raddr netns origin comm tcomm path_len path
# sock_id peer_id
OPEN = struct.Struct("<HBBIIiQQ HHHH16s16sII16s16sI108sQQ".replace(" ", ""))
# struct andon_sd_data: hdr pos size copied nr direction flags rport rfamily raddr, then data[]
DATA = struct.Struct("<HBBIIiQQ QIIHBBHH16s".replace(" ", ""))
# the same without raddr (read only for a record with F_ADDR), and where raddr starts
_DATA_HEAD = struct.Struct(DATA.format[:-3])
_RADDR = _DATA_HEAD.size
# struct andon_sd_close: hdr bytes_sent bytes_recv reason _pad
CLOSE = struct.Struct("<HBBIIiQQ QQII".replace(" ", ""))
# struct andon_sd_lib: hdr addr ino dev
LIB = struct.Struct("<HBBIIiQQ QQQ".replace(" ", ""))
# struct andon_sd_config: self_tgid max_copy infer_tries trace_self pid_filter wakeup_shift watch_libs
# unix_sockets
CONFIG = struct.Struct("<IIIIIIII")

# field names in C order, for the ABI test and for readers of this file
HDR_FIELDS = ("type", "role", "protocol", "pid", "tid", "fd", "ts", "conn_id")
OPEN_FIELDS = ("family", "l4", "lport", "rport", "laddr", "raddr", "netns", "origin", "comm", "tcomm", "path_len",
               "path", "sock_id", "peer_id")
DATA_FIELDS = ("pos", "size", "copied", "nr", "direction", "flags", "rport", "rfamily", "raddr")
CLOSE_FIELDS = ("bytes_sent", "bytes_recv", "reason", "_pad")
LIB_FIELDS = ("addr", "ino", "dev")
CONFIG_FIELDS = ("self_tgid", "max_copy", "infer_tries", "trace_self", "pid_filter", "wakeup_shift", "watch_libs",
                 "unix_sockets")

STAT_NAMES = (
    "events",
    "drops",
    "skipped_bytes",
    "skipped_chunks",
    "truncated",
    "read_errors",
    "conn_full",
    "dropped_bytes",
    "tls_chunks",
    "tls_cipher_bytes",
    "tls_no_conn",
    "nocopy_chunks",
    "tls_bio_binds",
    "go_tls_other_conn",
)

# the library call of a record with F_ENCRYPTED (field nr): SD_TLS_*
# (5 and 6: OpenSSL's function that both of a pair call, probed in their place: see libssl_code;
# 7 and 8: Go's crypto/tls, see go_tls)
TLS_CALLS = {1: "SSL_read", 2: "SSL_write", 3: "SSL_read_ex", 4: "SSL_write_ex", 5: "SSL_read/_ex",
             6: "SSL_write/_ex", 7: "tls.(*Conn).Read", 8: "tls.(*Conn).Write"}

# hook -> the programs in net/sockdata.bpf.o it loads and attaches, in the order tried: its
# sys_exit entry point, and the process-exit program (the end of a process ends its connections)
HOOKS = {"tp_btf": ("sockdata_exit_btf", "sockdata_proc_exit"), "raw_tp": ("sockdata_exit_raw", "sockdata_proc_exit")}

# the protocols the kernel can infer (bpf/net/sockdata.bpf.c, sd__infer)
INFERRED = frozenset({Protocol.HTTP, Protocol.HTTP2, Protocol.PGSQL, Protocol.MYSQL, Protocol.REDIS, Protocol.DNS})


def unix_path(raw: bytes, n: int) -> str:
    """sun_path as the kernel holds it (``n`` bytes) as text: a leading NUL (an abstract
    name) shown as ``@``, as ss(8) and /proc/net/unix do; a filesystem path up to its NUL."""
    raw = raw[:max(0, min(n, len(raw)))]
    if raw[:1] == b"\0":
        return "@" + raw[1:].decode(errors="replace")
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _addr(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == AF_INET6:
        a = ipaddress.IPv6Address(raw)
        return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
    return ""


@dataclass(slots=True)
class ConnOpen:
    conn_id: int
    pid: int
    tid: int
    fd: int
    ts_ns: int  # wall clock
    role: Role
    family: int  # AF_INET / AF_INET6 / AF_UNIX (a stream socket)
    laddr: str  # AF_UNIX: the socket's path (unix_path), as raddr; ports 0
    lport: int
    raddr: str
    rport: int
    l4: int  # 6 TCP, 17 UDP; 0 for AF_UNIX
    netns: int  # inode of the socket's network namespace
    origin: int  # ORIGIN_CONNECT / ORIGIN_ACCEPT / ORIGIN_DATA
    comm: str  # the process's name (its thread group leader's)
    thread: str = ""  # the name of the thread that opened it (dig: isc-net-0000)
    sock_id: int = 0  # the kernel socket's identity while it lives
    peer_id: int = 0  # AF_UNIX: the other end's sock_id (0: none yet); inet ends pair by address


@dataclass(slots=True)
class Data:
    conn_id: int
    pid: int
    tid: int
    fd: int
    ts_ns: int  # wall clock at syscall exit
    direction: Direction
    protocol: Protocol
    role: Role
    data: bytes  # the copied prefix of what the syscall moved
    size: int  # what the syscall moved
    pos: int  # bytes of this direction before this chunk
    gap: int = 0  # bytes of this direction lost just before this chunk
    nr: int = 0  # syscall number
    flags: int = 0
    peer: tuple[str, int] | None = None  # a UDP datagram's remote address and port

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    @property
    def encrypted(self) -> bool:
        """Plaintext of a TLS library call (its pos counts plaintext bytes)."""
        return bool(self.flags & F_ENCRYPTED)

    @property
    def nocopy(self) -> bool:
        """Bytes sendfile(2) or splice(2) moved inside the kernel: a size, no data."""
        return bool(self.flags & F_NOCOPY)

    def chunk(self) -> DataChunk:
        return DataChunk(self.ts_ns, self.direction, self.data, self.size, self.gap)


@dataclass(slots=True)
class ConnClose:
    conn_id: int
    pid: int
    tid: int
    fd: int
    ts_ns: int
    role: Role
    protocol: Protocol
    bytes_sent: int
    bytes_recv: int
    reason: int  # CLOSE_SYSCALL (close(2), close_range(2)) / CLOSE_REUSED / CLOSE_EXEC / CLOSE_EXIT


@dataclass(slots=True)
class LibMapped:
    """A process mapped a file named libssl.so.* executable, or (``addr`` 0) ran an executable
    new to the sensor (the sensor's own business: the reader probes the file, if new and
    OpenSSL, before it reads on)."""

    pid: int
    tid: int
    fd: int
    ts_ns: int
    addr: int  # where the mapping starts; 0: an exec
    ino: int  # the file's inode number
    dev: int = 0  # its filesystem's device, the kernel's encoding (major << 20 | minor)


Record = ConnOpen | Data | ConnClose | LibMapped


@dataclass(frozen=True)
class SockSettings:
    """What the socket data source captures. ``protocols``: whose data crosses to Python;
    ``trace_roles``: of those, only the data of connections where the traced process plays
    one of these roles (a protocol not named: both ends)."""

    protocols: frozenset[Protocol] = INFERRED
    trace_roles: Mapping[Protocol, frozenset[Role]] = field(default_factory=dict)
    max_copy: int = 4096  # bytes copied per syscall
    ring_bytes: int = 8 << 20
    infer_tries: int = 4  # chunks looked at before a connection is given up as unknown
    trace_self: bool = False  # also trace this process (tests do; the agent must not)
    hook: str = "auto"  # "auto": tp_btf, else raw_tp; or exactly "tp_btf" / "raw_tp"
    pids: frozenset[int] | None = None  # trace only these processes (more with add_pid); None: all
    tls: bool = True  # uprobes on OpenSSL: plaintext of TLS connections (andon.events.tls)
    tls_rescan_s: float = 2.0  # how often read() looks for processes with a new libssl file
    tls_watch: bool = True  # probe a libssl file the moment a process maps it (SD_REC_LIB), not at a rescan
    tls_shared: bool = True  # probe the function SSL_read and SSL_read_ex share (and the write pair's)
    # where libssl_code finds it, in their place: a twelfth of the cost a call (off: the exported ones)
    tls_go: bool = True  # also probe Go executables' crypto/tls (andon.events.go_tls)
    unix: bool = True  # also unix stream sockets (psql, mysql -h localhost, redis-cli -s)
    # the kernel wakes the reader each time this many more bytes are pending (a power of two
    # of at least 4 KiB); None: a sixteenth of the ring, at least 64 KiB; 0: the kernel's
    # adaptive wake-up, at the first record after the reader had caught up
    wakeup_bytes: int | None = None
    bpf_dir: Path = field(default_factory=default_bpf_dir)

    def __post_init__(self) -> None:
        if not 1 <= self.max_copy <= COPY_MAX:
            raise UsageError(f"max_copy must be 1..{COPY_MAX} bytes, not {self.max_copy}")
        if not 1 <= self.infer_tries <= 255:
            raise UsageError(f"infer_tries must be 1..255, not {self.infer_tries}")
        if self.hook not in HOOKS and self.hook != "auto":
            raise UsageError(f"hook must be auto, tp_btf or raw_tp, not {self.hook!r}")
        w = self.wakeup_bytes
        if w is not None and w != 0 and (w < 4096 or w & (w - 1)):
            raise UsageError(f"wakeup_bytes must be 0 or a power of two of at least 4096, not {w}")
        for p, roles in self.trace_roles.items():
            if not roles or not set(roles) <= {Role.CLIENT, Role.SERVER}:
                raise UsageError(f"trace_roles of {Protocol(p).name.lower()} must be client and/or server, "
                                 f"not {sorted(Role(r).name.lower() for r in roles)}")
        unknown = [p for p in self.protocols if Protocol(p) not in INFERRED]
        if unknown:
            names = ", ".join(Protocol(p).name.lower() for p in unknown)
            raise UsageError(f"the kernel cannot recognise {names}; known: "
                             + ", ".join(sorted(p.name.lower() for p in INFERRED)))


def role_mask(roles: Iterable[Role] | None) -> int:
    """An sd_protos value: a bit per connection role whose data is wanted (1 << SD_ROLE_*).
    None, or both ends: every role, UNKNOWN included (a connection whose first chunks did
    not say which end it is)."""
    if roles is None or {Role.CLIENT, Role.SERVER} <= set(roles):
        return 1 << Role.UNKNOWN | 1 << Role.CLIENT | 1 << Role.SERVER
    return sum(1 << int(r) for r in set(roles))


def wakeup_bytes(ring: int, asked: int | None) -> int:
    """The backlog step at which the kernel wakes the reader for a ring of ``ring`` bytes
    (a power of two): ``asked``, or a sixteenth of the ring but at least 64 KiB; never more
    than half the ring. 0 stays 0 (the kernel's adaptive wake-up)."""
    if asked == 0:
        return 0
    w = asked if asked is not None else max(64 * 1024, ring // 16)
    return min(w, ring // 2)


def decode(rec: bytes, boot_offset: int = 0) -> Record | None:
    """One ring record -> a record object; None for a record too short or of unknown type."""
    if len(rec) < HDR.size:
        return None
    typ = rec[0] | rec[1] << 8
    if typ == REC_DATA and len(rec) >= DATA.size:
        # one unpack for the hot record: header and data fields together
        (_, role, proto, pid, tid, fd, ts, conn_id, pos, size, copied, nr, direction, flags, rport, rfamily,
         raddr) = DATA.unpack_from(rec)
        peer = (_addr(rfamily, raddr), rport) if flags & F_ADDR else None
        return Data(conn_id, pid, tid, fd, ts + boot_offset, _DIRS[direction & 1], _proto(proto), _role(role),
                    rec[DATA.size : DATA.size + copied], size, pos, 0, nr, flags, peer)
    _, role, proto, pid, tid, fd, ts, conn_id = HDR.unpack_from(rec)
    ts += boot_offset
    if typ == REC_OPEN and len(rec) >= OPEN.size:
        (family, l4, lport, rport, laddr, raddr, netns, origin, comm, tcomm, path_len, path, sock_id,
         peer_id) = OPEN.unpack_from(rec)[8:]
        if family == AF_UNIX:  # both ends of the connection are the socket at that path
            la = ra = unix_path(path, path_len)
        else:
            la, ra = _addr(family, laddr), _addr(family, raddr)
        return ConnOpen(conn_id, pid, tid, fd, ts, _role(role), family, la, lport, ra, rport, l4, netns, origin,
                        comm.split(b"\0", 1)[0].decode(errors="replace"),
                        tcomm.split(b"\0", 1)[0].decode(errors="replace"), sock_id, peer_id)
    if typ == REC_CLOSE and len(rec) >= CLOSE.size:
        sent, recv, reason, _ = CLOSE.unpack_from(rec)[8:]
        return ConnClose(conn_id, pid, tid, fd, ts, _role(role), _proto(proto), sent, recv, reason)
    if typ == REC_LIB and len(rec) >= LIB.size:
        addr, ino, dev = LIB.unpack_from(rec)[8:]
        return LibMapped(pid, tid, fd, ts, addr, ino, dev)
    return None


# enum members by value, looked up by index: Enum(v) costs a microsecond a call
_ROLES = {int(r): r for r in Role}
_PROTOS = {int(p): p for p in Protocol}
_DIRS = (Direction.EGRESS, Direction.INGRESS)


def _role(v: int) -> Role:
    return _ROLES.get(v, Role.UNKNOWN)


def _proto(v: int) -> Protocol:
    return _PROTOS.get(v, Protocol.UNKNOWN)


class SockSource:
    """Owns the loaded object, its link and the ring reader; close() releases all."""

    hooks: Mapping[str, tuple[str, ...]] = HOOKS  # what settings.hook "auto" tries, in order

    # records taken off the ring per read_into: the rows they make are handed on before the
    # next read, so a reader that fell behind holds a bounded number of rows, not a whole ring
    BATCH_RECORDS = 8192

    def __init__(self, settings: SockSettings | None = None) -> None:
        self.settings = settings or SockSettings()
        self.boot_offset = boot_offset_ns()
        self.hook = ""
        self._progs: tuple[str, ...] = ()
        self.reader: VarRingReader | None = None
        self._obj: BpfObject | None = None
        self._links: list[Link] = []
        self._ncpu = possible_cpus()
        # conn_id << 3 | direction | (F_ENCRYPTED if TLS plaintext) -> next expected byte position
        self._next: dict[int, int] = {}
        self.tls: TlsAttacher | None = None
        self.tls_error = ""  # why TLS capture is off, when settings.tls asked for it
        self.go_tls_error = ""  # why Go's crypto/tls is not probed while OpenSSL is
        self.undecodable = 0  # records the decoder did not recognise (counted, not raised)
        self.gap_bytes = 0  # bytes lost before delivered chunks, as seen from positions
        self.unread_bytes = 0  # ring bytes still there when the reader stopped (Observer.drain)
        self.libs_mapped = 0  # REC_LIB records read: libssl files mapped by traced processes
        self.exes_new = 0  # REC_LIB records of an exec (addr 0): executables new to the sensor
        self.exes_retried = 0  # executables forgotten in the sensor because their process was gone too soon
        self._exe_retries: dict[int, int] = {}  # sd_exes key -> times forgotten

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PermissionDenied("the socket data sensor needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")
        ring = page_aligned_size(self.settings.ring_bytes)
        wake = wakeup_bytes(ring, self.settings.wakeup_bytes)
        def cfg(tls: bool) -> bytes:  # libssl mappings are watched when there are probes to put on them
            return CONFIG.pack(os.getpid(), self.settings.max_copy, self.settings.infer_tries,
                               int(self.settings.trace_self), int(self.settings.pids is not None),
                               wake.bit_length() - 1 if wake else 0, int(tls and self.settings.tls_watch),
                               int(self.settings.unix))
        try:
            errors: list[str] = []
            hooks = list(self.hooks) if self.settings.hook == "auto" else [self.settings.hook]
            for hook in hooks:
                progs = self.hooks[hook]
                # with the uprobe programs first (OpenSSL's and Go's, then OpenSSL's alone:
                # Go's need attach cookies); a kernel that refuses them still gets plain capture
                levels = ((True, True), (True, False), (False, False)) if self.settings.tls else ((False, False),)
                if not self.settings.tls_go:
                    levels = levels[1:]
                for tls, go in levels:
                    obj = BpfObject(self.settings.bpf_dir / "net/sockdata.bpf.o")
                    try:
                        for p in obj.programs():
                            p.autoload = (p.name in progs or (tls and p.name in TLS_PROGRAMS)
                                          or (go and p.name in GO_TLS_PROGRAMS))
                        obj.set_rodata(cfg(tls))
                        obj.set_max_entries("sd_ring", ring)
                        obj.set_max_entries("sd_scratch", self._ncpu)
                        obj.set_max_entries("sd_tscratch", self._ncpu if tls else 1)
                        obj.load()
                    except (BpfError, NotSupported) as e:
                        obj.close()
                        what = " with Go's and OpenSSL's TLS uprobes" if go else " with TLS uprobes" if tls else ""
                        errors.append(f"{hook}{what}: {e}")
                        log.info("%s%s unavailable (%s)", hook, what, e)
                        continue
                    self._obj, self.hook, self._progs = obj, f"{hook}/sys_exit", progs
                    if self.settings.tls and not tls:
                        self.tls_error = errors[-1]
                    elif self.settings.tls and self.settings.tls_go and not go:
                        self.go_tls_error = errors[-1]
                    break
                if self._obj is not None:
                    break
            if self._obj is None:
                raise NotSupported("socket data capture",
                                   f"no sys_exit hook of {'/'.join(hooks)} loads here: " + "; ".join(errors))
            self.set_protocols(self.settings.protocols, self.settings.trace_roles)
            for pid in self.settings.pids or ():
                self.add_pid(pid)
            for name in self._progs:
                self._links.append(self._obj.program(name).attach())
            fd = self._obj.map("sd_ring").fd
            # with a wake-up step the kernel says when a batch is there; without, the reader lingers
            self.reader = VarRingReader(fd, ring, batch_bytes=wake, linger_s=None) if wake else VarRingReader(fd, ring)
            if self.settings.tls and not self.tls_error:
                self._start_tls()
        except BaseException:
            self.close()
            raise

    def _start_tls(self) -> None:
        assert self._obj is not None
        tls = TlsAttacher(self._obj, self.settings.tls_rescan_s, shared=self.settings.tls_shared,
                          go=self.settings.tls_go and not self.go_tls_error)
        try:
            tls.start()
        except NotSupported as e:
            tls.close()
            self.tls_error = str(e)
            log.warning("TLS capture off: %s", e)
            return
        self.tls = tls

    def _exe_missed(self, rec: LibMapped) -> None:
        """The process of an exec record exited before its executable was looked at (a program
        that runs for a few milliseconds): the sensor, which reports a file's first exec
        only, is told to forget the file, so that its next exec is reported again, up to
        EXE_RETRIES times a file."""
        key = ((rec.dev << 40) ^ rec.ino) & 0xFFFFFFFFFFFFFFFF
        tries = self._exe_retries.get(key, 0)
        if tries >= EXE_RETRIES or self._obj is None:
            return
        if len(self._exe_retries) >= 16384:
            self._exe_retries.clear()
        self._exe_retries[key] = tries + 1
        self._obj.map("sd_exes").delete(key.to_bytes(8, "little"))
        self.exes_retried += 1

    def set_protocols(self, protocols: Iterable[Protocol],
                      trace_roles: Mapping[Protocol, frozenset[Role]] | None = None) -> None:
        """Switch on exactly these protocols' data, each for the connection roles in
        ``trace_roles`` (a protocol not there: both); takes effect at the next syscall."""
        assert self._obj is not None, "start() first"
        on = {int(p) for p in protocols}
        roles = {int(p): r for p, r in (trace_roles or {}).items()}
        m = self._obj.map("sd_protos")
        for p in range(PROTO_MAX):
            mask = role_mask(roles.get(p)) if p in on else 0
            m.update(p.to_bytes(4, "little"), mask.to_bytes(4, "little"))

    def add_pid(self, pid: int) -> None:
        """Trace this process too (only meaningful when settings.pids is not None)."""
        assert self._obj is not None, "start() first"
        self._obj.map("sd_pids").update(pid.to_bytes(4, "little"), b"\x01")

    # -- reading --------------------------------------------------------------------------
    def read(self, timeout: float = 0.1) -> Iterator[Record]:
        """Wait up to ``timeout`` for records, then yield what is there, decoded (taken off
        the ring as one batch: a caller that stops early drops the rest of it)."""
        out: list[Record] = []
        self.read_into(lambda *f: out.append(Data(*f)), out.append, timeout)
        yield from out

    def read_into(self, on_data: Callable[..., object], on_other: Callable[[Record], object],
                  timeout: float = 0.1) -> int:
        """Wait up to ``timeout`` for records, then hand each one over, in ring order: a data
        record as ``on_data(*fields)`` with :class:`Data`'s fields in its order (no object
        made: the hot path), any other as ``on_other(record)``. Returns records read."""
        assert self.reader is not None, "start() first"
        if self.tls is not None:
            self.tls.maybe_rescan()
        if not self.reader.wait(timeout):
            return 0
        reader = self.reader
        offs, lens, ends, scanned = reader.spans(self.BATCH_RECORDS)
        mem = reader.memory
        unpack = _DATA_HEAD.unpack_from
        dsize = DATA.size
        boot = self.boot_offset
        nxt = self._next
        dirs, protos, roles = _DIRS, _PROTOS, _ROLES
        unknown_p, unknown_r = Protocol.UNKNOWN, Role.UNKNOWN
        done = 0
        try:
            for off, length in zip(offs, lens):
                # consumed even if handing it over raises: a bad record is not read again,
                # the records after it stay in the ring for the next call
                done += 1
                if length >= dsize:
                    (typ, role, proto, pid, tid, fd, ts, conn_id, pos, size, copied, nr, direction, flags, rport,
                     rfamily) = unpack(mem, off)
                else:
                    typ = 0
                if typ == REC_DATA:
                    # read in place; only the data bytes are copied out
                    # a TLS connection's plaintext positions are their own stream
                    key = conn_id << 3 | (direction & 1) | (flags & F_ENCRYPTED)
                    expect = nxt.get(key, 0)
                    gap = 0
                    if pos > expect:
                        gap = pos - expect
                        self.gap_bytes += gap
                    nxt[key] = pos + size
                    start = off + dsize
                    on_data(conn_id, pid, tid, fd, ts + boot, dirs[direction & 1], protos.get(proto, unknown_p),
                            roles.get(role, unknown_r), mem[start : start + min(copied, length - dsize)], size,
                            pos, gap, nr, flags,
                            (_addr(rfamily, mem[off + _RADDR : off + _RADDR + 16]), rport) if flags & F_ADDR else None)
                    continue
                rec = decode(mem[off : off + length], boot)
                if rec is None:
                    self.undecodable += 1
                    continue
                if isinstance(rec, LibMapped):
                    if rec.addr:
                        self.libs_mapped += 1
                    else:
                        self.exes_new += 1
                    if self.tls is not None:
                        gone = self.tls.exes_gone
                        self.tls.on_mapped(rec.pid, rec.ts_ns, rec.ino)
                        if not rec.addr and self.tls.exes_gone != gone:
                            self._exe_missed(rec)
                    continue
                if isinstance(rec, ConnClose):
                    for k in (0, 1, F_ENCRYPTED, F_ENCRYPTED | 1):
                        nxt.pop(rec.conn_id << 3 | k, None)
                on_other(rec)
        finally:
            reader.consume_to(scanned if done == len(offs) else ends[done - 1], done)
        return done

    def drain(self, until: float, stop=None) -> list[Record]:
        """Read until ``time.monotonic() >= until`` or ``stop(records)`` is true."""
        out: list[Record] = []
        while time.monotonic() < until:
            out.extend(self.read(0.05))
            if stop is not None and stop(out):
                break
        return out

    def pending_bytes(self) -> int:
        """Bytes committed to the ring and not read yet."""
        return self.reader.pending_bytes() if self.reader is not None else 0

    def stats(self) -> dict[str, int]:
        """Kernel counters summed over CPUs, and the reader's own."""
        out = dict.fromkeys(STAT_NAMES, 0)
        if self._obj is not None:
            m = self._obj.map("sd_stats")
            for idx, name in enumerate(STAT_NAMES):
                raw = m.lookup(idx.to_bytes(4, "little"), 8 * self._ncpu)
                if raw:
                    out[name] = int(np.frombuffer(raw, dtype="<u8").sum())
        out["tls_libs"] = len(self.tls.files) if self.tls is not None else 0
        out["tls_libs_mapped"] = self.libs_mapped
        out["tls_exes_new"] = self.exes_new
        out["tls_exes_retried"] = self.exes_retried
        out["undecodable"] = self.undecodable
        out["gap_bytes"] = self.gap_bytes
        out["unread_bytes"] = self.unread_bytes
        return out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.tls is not None:
            self.tls.close()
            self.tls = None
        for link in reversed(self._links):
            link.destroy()
        self._links.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> SockSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SockSource", "SockSettings", "ConnOpen", "Data", "ConnClose", "LibMapped", "decode", "Record"]


def main(argv: list[str] | None = None) -> int:
    """``python -m andon.events.sockdata``: print what the sensor captures for a while."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m andon.events.sockdata", description=main.__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--protocol", action="append", default=[], help="http, http2, pgsql, mysql, redis, dns (default: all)")
    ap.add_argument("--pid", type=int, action="append", default=[], help="trace only these processes")
    ap.add_argument("--comm", default="", help="print only records of processes whose name starts with this")
    ap.add_argument("--max-copy", type=int, default=4096)
    args = ap.parse_args(argv)
    protos = frozenset(Protocol[p.upper()] for p in args.protocol) or INFERRED
    settings = SockSettings(protocols=protos, max_copy=args.max_copy, pids=frozenset(args.pid) if args.pid else None)
    comms: dict[int, str] = {}
    with SockSource(settings) as src:
        tls = f", tls on {src.stats()['tls_libs']} libssl file(s)" if src.tls else f", tls off ({src.tls_error})"
        print(f"# {src.hook}{tls}, protocols {', '.join(sorted(p.name.lower() for p in protos))}", flush=True)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for r in src.read(0.1):
                if isinstance(r, ConnOpen):
                    comms[r.conn_id] = r.comm
                comm = comms.get(r.conn_id, "?")
                if args.comm and not comm.startswith(args.comm):
                    continue
                if isinstance(r, ConnOpen):
                    print(f"open  conn={r.conn_id} {r.comm}[{r.pid}] fd={r.fd} {r.role.name.lower()} "
                          + (f"unix {r.raddr or '(unnamed)'}" if r.family == AF_UNIX else
                             f"{'tcp' if r.l4 == 6 else 'udp'} {r.laddr}:{r.lport} -> {r.raddr}:{r.rport}")
                          + f" netns={r.netns}")
                elif isinstance(r, Data):
                    arrow = ">" if r.direction == Direction.EGRESS else "<"
                    if r.encrypted:
                        arrow += f" tls({TLS_CALLS.get(r.nr, r.nr)})"
                    if r.nocopy:
                        arrow += f" {'splice' if r.nr == NR_SPLICE else 'sendfile'}"
                    cut = f" (+{r.size - len(r.data)} not copied)" if r.truncated else ""
                    gap = f" gap={r.gap}" if r.gap else ""
                    print(f"data  conn={r.conn_id} {comm}[{r.pid}] {arrow} {r.protocol.name.lower()} "
                          f"{r.role.name.lower()} pos={r.pos} {r.size}B{cut}{gap} {r.data[:60]!r}")
                else:
                    print(f"close conn={r.conn_id} {comm}[{r.pid}] sent={r.bytes_sent} recv={r.bytes_recv}")
                    comms.pop(r.conn_id, None)
        st = src.stats()
    print("# stats " + " ".join(f"{k}={v}" for k, v in st.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
