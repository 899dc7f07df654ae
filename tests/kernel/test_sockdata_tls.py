"""TLS plaintext from the socket data sensor's OpenSSL uprobes (bpf/net/sockdata.bpf.c,
src/andon/events/tls.py), with real OpenSSL clients and servers on loopback.

As in test_sockdata.py, each test runs CHILD processes whose pids are added to the
sensor's filter before they start their work, reads the ring, and asserts on the records
of those pids only (other processes on this machine make traffic too). The sensor is
shared per sys_exit entry point: the ciphertext is dropped by the sys_exit program, the
plaintext comes from the uprobes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.sockdata import (
    F_ENCRYPTED,
    F_TRUNCATED,
    ORIGIN_ACCEPT,
    ORIGIN_CONNECT,
    ConnClose,
    ConnOpen,
    Data,
    SockSettings,
    SockSource,
)
from andon.events.live import default_bpf_dir
from andon.protocols.base import Direction, Protocol, Role

if not (default_bpf_dir() / "net/sockdata.bpf.o").exists():
    pytest.skip("net/sockdata.bpf.o is not built: run `make bpf`", allow_module_level=True)

# SD_TLS_*: the library call in a record's nr. The host's libssl (Debian 12's OpenSSL 3.0) is
# probed at the function SSL_read and SSL_read_ex share (and SSL_write/SSL_write_ex), whose
# records say 5 and 6 (src/andon/events/libssl_code.py)
SSL_READ, SSL_WRITE, SSL_READ_EX, SSL_WRITE_EX, SSL_READ_SHARED, SSL_WRITE_SHARED = 1, 2, 3, 4, 5, 6

REQ = b"GET /secret HTTP/1.1\r\nHost: localhost\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhidden"
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"

# A child that is an HTTPS server (on a thread) and its own client, with Python's ssl
# module (OpenSSL 3: SSL_read_ex / SSL_write_ex). It prints {"pid", "port"} first, waits
# for a line on stdin (the test adds its pid to the filter meanwhile), then serves one
# request and prints {"port"} at the end. {client}/{server_read} vary the calls.
TLS_CHILD = r"""
import json, os, socket, ssl, sys, threading
CERT, KEY = {cert!r}, {key!r}
REQ, RESP = {req!r}, {resp!r}
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(CERT, KEY)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
print(json.dumps({{"pid": os.getpid(), "port": port}}), flush=True)
sys.stdin.readline()
def serve():
    c, _ = srv.accept()
    c = sctx.wrap_socket(c, server_side=True)
    got = b""
    while len(got) < len(REQ):
        got += c.recv({server_read})
    c.sendall(RESP)
    c.close()
t = threading.Thread(target=serve); t.start()
k = cctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
{client}
got = b""
while len(got) < len(RESP):
    got += k.recv(65536)
k.close(); t.join(); srv.close()
print(json.dumps({{"port": port}}), flush=True)
"""

# An HTTPS server for one request from another program: prints {"pid", "port"}, answers
# whatever request line arrives with RESP, closes.
TLS_SERVER = r"""
import json, os, socket, ssl, sys
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain({cert!r}, {key!r})
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(json.dumps({{"pid": os.getpid(), "port": srv.getsockname()[1]}}), flush=True)
c, _ = srv.accept()
c = sctx.wrap_socket(c, server_side=True)
got = b""
while b"\r\n\r\n" not in got:
    got += c.recv(65536)
c.sendall({resp!r})
c.close(); srv.close()
"""


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return str(crt), str(key)


@pytest.fixture(scope="module", params=[("tp_btf", True), ("raw_tp", True), ("tp_btf", False)],
                ids=["tp_btf", "raw_tp", "tp_btf-exported"])
def shared(request: pytest.FixtureRequest) -> Iterator[SockSource]:
    """The sensor, shared by the module's tests. "-exported": the exported SSL_* functions
    probed, as on a libssl whose shared functions are not found."""
    hook, at_shared = request.param
    src = SockSource(SockSettings(hook=hook, pids=frozenset(), tls_rescan_s=0.2, tls_shared=at_shared))
    src.start()
    if src.tls is None:
        src.close()
        pytest.skip(f"TLS uprobes unavailable: {src.tls_error}")
    yield src
    src.close()


def nr(src: SockSource, call: str) -> int:
    """The nr a record of the host's libssl has for ``call`` (SSL_read, SSL_read_ex, ...)."""
    if src.settings.tls_shared:
        return SSL_WRITE_SHARED if "write" in call else SSL_READ_SHARED
    return {"SSL_read": SSL_READ, "SSL_write": SSL_WRITE, "SSL_read_ex": SSL_READ_EX, "SSL_write_ex": SSL_WRITE_EX}[call]


class Child:
    """A gated child: started, its pid added to the filter, then let go."""

    def __init__(self, src: SockSource, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        line = self.p.stdout.readline() if self.p.stdout else ""
        if not line:
            self.p.kill()
            raise AssertionError(f"child printed nothing: {self.p.stderr.read() if self.p.stderr else ''}")
        self.info = json.loads(line)
        self.pid = int(self.info["pid"])  # its own pid: the host pid even in a --pid host container
        src.add_pid(self.pid)

    def go(self, timeout: float = 30.0) -> dict:
        try:
            out, err = self.p.communicate("go\n", timeout=timeout)
        finally:
            self.p.kill()
        assert self.p.returncode == 0, f"child failed: {err}"
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


def python_child(src: SockSource, cert: tuple[str, str], client: str = "k.sendall(REQ)", server_read: int = 65536,
                 req: bytes = REQ, resp: bytes = RESP, env: dict[str, str] | None = None) -> Child:
    code = TLS_CHILD.format(cert=cert[0], key=cert[1], req=req, resp=resp, client=client, server_read=server_read)
    return Child(src, [sys.executable, "-c", code], env)


def collect(src: SockSource, pids: set[int], closes: int, timeout: float = 5.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out.extend(r for r in src.read(0.05) if r.pid in pids)
        if sum(isinstance(r, ConnClose) for r in out) >= closes:
            out.extend(r for r in src.read(0.0) if r.pid in pids)
            break
    return out


def conns(recs: list) -> dict[Role, list]:
    """Records per connection, by the role of its open record."""
    by: dict[int, list] = {}
    for r in recs:
        by.setdefault(r.conn_id, []).append(r)
    out: dict[Role, list] = {}
    for rs in by.values():
        assert isinstance(rs[0], ConnOpen), rs[0]
        assert rs[0].role not in out, f"two {rs[0].role} connections: {by}"
        out[rs[0].role] = rs
    return out


def data(recs: list, direction: Direction | None = None) -> list[Data]:
    return [r for r in recs if isinstance(r, Data) and (direction is None or r.direction == direction)]


def plain(recs: list, direction: Direction) -> bytes:
    return b"".join(r.data for r in data(recs, direction))


def closed(recs: list) -> ConnClose:
    c = recs[-1]
    assert isinstance(c, ConnClose), c
    return c


# -- Python's ssl module at both ends ---------------------------------------------------------


def test_python_https_plaintext_both_ends_and_no_ciphertext(shared, cert):
    src = shared
    before = src.stats()
    # TRIGGER
    child = python_child(src, cert)
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    by = conns(recs)
    client, server = by[Role.CLIENT], by[Role.SERVER]
    assert client[0].origin == ORIGIN_CONNECT and server[0].origin == ORIGIN_ACCEPT
    assert client[0].rport == server[0].lport == child.info["port"]
    assert plain(client, Direction.EGRESS) == REQ
    assert plain(client, Direction.INGRESS) == RESP
    assert plain(server, Direction.INGRESS) == REQ
    assert plain(server, Direction.EGRESS) == RESP
    # every delivered chunk is a library call's plaintext: no socket bytes at all
    for r in data(client) + data(server):
        assert r.flags & F_ENCRYPTED and r.encrypted
        assert r.protocol == Protocol.HTTP and r.gap == 0 and r.pos == 0 and not r.truncated
        assert r.nr == nr(src, "SSL_write_ex" if r.direction == Direction.EGRESS else "SSL_read_ex")
    assert {r.role for r in data(client)} == {Role.CLIENT}
    assert {r.role for r in data(server)} == {Role.SERVER}
    assert {r.tid for r in data(server)} != {r.tid for r in data(client)}  # the server's thread
    # the sockets carried ciphertext: handshake and records, more than the plaintext
    cc, sc = closed(client), closed(server)
    assert cc.bytes_sent == sc.bytes_recv > len(REQ) and cc.bytes_recv == sc.bytes_sent > len(RESP)
    assert cc.protocol == sc.protocol == Protocol.HTTP
    after = src.stats()
    cipher = cc.bytes_sent + cc.bytes_recv + sc.bytes_sent + sc.bytes_recv
    assert after["tls_cipher_bytes"] - before["tls_cipher_bytes"] == cipher
    assert after["tls_chunks"] - before["tls_chunks"] == len(data(client) + data(server)) == 4
    assert after["tls_no_conn"] == before["tls_no_conn"]
    assert after["tls_libs"] >= 1
    # the host's file: probed at its shared functions, or at the exported ones
    host = next(f for f in src.tls.files.values() if f.path == LIBSSL)
    assert set(host.shared) == ({"read", "write"} if src.settings.tls_shared else set())
    assert set(host.functions) == {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake"}


def test_small_reads_served_from_openssls_buffer(shared, cert):
    """The server reads 10 bytes at a time: the first SSL_read_ex reads the whole record from
    the socket, the others are served from OpenSSL's buffer with no syscall, and find the
    connection through the SSL * -> fd map."""
    src = shared
    before = src.stats()
    # TRIGGER
    child = python_child(src, cert, server_read=10)
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    server = conns(recs)[Role.SERVER]
    reads = data(server, Direction.INGRESS)
    assert [r.data for r in reads] == [REQ[i : i + 10] for i in range(0, len(REQ), 10)]
    assert [r.pos for r in reads] == list(range(0, len(REQ), 10))
    assert all(r.encrypted and r.gap == 0 and r.protocol == Protocol.HTTP for r in reads)
    assert src.stats()["tls_no_conn"] == before["tls_no_conn"]


def test_plaintext_positions_and_the_copy_bound(shared, cert):
    src = shared
    bound = src.settings.max_copy
    body = bytes(range(256)) * 40  # 10240 bytes: one SSL_write, beyond the copy bound
    req = b"POST /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    # TRIGGER: the headers and the body in two writes
    head = req.index(b"\r\n\r\n") + 4
    child = python_child(src, cert, client=f"k.sendall(REQ[:{head}]); k.sendall(REQ[{head}:])", req=req)
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    by = conns(recs)
    writes = data(by[Role.CLIENT], Direction.EGRESS)
    assert [(r.pos, r.size) for r in writes] == [(0, head), (head, len(req) - head)]
    assert writes[0].data == req[:head] and not writes[0].truncated
    assert writes[1].data == req[head : head + bound] and writes[1].flags & F_TRUNCATED
    reads = data(by[Role.SERVER], Direction.INGRESS)
    assert sum(r.size for r in reads) == len(req)
    pos = 0
    for r in reads:  # contiguous plaintext positions, each chunk cut at the bound
        assert r.pos == pos and r.gap == 0 and r.data == req[pos : pos + min(r.size, bound)]
        pos += r.size


def test_tls_record_bytes_without_uprobes_are_counted_as_ciphertext(shared):
    """Bytes that look like TLS records on a socket (a TLS library we do not probe) mark the
    connection ssl: nothing is delivered, the bytes are counted as ciphertext."""
    src = shared
    before = src.stats()
    hello = b"\x16\x03\x01\x00\xc8" + bytes(200)  # a handshake record header
    code = r"""
import json, os, socket, sys, threading
print(json.dumps({"pid": os.getpid()}), flush=True); sys.stdin.readline()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept(); c.recv(1000); c.sendall(b"\x17\x03\x03\x00\x02zz"); c.close()
t = threading.Thread(target=serve); t.start()
k = socket.create_connection(srv.getsockname()); k.sendall(HELLO); k.recv(100); k.close(); t.join()
""".replace("HELLO", repr(hello))
    child = Child(src, [sys.executable, "-c", code])
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    assert not data(recs)
    assert len([r for r in recs if isinstance(r, ConnOpen)]) == 2
    after = src.stats()
    assert after["tls_cipher_bytes"] - before["tls_cipher_bytes"] == 2 * (len(hello) + 7)
    assert after["skipped_bytes"] == before["skipped_bytes"]


# asyncio's TLS (and so aiohttp's, uvicorn's, asyncpg's): every SSL on a memory BIO, whose
# calls never touch a socket. One event loop thread serves {n} clients of its own at once,
# each on its own connection with requests of its own path; a response echoes the path.
ASYNCIO_TLS = r"""
import asyncio, json, os, ssl, sys
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain({cert!r}, {key!r})
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
N, ROUNDS = {n}, {rounds}
async def handle(r, w):
    for _ in range(ROUNDS):
        head = await r.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1]
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
        await w.drain()
    w.close()
async def client(port, i):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
    for j in range(ROUNDS):
        w.write(b"GET /c%d/r%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i, j))
        await w.drain()
        await r.readuntil(b"/c%d/r%d" % (i, j))
    w.close()
    await w.wait_closed()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    print(json.dumps({{"pid": os.getpid(), "port": port}}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(client(port, i) for i in range(N)))
    srv.close()
    await srv.wait_closed()
    print(json.dumps({{"port": port}}), flush=True)
asyncio.run(main())
"""


def test_asyncio_memory_bio_calls_find_their_connection(shared, cert):
    """Three asyncio clients and their server on one thread: no SSL call touches a socket.
    Each read call takes the socket the thread read TLS records from last; each handshake
    step binds its SSL * the same way, so a client's first write (before any read) finds its
    connection too. Every connection carries exactly its own requests and responses."""
    src = shared
    n, rounds = 3, 3
    before = src.stats()
    # TRIGGER
    child = Child(src, [sys.executable, "-c", ASYNCIO_TLS.format(cert=cert[0], key=cert[1], n=n, rounds=rounds)])
    port = child.info["port"]
    child.go()
    recs = collect(src, {child.pid}, closes=2 * n)
    # ASSERT
    by: dict[int, list] = {}
    for r in recs:
        by.setdefault(r.conn_id, []).append(r)
    clients = [rs for rs in by.values() if rs[0].role == Role.CLIENT]
    servers = [rs for rs in by.values() if rs[0].role == Role.SERVER]
    assert len(clients) == len(servers) == n
    reqs = {i: b"".join(b"GET /c%d/r%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i, j) for j in range(rounds)) for i in range(n)}
    resps = {i: b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n/c%d/r%d" % (i, j) for j in range(rounds))
             for i in range(n)}

    def which(rs: list, direction: Direction) -> int:
        """The client index a connection's first request names."""
        sent = plain(rs, direction)
        assert sent.startswith(b"GET /c"), (rs[0], sent)
        return int(sent[6:7])

    got_c = {which(rs, Direction.EGRESS): rs for rs in clients}
    got_s = {which(rs, Direction.INGRESS): rs for rs in servers}
    assert sorted(got_c) == sorted(got_s) == list(range(n))
    for i in range(n):
        c, s = got_c[i], got_s[i]
        assert c[0].rport == s[0].lport == port and c[0].lport == s[0].rport
        assert plain(c, Direction.EGRESS) == reqs[i] == plain(s, Direction.INGRESS)
        assert plain(s, Direction.EGRESS) == resps[i] == plain(c, Direction.INGRESS)
        for r in data(c) + data(s):
            assert r.encrypted and r.protocol == Protocol.HTTP and r.gap == 0
            assert r.nr == nr(src, "SSL_write_ex" if r.direction == Direction.EGRESS else "SSL_read_ex")
        assert [r.pos for r in data(c, Direction.EGRESS)] == [j * len(reqs[i]) // rounds for j in range(rounds)]
    after = src.stats()
    assert after["tls_no_conn"] == before["tls_no_conn"]
    assert after["tls_chunks"] - before["tls_chunks"] == 4 * n * rounds
    # at least one binding per connection, by its handshake
    assert after["tls_bio_binds"] - before["tls_bio_binds"] >= 2 * n


# A client SSL on memory BIOs over a new socket, its handshake driven by hand (the child
# scripts below include it; cctx is theirs)
MEMBIO_CONNECT = r"""
def membio_connect(addr):
    sock = socket.create_connection(addr)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = cctx.wrap_bio(inc, out)
    while True:
        try:
            obj.do_handshake(); break
        except ssl.SSLWantReadError:
            if out.pending: sock.sendall(out.read())
            inc.write(sock.recv(65536))
    if out.pending: sock.sendall(out.read())
    return sock, inc, out, obj
"""


# Two SSL objects on memory BIOs driven by hand on one thread (ssl.MemoryBIO, what asyncio
# builds on), against a plain ssl server thread. The order is an event loop's under flow
# control: A's records are read and partly decrypted; then a record's first 3 bytes are
# read on B, whose SSL wants more; then A's plaintext is read on from OpenSSL's buffer
# (no socket read for A in between); then B's rest.
MEMORY_BIO = r"""
import json, os, socket, ssl, sys, threading
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain({cert!r}, {key!r})
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
A, B = {a!r}, {b!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(2)
print(json.dumps({{"pid": os.getpid()}}), flush=True); sys.stdin.readline()
done = threading.Event()
def serve():
    cs = [sctx.wrap_socket(srv.accept()[0], server_side=True) for _ in range(2)]
    cs[0].sendall(A); cs[1].sendall(B)
    done.wait(10)
    for c in cs: c.close()
t = threading.Thread(target=serve, daemon=True); t.start()  # an error here ends the child
{membio}
def read(sock, inc, obj, n, want, recv=65536):
    got = b""
    while len(got) < want:
        try:
            got += obj.read(n)
        except ssl.SSLWantReadError:
            inc.write(sock.recv(recv))
    return got
sa, ia, _, oa = membio_connect(srv.getsockname())
sb, ib, _, ob = membio_connect(srv.getsockname())
got_a = read(sa, ia, oa, 10, 10)             # A: a socket read, then 10 bytes of plaintext
ib.write(sb.recv(3))                         # B: 3 bytes of a record, outside any call
try:
    ob.read(50); raise SystemExit("B's record was whole")
except ssl.SSLWantReadError:
    pass
got_a += oa.read(90)                         # A, from OpenSSL's buffer: no syscall
got_b = read(sb, ib, ob, 50, 50)
assert (got_a, got_b) == (A, B), (got_a, got_b)
done.set(); t.join(); sa.close(); sb.close(); srv.close()
print(json.dumps({{}}), flush=True)
"""
# HTTP responses (the connection's protocol is inferred from them), 100 and 50 bytes
BIO_A = b"HTTP/1.1 200 OK\r\nContent-Length: 61\r\n\r\n" + b"a" * 61
BIO_B = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"b" * 11


def test_memory_bio_plaintext_from_the_buffer_stays_with_its_own_connection(shared, cert):
    src = shared
    before = src.stats()
    # TRIGGER
    child = Child(src, [sys.executable, "-c", MEMORY_BIO.format(cert=cert[0], key=cert[1], a=BIO_A, b=BIO_B, membio=MEMBIO_CONNECT)])
    child.go()
    recs = collect(src, {child.pid}, closes=4)
    # ASSERT: the two client connections, told apart by their server's payload
    by: dict[int, list] = {}
    for r in recs:
        by.setdefault(r.conn_id, []).append(r)
    clients = [rs for rs in by.values() if rs[0].role == Role.CLIENT]
    assert len(clients) == 2
    got = sorted((plain(rs, Direction.INGRESS), [(r.pos, r.size) for r in data(rs, Direction.INGRESS)]) for rs in clients)
    assert (len(BIO_A), len(BIO_B)) == (100, 50)
    assert got == sorted([(BIO_A, [(0, 10), (10, 90)]), (BIO_B, [(0, 50)])])
    assert all(r.encrypted and r.nr == nr(src, "SSL_read_ex") for rs in clients for r in data(rs, Direction.INGRESS))
    assert src.stats()["tls_no_conn"] == before["tls_no_conn"]


# A memory-BIO client and a socket-BIO server thread in one process exchange a request and
# a response; then both sockets close while both SSL objects live on (a step apart, for the
# test to look at the sensor's SSL * -> fd bindings in between).
BINDINGS_END = r"""
import json, os, socket, ssl, sys, threading
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain({cert!r}, {key!r})
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(json.dumps({{"pid": os.getpid()}}), flush=True); sys.stdin.readline()
held = {{}}
def serve():
    c = sctx.wrap_socket(srv.accept()[0], server_side=True)
    c.recv(100); c.sendall({resp!r})
    held["server"] = c
t = threading.Thread(target=serve, daemon=True); t.start()  # an error here ends the child
{membio}
sock, inc, out, obj = membio_connect(srv.getsockname())
obj.write({req!r}); sock.sendall(out.read())
got = b""
while len(got) < {n}:
    try:
        got += obj.read(100)
    except ssl.SSLWantReadError:
        inc.write(sock.recv(65536))
t.join()
print(json.dumps({{"step": "used"}}), flush=True); sys.stdin.readline()
sock.close(); held["server"].close(); srv.close()   # obj and held["server"]'s SSL live on
print(json.dumps({{"step": "closed"}}), flush=True); sys.stdin.readline()
"""


def _bindings(src: SockSource, pid: int) -> int:
    """The sensor's SSL * -> fd bindings (sd_sslfd) of one process."""
    m = src._obj.map("sd_sslfd")  # type: ignore[union-attr]
    return sum(struct.unpack_from("<I", k)[0] == pid for k in m.keys(16))


def test_an_ssl_binding_ends_with_its_connection(shared, cert):
    """The SSL * -> fd binding goes when the connection closes: an SSL freed and its address
    reused by malloc for a new connection's would otherwise send the new calls to the old fd."""
    src = shared
    code = BINDINGS_END.format(cert=cert[0], key=cert[1], req=REQ, resp=RESP, n=len(RESP), membio=MEMBIO_CONNECT)
    child = Child(src, [sys.executable, "-c", code])
    assert child.p.stdin is not None and child.p.stdout is not None
    try:
        child.p.stdin.write("go\n")
        child.p.stdin.flush()
        assert json.loads(child.p.stdout.readline()) == {"step": "used"}
        recs: list = []
        deadline = time.monotonic() + 5.0
        while REQ not in plain(data(recs), Direction.EGRESS) and time.monotonic() < deadline:
            recs.extend(r for r in src.read(0.05) if r.pid == child.pid)
        assert plain(data(recs), Direction.EGRESS).count(REQ) == 1  # the client's write, captured
        used = _bindings(src, child.pid)
        child.p.stdin.write("close\n")
        child.p.stdin.flush()
        assert json.loads(child.p.stdout.readline()) == {"step": "closed"}
        collect(src, {child.pid}, closes=2, timeout=5.0)
        closed = _bindings(src, child.pid)
    finally:
        child.p.kill()
        child.p.wait()
    assert (used, closed) == (2, 0)  # the client's SSL and the server's, then none


PG_STARTTLS = r"""
import json, os, socket, ssl, struct, sys, threading
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain({cert!r}, {key!r})
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
QUERY, REPLY = {query!r}, {reply!r}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(json.dumps({{"pid": os.getpid()}}), flush=True); sys.stdin.readline()
def serve():
    c, _ = srv.accept()
    assert c.recv(8) == struct.pack("!II", 8, 80877103)
    c.sendall(b"S")
    c = sctx.wrap_socket(c, server_side=True)
    got = b""
    while len(got) < len(QUERY):
        got += c.recv(65536)
    c.sendall(REPLY); c.close()
t = threading.Thread(target=serve); t.start()
k = socket.create_connection(srv.getsockname())
k.sendall(struct.pack("!II", 8, 80877103))
assert k.recv(1) == b"S"
k = cctx.wrap_socket(k)
k.sendall(QUERY)
got = b""
while len(got) < len(REPLY):
    got += k.recv(65536)
k.close(); t.join()
"""


def test_postgres_starttls_handshake_is_not_delivered(shared, cert):
    """PostgreSQL's SSLRequest, then TLS on the same socket: the 8-byte request and the 'S'
    answer are plain pgsql data; the handshake that follows is ciphertext (counted); the
    query and its answer arrive as plaintext of the library calls."""
    src = shared
    query = b"Q" + struct.pack("!I", 4 + 9) + b"select 1\0"
    reply = b"C\0\0\0\x0dSELECT 1\0" + b"Z\0\0\0\x05I"
    # TRIGGER
    child = Child(src, [sys.executable, "-c", PG_STARTTLS.format(cert=cert[0], key=cert[1], query=query,
                                                                 reply=reply)])
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    by = conns(recs)
    client, server = by[Role.CLIENT], by[Role.SERVER]
    ssl_request = struct.pack("!II", 8, 80877103)
    assert [(r.encrypted, r.direction, r.data) for r in data(client)] == [
        (False, Direction.EGRESS, ssl_request),
        (False, Direction.INGRESS, b"S"),
        (True, Direction.EGRESS, query),
        (True, Direction.INGRESS, reply),
    ]
    assert [(r.encrypted, r.direction, r.data) for r in data(server)] == [
        (False, Direction.INGRESS, ssl_request),
        (False, Direction.EGRESS, b"S"),
        (True, Direction.INGRESS, query),
        (True, Direction.EGRESS, reply),
    ]
    assert all(r.protocol == Protocol.PGSQL and r.gap == 0 for r in data(client) + data(server))


# -- other OpenSSL programs ---------------------------------------------------------------------


def test_curl_against_python_https_server(shared, cert):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    src = shared
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    server = Child(src, [sys.executable, "-c", TLS_SERVER.format(cert=cert[0], key=cert[1], resp=resp)])
    port = server.info["port"]
    # TRIGGER: curl (libcurl -> libssl: SSL_read / SSL_write), gated by a shell that execs it
    curl = subprocess.Popen(["sh", "-c", f"read x; exec curl -sk --http1.1 https://127.0.0.1:{port}/from-curl"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    src.add_pid(curl.pid)
    out, err = curl.communicate("go\n", timeout=30)
    server.go()
    assert curl.returncode == 0, err
    assert out == "hello"
    recs = collect(src, {curl.pid, server.pid}, closes=2)
    # ASSERT
    mine = [r for r in recs if r.pid == curl.pid]
    theirs = [r for r in recs if r.pid == server.pid]
    c, s = conns(mine)[Role.CLIENT], conns(theirs)[Role.SERVER]
    assert c[0].comm == "curl" and c[0].rport == port
    sent = plain(c, Direction.EGRESS)
    assert sent.startswith(b"GET /from-curl HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port) and sent.endswith(b"\r\n\r\n")
    assert plain(c, Direction.INGRESS) == resp
    assert plain(s, Direction.INGRESS) == sent and plain(s, Direction.EGRESS) == resp
    assert all(r.encrypted and r.protocol == Protocol.HTTP and r.role == Role.CLIENT for r in data(c))
    assert {r.nr for r in data(c)} == {nr(src, "SSL_read"), nr(src, "SSL_write")}


def test_openssl_s_client_and_s_server(shared, cert):
    """openssl s_client and s_server in their plain mode call SSL_read/SSL_write. (Its -www
    and -rev modes read through a BIO_f_ssl, which calls OpenSSL's internal functions, not
    the exported ones: not seen. See docs/observability.md, TLS, limits.)"""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    src = shared
    req, resp = b"GET /andon HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nbody\n"
    # TRIGGER: the server prints what it receives and sends what it reads on its stdin
    srv = subprocess.Popen(["sh", "-c", f"read x; exec openssl s_server -quiet -naccept 1 "
                                        f"-accept 127.0.0.1:0 -cert {cert[0]} -key {cert[1]}"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    cli = None
    try:
        src.add_pid(srv.pid)
        assert srv.stdin is not None and srv.stdout is not None
        srv.stdin.write(b"go\n")
        srv.stdin.flush()
        port = _listening_port(srv.pid)
        cli = subprocess.Popen(["sh", "-c", f"read x; exec openssl s_client -quiet -connect 127.0.0.1:{port}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        src.add_pid(cli.pid)
        assert cli.stdin is not None
        cli.stdin.write(b"go\n" + req)
        cli.stdin.flush()
        _read_until(srv.stdout, b"GET /andon", 10.0)  # the server has the request
        srv.stdin.write(resp)
        srv.stdin.close()  # end of its input: the server closes the connection and exits
        out, _ = cli.communicate(timeout=10)
        srv.wait(timeout=10)
    finally:
        for p in (srv, cli):
            if p is not None:
                p.kill()
                p.wait()
    recs = collect(src, {srv.pid, cli.pid}, closes=2, timeout=3.0)
    # ASSERT
    assert out == resp
    c = conns([r for r in recs if r.pid == cli.pid])[Role.CLIENT]
    s = conns([r for r in recs if r.pid == srv.pid])[Role.SERVER]
    assert c[0].comm == s[0].comm == "openssl"
    assert plain(c, Direction.EGRESS) == req == plain(s, Direction.INGRESS)
    assert plain(s, Direction.EGRESS) == resp == plain(c, Direction.INGRESS)
    assert all(r.encrypted and r.protocol == Protocol.HTTP for r in data(c) + data(s))
    assert {r.nr for r in data(c) + data(s)} == {nr(src, "SSL_read"), nr(src, "SSL_write")}


def _read_until(f, want: bytes, timeout: float) -> bytes:
    import select

    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} within {timeout}s, got {got!r}"
        if select.select([f], [], [], left)[0]:
            chunk = os.read(f.fileno(), 4096)
            assert chunk, f"EOF before {want!r}: {got!r}"
            got += chunk
    return got


def _listening_port(pid: int, timeout: float = 10.0) -> int:
    """The TCP port a process listens on, from /proc/<pid>/net/tcp and its socket inodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f"socket:[{f[9]}]" in inodes:  # 0A: TCP_LISTEN
                    return int(f[1].split(":")[1], 16)
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} did not listen within {timeout}s")


# -- processes that bring a libssl file of their own ---------------------------------------------


def _wait_for_file(src: SockSource, path: Path, timeout: float = 10.0) -> None:
    """Read (which rescans) until the sensor probes the file ``path``."""
    st = path.stat()
    deadline = time.monotonic() + timeout
    assert src.tls is not None
    while (st.st_dev, st.st_ino) not in src.tls.files and time.monotonic() < deadline:
        list(src.read(0.05))
    assert (st.st_dev, st.st_ino) in src.tls.files, f"{path} not probed: {src.tls.failed}"


def test_process_started_later_with_its_own_libssl_is_found_by_rescan(shared, cert, tmp_path):
    """The child maps its libssl before the test adds its pid to the filter, so the sensor
    sends no record of the mapping: the rescan finds the file."""
    if not Path(LIBSSL).exists():
        pytest.skip(f"no {LIBSSL}")
    src = shared
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(LIBSSL, lib / "libssl.so.3")  # a new file: a new inode, not probed yet
    libs_before = src.stats()["tls_libs"]
    # TRIGGER: the child loads the copy (LD_LIBRARY_PATH goes before the RUNPATH of _ssl)
    child = python_child(src, cert, env=dict(os.environ, LD_LIBRARY_PATH=str(lib)))
    maps = Path(f"/proc/{child.pid}/maps").read_text()
    assert str(lib / "libssl.so.3") in maps
    _wait_for_file(src, lib / "libssl.so.3")
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    assert src.stats()["tls_libs"] == libs_before + 1
    found = next(f for f in src.tls.files.values() if f.path.endswith(str(lib / "libssl.so.3")))
    assert found.pid == child.pid and found.path == f"/proc/{child.pid}/root{lib}/libssl.so.3"
    assert set(found.functions) == {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake"}
    assert found.lag_ms is None  # not found through a mapping record
    by = conns(recs)
    assert plain(by[Role.CLIENT], Direction.EGRESS) == REQ and plain(by[Role.SERVER], Direction.EGRESS) == RESP
    assert all(r.encrypted for r in data(recs))


# Seen first, libssl later: the child prints {"pid"} and waits; then it runs TLS_CHILD, which
# loads libssl (its `import ssl`), prints {"pid", "port"} and waits again.
LATE_PYTHON = "import json, os, sys\nprint(json.dumps({{'pid': os.getpid()}}), flush=True)\nsys.stdin.readline()\n{code}"
LATE_EXEC = 'echo "{{\\"pid\\": $$}}"; read go; exec {python} -c "$0"'


@pytest.mark.parametrize("how,name", [("import", "libssl.so.3"), ("exec", "libssl.so.3"),
                                      ("import", "libssl-0123abcd.so.3")])
def test_libssl_loaded_after_the_process_was_scanned_is_probed_at_its_mapping(shared, cert, tmp_path, how, name):
    """A process the rescans had already read, that then loads a libssl file new to the
    sensor: by a late `import ssl`, or by an exec in the same pid. Rescans never read a seen
    pid again; the sensor's record of the mapping gets the file probed. The file may have a
    Python wheel's hashed name (psycopg[binary] bundles libssl-6a9b88ec.so.3): here the
    loader finds it through a libssl.so.3 symlink, and maps name the file itself."""
    if not Path(LIBSSL).exists():
        pytest.skip(f"no {LIBSSL}")
    src = shared
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(LIBSSL, lib / name)
    if name != "libssl.so.3":
        (lib / "libssl.so.3").symlink_to(name)
    code = TLS_CHILD.format(cert=cert[0], key=cert[1], req=REQ, resp=RESP, client="k.sendall(REQ)",
                            server_read=65536)
    if how == "import":
        argv = [sys.executable, "-c", LATE_PYTHON.format(code=code)]
    else:
        argv = ["sh", "-c", LATE_EXEC.format(python=sys.executable), code]
    before = src.stats()
    child = Child(src, argv, env=dict(os.environ, LD_LIBRARY_PATH=str(lib)))
    assert src.tls is not None
    scans = src.tls.scans
    deadline = time.monotonic() + 10
    while src.tls.scans < scans + 2 and time.monotonic() < deadline:  # two rescans have read this pid
        list(src.read(0.05))
    assert src.tls.scans >= scans + 2
    assert "libssl" not in Path(f"/proc/{child.pid}/maps").read_text()
    # TRIGGER: libssl is loaded now
    assert child.p.stdin and child.p.stdout
    child.p.stdin.write("go\n")
    child.p.stdin.flush()
    assert json.loads(child.p.stdout.readline())["pid"] == child.pid  # same pid after the exec
    assert str(lib / name) in Path(f"/proc/{child.pid}/maps").read_text()
    _wait_for_file(src, lib / name, timeout=5.0)
    child.go()
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    found = next(f for f in src.tls.files.values() if f.pid == child.pid)
    assert found.path == f"/proc/{child.pid}/root{lib}/{name}"
    assert found.lag_ms is not None and 0 < found.lag_ms < 5000  # found by the mapping's record
    assert src.stats()["tls_libs_mapped"] == before["tls_libs_mapped"] + 1  # one record for one load
    by = conns(recs)
    assert plain(by[Role.CLIENT], Direction.EGRESS) == REQ == plain(by[Role.SERVER], Direction.INGRESS)
    assert plain(by[Role.SERVER], Direction.EGRESS) == RESP == plain(by[Role.CLIENT], Direction.INGRESS)


NODE_SELF = r"""
const https = require('https'), fs = require('fs');
const [key, cert] = process.argv.slice(1);
const srv = https.createServer({key: fs.readFileSync(key), cert: fs.readFileSync(cert)},
  (req, res) => { res.setHeader('Content-Type', 'text/plain'); res.end('node ' + req.url); });
srv.listen(0, '127.0.0.1', async () => {
  const agent = new https.Agent({keepAlive: true, maxSockets: 1});
  for (const path of ['/a', '/b', '/c']) {
    await new Promise((ok) => https.get({host: '127.0.0.1', port: srv.address().port, path, agent,
                                         rejectUnauthorized: false}, (r) => { r.resume(); r.on('end', ok); }));
  }
  agent.destroy(); srv.close();
});
"""


def test_a_node_new_to_the_sensor_is_probed_at_its_exec(cert, tmp_path):
    """A short-lived node (a copy: a file the sensor has not seen) that serves itself three
    HTTPS requests: its exec record has the reader look at the new executable, which exports
    OpenSSL, and probe it, with no rescan meanwhile. That takes ~2 ms here, so even this first
    run is captured as a rule, but a loaded machine may delay the reader: what is asserted is
    the next run from the same file, captured from its first call (the probes are on the file)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh installs nodejs)")
    from andon.events.libssl_code import exports_openssl
    if not exports_openssl(os.path.realpath(node)):
        pytest.skip("this node links the host's libssl (Debian's): covered by the libssl probes")
    copy = tmp_path / "node"
    shutil.copy2(os.path.realpath(node), copy)
    src = SockSource(SockSettings(hook="tp_btf", pids=frozenset(), tls_rescan_s=3600.0))
    src.start()
    runs = []
    try:
        if src.tls is None:
            pytest.skip(f"TLS uprobes unavailable: {src.tls_error}")
        scans = src.tls.scans
        for _ in range(2):
            # TRIGGER: a shell (traced) execs the copy of node
            sh = subprocess.Popen(["sh", "-c", f'read go; exec "$0" -e "$1" {cert[1]} {cert[0]}', str(copy), NODE_SELF],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            src.add_pid(sh.pid)
            assert sh.stdin is not None
            sh.stdin.write("go\n")
            sh.stdin.close()
            recs = collect(src, {sh.pid}, closes=2, timeout=10.0)  # read while it runs, as the agent does
            assert sh.wait(timeout=30) == 0, sh.stderr.read() if sh.stderr else ""
            runs.append((sh.pid, recs))
        assert src.tls.scans == scans, "a rescan ran: the exec record is not what found node"
        found = [f for f in src.tls.files.values() if f.path.endswith(f"root{copy}")]
        # the first run's exec of the copy (and sh's, when its exec returned after its pid
        # was added); the second run's node is the same file
        exes = src.stats()["tls_exes_new"]
    finally:
        src.close()
    assert len(found) == 1 and found[0].pid == runs[0][0]  # found by the first run's exec
    assert exes in (1, 2)
    recs = runs[1][1]
    reqs = b"".join(r.data for r in data(recs, Direction.INGRESS) if r.data.startswith(b"GET "))
    assert [line.split(b" ")[1] for line in reqs.split(b"\r\n") if line.startswith(b"GET ")] == [b"/a", b"/b", b"/c"]
    assert all(r.encrypted for r in data(recs)) and len(data(recs)) == 12


PODMAN_RUN = ["podman", "run", "--rm", "-i", "--runtime", "runc", "--ulimit", "nofile=4096:4096",
              "--ulimit", "nproc=4096:4096", "--network", "none", "--pid", "host"]
IMAGE = os.environ.get("ANDON_TEST_IMAGE", "localhost/andon-test:bookworm")


def test_podman_container_with_its_own_libssl(shared, cert, tmp_path):
    """A container (own mount and network namespaces) whose libssl.so.3 at the standard
    path is not the host's file: found through /proc/<pid>/root, probed, captured."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        pytest.skip(f"image {IMAGE} is not there (make test-image)")
    src = shared
    prefix = Path(sys.base_prefix).resolve()  # the interpreter and its stdlib, mounted read-only
    libdir = tmp_path / "clib"
    libdir.mkdir()
    for name in ("libssl.so.3", "libcrypto.so.3"):
        shutil.copy(f"/usr/lib/x86_64-linux-gnu/{name}", libdir / name)
    certdir = Path(cert[0]).parent
    code = TLS_CHILD.format(cert="/t/cert.pem", key="/t/key.pem", req=REQ, resp=RESP, client="k.sendall(REQ)",
                            server_read=65536)
    argv = [*PODMAN_RUN, "-v", f"{prefix}:{prefix}:ro", "-v", f"{certdir}:/t:ro",
            "-v", f"{libdir}/libssl.so.3:/usr/lib/x86_64-linux-gnu/libssl.so.3:ro",
            "-v", f"{libdir}/libcrypto.so.3:/usr/lib/x86_64-linux-gnu/libcrypto.so.3:ro",
            IMAGE, str(prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"), "-c", code]
    # TRIGGER
    child = Child(src, argv)
    _wait_for_file(src, libdir / "libssl.so.3")
    child.go(timeout=60)
    recs = collect(src, {child.pid}, closes=2)
    # ASSERT
    found = next(f for f in src.tls.files.values() if f.pid == child.pid)
    assert found.path == f"/proc/{child.pid}/root/usr/lib/x86_64-linux-gnu/libssl.so.3"
    by = conns(recs)
    client, server = by[Role.CLIENT], by[Role.SERVER]
    assert client[0].netns == server[0].netns != os.stat("/proc/self/ns/net").st_ino
    assert plain(client, Direction.EGRESS) == REQ == plain(server, Direction.INGRESS)
    assert plain(server, Direction.EGRESS) == RESP == plain(client, Direction.INGRESS)
    assert all(r.encrypted and r.protocol == Protocol.HTTP for r in data(recs))


# -- Go's crypto/tls (src/andon/events/go_tls.py) ------------------------------------------

GO_DEMO = Path(__file__).resolve().parents[2] / "build/go/tlsdemo"  # tests/go/tlsdemo, built by `make test-go`
GO_READ, GO_WRITE = 7, 8  # SD_TLS_GO_*


def go_demo(src: SockSource, *args: str, exe: Path = GO_DEMO) -> subprocess.Popen:
    """tlsdemo ``args`` ``wait``: started, its pid traced, waiting for a byte on stdin."""
    if not exe.exists():
        pytest.skip(f"{exe} is not built: make test-go (needs golang-go, scripts/setup.sh)")
    p = subprocess.Popen([str(exe), *args, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    src.add_pid(p.pid)
    return p


def until_probed(src: SockSource, exe: Path, timeout: float = 10.0) -> list:
    """Read (and so rescan) until the Go executable ``exe`` is probed; the records read."""
    assert src.tls is not None
    out: list = []
    deadline = time.monotonic() + timeout
    while not any(f.go and f.path.endswith(f"root{exe}") for f in src.tls.files.values()):
        assert time.monotonic() < deadline, f"{exe} not probed: {src.tls.failed}"
        out.extend(src.read(0.05))
    return out


def run_gated(src: SockSource, p: subprocess.Popen, timeout: float = 20.0) -> list:
    """Let the gated child go; its records until it exits (read while it runs)."""
    assert p.stdin is not None
    p.stdin.write(b"x")
    p.stdin.close()
    out: list = []
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        out.extend(r for r in src.read(0.05) if r.pid == p.pid)
    out.extend(r for r in src.read(0.2) if r.pid == p.pid)
    err = p.stderr.read() if p.stderr else b""
    assert p.wait(timeout=5) == 0, err
    return out


def _go_self_records_are_the_exchange(recs: list, before: dict, after: dict) -> None:
    """``tlsdemo self 3``'s records: three GETs of /size/100 on one connection, both ends."""
    by = conns(recs)
    assert set(by) == {Role.CLIENT, Role.SERVER}
    cli, srv = by[Role.CLIENT], by[Role.SERVER]
    assert all(r.encrypted and r.flags & F_ENCRYPTED for r in data(recs)) and data(recs)
    assert {r.nr for r in data(recs, Direction.EGRESS)} == {GO_WRITE}
    assert {r.nr for r in data(recs, Direction.INGRESS)} == {GO_READ}
    reqs, resps = plain(cli, Direction.EGRESS), plain(srv, Direction.EGRESS)
    assert plain(srv, Direction.INGRESS) == reqs and plain(cli, Direction.INGRESS) == resps
    port = by[Role.SERVER][0].lport
    assert reqs.count(b"GET /size/100 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port) == 3
    assert reqs.count(b"\r\n\r\n") == 3 and reqs.endswith(b"\r\n\r\n")
    assert resps.count(b"HTTP/1.1 200 OK\r\n") == 3 and resps.count(b"Content-Length: 100\r\n") == 3
    assert resps.count(b"\r\n\r\n" + b"x" * 100) == 3 and resps.endswith(b"x" * 100)
    for rs in (cli, srv):
        for d in (Direction.EGRESS, Direction.INGRESS):
            pos = [(r.pos, r.size) for r in data(rs, d)]
            assert [a for a, _ in pos] == [sum(s for _, s in pos[:i]) for i in range(len(pos))]
    assert after["tls_chunks"] - before["tls_chunks"] == len(data(recs)) >= 12
    assert after["tls_no_conn"] == before["tls_no_conn"]
    assert after["go_tls_other_conn"] == before["go_tls_other_conn"]


def test_go_https_client_and_server_in_one_program(shared):
    """Go's net/http over Go's own crypto/tls (no OpenSSL anywhere), a kept-alive client and
    its server in one process: three GETs. Both ends' plaintext, exactly, from the probes on
    tls.(*Conn).Write (its entry) and Read (its copy of plaintext into the caller's buffer),
    on the right sockets, at contiguous positions; no ciphertext delivered, no call without
    its socket."""
    src = shared
    before = src.stats()
    p = go_demo(src, "self", "3")
    until_probed(src, GO_DEMO)
    recs = run_gated(src, p)
    _go_self_records_are_the_exchange(recs, before, src.stats())


def test_a_go_program_stripped_by_its_linker_is_traced_the_same(shared):
    """The test program linked with -ldflags="-s -w" (no ELF symbols, no DWARF: as release
    builds often are): found from Go's own function table, the same exchange captured."""
    src = shared
    exe = GO_DEMO.parent / "tlsdemo-stripped"
    before = src.stats()
    p = go_demo(src, "self", "3", exe=exe)
    until_probed(src, exe)
    recs = run_gated(src, p)
    _go_self_records_are_the_exchange(recs, before, src.stats())


def test_a_stripped_go_program_in_a_podman_container(shared, tmp_path):
    """The stripped Go program run in a container (its own mount and network namespaces) as
    /app/svc: found through /proc/<pid>/root, probed, both ends captured. A copy, so a file
    the sensor has not probed from the host's side already."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        pytest.skip(f"image {IMAGE} is not there (make test-image)")
    built = GO_DEMO.parent / "tlsdemo-stripped"
    if not built.exists():
        pytest.skip(f"{built} is not built: make test-go")
    exe = tmp_path / "svc"
    shutil.copy2(built, exe)
    src = shared
    before = src.stats()
    p = subprocess.Popen([*PODMAN_RUN, "-v", f"{exe}:/app/svc:ro", IMAGE, "/app/svc", "self", "3", "wait"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdin is not None
        line = p.stdout.readline()
        assert line, p.stderr.read() if p.stderr else ""
        pid = json.loads(line)["pid"]  # the host's pid (--pid host)
        src.add_pid(pid)
        until_probed(src, Path("/app/svc"))
        p.stdin.write(b"x")
        p.stdin.close()
        recs: list = []
        deadline = time.monotonic() + 30
        while p.poll() is None and time.monotonic() < deadline:
            recs.extend(r for r in src.read(0.05) if r.pid == pid)
        recs.extend(r for r in src.read(0.2) if r.pid == pid)
        assert p.wait(timeout=30) == 0, p.stderr.read() if p.stderr else ""
    finally:
        p.kill()
    found = [f for f in src.tls.files.values() if f.path == f"/proc/{pid}/root/app/svc"]
    assert len(found) == 1 and found[0].go.startswith("go1.")
    by = conns(recs)
    assert by[Role.CLIENT][0].netns == by[Role.SERVER][0].netns != os.stat("/proc/self/ns/net").st_ino
    _go_self_records_are_the_exchange(recs, before, src.stats())


def test_go_read_probed_at_its_rets_gives_the_same_plaintext(monkeypatch):
    """The fallback for a Go whose Read has not exactly one call of runtime.memmove: every
    ret of Read probed (single-stepped), the count from rax. The same exchange, the same
    records."""
    from andon.events import go_tls as g
    from andon.events import tls as t

    real = g._decode
    monkeypatch.setattr(g, "_decode", lambda code, vaddr, memmove=None: real(code, vaddr, None))
    src = SockSource(SockSettings(hook="tp_btf", pids=frozenset(), tls_rescan_s=0.2))
    src.start()
    try:
        if src.tls is None:
            pytest.skip(f"TLS uprobes unavailable: {src.tls_error}")
        before = src.stats()
        p = go_demo(src, "self", "3")
        until_probed(src, GO_DEMO)
        found = t.go_tls(str(GO_DEMO))
        assert found is not None and found.read.copy is None and found.read.rets
        recs = run_gated(src, p)
        after = src.stats()
    finally:
        src.close()
    _go_self_records_are_the_exchange(recs, before, after)


def test_go_tls_over_something_that_is_no_socket_is_counted_not_guessed(shared):
    """TLS over a net.Pipe: the Conn wraps no *net.TCPConn or *net.UnixConn, so there is no fd
    to read. Each call is counted (go_tls_other_conn), none is delivered as some socket's."""
    src = shared
    before = src.stats()
    p = go_demo(src, "pipe", "3")
    until_probed(src, GO_DEMO)
    recs = run_gated(src, p)
    after = src.stats()
    assert data(recs) == []
    # 3 pings: the client's Write and Read, the server's Read and Write, each at least once
    assert after["go_tls_other_conn"] - before["go_tls_other_conn"] >= 12
    assert after["tls_chunks"] == before["tls_chunks"]


def test_a_go_read_on_a_pipe_after_a_failed_socket_read_is_not_taken_for_the_socket(shared):
    """One goroutine: a Read of a TLS socket that times out (its entry noted, no copy), then a
    TLS exchange over a net.Pipe, whose Read copies an HTTP response. That copy must not find
    the socket Read's note and go out as the socket's data: the pipe Read's entry clears it."""
    src = shared
    before = src.stats()
    p = go_demo(src, "stale")
    until_probed(src, GO_DEMO)
    recs = run_gated(src, p)
    after = src.stats()
    assert [r for r in recs if isinstance(r, ConnOpen)], "the socket was seen"
    assert data(recs) == []  # the socket carried no plaintext; the pipe's is no socket's
    assert after["go_tls_other_conn"] - before["go_tls_other_conn"] >= 4  # the pipe's Reads and Writes


def test_a_go_program_new_to_the_sensor_is_probed_at_its_exec(cert, tmp_path):
    """A copy of the Go program (a file the sensor has not seen), no rescan. Its first run
    exits at once (a usage error), before the reader can look at /proc/<pid>/exe: the reader
    has the sensor forget the file, so that the next exec of it is reported again. The second
    run, exec'd by a traced shell and gated, is then found by its exec record, its
    crypto/tls probed, and its first requests captured."""
    if not GO_DEMO.exists():
        pytest.skip(f"{GO_DEMO} is not built: make test-go")
    copy = tmp_path / "tlsdemo"
    shutil.copy2(GO_DEMO, copy)
    src = SockSource(SockSettings(hook="tp_btf", pids=frozenset(), tls_rescan_s=3600.0))
    src.start()
    try:
        if src.tls is None:
            pytest.skip(f"TLS uprobes unavailable: {src.tls_error}")
        scans = src.tls.scans
        quick = subprocess.Popen(["sh", "-c", 'read go; exec "$0"', str(copy)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        src.add_pid(quick.pid)
        quick.communicate(b"go\n", timeout=10)
        assert quick.returncode == 2  # tlsdemo's usage error
        deadline = time.monotonic() + 10
        while src.stats()["tls_exes_retried"] < 1:  # the record, read after the process is gone
            assert time.monotonic() < deadline, src.stats()
            list(src.read(0.05))
        assert not any(f.path.endswith(f"root{copy}") for f in src.tls.files.values())
        sh = subprocess.Popen(["sh", "-c", 'read go; exec "$0" self 2 wait', str(copy)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        src.add_pid(sh.pid)
        assert sh.stdin is not None
        sh.stdin.write(b"go\n")
        sh.stdin.flush()
        until_probed(src, copy)
        recs = run_gated(src, sh)
        assert src.tls.scans == scans, "a rescan ran: the exec record is not what found the program"
        found = [f for f in src.tls.files.values() if f.path.endswith(f"root{copy}")]
        stats = src.stats()
    finally:
        src.close()
    assert len(found) == 1 and found[0].pid == sh.pid and found[0].go.startswith("go1.")
    assert found[0].functions == ("tls.(*Conn).Read", "tls.(*Conn).Write")
    assert stats["tls_exes_new"] >= 2 and stats["tls_exes_retried"] >= 1
    reqs = b"".join(r.data for r in data(recs, Direction.INGRESS))
    assert reqs.count(b"GET /size/100 HTTP/1.1\r\n") == 2 and len(data(recs)) == 8
