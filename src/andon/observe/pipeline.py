"""Socket records -> connections -> protocol parsers -> rows of Pixie's tables.

    SockSource records (events/sockdata.py: ConnOpen, Data, ConnClose)
      -> Pipeline.handle()        one Conn per conn_id; its parser made on the first data
         / Pipeline.data()        whose protocol the kernel recognised (data(): a data
                                  record's fields, the source's hot path, no object made)
      -> parser.feed_parts()      protocols/: pure bytes -> records
      -> + connection columns     upid, remote/local address and port, trace_role, encrypted,
                                  pid, comm, container_id, container_name
      -> sink(table, rows)        the Store (store/store.py), or a list in tests
      Pipeline.tick(now)          conn_stats rows (Pixie's cumulative counters per upid,
                                  remote endpoint, role and protocol), idle connections closed

Nothing here touches the kernel: tests drive it with hand-made records. Who a pid is
(upid start time, comm, container) comes from a :class:`ProcessInfo` lookup that the
agent backs with /proc and its container registry.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..events.sockdata import AF_UNIX, F_ENCRYPTED, ConnClose, ConnOpen, Data
from ..protocols import PARSERS
from ..protocols.base import ConnParser, DataChunk, Direction, ParseStats, Protocol, Role
from ..state.container import match_proc_cgroup
from ..store.schema import upid as make_upid

log = logging.getLogger("andon.observe")

Sink = Callable[[str, list[dict]], None]


@dataclass(slots=True)
class Who:
    """What the tables say about a process."""

    upid: str
    comm: str
    container_id: str = ""
    container_name: str = ""


class ProcessInfo:
    """pid -> :class:`Who`, read once per process from /proc and cached.

    A pid seen again with a different start time is a new process (pid reuse); a process
    already gone when first asked about keeps what the socket record said (its comm) and a
    upid with start time 0. ``names`` maps a container id to its name (the agent passes its
    container registry's lookup; None when it has not answered yet).
    """

    def __init__(self, proc: str = "/proc", names: Callable[[str], str | None] | None = None,
                 max_entries: int = 65536) -> None:
        self.proc = proc
        self.names = names
        self.max_entries = max_entries
        self._cache: dict[int, Who] = {}

    def _stat(self, pid: int) -> tuple[int, str]:
        """The process's start time (clock ticks since boot) and its name, from /proc/PID/stat.

        The name is the process's (its main thread's), as Falco's ``proc.name``; the socket
        records carry the name of the thread that made the syscall (``isc-net-0000`` for dig).
        """
        try:
            with open(f"{self.proc}/{pid}/stat") as f:
                text = f.read()
        except OSError:
            return 0, ""
        end = text.rfind(")")
        rest = text[end + 1 :].split()
        try:
            return int(rest[19]), text[text.find("(") + 1 : end]
        except (IndexError, ValueError):
            return 0, ""

    def _container(self, pid: int) -> str:
        try:
            with open(f"{self.proc}/{pid}/cgroup") as f:
                m = match_proc_cgroup(f.read())
        except OSError:
            return ""
        return m.id if m else ""

    def get(self, pid: int, comm: str = "") -> Who:
        """Who ``pid`` is now; called when a connection opens, so a reused pid is noticed."""
        start, name = self._stat(pid)
        who = self._cache.get(pid)
        if who is None or (start and who.upid != make_upid(pid, start)):
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            who = Who(make_upid(pid, start), name or comm, self._container(pid))
            self._cache[pid] = who
        elif name and who.comm != name:
            # the same process (pid and start time) under another name: an exec (a container's
            # runc init that becomes its entrypoint), or a rename. The tables say what it is now.
            who.comm = name
        if not who.comm and comm:
            who.comm = comm
        if who.container_id and not who.container_name and self.names is not None:
            who.container_name = self.names(who.container_id) or ""
        return who

    def forget(self, pid: int) -> None:
        self._cache.pop(pid, None)


@dataclass(slots=True)
class Conn:
    conn_id: int
    pid: int
    role: Role
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    l4: int
    who: Who
    opened_ns: int
    protocol: Protocol = Protocol.UNKNOWN
    parser: ConnParser | None = None
    encrypted: bool = False
    bytes_sent: int = 0
    bytes_recv: int = 0
    last_ns: int = 0
    peer: tuple[str, int] | None = None  # the last UDP datagram's remote end
    counted_open: bool = False
    common: dict | None = None  # the connection's columns of its rows, built on the first row
    end_key: tuple | None = None  # this end, as the other end's peer_key names it
    peer_key: tuple | None = None  # the other end's end_key
    other: Conn | None = None  # the other end, linked when the second of the two opens


@dataclass
class PipelineStats:
    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    server_rows: dict[str, int] = field(default_factory=dict)  # of rows, those traced on the server side
    conns_opened: int = 0
    conns_closed: int = 0
    conns_idle_closed: int = 0
    connstat_groups: int = 0  # conn_stats groups held after the last tick
    data_without_conn: int = 0  # data of a connection whose open we never saw: opened on the fly
    data_unknown_protocol: int = 0
    parse: ParseStats = field(default_factory=ParseStats)


@dataclass(slots=True)
class _ConnStat:
    """Pixie's conn_stats counters for one (upid, remote endpoint, role, protocol)."""

    family: int
    ssl: bool = False
    conn_open: int = 0
    conn_close: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    pid: int = 0
    who: Who | None = None
    reported: tuple | None = None  # (open, close, sent, recv) in the last row written


_FAMILY = {int(socket.AF_INET): 2, int(socket.AF_INET6): 10}


def _group_key(conn: Conn) -> tuple:
    """A connection's conn_stats group: process, remote end, role and protocol, as Pixie keys it.

    A socket with no address of its own (unconnected UDP before any datagram) is grouped by
    the last datagram's peer.
    """
    raddr, rport = conn.raddr, conn.rport
    if not raddr and conn.peer is not None:
        raddr, rport = conn.peer
    return (conn.who.upid, raddr, rport, int(conn.role), int(conn.protocol))


def _ends(rec: ConnOpen) -> tuple[tuple | None, tuple | None]:
    """A connection's own end and its other end, as keys that pair the two ends of one
    connection when both are on this host: an inet connection by its addresses and ports
    (the other end sees them swapped), a unix one by its kernel sockets."""
    if rec.family == AF_UNIX:
        return (("u", rec.sock_id) if rec.sock_id else None), (("u", rec.peer_id) if rec.peer_id else None)
    if not (rec.lport and rec.rport and rec.laddr and rec.raddr):  # unconnected UDP, or not known
        return None, None
    return (rec.l4, rec.laddr, rec.lport, rec.raddr, rec.rport), (rec.l4, rec.raddr, rec.rport, rec.laddr, rec.lport)


class Pipeline:
    """Turns socket records into table rows; ``sink(table, rows)`` receives them in batches."""

    def __init__(self, sink: Sink, procs: ProcessInfo | None = None,
                 protocols: Iterable[Protocol] | None = None, idle_ns: int = 300 * 10**9,
                 max_conns: int = 65536) -> None:
        self.sink = sink
        self.procs = procs or ProcessInfo()
        self.protocols = frozenset(protocols) if protocols is not None else frozenset(PARSERS)
        self.idle_ns = idle_ns
        self.max_conns = max_conns
        self.conns: dict[int, Conn] = {}
        self.stats = PipelineStats()
        self._pending: dict[str, list[dict]] = {}
        self._connstats: dict[tuple, _ConnStat] = {}
        self._ends: dict[tuple, Conn] = {}  # end_key -> the open connection with that end

    # -- records ---------------------------------------------------------------------------
    def handle_all(self, records: Iterable[ConnOpen | Data | ConnClose]) -> None:
        for rec in records:
            self.handle(rec)
        self.flush()

    def handle(self, rec: ConnOpen | Data | ConnClose) -> None:
        if isinstance(rec, Data):
            self.data(rec.conn_id, rec.pid, rec.tid, rec.fd, rec.ts_ns, rec.direction, rec.protocol, rec.role,
                      rec.data, rec.size, rec.pos, rec.gap, rec.nr, rec.flags, rec.peer)
            return
        self.stats.records += 1
        if isinstance(rec, ConnOpen):
            self._open(rec)
        elif isinstance(rec, ConnClose):
            self._close(rec)

    def _open(self, rec: ConnOpen) -> Conn:
        old = self.conns.pop(rec.conn_id, None)
        if old is not None:
            self._finish(old, rec.ts_ns)
        if len(self.conns) >= self.max_conns:
            self._evict_oldest(rec.ts_ns)
        who = self.procs.get(rec.pid, rec.comm)
        conn = Conn(rec.conn_id, rec.pid, rec.role, rec.family, rec.laddr, rec.lport, rec.raddr, rec.rport,
                    rec.l4, who, rec.ts_ns, last_ns=rec.ts_ns)
        conn.end_key, conn.peer_key = _ends(rec)
        if conn.end_key is not None:
            self._ends[conn.end_key] = conn
            # whichever end opens second links the two: rows look nothing up
            other = self._ends.get(conn.peer_key) if conn.peer_key is not None else None
            if other is not None and other is not conn and other.peer_key == conn.end_key:
                conn.other, other.other, other.common = other, conn, None
        self.conns[rec.conn_id] = conn
        self.stats.conns_opened += 1
        return conn

    def _drop_end(self, conn: Conn) -> None:
        if conn.end_key is not None and self._ends.get(conn.end_key) is conn:
            del self._ends[conn.end_key]

    def data(self, conn_id: int, pid: int, tid: int, fd: int, ts_ns: int, direction: Direction,
             protocol: Protocol, role: Role, data: bytes, size: int, pos: int, gap: int = 0, nr: int = 0,
             flags: int = 0, peer: tuple[str, int] | None = None) -> None:
        """One data record, as :class:`Data`'s fields in their order (the source's hot path
        calls this without making the object)."""
        self.stats.records += 1
        conn = self.conns.get(conn_id)
        if conn is None:
            # the open record was lost (ring full) or came before we started: carry on with
            # what the data record says
            self.stats.data_without_conn += 1
            conn = self._open(ConnOpen(conn_id, pid, tid, fd, ts_ns, role, 0, "", 0, "", 0, 0, 0, 0, ""))
        conn.last_ns = ts_ns
        if direction == 0:
            conn.bytes_sent += size
        else:
            conn.bytes_recv += size
        if peer is not None and peer != conn.peer:
            conn.peer = peer
            conn.common = None
        if flags & F_ENCRYPTED and not conn.encrypted:
            # plaintext from the TLS library's uprobes: the connection's rows say encrypted
            conn.encrypted = True
            conn.common = None
        if not conn.role and role:  # Role.UNKNOWN is 0: the first record that knows the role says it
            conn.role = role
            conn.common = None
        parser = conn.parser
        if parser is None:
            if protocol == Protocol.UNKNOWN or protocol not in self.protocols or protocol not in PARSERS:
                self.stats.data_unknown_protocol += 1
                return
            conn.protocol = protocol
            parser = conn.parser = PARSERS[protocol](conn.role)
        feed_parts = getattr(parser, "feed_parts", None)  # StreamParser's: no DataChunk made
        if feed_parts is not None:
            rows = feed_parts(ts_ns, direction, data, size, gap)
        else:
            rows = parser.feed(DataChunk(ts_ns, direction, data, size, gap))
        if rows:
            self._emit(conn, rows)

    def _close(self, rec: ConnClose) -> None:
        conn = self.conns.pop(rec.conn_id, None)
        if conn is None:
            return
        # the kernel's totals cover bytes of protocols whose data never crossed
        conn.bytes_sent = max(conn.bytes_sent, rec.bytes_sent)
        conn.bytes_recv = max(conn.bytes_recv, rec.bytes_recv)
        if conn.protocol == Protocol.UNKNOWN and rec.protocol != Protocol.UNKNOWN:
            conn.protocol = rec.protocol
        self._finish(conn, rec.ts_ns)

    def _finish(self, conn: Conn, now_ns: int) -> None:
        self._drop_end(conn)
        if conn.parser is not None:
            rows = conn.parser.close(now_ns)
            if rows:
                self._emit(conn, rows)
            self.stats.parse.add(conn.parser.stats)
        self._count(conn, closed=True)
        self.stats.conns_closed += 1

    def _evict_oldest(self, now_ns: int) -> None:
        oldest = min(self.conns.values(), key=lambda c: c.last_ns)
        del self.conns[oldest.conn_id]
        self._finish(oldest, now_ns)
        self.stats.conns_idle_closed += 1

    # -- rows ------------------------------------------------------------------------------
    def _emit(self, conn: Conn, rows: list[dict]) -> None:
        who = conn.who
        common = conn.common
        # the Who is shared by a process's connections and may learn its comm/container name later
        if common is None or common["comm"] is not who.comm or common["container_name"] is not who.container_name:
            raddr, rport = conn.raddr, conn.rport
            if not rport and conn.peer is not None:  # unconnected UDP: 0.0.0.0:0, the datagram says who
                raddr, rport = conn.peer
            common = conn.common = {
                "upid": who.upid, "remote_addr": raddr, "remote_port": rport, "local_addr": conn.laddr,
                "local_port": conn.lport, "trace_role": int(conn.role), "encrypted": conn.encrypted,
                "pid": conn.pid, "comm": who.comm, "container_id": who.container_id,
                "container_name": who.container_name,
                "remote_pid": conn.other.pid if conn.other is not None else 0,
                "remote_comm": conn.other.who.comm if conn.other is not None else "",
            }
        table = conn.parser.table if conn.parser is not None else ""
        out = self._pending.setdefault(table, [])
        for row in rows:
            row.update(common)
            out.append(row)
        self.stats.rows[table] = self.stats.rows.get(table, 0) + len(rows)
        if conn.role == Role.SERVER:
            self.stats.server_rows[table] = self.stats.server_rows.get(table, 0) + len(rows)

    def flush(self) -> None:
        """Hand the rows made so far to the sink, one batch per table."""
        pending, self._pending = self._pending, {}
        for table, rows in pending.items():
            if rows:
                self.sink(table, rows)

    # -- periodic --------------------------------------------------------------------------
    def _count(self, conn: Conn, closed: bool = False) -> None:
        """Fold a connection's bytes into its conn_stats group (called on close and at ticks)."""
        key = _group_key(conn)
        st = self._connstats.get(key)
        if st is None:
            st = self._connstats[key] = _ConnStat(_FAMILY.get(int(conn.family), int(conn.family)), pid=conn.pid, who=conn.who)
        if not conn.counted_open:
            st.conn_open += 1
            conn.counted_open = True
        if closed:
            st.conn_close += 1
            st.bytes_sent += conn.bytes_sent
            st.bytes_recv += conn.bytes_recv
        st.ssl = st.ssl or conn.encrypted

    def tick(self, now_ns: int) -> None:
        """Close idle connections, write one conn_stats row per group, flush everything."""
        idle = [c for c in self.conns.values() if now_ns - c.last_ns > self.idle_ns]
        for conn in idle:
            del self.conns[conn.conn_id]
            self._finish(conn, now_ns)
            self.stats.conns_idle_closed += 1
        live: dict[tuple, tuple[int, int, int]] = {}
        for conn in self.conns.values():
            self._count(conn)
            key = _group_key(conn)
            n, s, r = live.get(key, (0, 0, 0))
            live[key] = (n + 1, s + conn.bytes_sent, r + conn.bytes_recv)
        rows = []
        gone = []
        for key, st in self._connstats.items():
            upid, raddr, rport, role, proto = key
            n, s, r = live.get(key, (0, 0, 0))
            now = (st.conn_open, st.conn_close, st.bytes_sent + s, st.bytes_recv + r)
            if now == st.reported:
                # no activity since its last row (Pixie writes a group only when it changed);
                # with no connection left open its last row was final: forget it, so a server
                # with many clients' ephemeral ports keeps only its live groups
                if key not in live:
                    gone.append(key)
                continue
            st.reported = now
            who = st.who
            rows.append({
                "time_": now_ns, "upid": upid, "remote_addr": raddr, "remote_port": rport, "trace_role": role,
                "addr_family": st.family, "protocol": proto, "ssl": st.ssl, "conn_open": st.conn_open,
                "conn_close": st.conn_close, "conn_active": st.conn_open - st.conn_close,
                "bytes_sent": st.bytes_sent + s, "bytes_recv": st.bytes_recv + r, "pid": st.pid,
                "comm": who.comm if who else "", "container_id": who.container_id if who else "",
                "container_name": who.container_name if who else "",
            })
        for key in gone:
            del self._connstats[key]
        self.stats.connstat_groups = len(self._connstats)
        if rows:
            self._pending.setdefault("conn_stats", []).extend(rows)
            self.stats.rows["conn_stats"] = self.stats.rows.get("conn_stats", 0) + len(rows)
        self.flush()

    def close(self, now_ns: int) -> None:
        """Finish every connection (their parsers count what is left) and flush."""
        for conn in list(self.conns.values()):
            self._finish(conn, now_ns)
        self.conns.clear()
        self.tick(now_ns)


def pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
