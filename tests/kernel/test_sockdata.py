"""The socket data sensor (bpf/net/sockdata.bpf.c) on real sockets.

Each test loads the sensor, runs a CHILD Python process that does the socket work (the
sensor ignores the pytest process itself, as the agent ignores its own pid), reads the
ring, and asserts on the decoded records of that child only. Every test runs on both
entry points (tp_btf and raw_tp).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from andon.errors import UsageError
from andon.events.sockdata import (
    AF_UNIX,
    CLOSE_EXEC,
    CLOSE_EXIT,
    CLOSE_REUSED,
    CLOSE_SYSCALL,
    F_ADDR,
    F_NOCOPY,
    F_TRUNCATED,
    NR_SENDFILE,
    NR_SPLICE,
    ORIGIN_ACCEPT,
    ORIGIN_CONNECT,
    ORIGIN_DATA,
    ConnClose,
    ConnOpen,
    Data,
    SockSettings,
    SockSource,
    role_mask,
    wakeup_bytes,
)
from andon.events.live import default_bpf_dir
from andon.protocols.base import Direction, Protocol, Role

if not (default_bpf_dir() / "net/sockdata.bpf.o").exists():
    pytest.skip("net/sockdata.bpf.o is not built: run `make bpf`", allow_module_level=True)

NR_WRITE, NR_READV, NR_WRITEV, NR_SENDTO, NR_RECVFROM, NR_SENDMSG, NR_RECVMSG = 1, 19, 20, 44, 45, 46, 47

REQ = b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

# A child that serves one connection on a thread and is its own client. The server side
# receives until it has the whole request, answers, closes. Prints {"port": P}.
# The server's side of one exchange, on the listening socket srv (a global of the child).
SERVE_ONE = r"""
def serve():
    c, _ = srv.accept()
    got = b""
    while len(got) < len(REQ):
        got += c.recv(65536)
    c.sendall(RESP)
    c.close()
"""

HTTP_CHILD = r"""
import json, os, socket, sys, threading
REQ, RESP = {req!r}, {resp!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]""" + SERVE_ONE + r"""t = threading.Thread(target=serve); t.start()
k = socket.create_connection(("127.0.0.1", port))
{client}
k.close(); t.join(); srv.close()
print(json.dumps({{"port": port}}))
"""


GATE = "import sys; sys.stdin.readline()\n"  # the child waits until its pid is traced
# run_child's: the child says it is up first. Popen returns when the exec closes its
# close-on-exec pipe, before execve(2) returns: a pid traced then can see its execve return,
# the sensor's record of a new executable (woken at once, by design) among the child's
UP_GATE = "import sys; print('up', flush=True); sys.stdin.readline()\n"


def run_child(src: SockSource, code: str, *prefix: str, timeout: float = 15.0) -> tuple[int, dict]:
    """Run code in a child Python traced by src (its pid added to the filter once it runs
    Python, before it starts its work); returns its pid and the JSON it printed last."""
    p = subprocess.Popen([*prefix, sys.executable, "-c", UP_GATE + code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "up\n", "child did not start"
        src.add_pid(p.pid)
        out, err = p.communicate("go\n", timeout=timeout)
    finally:
        p.kill()
    assert p.returncode == 0, f"child failed: {err}"
    lines = out.strip().splitlines()
    return p.pid, json.loads(lines[-1]) if lines else {}


def http_child(client: str, req: bytes = REQ, resp: bytes = RESP) -> str:
    return HTTP_CHILD.format(req=req, resp=resp, client=client)


HOOKS = ["tp_btf", "raw_tp"]


@pytest.fixture(scope="module", params=HOOKS)
def shared(request: pytest.FixtureRequest) -> Iterator[SockSource]:
    """One loaded sensor per entry point for the tests that take default settings (a load
    verifies the program, about a second): it traces only the pids the tests add."""
    src = SockSource(SockSettings(hook=request.param, pids=frozenset()))
    src.start()
    assert src.hook == f"{request.param}/sys_exit"
    yield src
    src.close()


@pytest.fixture
def sd(shared: SockSource) -> Iterator[SockSource]:
    shared.set_protocols(shared.settings.protocols)
    yield shared
    shared.set_protocols(shared.settings.protocols)


@pytest.fixture(params=HOOKS)
def sockdata(request: pytest.FixtureRequest) -> Iterator[Callable[..., SockSource]]:
    """``sockdata(**settings)``: a sensor of its own with these settings, on one entry
    point, tracing only the pids the test adds; closed at the end."""
    started: list[SockSource] = []

    def start(**settings: object) -> SockSource:
        settings.setdefault("pids", frozenset())
        src = SockSource(SockSettings(hook=request.param, **settings))  # type: ignore[arg-type]
        started.append(src)
        src.start()
        assert src.hook == f"{request.param}/sys_exit"
        return src

    yield start
    for src in reversed(started):
        src.close()


def collect(src: SockSource, pids: set[int], until: Callable[[list], bool] | None = None, timeout: float = 3.0) -> list:
    """The child's records: read until ``until(records)`` or the ring stays quiet after timeout."""
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out.extend(r for r in src.read(0.05) if r.pid in pids)
        if until is not None and until(out):
            # the ring may still hold this child's later records: take what is there
            out.extend(r for r in src.read(0.0) if r.pid in pids)
            break
    return out


def closes(n: int) -> Callable[[list], bool]:
    return lambda recs: sum(isinstance(r, ConnClose) for r in recs) >= n


def by_conn(recs: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in recs:
        out.setdefault(r.conn_id, []).append(r)
    return out


def payload(recs: list, direction: Direction) -> bytes:
    return b"".join(r.data for r in recs if isinstance(r, Data) and r.direction == direction)


def split_roles(recs: list) -> tuple[list, list]:
    """(client connection records, server connection records) of a one-connection child."""
    conns = by_conn(recs)
    assert len(conns) == 2, f"expected two connections, got {conns}"
    opens = {cid: next(r for r in rs if isinstance(r, ConnOpen)) for cid, rs in conns.items()}
    client = next(cid for cid, o in opens.items() if o.role == Role.CLIENT)
    server = next(cid for cid, o in opens.items() if o.role == Role.SERVER)
    return conns[client], conns[server]


# -- HTTP over TCP: records, directions, roles, ports, close ----------------------------------


def test_http_request_response_both_ends(sd):
    src = sd
    # TRIGGER
    pid, info = run_child(src, http_child("k.sendall(REQ)\ngot = b''\nwhile len(got) < len(RESP): got += k.recv(65536)"))
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    client, server = split_roles(recs)
    copen, sopen = client[0], server[0]
    assert isinstance(copen, ConnOpen) and isinstance(sopen, ConnOpen)
    assert copen.origin == ORIGIN_CONNECT and sopen.origin == ORIGIN_ACCEPT
    assert (copen.family, copen.l4) == (socket.AF_INET, 6)
    assert (copen.raddr, copen.rport, copen.laddr) == ("127.0.0.1", info["port"], "127.0.0.1")
    assert (sopen.laddr, sopen.lport) == ("127.0.0.1", info["port"])
    assert sopen.rport == copen.lport and copen.rport == sopen.lport
    assert copen.netns == sopen.netns == os.stat("/proc/self/ns/net").st_ino
    assert copen.comm == "python" or copen.comm.startswith("python")

    assert payload(client, Direction.EGRESS) == REQ
    assert payload(client, Direction.INGRESS) == RESP
    assert payload(server, Direction.INGRESS) == REQ
    assert payload(server, Direction.EGRESS) == RESP
    for r in client + server:
        if isinstance(r, Data):
            assert r.protocol == Protocol.HTTP and r.gap == 0 and not r.truncated
    cdata = [r for r in client if isinstance(r, Data)]
    assert all(r.role == Role.CLIENT for r in cdata)
    assert cdata[0].nr == NR_SENDTO  # Python's sendall is send(2), i.e. sendto with no address
    assert cdata[0].chunk().direction == Direction.EGRESS and cdata[0].chunk().data == REQ

    cclose, sclose = client[-1], server[-1]
    assert isinstance(cclose, ConnClose) and isinstance(sclose, ConnClose)
    assert (cclose.bytes_sent, cclose.bytes_recv) == (len(REQ), len(RESP))
    assert (sclose.bytes_sent, sclose.bytes_recv) == (len(RESP), len(REQ))
    assert cclose.reason == sclose.reason == CLOSE_SYSCALL
    assert cclose.protocol == Protocol.HTTP
    assert src.stats()["drops"] == 0


def test_writev_readv_and_sendmsg_recvmsg(sd):
    src = sd
    # TRIGGER: the request goes out as two iovecs by sendmsg, the response is read by
    # readv into two buffers; then a second exchange by writev / recvmsg
    client = r"""
import os
k.sendmsg([REQ[:10], REQ[10:]])
a, b = bytearray(7), bytearray(100)
n = os.readv(k.fileno(), [a, b])
assert n == len(RESP), n
"""
    code = http_child(client).replace(
        "    c.sendall(RESP)\n    c.close()",
        "    c.sendall(RESP)\n    got = b''\n"
        "    while len(got) < 8: got += c.recvmsg(100)[0]\n    c.close()",
    ).replace("k.close(); t.join()", "os.writev(k.fileno(), [b'GET ', b'/x\\r\\n']); t.join(); k.close()")
    pid, _ = run_child(src, code)
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    client_recs, server_recs = split_roles(recs)
    cdata = [r for r in client_recs if isinstance(r, Data)]
    assert [(r.nr, r.direction, r.data) for r in cdata] == [
        (NR_SENDMSG, Direction.EGRESS, REQ),
        (NR_READV, Direction.INGRESS, RESP),
        (NR_WRITEV, Direction.EGRESS, b"GET /x\r\n"),
    ]
    assert [r.pos for r in cdata] == [0, 0, len(REQ)]
    sdata = [r for r in server_recs if isinstance(r, Data) and r.nr == NR_RECVMSG]
    assert b"".join(r.data for r in sdata) == b"GET /x\r\n"


def test_a_call_with_hundreds_of_iovecs_is_copied_whole(sd):
    """gRPC's C core writes a header block as one iovec a string (25 for a small call, up to
    260). Every iovec is walked, empty ones included: before, the walk stopped at 16 and the
    rest of the request was lost."""
    src = sd
    # TRIGGER: the request as 300 empty iovecs then one iovec a byte; the response read by
    # readv into one buffer a byte
    client = r"""
import os
n = k.sendmsg([b""] * 300 + [bytes([c]) for c in REQ])
assert n == len(REQ), n
bufs = [bytearray(1) for _ in range(len(RESP))]
got = 0
while got < len(RESP):
    got += os.readv(k.fileno(), bufs[got:])
"""
    pid, _ = run_child(src, http_child(client))
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    client_recs, server_recs = split_roles(recs)
    cdata = [r for r in client_recs if isinstance(r, Data)]
    assert 300 + len(REQ) > 260 and len(RESP) > 16
    assert (cdata[0].nr, cdata[0].data, cdata[0].gap, cdata[0].truncated) == (NR_SENDMSG, REQ, 0, False)
    assert b"".join(r.data for r in cdata if r.nr == NR_READV) == RESP
    assert all(r.gap == 0 for r in cdata)
    assert b"".join(r.data for r in server_recs if isinstance(r, Data) and r.direction == Direction.INGRESS) == REQ


# A client that uploads N body bytes in 4,000-byte writes to a server on a thread.
BULK_CHILD = r"""
import json, socket, threading
N = {n}
HEAD = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % N
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept()
    got = 0
    while got < len(HEAD) + N:
        got += len(c.recv(65536))
    c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    c.close()
t = threading.Thread(target=serve); t.start()
k = socket.create_connection(("127.0.0.1", port))
k.sendall(HEAD)
for _ in range(N // 4000):
    k.sendall(b"x" * 4000)
k.recv(100); k.close(); t.join(); srv.close()
print(json.dumps({{"port": port}}))
"""


def _woken(src: SockSource, timeout: float) -> bool:
    """Whether the kernel woke the ring's reader (its edge-triggered epoll) within timeout."""
    return bool(src.reader._ep.poll(timeout))


@pytest.mark.parametrize("step", [64 * 1024, 0])
def test_reader_is_woken_at_the_backlog_step_not_per_record(sockdata, step):
    # a sensor that wakes its reader each time the backlog crosses a multiple of 64 KiB
    # (the agent's mode), or at the first record after the reader caught up (step 0)
    src = sockdata(wakeup_bytes=step)
    assert src.reader.batch_bytes == (step or 64 * 1024)
    assert not _woken(src, 0)
    # TRIGGER: one small exchange: a handful of records, far below the step
    pid, _ = run_child(src, http_child("k.sendall(REQ)\ngot = b''\nwhile len(got) < len(RESP): got += k.recv(65536)"))
    deadline = time.monotonic() + 3
    while src.reader.pending_bytes() < 4 * 64 and time.monotonic() < deadline:
        time.sleep(0.01)
    pending = src.reader.pending_bytes()
    # ASSERT: the records are there; only the adaptive mode woke the reader for them
    assert 4 * 64 <= pending < 64 * 1024
    assert _woken(src, 0.2) == (step == 0)
    recs = collect(src, {pid}, closes(2))
    assert payload(split_roles(recs)[1], Direction.INGRESS) == REQ
    assert src.reader.pending_bytes() == 0
    # TRIGGER: 100 writes of 4,000 bytes each way in the ring: the backlog crosses 64 KiB
    # several times while nobody reads
    bulk, _ = run_child(src, BULK_CHILD.format(n=400_000))
    # ASSERT: the reader is woken, and what woke it is at least one step of backlog
    assert _woken(src, 2.0)
    assert src.reader.pending_bytes() >= 64 * 1024
    got = sum(r.size for r in collect(src, {bulk}, closes(2))
              if isinstance(r, Data) and r.direction == Direction.EGRESS and r.role == Role.CLIENT)
    assert got == 400_000 + len(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 400000\r\n\r\n")
    assert src.stats()["drops"] == 0


def test_wakeup_step_must_be_a_power_of_two():
    with pytest.raises(UsageError, match="wakeup_bytes must be 0 or a power of two"):
        SockSettings(wakeup_bytes=100_000)
    with pytest.raises(UsageError, match="at least 4096"):
        SockSettings(wakeup_bytes=2048)


def test_default_wakeup_step_is_a_sixteenth_of_the_ring():
    assert wakeup_bytes(8 << 20, None) == 512 * 1024
    assert wakeup_bytes(256 * 1024, None) == 64 * 1024  # at least 64 KiB
    assert wakeup_bytes(64 * 1024, None) == 32 * 1024  # never more than half the ring
    assert wakeup_bytes(8 << 20, 4096) == 4096
    assert wakeup_bytes(8 << 20, 0) == 0


def test_large_write_is_cut_at_the_copy_bound(sd):
    src = sd
    bound = src.settings.max_copy
    body = bytes(range(256)) * 40  # 10240 bytes, beyond the default bound of 4096
    req = b"POST /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    # TRIGGER
    pid, _ = run_child(src, http_child("k.sendall(REQ)\nk.recv(100)", req=req))
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    client, server = split_roles(recs)
    out = [r for r in client if isinstance(r, Data) and r.direction == Direction.EGRESS]
    assert len(out) == 1
    assert out[0].size == len(req) and out[0].data == req[:bound]
    assert out[0].truncated and out[0].flags & F_TRUNCATED
    assert out[0].chunk().truncated == len(req) - bound
    # the server's reads: each copied up to the bound, positions contiguous
    reads = [r for r in server if isinstance(r, Data) and r.direction == Direction.INGRESS]
    assert sum(r.size for r in reads) == len(req)
    pos = 0
    for r in reads:
        assert r.pos == pos and r.gap == 0 and r.data == req[pos : pos + min(r.size, bound)]
        pos += r.size
    assert src.stats()["truncated"] >= 1
    assert client[-1].bytes_sent == len(req)


# -- sendfile(2) and splice(2): sizes without data ---------------------------------------------

# A server on a thread answers two requests on one connection: the first response's body by
# sendfile from a file, the second's by splice from a pipe; then it takes a POST into a pipe
# by splice. The client sends and reads by send/recv. Prints {"port": P, "head": H}.
NOCOPY_CHILD = r"""
import json, os, socket, tempfile, threading
REQ, BODY = {req!r}, bytes(range(256)) * 12
POST = b"POST /up HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
f = tempfile.TemporaryFile(); f.write(BODY); f.flush()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def take(c, n):
    got = b""
    while len(got) < n:
        got += c.recv(n - len(got))
def serve():
    c, _ = srv.accept()
    r, w = os.pipe()
    take(c, len(REQ))
    c.sendall(HEAD)
    sent = 0
    while sent < len(BODY):
        sent += os.sendfile(c.fileno(), f.fileno(), sent, len(BODY) - sent)
    take(c, len(REQ))
    c.sendall(HEAD)
    os.write(w, BODY)
    moved = 0
    while moved < len(BODY):
        moved += os.splice(r, c.fileno(), len(BODY) - moved)
    moved = 0
    while moved < len(POST):
        n = os.splice(c.fileno(), w, len(POST) - moved)
        os.read(r, n)
        moved += n
    c.close()
t = threading.Thread(target=serve); t.start()
k = socket.create_connection(("127.0.0.1", port))
for _ in range(2):
    k.sendall(REQ)
    take(k, len(HEAD) + len(BODY))
k.sendall(POST)
t.join(); k.close(); srv.close()
print(json.dumps({{"port": port, "head": len(HEAD), "body": len(BODY), "post": len(POST)}}))
"""


def test_sendfile_and_splice_are_sizes_without_data(sd):
    src = sd
    before = src.stats()["nocopy_chunks"]
    # TRIGGER
    pid, info = run_child(src, NOCOPY_CHILD.format(req=REQ))
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    head, body, post = info["head"], info["body"], info["post"]
    client, server = split_roles(recs)
    out = [r for r in server if isinstance(r, Data) and r.direction == Direction.EGRESS]
    # the response heads are copied; the bodies are records of their size with no data,
    # at the positions they took in the stream
    assert [(r.nr, r.size, len(r.data), r.flags & F_NOCOPY) for r in out if not r.nocopy] == [
        (NR_SENDTO, head, head, 0)] * 2
    files = [r for r in out if r.nocopy]
    assert {(r.nr, r.data, r.flags & F_NOCOPY, r.protocol, r.role) for r in files} == {
        (nr, b"", F_NOCOPY, Protocol.HTTP, Role.SERVER) for nr in (NR_SENDFILE, NR_SPLICE)}
    assert sum(r.size for r in files if r.nr == NR_SENDFILE) == body
    assert sum(r.size for r in files if r.nr == NR_SPLICE) == body
    pos = 0
    for r in out:
        assert (r.pos, r.gap) == (pos, 0)
        pos += r.size
    assert pos == 2 * (head + body)
    # the POST taken by splice from the socket into a pipe: ingress sizes, after the requests
    inn = [r for r in server if isinstance(r, Data) and r.direction == Direction.INGRESS]
    spliced = [r for r in inn if r.nocopy]
    assert {(r.nr, r.data) for r in spliced} == {(NR_SPLICE, b"")}
    assert sum(r.size for r in spliced) == post
    assert spliced[0].pos == 2 * len(REQ)
    # the client read the same bytes by recv: copied, whole
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body + bytes(range(256)) * 12
    assert payload(client, Direction.INGRESS) == 2 * resp
    assert server[-1].bytes_sent == 2 * (head + body) and server[-1].bytes_recv == 2 * len(REQ) + post
    assert src.stats()["nocopy_chunks"] - before == len(files) + len(spliced)


def test_sendfile_before_the_protocol_is_known_is_skipped(sd):
    src = sd
    before = src.stats()
    # TRIGGER: the server's first bytes go by sendfile: nothing to infer from
    code = NOCOPY_CHILD.format(req=REQ).replace(
        "    take(c, len(REQ))\n    c.sendall(HEAD)\n    sent = 0", "    sent = 0", 1).replace(
        "for _ in range(2):\n    k.sendall(REQ)\n    take(k, len(HEAD) + len(BODY))",
        "take(k, len(BODY))\nfor _ in range(1):\n    k.sendall(REQ)\n    take(k, len(HEAD) + len(BODY))")
    pid, info = run_child(src, code)
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    client, server = split_roles(recs)
    out = [r for r in server if isinstance(r, Data) and r.direction == Direction.EGRESS]
    # the sendfile chunk came first, before any request: skipped, not a record; the
    # positions still count it
    assert [r.nr for r in out if r.nocopy] == [NR_SPLICE]
    assert out[0].pos == info["body"]
    after = src.stats()
    assert after["skipped_bytes"] - before["skipped_bytes"] >= info["body"]


# -- unix stream sockets ------------------------------------------------------------------------

# One HTTP exchange on each of: a unix socket bound to a path, one bound to an abstract name,
# and a socketpair (no name; no connect or accept either). Prints the addresses.
UNIX_CHILD = r"""
import json, os, socket, threading
REQ, RESP = {req!r}, {resp!r}""" + SERVE_ONE + r"""
path, abstract = {path!r}, b"\0andon-" + os.urandom(4).hex().encode()
for addr in (path, abstract):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(addr); srv.listen(1)
    t = threading.Thread(target=serve); t.start()
    k = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); k.connect(addr)
    k.sendall(REQ)
    got = b""
    while len(got) < len(RESP):
        got += k.recv(65536)
    k.close(); t.join(); srv.close()
a, b = socket.socketpair()
a.sendall(REQ); assert b.recv(65536) == REQ
b.sendall(RESP); assert a.recv(65536) == RESP
a.close(); b.close()
print(json.dumps({{"abstract": "@" + abstract[1:].decode()}}))
"""


def test_unix_stream_sockets_are_connections_named_by_their_path(sd, tmp_path):
    src = sd
    path = str(tmp_path / "http.sock")
    # TRIGGER
    pid, info = run_child(src, UNIX_CHILD.format(req=REQ, resp=RESP, path=path))
    recs = collect(src, {pid}, closes(6))
    # ASSERT
    conns = by_conn(recs)
    assert len(conns) == 6, conns
    opens = [rs[0] for rs in conns.values()]
    assert all(isinstance(o, ConnOpen) for o in opens)
    got = sorted((o.raddr, o.role, o.origin) for o in opens)
    assert got == sorted([
        (path, Role.CLIENT, ORIGIN_CONNECT), (path, Role.SERVER, ORIGIN_ACCEPT),
        (info["abstract"], Role.CLIENT, ORIGIN_CONNECT), (info["abstract"], Role.SERVER, ORIGIN_ACCEPT),
        ("", Role.UNKNOWN, ORIGIN_DATA), ("", Role.UNKNOWN, ORIGIN_DATA)])  # the pair: unnamed
    assert {(o.family, o.l4, o.lport, o.rport, o.laddr == o.raddr) for o in opens} == {(AF_UNIX, 0, 0, 0, True)}
    # the two ends of each connection name each other's kernel socket (an identity while the
    # socket lives: the exchanges run one after another, so a freed socket's may come back)
    for addr in (path, info["abstract"], ""):
        a, b = (o for o in opens if o.raddr == addr)
        assert a.sock_id and b.sock_id and (a.peer_id, b.peer_id) == (b.sock_id, a.sock_id)
    for rs in conns.values():
        role = next((r.role for r in rs if isinstance(r, Data)), None)  # the pair's: from its first message
        want = {Role.CLIENT: (REQ, RESP), Role.SERVER: (RESP, REQ)}[role]
        assert (payload(rs, Direction.EGRESS), payload(rs, Direction.INGRESS)) == want
        assert {r.protocol for r in rs if isinstance(r, Data)} == {Protocol.HTTP}
        close = rs[-1]
        assert isinstance(close, ConnClose) and (close.bytes_sent, close.bytes_recv) == tuple(map(len, want))
    assert src.stats()["drops"] == 0


def test_unix_sockets_off_are_not_traced(sockdata, tmp_path):
    src = sockdata(unix=False)
    # TRIGGER
    pid, _ = run_child(src, UNIX_CHILD.format(req=REQ, resp=RESP, path=str(tmp_path / "http.sock")))
    # ASSERT: nothing at all of this child (it made no inet socket)
    assert collect(src, {pid}, timeout=1.0) == []


# -- UDP: a DNS query and answer by sendto/recvfrom -------------------------------------------

DNS_QUERY = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
DNS_ANSWER = (struct.pack(">HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + b"\x07example\x03com\x00"
              + struct.pack(">HH", 1, 1) + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([10, 1, 2, 3]))

DNS_CHILD = r"""
import json, socket
Q, A = {q!r}, {a!r}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(("127.0.0.1", 0))
c.sendto(Q, s.getsockname())
q, peer = s.recvfrom(512)
s.sendto(A, peer)
a, _ = c.recvfrom(512)
assert a == A
print(json.dumps({{"server": s.getsockname()[1], "client": c.getsockname()[1]}}))
s.close(); c.close()
"""


def test_udp_dns_datagrams(sd):
    src = sd
    # TRIGGER
    pid, ports = run_child(src, DNS_CHILD.format(q=DNS_QUERY, a=DNS_ANSWER))
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    data = [r for r in recs if isinstance(r, Data)]
    assert all(r.protocol == Protocol.DNS for r in data)
    got = {(r.nr, r.direction, r.role, r.peer): r.data for r in data}
    assert got == {
        (NR_SENDTO, Direction.EGRESS, Role.CLIENT, ("127.0.0.1", ports["server"])): DNS_QUERY,
        (NR_RECVFROM, Direction.INGRESS, Role.SERVER, ("127.0.0.1", ports["client"])): DNS_QUERY,
        (NR_SENDTO, Direction.EGRESS, Role.SERVER, ("127.0.0.1", ports["client"])): DNS_ANSWER,
        (NR_RECVFROM, Direction.INGRESS, Role.CLIENT, ("127.0.0.1", ports["server"])): DNS_ANSWER,
    }
    assert all(r.flags & F_ADDR for r in data)
    opens = [r for r in recs if isinstance(r, ConnOpen)]
    assert sorted(o.lport for o in opens) == sorted(ports.values()) and all(o.l4 == 17 for o in opens)
    assert all(o.rport == 0 for o in opens)  # unconnected: the peer is per datagram


# -- protocol inference and the enabled set -----------------------------------------------------

_PG_PARAMS = b"user\0postgres\0database\0x\0\0"
PG_STARTUP = struct.pack(">II", 8 + len(_PG_PARAMS), 0x00030000) + _PG_PARAMS
PG_QUERY = b"Q" + struct.pack(">I", 4 + 9) + b"select 1\0"
MYSQL_QUERY = struct.pack("<I", 9)[:3] + b"\x00" + b"\x03select 1"
REDIS_PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.mark.parametrize(
    "req,proto",
    [(PG_STARTUP, Protocol.PGSQL), (PG_QUERY, Protocol.PGSQL), (MYSQL_QUERY, Protocol.MYSQL),
     (REDIS_PING, Protocol.REDIS), (REQ, Protocol.HTTP)],
    ids=["pg-startup", "pg-query", "mysql-query", "redis-ping", "http"],
)
def test_protocol_is_inferred_from_the_first_message(sd, req, proto):
    src = sd
    pid, _ = run_child(src, http_child("k.sendall(REQ)\nk.recv(100)", req=req, resp=b"+OK\r\n"))
    recs = collect(src, {pid}, closes(2))
    client, server = split_roles(recs)
    assert {r.protocol for r in client + server if isinstance(r, Data)} == {proto}
    assert payload(client, Direction.EGRESS) == req


def test_unknown_protocol_is_not_copied(sd):
    src = sd
    before = src.stats()["skipped_bytes"]
    junk = b"\x01\x02\x03" + bytes(200)  # no protocol the kernel knows (TLS records: test_sockdata_tls.py)
    resp = b"\x05\x03\x03zz"
    pid, _ = run_child(src, http_child("k.sendall(REQ)\nk.recv(100)", req=junk, resp=resp))
    recs = collect(src, {pid}, closes(2))
    assert not [r for r in recs if isinstance(r, Data)]
    assert len([r for r in recs if isinstance(r, ConnOpen)]) == 2
    cl = [r for r in recs if isinstance(r, ConnClose)]
    assert sorted((c.bytes_sent, c.bytes_recv) for c in cl) == sorted([(len(junk), len(resp)), (len(resp), len(junk))])
    assert src.stats()["skipped_bytes"] - before >= 2 * (len(junk) + len(resp))


def test_disabled_protocol_is_counted_not_delivered(sd):
    src = sd
    src.set_protocols({Protocol.DNS})
    before = src.stats()["skipped_bytes"]
    # TRIGGER: HTTP while only DNS is on
    pid, _ = run_child(src, http_child("k.sendall(REQ)\nk.recv(100)"))
    recs = collect(src, {pid}, closes(2))
    assert not [r for r in recs if isinstance(r, Data)]
    assert all(r.protocol == Protocol.HTTP for r in recs if isinstance(r, ConnClose))  # inferred, then withheld
    assert src.stats()["skipped_bytes"] - before >= 2 * (len(REQ) + len(RESP))
    # switched on while running: the next connection's data comes through
    src.set_protocols({Protocol.HTTP})
    pid, _ = run_child(src, http_child("k.sendall(REQ)\nk.recv(100)"))
    recs = collect(src, {pid}, closes(2))
    # each end's own bytes (the two ends' records may interleave either way: a sys_exit hook
    # runs after the syscall's work, so the client's send can be reported after the reply)
    client, server = split_roles(recs)
    assert payload(client, Direction.EGRESS) == REQ and payload(server, Direction.EGRESS) == RESP


def test_trace_roles_keep_one_end_of_a_protocol(sd):
    src = sd
    # TRIGGER: one HTTP exchange on loopback, both ends in one traced child, with only the
    # server end of HTTP wanted; then, switched live, only the client end
    for want, other in ((Role.SERVER, Role.CLIENT), (Role.CLIENT, Role.SERVER)):
        src.set_protocols({Protocol.HTTP}, {Protocol.HTTP: frozenset({want})})
        before = src.stats()["skipped_bytes"]
        pid, _ = run_child(src, http_child("k.sendall(REQ)\nk.recv(100)"))
        recs = collect(src, {pid}, closes(2))
        # ASSERT: data of the wanted end only, whole; the other end's connection is still
        # opened and closed (conn_stats), its bytes counted as skipped
        client, server = split_roles(recs)
        kept, dropped = (server, client) if want == Role.SERVER else (client, server)
        assert all(r.role == want for r in recs if isinstance(r, Data))
        assert not [r for r in dropped if isinstance(r, Data)]
        sent, got = (RESP, REQ) if want == Role.SERVER else (REQ, RESP)
        assert payload(kept, Direction.EGRESS) == sent and payload(kept, Direction.INGRESS) == got
        close = next(r for r in dropped if isinstance(r, ConnClose))
        assert close.role == other and (close.bytes_sent, close.bytes_recv) == (len(got), len(sent))
        assert src.stats()["skipped_bytes"] - before >= len(REQ) + len(RESP)


def test_role_mask():
    assert role_mask(None) == role_mask({Role.CLIENT, Role.SERVER}) == 0b111  # UNKNOWN too
    assert role_mask({Role.SERVER}) == 1 << Role.SERVER and role_mask({Role.CLIENT}) == 1 << Role.CLIENT
    with pytest.raises(UsageError, match="trace_roles of pgsql must be client and/or server"):
        SockSettings(trace_roles={Protocol.PGSQL: frozenset()})
    with pytest.raises(UsageError, match="trace_roles of http"):
        SockSettings(trace_roles={Protocol.HTTP: frozenset({Role.UNKNOWN})})


# -- a connection that was open before the sensor started ---------------------------------------


def test_connection_seen_first_by_its_data_gets_role_from_the_protocol(sockdata):
    # TRIGGER: the child connects, then waits for the sensor before sending
    code = http_child("import sys; print('ready', flush=True); sys.stdin.readline()\n"
                      "k.sendall(REQ)\ngot = b''\nwhile len(got) < len(RESP): got += k.recv(65536)")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        src = sockdata()
        src.add_pid(p.pid)
        p.stdin.write("go\n")
        p.stdin.flush()
        p.communicate(timeout=10)
    finally:
        p.kill()
    recs = collect(src, {p.pid}, closes(2))
    opens = [r for r in recs if isinstance(r, ConnOpen)]
    assert len(opens) == 2 and all(o.origin == 3 and o.role == Role.UNKNOWN for o in opens)
    data = [r for r in recs if isinstance(r, Data)]
    roles = {(r.direction, r.data): r.role for r in data}
    assert roles == {
        (Direction.EGRESS, REQ): Role.CLIENT,
        (Direction.INGRESS, REQ): Role.SERVER,
        (Direction.EGRESS, RESP): Role.SERVER,
        (Direction.INGRESS, RESP): Role.CLIENT,
    }


# HTTP/2 frames: a request (HEADERS :method POST, :scheme http, :path /, then DATA) and its
# response (HEADERS :status 200, then DATA), each one write
H2_REQ = (b"\x00\x00\x03\x01\x04\x00\x00\x00\x01\x83\x86\x84"
          b"\x00\x00\x02\x00\x01\x00\x00\x00\x01hi")
H2_RESP = (b"\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88"
           b"\x00\x00\x02\x00\x01\x00\x00\x00\x01ok")


def _h2_child_traced(sockdata, odd: bytes, req: bytes, resp: bytes, **settings) -> tuple[SockSource, int]:
    """H2_CHILD connected (its preface sent) before a sensor of ``settings`` starts, then
    traced while it sends ``odd``, ``req`` and ``resp``: the sensor and the child's pid."""
    p = subprocess.Popen([sys.executable, "-c", H2_CHILD.format(odd=odd, req=req, resp=resp)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        src = sockdata(**settings)
        src.add_pid(p.pid)
        p.stdin.write("go\n")
        p.stdin.flush()
        _, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
    finally:
        p.kill()
    return src, p.pid


def test_an_http2_connection_begun_before_the_sensor_is_known_by_its_frames(sockdata):
    """A connection (its preface long gone) carries HTTP/2 frames only after the sensor
    starts: frame headers that tile a whole chunk, one a HEADERS, make it HTTP/2; a block
    that starts with :status makes the writer the server. A chunk that does not tile (a
    length past its end) is not taken for HTTP/2."""
    # TRIGGER: the child connects (and speaks) before the sensor; after it, one odd chunk,
    # then a request and its response in frames
    src, pid = _h2_child_traced(sockdata, ODD, H2_REQ, H2_RESP)
    recs = collect(src, {pid}, lambda rs: sum(isinstance(r, Data) for r in rs) >= 4)
    # ASSERT
    data = [(r.direction, r.data, r.role, r.protocol) for r in recs if isinstance(r, Data)]
    assert data == [
        (Direction.EGRESS, H2_REQ, Role.CLIENT, Protocol.HTTP2), (Direction.INGRESS, H2_REQ, Role.SERVER, Protocol.HTTP2),
        (Direction.EGRESS, H2_RESP, Role.SERVER, Protocol.HTTP2), (Direction.INGRESS, H2_RESP, Role.CLIENT, Protocol.HTTP2),
    ], data


def _h2_frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def test_an_http2_chunk_cut_by_the_copy_bound_is_known_by_the_frames_copied(sockdata):
    """A connection begun before the sensor whose calls are larger than the copy bound (a
    request of 6,000 bytes, 4,096 copied): the frames that tile the copied bytes, one a
    HEADERS, the last going on past the copy, make it HTTP/2. A chunk as large whose frames
    hold no header block (DATA only) is not taken."""
    bound = 4096
    data_only = _h2_frame(0, 0, 1, b"d" * 5000)
    req = _h2_frame(1, 0x04, 3, b"\x83\x86\x84") + _h2_frame(0, 0x01, 3, b"r" * 6000)
    resp = _h2_frame(1, 0x04, 3, b"\x88") + _h2_frame(0, 0x01, 3, b"ok")
    # TRIGGER: the child connects (and speaks) before the sensor; after it, the DATA-only
    # chunk, then the large request and its response
    src, pid = _h2_child_traced(sockdata, data_only, req, resp, max_copy=bound)
    recs = collect(src, {pid}, lambda rs: sum(isinstance(r, Data) and r.direction == Direction.INGRESS
                                                and r.role == Role.CLIENT for r in rs) >= 1)
    # ASSERT: the request from its first byte, cut at the bound, at both ends; the response
    data = [r for r in recs if isinstance(r, Data)]
    assert {r.protocol for r in data} == {Protocol.HTTP2}
    out = [r for r in data if r.direction == Direction.EGRESS and r.role == Role.CLIENT]
    assert [(r.data, r.size) for r in out] == [(req[:bound], len(req))]
    into = [r for r in data if r.direction == Direction.INGRESS and r.role == Role.SERVER]
    assert into[0].data == req[:len(into[0].data)] and sum(r.size for r in into) == len(req)
    assert [r.data for r in data if r.role == Role.SERVER and r.direction == Direction.EGRESS] == [resp]
    assert b"".join(r.data for r in data if r.role == Role.CLIENT and r.direction == Direction.INGRESS) == resp
    assert src.stats()["skipped_bytes"] >= 2 * len(data_only)  # the DATA-only chunk, each end


ODD = b"\x00\x00\x64\x01\x04\x00\x00\x00\x01\x83\x86"  # a HEADERS header whose 100 bytes are not there
H2_CHILD = r"""
import socket, sys
ODD, REQ, RESP = {odd!r}, {req!r}, {resp!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
k = socket.create_connection(srv.getsockname()); c, _ = srv.accept()
k.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); c.recv(100)
print("ready", flush=True); sys.stdin.readline()
def over(a, b, m):
    a.sendall(m)
    got = b""
    while len(got) < len(m): got += b.recv(65536)
over(k, c, ODD); over(k, c, REQ); over(c, k, RESP)
for x in (k, c, srv): x.close()
"""


# An fd that comes to name another socket without a close(2) we see: dup2 over it.
DUP2_CHILD = r"""
import json, os, socket
REQ1, REQ2 = {req1!r}, {req2!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(2)
port = srv.getsockname()[1]
a = socket.create_connection(("127.0.0.1", port)); sa, _ = srv.accept()
b = socket.create_connection(("127.0.0.1", port)); sb, _ = srv.accept()
a_port, b_port, fd = a.getsockname()[1], b.getsockname()[1], a.fileno()
a.sendall(REQ1)
got = b""
while len(got) < len(REQ1): got += sa.recv(65536)
os.dup2(b.fileno(), fd)  # fd now names b's socket; a's file is closed inside dup2
os.write(fd, REQ2)
got = b""
while len(got) < len(REQ2): got += sb.recv(65536)
for s in (a, b, sa, sb, srv): s.close()
print(json.dumps({{"fd": fd, "a_port": a_port, "b_port": b_port}}))
"""


def test_fd_that_names_another_socket_after_dup2_is_a_new_connection(sd):
    # Guard for the sensor's fast path (a connection whose fd still names the same file is
    # not checked again): the file changed under the fd, so the old connection ends as
    # REUSED and the bytes go to a new one with the new socket's ports.
    src = sd
    req2 = b"GET /after-dup2 HTTP/1.1\r\nHost: b\r\n\r\n"
    # TRIGGER
    pid, info = run_child(src, DUP2_CHILD.format(req1=REQ, req2=req2))
    recs = collect(src, {pid}, closes(5))
    # ASSERT: on fd, in order: a's open, REQ, a's close (REUSED), b's open, REQ2
    on_fd = [r for r in recs if r.fd == info["fd"] and not (isinstance(r, ConnClose) and r.reason == CLOSE_SYSCALL)]
    kinds = [(type(r).__name__, getattr(r, "reason", None)) for r in on_fd]
    assert kinds == [("ConnOpen", None), ("Data", None), ("ConnClose", CLOSE_REUSED), ("ConnOpen", None),
                     ("Data", None)], kinds
    a_open, a_data, a_close, b_open, b_data = on_fd
    assert (a_open.origin, a_open.lport) == (ORIGIN_CONNECT, info["a_port"])
    assert a_data.data == REQ and a_data.conn_id == a_open.conn_id == a_close.conn_id
    assert (a_close.bytes_sent, a_close.bytes_recv) == (len(REQ), 0)
    assert (b_open.origin, b_open.lport) == (ORIGIN_DATA, info["b_port"]) and b_open.conn_id != a_open.conn_id
    assert b_data.data == req2 and b_data.conn_id == b_open.conn_id and b_data.pos == 0
    assert b_data.role == Role.CLIENT and b_data.protocol == Protocol.HTTP


EXEC_CHILD = r"""
import json, os, socket, sys
REQ_A, REQ_B, REQ_LATE = {req_a!r}, {req_b!r}, {req_late!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(2)
os.set_inheritable(srv.fileno(), True)  # the peer of b stays up across the exec
a = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))  # close-on-exec, Python's default
b = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
os.set_inheritable(b.fileno(), True)  # survives the exec
a.sendall(REQ_A); b.sendall(REQ_B)
print(json.dumps({{"a": a.fileno(), "b": b.fileno()}}), flush=True)
# the new image writes once more on b, and closes it
os.execv(sys.executable, [sys.executable, "-c",
         "import os, sys; fd = int(sys.argv[1]); os.write(fd, sys.argv[2].encode()); os.close(fd)",
         str(b.fileno()), REQ_LATE.decode()])
"""


def test_exec_ends_the_connections_of_its_close_on_exec_fds(sd):
    # An exec closes every close-on-exec fd with no close(2): the sensor ends those
    # connections when the exec returns (reason EXEC), and keeps the inherited ones
    src = sd
    req_a, req_b = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n"
    late = b"GET /after-exec HTTP/1.1\r\nHost: b\r\n\r\n"
    # TRIGGER
    pid, info = run_child(src, EXEC_CHILD.format(req_a=req_a, req_b=req_b, req_late=late))
    recs = collect(src, {pid}, closes(2))
    # ASSERT
    conns = by_conn(recs)
    assert len(conns) == 2
    a = next(rs for rs in conns.values() if rs[0].fd == info["a"])
    b = next(rs for rs in conns.values() if rs[0].fd == info["b"])
    kinds = lambda rs: [(type(r).__name__, getattr(r, "reason", None)) for r in rs]  # noqa: E731
    assert kinds(a) == [("ConnOpen", None), ("Data", None), ("ConnClose", CLOSE_EXEC)]
    assert a[1].data == req_a and (a[2].bytes_sent, a[2].bytes_recv) == (len(req_a), 0)
    # b goes on in the new image as the same connection, until its own close(2)
    assert kinds(b) == [("ConnOpen", None), ("Data", None), ("Data", None), ("ConnClose", CLOSE_SYSCALL)]
    assert [r.data for r in b[1:3]] == [req_b, late] and b[2].pos == len(req_b)
    assert b[3].bytes_sent == len(req_b) + len(late)
    # a ended at the exec: before the new image's write on b
    assert a[2].ts_ns < b[2].ts_ns


CLOSE_RANGE_CHILD = r"""
import ctypes, json, os, socket
REQS, LATE = {reqs!r}, {late!r}
libc = ctypes.CDLL(None, use_errno=True)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
ks = [socket.create_connection(("127.0.0.1", srv.getsockname()[1])) for _ in REQS]
for k, req in zip(ks, REQS): k.sendall(req)
fds = [k.detach() for k in ks]  # the fds are closed below, not by the socket objects
assert fds == list(range(fds[0], fds[0] + 3)), fds
assert libc.syscall(436, fds[0], fds[1], 0) == 0  # close_range(first, last, 0)
assert libc.syscall(436, fds[2], fds[2], 4) == 0  # CLOSE_RANGE_CLOEXEC: only marks it
os.write(fds[2], LATE)
os.close(fds[2])
print(json.dumps({{"fds": fds}}))
"""


def test_close_range_ends_the_connections_in_its_range(sd):
    src = sd
    reqs = [f"GET /{i} HTTP/1.1\r\nHost: r\r\n\r\n".encode() for i in range(3)]
    late = b"GET /after-close-range HTTP/1.1\r\nHost: r\r\n\r\n"
    # TRIGGER
    pid, info = run_child(src, CLOSE_RANGE_CHILD.format(reqs=reqs, late=late))
    recs = collect(src, {pid}, closes(3))
    # ASSERT: the two in the range end at the close_range, before the write on the third
    fds = info["fds"]
    ends = {r.fd: r for r in recs if isinstance(r, ConnClose)}
    assert sorted(ends) == fds and all(e.reason == CLOSE_SYSCALL for e in ends.values())
    assert [ends[fd].bytes_sent for fd in fds] == [len(reqs[0]), len(reqs[1]), len(reqs[2]) + len(late)]
    late_rec = next(r for r in recs if isinstance(r, Data) and r.data == late)
    assert late_rec.fd == fds[2]
    assert ends[fds[0]].ts_ns < late_rec.ts_ns and ends[fds[1]].ts_ns < late_rec.ts_ns < ends[fds[2]].ts_ns


EXIT_CHILD = r"""
import json, os, socket, threading
REQ1, REQ2 = {req1!r}, {req2!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
k = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
k.sendall(REQ1)
t = threading.Thread(target=lambda: None); t.start(); t.join()  # a thread's exit ends nothing
k.sendall(REQ2)
print(json.dumps({{"fd": k.fileno()}}), flush=True)
os._exit(0)  # no close(2): the exit closes the fds
"""


def test_process_exit_ends_its_open_connections(sd):
    src = sd
    req1, req2 = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    # TRIGGER
    pid, info = run_child(src, EXIT_CHILD.format(req1=req1, req2=req2))
    recs = collect(src, {pid}, closes(1))
    # ASSERT: one connection, both requests, ended once by the exit with its byte totals
    assert [(type(r).__name__, getattr(r, "reason", None)) for r in recs] == [
        ("ConnOpen", None), ("Data", None), ("Data", None), ("ConnClose", CLOSE_EXIT)]
    assert {r.fd for r in recs} == {info["fd"]}
    assert [r.data for r in recs[1:3]] == [req1, req2]
    assert (recs[3].bytes_sent, recs[3].bytes_recv) == (len(req1) + len(req2), 0)


# -- network namespaces -----------------------------------------------------------------------


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 10.231.7.1/30 in the first, .2 in the
    second. Everything made here is removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = uuid.uuid4().hex[:6]
    a, b = f"andon-sd-a-{tag}", f"andon-sd-b-{tag}"
    made: list[str] = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("link", "add", f"sda{tag}", "type", "veth", "peer", "name", f"sdb{tag}")
        ip("link", "set", f"sda{tag}", "netns", a)
        ip("link", "set", f"sdb{tag}", "netns", b)
        ip("-n", a, "addr", "add", "10.231.7.1/30", "dev", f"sda{tag}")
        ip("-n", b, "addr", "add", "10.231.7.2/30", "dev", f"sdb{tag}")
        for ns, dev in ((a, f"sda{tag}"), (b, f"sdb{tag}")):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


NS_SERVER = r"""
import json, socket, sys
srv = socket.socket(); srv.bind(("10.231.7.1", 0)); srv.listen(1)
print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
c, _ = srv.accept()
got = b""
while not got.endswith(b"\r\n\r\n"): got += c.recv(65536)
c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n"); c.close()
"""

NS_CLIENT = r"""
import json, socket, sys
k = socket.create_connection(("10.231.7.1", PORT))
k.sendall(b"GET /ns HTTP/1.1\r\n\r\n"); k.recv(100); k.close()
print(json.dumps({}))
"""


def test_connection_inside_network_namespaces(sd, netns_pair):
    a, b = netns_pair
    src = sd
    # TRIGGER: server in namespace a, client in namespace b, over the veth
    srv = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", GATE + NS_SERVER],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        src.add_pid(srv.pid)
        srv.stdin.write("go\n")
        srv.stdin.flush()
        port = json.loads(srv.stdout.readline())["port"]
        cli_pid, _ = run_child(src, NS_CLIENT.replace("PORT", str(port)), "ip", "netns", "exec", b)
        srv.wait(timeout=10)
    finally:
        srv.kill()
    # `ip netns exec` execs the command: the pids are the Python processes'
    recs = collect(src, {srv.pid, cli_pid}, closes(2))
    # ASSERT
    ns_a = os.stat(f"/run/netns/{a}").st_ino
    ns_b = os.stat(f"/run/netns/{b}").st_ino
    sopen = next(r for r in recs if isinstance(r, ConnOpen) and r.pid == srv.pid)
    copen = next(r for r in recs if isinstance(r, ConnOpen) and r.pid == cli_pid)
    assert (sopen.role, sopen.laddr, sopen.lport, sopen.raddr) == (Role.SERVER, "10.231.7.1", port, "10.231.7.2")
    assert (copen.role, copen.laddr, copen.raddr, copen.rport) == (Role.CLIENT, "10.231.7.2", "10.231.7.1", port)
    assert copen.lport == sopen.rport
    assert sopen.netns == ns_a and copen.netns == ns_b and os.stat("/proc/self/ns/net").st_ino not in (ns_a, ns_b)
    srecs = [r for r in recs if r.pid == srv.pid]
    crecs = [r for r in recs if r.pid == cli_pid]
    assert payload(srecs, Direction.INGRESS) == payload(crecs, Direction.EGRESS) == b"GET /ns HTTP/1.1\r\n\r\n"
    assert payload(srecs, Direction.EGRESS) == payload(crecs, Direction.INGRESS) == b"HTTP/1.1 204 No Content\r\n\r\n"


# -- a full ring: drops counted, gaps visible ---------------------------------------------------

FLOOD_CHILD = r"""
import json, socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept()
    while c.recv(1 << 20): pass
    c.close()
t = threading.Thread(target=sink); t.start()
k = socket.create_connection(srv.getsockname())
import sys; print("ready", flush=True); sys.stdin.readline()
msg = b"GET /flood HTTP/1.1\r\nX-Pad: " + b"x" * 900 + b"\r\n\r\n"
import time
for i in range(2000):
    k.sendall(msg)
    if i % 200 == 199:
        time.sleep(0.05)  # bursts of ~190 KB: each overflows the ring, which empties between
k.close(); t.join()
print(json.dumps({"size": len(msg)}))
"""


def test_full_ring_drops_are_counted_and_show_as_gaps(sockdata):
    # the machine is shared (other servers run): trace only the child, as soon as it exists
    src = sockdata(ring_bytes=1 << 16, max_copy=2048, pids=frozenset())
    p = subprocess.Popen([sys.executable, "-c", FLOOD_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        src.add_pid(p.pid)
        # TRIGGER: ten bursts of HTTP, each three times the 64 KiB ring, read between
        # bursts: records are lost between records that are delivered
        p.stdin.write("go\n")
        p.stdin.flush()
        recs: list = []
        deadline = time.monotonic() + 20
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            recs.extend(r for r in src.read(0.0) if r.pid == p.pid)
        out, _ = p.communicate(timeout=5)
    finally:
        p.kill()
    info = json.loads(out.strip().splitlines()[-1])
    recs += collect(src, {p.pid}, closes(2), timeout=1.0)
    # ASSERT
    st = src.stats()
    assert st["drops"] > 0 and st["dropped_bytes"] >= info["size"]
    sent = [r for r in recs if isinstance(r, Data) and r.direction == Direction.EGRESS]
    assert 0 < len(sent) < 2000
    assert sum(r.gap for r in sent) > 0 and src.stats()["gap_bytes"] > 0
    # positions and gaps account for every byte written up to the last chunk delivered
    last = sent[-1]
    assert sum(r.gap + r.size for r in sent) == last.pos + last.size
