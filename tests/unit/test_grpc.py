"""gRPC bodies (src/andon/protocols/grpc.py): protobuf without its schema, printed as
``protoc --decode_raw`` prints it (protoc, from the setup's packages, is the oracle), cut and
framed as Pixie shows gRPC bodies; and the HTTP/2 parser's gRPC rows."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from andon.protocols import grpc
from andon.protocols.base import DataChunk, Direction, Role
from andon.protocols.http import BODY_KEEP
from andon.protocols.http2 import PREFACE, HTTP2Parser

sys.path.insert(0, str(Path(__file__).parent))
from test_http2 import DATA, END_STREAM, SETTINGS, Peer, frame  # noqa: E402  (its frame builders)

from servers import pb_varint as varint  # noqa: E402  (tests/servers.py: protobuf's varint)

E, I = Direction.EGRESS, Direction.INGRESS


def ld(num: int, v: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(v)) + v


def msg(pb: bytes, flag: int = 0) -> bytes:
    """One gRPC length-prefixed message."""
    return bytes([flag]) + struct.pack("!I", len(pb)) + pb


def decode_raw(b: bytes) -> str | None:
    r = subprocess.run(["protoc", "--decode_raw"], input=b, capture_output=True, timeout=30)
    return r.stdout.decode().rstrip("\n") if r.returncode == 0 else None


# -- protobuf's wire format, schema unknown --------------------------------------------------
numbers = st.sampled_from([1, 2, 5, 15, 16, 2047, 2048, (1 << 29) - 1])
scalar = st.one_of(
    st.tuples(numbers, st.integers(0, (1 << 64) - 1)).map(lambda t: varint(t[0] << 3) + varint(t[1])),
    st.tuples(numbers, st.binary(min_size=8, max_size=8)).map(lambda t: varint(t[0] << 3 | 1) + t[1]),
    st.tuples(numbers, st.binary(min_size=4, max_size=4)).map(lambda t: varint(t[0] << 3 | 5) + t[1]),
    st.tuples(numbers, st.one_of(st.binary(max_size=90), st.text(max_size=40).map(str.encode))).map(
        lambda t: ld(*t)),
)
message = st.recursive(
    st.lists(scalar, max_size=5).map(b"".join),
    lambda inner: st.lists(st.one_of(
        scalar,
        st.tuples(numbers, inner).map(lambda t: ld(*t)),  # a nested message
        st.tuples(numbers, inner).map(lambda t: varint(t[0] << 3 | 3) + t[1] + varint(t[0] << 3 | 4)),  # a group
    ), max_size=5).map(b"".join),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=message)
def test_messages_print_as_protoc_decode_raw_prints_them(b):
    want = decode_raw(b)
    assert want is not None, b.hex()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpc, "MAX_STR", 1 << 30)  # protoc does not cut strings
        assert grpc.pb_text(b) == (want, True)


@settings(max_examples=150, deadline=None)
@given(b=st.binary(max_size=60))
def test_random_bytes_parse_where_protoc_parses_and_fail_where_it_fails(b):
    want = decode_raw(b)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grpc, "MAX_STR", 1 << 30)
        text, ok = grpc.pb_text(b)
    assert ok == (want is not None), b.hex()
    if ok:
        assert text == want


def test_pixies_own_cases():
    """The cases of Pixie's grpc_test.cc: a string that parses as a message is shown as one,
    as protobuf's printer does; concatenated messages; a long string cut after 64 bytes."""
    assert grpc.body_text("application/grpc", "", msg(ld(1, b"pixielabs"))) == \
        "1 {\n  14: 105\n  15: 105\n  12: 0x7362616c\n}"
    assert grpc.body_text("application/grpc", "", msg(ld(1, b"Hello world")) * 3) == \
        '1: "Hello world"\n1: "Hello world"\n1: "Hello world"'
    long = b"This is a long string. It is so long that is expected to get truncated. Yes, longer."
    assert grpc.body_text("application/grpc", "", msg(ld(1, long))) == f'1: "{long[:64].decode()}...<truncated>..."'
    for short in (b"a", b"aa", b"aaa", b"aaaa"):
        assert grpc.body_text("application/grpc", "", short) == grpc.FAILED
    assert grpc.body_text("application/grpc", "", b"aaaaa") == ""  # flag 'a', a length past the end, no bytes
    assert grpc.body_text("application/grpc", "", msg(b"test")) == grpc.FAILED  # 't': wire type 4 at the top


def test_a_message_cut_short_prints_the_fields_before_the_cut():
    pb = varint(1 << 3) + varint(100) + varint(2 << 3) + varint(200) + ld(3, b"a string")
    whole = msg(pb)
    assert grpc.body_text("application/grpc", "", whole) == '1: 100\n2: 200\n3: "a string"'
    assert grpc.body_text("application/grpc", "", whole[:5 + 5]) == "1: 100\n2: 200"
    assert grpc.body_text("application/grpc", "", whole[:5 + 4]) == "1: 100"  # 200's varint cut
    assert grpc.body_text("application/grpc", "", whole[:5 + 1]) == grpc.FAILED


def test_compressed_messages_are_inflated_with_gzip_and_marked_otherwise():
    pb = ld(1, b"compressed hello")
    z = msg(gzip.compress(pb), flag=1)
    assert grpc.body_text("application/grpc", "gzip", z + msg(ld(2, b"plain"))) == \
        '1: "compressed hello"\n2: "plain"'
    assert grpc.body_text("application/grpc", "snappy", z) == "<Non-gzip decompression not supported: snappy>"
    assert grpc.body_text("application/grpc", "gzip", msg(b"\x1f\x8bnot gzip", flag=1)) == "<Failed to gunzip data>"
    bomb = msg(gzip.compress(ld(1, b"x" * 1_000_000)), flag=1)
    assert len(grpc.body_text("application/grpc", "gzip", bomb)) < 200  # inflated up to INFLATE_MAX only
    # many small bombs in one kept body, each 90 KB of 3-byte fields: inflated to INFLATE_MAX in
    # all (a line a field), not 64 KiB each as before
    small = msg(gzip.compress(ld(1, b"g") * 30000), flag=1)
    many = small * (BODY_KEEP // len(small))
    assert len(many) // len(small) >= 7
    text = grpc.body_text("application/grpc", "gzip", many)
    assert text.count("\n") + 1 == grpc.INFLATE_MAX // 3 and set(text.split("\n")) == {'1: "g"'}


def test_grpc_json_messages_are_shown_as_text():
    assert grpc.body_text("application/grpc+json", "", msg(b'{"name": "x"}')) == '{"name": "x"}'


@settings(max_examples=300, deadline=None)
@given(b=st.binary(max_size=300), enc=st.sampled_from(["", "gzip", "identity"]))
def test_hostile_bodies_never_raise(b, enc):
    out = grpc.body_text("application/grpc", enc, b)
    assert isinstance(out, str) and len(out) <= 8 * len(b) + 200


# -- gRPC over the HTTP/2 parser ---------------------------------------------------------------
def grpc_call(cli: Peer, srv: Peer, sid: int, method: str, req: bytes, resp: bytes | None, status: int,
              message: str = "") -> tuple[bytes, bytes]:
    """A unary call as grpc's C core writes it: request headers, one DATA with the message and
    END_STREAM; response headers, DATA, then trailers. No response message: trailers only."""
    c = cli.headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "127.0.0.1:50051"),
                          ("te", "trailers"), ("content-type", "application/grpc"), ("user-agent", "grpc-python/1.85.1")],
                    end_stream=False)
    c += frame(DATA, END_STREAM, sid, msg(req))
    trailers = [("grpc-status", str(status))] + ([("grpc-message", message)] if message else [])
    if resp is None:
        s = srv.headers(sid, [(":status", "200"), ("content-type", "application/grpc"), *trailers], end_stream=True)
    else:
        s = srv.headers(sid, [(":status", "200"), ("content-type", "application/grpc")], end_stream=False)
        s += frame(DATA, 0, sid, msg(resp)) + srv.headers(sid, trailers, end_stream=True)
    return c, s


def test_grpc_calls_become_rows_with_their_messages_decoded():
    cli, srv = Peer(), Peer()
    c, s = PREFACE + frame(SETTINGS, 0, 0, b""), frame(SETTINGS, 0, 0, b"")
    c1, s1 = grpc_call(cli, srv, 1, "/demo.Greeter/SayHello", ld(1, b"world"), ld(1, b"Hello, world!"), 0)
    c2, s2 = grpc_call(cli, srv, 3, "/demo.Greeter/Fail", ld(1, b"x") + varint(2 << 3) + varint(7), None, 5, "no such x")
    rows = []
    p = HTTP2Parser(Role.SERVER)
    for t, (d, b) in enumerate([(I, c + c1), (E, s + s1), (I, c2), (E, s2)]):
        rows += p.feed(DataChunk(1000 + t * 10, d, b))
    assert [(r["req_method"], r["req_path"], r["resp_status"], r["content_type"]) for r in rows] == [
        ("POST", "/demo.Greeter/SayHello", 200, 2), ("POST", "/demo.Greeter/Fail", 200, 2)]
    ok, fail = rows
    assert (ok["req_body"], ok["resp_body"]) == ('1: "world"', '1: "Hello, world!"')
    assert (ok["req_body_size"], ok["resp_body_size"]) == (5 + 7, 5 + 15)  # the bytes on the wire, prefixes included
    assert json.loads(ok["resp_headers"])["grpc-status"] == "0"  # the trailers are in the response's headers
    assert (fail["req_body"], fail["resp_body"], fail["resp_body_size"]) == ('1: "x"\n2: 7', "", 0)
    assert (json.loads(fail["resp_headers"])["grpc-status"], json.loads(fail["resp_headers"])["grpc-message"]) == \
        ("5", "no such x")
    assert p.stats.records == 2 and p.stats.invalid == 0


def test_after_a_loss_a_grpc_connections_bodies_are_still_decoded_when_framed_as_grpc():
    """After a loss the content-type may name an HPACK entry added before it (left out): on a
    connection that carried gRPC, bodies framed exactly as gRPC's are still decoded; a body
    that is not is left as it is."""
    cli, srv = Peer(), Peer()
    c0, s0 = grpc_call(cli, srv, 1, "/demo.Greeter/SayHello", ld(1, b"one"), ld(1, b"Hello, one!"), 0)
    c1, s1 = grpc_call(cli, srv, 3, "/demo.Greeter/SayHello", ld(1, b"lost"), ld(1, b"Hello, lost!"), 0)
    c2, s2 = grpc_call(cli, srv, 5, "/demo.Greeter/SayHello", ld(1, b"two"), ld(1, b"Hello, two!"), 0)
    c3, _ = grpc_call(cli, srv, 7, "/demo.Greeter/SayHello", ld(1, b"x"), None, 0)
    s3 = srv.headers(7, [(":status", "200"), ("content-type", "application/grpc")], end_stream=False)
    s3 += frame(DATA, END_STREAM, 7, b"not grpc framing")
    p = HTTP2Parser(Role.SERVER)
    rows = p.feed(DataChunk(1, I, PREFACE + c0)) + p.feed(DataChunk(2, E, s0))
    rows += p.feed(DataChunk(3, I, c2, gap=len(c1))) + p.feed(DataChunk(4, E, s2, gap=len(s1)))
    rows += p.feed(DataChunk(5, I, c3)) + p.feed(DataChunk(6, E, s3))
    assert p.stats.unknown_headers > 0 and p.stats.invalid == 2
    assert [(r["req_path"], r["content_type"], r["req_body"], r["resp_body"]) for r in rows] == [
        ("/demo.Greeter/SayHello", 2, '1: "one"', '1: "Hello, one!"'),
        ("", 2, '1: "two"', '1: "Hello, two!"'),  # path and content-types named lost entries
        ("", 0, "\x00\x00\x00\x00\x03\n\x01x", "<removed: unknown content-type>"),  # a response not framed as gRPC
    ]
