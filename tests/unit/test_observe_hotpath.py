"""The hot path's fast ways (one whole message in one chunk, heads parsed once, rows built
from a prefix) must make exactly the rows the general buffered path makes.

Every recorded stream (tests/data/streams) is fed to its parser as recorded, cut into 7-byte
pieces (no chunk holds a whole message: the general path), byte by byte, and with the
consecutive chunks of one direction joined (several messages in one chunk). The rows and
parse counters are compared between the ways, and against digests taken from the parsers
before the hot-path work (commit e2bfc90), so a changed value in any column fails here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from andon.protocols import PARSERS, Protocol, Role
from andon.protocols.base import DataChunk
from relay import load

STREAMS = Path(__file__).resolve().parents[1] / "data" / "streams"
PROTOS = {"http": Protocol.HTTP, "pgsql": Protocol.PGSQL, "mysql": Protocol.MYSQL, "redis": Protocol.REDIS,
          "dns": Protocol.DNS}
ROLES = {"client": Role.CLIENT, "server": Role.SERVER, "unknown": Role.UNKNOWN}
WAYS = ("whole", "split7", "bytes", "joined")


def _split(chunks: list[DataChunk], n: int) -> list[DataChunk]:
    out = []
    for c in chunks:
        for i in range(0, len(c.data), n):
            out.append(DataChunk(c.ts_ns, c.direction, c.data[i : i + n]))
    return out


def _joined(chunks: list[DataChunk]) -> list[DataChunk]:
    out: list[DataChunk] = []
    for c in chunks:
        if out and out[-1].direction == c.direction:
            out[-1] = DataChunk(c.ts_ns, c.direction, out[-1].data + c.data)
        else:
            out.append(DataChunk(c.ts_ns, c.direction, c.data))
    return out


def rows(stream: str, role: str, way: str) -> tuple[list[dict], dict]:
    chunks = load(STREAMS / f"{stream}.jsonl", as_server=role == "server")
    if way == "split7":
        chunks = _split(chunks, 7)
    elif way == "bytes":
        chunks = _split(chunks, 1)
    elif way == "joined":
        chunks = _joined(chunks)
    elif way == "bytearray":  # other buffer types than bytes go the general way
        chunks = [DataChunk(c.ts_ns, c.direction, bytearray(c.data)) for c in chunks]
    parser = PARSERS[PROTOS[stream.split("_")[0]]](ROLES[role])
    out: list[dict] = []
    for c in chunks:
        out += parser.feed(c)
    out += parser.close(chunks[-1].ts_ns + 1)
    st = parser.stats
    return out, {k: getattr(st, k) for k in st.__slots__}


STATS_SINCE = {"unknown_headers"}  # counters added after the golden digests (HTTP/2's: 0 here)


def digest(stream: str, role: str, way: str) -> str:
    out, stats = rows(stream, role, way)
    assert all(stats.pop(k) == 0 for k in STATS_SINCE)
    text = json.dumps([out, stats], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# sha256 of the rows and counters made by the parsers at e2bfc90 (before the hot-path work)
GOLDEN = {
    "dns_tcp:client:whole": "cbf8b2f16644b53d",
    "dns_tcp:client:split7": "cbf8b2f16644b53d",
    "dns_tcp:client:bytes": "cbf8b2f16644b53d",
    "dns_tcp:client:joined": "cbf8b2f16644b53d",
    "dns_tcp:server:whole": "cbf8b2f16644b53d",
    "dns_tcp:server:split7": "cbf8b2f16644b53d",
    "dns_tcp:server:bytes": "cbf8b2f16644b53d",
    "dns_tcp:server:joined": "cbf8b2f16644b53d",
    "dns_tcp:unknown:whole": "cbf8b2f16644b53d",
    "dns_tcp:unknown:split7": "cbf8b2f16644b53d",
    "dns_tcp:unknown:bytes": "cbf8b2f16644b53d",
    "dns_tcp:unknown:joined": "cbf8b2f16644b53d",
    "dns_udp:client:whole": "f6f723d60ccd54f6",
    "dns_udp:client:split7": "271469d43e937644",
    "dns_udp:client:bytes": "271469d43e937644",
    "dns_udp:client:joined": "f6f723d60ccd54f6",
    "dns_udp:server:whole": "f6f723d60ccd54f6",
    "dns_udp:server:split7": "271469d43e937644",
    "dns_udp:server:bytes": "271469d43e937644",
    "dns_udp:server:joined": "f6f723d60ccd54f6",
    "dns_udp:unknown:whole": "f6f723d60ccd54f6",
    "dns_udp:unknown:split7": "271469d43e937644",
    "dns_udp:unknown:bytes": "271469d43e937644",
    "dns_udp:unknown:joined": "f6f723d60ccd54f6",
    "http_nginx_keepalive:client:whole": "61784bde388f93a5",
    "http_nginx_keepalive:client:split7": "61784bde388f93a5",
    "http_nginx_keepalive:client:bytes": "61784bde388f93a5",
    "http_nginx_keepalive:client:joined": "61784bde388f93a5",
    "http_nginx_keepalive:server:whole": "61784bde388f93a5",
    "http_nginx_keepalive:server:split7": "61784bde388f93a5",
    "http_nginx_keepalive:server:bytes": "61784bde388f93a5",
    "http_nginx_keepalive:server:joined": "61784bde388f93a5",
    "http_nginx_keepalive:unknown:whole": "61784bde388f93a5",
    "http_nginx_keepalive:unknown:split7": "61784bde388f93a5",
    "http_nginx_keepalive:unknown:bytes": "2f76619824451064",
    "http_nginx_keepalive:unknown:joined": "61784bde388f93a5",
    "http_python_keepalive:client:whole": "c92e96a8890c7003",
    "http_python_keepalive:client:split7": "c92e96a8890c7003",
    "http_python_keepalive:client:bytes": "c92e96a8890c7003",
    "http_python_keepalive:client:joined": "c92e96a8890c7003",
    "http_python_keepalive:server:whole": "c92e96a8890c7003",
    "http_python_keepalive:server:split7": "c92e96a8890c7003",
    "http_python_keepalive:server:bytes": "c92e96a8890c7003",
    "http_python_keepalive:server:joined": "c92e96a8890c7003",
    "http_python_keepalive:unknown:whole": "c92e96a8890c7003",
    "http_python_keepalive:unknown:split7": "c92e96a8890c7003",
    "http_python_keepalive:unknown:bytes": "2aaf2ffe442deb85",
    "http_python_keepalive:unknown:joined": "c92e96a8890c7003",
    "mysql_prepared:client:whole": "3aa754426d6bf09a",
    "mysql_prepared:client:split7": "3aa754426d6bf09a",
    "mysql_prepared:client:bytes": "3aa754426d6bf09a",
    "mysql_prepared:client:joined": "c738878e748858ba",
    "mysql_prepared:server:whole": "3aa754426d6bf09a",
    "mysql_prepared:server:split7": "3aa754426d6bf09a",
    "mysql_prepared:server:bytes": "3aa754426d6bf09a",
    "mysql_prepared:server:joined": "c738878e748858ba",
    "mysql_prepared:unknown:whole": "3aa754426d6bf09a",
    "mysql_prepared:unknown:split7": "3aa754426d6bf09a",
    "mysql_prepared:unknown:bytes": "7abfb33d1ce2da12",
    "mysql_prepared:unknown:joined": "c738878e748858ba",
    "mysql_query:client:whole": "1349386eb65d8887",
    "mysql_query:client:split7": "1349386eb65d8887",
    "mysql_query:client:bytes": "1349386eb65d8887",
    "mysql_query:client:joined": "1349386eb65d8887",
    "mysql_query:server:whole": "1349386eb65d8887",
    "mysql_query:server:split7": "1349386eb65d8887",
    "mysql_query:server:bytes": "1349386eb65d8887",
    "mysql_query:server:joined": "1349386eb65d8887",
    "mysql_query:unknown:whole": "1349386eb65d8887",
    "mysql_query:unknown:split7": "1349386eb65d8887",
    "mysql_query:unknown:bytes": "273f0ed4804dd835",
    "mysql_query:unknown:joined": "1349386eb65d8887",
    "pgsql_extended:client:whole": "fb48df5d69b1d335",
    "pgsql_extended:client:split7": "fb48df5d69b1d335",
    "pgsql_extended:client:bytes": "fb48df5d69b1d335",
    "pgsql_extended:client:joined": "fb48df5d69b1d335",
    "pgsql_extended:server:whole": "fb48df5d69b1d335",
    "pgsql_extended:server:split7": "fb48df5d69b1d335",
    "pgsql_extended:server:bytes": "fb48df5d69b1d335",
    "pgsql_extended:server:joined": "fb48df5d69b1d335",
    "pgsql_extended:unknown:whole": "fb48df5d69b1d335",
    "pgsql_extended:unknown:split7": "fb48df5d69b1d335",
    "pgsql_extended:unknown:bytes": "45ed6a9a10d694e1",
    "pgsql_extended:unknown:joined": "fb48df5d69b1d335",
    "pgsql_simple:client:whole": "a8e835f284779963",
    "pgsql_simple:client:split7": "a8e835f284779963",
    "pgsql_simple:client:bytes": "a8e835f284779963",
    "pgsql_simple:client:joined": "1aa0cca3fadeaf3e",
    "pgsql_simple:server:whole": "a8e835f284779963",
    "pgsql_simple:server:split7": "a8e835f284779963",
    "pgsql_simple:server:bytes": "a8e835f284779963",
    "pgsql_simple:server:joined": "1aa0cca3fadeaf3e",
    "pgsql_simple:unknown:whole": "a8e835f284779963",
    "pgsql_simple:unknown:split7": "a8e835f284779963",
    "pgsql_simple:unknown:bytes": "62b02db31b0cad38",
    "pgsql_simple:unknown:joined": "1aa0cca3fadeaf3e",
    "redis_pipeline:client:whole": "03ddad569c90fa01",
    "redis_pipeline:client:split7": "03ddad569c90fa01",
    "redis_pipeline:client:bytes": "03ddad569c90fa01",
    "redis_pipeline:client:joined": "03ddad569c90fa01",
    "redis_pipeline:server:whole": "03ddad569c90fa01",
    "redis_pipeline:server:split7": "03ddad569c90fa01",
    "redis_pipeline:server:bytes": "03ddad569c90fa01",
    "redis_pipeline:server:joined": "03ddad569c90fa01",
    "redis_pipeline:unknown:whole": "03ddad569c90fa01",
    "redis_pipeline:unknown:split7": "03ddad569c90fa01",
    "redis_pipeline:unknown:bytes": "204eaa3ae9d904c6",
    "redis_pipeline:unknown:joined": "03ddad569c90fa01",
}
CASES = [f"{s.stem}:{r}:{w}" for s in sorted(STREAMS.glob("*.jsonl")) for r in ROLES for w in WAYS]


@pytest.mark.parametrize("case", CASES)
def test_rows_match_before_the_work(case):
    assert digest(*case.split(":")) == GOLDEN[case]


# a DNS datagram is a message: cut into pieces it is not DNS any more
@pytest.mark.parametrize("stream", sorted(s.stem for s in STREAMS.glob("*.jsonl") if s.stem != "dns_udp"))
@pytest.mark.parametrize("role", ROLES)
def test_whole_chunks_and_pieces_agree(stream, role):
    whole, st_whole = rows(stream, role, "whole")
    pieces, st_pieces = rows(stream, role, "split7")
    assert whole and whole == pieces
    assert st_whole["records"] == st_pieces["records"] == len(whole)
    assert rows(stream, role, "bytearray") == (whole, st_whole)


# -- the ring and the decoder: ring bytes as the kernel writes them -> records -------------

import ctypes  # noqa: E402
import mmap  # noqa: E402
import struct  # noqa: E402

from andon.bpf.varring import DISCARD, PAGE, VarRingReader  # noqa: E402
from andon.events import sockdata as sd  # noqa: E402
from andon.observe.pipeline import Pipeline, ProcessInfo, Who  # noqa: E402

RING = 1 << 16


class Ring:
    """The producer side of a ring laid out as the kernel maps one."""

    def __init__(self) -> None:
        self.mem = mmap.mmap(-1, PAGE + 2 * RING)
        self.cons = ctypes.c_uint64(0)
        self.prod = 0

    def put(self, rec: bytes, flags: int = 0) -> None:
        total = (len(rec) + 15) & ~7
        assert self.prod + total - self.cons.value <= RING
        off = self.prod & (RING - 1)
        item = struct.pack("<II", len(rec) | flags, 0) + rec
        for base in (off, off + RING):
            end = min(base + len(item), 2 * RING)
            self.mem[PAGE + base : PAGE + end] = item[: end - base]
        if off + len(item) > RING:
            self.mem[PAGE : PAGE + off + len(item) - RING] = item[RING - off :]
        self.prod += total
        struct.pack_into("<Q", self.mem, 0, self.prod)

    def source(self) -> sd.SockSource:
        src = sd.SockSource(sd.SockSettings(tls=False))
        src.boot_offset = 1000
        src.reader = VarRingReader.on_memory(self.mem, self.cons, RING)
        return src


def data_rec(conn: int, ts: int, d: int, payload: bytes, pos: int, size: int | None = None, flags: int = 0,
             proto: int = 1, role: int = 2) -> bytes:
    size = len(payload) if size is None else size
    return sd.DATA.pack(sd.REC_DATA, role, proto, 77, 78, 5, ts, conn, pos, size, len(payload), 45, d, flags, 53,
                        2, bytes([10, 0, 0, 9]) + bytes(12)) + payload


def open_rec(conn: int) -> bytes:
    a = bytes([127, 0, 0, 1]) + bytes(12)
    return sd.OPEN.pack(sd.REC_OPEN, 2, 1, 77, 78, 5, 10, conn, 2, 6, 8080, 40000, a, a, 99, 2, b"srv", b"w1", 0, b"", 0, 0)


def close_rec(conn: int) -> bytes:
    return sd.CLOSE.pack(sd.REC_CLOSE, 2, 1, 77, 78, 5, 900, conn, 11, 22, sd.CLOSE_SYSCALL, 0)


def test_ring_records_decode_with_gaps_and_wrap():
    ring = Ring()
    src = ring.source()
    got = []
    # enough rounds that records wrap round the end of the data area
    for rnd in range(40):
        ring.put(open_rec(1))
        ring.put(data_rec(1, 100, 1, b"GET / HTTP/1.1\r\n\r\n" + bytes(rnd * 37), 0))
        ring.put(b"\0" * 40, DISCARD)  # discarded: never handed out
        ring.put(data_rec(1, 200, 0, b"abc", 0, size=10, flags=sd.F_ADDR | sd.F_ENCRYPTED))
        ring.put(data_rec(1, 300, 1, b"x", 50 + rnd * 37))  # 32 bytes of ingress lost before it
        ring.put(b"\7\0junk")  # unknown type: counted
        ring.put(close_rec(1))
        got = list(src.read(0))
        assert [type(r).__name__ for r in got] == ["ConnOpen", "Data", "Data", "Data", "ConnClose"]
    op, d1, d2, d3, cl = got
    assert (op.conn_id, op.role, op.laddr, op.lport, op.raddr, op.rport, op.comm, op.thread, op.ts_ns) == (
        1, Role.SERVER, "127.0.0.1", 8080, "127.0.0.1", 40000, "srv", "w1", 1010)
    assert d1.data == b"GET / HTTP/1.1\r\n\r\n" + bytes(39 * 37) and d1.gap == 0 and d1.ts_ns == 1100
    assert (d1.direction, d1.protocol, d1.role, d1.pid, d1.tid, d1.nr) == (1, Protocol.HTTP, Role.SERVER, 77, 78, 45)
    assert type(d1.direction).__name__ == "Direction" and type(d1.protocol).__name__ == "Protocol"
    assert (d2.data, d2.size, d2.truncated, d2.encrypted, d2.peer, d2.gap) == (b"abc", 10, True, True,
                                                                               ("10.0.0.9", 53), 0)
    assert d3.gap == 50 + 39 * 37 - (18 + 39 * 37) and d3.pos == 50 + 39 * 37
    assert (cl.bytes_sent, cl.bytes_recv, cl.reason) == (11, 22, sd.CLOSE_SYSCALL)
    assert src.undecodable == 40 and src.reader.pending_bytes() == 0
    assert src.gap_bytes == 40 * 32


class _Procs(ProcessInfo):
    def get(self, pid, comm=""):
        return Who(f"0:{pid}:1", comm)


def test_read_into_pipeline_makes_the_rows_of_records():
    """The hot path (read_into -> Pipeline.data) and the object path (read -> handle) agree."""
    req = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nhi"
    outs = []
    for fast in (True, False):
        ring = Ring()
        src = ring.source()
        rows: list[dict] = []
        p = Pipeline(lambda t, r: rows.extend(r), _Procs())
        ring.put(open_rec(3))
        for i in range(20):
            ring.put(data_rec(3, 100 + i * 10, 1, req, i * len(req)))
            # every third response in two pieces: the buffered way
            if i % 3:
                ring.put(data_rec(3, 105 + i * 10, 0, resp, i * len(resp)))
            else:
                ring.put(data_rec(3, 104 + i * 10, 0, resp[:30], i * len(resp)))
                ring.put(data_rec(3, 105 + i * 10, 0, resp[30:], i * len(resp) + 30))
        ring.put(close_rec(3))
        if fast:
            src.read_into(p.data, p.handle, 0)
        else:
            for rec in src.read(0):
                p.handle(rec)
        p.flush()
        outs.append((rows, p.stats.records))
    (fast_rows, n_fast), (slow_rows, n_slow) = outs
    assert fast_rows == slow_rows and n_fast == n_slow == 1 + 20 + 20 + 7 + 1
    assert [r["latency"] for r in fast_rows] == [5] * 20
    assert [r["time_"] for r in fast_rows] == [1105 + i * 10 for i in range(20)]
    assert {(r["req_path"], r["resp_status"], r["resp_body"], r["local_port"], r["trace_role"]) for r in fast_rows} == {
        ("/a", 200, "hi", 8080, 2)}


# -- HTTP header blocks: the split without regexes against the regex it replaced -----------

import re  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

from andon.protocols import http as http_mod  # noqa: E402

_TOK = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_OLD_BLOCK = re.compile(r"(?:" + _TOK + r":[ \t]*.*?[ \t]*\r\n)*")
_OLD_ALL = re.compile(r"(" + _TOK + r"):[ \t]*(.*?)[ \t]*\r\n")


def old_fast_headers(head: bytes, nl: int):
    block = head[nl + 2 :] + b"\r\n"
    if not block.isascii():
        return None
    text = block.decode("ascii")
    if _OLD_BLOCK.fullmatch(text) is None:
        return None
    return _OLD_ALL.findall(text)


_piece = hs.sampled_from(["Host", "x-a", "A_b", "na me", "", ":", " ", "\t", "\r", "\n", "v", "é", "1", "a:b", "~|"])


@settings(max_examples=400, deadline=None)
@given(hs.lists(hs.lists(_piece, min_size=0, max_size=6).map("".join), min_size=1, max_size=5))
def test_header_split_matches_the_regex(lines):
    head = ("GET / HTTP/1.1\r\n" + "\r\n".join(lines)).encode()
    if b"\r\n\r\n" in head:
        return  # a head never holds its blank line
    nl = head.find(b"\r\n")
    old = old_fast_headers(head, nl)
    lines = http_mod._fast_lines(head, nl)
    new = None if lines is None else [(name, value) for name, value, _, _ in lines]
    if new is not None:  # taken: must be what the regex took, and the same from the line cache
        assert new == old
        assert http_mod._fast_lines(head, nl) == lines
        assert [(lo, member) for _, _, lo, member in lines] == [
            (k.lower(), json.dumps(k, ensure_ascii=False) + ":" + json.dumps(v, ensure_ascii=False)) for k, v in old]
    # not taken: the line by line path decides, as it did when the regex refused
    if old is not None and new is None:
        assert http_mod._slow_headers(head.split(b"\r\n")[1:]) == old


# -- whole-chunk readers against the general way, on generated conversations ---------------

from andon.protocols.base import Direction as _D  # noqa: E402

_word = hs.sampled_from([b"GET", b"SET", b"k", b"", b"a\r\nb", b"\r\n", b"\xff\xfe", b"$3", b"*1", b"x" * 40])


def _resp_cmd(words) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


_reply = hs.one_of(
    hs.sampled_from([b"+OK\r\n", b"-ERR no\r\n", b":12\r\n", b"$-1\r\n", b"$03\r\nabc\r\n", b"*-1\r\n", b"_\r\n",
                     b"+a\rb\r\n", b"$2\r\na\r\n\r\n", b"*2\r\n$1\r\na\r\n:1\r\n", b"!3\r\nerr\r\n"]),
    _word.map(lambda w: b"$%d\r\n%s\r\n" % (len(w), w)))


def _feed_both(proto, chunks):
    outs = []
    for split in (False, True):
        parser = PARSERS[proto](Role.SERVER)
        out: list[dict] = []
        for ts, d, data in chunks:
            pieces = [data[i : i + 7] for i in range(0, len(data), 7)] if split else [data]
            for piece in pieces:
                out += parser.feed(DataChunk(ts, d, piece))
        st = parser.stats
        outs.append((out, {k: getattr(st, k) for k in st.__slots__}))
    return outs


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.tuples(hs.lists(hs.lists(_word, min_size=1, max_size=3), min_size=1, max_size=3),
                          hs.lists(_reply, min_size=1, max_size=3)), min_size=1, max_size=4))
def test_redis_whole_chunks_match_the_general_way(exchanges):
    chunks = []
    for i, (cmds, replies) in enumerate(exchanges):
        chunks.append((10 * i + 1, _D.INGRESS, b"".join(_resp_cmd(c) for c in cmds)))
        chunks.append((10 * i + 5, _D.EGRESS, b"".join(replies)))
    whole, pieces = _feed_both(Protocol.REDIS, chunks)
    assert whole == pieces


from andon.protocols import pgsql as pg_mod  # noqa: E402


def old_bind(payload: bytes):
    """Bind as the parser read it before the hot-path work (e2bfc90), for comparison."""
    r = pg_mod._Reader(payload)
    portal, stmt = r.cstr(), r.cstr()
    fmts = [r.int(2) for _ in range(r.int(2))]
    params, shown = [], []
    for i in range(r.int(2)):
        n = r.int(4)
        raw = None if n == -1 else r.raw(n)
        fmt = fmts[0] if len(fmts) == 1 else (fmts[i] if i < len(fmts) else 0)
        params.append(pg_mod._value(raw, fmt))
        shown.append(f"[format={'kBinary' if fmt == 1 else 'kText'} value={pg_mod._value(raw, fmt)}]")
    res = [r.int(2) for _ in range(r.int(2))]
    return (f"portal={portal} statement={stmt} parameters=[{', '.join(shown)}] "
            f"result_format_codes=[{', '.join('kBinary' if f == 1 else 'kText' for f in res)}]"), params


def _i16(v):
    return struct.pack("!h", v)


_bind_part = hs.one_of(
    hs.sampled_from([b"\0", b"s1\0", b"p\0", _i16(0), _i16(1), _i16(2), _i16(-1), struct.pack("!i", -1),
                     struct.pack("!i", 3), struct.pack("!i", -5), b"abc", b"\xff\x00", _i16(1) + _i16(1)]),
    hs.binary(max_size=6))


@settings(max_examples=500, deadline=None)
@given(hs.lists(_bind_part, max_size=10).map(b"".join))
def test_bind_reads_as_before(payload):
    try:
        want = ("ok", old_bind(payload))
    except (pg_mod._Bad, struct.error, UnicodeError, ValueError):
        want = ("bad", None)
    p = pg_mod.PgSQLParser(Role.SERVER)
    try:
        p._request("B", payload, 7)
        got = ("ok", (p.reqs[-1].text, p.reqs[-1].params))
    except (pg_mod._Bad, struct.error, UnicodeError, ValueError):
        got = ("bad", None)
    assert got == want


def test_bind_reads_as_before_on_a_real_bind():
    payload = b"\0s1\0" + _i16(1) + _i16(0) + _i16(2) + struct.pack("!i", 3) + b"abc" + struct.pack("!i", -1) + _i16(1) + _i16(1)
    p = pg_mod.PgSQLParser(Role.SERVER)
    p._request("B", payload, 7)
    assert (p.reqs[-1].text, p.reqs[-1].params) == old_bind(payload)
    assert p.reqs[-1].params == ["abc", "[NULL]"]


_hchar = hs.sampled_from(["a", "B", '"', "\\", "\0", "\x1f", "\x7f", "é", "\u2028", " ", "-", "\n", "\t"])
_htext = hs.lists(_hchar, max_size=5).map("".join)


@settings(max_examples=500, deadline=None)
@given(hs.lists(hs.tuples(_htext, _htext), max_size=5))
def test_headers_json_is_the_encoders_text(headers):
    enc = json.encoder.encode_basestring
    want = "{" + ",".join(enc(k) + ":" + enc(v) for k, v in sorted(headers, key=lambda kv: kv[0].lower())) + "}"
    assert http_mod.headers_json(headers) == want
    assert json.loads(want) == dict(sorted(headers, key=lambda kv: kv[0].lower()))


def test_a_record_whose_handler_raises_is_consumed_and_the_rest_stay():
    ring = Ring()
    src = ring.source()
    for i in range(5):
        ring.put(data_rec(1, 100 + i, 1, b"r%d" % i, 2 * i))
    seen = []

    def on_data(*f):
        seen.append(f[8])
        if f[8] == b"r1":
            raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):
        src.read_into(on_data, seen.append, 0)
    assert seen == [b"r0", b"r1"] and src.reader.records_read == 2
    assert src.read_into(on_data, seen.append, 0) == 3
    assert seen == [b"r0", b"r1", b"r2", b"r3", b"r4"] and src.reader.pending_bytes() == 0


def test_observer_pump_ring_bytes_to_parquet(tmp_path):
    """The agent's chain: ring bytes -> Observer.pump -> Store -> Parquet, values read back."""
    import duckdb

    from andon.app.config import ObserveConfig
    from andon.app.observer import Observer
    from andon.store.settings import StoreSettings
    from andon.store.store import Store

    ring = Ring()
    store = Store(StoreSettings(data_dir=tmp_path, control_socket=False))
    obs = Observer(ObserveConfig(), StoreSettings(data_dir=tmp_path), container_name=lambda cid: None)
    obs.source, obs.store = ring.source(), store
    obs.pipeline = Pipeline(store.append, _Procs(), obs.protocols)
    req = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    ring.put(open_rec(9))
    for i in range(30):
        ring.put(data_rec(9, 1000 + i * 10, 1, req, i * len(req)))
        ring.put(data_rec(9, 1003 + i * 10, 0, resp, i * len(resp)))
    assert obs.pump(0) == 61
    store.flush()
    files = [str(p) for p in (tmp_path / "http_events").glob("*.parquet")]
    got = duckdb.sql(f"SELECT time_, latency, req_path, resp_status, resp_message, local_port, upid, trace_role, "
                     f"encrypted, req_headers FROM read_parquet({files}) ORDER BY time_").fetchall()
    assert got == [(2003 + i * 10, 3, "/p", 201, "Created", 8080, "0:77:1", 2, False, '{"Host":"h"}')
                   for i in range(30)]
    store.close()


def test_the_caches_stay_bounded():
    from andon.protocols import redis as redis_mod

    p = PARSERS[Protocol.HTTP](Role.SERVER)
    for i in range(3 * http_mod._HEAD_CACHE_MAX):
        p.feed(DataChunk(i, _D.INGRESS, b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i))
        assert len(http_mod._REQ_HEADS) <= http_mod._HEAD_CACHE_MAX
    assert p.stats.frames == 3 * http_mod._HEAD_CACHE_MAX
    for i in range(3 * redis_mod._COMMANDS_MAX):
        redis_mod.command(["GET", "k%d" % i])
        assert len(redis_mod._COMMANDS) <= redis_mod._COMMANDS_MAX
    big = ["SET", "k", "v" * 300]  # too long to keep
    assert redis_mod.command(big).args == redis_mod.command(big).args
    assert tuple(big) not in redis_mod._COMMANDS


def test_ring_read_stops_early_and_keeps_the_rest():
    ring = Ring()
    reader = VarRingReader.on_memory(ring.mem, ring.cons, RING)
    for i in range(6):
        ring.put(b"rec%d" % i)
        ring.put(b"x" * 9, DISCARD)
    it = reader.read()
    assert [next(it), next(it)] == [b"rec0", b"rec1"]
    it.close()
    assert list(reader.read(2)) == [b"rec2", b"rec3"]
    assert reader.read_batch() == [b"rec4", b"rec5"] and reader.pending_bytes() == 0
    assert reader.records_read == 6


def _observer_on(ring: Ring, tmp_path):
    from andon.app.config import ObserveConfig
    from andon.app.observer import Observer
    from andon.store.settings import StoreSettings
    from andon.store.store import Store

    store = Store(StoreSettings(data_dir=tmp_path, control_socket=False))
    obs = Observer(ObserveConfig(), StoreSettings(data_dir=tmp_path), container_name=lambda cid: None)
    obs.source, obs.store = ring.source(), store
    obs.source.BATCH_RECORDS = 8  # one read takes 8 records: the backlog below is 8 reads
    obs.pipeline = Pipeline(store.append, _Procs(), obs.protocols)
    return obs


def _http_backlog(ring: Ring, n: int) -> None:
    req = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    ring.put(open_rec(9))
    for i in range(n):
        ring.put(data_rec(9, 1000 + i * 10, 1, req, i * len(req)))
        ring.put(data_rec(9, 1003 + i * 10, 0, resp, i * len(resp)))


def test_close_reads_the_whole_backlog_not_one_batch(tmp_path):
    """An agent stopped with records still in the ring puts all of them through: before,
    close() read one batch and the rest of a busy agent's backlog was never counted."""
    import duckdb

    ring = Ring()
    obs = _observer_on(ring, tmp_path)
    _http_backlog(ring, 30)  # 61 records
    obs.close()
    files = [str(p) for p in (tmp_path / "http_events").glob("*.parquet")]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet({files})").fetchall() == [(30,)]
    assert obs.last_stats["rows"]["http_events"] == 30
    assert obs.last_stats["sensor"]["unread_bytes"] == 0


def test_what_close_cannot_read_in_time_is_counted_and_said(tmp_path):
    from andon.app.observer import describe

    ring = Ring()
    obs = _observer_on(ring, tmp_path)
    _http_backlog(ring, 30)
    pending = ring.prod - ring.cons.value
    assert obs.drain(limit_s=0) == 0
    assert obs.source.unread_bytes == pending > 0
    stats = obs.stats()
    assert stats["sensor"]["unread_bytes"] == pending
    assert describe(stats).endswith(f"0 unanswered requests, {pending} bytes left unread at stop")
    obs.store.close()


def test_close_does_not_read_beside_a_reading_thread_that_did_not_stop(tmp_path, caplog):
    """A reading thread still inside a pass when close() gives up waiting: close() must not
    drain the ring beside it (the parsers would be fed from two threads); the backlog is
    left, counted as unread and said. Before, close() waited 5 s and then drained anyway."""
    import threading

    ring = Ring()
    obs = _observer_on(ring, tmp_path)
    _http_backlog(ring, 30)
    pending = ring.prod - ring.cons.value
    release = threading.Event()
    obs._thread = threading.Thread(target=release.wait, args=(10,), daemon=True)  # a pass that hangs
    obs._thread.start()
    obs.STOP_S = 0.2
    try:
        with caplog.at_level("WARNING", logger="andon.observe"):
            obs.close()
    finally:
        release.set()
    assert ring.cons.value == ring.prod - pending  # nothing read beside the stuck thread
    assert obs.last_stats["sensor"]["unread_bytes"] == pending > 0
    assert obs.last_stats["rows"].get("http_events", 0) == 0
    assert f"{pending} bytes left unread" in caplog.text


def test_header_line_cache_is_bounded_and_keeps_no_long_lines():
    http_mod._LINES.clear()
    for i in range(http_mod._LINES_MAX + 100):  # every ETag different, as a server's would be
        h = http_mod.parse_head(False, b'HTTP/1.1 200 OK\r\nServer: s\r\nETag: "%08x"' % i)
        assert h.hmap == {"server": "s", "etag": '"%08x"' % i} and h.hjson == '{"ETag":"\\"%08x\\"","Server":"s"}' % i
    assert 0 < len(http_mod._LINES) <= http_mod._LINES_MAX
    long = b"Cookie: " + b"c" * http_mod._LINE_KEY
    h = http_mod.parse_head(True, b"GET / HTTP/1.1\r\n" + long)
    assert h.hmap["cookie"] == "c" * http_mod._LINE_KEY and long not in http_mod._LINES


def test_a_unix_socket_open_record_names_both_ends_by_the_path():
    def rec(path: bytes, n: int) -> bytes:
        return sd.OPEN.pack(sd.REC_OPEN, 1, 0, 77, 78, 5, 10, 3, sd.AF_UNIX, 0, 0, 0, bytes(16), bytes(16), 99, 1,
                            b"psql", b"psql", n, path, 0xffff1, 0xffff2)
    o = sd.decode(rec(b"/run/postgresql/.s.PGSQL.5432", 29))
    assert (o.family, o.laddr, o.raddr, o.lport, o.rport, o.l4, o.sock_id, o.peer_id) == (
        sd.AF_UNIX, "/run/postgresql/.s.PGSQL.5432", "/run/postgresql/.s.PGSQL.5432", 0, 0, 0, 0xffff1, 0xffff2)
    # an abstract name: a leading NUL, shown as @ (ss, /proc/net/unix); NULs inside it kept
    assert sd.decode(rec(b"\0andon\0x", 8)).raddr == "@andon\0x"
    # an unnamed pair; and a length past the field is cut to it
    assert sd.decode(rec(b"", 0)).raddr == ""
    assert sd.decode(rec(b"/tmp/s" + b"\0" * 102, 500)).raddr == "/tmp/s"
