"""The parsers on real conversations recorded through tests/relay.py (tests/data/streams):
as the client (as recorded), as the server (directions swapped) and with the role unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from andon.protocols import PARSERS, Direction, Protocol, Role
from relay import load

STREAMS = Path(__file__).resolve().parents[1] / "data" / "streams"
ROLES = [Role.CLIENT, Role.SERVER, Role.UNKNOWN]


def replay(name: str, proto: Protocol, role: Role):
    parser = PARSERS[proto](role)
    chunks = load(STREAMS / name, as_server=role == Role.SERVER)
    out = []
    for c in chunks:
        out += parser.feed(c)
    out += parser.close(chunks[-1].ts_ns + 1)
    return out, parser.stats, chunks


def chunk_times(chunks, client_sent: bool, as_server: bool) -> list[int]:
    want = Direction.EGRESS if client_sent != as_server else Direction.INGRESS
    return [c.ts_ns for c in chunks if c.direction == want]


@pytest.mark.parametrize("role", ROLES)
def test_http_nginx_keepalive(role):
    out, stats, chunks = replay("http_nginx_keepalive.jsonl", Protocol.HTTP, role)
    assert [(r["req_method"], r["req_path"], r["resp_status"], r["resp_message"]) for r in out] == [
        ("GET", "/", 200, "OK"), ("GET", "/size/0", 200, "OK"), ("GET", "/missing", 404, "Not Found")]
    assert out[0]["resp_body"] == "hello from andon\n" and out[0]["resp_body_size"] == 17
    assert out[1]["resp_body_size"] == 0 and out[2]["resp_body_size"] == 153
    assert out[2]["resp_body"].startswith("<html>\r\n<head><title>404 Not Found</title>")
    req_headers = json.loads(out[0]["req_headers"])
    assert req_headers["Host"].startswith("127.0.0.1:") and req_headers["Accept"] == "*/*"
    assert json.loads(out[2]["resp_headers"])["Server"].startswith("nginx")
    assert all(r["major_version"] == 1 and r["minor_version"] == 1 for r in out)
    # curl sends each request in one write and nginx answers in one: latency is chunk to chunk
    sent = chunk_times(chunks, True, role == Role.SERVER)
    got = chunk_times(chunks, False, role == Role.SERVER)
    assert [r["latency"] for r in out] == [g - s for s, g in zip(sent, got)]
    assert [r["time_"] for r in out] == got
    assert (stats.records, stats.invalid, stats.unmatched_requests, stats.unmatched_responses) == (3, 0, 0, 0)


@pytest.mark.parametrize("role", ROLES)
def test_http_python_keepalive(role):
    out, stats, _ = replay("http_python_keepalive.jsonl", Protocol.HTTP, role)
    assert [(r["req_path"], r["resp_status"], r["resp_body"]) for r in out] == [
        ("/", 200, "hello from andon\n"), ("/nothing-here", 404, "not found\n")]
    assert stats.invalid == 0


@pytest.mark.parametrize("role", ROLES)
def test_pgsql_simple_query_with_ssl_request_and_error(role):
    out, stats, chunks = replay("pgsql_simple.jsonl", Protocol.PGSQL, role)
    assert len(out) == 1
    r = out[0]
    assert r["req_cmd"] == "Query"
    assert r["req"] == "select 1 as a, null as b union all select 2, 'x'; select nosuchcol from pg_class"
    assert r["resp"].startswith('a,b\n1,[NULL]\n2,x\nSELECT 2\nERROR RESPONSE [Severity=ERROR InternalSeverity=ERROR '
                                'Code=42703 Message=column "nosuchcol" does not exist Position=58 ')
    # the query was one write; the response ends in the chunk holding ReadyForQuery
    q_chunk = next(c for c in chunks if c.data.startswith(b"Q"))
    assert r["latency"] == r["time_"] - q_chunk.ts_ns > 0
    assert stats.invalid == 0 and stats.unmatched_requests == 0


@pytest.mark.parametrize("role", ROLES)
def test_pgsql_extended_parse_bind_execute(role):
    out, stats, _ = replay("pgsql_extended.jsonl", Protocol.PGSQL, role)
    assert [r["req_cmd"] for r in out] == ["Parse", "Bind", "Describe", "Execute"]
    assert out[0]["req"] == "select $1::int * 2 as doubled" and out[0]["resp"] == "PARSE COMPLETE"
    assert out[1]["resp"] == "BIND COMPLETE" and "statement=_pg3_0" in out[1]["req"]
    assert out[2]["resp"].startswith("ROW DESCRIPTION [name=doubled ")
    # psycopg binds 21 as a binary int2: the statement text from Parse is carried to Execute
    assert out[3]["req"] == "query=[select $1::int * 2 as doubled] params=[\\x0015]"
    assert out[3]["resp"] == "42\nSELECT 1"
    assert stats.invalid == 0 and stats.unmatched_requests == 0


@pytest.mark.parametrize("role", ROLES)
def test_mysql_text_queries(role):
    out, stats, _ = replay("mysql_query.jsonl", Protocol.MYSQL, role)
    assert [(r["req_cmd"], r["req_body"], r["resp_status"], r["resp_body"]) for r in out] == [
        (3, "select 1 as a union select 2", 2, "Resultset rows = 2"),
        (3, "select nosuchcol from mysql.user", 3, "Unknown column 'nosuchcol' in 'SELECT'"),
        (1, "", 1, ""),
    ]
    assert out[2]["latency"] == 0
    assert stats.invalid == 0 and stats.unmatched_requests == 0


@pytest.mark.parametrize("role", ROLES)
def test_mysql_prepared_statement(role):
    out, stats, _ = replay("mysql_prepared.jsonl", Protocol.MYSQL, role)
    by_cmd = {r["req_cmd"]: r for r in out}
    assert by_cmd[0x16]["req_body"] == "select ? + 1 as n, ? as s" and by_cmd[0x16]["resp_status"] == 2
    assert by_cmd[0x17]["req_body"] == "query=[select ? + 1 as n, ? as s] params=[41, hi]"
    assert by_cmd[0x17]["resp_body"] == "Resultset rows = 1" and by_cmd[0x17]["latency"] > 0
    assert by_cmd[0x19]["resp_status"] == 1  # COM_STMT_CLOSE has no response
    assert stats.invalid == 0 and stats.unmatched_requests == 0


@pytest.mark.parametrize("role", ROLES)
def test_redis_pipeline(role):
    out, stats, chunks = replay("redis_pipeline.jsonl", Protocol.REDIS, role)
    assert [(r["req_cmd"], r["req_args"], r["resp"]) for r in out] == [
        ("SET", '{"key":"k","value":"v","options":[]}', "OK"),
        ("GET", '{"key":"k"}', "v"),
        ("INCR", '{"key":"n"}', "1"),
        ("LPUSH", '{"key":"l","element":["a","b"]}', "2"),
        ("LRANGE", '{"key":"l","start":"0","stop":"-1"}', '["b","a"]'),
        ("GET", '{"key":"nosuch"}', "<NULL>"),
        ("BADCMD", "[]", "-ERR unknown command 'BADCMD', with args beginning with: "),
    ]
    assert {r["latency"] for r in out} == {chunks[1].ts_ns - chunks[0].ts_ns}
    assert stats.unmatched_requests == 0 and stats.invalid == 0


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,qtype,answer", [("dns_udp.jsonl", "A", {"name": "both.andon.test", "type": "A", "addr": "10.1.2.4"}),
                                               ("dns_tcp.jsonl", "AAAA", {"name": "v6.andon.test", "type": "AAAA", "addr": "fd00::1234"})])
def test_dns(role, name, qtype, answer):
    out, stats, chunks = replay(name, Protocol.DNS, role)
    assert len(out) == 1
    r = out[0]
    assert json.loads(r["req_body"]) == {"queries": [{"name": answer["name"], "type": qtype}]}
    assert json.loads(r["resp_body"]) == {"answers": [answer]}
    req_h, resp_h = json.loads(r["req_header"]), json.loads(r["resp_header"])
    assert req_h["txid"] == resp_h["txid"] and (req_h["qr"], resp_h["qr"]) == (0, 1)
    assert resp_h["rcode"] == 0 and resp_h["num_answers"] == 1
    assert r["latency"] == chunks[1].ts_ns - chunks[0].ts_ns
