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
    parser = PARSERS[PROTOS[stream.split("_")[0]]](ROLES[role])
    out: list[dict] = []
    for c in chunks:
        out += parser.feed(c)
    out += parser.close(chunks[-1].ts_ns + 1)
    st = parser.stats
    return out, {k: getattr(st, k) for k in st.__slots__}


def digest(stream: str, role: str, way: str) -> str:
    out, stats = rows(stream, role, way)
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
