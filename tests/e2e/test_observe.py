"""Protocol tracing end to end: the real agent (`andon run --no-rules`), real servers and real
clients (tests/servers.py), rows read back with SQL and with `andon query`.

One agent and one server of each kind for the module (loading the sensor verifies a large
program; initdb takes seconds). The machine is shared with other work whose traffic the
sensor also sees, so every query picks this test's rows: the server's port, rows newer than
the test's start, and a random tag in what the client sent.

TRIGGER: the real client talks to the real server N times.
ASSERT: the tables hold exactly those N exchanges, on the client side (trace_role 1) and on
the server side (trace_role 2), with the protocol fields the client sent and received.

What the sensor does not see, and these tests therefore do not ask for (docs/observability.md):
- a socket duplicated onto other fds (a bash /dev/tcp client): each fd is its own connection,
  so the request and the response never pair.
"""

from __future__ import annotations

import contextlib
import json
import re
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import servers as S
from observe_agent import ANDON, ROOT, ObserveAgent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs and starts servers as their own users"),
]

CLIENT, SERVER = 1, 2  # trace_role
MYSQL_QUERY, MYSQL_QUIT, MYSQL_STMT_PREPARE, MYSQL_STMT_EXECUTE = 3, 1, 22, 23  # command bytes
MYSQL_OK, MYSQL_ERR = 2, 3  # Pixie's RespStatus
IMAGE = os.environ.get("ANDON_TEST_IMAGE", "localhost/andon-test:bookworm")
PODMAN_RUN = ["run", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
WAIT_S = 30.0  # the agent parses behind the clients; far behind while other work floods the machine

# a bigger ring than the default 32 MiB: other work on the machine may flood it for a while
CONFIG = """\
observe:
  ring_buffer_mb: 64
"""

# rows this module made, per table: the closing line must count at least these
MADE: dict[str, int] = {}


def _made(table: str, n: int) -> None:
    MADE[table] = MADE.get(table, 0) + n


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _on_port(port: int, since_ns: int) -> str:
    """SQL: a server's rows at both ends (the server's local port, the client's remote port)
    since ``since_ns``."""
    return (f"((local_port = {port} AND trace_role = {SERVER}) OR (remote_port = {port} AND trace_role = {CLIENT})) "
            f"AND time_ >= {since_ns}")


def _sides(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    return [x for x in rows if x["trace_role"] == CLIENT], [x for x in rows if x["trace_role"] == SERVER]


# -- fixtures: one agent, one server of each kind ----------------------------------------------------
@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    obj = ROOT / "build" / "bpf" / "net" / "sockdata.bpf.o"
    if not obj.exists():
        pytest.skip(f"BPF objects not built ({obj} missing): run `make bpf`")
    with ObserveAgent(tmp_path_factory.mktemp("observe") / "data", config=CONFIG) as a:
        yield a


@pytest.fixture(scope="module")
def http():
    with S.python_http() as srv:
        yield srv


@pytest.fixture(scope="module")
def pg():
    with S.postgres() as srv:
        yield srv


@pytest.fixture(scope="module")
def maria():
    with S.mariadb() as srv:
        yield srv


@pytest.fixture(scope="module")
def redis():
    with S.redis() as srv:
        yield srv


@pytest.fixture(scope="module")
def dns():
    with S.dnsmasq() as srv:
        yield srv


# -- HTTP --------------------------------------------------------------------------------------------
HTTP_COLS = ("time_, trace_role, req_method, req_path, req_headers, resp_status, resp_message, resp_headers, resp_body, "
             "resp_body_size, latency, comm, pid, local_addr, local_port, remote_addr, remote_port, encrypted, "
             "major_version, minor_version, container_id, container_name, remote_pid, remote_comm")


def _http_rows(agent: ObserveAgent, srv: S.Server, since: int, tag: str, n: int) -> list[dict]:
    # servers.py's readiness probe (curl /) is on the same port: keep the tagged requests
    return agent.wait_rows(f"SELECT {HTTP_COLS} FROM http_events WHERE {_on_port(srv.port, since)} "
                           f"AND req_path LIKE '%t={tag}' ORDER BY time_", n, timeout=WAIT_S)


def test_http_keepalive_client_and_server_rows(agent: ObserveAgent, http: S.Server):
    n, tag, t0 = 20, secrets.token_hex(4), time.time_ns()
    # statuses that carry a body (not 1xx/204/304, which the Python server would break)
    codes = [200, 201, 202, 400, 403, 404, 418, 500, 502, 503]
    paths = [f"/status/{codes[i % 10]}?t={tag}" if i % 4 else f"/size/{i * 10}?t={tag}" for i in range(n)]
    want = [(p, 200 if p.startswith("/size/") else int(p[8:11])) for p in paths]
    r = S.curl([http.url(p) for p in paths])
    assert (r.statuses, r.connects) == ([s for _, s in want], 1), "one kept-alive connection"
    rows = _http_rows(agent, http, t0, tag, 2 * n)

    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (n, n), agent.log_tail()
    _made("http_events", 2 * n)
    for side, comm in ((clients, "curl"), (servers_, _comm(http.pid))):
        assert [(x["req_path"], x["resp_status"]) for x in side] == want
        assert {(x["req_method"], x["major_version"], x["minor_version"], x["comm"], x["encrypted"])
                for x in side} == {("GET", 1, 1, comm, False)}
        assert [x["resp_body_size"] for x in side] == r.sizes
        assert [x["resp_body"] for x in side if x["resp_status"] == 418] == [
            "status 418\n"] * [s for _, s in want].count(418)
        assert json.loads(side[0]["req_headers"])["Host"] == f"127.0.0.1:{http.port}"
        assert len({x["pid"] for x in side}) == 1
    assert servers_[0]["pid"] == http.pid
    # both ends are on this host: each names the process at the other end
    assert {(x["remote_pid"], x["remote_comm"]) for x in servers_} == {(clients[0]["pid"], "curl")}
    assert {(x["remote_pid"], x["remote_comm"]) for x in clients} == {(http.pid, _comm(http.pid))}
    # one connection: the client's local port is the server's remote port on every row
    assert {(x["local_addr"], x["remote_addr"], x["remote_port"]) for x in clients} == {
        ("127.0.0.1", "127.0.0.1", http.port)}
    assert {(x["remote_port"], x["local_port"]) for x in servers_} == {(clients[0]["local_port"], http.port)}
    # latency (request end to response end): > 0, and within what curl measured for the same
    # request (curl's time_total also covers its own work; 2 ms slack for the clocks)
    for side in (clients, servers_):
        for row, curl_s in zip(side, r.latencies_s):
            assert 0 < row["latency"] <= curl_s * 1e9 + 2e6, (row["trace_role"], row["req_path"], row["latency"], curl_s)


def test_http_nginx_200_and_404(agent: ObserveAgent):
    tag, t0 = secrets.token_hex(4), time.time_ns()
    with S.nginx() as srv:
        r = S.curl([srv.url(f"/?t={tag}"), srv.url(f"/missing?t={tag}")])
        assert r.statuses == [200, 404]
        rows = _http_rows(agent, srv, t0, tag, 4)
        workers = srv.worker_pids()
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (2, 2), agent.log_tail()
    _made("http_events", 4)
    for side in (clients, servers_):
        assert [(x["req_path"], x["resp_status"], x["resp_message"]) for x in side] == [
            (f"/?t={tag}", 200, "OK"), (f"/missing?t={tag}", 404, "Not Found")]
        assert [x["resp_body_size"] for x in side] == r.sizes
        # the status and headers come from nginx's header write; the body of a static file is
        # seen here because this nginx.conf leaves `sendfile` off (with it on: the next test)
        assert side[0]["resp_body"] == S.HTTP_ROOT_BODY.decode()
        assert json.loads(side[0]["resp_headers"])["Server"].startswith("nginx/")
    assert {x["comm"] for x in servers_} == {"nginx"} and {x["pid"] for x in servers_} <= set(workers)


def test_http_nginx_sendfile_on_keeps_every_response(agent: ObserveAgent):
    """Debian's nginx.conf has `sendfile on`: nginx writes a static file's response head, then
    sendfile(2)s the file to the socket. Those bytes never pass through nginx's memory: the
    sensor sends their size, so the server end keeps its framing (before, the first body's
    Content-Length swallowed the next response's head and the server end lost every response
    after the first of a kept-alive connection)."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    sizes = (100, 1024, 16384, 100, 1 << 20, 0, 1024)
    paths = [f"/size/{n}?t={tag}" for n in sizes] + [f"/?t={tag}", f"/missing?t={tag}"]
    with S.nginx(sendfile=True) as srv:
        r = S.curl([srv.url(p) for p in paths])
        assert (r.statuses, r.connects) == ([200] * (len(sizes) + 1) + [404], 1), "one kept-alive connection"
        rows = _http_rows(agent, srv, t0, tag, 2 * len(paths))
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (len(paths), len(paths)), agent.log_tail()
    _made("http_events", 2 * len(paths))
    for side in (clients, servers_):
        assert [(x["req_path"], x["resp_status"], x["resp_body_size"]) for x in side] == [
            (p, s, n) for p, s, n in zip(paths, r.statuses, r.sizes)]
        assert list(r.sizes[:len(sizes)]) == list(sizes)
    # the client read the file's bytes: its body prefix is there; the server sent them by
    # sendfile: its body column is empty, its size is right. The 404 page is nginx's own
    # memory (a write), so both ends have it.
    assert (clients[-2]["resp_body"], servers_[-2]["resp_body"]) == (S.HTTP_ROOT_BODY.decode(), "")
    assert clients[-1]["resp_body"] == servers_[-1]["resp_body"] != ""
    assert {x["comm"] for x in servers_} == {"nginx"}


def test_https_rows_are_plaintext_and_encrypted(agent: ObserveAgent):
    tag, t0 = secrets.token_hex(4), time.time_ns()
    paths = [f"/size/{i}?t={tag}" for i in (1, 22, 333)]
    with S.python_http(tls=True) as srv:
        r = S.curl([srv.url(p) for p in paths], cacert=srv.info["cert"])
        assert (r.statuses, r.connects) == ([200] * 3, 1)
        rows = _http_rows(agent, srv, t0, tag, 6)
        server_comm = _comm(srv.pid)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (3, 3), agent.log_tail()
    _made("http_events", 6)
    for side, comm in ((clients, "curl"), (servers_, server_comm)):
        # OpenSSL's SSL_write/SSL_read plaintext, so the HTTP fields are readable
        assert [(x["req_method"], x["req_path"], x["resp_status"], x["resp_body_size"]) for x in side] == [
            ("GET", p, 200, int(p[6:].split("?")[0])) for p in paths]
        assert {(x["encrypted"], x["comm"]) for x in side} == {(True, comm)}


# asyncio's TLS: an SSL over a memory BIO, whose calls never touch the socket (aiohttp here;
# uvicorn and asyncpg use the same asyncio SSLProtocol)
AIOHTTP_CLIENT = r"""
import asyncio, json, sys
import aiohttp
urls = sys.argv[1:]
async def main():
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, limit=1)) as s:
        for u in urls:
            async with s.get(u) as r:
                out.append([r.status, await r.text()])
    print(json.dumps(out))
asyncio.run(main())
"""


def test_asyncio_tls_aiohttp_both_ends_are_plaintext_and_encrypted(agent: ObserveAgent):
    """aiohttp's server and client (asyncio: every SSL on a memory BIO, so no OpenSSL call reads
    or writes a socket) in two processes, one kept-alive connection: each request is a row
    at both ends with its path, status and body, `encrypted`. Then curl (a socket BIO) against
    the same server. Before, every asyncio call was counted in tls_no_conn and made no row."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    codes = [200, 201, 404, 500, 200]
    paths = [f"/status/{c}?i={i}&t={tag}" for i, c in enumerate(codes)]
    with S.aiohttp_http(tls=True) as srv:
        r = subprocess.run([sys.executable, "-c", AIOHTTP_CLIENT, *(srv.url(p) for p in paths)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == [[c, f"status {c}\n"] for c in codes]
        rows = _http_rows(agent, srv, t0, tag, 2 * len(paths))
        curl = S.curl([srv.url(f"/size/{n}?t={tag}") for n in (10, 2000)], cacert=srv.info["cert"])
        assert (curl.statuses, curl.connects) == ([200, 200], 1)
        rows2 = _http_rows(agent, srv, t0, tag, 2 * len(paths) + 4)
        comm = _comm(srv.pid)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (len(paths), len(paths)), agent.log_tail()
    for side in (clients, servers_):
        assert [(x["req_method"], x["req_path"], x["resp_status"], x["resp_body"]) for x in side] == [
            ("GET", p, c, f"status {c}\n") for c, p in zip(codes, paths)]
        assert {x["encrypted"] for x in side} == {True}
        assert all(x["latency"] > 0 for x in side)
    assert {x["pid"] for x in servers_} == {srv.pid}
    assert {x["pid"] for x in clients} == {x["remote_pid"] for x in servers_} != {0}
    assert len({x["local_port"] for x in clients}) == 1, "one kept-alive connection"
    by_curl = [x for x in rows2 if x["req_path"].startswith("/size/")]
    assert sorted((x["trace_role"], x["comm"], x["req_path"], x["resp_body_size"], x["encrypted"]) for x in by_curl) == [
        (CLIENT, "curl", f"/size/10?t={tag}", 10, True), (CLIENT, "curl", f"/size/2000?t={tag}", 2000, True),
        (SERVER, comm, f"/size/10?t={tag}", 10, True), (SERVER, comm, f"/size/2000?t={tag}", 2000, True)]
    _made("http_events", len(rows2))


# node's https module at both ends: NodeSource's and nodejs.org's builds link OpenSSL in
# statically and export it (the agent probes the node executable itself), Debian's links the
# host's libssl; either way node's TLS goes through its own memory BIO
NODE_SERVER = r"""
const https = require('https'), fs = require('fs');
const [key, cert] = process.argv.slice(1);  // node -e: no script path in argv
const srv = https.createServer({key: fs.readFileSync(key), cert: fs.readFileSync(cert)},
  (req, res) => { res.statusCode = req.url.startsWith('/missing') ? 404 : 200; res.setHeader('Content-Type', 'text/plain');
                  res.end('node ' + req.url + '\n'); });
srv.keepAliveTimeout = 30000;
srv.listen(0, '127.0.0.1', () => console.log(JSON.stringify({pid: process.pid, port: srv.address().port})));
process.stdin.on('data', () => { srv.close(); process.exit(0); });
"""

NODE_CLIENT = r"""
const https = require('https');
const [port, ...paths] = process.argv.slice(1);
const agent = new https.Agent({keepAlive: true, maxSockets: 1});
(async () => {
  const out = [];
  for (const path of paths) {
    out.push(await new Promise((ok, fail) => https.get({host: '127.0.0.1', port, path, agent, rejectUnauthorized: false},
      (r) => { let b = ''; r.on('data', (d) => b += d); r.on('end', () => ok([r.statusCode, b])); }).on('error', fail)));
  }
  agent.destroy();
  console.log(JSON.stringify(out));
})();
"""


def test_node_https_server_and_client_both_ends(agent: ObserveAgent, tmp_path: Path):
    """A node HTTPS server and a node client on one kept-alive connection: each request a row
    at both ends, `encrypted`. The agent probes a node file new to it at its first exec, which
    takes ~130 ms (and when an earlier test ran node, it is probed already); the test first
    waits until a request shows at the server end."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh installs nodejs)")
    tag, t0 = secrets.token_hex(4), time.time_ns()
    cert, key = S.self_signed_cert(tmp_path)
    srv = subprocess.Popen([node, "-e", NODE_SERVER, str(key), str(cert)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(srv.stdout.readline() or "{}")
        assert info, srv.stderr.read()
        port = info["port"]

        def client(*paths: str) -> list:
            r = subprocess.run([node, "-e", NODE_CLIENT, str(port), *paths], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        deadline = time.monotonic() + WAIT_S
        while not agent.sql(f"SELECT 1 FROM http_events WHERE {_on_port(port, t0)} AND trace_role = {SERVER} "
                            f"AND req_path LIKE '/warm%t={tag}'"):
            assert time.monotonic() < deadline, "the node server was never traced: " + agent.log_tail()
            client(f"/warm?t={tag}")
            time.sleep(0.5)
        paths = [f"/item/{i}?t={tag}" for i in range(4)] + [f"/missing?t={tag}"]
        assert client(*paths) == [[200, f"node {p}\n"] for p in paths[:4]] + [[404, f"node {paths[4]}\n"]]
        rows = agent.wait_rows(f"SELECT {HTTP_COLS} FROM http_events WHERE {_on_port(port, t0)} "
                               f"AND req_path NOT LIKE '/warm%' AND req_path LIKE '%t={tag}' ORDER BY time_",
                               2 * len(paths), timeout=WAIT_S)
    finally:
        srv.communicate("stop\n", timeout=30)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (len(paths), len(paths)), agent.log_tail()
    for side in (clients, servers_):
        assert [(x["req_method"], x["req_path"], x["resp_status"], x["resp_body"]) for x in side] == [
            ("GET", p, 404 if p.startswith("/missing") else 200, f"node {p}\n") for p in paths]
        assert {(x["encrypted"], x["comm"]) for x in side} == {(True, "node")}
    assert len({x["local_port"] for x in clients}) == 1, "one kept-alive connection"
    _made("http_events", len(rows))


def _until_go_server_traced(agent: ObserveAgent, srv: S.Server, tag: str, t0: int) -> None:
    """curl a /warm path until a request shows at the Go server's end: the agent probes a Go
    program at its exec, which a request made first can beat."""
    deadline = time.monotonic() + WAIT_S
    while not agent.sql(f"SELECT 1 FROM http_events WHERE {_on_port(srv.port, t0)} AND trace_role = {SERVER} "
                        f"AND req_path LIKE '/warm%t={tag}'"):
        assert time.monotonic() < deadline, "the Go server was never traced: " + agent.log_tail()
        S.curl(srv.url(f"/warm?t={tag}"), cacert=srv.info["cert"])
        time.sleep(0.5)


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "http2"])
def test_go_https_server_with_curl_and_a_go_client(agent: ObserveAgent, h2: bool):
    """A Go HTTPS server (net/http over Go's own crypto/tls: no OpenSSL in it) and two clients:
    curl (OpenSSL) and a Go client on one kept-alive connection. Every request is a row at
    both ends, `encrypted`, with the Go ends found in the Go executable (go_tls). HTTP/1.1, or
    HTTP/2 as Go's net/http serves by default and curl and Go's client take it (ALPN h2:
    `major_version` 2). The server is probed at its exec; the test first waits until a
    request shows at its end."""
    if not S.GO_DEMO.exists():
        pytest.skip(f"{S.GO_DEMO} is not built: make test-go")
    tag, t0 = secrets.token_hex(4), time.time_ns()
    with S.go_https(h2=h2) as srv:
        _until_go_server_traced(agent, srv, tag, t0)
        curl_paths = [f"/size/{n}?t={tag}" for n in (5, 77)] + [f"/status/503?t={tag}"]
        if h2:
            r = subprocess.run(["curl", "-sk", "--http2", "-w", "%{http_version} %{http_code}\n",
                                *[a for p in curl_paths for a in ("-o", "/dev/null", srv.url(p))]],
                               capture_output=True, text=True, timeout=60)
            assert r.stdout.split("\n")[:3] == ["2 200", "2 200", "2 503"], r.stderr
        else:
            c = S.curl([srv.url(p) for p in curl_paths], cacert=srv.info["cert"])
            assert (c.statuses, c.connects) == ([200, 200, 503], 1)
        go_path = f"/size/37?t={tag}"
        got = subprocess.run([str(S.GO_DEMO), "get-h2" if h2 else "get", srv.url(go_path), "4"], capture_output=True,
                             text=True, timeout=60)
        proto = "HTTP/2.0" if h2 else "HTTP/1.1"
        assert got.returncode == 0 and got.stdout.split("\n")[:4] == [f"200 37 {proto}"] * 4, got.stderr
        rows = agent.wait_rows(f"SELECT {HTTP_COLS} FROM http_events WHERE {_on_port(srv.port, t0)} "
                               f"AND req_path NOT LIKE '/warm%' AND req_path LIKE '%t={tag}' ORDER BY time_",
                               2 * 7, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (7, 7), agent.log_tail()
    want = [(p, 503 if "503" in p else 200) for p in curl_paths] + [(go_path, 200)] * 4
    version = (2, 0) if h2 else (1, 1)
    for side in (clients, servers_):
        assert [(x["req_method"], x["req_path"], x["resp_status"]) for x in side] == [("GET", p, c) for p, c in want]
        assert {(x["major_version"], x["minor_version"], x["encrypted"]) for x in side} == {(*version, True)}
        assert [x["resp_body_size"] for x in side] == [5, 77, 11] + [37] * 4
        assert [x["resp_body"] for x in side if "503" in x["req_path"]] == ["status 503\n"]
        assert all(x["latency"] > 0 for x in side)
    assert {x["comm"] for x in servers_} == {"tlsdemo"}
    assert [x["comm"] for x in clients] == ["curl"] * 3 + ["tlsdemo"] * 4
    assert len({x["local_port"] for x in clients if x["comm"] == "tlsdemo"}) == 1, "one kept-alive connection"
    # both ends on this host: each server row names its caller's process
    assert [x["remote_comm"] for x in servers_] == ["curl"] * 3 + ["tlsdemo"] * 4
    if h2:
        for x in servers_:
            assert json.loads(x["req_headers"])[":authority"] == f"127.0.0.1:{srv.port}"
    _made("http_events", len(rows))


def test_http2_to_nginx_over_tls_from_curl(agent: ObserveAgent):
    """nginx with `listen ... ssl http2` and curl (ALPN h2), both through OpenSSL's probes:
    nginx's own HPACK encoder and frame writes, rows at both ends with `major_version` 2."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    paths = [f"/size/{n}?t={tag}" for n in (0, 100, 16384)] + [f"/missing?t={tag}"]
    with S.nginx(tls=True, http2=True) as srv:
        r = subprocess.run(["curl", "-sk", "--http2", "-w", "%{http_version} %{http_code}\n",
                            *[a for p in paths for a in ("-o", "/dev/null", srv.url(p))]],
                           capture_output=True, text=True, timeout=60)
        assert r.stdout.split("\n")[:4] == ["2 200"] * 3 + ["2 404"], r.stderr
        rows = agent.wait_rows(f"SELECT {HTTP_COLS} FROM http_events WHERE {_on_port(srv.port, t0)} "
                               f"AND req_path LIKE '%t={tag}' ORDER BY time_", 2 * len(paths), timeout=WAIT_S)
        server_comm = _comm(srv.worker_pids()[0])
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (4, 4), agent.log_tail()
    for side, comm in ((clients, "curl"), (servers_, server_comm)):
        assert [(x["req_method"], x["req_path"], x["resp_status"]) for x in side] == [
            ("GET", p, 404 if "missing" in p else 200) for p in paths]
        # 16 KiB are more than the sensor copies of a write (4 KiB): the frame headers among the
        # bytes not copied are counted in the body too (9 bytes each, a frame every 8 KiB)
        sizes = [x["resp_body_size"] for x in side]
        assert sizes[:2] == [0, 100] and 16384 <= sizes[2] <= 16384 + 9 * 2
        assert {(x["major_version"], x["encrypted"], x["comm"]) for x in side} == {(2, True, comm)}
        assert all(json.loads(x["resp_headers"]).get("server", "").startswith("nginx") for x in side)
    _made("http_events", len(rows))


def test_http2_in_the_clear_with_prior_knowledge(agent: ObserveAgent):
    """h2c: nginx with `listen ... http2` and no TLS, curl with --http2-prior-knowledge. The
    sensor infers HTTP/2 from the preface in the socket's own bytes (no uprobes): rows at
    both ends, `major_version` 2, not `encrypted`."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    paths = [f"/size/100?t={tag}", f"/missing?t={tag}", f"/?t={tag}"]
    with S.nginx(http2=True) as srv:
        got = [subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                               "%{http_version} %{http_code}", srv.url(p)], capture_output=True, text=True,
                              timeout=60).stdout for p in paths]  # one connection each
        assert got == ["2 200", "2 404", "2 200"]
        rows = agent.wait_rows(f"SELECT {HTTP_COLS} FROM http_events WHERE {_on_port(srv.port, t0)} "
                               f"AND req_path LIKE '%t={tag}' ORDER BY time_", 2 * len(paths), timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (3, 3), agent.log_tail()
    for side in (clients, servers_):
        assert [(x["req_method"], x["req_path"], x["resp_status"]) for x in side] == [
            ("GET", paths[0], 200), ("GET", paths[1], 404), ("GET", paths[2], 200)]
        assert {(x["major_version"], x["encrypted"]) for x in side} == {(2, False)}
        assert side[0]["resp_body_size"] == 100
    _made("http_events", len(rows))


def test_grpc_in_the_clear_messages_decoded_at_both_ends(agent: ObserveAgent):
    """gRPC's C core (grpcio) at both ends, h2c, one channel: a unary call, the same with a
    bigger request gzip-compressed (its string cut at 64 bytes, as Pixie's), a call that
    fails, a server-streaming call. Each is a row at both ends: `content_type` 2 (gRPC), the
    messages decoded from protobuf without a schema as Pixie shows them, the status in the
    trailers. The sensor infers HTTP/2 from the preface."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    name = f"go-{tag}"  # 'g' is no protobuf tag (wire type 7): printed as a string, not a message
    with S.grpc_server() as srv:
        got = S.grpc_calls(srv, name)
        assert [(m, code) for m, code, _ in got] == [("SayHello", "OK"), ("SayHello", "OK"), ("Fail", "NOT_FOUND"),
                                                      ("Count", "OK")]
        rows = agent.wait_rows(f"SELECT {HTTP_COLS}, req_body, req_body_size, content_type FROM http_events "
                               f"WHERE {_on_port(srv.port, t0)} AND req_body LIKE '%{name}%' ORDER BY time_",
                               2 * len(got), timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (4, 4), agent.log_tail()
    hello = f'1: "Hello, {name}!"\n2: {len(name)}'
    for side in (clients, servers_):
        assert [(x["req_method"], x["req_path"], x["resp_status"], x["content_type"], x["major_version"])
                for x in side] == [("POST", f"/demo.Greeter/{m}", 200, 2, 2) for m, _, _ in got]
        assert [(x["req_body"], x["resp_body"]) for x in side] == [
            (f'1: "{name}"', hello), (f'1: "{name}"\n3: "{"g" * 64}...<truncated>..."', hello), (f'1: "{name}"', ""),
            (f'1: "{name}"\n2: 3', "\n".join(f'1: "{name}"\n2: {i}' for i in range(3)))]
        trailers = [json.loads(x["resp_headers"]) for x in side]
        assert [t["grpc-status"] for t in trailers] == ["0", "0", "5", "0"]
        assert trailers[2]["grpc-message"] == f"no such name: {name}"
        assert json.loads(side[1]["req_headers"])["grpc-encoding"] == "gzip"
        assert side[1]["req_body_size"] < 300  # its message went compressed
        assert side[0]["req_body_size"] == 5 + 2 + len(name)  # the length prefix and the message, uncompressed
        assert all(x["latency"] > 0 and not x["encrypted"] for x in side)
    assert {x["pid"] for x in servers_} == {srv.pid}
    assert len({x["local_port"] for x in clients}) == 1, "one channel, one connection"
    _made("http_events", len(rows))


def test_grpc_go_over_tls_both_ends(agent: ObserveAgent):
    """grpc-go (Debian's, tests/go/grpcdemo) at both ends over Go's own crypto/tls, HTTP/2 by
    ALPN: three SayHello calls and a failing one on one connection are rows at both ends,
    `encrypted`, `content_type` 2, the messages decoded and the status in the trailers. The
    server is probed at its exec (the client runs the same file): the test first calls until
    a call shows at its end."""
    if not S.GO_GRPC.exists():
        pytest.skip(f"{S.GO_GRPC} is not built: make test-go")
    tag, t0 = secrets.token_hex(4), time.time_ns()
    name = f"go-{tag}"

    def call(who: str, n: int) -> list:
        r = subprocess.run([str(S.GO_GRPC), "call", f"{srv.host}:{srv.port}", who, str(n)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def rows_of(who: str) -> str:
        return (f"SELECT {HTTP_COLS}, req_body, content_type FROM http_events WHERE {_on_port(srv.port, t0)} "
                f"AND req_body LIKE '%\"{who}%' ORDER BY time_")
    with S.go_grpc() as srv:
        deadline = time.monotonic() + WAIT_S
        while not agent.sql(rows_of(f"go-warm-{tag}") + " LIMIT 1"):
            assert time.monotonic() < deadline, "the gRPC server was never traced: " + agent.log_tail()
            call(f"go-warm-{tag}", 1)
            time.sleep(0.5)
        got = call(name, 3)
        assert got == [["OK", f"Hello, {name}-{i}!"] for i in range(3)] + [["NotFound", f"no such name: {name}"]]
        rows = agent.wait_rows(rows_of(name), 2 * 4, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (4, 4), agent.log_tail()
    for side in (clients, servers_):
        assert [(x["req_method"], x["req_path"], x["resp_status"], x["content_type"]) for x in side] == [
            ("POST", "/demo.Greeter/SayHello", 200, 2)] * 3 + [("POST", "/demo.Greeter/Fail", 200, 2)]
        assert [x["req_body"] for x in side] == [f'1: "{name}-{i}"' for i in range(3)] + [f'1: "{name}"']
        assert [x["resp_body"] for x in side] == [
            f'1: "Hello, {name}-{i}!"\n2: {len(name) + 2}' for i in range(3)] + [""]
        assert [json.loads(x["resp_headers"])["grpc-status"] for x in side] == ["0", "0", "0", "5"]
        assert {(x["major_version"], x["encrypted"], x["comm"]) for x in side} == {(2, True, "grpcdemo")}
    assert len({x["local_port"] for x in clients}) == 1, "one connection"
    _made("http_events", len(rows))


@contextlib.contextmanager
def _grpc_phases(srv: S.Server, name: str, *, flood: int, after: int) -> Iterator[Callable[[str], None]]:
    """tests/servers.py's grpc-phases client against ``srv``, on one channel: yields
    ``phase(expect)``, which starts its next phase and waits for its end."""
    cli = subprocess.Popen([sys.executable, str(Path(S.__file__).resolve()), "grpc-phases", "--port", str(srv.port),
                            "--name", name, "--flood", str(flood), "--after", str(after)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def phase(expect: str) -> None:
        cli.stdin.write("go\n")
        cli.stdin.flush()
        assert cli.stdout.readline().strip() == expect
    try:
        yield phase
    finally:
        cli.kill()
        cli.wait()


def test_a_grpc_channel_begun_before_the_agent_is_traced(tmp_path: Path):
    """A gRPC channel (HTTP/2 in the clear) opened, and used, before the agent starts: no
    preface to infer HTTP/2 from. The sensor knows it by its frames, and its 20 calls after
    the agent started are rows at both ends (POST, status 200, the messages' bytes), the
    roles from the frames: a block that starts with :status is the server's. Fields naming
    HPACK entries the agent never saw added are left out, never guessed."""
    tag = secrets.token_hex(4)
    name = f"go-{tag}"
    with S.grpc_server() as srv, _grpc_phases(srv, name, flood=0, after=20) as phase:
        phase("before")  # the channel is up and used: preface, settings, three calls
        with ObserveAgent(tmp_path / "data") as ag:
            phase("flood")  # none
            phase("after")
            rows = ag.wait_rows(f"SELECT trace_role, req_method, req_path, resp_status, req_body, major_version "
                                f"FROM http_events WHERE {_on_port(srv.port, 0)} AND req_body LIKE '%{name}-after-%' "
                                f"ORDER BY time_", 40, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (20, 20), rows[:2]
    for side in (clients, servers_):
        assert {(x["req_method"], x["resp_status"], x["major_version"]) for x in side} == {("POST", 200, 2)}
        assert {x["req_path"] for x in side} <= {"", "/demo.Greeter/SayHello"}
        assert all(f"{name}-after-{i}" in x["req_body"] for i, x in enumerate(side))


def test_an_http2_connection_goes_on_after_its_records_are_lost(tmp_path: Path):
    """One gRPC channel (HTTP/2 in the clear) carries calls before, during and after a loss:
    the agent (its own, with a 1 MiB ring) is stopped (SIGSTOP) while 3,000 calls flood the
    ring, then resumed, and 200 calls follow once it has caught up. The records lost are
    counted; every call after the loss is a row at both ends again, with its messages, none
    with a wrong field. Fields that name HPACK entries added before the loss are left out
    (gRPC's C core names every header of a repeated call by index: its path among them, until
    its table turns over). Before, one lost record had ended every later row of the
    connection."""
    tag = secrets.token_hex(4)
    name, after_n = f"go-{tag}", 200
    with (ObserveAgent(tmp_path / "data", config="observe:\n  ring_buffer_mb: 1\n") as ag, S.grpc_server() as srv,
          _grpc_phases(srv, name, flood=3000, after=after_n) as phase):
        def rows_of(ph: str) -> str:
            return (f"SELECT trace_role, req_method, req_path, resp_status, req_body, resp_body FROM http_events "
                    f"WHERE {_on_port(srv.port, 0)} AND req_body LIKE '%{name}-{ph}-%' ORDER BY time_")
        phase("before")
        assert len(ag.wait_rows(rows_of("before"), 6, timeout=WAIT_S)) == 6, ag.log_tail()
        os.kill(ag.pid, signal.SIGSTOP)
        try:
            phase("flood")
        finally:
            os.kill(ag.pid, signal.SIGCONT)
        # the agent catches up with the ring (else the calls after would find it still full)
        flood, deadline = -1, time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(1.0)
            n = len(ag.sql(rows_of("flood")))
            if n == flood:
                break
            flood = n
        phase("after")
        after = ag.wait_rows(rows_of("after"), 2 * after_n, timeout=WAIT_S)
        # for a failure's message: the calls' rows by end and ports, whatever the connection
        seen = ag.sql(f"SELECT trace_role, local_port, remote_port, count(*) AS n, min(req_path) AS path, "
                      f"min(substr(req_body, 1, 30)) AS body FROM http_events WHERE req_body LIKE '%{name}-after-%' "
                      f"GROUP BY ALL ORDER BY ALL")
        ag.stop()
        lost = re.search(r"(\d+) records lost", ag.closing_line())
    assert lost and int(lost.group(1)) > 0, ag.log_tail()
    assert 0 < flood < 2 * 3000  # this connection's records were among those lost
    clients, servers_ = _sides(after)
    assert (len(clients), len(servers_)) == (after_n, after_n), f"{seen}\n{ag.log_tail()}"
    hello = [f'1: "Hello, {name}-after-{i}!"\n2: {len(f"{name}-after-{i}")}' for i in range(after_n)]
    for side in (clients, servers_):
        assert {(x["req_method"], x["resp_status"]) for x in side} == {("POST", 200)}  # static entries
        assert {x["req_path"] for x in side} <= {"", "/demo.Greeter/SayHello"}  # known, or left out
        # the messages: a body framed as gRPC's on a connection that carried gRPC is decoded
        # even where the content-type named an entry lost
        assert [(x["req_body"], x["resp_body"]) for x in side] == [
            (f'1: "{name}-after-{i}"', hello[i]) for i in range(after_n)]


ASYNCPG_TLS = r"""
import asyncio, json, sys
import asyncpg
port, tag = int(sys.argv[1]), sys.argv[2]
async def main():
    c = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", ssl="require")
    got = await c.fetch(f"SELECT $1::int + 1 AS t_{tag}", 41)
    ssl = await c.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    await c.close()
    print(json.dumps({"got": [list(r) for r in got], "ssl": ssl}))
asyncio.run(main())
"""


# -- PostgreSQL --------------------------------------------------------------------------------------
def test_pgsql_simple_and_extended_protocol(agent: ObserveAgent, pg: S.Server):
    tag, t0 = secrets.token_hex(4), time.time_ns()
    table = f"t_{tag}"
    assert S.psql(pg, "SELECT 1") == [["1"]]
    script = (f"CREATE TABLE {table} (id int, name text); INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c'); "
              f"SELECT * FROM {table} ORDER BY id")
    assert S.psql(pg, script) == [["1", "a"], ["2", "b"], ["3", "c"]]
    with pytest.raises(S.ClientError, match='relation "nope" does not exist'):
        S.psql(pg, "SELECT * FROM nope")
    ext = f"SELECT id, name FROM {table} WHERE id >= $1 ORDER BY id"
    assert S.pg_extended(pg, ext.replace("$1", "%s"), (2,)) == [(2, "b"), (3, "c")]

    rows = agent.wait_rows("SELECT trace_role, req_cmd, req, resp, latency, comm, pid, local_port, remote_port "
                           f"FROM pgsql_events WHERE {_on_port(pg.port, t0)} ORDER BY time_, req_cmd", 14,
                           timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (7, 7), rows
    _made("pgsql_events", 14)
    simple = [
        ("Query", "SELECT 1", "?column?\n1\nSELECT 1"),
        ("Query", script, "CREATE TABLE\nINSERT 0 3\nid,name\n1,a\n2,b\n3,c\nSELECT 3"),
    ]
    for side in (clients, servers_):
        got = [(x["req_cmd"], x["req"], x["resp"]) for x in side]
        assert got[:2] == simple
        cmd, req, resp = got[2]
        assert (cmd, req) == ("Query", "SELECT * FROM nope")
        assert resp.startswith("ERROR RESPONSE [Severity=ERROR ") and "Code=42P01 " in resp
        assert 'Message=relation "nope" does not exist' in resp
        # psycopg: Parse/Bind/Describe/Execute in one write, ordered here by name within the
        # same timestamp; Execute carries the Parse's text and the bound parameter (int2, binary)
        ex = {x["req_cmd"]: (x["req"], x["resp"]) for x in side[3:]}
        assert sorted(ex) == ["Bind", "Describe", "Execute", "Parse"]
        assert ex["Parse"] == (ext, "PARSE COMPLETE")
        assert ex["Bind"][1] == "BIND COMPLETE"
        assert ex["Describe"][1].startswith("ROW DESCRIPTION [name=id ")
        assert ex["Execute"] == (f"query=[{ext}] params=[\\x0002]", "2,b\n3,c\nSELECT 2")
        assert all(x["latency"] > 0 for x in side)
    assert [x["comm"] for x in clients[:3]] == ["psql"] * 3
    assert {x["pid"] for x in clients[3:]} == {os.getpid()}  # psycopg runs in this process
    assert {x["comm"] for x in servers_} == {"postgres"}
    assert {x["pid"] for x in servers_}.isdisjoint({pg.pid}), "backends are the postmaster's children"


# A psycopg[binary] client in a process of its own: the wheel's libpq links the libssl copy the
# wheel bundles (psycopg_binary.libs/libssl-<hash>.so.3), not the host's
PSYCOPG_TLS = r"""
import json, sys
import psycopg
port, tag = int(sys.argv[1]), sys.argv[2]
with psycopg.connect(host="127.0.0.1", port=port, user="postgres", sslmode="require", autocommit=True) as c:
    got = c.execute(f"SELECT %s::int + 1 AS t_{tag}", (41,), prepare=True).fetchall()
    ssl = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "/libssl" in l})
print(json.dumps({"got": got, "ssl": ssl, "libs": libs}))
"""


def test_pgsql_over_tls_is_plaintext_and_encrypted(agent: ObserveAgent):
    """PostgreSQL with ssl on (Debian's own cluster has it, and libpq's default sslmode takes
    it): psql, with the host's libssl, and psycopg[binary], with the copy its wheel bundles.
    The sensor keeps the ciphertext out and delivers the TLS calls' plaintext; the parser
    goes on after the backend's "S" (it used to skip the rest of the connection)."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    with S.postgres(tls=True) as pg:
        assert S.psql(pg, f"SELECT ssl, '{tag}' AS tag FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                      sslmode="require") == [["t", tag]]
        r = subprocess.run([sys.executable, "-c", PSYCOPG_TLS, str(pg.port), tag], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        child = json.loads(r.stdout)
        assert (child["got"], child["ssl"]) == ([[42]], True)
        # libpq's calls go to the wheel's copy (Python's own ssl module maps the host's too)
        libs = {Path(p).parent.name: Path(p).name for p in child["libs"]}
        assert re.fullmatch(r"libssl-[0-9a-f]{8}\.so\.3", libs.get("psycopg_binary.libs", "")), libs
        rows = agent.wait_rows("SELECT trace_role, req_cmd, req, resp, encrypted, comm FROM pgsql_events "
                               f"WHERE {_on_port(pg.port, t0)} AND req LIKE '%{tag}%' ORDER BY time_, req_cmd",
                               6, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    want = [("Query", f"SELECT ssl, '{tag}' AS tag FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
             f"ssl,tag\nt,{tag}\nSELECT 1"),
            ("Parse", f"SELECT $1::int + 1 AS t_{tag}", "PARSE COMPLETE"),
            ("Execute", f"query=[SELECT $1::int + 1 AS t_{tag}] params=[\\x0029]", "42\nSELECT 1")]
    for side in (clients, servers_):
        assert [(x["req_cmd"], x["req"], x["resp"]) for x in side] == want, agent.log_tail()
        assert {x["encrypted"] for x in side} == {True}
    assert [x["comm"] for x in clients] == ["psql"] + [Path(sys.executable).name[:15]] * 2
    assert {x["comm"] for x in servers_} == {"postgres"}
    _made("pgsql_events", 6)


def test_pgsql_over_tls_from_asyncpg(agent: ObserveAgent):
    """asyncpg with ssl: asyncio's start_tls, an SSL on a memory BIO. Its prepared statement
    (Parse, Describe, Bind, Execute: binary parameters and results) at both ends."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    with S.postgres(tls=True) as pg:
        r = subprocess.run([sys.executable, "-c", ASYNCPG_TLS, str(pg.port), tag], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"got": [[42]], "ssl": True}
        rows = agent.wait_rows("SELECT trace_role, req_cmd, req, resp, encrypted, comm FROM pgsql_events "
                               f"WHERE {_on_port(pg.port, t0)} AND req LIKE '%t_{tag}%' ORDER BY time_, req_cmd",
                               4, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    want = [("Execute", f"query=[SELECT $1::int + 1 AS t_{tag}] params=[\\x00000029]"),
            ("Parse", f"SELECT $1::int + 1 AS t_{tag}")]
    for side in (clients, servers_):
        assert sorted((x["req_cmd"], x["req"]) for x in side) == want, agent.log_tail()
        assert [x["resp"] for x in side if x["req_cmd"] == "Parse"] == ["PARSE COMPLETE"]
        assert {x["encrypted"] for x in side} == {True}
    assert {x["comm"] for x in clients} == {Path(sys.executable).name[:15]}
    assert {x["comm"] for x in servers_} == {"postgres"}
    _made("pgsql_events", len(rows))


# -- MariaDB -----------------------------------------------------------------------------------------
def test_mysql_text_prepared_and_error(agent: ObserveAgent, maria: S.Server):
    tag, t0 = secrets.token_hex(4), time.time_ns()
    table = f"t_{tag}"
    S.mysql(maria, f"CREATE TABLE {table} (id int primary key, name varchar(20))", db="test")
    assert S.mysql(maria, f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two'), (3, 'three')", db="test") == []
    assert S.mysql(maria, f"SELECT name FROM {table} WHERE id > 1 ORDER BY id", db="test") == [["two"], ["three"]]
    with pytest.raises(S.ClientError, match="doesn't exist"):
        S.mysql(maria, "SELECT * FROM nope", db="test")
    prepared = f"SELECT id, name FROM {table} WHERE id >= ?"
    assert S.mysql_prepared(maria, prepared, (2,)) == [(2, "two"), (3, "three")]

    rows = agent.wait_rows("SELECT trace_role, req_cmd, req_body, resp_status, resp_body, latency, comm, pid "
                           f"FROM mysql_events WHERE {_on_port(maria.port, t0)} ORDER BY time_", 4 * 4,
                           timeout=WAIT_S,
                           until=lambda rows: [x["req_cmd"] for x in rows].count(MYSQL_STMT_EXECUTE) >= 2)
    clients, servers_ = _sides(rows)
    # the mysql CLI's queries at both ends (each then says COM_QUIT, which has no response)
    text = [
        (MYSQL_QUERY, f"CREATE TABLE {table} (id int primary key, name varchar(20))", MYSQL_OK, ""),
        (MYSQL_QUERY, f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two'), (3, 'three')", MYSQL_OK, ""),
        (MYSQL_QUERY, f"SELECT name FROM {table} WHERE id > 1 ORDER BY id", MYSQL_OK, "Resultset rows = 2"),
        (MYSQL_QUERY, "SELECT * FROM nope", MYSQL_ERR, "Table 'test.nope' doesn't exist"),
    ]
    cli = [x for x in clients if x["comm"] == "mysql"]
    assert [(x["req_cmd"], x["req_body"], x["resp_status"], x["resp_body"]) for x in cli if x["req_cmd"] != MYSQL_QUIT] == text
    assert [x["req_cmd"] for x in cli].count(MYSQL_QUIT) == 4
    srv_text = [x for x in servers_ if x["req_cmd"] == MYSQL_QUERY and x["req_body"] in {t[1] for t in text}]
    assert [(x["req_cmd"], x["req_body"], x["resp_status"], x["resp_body"]) for x in srv_text] == text
    assert {x["comm"] for x in servers_} == {"mariadbd"}
    assert all(x["latency"] > 0 for x in cli + srv_text if x["req_cmd"] != MYSQL_QUIT)
    # the connector's prepared statement at both ends: on the client side mysql-connector (in
    # this process) reads each packet's 4-byte header apart from its payload
    want = [(MYSQL_STMT_PREPARE, prepared, MYSQL_OK, ""),
            (MYSQL_STMT_EXECUTE, f"query=[{prepared}] params=[2]", MYSQL_OK, "Resultset rows = 2")]
    for side in (servers_, [x for x in clients if x["pid"] == os.getpid()]):
        stmt = [(x["req_cmd"], x["req_body"], x["resp_status"], x["resp_body"]) for x in side
                if x["req_cmd"] in (MYSQL_STMT_PREPARE, MYSQL_STMT_EXECUTE)]
        assert stmt == want, side
    _made("mysql_events", len(rows))


def test_mysql_over_tls_is_plaintext_and_encrypted(agent: ObserveAgent):
    """MariaDB with a certificate, the mysql CLI with --ssl and mysql-connector with TLS: the
    client's SSL request packet is plain, the rest the TLS calls' plaintext."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    with S.mariadb(tls=True) as maria:
        r = S._run(["mysql", "--no-defaults", "--protocol=TCP", "-h", maria.host, "-P", str(maria.port), "-u", "root",
                    "--ssl", "-N", "-B", "-e", f"SELECT '{tag}', VARIABLE_VALUE <> '' FROM information_schema"
                    ".SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'"])
        assert r.stdout.split() == [tag, "1"], "the CLI's session is TLS"
        import mysql.connector
        conn = mysql.connector.connect(host=maria.host, port=maria.port, user="root", database="test",
                                       use_pure=True, autocommit=True, ssl_disabled=False, connection_timeout=5)
        try:
            cur = conn.cursor(prepared=True)
            cur.execute(f"SELECT ? + 1 AS t_{tag}", (41,))
            assert cur.fetchall() == [(42,)]
            plain = conn.cursor()
            plain.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert plain.fetchall()[0][1], "the connector's session is TLS"
        finally:
            conn.close()
        rows = agent.wait_rows("SELECT trace_role, req_cmd, req_body, resp_status, resp_body, encrypted, comm "
                               f"FROM mysql_events WHERE {_on_port(maria.port, t0)} AND req_body LIKE '%{tag}%' "
                               "ORDER BY time_, req_cmd", 6, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    q = f"SELECT '{tag}', VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'"
    want = [(MYSQL_QUERY, q, MYSQL_OK, "Resultset rows = 1"),
            (MYSQL_STMT_PREPARE, f"SELECT ? + 1 AS t_{tag}", MYSQL_OK, ""),
            (MYSQL_STMT_EXECUTE, f"query=[SELECT ? + 1 AS t_{tag}] params=[41]", MYSQL_OK, "Resultset rows = 1")]
    for side in (clients, servers_):
        assert [(x["req_cmd"], x["req_body"], x["resp_status"], x["resp_body"]) for x in side] == want, rows
        assert {x["encrypted"] for x in side} == {True}
    assert [x["comm"] for x in clients] == ["mysql", _comm(os.getpid()), _comm(os.getpid())]
    assert {x["comm"] for x in servers_} == {"mariadbd"}
    _made("mysql_events", 6)


# -- Redis -------------------------------------------------------------------------------------------
def _js(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_redis_commands_and_pipeline(agent: ObserveAgent, redis: S.Server):
    tag, t0 = secrets.token_hex(4), time.time_ns()
    k, n = f"k_{tag}", f"n_{tag}"
    assert S.redis_cli(redis, "SET", k, "v1") == "OK"
    assert S.redis_cli(redis, "GET", k) == "v1"
    assert S.redis_cli(redis, "INCR", n) == "1"
    pipe = [["SET", f"p{i}_{tag}", str(i)] for i in range(8)] + [
        ["GET", f"p3_{tag}"], ["GET", f"none_{tag}"], ["INCRBY", n, "41"], ["ECHO", tag], ["NOSUCHCMD", tag]]
    replies = S.resp_pipeline(redis, pipe)  # all 13 in one write on one connection
    assert replies[:-1] == ["OK"] * 8 + [b"3", None, 42, tag.encode()]

    # no ORDER BY: the pipeline's rows share their timestamps, and DuckDB keeps the store's
    # insertion order (segments in order, rows as the parser made them) without one
    rows = agent.wait_rows("SELECT trace_role, req_cmd, req_args, resp, latency, comm, pid, local_port "
                           f"FROM redis_events WHERE {_on_port(redis.port, t0)}", 2 * (3 + len(pipe)),
                           timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (3 + len(pipe), 3 + len(pipe)), rows
    _made("redis_events", len(rows))
    want = [
        ("SET", _js({"key": k, "value": "v1", "options": []}), "OK"),
        ("GET", _js({"key": k}), "v1"),
        ("INCR", _js({"key": n}), "1"),
    ] + [("SET", _js({"key": f"p{i}_{tag}", "value": str(i), "options": []}), "OK") for i in range(8)] + [
        ("GET", _js({"key": f"p3_{tag}"}), "3"),
        ("GET", _js({"key": f"none_{tag}"}), "<NULL>"),
        ("INCRBY", _js({"key": n, "increment": "41"}), "42"),
        ("ECHO", _js({"message": tag}), tag),
    ]
    for side in (clients, servers_):
        got = [(x["req_cmd"], x["req_args"], x["resp"]) for x in side]
        assert got[:-1] == want, "one row per command, in the order sent"
        assert got[-1][0] == "NOSUCHCMD" and got[-1][2].startswith("-ERR unknown command")
        # the pipeline is one write and one read at each end: its rows share one latency
        assert len({x["latency"] for x in side[3:]}) == 1 and side[3]["latency"] > 0
    assert [x["comm"] for x in clients[:3]] == ["redis-cli"] * 3
    assert {x["pid"] for x in clients[3:]} == {os.getpid()}
    assert {(x["comm"], x["pid"]) for x in servers_} == {("redis-server", redis.pid)}


def test_redis_cli_opening_command_docs_is_one_truncated_row_and_pairing_holds(agent: ObserveAgent, redis: S.Server):
    # redis-cli reading commands from stdin first asks COMMAND DOCS: a ~170 KB reply of which
    # the sensor copies 4 KB a write. Its words must not become replies to anything
    tag, t0 = secrets.token_hex(4), time.time_ns()
    out = S._run(["redis-cli", "-h", redis.host, "-p", str(redis.port)], input=f"SET c_{tag} v_{tag}\nGET c_{tag}\n")
    assert out.stdout.split() == ["OK", f"v_{tag}"]
    rows = agent.wait_rows("SELECT trace_role, req_cmd, req_args, resp FROM redis_events "
                           f"WHERE {_on_port(redis.port, t0)}", 6, timeout=WAIT_S)
    for side in _sides(rows):
        got = [(x["req_cmd"], x["resp"]) for x in side]
        assert [c for c, _ in got] == ["COMMAND DOCS", "SET", "GET"], got
        docs = got[0][1]
        # the reply's whole top-level elements seen before the bytes went missing, at most 1024
        # characters: fewer when a big one (cluster's docs) comes early, and the order of the
        # commands in the reply changes with every redis-server start
        assert docs.startswith('["') and docs.endswith("... [TRUNCATED]")
        assert len(docs) <= 1024 + len("... [TRUNCATED]"), docs
        assert got[1:] == [("SET", "OK"), ("GET", f"v_{tag}")]


# -- DNS ---------------------------------------------------------------------------------------------
def _dns_query(name: str, txid: int) -> bytes:
    """A standard query for ``name`` A, recursion desired (RFC 1035 4.1)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def test_dns_dig_and_udp_client(agent: ObserveAgent, dns: S.Server):
    t0 = time.time_ns()
    assert S.dig(dns, "svc.andon.test", "A").answers_of("A") == ["10.1.2.3"]
    assert S.dig(dns, "missing.andon.test", "A").status == "NXDOMAIN"
    txid = secrets.randbelow(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a plain client: send + recv
        s.settimeout(5)
        s.connect((dns.host, dns.port))
        s.send(_dns_query("both.andon.test", txid))
        answer = s.recv(512)
        local_port = s.getsockname()[1]
    assert answer[:2] == struct.pack("!H", txid)

    rows = agent.wait_rows("SELECT trace_role, req_header, req_body, resp_header, resp_body, latency, comm, pid, "
                           f"remote_addr, remote_port, local_port FROM dns_events WHERE {_on_port(dns.port, t0)} "
                           "ORDER BY time_", 6, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    # dig's own side too: it sends and receives with sendmmsg/recvmmsg, which the sensor walks
    assert (len(clients), len(servers_)) == (3, 3), rows
    _made("dns_events", 6)
    names = [json.loads(x["req_body"])["queries"] for x in servers_]
    assert names == [[{"name": n, "type": "A"}] for n in ("svc.andon.test", "missing.andon.test", "both.andon.test")]
    answers = [json.loads(x["resp_body"])["answers"] for x in servers_]
    assert answers == [[{"name": "svc.andon.test", "type": "A", "addr": "10.1.2.3"}], [],
                       [{"name": "both.andon.test", "type": "A", "addr": "10.1.2.4"}]]
    assert [json.loads(x["resp_header"])["rcode"] for x in servers_] == [0, 3, 0]  # NXDOMAIN is 3
    assert {(x["comm"], x["pid"]) for x in servers_} == {("dnsmasq", dns.pid)}
    # dnsmasq answers from one unconnected socket: the remote end is each datagram's sender
    assert {x["remote_addr"] for x in servers_} == {"127.0.0.1"}
    assert servers_[2]["remote_port"] == local_port and all(x["remote_port"] > 0 for x in servers_)
    digs = [x for x in clients if x["comm"] == "dig"]  # the process's name, not its thread's (isc-net-0000)
    assert [json.loads(x["req_body"])["queries"][0]["name"] for x in digs] == ["svc.andon.test", "missing.andon.test"]
    assert [json.loads(x["resp_header"])["rcode"] for x in digs] == [0, 3]
    assert all(x["remote_port"] == dns.port for x in digs)
    (c,) = [x for x in clients if x["pid"] == os.getpid()]
    assert (c["pid"], c["local_port"], c["remote_port"]) == (os.getpid(), local_port, dns.port)
    assert json.loads(c["req_header"])["txid"] == txid and json.loads(c["resp_header"])["num_answers"] == 1
    assert c["resp_body"] == servers_[2]["resp_body"]
    assert all(x["latency"] > 0 for x in rows)


def test_dns_over_tcp_dig_both_sides(agent: ObserveAgent, dns: S.Server):
    # TRIGGER: dig +tcp, one connection per query; dnsmasq reads the 2-byte length apart
    # from the message (the sensor holds it and sends it ahead), dig writes them together
    t0 = time.time_ns()
    assert S.dig(dns, "svc.andon.test", "A", tcp=True).answers_of("A") == ["10.1.2.3"]
    assert S.dig(dns, "missing.andon.test", "A", tcp=True).status == "NXDOMAIN"
    rows = agent.wait_rows("SELECT trace_role, req_header, req_body, resp_header, resp_body, latency, comm, pid, "
                           f"remote_port, local_port FROM dns_events WHERE {_on_port(dns.port, t0)} ORDER BY time_",
                           4, timeout=WAIT_S)
    clients, servers_ = _sides(rows)
    # ASSERT: each query once at each end, parsed from behind its length prefix
    assert (len(clients), len(servers_)) == (2, 2), rows
    _made("dns_events", 4)
    for side, comm in ((clients, "dig"), (servers_, "dnsmasq")):
        assert [json.loads(x["req_body"])["queries"] for x in side] == [
            [{"name": "svc.andon.test", "type": "A"}], [{"name": "missing.andon.test", "type": "A"}]]
        assert [json.loads(x["resp_header"])["rcode"] for x in side] == [0, 3]
        assert json.loads(side[0]["resp_body"])["answers"] == [{"name": "svc.andon.test", "type": "A",
                                                                 "addr": "10.1.2.3"}]
        assert {x["comm"] for x in side} == {comm} and all(x["latency"] > 0 for x in side)
    assert {x["pid"] for x in servers_} == {dns.pid}
    # the same two TCP connections seen from both ends: dig's local ports are dnsmasq's remote ones
    assert sorted(x["local_port"] for x in clients) == sorted(x["remote_port"] for x in servers_)
    assert [json.loads(x["req_header"])["txid"] for x in clients] == [
        json.loads(x["req_header"])["txid"] for x in servers_]


# -- unix stream sockets ------------------------------------------------------------------------------
def _on_path(path: Path, since_ns: int) -> str:
    """SQL: rows of the connections through the unix socket at ``path`` since ``since_ns``."""
    return f"(remote_addr = '{path}' OR local_addr = '{path}') AND time_ >= {since_ns}"


def test_local_clients_over_unix_sockets(agent: ObserveAgent, pg: S.Server, maria: S.Server, redis: S.Server):
    """psql with a socket directory for -h, the mysql CLI with --socket and redis-cli -s: on a
    database's own host its clients use unix sockets (libpq with no host, `mysql -h localhost`).
    Both ends, named by the socket's path, ports 0."""
    tag, t0 = secrets.token_hex(4), time.time_ns()
    pg_sock = Path(pg.info["socket_dir"]) / f".s.PGSQL.{pg.port}"
    r = S._run(["psql", "-X", "-q", "-h", str(pg.info["socket_dir"]), "-p", str(pg.port), "-U", "postgres",
                "--csv", "-t", "-c", f"SELECT '{tag}' AS unix"])
    assert r.stdout.split() == [tag]
    r = S._run(["mysql", "--no-defaults", f"--socket={maria.info['socket']}", "-u", "root", "-N", "-B",
                "-e", f"SELECT '{tag}'"])
    assert r.stdout.split() == [tag]
    for args in (["SET", f"u_{tag}", "v"], ["GET", f"u_{tag}"]):
        r = S._run(["redis-cli", "-s", str(redis.info["socket"]), *args])
    assert r.stdout.strip() == "v"

    cols = "trace_role, remote_addr, remote_port, local_addr, local_port, comm, remote_comm"
    pg_rows = agent.wait_rows(f"SELECT {cols}, req, resp FROM pgsql_events WHERE {_on_path(pg_sock, t0)} "
                              f"AND req LIKE '%{tag}%' ORDER BY trace_role", 2, timeout=WAIT_S)
    my_rows = agent.wait_rows(f"SELECT {cols}, req_body AS req, resp_body AS resp FROM mysql_events "
                              f"WHERE {_on_path(maria.info['socket'], t0)} AND req_body LIKE '%{tag}%' "
                              "ORDER BY trace_role", 2, timeout=WAIT_S)
    rd_rows = agent.wait_rows(f"SELECT {cols}, req_cmd || ' ' || req_args AS req, resp FROM redis_events "
                              f"WHERE {_on_path(redis.info['socket'], t0)} AND req_args LIKE '%u_{tag}%' "
                              "ORDER BY time_, trace_role", 4, timeout=WAIT_S)
    for rows, path, client, server, want in (
            (pg_rows, pg_sock, "psql", "postgres", [(f"SELECT '{tag}' AS unix", f"unix\n{tag}\nSELECT 1")]),
            (my_rows, maria.info["socket"], "mysql", "mariadbd", [(f"SELECT '{tag}'", "Resultset rows = 1")]),
            (rd_rows, redis.info["socket"], "redis-cli", "redis-server",
             [(f'SET {{"key":"u_{tag}","value":"v","options":[]}}', "OK"), (f'GET {{"key":"u_{tag}"}}', "v")])):
        clients, servers_ = _sides(rows)
        for side, comm in ((clients, client), (servers_, server)):
            assert [(x["req"], x["resp"]) for x in side] == want, rows
            assert {(x["remote_addr"], x["local_addr"], x["remote_port"], x["local_port"], x["comm"])
                    for x in side} == {(str(path), str(path), 0, 0, comm)}
        # the two ends pair by their kernel sockets: each names the process at the other end
        assert {x["remote_comm"] for x in servers_} == {client} and {x["remote_comm"] for x in clients} == {server}
    _made("pgsql_events", 2)
    _made("mysql_events", 2)
    _made("redis_events", 4)
    # conn_stats: the connections, of family AF_UNIX (1), as Pixie's addr_family
    stats = agent.wait_rows(f"SELECT DISTINCT addr_family, trace_role FROM conn_stats WHERE remote_addr = "
                            f"'{pg_sock}' AND time_ >= {t0} ORDER BY trace_role", 2, timeout=WAIT_S)
    assert [(x["addr_family"], x["trace_role"]) for x in stats] == [(1, CLIENT), (1, SERVER)]


# -- one end only ------------------------------------------------------------------------------------
def test_trace_roles_keep_one_end_of_each_protocol(tmp_path: Path, http: S.Server, pg: S.Server):
    # TRIGGER: an agent of its own told to keep HTTP's client end and PostgreSQL's server end;
    # curl and psql talk to servers on this host, so both ends are there to be traced
    config = CONFIG + "  trace_roles:\n    http: [client]\n    pgsql: server\n"
    with ObserveAgent(tmp_path / "data", config=config) as one:
        assert any("http (client end), http2, pgsql (server end)" in x for x in one.stderr_lines), one.log_tail()
        tag, t0 = secrets.token_hex(4), time.time_ns()
        paths = [f"/status/{c}?t={tag}" for c in (200, 404, 503)]
        assert S.curl([http.url(p) for p in paths]).statuses == [200, 404, 503]
        assert S.psql(pg, f"SELECT '{tag}'") == [[tag]]
        hrows = one.wait_rows(f"SELECT trace_role, req_path, resp_status FROM http_events WHERE "
                              f"{_on_port(http.port, t0)} AND req_path LIKE '%t={tag}' ORDER BY time_", 3,
                              timeout=WAIT_S, settle=1.0)
        prows = one.wait_rows(f"SELECT trace_role, req FROM pgsql_events WHERE {_on_port(pg.port, t0)} "
                              f"AND req LIKE '%{tag}%'", 1, timeout=WAIT_S, settle=1.0)
        # conn_stats rows come every conn_stats_interval (5 s)
        conns = one.wait_rows(f"SELECT DISTINCT trace_role FROM conn_stats WHERE remote_port = {pg.port} "
                              f"AND time_ >= {t0}", 1, timeout=WAIT_S, settle=0)
    # ASSERT: each request once, from the wanted end; the other end's connection is still in
    # conn_stats (the kernel tracks it, it only copies none of its data)
    assert [(x["trace_role"], x["req_path"], x["resp_status"]) for x in hrows] == [
        (CLIENT, p, int(p[8:11])) for p in paths]
    assert [(x["trace_role"], x["req"]) for x in prows] == [(SERVER, f"SELECT '{tag}'")]
    assert [x["trace_role"] for x in conns] == [CLIENT]


# -- where the processes are -------------------------------------------------------------------------
def test_http_server_inside_a_network_namespace(agent: ObserveAgent):
    tag, t0 = secrets.token_hex(4), time.time_ns()
    with S.netns() as ns, S.python_http(netns=ns) as srv:
        r = S.curl([srv.url(f"/size/{i}?t={tag}") for i in range(3)])  # from the host, over the veth pair
        assert (r.statuses, r.connects) == ([200] * 3, 1)
        rows = _http_rows(agent, srv, t0, tag, 6)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (3, 3), agent.log_tail()
    _made("http_events", 6)
    # each end reports its own namespace's addresses
    assert {(x["local_addr"], x["remote_addr"], x["remote_port"], x["comm"]) for x in clients} == {
        (ns.host_ip, ns.ns_ip, srv.port, "curl")}
    assert {(x["local_addr"], x["local_port"], x["remote_addr"], x["pid"]) for x in servers_} == {
        (ns.ns_ip, srv.port, ns.host_ip, srv.pid)}
    assert [x["req_path"] for x in servers_] == [f"/size/{i}?t={tag}" for i in range(3)]


def _podman_ready() -> str | None:
    if not shutil.which("podman") or not shutil.which("runc"):
        return "podman or runc is not installed"
    if subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True).returncode != 0:
        return f"test image {IMAGE} is missing: run `make test-image`"
    return None


@contextlib.contextmanager
def _perl_gets(name: str, network: str, addr: str, port: int, paths: list[str]) -> Iterator[tuple[list[str], str]]:
    """A podman container ``name`` on ``network`` that GETs each path from addr:port, one request
    per connection: its status lines and its id, while it is kept (removed on exit).
    The image has no curl; perl's core IO::Socket writes and reads on one fd. (Not bash's
    /dev/tcp: `printf >&3` and `read <&3` dup the socket onto fds 1 and 0, and the sensor
    keys a connection by (pid, fd), so request and response would be two connections.)
    The container stays a moment after its requests so its cgroup can be read."""
    perl = ("use IO::Socket::INET; for my $p (@ARGV) { my $s = IO::Socket::INET->new('%s:%d') or die $!; "
            "print $s \"GET $p HTTP/1.1\\r\\nHost: c\\r\\nConnection: close\\r\\n\\r\\n\"; local $/; my $r = <$s>; "
            "print((split /\\r\\n/, $r)[0], \"\\n\"); close $s } sleep 2") % (addr, port)
    argv = ["podman", *PODMAN_RUN, "--network", network, "--name", name, IMAGE, "perl", "-e", perl, *paths]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr[-2000:]
        cid = subprocess.run(["podman", "inspect", "--type", "container", "--format", "{{.Id}}", name],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        assert len(cid) == 64
        yield out.stdout.split("\n")[:len(paths)], cid
    finally:
        subprocess.run(["podman", "rm", "-f", "-i", name], capture_output=True, timeout=60)


def test_http_client_inside_a_podman_container(agent: ObserveAgent, http: S.Server):
    if why := _podman_ready():
        pytest.skip(why)
    tag, t0 = secrets.token_hex(4), time.time_ns()
    name = f"andon-t-{tag}"
    paths = [f"/status/200?t={tag}", f"/status/404?t={tag}", f"/status/503?t={tag}"]
    with _perl_gets(name, "host", "127.0.0.1", http.port, paths) as (lines, cid):
        assert lines == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 503 Service Unavailable"]
        rows = _http_rows(agent, http, t0, tag, 6)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (3, 3), agent.log_tail()
    _made("http_events", 6)
    assert [(x["req_method"], x["req_path"], x["resp_status"]) for x in clients] == [
        ("GET", p, int(p[8:11])) for p in paths]
    assert [(x["req_path"], x["resp_status"]) for x in servers_] == [(p, int(p[8:11])) for p in paths]
    assert {(x["comm"], x["container_id"]) for x in clients} == {("perl", cid)}
    # the registry resolves the name from the runtime; it may answer after the first rows
    assert {x["container_name"] for x in clients} <= {name, ""}
    assert {(x["container_id"], x["container_name"]) for x in servers_} == {("", "")}  # the server is on the host


# A client that is already running (the agent's rescans have read its pid) when it imports ssl
# from its own libssl file, then makes its HTTPS requests: the file is found through the
# sensor's record of the mapping (a rescan reads a pid once and would never see it).
LATE_TLS_CLIENT = """
import sys, time
time.sleep(3)
import http.client, ssl  # http.client imports ssl too
ctx = ssl.create_default_context(cafile="/t/cert.pem")
time.sleep(0.5)
for p in sys.argv[2:]:
    c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
    c.request("GET", p); r = c.getresponse(); r.read(); print(r.status, flush=True); c.close()
time.sleep(2)  # the container stays a moment, so the agent reads its cgroup
"""


def test_https_client_in_a_container_with_a_libssl_new_to_the_agent(agent: ObserveAgent, tmp_path: Path):
    """A container whose libssl.so.3 is a file the agent has never seen, loaded after the
    container started: the client's rows are plaintext, encrypted, and the container's."""
    if why := _podman_ready():
        pytest.skip(why)
    tag, t0 = secrets.token_hex(4), time.time_ns()
    name = f"andon-t-{tag}"
    prefix = Path(os.path.realpath(sys.base_prefix))  # this interpreter, mounted read-only
    lib = tmp_path / "lib"
    lib.mkdir()
    for f in ("libssl.so.3", "libcrypto.so.3"):
        shutil.copy(f"/usr/lib/x86_64-linux-gnu/{f}", lib / f)
    paths = [f"/size/{n}?t={tag}" for n in (5, 50)]
    with S.python_http(tls=True) as srv:
        cert = Path(srv.info["cert"])
        # the agent is up and reading: a request of its own makes its rows first
        assert S.curl(srv.url(f"/size/1?t={tag}-ready"), cacert=cert).statuses == [200]
        _http_rows(agent, srv, t0, f"{tag}-ready", 2)
        argv = ["podman", *PODMAN_RUN, "--rm", "--network", "host", "--name", name,
                "-v", f"{prefix}:{prefix}:ro", "-v", f"{cert.parent}:/t:ro",
                "-v", f"{lib}/libssl.so.3:/usr/lib/x86_64-linux-gnu/libssl.so.3:ro",
                "-v", f"{lib}/libcrypto.so.3:/usr/lib/x86_64-linux-gnu/libcrypto.so.3:ro",
                IMAGE, str(prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"),
                "-c", LATE_TLS_CLIENT, str(srv.port), *paths]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        finally:
            subprocess.run(["podman", "rm", "-f", "-i", name], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["200", "200"]
        rows = _http_rows(agent, srv, t0, tag, 4)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (2, 2), agent.log_tail()
    _made("http_events", 4)
    for side in (clients, servers_):
        assert [(x["req_path"], x["resp_status"], x["resp_body_size"]) for x in side] == [
            (p, 200, int(p[6:].split("?")[0])) for p in paths]
        assert {x["encrypted"] for x in side} == {True}
    assert {x["comm"] for x in clients} == {f"python{sys.version_info.major}.{sys.version_info.minor}"}
    assert len({x["container_id"] for x in clients} - {""}) == 1, agent.log_tail()
    assert {x["container_id"] for x in servers_} == {""}


def test_a_podman_container_calling_the_host_is_named_as_the_caller(agent: ObserveAgent, tmp_path: Path):
    """A container with an address of its own (its network namespace, made by the test) calls
    a server on the host: the server's rows have the container's address as remote_addr, and
    Pixie's lookups (px.ip_to_pod_id, px.pod_id_to_pod_name) name the container from it."""
    if why := _podman_ready():
        pytest.skip(why)
    tag, t0 = secrets.token_hex(4), time.time_ns()
    name = f"andon-t-{tag}"
    paths = [f"/status/200?t={tag}", f"/status/404?t={tag}"]
    with S.netns() as ns, S.python_http(host=ns.host_ip) as srv:
        server = _comm(srv.pid)
        with _perl_gets(name, f"ns:/run/netns/{ns.name}", ns.host_ip, srv.port, paths) as (lines, cid):
            assert lines == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"]
            rows = _http_rows(agent, srv, t0, tag, 4)
    clients, servers_ = _sides(rows)
    assert (len(clients), len(servers_)) == (2, 2), agent.log_tail()
    _made("http_events", 4)
    assert {(x["local_addr"], x["container_id"], x["comm"]) for x in clients} == {(ns.ns_ip, cid, "perl")}
    assert {(x["remote_addr"], x["local_addr"], x["container_id"]) for x in servers_} == {(ns.ns_ip, ns.host_ip, "")}
    # the runtime's name may come after the first rows (see the test above); the id never does
    named = {x["container_name"] for x in clients} - {""}
    assert named <= {name}
    script = tmp_path / "peer.pxl"
    script.write_text("import px\n"
                      "df = px.DataFrame(table='http_events', start_time='-5m')\n"
                      f"df = df[px.contains(df.req_path, 't={tag}') and df.trace_role == {SERVER}]\n"
                      "df.pod_id = px.ip_to_pod_id(df.remote_addr)\n"
                      "df.pod = px.pod_id_to_pod_name(df.pod_id)\n"
                      "df.host = px.ip_to_pod_id(df.local_addr)\n"
                      "px.display(df[['req_path', 'pod_id', 'pod', 'host']])\n")
    got = _cli_many(agent, {"peer": [str(script)], "data": ["px/http_data", "--arg", "num_head=100000"]})
    peer = got["peer"][0]["rows"]
    assert sorted((r["req_path"], r["pod_id"], r["pod"], r["host"]) for r in peer) == [
        (p, cid, name if named else "", "") for p in sorted(paths)]
    data = [r for r in got["data"][0]["rows"] if r["req_path"].endswith(f"t={tag}")]
    # the server's rows: the caller is the container (its address, if the runtime had not named it yet)
    assert sorted((r["req_path"], r["source"], r["destination"]) for r in data if r["destination"] == server) == [
        (p, name if named else ns.ns_ip, server) for p in sorted(paths)]


# -- queries -----------------------------------------------------------------------------------------
def _cli_many(agent: ObserveAgent, calls: dict[str, list[str]], timeout: float = 90.0) -> dict[str, list[dict]]:
    """Run several `andon query ... -o json` at once (each is a Python start-up); their tables."""
    outs = {k: agent.data_dir.parent / f"query-{k}.json" for k in calls}
    procs = {}
    try:
        for k, a in calls.items():
            with open(outs[k], "w") as f:
                procs[k] = subprocess.Popen([*ANDON, "query", "--data-dir", str(agent.data_dir), *a, "-o", "json"],
                                            stdout=f, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for k, p in procs.items():
            _, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"andon query {' '.join(calls[k])}: {err[-2000:]}"
        return {k: json.loads(outs[k].read_text()) for k in calls}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def named_clients(tmp_path: Path):
    """The real client programs copied under names of their own (``<x><tag>``): a process's
    name is its program's file name, and the bundled scripts show and filter on it, so this
    test's client rows are told apart from everyone else's on the machine."""
    tag = secrets.token_hex(4)
    progs = {"c": "curl", "p": "/usr/lib/postgresql/15/bin/psql", "m": "mariadb", "r": "redis-cli"}
    out = {"tag": tag}
    for short, prog in progs.items():
        src = shutil.which(prog) or prog
        dst = tmp_path / f"{short}{tag}"
        shutil.copy2(src, dst)
        out[prog.rsplit("/", 1)[-1]] = str(dst)
    return out


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv[0]}: {r.stderr[-1500:]}"
    return r.stdout


def test_bundled_scripts_and_pxl_vs_sql(agent: ObserveAgent, named_clients: dict, http, pg, maria, redis, dns):
    tag, t0 = named_clients["tag"], time.time_ns()
    curl, psql, mysql, rcli = (named_clients[k] for k in ("curl", "psql", "mariadb", "redis-cli"))
    statuses = [200, 200, 200, 404, 500]
    out = _run([curl, "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                "-o", "/dev/null", "-w", "%{http_code}\n", *[http.url(f"/status/{c}?t={tag}") for c in statuses]])
    assert [int(x) for x in out.split()] == statuses
    assert _run([psql, "-X", "-q", "-A", "-t", "-h", pg.host, "-p", str(pg.port), "-U", "postgres",
                 "-c", f"SELECT '{tag}' AS tag"]).strip() == tag
    assert _run([mysql, "--no-defaults", "--protocol=TCP", "-h", maria.host, "-P", str(maria.port), "-u", "root",
                 "-N", "-B", "-e", f"SELECT '{tag}'"]).strip() == tag
    assert _run([rcli, "-h", redis.host, "-p", str(redis.port), "GET", f"q_{tag}"]).strip() == ""
    assert S.dig(dns, f"{tag}.andon.test").status == "NXDOMAIN"
    # everything is in the tables before the scripts run
    for table, srv, n in (("http_events", http, 10), ("pgsql_events", pg, 2), ("mysql_events", maria, 2),
                          ("redis_events", redis, 2), ("dns_events", dns, 1)):
        got = agent.wait_rows(f"SELECT * FROM {table} WHERE {_on_port(srv.port, t0)}", n, timeout=WAIT_S)
        assert len(got) >= n, (table, len(got))

    # the bundled scripts as a user runs them, each filtered on this test's client name
    src = ["--arg", f"source_filter={tag}", "--arg", "start_time=-5m"]
    pxl_file = agent.data_dir.parent / f"by_status_{tag}.pxl"
    pxl_file.write_text(
        "import px\n"
        "df = px.DataFrame(table='http_events', start_time='-5m')\n"
        f"df = df[df.local_port == {http.port} and df.trace_role == 2 and px.contains(df.req_path, '{tag}')]\n"
        "s = df.groupby('resp_status').agg(n=('latency', px.count), mean=('latency', px.mean))\n"
        "px.display(s, 'by_status')\n")
    # Pixie's SQL normalization (as its px/sql_queries uses it) over the real psql and mariadb rows
    norm_file = agent.data_dir.parent / f"norm_{tag}.pxl"
    norm_file.write_text(
        "import px\n"
        "pg = px.DataFrame(table='pgsql_events', start_time='-5m')\n"
        f"pg = pg[pg.remote_port == {pg.port} and px.contains(pg.req, '{tag}')]\n"
        "pg.n = px.normalize_pgsql(pg.req, pg.req_cmd)\n"
        "pg.q = px.pluck(pg.n, 'query')\n"
        "pg.p = px.pluck(pg.n, 'params')\n"
        "px.display(pg[['q', 'p']], 'pg')\n"
        "my = px.DataFrame(table='mysql_events', start_time='-5m')\n"
        f"my = my[my.remote_port == {maria.port} and px.contains(my.req_body, '{tag}')]\n"
        "my.n = px.normalize_mysql(my.req_body, my.req_cmd)\n"
        "my.q = px.pluck(my.n, 'query')\n"
        "my.p = px.pluck(my.n, 'params')\n"
        "px.display(my[['q', 'p']], 'my')\n")
    sql = (f"SELECT resp_status, count(*) AS n, avg(latency) AS mean FROM http_events WHERE local_port = {http.port} "
           f"AND trace_role = 2 AND req_path LIKE '%{tag}%' GROUP BY 1 ORDER BY 1")
    out = _cli_many(agent, {
        "http": ["px/http_data", *src], "pgsql": ["px/pgsql_data", *src], "mysql": ["px/mysql_data", *src],
        "redis": ["px/redis_data", *src], "dns": ["px/dns_data", "--arg", "destination_filter=dnsmasq"],
        "stats": ["px/service_stats", "--arg", "start_time=-5m", "--arg", f"svc={tag}"],
        "pxl": [str(pxl_file)], "sql": ["--sql", sql], "norm": [str(norm_file)],
    })

    def table(key: str, name: str | None = None) -> list[dict]:
        (t,) = [t for t in out[key] if name is None or t["table"] == name]
        return t["rows"]

    h = table("http")
    assert sorted((x["source"], x["destination"], x["req_path"], x["resp_status"]) for x in h) == sorted(
        (f"c{tag}", "127.0.0.1", f"/status/{c}?t={tag}", c) for c in statuses)
    assert {x["req_method"] for x in h} == {"GET"} and all(x["latency"] > 0 for x in h)
    assert [(x["source"], x["destination"], x["remote_port"], x["req"], x["resp"]) for x in table("pgsql")] == [
        (f"p{tag}", "127.0.0.1", pg.port, f"SELECT '{tag}' AS tag", f"tag\n{tag}\nSELECT 1")]
    m = [x for x in table("mysql") if x["req_cmd"] == MYSQL_QUERY]
    assert [(x["source"], x["destination"], x["remote_port"], x["req_body"], x["resp_status"], x["resp_body"])
            for x in m] == [(f"m{tag}", "127.0.0.1", maria.port, f"SELECT '{tag}'", MYSQL_OK, "Resultset rows = 1")]
    assert [(x["source"], x["destination"], x["remote_port"], x["req_cmd"], x["req_args"], x["resp"])
            for x in table("redis")] == [
        (f"r{tag}", "127.0.0.1", redis.port, "GET", _js({"key": f"q_{tag}"}), "<NULL>")]
    d = [x for x in table("dns") if tag in x["req_body"]]  # dns_data shows the server side (dnsmasq)
    assert [(x["source"], x["destination"], json.loads(x["resp_header"])["rcode"]) for x in d] == [
        ("127.0.0.1", "dnsmasq", 3)]
    # service_stats for the client's name: its status codes and LET are exactly this test's
    hist = {x["resp_status"]: x["count"] for x in table("stats", "HTTP status codes")}
    assert hist == {200: 3, 404: 1, 500: 1}
    let = table("stats", "LET")
    assert {x["k8s"] for x in let} == {f"c{tag}"}
    assert sum(x["request_throughput"] for x in let) * 10e9 == pytest.approx(5)  # 10 s windows, per ns
    # the same aggregate in PxL and SQL
    by_pxl = sorted((x["resp_status"], x["n"], round(x["mean"], 3)) for x in table("pxl"))
    by_sql = sorted((x["resp_status"], x["n"], round(x["mean"], 3)) for x in table("sql"))
    assert by_pxl == by_sql and [(s, n) for s, n, _ in by_sql] == [(200, 3), (404, 1), (500, 1)]
    assert [(x["q"], json.loads(x["p"])) for x in table("norm", "pg")] == [("SELECT $1 AS tag", [f"'{tag}'"])]
    assert [(x["q"], json.loads(x["p"])) for x in table("norm", "my")] == [("SELECT ?", [f"'{tag}'"])]
    _made("http_events", 10)


# -- last: the closing line --------------------------------------------------------------------------
def test_closing_line_counts_rows_per_table(agent: ObserveAgent):
    assert agent.stop() == 0, agent.log_tail()
    counts = agent.closing_rows()
    assert MADE, "the tests above made rows"
    for table, n in MADE.items():
        assert counts.get(table, 0) >= n, (table, n, agent.closing_line())
    assert counts.get("conn_stats", 0) > 0, agent.closing_line()
