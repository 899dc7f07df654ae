"""Hostile input: every parser in every role takes random bytes, random splits, gaps and
truncations without raising, within its memory bounds, and splitting a valid stream never
changes its records."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from andon.protocols import PARSERS, DataChunk, Direction, Protocol, Role
from andon.protocols.stream import MAX_PENDING_BYTES, MAX_PENDING_REQUESTS
from relay import load

STREAMS = Path(__file__).resolve().parents[1] / "data" / "streams"
FIXTURES = {
    "http_nginx_keepalive.jsonl": Protocol.HTTP, "http_python_keepalive.jsonl": Protocol.HTTP,
    "pgsql_simple.jsonl": Protocol.PGSQL, "pgsql_extended.jsonl": Protocol.PGSQL,
    "mysql_query.jsonl": Protocol.MYSQL, "mysql_prepared.jsonl": Protocol.MYSQL,
    "redis_pipeline.jsonl": Protocol.REDIS, "dns_udp.jsonl": Protocol.DNS, "dns_tcp.jsonl": Protocol.DNS,
}
PROTOCOLS = sorted(set(FIXTURES.values()))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bytes that look like each protocol, so random mixes get past the first checks
SEEDS = [b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"Content-Length: 5\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n",
         b"5\r\nhello\r\n0\r\n\r\n", b"*2\r\n$3\r\nGET\r\n", b"$-1\r\n", b">3\r\n", b"%1\r\n", b"Q\x00\x00\x00\x09sel\x00",
         b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"T\x00\x00\x00\x06\x00\x01", b"D\x7f\xff\xff\xff", b"\x01\x00\x00\x00\x03",
         b"\x05\x00\x00\x01\xfe\x00\x00\x02\x00", b"\xc0\x0c", b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00", b"\r\n"]

piece = st.one_of(st.binary(max_size=64), st.sampled_from(SEEDS))
chunk = st.tuples(st.lists(piece, max_size=6).map(b"".join), st.booleans(),
                  st.integers(0, 3), st.integers(0, 70000), st.integers(0, 2000))


def check_bounds(parser) -> None:
    assert parser.pending_bytes() <= MAX_PENDING_BYTES + 64 * 6 + 70000
    assert len(parser.reqs) <= MAX_PENDING_REQUESTS


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER, Role.UNKNOWN])
@FUZZ
@given(chunks=st.lists(chunk, max_size=30))
def test_random_bytes_never_raise_and_stay_bounded(proto, role, chunks):
    parser = PARSERS[proto](role)
    ts = 0
    for data, egress, lossy, gap, extra in chunks:
        ts += 1
        c = DataChunk(ts, Direction.EGRESS if egress else Direction.INGRESS, data,
                      size=len(data) + (extra if lossy == 1 else 0), gap=gap if lossy == 2 else 0)
        records = parser.feed(c)
        assert all(isinstance(r, dict) and "latency" in r and "time_" in r for r in records)
        check_bounds(parser)
    parser.close(ts + 1)
    assert parser.pending_bytes() == 0 and not parser.reqs


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_a_stream_that_never_ends_a_frame_is_dropped_and_counted(proto):
    parser = PARSERS[proto](Role.CLIENT)
    # a header that promises more and more, fed in 64 KiB writes: never more than the cap held
    first = {Protocol.HTTP: b"GET / HTTP/1.1\r\nX: ", Protocol.REDIS: b"*1\r\n$99999999\r\n",
             Protocol.PGSQL: b"Q\x00\x03\x00\x00", Protocol.MYSQL: b"\x00\x00\x30\x00\x03", Protocol.DNS: b"\xff\xff"}[proto]
    parser.feed(DataChunk(1, Direction.EGRESS, first))
    for i in range(40):
        parser.feed(DataChunk(2 + i, Direction.EGRESS, b"a" * 65536))
        check_bounds(parser)
        assert parser.pending_bytes() <= MAX_PENDING_BYTES
    # something was counted: the garbage as invalid, or the oversized frame as truncated
    assert parser.stats.invalid + parser.stats.truncated >= 1


def replay(proto, role, chunks):
    parser = PARSERS[proto](role)
    out = []
    for c in chunks:
        out += parser.feed(c)
    return out + parser.close(10**19)


@pytest.mark.parametrize("name", sorted(FIXTURES))
@FUZZ
@given(data=st.data())
def test_splitting_a_recorded_stream_never_changes_its_records(name, data):
    proto = FIXTURES[name]
    as_server = data.draw(st.booleans())
    role = Role.SERVER if as_server else Role.CLIENT
    chunks = load(STREAMS / name, as_server=as_server)
    expected = replay(proto, role, chunks)
    assert expected
    if proto == Protocol.DNS and "udp" in name:
        return  # a datagram is never split
    pieces = []
    for c in chunks:
        cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(c.data) - 1)), max_size=5, unique=True)))
        for a, b in zip([0, *cuts], [*cuts, len(c.data)]):
            if a < b:
                pieces.append(DataChunk(c.ts_ns, c.direction, c.data[a:b]))
    assert replay(proto, role, pieces) == expected


@pytest.mark.parametrize("name", sorted(FIXTURES))
@FUZZ
@given(data=st.data())
def test_truncated_and_lost_chunks_never_raise(name, data):
    proto = FIXTURES[name]
    chunks = load(STREAMS / name)
    parser = PARSERS[proto](data.draw(st.sampled_from([Role.CLIENT, Role.UNKNOWN])))
    for c in chunks:
        keep = data.draw(st.integers(0, len(c.data)))
        gap = data.draw(st.sampled_from([0, 0, 0, 1, 17, 5000]))
        parser.feed(DataChunk(c.ts_ns, c.direction, c.data[:keep], size=len(c.data), gap=gap))
        check_bounds(parser)
    parser.close(10**19)
    s = parser.stats
    assert s.records <= len(replay(proto, Role.CLIENT, chunks))
