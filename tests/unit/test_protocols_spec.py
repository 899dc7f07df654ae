"""The parsers on byte streams written from the protocol specifications: the cases a short
recording does not show (pipelining, chunking, split reads, lost bytes, RESP3, compression loops)."""

from __future__ import annotations

import gzip
import json
import struct

from andon.protocols import PARSERS, DataChunk, Direction, Protocol, Role
from andon.protocols.dns import DNSParser, parse_message, DNSFormatError
from andon.protocols.pgsql import rows_from_tag
from andon.protocols.redis import RedisParser

E, I = Direction.EGRESS, Direction.INGRESS


def run(proto, role, chunks):
    p = PARSERS[proto](role)
    out = []
    for c in chunks:
        out += p.feed(c)
    return out, p


# -- HTTP -------------------------------------------------------------------------------------
def test_http_pipelined_requests_pair_in_order_with_chunked_and_split_reads():
    reqs = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\r\nx=1+2%21"
            + b"HEAD /c HTTP/1.1\r\n\r\n")
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 999\r\n\r\n")
    chunks = [DataChunk(10, E, reqs)]
    # the responses arrive one byte per read: t = 100 + offset
    chunks += [DataChunk(100 + i, I, resp[i:i + 1]) for i in range(len(resp))]
    out, p = run(Protocol.HTTP, Role.CLIENT, chunks)
    assert [(r["req_method"], r["req_path"], r["resp_status"]) for r in out] == [
        ("GET", "/a", 200), ("POST", "/b", 201), ("HEAD", "/c", 200)]
    first_end = resp.index(b"HTTP/1.1 201")
    second_end = resp.index(b"HTTP/1.1 200 OK", first_end)
    assert [r["time_"] for r in out] == [100 + first_end - 1, 100 + second_end - 1, 100 + len(resp) - 1]
    assert [r["latency"] for r in out] == [r["time_"] - 10 for r in out]
    assert out[0]["resp_body"] == "abcde" and out[0]["resp_body_size"] == 5
    assert out[1]["req_body"] == "x=1 2!" and out[1]["req_body_size"] == 8 and out[1]["content_type"] == 1
    assert out[2]["resp_body_size"] == 0 and out[2]["resp_body"] == ""  # HEAD: no body follows (Pixie: size 0)
    assert p.stats.records == 3 and p.stats.invalid == 0 and not p.reqs


def test_http_100_continue_204_304_and_body_until_close():
    chunks = [
        DataChunk(1, I, b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
        DataChunk(2, E, b"HTTP/1.1 100 Continue\r\n\r\n"),
        DataChunk(3, I, b"data"),
        DataChunk(4, E, b"HTTP/1.1 204 No Content\r\n\r\n"),
        DataChunk(5, I, b"GET /x HTTP/1.0\r\nIf-None-Match: 1\r\n\r\nGET /y HTTP/1.0\r\n\r\n"),
        DataChunk(6, E, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<p>"),
        DataChunk(7, E, b"hi</p>"),
    ]
    out, p = run(Protocol.HTTP, Role.SERVER, chunks)
    assert [(r["req_path"], r["resp_status"], r["latency"]) for r in out] == [("/u", 204, 1), ("/x", 304, 1)]
    assert out[0]["req_body"] == "data"
    out += p.close(100)
    assert out[2]["req_path"] == "/y" and out[2]["resp_body"] == "<p>hi</p>" and out[2]["resp_body_size"] == 9
    assert out[2]["minor_version"] == 0 and out[2]["time_"] == 7
    assert p.stats.frames == 7  # 3 requests, 100, 204, 304, 200


def test_http_lost_body_bytes_only_shorten_the_body_and_gzip_is_inflated():
    body = gzip.compress(b'{"k": "' + b"v" * 600 + b'"}')
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body) + 5000))
    chunks = [DataChunk(1, E, b"GET /z HTTP/1.1\r\n\r\n"),
              DataChunk(2, I, head + body, size=len(head) + len(body) + 3000),  # copy cut short
              DataChunk(3, I, b"\0" * 1000, gap=1000),  # and 1000 more never copied
              DataChunk(4, E, b"GET /next HTTP/1.1\r\n\r\n"),
              DataChunk(5, I, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]
    out, p = run(Protocol.HTTP, Role.CLIENT, chunks)
    assert [r["req_path"] for r in out] == ["/z", "/next"]
    assert out[0]["resp_body_size"] == len(body) + 5000 and out[0]["time_"] == 3
    assert out[0]["resp_body"] == ('{"k": "' + "v" * 600)[:512] + "... [TRUNCATED]"
    assert p.stats.truncated == 1 and p.stats.invalid == 0


def test_http_garbage_resynchronises_on_the_next_request_line():
    out, p = run(Protocol.HTTP, Role.CLIENT, [
        DataChunk(1, E, b"\x16\x03\x01garbage\r\n\r\nGET /ok HTTP/1.1\r\n\r\n"),
        DataChunk(2, I, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    assert [r["req_path"] for r in out] == ["/ok"]
    assert p.stats.invalid == 1 and p.stats.bytes_skipped == len(b"\x16\x03\x01garbage\r\n\r\n")


def test_http_unknown_role_from_a_server_chunk_first():
    out, _ = run(Protocol.HTTP, Role.UNKNOWN, [DataChunk(1, I, b"GET / HTTP/1.1\r\n\r\n"),
                                              DataChunk(2, E, b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")])
    assert [(r["req_path"], r["resp_status"], r["latency"]) for r in out] == [("/", 302, 1)]


# -- PostgreSQL -------------------------------------------------------------------------------
def pg(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!i", len(payload) + 4) + payload


def test_pgsql_row_counts_from_command_tags():
    assert [rows_from_tag(t) for t in ("SELECT 3", "INSERT 0 1", "UPDATE 12", "DELETE 0", "CREATE TABLE")] == [3, 1, 12, 0, None]


def test_pgsql_error_in_extended_batch_skips_to_sync():
    chunks = [DataChunk(1, E, pg(b"P", b"s1\0select nope\0\0\0") + pg(b"B", b"\0s1\0\0\0\0\0\0\0")
                        + pg(b"E", b"\0\0\0\0\0") + pg(b"S", b"")),
              DataChunk(2, I, pg(b"E", b"SERROR\0C42703\0Mbad\0\0") + pg(b"Z", b"I")),
              DataChunk(3, E, pg(b"Q", b"delete from t\0")),
              DataChunk(5, I, pg(b"C", b"DELETE 4\0") + pg(b"Z", b"I"))]
    out, p = run(Protocol.PGSQL, Role.CLIENT, chunks)
    assert [(r["req_cmd"], r["resp"], r["latency"]) for r in out] == [
        ("Parse", "ERROR RESPONSE [Severity=ERROR Code=42703 Message=bad]", 1), ("Query", "DELETE 4", 2)]
    assert rows_from_tag(out[1]["resp"]) == 4
    assert p.stats.unmatched_requests == 2  # the Bind and Execute the backend skipped


def _pg_session(answer: bytes) -> list[DataChunk]:
    """A client's view: SSLRequest, the backend's one-byte answer, then (after "S", the TLS
    calls' plaintext) the startup message, authentication OK, one simple query."""
    startup = struct.pack("!ii", 0, 196608) + b"user\0postgres\0\0"
    return [DataChunk(1, E, struct.pack("!ii", 8, 80877103)), DataChunk(2, I, answer),
            DataChunk(3, E, struct.pack("!i", len(startup)) + startup[4:]),
            DataChunk(4, I, pg(b"R", b"\0\0\0\0") + pg(b"Z", b"I")),
            DataChunk(5, E, pg(b"Q", b"select 42\0")),
            DataChunk(9, I, pg(b"T", b"\0\x01a\0" + b"\0" * 18) + pg(b"D", b"\0\x01\0\0\0\x0242")
                      + pg(b"C", b"SELECT 1\0") + pg(b"Z", b"I"))]


def test_pgsql_after_ssl_accepted_the_tls_plaintext_is_parsed_as_after_ssl_refused():
    # with TLS the sensor delivers no ciphertext, only the library calls' plaintext: the same
    # messages as a plaintext session after "N"
    for answer in (b"S", b"N"):
        out, p = run(Protocol.PGSQL, Role.CLIENT, _pg_session(answer))
        assert [(r["req_cmd"], r["req"], r["resp"], r["latency"]) for r in out] == [
            ("Query", "select 42", "a\n42\nSELECT 1", 4)], answer
        assert (p.stats.invalid, p.stats.bytes_skipped) == (0, 0), answer
    # GSSAPI encryption wraps the messages: skipped and counted, never parsed
    out, p = run(Protocol.PGSQL, Role.CLIENT, _pg_session(b"G"))
    assert out == [] and p.stats.bytes_skipped > 0 and p.stats.invalid == 0


def test_pgsql_large_data_row_is_skipped_not_buffered():
    big = b"x" * (600 * 1024)
    row = pg(b"D", struct.pack("!hi", 1, len(big)) + big)
    chunks = [DataChunk(1, E, pg(b"Q", b"select big\0"))]
    chunks += [DataChunk(2 + i, I, row[i:i + 65536]) for i in range(0, len(row), 65536)]
    chunks += [DataChunk(100, I, pg(b"C", b"SELECT 1\0") + pg(b"Z", b"I"))]
    p = PARSERS[Protocol.PGSQL](Role.CLIENT)
    out, peak = [], 0
    for c in chunks:
        out += p.feed(c)
        peak = max(peak, p.pending_bytes())
    assert peak <= 256 * 1024
    assert out[0]["resp"].startswith("x" * 100) and out[0]["resp"].endswith("... [TRUNCATED]")
    assert out[0]["resp"][:-15].endswith("x")  # bounded at the column size
    assert p.stats.truncated == 1


# -- MySQL ------------------------------------------------------------------------------------
def my(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def test_mysql_prepare_execute_with_reused_types_and_null():
    prep_ok = my(1, b"\x00" + struct.pack("<IHHxH", 7, 1, 2, 0))
    pdef = my(2, b"\x03def\x00\x00\x00\x01?\x00\x0c?\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00")
    execute1 = my(0, b"\x17" + struct.pack("<IBI", 7, 0, 1) + b"\x00" + b"\x01" + b"\x08\x00\xfe\x00"
                  + struct.pack("<q", -5) + b"\x03abc")
    execute2 = my(0, b"\x17" + struct.pack("<IBI", 7, 0, 1) + b"\x02" + b"\x00" + struct.pack("<q", 9))
    ok = my(1, b"\x00\x01\x00\x02\x00\x00\x00")
    chunks = [DataChunk(1, E, my(0, b"\x16select ?, ?")),
              DataChunk(2, I, prep_ok + pdef + pdef + my(4, b"\xfe\x00\x00\x02\x00") + pdef),
              DataChunk(3, E, execute1), DataChunk(4, I, ok),
              DataChunk(5, E, execute2), DataChunk(7, I, my(1, b"\xff\x15\x04#28000Access denied"))]
    out, p = run(Protocol.MYSQL, Role.CLIENT, chunks)
    assert [(r["req_cmd"], r["req_body"], r["resp_status"], r["resp_body"], r["latency"]) for r in out] == [
        (0x16, "select ?, ?", 2, "", 1),
        (0x17, "query=[select ?, ?] params=[-5, abc]", 2, "", 1),
        (0x17, "query=[select ?, ?] params=[9, NULL]", 3, "Access denied", 2),
    ]


# -- Redis ------------------------------------------------------------------------------------
def test_redis_resp3_types_inline_commands_and_pushes():
    chunks = [DataChunk(1, E, b"HELLO 3\r\nHGETALL h\r\n*2\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n*1\r\n$4\r\nPING\r\n"),
              DataChunk(2, I, b"%1\r\n+proto\r\n:3\r\n%2\r\n$1\r\na\r\n,1.5\r\n$1\r\nb\r\n#t\r\n"),
              DataChunk(3, I, b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n|1\r\n+ttl\r\n:1\r\n"
                              b"!9\r\nERR nope!\r\n=8\r\ntxt:PONG\r\n")]
    out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_cmd"], r["req_args"], r["resp"], r["latency"]) for r in out] == [
        ("HELLO", '{"protover":"3"}', '{"proto":"3"}', 1),
        ("HGETALL", '{"key":"h"}', '{"a":"1.5","b":"true"}', 1),
        ("PUSH PUB", "", '["message","c","hi"]', 0),
        ("CONFIG GET", "[]", "-ERR nope!", 2),
        ("PING", "{}", "PONG", 2),
    ]


def test_redis_reply_split_at_every_byte():
    reply = b"*3\r\n$3\r\nabc\r\n*-1\r\n$-1\r\n"
    chunks = [DataChunk(1, E, b"*2\r\n$4\r\nMGET\r\n$1\r\nk\r\n")] + [DataChunk(10 + i, I, reply[i:i + 1]) for i in range(len(reply))]
    out, _ = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert out == [{"time_": 10 + len(reply) - 1, "req_cmd": "MGET", "req_args": '{"key":["k"]}',
                    "resp": '["abc","[NULL]","<NULL>"]', "latency": 10 + len(reply) - 2}]


def command_docs_writes(entries: int, per_write: int) -> list[bytes]:
    """A reply shaped like Redis 7's answer to redis-cli's opening COMMAND DOCS, as the
    server writes it: a map of command names to nested maps whose leaves are words such as
    "integer" and "arguments", ``per_write`` entries a write, so every later write starts
    with what looks like a reply."""
    writes = [b"%" + str(entries).encode() + b"\r\n"]
    for i in range(entries):
        entry = (b"$%d\r\ncmd%d\r\n" % (len(b"cmd%d" % i), i) + b"%3\r\n$7\r\nsummary\r\n$12\r\nsome command\r\n"
                 + b"$5\r\ngroup\r\n$7\r\ninteger\r\n$9\r\narguments\r\n*1\r\n%2\r\n+name\r\n+key\r\n+type\r\n+integer\r\n")
        if i % per_write == 0 and i:
            writes.append(b"")
        writes[-1] += entry
    return writes


def test_redis_a_reply_cut_by_the_copy_bound_is_one_truncated_record_not_words_from_inside_it():
    # the sensor copies 4096 bytes of each write: the rest of a big reply is never seen, and
    # what follows the cut (a later write of the same reply) must not be taken for replies
    cut = command_docs_writes(400, 100)
    assert len(cut) == 4 and all(len(c) > 4096 for c in cut) and cut[1][:1] == b"$"
    chunks = [DataChunk(1, I, b"*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n")]
    chunks += [DataChunk(2 + k, E, c[:4096], size=len(c)) for k, c in enumerate(cut)]
    chunks += [DataChunk(20, I, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), DataChunk(21, E, b"$1\r\nv\r\n")]
    out, p = run(Protocol.REDIS, Role.SERVER, chunks)
    assert [(r["req_cmd"], r["req_args"], r["latency"]) for r in out] == [("COMMAND DOCS", "[]", 1), ("GET", '{"key":"k"}', 1)]
    # the reply's whole entries within the 4,096 bytes seen, cut at Pixie's 1,024 characters
    resp = out[0]["resp"]
    assert resp.startswith('{"cmd0":"{\\"summary\\":\\"some command\\",\\"group\\":\\"integer\\"')
    assert '"cmd4":' in resp and "cmd100" not in resp and "cmd399" not in resp
    assert resp.endswith("... [TRUNCATED]") and len(resp) == 1024 + len("... [TRUNCATED]")
    assert out[1]["resp"] == "v"
    assert p.stats.unmatched_responses == 0 and p.stats.truncated == len(cut)


def test_redis_a_request_cut_by_the_copy_bound_is_still_answered_by_its_own_reply():
    big = b"x" * 100_000
    set_cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + big + b"\r\n"
    chunks = [DataChunk(1, E, set_cmd[:4096], size=len(set_cmd)),
              DataChunk(2, E, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
              DataChunk(3, I, b"+OK\r\n"), DataChunk(4, I, b"$1\r\nx\r\n")]
    out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_cmd"], r["resp"], r["latency"]) for r in out] == [("SET", "OK", 2), ("GET", "x", 2)]
    assert out[0]["req_args"].startswith('{"key":"k","value":"xxx') and out[0]["req_args"].endswith("... [TRUNCATED]")
    assert out[1]["req_args"] == '{"key":"k"}'
    assert p.stats.unmatched_responses == 0 and p.stats.unmatched_requests == 0


def test_redis_replies_lost_from_the_ring_end_the_waiting_requests_and_pairing_resumes_after():
    # two pipelined GETs; the ring lost the replies' bytes: neither request gets a wrong reply
    chunks = [DataChunk(1, E, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n"),
              DataChunk(3, I, b"$2\r\nbb\r\n", gap=7),  # "$1\r\na\r\n" never arrived, then b's reply
              DataChunk(4, E, b"*1\r\n$4\r\nPING\r\n"), DataChunk(5, I, b"+PONG\r\n")]
    out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_cmd"], r["req_args"], r["resp"]) for r in out] == [
        ("GET", '{"key":"a"}', "... [TRUNCATED]"), ("PING", "{}", "PONG")]
    assert p.stats.unmatched_requests == 1  # GET b: its reply may have been in the lost bytes
    assert p.stats.unmatched_responses == 0  # "bb" comes while no request waits: skipped with the cut, not a reply


def test_redis_a_big_bulk_reply_cut_by_the_copy_bound_keeps_the_pipeline_paired():
    # GET a, GET b, GET c pipelined; a's value is 100 KB, so the sensor copies 4,096 bytes of
    # the write that carries it. Its length line says where it ends: the next write, which
    # starts right there, carries b's and c's replies and they still pair.
    big = b"$100000\r\n" + b"v" * 100_000 + b"\r\n"
    chunks = [DataChunk(1, E, b"".join(b"*2\r\n$3\r\nGET\r\n$1\r\n%s\r\n" % k for k in (b"a", b"b", b"c"))),
              DataChunk(2, I, big[:4096], size=len(big)),
              DataChunk(3, I, b"$1\r\nb\r\n$1\r\nc\r\n")]
    out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_args"], r["latency"]) for r in out] == [('{"key":"a"}', 1), ('{"key":"b"}', 2), ('{"key":"c"}', 2)]
    assert out[0]["resp"] == "v" * 1024 + "... [TRUNCATED]"
    assert [r["resp"] for r in out[1:]] == ["b", "c"]
    assert p.stats.unmatched_requests == p.stats.unmatched_responses == 0
    assert p.stats.truncated == 1


def test_redis_bytes_lost_inside_a_bulk_reply_are_skipped_by_its_length():
    # the ring lost 50,000 bytes from the middle of a's 100 KB reply: the rest of it, in later
    # writes, is skipped by the length its first line gave, and b's reply after it pairs
    big = b"$100000\r\n" + b"v" * 100_000 + b"\r\n"
    head, lost, mid = 4096, 50_000, 1000
    chunks = [DataChunk(1, E, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n"),
              DataChunk(2, I, big[:head]),
              DataChunk(3, I, big[head + lost: head + lost + mid], gap=lost),
              DataChunk(4, I, big[head + lost + mid:] + b"$1\r\nb\r\n")]
    out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_args"], r["resp"][:3], r["latency"]) for r in out] == [
        ('{"key":"a"}', "vvv", 2), ('{"key":"b"}', "b", 3)]
    assert out[0]["resp"].endswith("... [TRUNCATED]")
    assert p.stats.unmatched_requests == p.stats.unmatched_responses == 0
    assert p.stats.bytes_skipped == len(big) - lost  # every byte of a's reply that arrived; the lost ones are not
    # a loss past the end of a bulk string is a cut as before: the waiting request's reply
    # may have been in it
    chunks = [DataChunk(1, E, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n"),
              DataChunk(2, I, big[:head], size=len(big) + 7)]  # b's "$1\r\nb\r\n" was cut too
    out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_args"], r["resp"][-15:]) for r in out] == [('{"key":"a"}', "... [TRUNCATED]")]
    assert p.stats.unmatched_requests == 1
    # a cut reply that no request waits for is an unmatched response, bulk or aggregate, as
    # a whole one would be
    for reply in (big, b"*2\r\n$1\r\nx\r\n$100000\r\n" + b"v" * 100_000 + b"\r\n"):
        chunks = [DataChunk(1, E, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"), DataChunk(2, I, b"$1\r\nx\r\n"),
                  DataChunk(3, I, reply[:head], size=len(reply))]
        out, p = run(Protocol.REDIS, Role.CLIENT, chunks)
        assert [r["resp"] for r in out] == ["x"]
        assert (p.stats.unmatched_requests, p.stats.unmatched_responses) == (0, 1)


def test_redis_a_subscriber_keeps_its_messages_after_lost_bytes():
    msg = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n"
    chunks = [DataChunk(1, E, b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"),
              DataChunk(2, I, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"),
              DataChunk(4, I, msg, gap=len(msg)),  # one message lost, the next one whole
              DataChunk(5, I, msg)]
    out, _ = run(Protocol.REDIS, Role.CLIENT, chunks)
    assert [(r["req_cmd"], r["resp"], r["time_"]) for r in out] == [
        ("SUBSCRIBE", '["subscribe","c","1"]', 2), ("PUSH PUB", '["message","c","hi"]', 4),
        ("PUSH PUB", '["message","c","hi"]', 5)]


def test_redis_bytes_lost_before_the_role_was_known_take_lost_mode_when_replayed():
    # a connection older than the agent (Role.UNKNOWN): the first write seen lost its first 30
    # bytes, the start of a SET whose value holds RESP text. Its direction is not known until the
    # server's "+OK"; the held write is then replayed and must be skipped as the rest of the cut
    # command, as it is when the role is known from the start, not parsed as "VVVV" and "DEL k"
    chunks = [DataChunk(1, I, b"vvvv\r\n*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n", gap=30), DataChunk(2, E, b"+OK\r\n"),
              DataChunk(3, I, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), DataChunk(4, E, b"$2\r\nvv\r\n")]
    for role in (Role.UNKNOWN, Role.SERVER):
        out, p = run(Protocol.REDIS, role, chunks)
        assert [(r["req_cmd"], r["req_args"], r["resp"], r["latency"]) for r in out] == [
            ("", "... [TRUNCATED]", "OK", 1), ("GET", '{"key":"k"}', "vv", 1)], role
        assert p.stats.bytes_skipped == 26 and p.stats.unmatched_requests == p.stats.unmatched_responses == 0


# -- DNS --------------------------------------------------------------------------------------
def name(n: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in n.split(".")) + b"\0"


def test_dns_compression_loop_is_rejected_and_counted():
    msg = struct.pack("!6H", 1, 0x8180, 1, 1, 0, 0) + name("a.test") + struct.pack("!HH", 1, 1)
    looped = msg + b"\xc0\x1c" + struct.pack("!HHIH", 1, 1, 1, 4) + b"\x01\x02\x03\x04"  # points at itself
    try:
        parse_message(looped)
        raise AssertionError("a self-pointing name must not parse")
    except DNSFormatError:
        pass
    p = DNSParser(Role.CLIENT, tcp=False)
    assert p.feed(DataChunk(1, I, looped)) == [] and p.stats.invalid == 1


def test_dns_tcp_two_queries_in_one_read_answered_out_of_order():
    q1 = struct.pack("!6H", 11, 0x0100, 1, 0, 0, 0) + name("a.test") + struct.pack("!HH", 1, 1)
    q2 = struct.pack("!6H", 12, 0x0100, 1, 0, 0, 0) + name("b.test") + struct.pack("!HH", 28, 1)
    a2 = (struct.pack("!6H", 12, 0x8183, 1, 0, 0, 0) + q2[12:])  # NXDOMAIN
    a1 = (struct.pack("!6H", 11, 0x8180, 1, 1, 0, 0) + q1[12:] + b"\xc0\x0c"
          + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1]))
    frame = lambda m: struct.pack("!H", len(m)) + m  # noqa: E731
    out, p = run(Protocol.DNS, Role.CLIENT, [DataChunk(1, E, frame(q1) + frame(q2)),
                                             DataChunk(5, I, frame(a2)[:3]), DataChunk(6, I, frame(a2)[3:] + frame(a1))])
    assert [json.loads(r["resp_header"])["rcode"] for r in out] == [3, 0]
    assert json.loads(out[1]["resp_body"]) == {"answers": [{"name": "a.test", "type": "A", "addr": "192.0.2.1"}]}
    assert [r["latency"] for r in out] == [5, 5]
