"""Real servers and real clients for the protocol-tracing tests and the load benchmarks.

Every server is a context manager that starts its own instance on 127.0.0.1 (or inside a
network namespace the test made) on a free port, in its own temp dir, as the user the server
wants; returns once the server *answers* (a real query, bounded wait); and on the way out,
test failure included, stops it, kills whatever is left in its process group and removes the
temp dir. The packaged system services are never used.

    with postgres() as pg:
        assert psql(pg, "select 1 + 1") == [["2"]]
        assert pg_extended(pg, "select %s::int * 2", (21,)) == [(42,)]

Servers (each yields a :class:`Server` with ``host``, ``port``, ``pid``, ``workdir``,
``worker_pids()`` and ``log_tail()``):

    nginx(sizes=..., workers=1, tls=False)   static files /, /size/<n>; workers are children
    python_http(tls=False, netns=None)       threaded keep-alive HTTP/1.1 (this file, run as a script)
    go_https()                               Go's net/http over Go's own crypto/tls (tests/go/tlsdemo)
    postgres()                               initdb --auth=trust, user postgres, no password
    mariadb()                                root@localhost without password, TCP and a unix socket
    redis()                                  no persistence
    dnsmasq()                                A, AAAA and CNAME records of DNS_RECORDS, UDP and TCP

Clients (each runs the real client program or driver and returns what it measured):

    curl(url, n, keepalive=True, ...)        -> CurlResult(statuses, latencies_s, sizes, connects)
    psql(srv, sql)                           -> rows (lists of str), simple query protocol
    pg_extended(srv, sql, params)            -> rows (tuples), psycopg, extended query protocol
    pg_connect(srv) / mysql_connect(srv)     -> a driver connection, for many queries on one connection
    mysql(srv, sql)                          -> rows (lists of str), text protocol
    mysql_prepared(srv, sql, params)         -> rows (tuples), COM_STMT_PREPARE / EXECUTE
    redis_cli(srv, *args)                    -> str
    redis_pipe(srv, commands)                -> PipeResult(replies, errors) (redis-cli --pipe)
    resp_pipeline(srv, commands)             -> decoded replies, all commands in one write
    dig(srv, name, rtype, tcp=False)         -> DigResult(status, answers, query_time_ms)

Network namespaces: ``with netns() as ns:`` makes a namespace with a veth pair (10.x/30,
host side ``ns.host_ip``, inside ``ns.ns_ip``) and removes both; ``python_http(netns=ns)``
serves inside it.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import itertools
import os
import pwd
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 3.0  # one readiness probe: a port held by something that never answers must not stall

# dnsmasq's records: name -> {type: [answers]}; the tests compare dig's answers with these
DNS_RECORDS = {
    "svc.andon.test": {"A": ["10.1.2.3"]},
    "v6.andon.test": {"AAAA": ["fd00::1234"]},
    "both.andon.test": {"A": ["10.1.2.4"], "AAAA": ["fd00::5"]},
    "alias.andon.test": {"CNAME": ["both.andon.test."]},
}

# the Python server's fixed answers
HTTP_ROOT_BODY = b"hello from andon\n"


class ServerError(RuntimeError):
    """A server did not start or answer in time; the message ends with its log's tail."""


class ClientError(RuntimeError):
    """A real client failed (exit code, timeout); the message carries its stderr."""


# -- processes ------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(name: str | None, fn: Callable[[], object]) -> object:
    """Run ``fn`` in a thread that joined network namespace ``name`` (None: the host's); the
    sockets it makes stay in that namespace. What ``fn`` raises is raised here."""
    if name is None:
        return fn()
    box: dict[str, object] = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["v"] = fn()
        except BaseException as e:  # handed to the caller
            box["e"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]  # type: ignore[misc]
    return box.get("v")


def _group_pids(pgid: int) -> list[int]:
    """Live processes in a process group (zombies excluded), from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # proc(5): field 5 is pgrp, 3 is state
            out.append(int(d.name))
    return out


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc/<pid>/task/*/children."""
    out: list[int] = []
    for t in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in t.read_text().split()]
        except OSError:
            pass
    return sorted(set(out))


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port(host: str = "127.0.0.1", udp_too: bool = False) -> int:
    """A port free right now for TCP (and UDP when ``udp_too``) on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if not udp_too:
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port
    raise ServerError(f"no free port on {host}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return "(no log)"
    return data.decode(errors="replace")


@dataclass
class Server:
    """One running server. ``pid`` is its main process; ``proc`` our handle on it."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen
    workdir: Path
    log: Path
    info: dict = field(default_factory=dict)  # server-specific: socket paths, cert, sizes, netns

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The server's children now (nginx workers; postgres background processes and one
        backend per open connection). Empty for single-process servers."""
        return children(self.pid)

    def log_tail(self, n: int = 3000) -> str:
        return _tail(self.log, n)

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.info.get("tls") else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Stop a server started with start_new_session (so its pgid is its pid): the server's
    own shutdown signal first (so it reaps its workers), then SIGKILL for the group."""
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (left := _group_pids(pgid)) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.05)


def _workdir(name: str, owner: str | None = None) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"andon-{name}-"))
    d.chmod(0o755)  # nginx workers (nobody) and servers run as their own user read below it
    if owner:
        shutil.chown(d, owner, _group(owner))
    return d


def _prepared(name: str, owner: str | None, build: Callable[[int, Path], contextlib.AbstractContextManager]):
    """``start(port)`` for _with_retry: a fresh workdir, then ``build(port, workdir)`` (config
    files, initdb, certificates); the workdir goes if building fails."""
    def start(p: int):
        d = _workdir(name, owner)
        try:
            return build(p, d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
    return start


def _group(user: str) -> int:
    """The user's primary group id (nobody's is nogroup)."""
    return pwd.getpwnam(user).pw_gid


@contextlib.contextmanager
def _serve(name: str, argv: list[str], *, host: str, port: int, workdir: Path, probe: Callable[[Server], bool],
           stop_signal: int = signal.SIGTERM, user: str | None = None, info: dict | None = None,
           timeout: float = START_TIMEOUT_S, env: dict | None = None) -> Iterator[Server]:
    """Start ``argv`` in its own session, logging to workdir/server.log; yield once ``probe``
    returns True; always stop it and remove ``workdir``."""
    log = workdir / "server.log"
    proc = None
    try:
        with open(log, "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    cwd=workdir, start_new_session=True, user=user,
                                    group=_group(user) if user else None, extra_groups=[] if user else None, env=env)
        srv = Server(name, host, port, proc, workdir, log, info or {})
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if proc.poll() is not None:
                raise ServerError(f"{name} exited with code {proc.returncode} before answering "
                                  f"({' '.join(argv)})\n--- log tail ---\n{srv.log_tail()}")
            try:
                if probe(srv):
                    break
            except Exception as e:  # noqa: BLE001 - any failure of the probe means "not yet"
                last = e
            if time.monotonic() > deadline:
                raise ServerError(f"{name} did not answer on {host}:{port} within {timeout:.0f} s "
                                  f"(last probe error: {last!r})\n--- log tail ---\n{srv.log_tail()}")
            time.sleep(0.05)
        yield srv
    finally:
        if proc is not None:
            _stop(proc, stop_signal)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _with_retry(start: Callable[[int], contextlib.AbstractContextManager[Server]], port: int | None,
                udp_too: bool = False, attempts: int = 3) -> Iterator[Server]:
    """Enter ``start(port)``; when no port was asked for and the chosen one was taken between
    our check and the server's bind (another test on the machine), try a new one."""
    for i in range(attempts):
        with contextlib.ExitStack() as stack:
            try:
                srv = stack.enter_context(start(port or free_port(udp_too=udp_too)))
            except ServerError as e:
                if port is None and i < attempts - 1 and "in use" in str(e).lower():
                    continue
                raise
            yield srv
            return


def _http_probe(srv: Server) -> bool:
    # a cleartext HTTP/2 listener (nginx `listen ... http2` without ssl) takes HTTP/2 only
    h2c = ["--http2-prior-knowledge"] if srv.info.get("http2") and not srv.info.get("tls") else []
    r = subprocess.run(["curl", "-sk", *h2c, "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", srv.url("/")],
                       capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    return r.stdout.strip() == "200"


# -- TLS ----------------------------------------------------------------------------------------------
def self_signed_cert(directory: Path, cn: str = "localhost", ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate and key (EC P-256, 1 day) made with openssl into ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={cn}",
                        "-addext", f"subjectAltName=DNS:{cn},IP:{ip}"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise ServerError(f"openssl req failed: {r.stderr[-1000:]}")
    key.chmod(0o644)  # read by nginx workers / servers running as another user; a throwaway key
    return cert, key


# -- nginx -------------------------------------------------------------------------------------------
NGINX_SIZES = (0, 100, 1024, 16384, 1 << 20)


def nginx(*, port: int | None = None, sizes: Sequence[int] = NGINX_SIZES, workers: int = 1,
          tls: bool = False, sendfile: bool = False, http2: bool = False) -> contextlib.AbstractContextManager[Server]:
    """nginx serving ``/`` (index.html, HTTP_ROOT_BODY) and ``/size/<n>`` (n bytes of 'x') for each
    n in ``sizes``; ``/missing`` is a 404. Access log off, daemon off, everything in the temp dir.
    ``sendfile``: nginx's (and Debian's nginx.conf's) ``sendfile on``, the file's bytes sent by
    sendfile(2); off, they are read and written. ``http2``: ``listen ... http2`` (with ``tls``:
    ALPN h2). ``info``: ``sizes``, ``tls``, ``cert``."""
    def build(p: int, d: Path):
        www = d / "www"
        (www / "size").mkdir(parents=True)
        (www / "index.html").write_bytes(HTTP_ROOT_BODY)
        for n in sizes:
            (www / "size" / str(n)).write_bytes(b"x" * n)
        for t in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / t).mkdir(parents=True)
        listen = f"127.0.0.1:{p}" + (" ssl" if tls else "") + (" http2" if http2 else "")
        tls_conf = ""
        info = {"sizes": list(sizes), "tls": tls, "http2": http2}
        if tls:
            cert, key = self_signed_cert(d)
            tls_conf = f"ssl_certificate {cert}; ssl_certificate_key {key};"
            info["cert"] = cert
        (d / "nginx.conf").write_text(f"""
worker_processes {workers};
daemon off;
master_process on;
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/server.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    sendfile {"on" if sendfile else "off"};
    server {{
        listen {listen};
        {tls_conf}
        root {www};
        index index.html;
    }}
}}
""")
        argv = ["nginx", "-p", str(d), "-e", str(d / "server.log"), "-c", str(d / "nginx.conf")]
        def probe(srv: Server) -> bool:  # answering, and every worker forked (tests count them)
            return _http_probe(srv) and len(srv.worker_pids()) >= workers
        return _serve("nginx", argv, host="127.0.0.1", port=p, workdir=d, probe=probe,
                      stop_signal=signal.SIGTERM, info=info)
    return _with_retry(_prepared("nginx", None, build), port)


# -- Python HTTP server ------------------------------------------------------------------------------
def _run_python_http(host: str, port: int, cert: str | None, key: str | None) -> None:
    """The server process: ThreadingHTTPServer, HTTP/1.1 keep-alive, fixed answers."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive unless the client says close

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self._send(200, HTTP_ROOT_BODY)
            if path.startswith("/size/") and path[6:].isdigit() and int(path[6:]) <= 16 << 20:
                return self._send(200, b"x" * int(path[6:]), "application/octet-stream")
            if path.startswith("/status/") and path[8:].isdigit() and 200 <= int(path[8:]) <= 599:
                return self._send(int(path[8:]), f"status {path[8:]}\n".encode())
            return self._send(404, b"not found\n")

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            if self.path.split("?", 1)[0] == "/echo":
                return self._send(200, body, self.headers.get("Content-Type") or "application/octet-stream")
            return self._send(404, b"not found\n")

        disable_nagle_algorithm = True  # headers and body are two writes; no 40 ms delayed-ACK stall

        def log_message(self, fmt: str, *args: object) -> None:
            pass  # no per-request log: it would be most of the server's syscalls under load

    class Server_(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

        def finish_request(self, request, client_address):  # type: ignore[override]
            if ctx is not None:  # the TLS handshake in the connection's own thread
                try:
                    request = ctx.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    return
            super().finish_request(request, client_address)

        def handle_error(self, request, client_address) -> None:
            pass  # a client that goes away mid-request is normal under load

    ctx = None
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
    httpd = Server_((host, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"ready {host}:{port}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def python_http(*, port: int | None = None, tls: bool = False, netns: NetNs | None = None,
                host: str = "127.0.0.1") -> contextlib.AbstractContextManager[Server]:
    """The Python server (this file run as a script, comm ``python3``): GET ``/`` (HTTP_ROOT_BODY),
    ``/size/<n>``, ``/status/<code>``, POST ``/echo``; anything else 404. Keep-alive HTTP/1.1,
    a thread per connection. ``tls``: a self-signed cert (``info["cert"]``). ``netns``: serve on
    the namespace's address from inside it (``ip netns exec`` execs, so ``pid`` is Python's);
    else on ``host``, an address of the host."""
    host = netns.ns_ip if netns else host

    def build(p: int, d: Path):
        info: dict = {"tls": tls, "netns": netns.name if netns else None}
        argv = [sys.executable, str(Path(__file__).resolve()), "http", "--host", host, "--port", str(p)]
        if tls:
            cert, key = self_signed_cert(d, ip=host)
            argv += ["--cert", str(cert), "--key", str(key)]
            info["cert"] = cert
        if netns:
            argv = ["ip", "netns", "exec", netns.name, *argv]
        return _serve("python-http", argv, host=host, port=p, workdir=d, probe=_http_probe, info=info,
                      env=dict(os.environ, PYTHONUNBUFFERED="1"))
    # inside a fresh namespace every port is free; pick one free here anyway (it is also free there)
    return _with_retry(_prepared("pyhttp", None, build), port)


# -- aiohttp ------------------------------------------------------------------------------------------
def _run_aiohttp(host: str, port: int, cert: str | None, key: str | None) -> None:
    """The aiohttp server process: asyncio, one thread; with TLS every SSL is on a memory BIO
    (asyncio's SSLProtocol), as uvicorn's and asyncpg's are. The python server's routes."""
    import asyncio

    from aiohttp import web

    async def root(req: web.Request) -> web.Response:
        return web.Response(body=HTTP_ROOT_BODY, content_type="text/plain")

    async def size(req: web.Request) -> web.Response:
        n = int(req.match_info["n"])
        if n > 16 << 20:
            raise web.HTTPNotFound(text="not found\n")
        return web.Response(body=b"x" * n, content_type="application/octet-stream")

    async def status(req: web.Request) -> web.Response:
        code = int(req.match_info["code"])
        if not 200 <= code <= 599:
            raise web.HTTPNotFound(text="not found\n")
        return web.Response(status=code, text=f"status {code}\n")

    async def echo(req: web.Request) -> web.Response:
        return web.Response(body=await req.read(), content_type=req.content_type)

    async def serve() -> None:
        ctx = None
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/", root)
        app.router.add_get(r"/size/{n:\d+}", size)
        app.router.add_get(r"/status/{code:\d+}", status)
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)  # no per-request log line: as the python server
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ctx, backlog=128).start()
        print(f"ready {host}:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


def aiohttp_http(*, port: int | None = None, tls: bool = False) -> contextlib.AbstractContextManager[Server]:
    """An aiohttp server (this file run as a script, comm ``python3``) with the Python server's
    routes, on 127.0.0.1. ``tls``: a self-signed cert (``info["cert"]``)."""
    host = "127.0.0.1"

    def build(p: int, d: Path):
        info: dict = {"tls": tls}
        argv = [sys.executable, str(Path(__file__).resolve()), "aiohttp", "--host", host, "--port", str(p)]
        if tls:
            cert, key = self_signed_cert(d, ip=host)
            argv += ["--cert", str(cert), "--key", str(key)]
            info["cert"] = cert
        return _serve("aiohttp", argv, host=host, port=p, workdir=d, probe=_http_probe, info=info,
                      env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return _with_retry(_prepared("aiohttp", None, build), port)


# -- gRPC ---------------------------------------------------------------------------------------------
def pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        c, n = n & 0x7F, n >> 7
        out.append(c | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_encode(fields: Sequence[tuple[int, str | int]]) -> bytes:
    """A protobuf message of string (wire type 2) and integer (varint) fields, by number."""
    out = b""
    for num, v in fields:
        if isinstance(v, int):
            out += pb_varint(num << 3) + pb_varint(v)
        else:
            b = v.encode()
            out += pb_varint(num << 3 | 2) + pb_varint(len(b)) + b
    return out


def pb_decode(b: bytes) -> dict[int, str | int]:
    """The string and varint fields of a message made by :func:`pb_encode` (the last of each)."""
    out: dict[int, str | int] = {}
    p = 0

    def varint() -> int:
        nonlocal p
        v = shift = 0
        while True:
            c = b[p]
            p += 1
            v |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                return v
    while p < len(b):
        tag = varint()
        if tag & 7 == 0:
            out[tag >> 3] = varint()
        else:
            n = varint()
            out[tag >> 3], p = b[p:p + n].decode(), p + n
    return out


def _run_grpc(host: str, port: int) -> None:
    """The gRPC server process (grpcio: gRPC's C core, h2c) with a schema-less Greeter: raw
    bytes in and out, messages made by pb_encode. SayHello {1: name} -> {1: "Hello, <name>!",
    2: len(name)}; Fail aborts NOT_FOUND; Count {1: name, 2: n} streams n of {1: name, 2: i}."""
    from concurrent import futures

    import grpc

    def say_hello(req: bytes, ctx) -> bytes:
        name = pb_decode(req)[1]
        return pb_encode([(1, f"Hello, {name}!"), (2, len(str(name)))])

    def fail(req: bytes, ctx) -> bytes:
        ctx.abort(grpc.StatusCode.NOT_FOUND, f"no such name: {pb_decode(req)[1]}")

    def count(req: bytes, ctx):
        m = pb_decode(req)
        for i in range(int(m[2])):
            yield pb_encode([(1, str(m[1])), (2, i)])

    handler = grpc.method_handlers_generic_handler("demo.Greeter", {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"ready {host}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


def _run_grpc_client(host: str, port: int, name: str) -> None:
    """A gRPC client process (grpcio) making four calls on one channel, printing what each got
    as JSON: SayHello, SayHello with a field 3 of 300 "g"s gzip-compressed, Fail, Count of 3."""
    import json

    import grpc

    out = []
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        hello = ch.unary_unary("/demo.Greeter/SayHello")
        out.append(["SayHello", "OK", [pb_decode(hello(pb_encode([(1, name)]), timeout=10))]])
        # gRPC's C core sends a message uncompressed when gzip does not make it smaller
        big = pb_encode([(1, name), (3, "g" * 300)])
        out.append(["SayHello", "OK", [pb_decode(hello(big, timeout=10, compression=grpc.Compression.Gzip))]])
        try:
            ch.unary_unary("/demo.Greeter/Fail")(pb_encode([(1, name)]), timeout=10)
            out.append(["Fail", "OK", []])
        except grpc.RpcError as e:
            out.append(["Fail", e.code().name, [e.details()]])
        stream = ch.unary_stream("/demo.Greeter/Count")(pb_encode([(1, name), (2, 3)]), timeout=10)
        out.append(["Count", "OK", [pb_decode(m) for m in stream]])
    print(json.dumps(out))


def _run_grpc_phases(host: str, port: int, name: str, flood: int, after: int) -> None:
    """A gRPC client on one channel in three phases, each started by a line on stdin and
    ended by a line on stdout: SayHello {name}-before-i x3; {flood} of SayHello
    {name}-flood-i; {after} of SayHello {name}-after-i."""
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as ch:
        hello = ch.unary_unary("/demo.Greeter/SayHello")
        for phase, n in (("before", 3), ("flood", flood), ("after", after)):
            sys.stdin.readline()
            for i in range(n):
                hello(pb_encode([(1, f"{name}-{phase}-{i}")]), timeout=10)
            print(phase, flush=True)


def grpc_calls(srv: Server, name: str) -> list:
    """:func:`_run_grpc_client` against ``srv`` in a process of its own; what it printed."""
    import json

    r = _run([sys.executable, str(Path(__file__).resolve()), "grpc-client", "--host", srv.host,
              "--port", str(srv.port), "--name", name])
    return json.loads(r.stdout)


def _tcp_probe(srv: Server) -> bool:
    with socket.create_connection((srv.host, srv.port), timeout=2):
        return True


def grpc_server(*, port: int | None = None) -> contextlib.AbstractContextManager[Server]:
    """A gRPC server in the clear (grpcio, this file run as a script, comm ``python3``) on
    127.0.0.1, serving ``/demo.Greeter/{SayHello,Fail,Count}`` (see :func:`_run_grpc`)."""
    host = "127.0.0.1"

    def build(p: int, d: Path):
        argv = [sys.executable, str(Path(__file__).resolve()), "grpc", "--host", host, "--port", str(p)]
        return _serve("grpc", argv, host=host, port=p, workdir=d, probe=_tcp_probe,
                      env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return _with_retry(_prepared("grpc", None, build), port)


# -- node ---------------------------------------------------------------------------------------------
NODE_HTTP = r"""
const http = require('http'), https = require('https'), fs = require('fs');
const [host, port, cert, key] = process.argv.slice(1);
const handler = (req, res) => {
  const path = req.url.split('?')[0];
  let code = 200, body = 'andon test server\n', type = 'text/plain';
  const m = /^\/size\/(\d+)$/.exec(path), s = /^\/status\/(\d+)$/.exec(path);
  if (path === '/') { /* the default body */ }
  else if (m && +m[1] <= 16 << 20) { body = 'x'.repeat(+m[1]); type = 'application/octet-stream'; }
  else if (s && +s[1] >= 200 && +s[1] <= 599) { code = +s[1]; body = 'status ' + s[1] + '\n'; }
  else { code = 404; body = 'not found\n'; }
  res.writeHead(code, {'Content-Type': type, 'Content-Length': Buffer.byteLength(body)});
  res.end(body);
};
const srv = cert ? https.createServer({cert: fs.readFileSync(cert), key: fs.readFileSync(key)}, handler)
                 : http.createServer(handler);
srv.keepAliveTimeout = 60000;
srv.listen(+port, host, () => console.log('ready ' + host + ':' + port));
process.on('SIGTERM', () => { srv.close(); process.exit(0); });
"""


def node_http(*, port: int | None = None, tls: bool = False) -> contextlib.AbstractContextManager[Server]:
    """A node HTTP(S) server (``node -e``, comm ``node``), one thread: GET ``/size/<n>``,
    ``/status/<code>``, ``/`` on 127.0.0.1. ``tls``: a self-signed cert (``info["cert"]``).
    node's TLS goes through its own memory BIO."""
    host = "127.0.0.1"
    node = shutil.which("node") or "node"

    def build(p: int, d: Path):
        info: dict = {"tls": tls}
        argv = [node, "-e", NODE_HTTP, host, str(p)]
        if tls:
            cert, key = self_signed_cert(d, ip=host)
            argv += [str(cert), str(key)]
            info["cert"] = cert
        return _serve("node", argv, host=host, port=p, workdir=d, probe=_http_probe, info=info)
    return _with_retry(_prepared("node", None, build), port)


GO_DEMO = Path(__file__).resolve().parents[1] / "build/go/tlsdemo"  # tests/go/tlsdemo, built by `make test-go`
GO_GRPC = Path(__file__).resolve().parents[1] / "build/go/grpcdemo"  # tests/go/grpcdemo, the same


def go_https(*, port: int | None = None, h2: bool = False) -> contextlib.AbstractContextManager[Server]:
    """A Go HTTPS server (tests/go/tlsdemo: net/http over Go's own crypto/tls, no OpenSSL; comm
    ``tlsdemo``), HTTP/1.1 only, or with ``h2`` HTTP/2 too (ALPN, net/http's default): GET
    ``/size/<n>``, ``/status/<code>``, ``/`` on 127.0.0.1, with a self-signed cert
    (``info["cert"]``). ``GO_DEMO get URL N`` (``get-h2``) is its client."""
    host = "127.0.0.1"
    if not GO_DEMO.exists():
        raise ServerError(f"{GO_DEMO} is not built: make test-go (needs golang-go, scripts/setup.sh)")

    def build(p: int, d: Path):
        cert, key = self_signed_cert(d, ip=host)
        argv = [str(GO_DEMO), "serve-h2" if h2 else "serve", f"{host}:{p}", str(cert), str(key)]
        return _serve("go-https", argv, host=host, port=p, workdir=d, probe=_http_probe,
                      info={"tls": True, "cert": cert, "h2": h2})
    return _with_retry(_prepared("go-https", None, build), port)


def go_grpc(*, port: int | None = None) -> contextlib.AbstractContextManager[Server]:
    """A gRPC server on grpc-go over Go's own crypto/tls (tests/go/grpcdemo; comm ``grpcdemo``)
    on 127.0.0.1 with a self-signed cert: ``/demo.Greeter/SayHello`` and ``Fail``. ``GO_GRPC
    call ADDR NAME N`` is its client."""
    host = "127.0.0.1"
    if not GO_GRPC.exists():
        raise ServerError(f"{GO_GRPC} is not built: make test-go (needs golang-google-grpc-dev, scripts/setup.sh)")

    def build(p: int, d: Path):
        cert, key = self_signed_cert(d, ip=host)
        return _serve("go-grpc", [str(GO_GRPC), "serve", f"{host}:{p}", str(cert), str(key)], host=host, port=p,
                      workdir=d, probe=_tcp_probe, info={"tls": True, "cert": cert})
    return _with_retry(_prepared("go-grpc", None, build), port)


# -- PostgreSQL --------------------------------------------------------------------------------------
def _pg_probe(srv: Server) -> bool:
    r = subprocess.run([str(PG_BIN / "pg_isready"), "-h", srv.host, "-p", str(srv.port), "-U", "postgres",
                        "-t", "2"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    return r.returncode == 0


def postgres(*, port: int | None = None, settings: dict[str, str] | None = None, tls: bool = False
             ) -> contextlib.AbstractContextManager[Server]:
    """PostgreSQL 15 as user ``postgres`` (it refuses root): initdb with trust auth into the temp
    dir, listening on 127.0.0.1 only, unix socket in the temp dir (``info["socket_dir"]``), fsync
    off. Superuser ``postgres``, database ``postgres``, no password. Stopped with SIGINT (fast
    shutdown: it does not wait for clients to leave). ``tls``: ``ssl = on`` with a self-signed
    certificate (``info["cert"]``), as Debian's own cluster has it; clients choose (libpq's
    default, sslmode=prefer, takes it)."""
    def build(p: int, d: Path):
        data = d / "data"
        r = subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                            "--locale=C", "--no-sync", "--no-instructions"],
                           capture_output=True, text=True, timeout=120, user="postgres", group=_group("postgres"),
                           extra_groups=[], cwd=d)
        if r.returncode != 0:
            raise ServerError(f"initdb failed ({r.returncode}):\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        opts = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(d), "fsync": "off",
                "synchronous_commit": "off", "full_page_writes": "off", "logging_collector": "off",
                "max_connections": "100", "shared_buffers": "64MB"}
        info = {"socket_dir": d, "data": data}
        if tls:
            cert, key = self_signed_cert(d)
            shutil.chown(key, "postgres")
            key.chmod(0o600)  # postgres refuses a key others can read
            opts.update({"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)})
            info["cert"] = cert
        opts.update(settings or {})
        argv = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(p)]
        for k, v in opts.items():
            argv += ["-c", f"{k}={v}"]
        return _serve("postgres", argv, host="127.0.0.1", port=p, workdir=d, probe=_pg_probe,
                      stop_signal=signal.SIGINT, user="postgres", info=info)
    return _with_retry(_prepared("pg", "postgres", build), port)


# -- MariaDB -----------------------------------------------------------------------------------------
def _mysql_probe(srv: Server) -> bool:
    return mysql(srv, "select 1", timeout=PROBE_TIMEOUT_S) == [["1"]]


def mariadb(*, port: int | None = None, tls: bool = False) -> contextlib.AbstractContextManager[Server]:
    """MariaDB as user ``mysql``: mariadb-install-db into the temp dir (root@localhost and
    root@127.0.0.1 with no password; TCP clients are root@127.0.0.1 under --skip-name-resolve), --bind-address=127.0.0.1, unix socket ``info["socket"]``, no binlog, small
    buffer pool. Database ``test`` is created for the tests. ``tls``: a self-signed
    certificate (``info["cert"]``), so clients that ask for TLS get it."""
    def build(p: int, d: Path):
        data = d / "data"
        r = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                            "--auth-root-authentication-method=normal", "--skip-test-db",
                            "--skip-name-resolve"],
                           capture_output=True, text=True, timeout=180, user="mysql", group=_group("mysql"),
                           extra_groups=[], cwd=d)
        if r.returncode != 0:
            raise ServerError(f"mariadb-install-db failed ({r.returncode}):\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        sock = d / "mysql.sock"
        argv = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--port={p}", "--bind-address=127.0.0.1",
                f"--socket={sock}", f"--pid-file={d}/mariadbd.pid", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0", f"--log-error={d}/server.log",
                "--max-connections=200", "--performance-schema=0"]
        info = {"socket": sock, "data": data}
        if tls:
            cert, key = self_signed_cert(d)
            argv += [f"--ssl-cert={cert}", f"--ssl-key={key}"]
            info["cert"] = cert
        return _serve("mariadb", argv, host="127.0.0.1", port=p, workdir=d, probe=_mysql_probe,
                      user="mysql", info=info, timeout=60)

    @contextlib.contextmanager
    def with_test_db():
        with _with_retry(_prepared("maria", "mysql", build), port) as srv:
            mysql(srv, "create database if not exists test")
            yield srv
    return with_test_db()


# -- Redis -------------------------------------------------------------------------------------------
def _redis_probe(srv: Server) -> bool:
    return redis_cli(srv, "ping", timeout=PROBE_TIMEOUT_S) == "PONG"


def redis(*, port: int | None = None) -> contextlib.AbstractContextManager[Server]:
    """redis-server on 127.0.0.1 with no persistence (--save '' --appendonly no), as ``nobody``;
    also on the unix socket ``info["socket"]``."""
    def build(p: int, d: Path):
        sock = d / "redis.sock"
        argv = ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(d), "--daemonize", "no", "--logfile", "", "--protected-mode", "no",
                "--unixsocket", str(sock), "--unixsocketperm", "777"]
        return _serve("redis", argv, host="127.0.0.1", port=p, workdir=d, probe=_redis_probe, user="nobody",
                      info={"socket": sock})
    return _with_retry(_prepared("redis", "nobody", build), port)


# -- dnsmasq -----------------------------------------------------------------------------------------
def _dns_probe(srv: Server) -> bool:
    return dig(srv, "svc.andon.test", "A", timeout=PROBE_TIMEOUT_S).answers_of("A") == DNS_RECORDS["svc.andon.test"]["A"]


def dnsmasq(*, port: int | None = None) -> contextlib.AbstractContextManager[Server]:
    """dnsmasq answering DNS_RECORDS only (no upstream, no /etc/hosts), UDP and TCP on 127.0.0.1;
    other names under andon.test get NXDOMAIN (--local), names elsewhere REFUSED (no upstream).
    Logs queries to its log."""
    def build(p: int, d: Path):
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--port={p}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--log-facility=-",
                "--log-queries", "--local-ttl=60", "--local=/andon.test/"]
        for name, recs in DNS_RECORDS.items():
            if "CNAME" in recs:
                argv.append(f"--cname={name},{recs['CNAME'][0].rstrip('.')}")
            elif name == "svc.andon.test":
                argv.append(f"--address=/{name}/{recs['A'][0]}")
            else:
                argv.append(f"--host-record={name},{','.join(recs.get('A', []) + recs.get('AAAA', []))}")
        return _serve("dnsmasq", argv, host="127.0.0.1", port=p, workdir=d, probe=_dns_probe)
    return _with_retry(_prepared("dns", None, build), port, udp_too=True)


# -- network namespaces ------------------------------------------------------------------------------
@dataclass
class NetNs:
    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def exec(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run a command inside the namespace (bounded)."""
        kw.setdefault("timeout", CLIENT_TIMEOUT_S)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, **kw)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise ServerError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_forward_users = 0
_forward_before = "1"


@contextlib.contextmanager
def ipv4_forwarding() -> Iterator[None]:
    """IPv4 forwarding on while held: traffic between two of a test's namespaces is routed
    through the host. A fresh Debian has it off (podman turns it on when it sets up a
    container's network, so a machine that ran containers before hides the need). Nested
    holders share it; the value found by the first is put back after the last."""
    global _forward_users, _forward_before
    if _forward_users == 0:
        _forward_before = _IP_FORWARD.read_text().strip()
        if _forward_before != "1":
            _IP_FORWARD.write_text("1")
    _forward_users += 1
    try:
        yield
    finally:
        _forward_users -= 1
        if _forward_users == 0 and _forward_before != "1":
            _IP_FORWARD.write_text(_forward_before)


_NETNS_SEQ = itertools.count(random.randrange(1000))  # random: two test processes' pids may agree mod 10000


@contextlib.contextmanager
def netns() -> Iterator[NetNs]:
    """A network namespace of our own joined to the host by a veth pair on a random 10.x.y.z/30
    not already on the machine. Removed on exit with its veth (and any process left in it)."""
    used = _ip("-o", "-4", "addr", "show").stdout
    for _ in range(100):
        a, b, c = random.randint(200, 250), random.randint(0, 255), random.randrange(0, 256, 4)
        if f"10.{a}.{b}." not in used:
            break
    tag = f"{os.getpid() % 10000}{next(_NETNS_SEQ) % 1000:03d}"  # distinct within this process
    ns = NetNs(f"andon-t{tag}", f"avh{tag}", f"avn{tag}", f"10.{a}.{b}.{c + 1}", f"10.{a}.{b}.{c + 2}")
    fwd = contextlib.ExitStack()
    try:
        fwd.enter_context(ipv4_forwarding())  # for traffic to another namespace of the test's
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
        _ip("-n", ns.name, "link", "set", ns.ns_if, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        pids = _ip("netns", "pids", ns.name, check=False).stdout.split()
        for pid in pids:  # only what a test started in our own namespace can be in it
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", ns.name, check=False)
        _ip("link", "del", ns.host_if, check=False)  # gone with the namespace's end already, normally
        fwd.close()


# -- clients -----------------------------------------------------------------------------------------
def _run(argv: list[str], *, input: str | bytes | None = None, timeout: float = CLIENT_TIMEOUT_S,
         text: bool = True, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, input=input, capture_output=True, text=text, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise ClientError(f"{argv[0]} timed out after {timeout} s") from e
    if check and r.returncode != 0:
        err = r.stderr if text else r.stderr.decode(errors="replace")
        raise ClientError(f"{' '.join(argv[:6])} ... exited {r.returncode}: {err.strip()[-1500:]}")
    return r


@dataclass
class CurlResult:
    statuses: list[int]
    latencies_s: list[float]   # curl's time_total per request
    sizes: list[int]           # body bytes downloaded per request
    connects: int              # TCP connections curl opened (1 when every request reused one)
    exit_code: int = 0         # curl's exit code for the last request (60: cert not trusted, 7: refused)

    @property
    def count(self) -> int:
        return len(self.statuses)


def curl(url: str | Sequence[str], n: int = 1, *, keepalive: bool = True, cacert: Path | None = None,
         insecure: bool = False, data: bytes | None = None, headers: Sequence[str] = (),
         timeout: float = CLIENT_TIMEOUT_S) -> CurlResult:
    """One curl process fetching ``url`` ``n`` times (or each of a list of urls once) in order.
    ``keepalive``: curl reuses one connection for them all; otherwise every request says
    ``Connection: close`` and gets its own. ``data`` makes each a POST of that body."""
    urls = [url] * n if isinstance(url, str) else list(url)
    cfg = io.StringIO()
    for u in urls:
        cfg.write(f'url = "{u}"\noutput = "/dev/null"\n')
    argv = ["curl", "-s", "-S", "--config", "-", "-w", "%{http_code} %{time_total} %{size_download} %{num_connects}\\n",
            "--max-time", str(timeout)]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    for h in headers:
        argv += ["-H", h]
    if cacert:
        argv += ["--cacert", str(cacert)]
    if insecure:
        argv += ["-k"]
    body_file = None
    if data is not None:
        body_file = tempfile.NamedTemporaryFile(prefix="andon-curl-", delete=False)
        body_file.write(data)
        body_file.close()
        argv += ["--data-binary", f"@{body_file.name}", "-H", "Content-Type: application/octet-stream"]
    try:
        r = _run(argv, input=cfg.getvalue(), timeout=timeout + 10, check=False)
    finally:
        if body_file:
            os.unlink(body_file.name)
    res = CurlResult([], [], [], 0)
    for line in r.stdout.splitlines():
        code, t, size, conns = line.split()
        res.statuses.append(int(code))
        res.latencies_s.append(float(t))
        res.sizes.append(int(float(size)))
        res.connects += int(conns)
    if len(res.statuses) != len(urls):
        raise ClientError(f"curl exited {r.returncode} after {len(res.statuses)} of {len(urls)} requests: "
                          f"{r.stderr.strip()[-1500:]}")
    res.exit_code = r.returncode  # a request with no response has status 0 ("000")
    return res


def psql(srv: Server, sql: str, *, db: str = "postgres", sslmode: str = "prefer") -> list[list[str]]:
    """``psql -c`` over TCP (simple query protocol); rows as lists of strings (CSV, no header).
    ``sslmode``: libpq's (its default, prefer, is TLS when the server offers it)."""
    r = _run(["psql", "-X", "-q", "-h", srv.host, "-p", str(srv.port), "-U", "postgres", "-d", db,
              "-v", "ON_ERROR_STOP=1", "--csv", "-t", "-c", sql],
             env=dict(os.environ, PGCONNECT_TIMEOUT="5", PGSSLMODE=sslmode))
    return [row for row in csv.reader(io.StringIO(r.stdout)) if row]


def pg_connect(srv: Server, *, db: str = "postgres"):
    """A psycopg 3 connection (autocommit) for many queries on one backend; close it (``with``)."""
    import psycopg

    return psycopg.connect(host=srv.host, port=srv.port, user="postgres", dbname=db, connect_timeout=5,
                           autocommit=True)


def pg_extended(srv: Server, sql: str, params: Sequence = (), *, prepare: bool = True,
                db: str = "postgres") -> list[tuple]:
    """One query through psycopg 3 with parameters, so the extended protocol (Parse/Bind/
    Execute); ``prepare`` makes it a named server-side prepared statement."""
    with pg_connect(srv, db=db) as conn:
        cur = conn.execute(sql, params, prepare=prepare)
        return cur.fetchall() if cur.description else []


def mysql(srv: Server, sql: str, *, db: str | None = None, timeout: float = CLIENT_TIMEOUT_S) -> list[list[str]]:
    """``mysql -e`` over TCP as root (text protocol); rows as lists of strings."""
    argv = ["mysql", "--no-defaults", "--protocol=TCP", "-h", srv.host, "-P", str(srv.port), "-u", "root",
            "--connect-timeout=5", "-N", "-B", "-e", sql]
    if db:
        argv.append(db)
    r = _run(argv, timeout=timeout)
    return [line.split("\t") for line in r.stdout.splitlines()]


def mysql_connect(srv: Server, *, db: str = "test"):
    """A mysql-connector connection (pure Python, autocommit) as root; ``close()`` it."""
    import mysql.connector

    return mysql.connector.connect(host=srv.host, port=srv.port, user="root", database=db, connection_timeout=5,
                                   use_pure=True, autocommit=True)


def mysql_prepared(srv: Server, sql: str, params: Sequence = (), *, db: str = "test") -> list[tuple]:
    """One statement through mysql-connector's ``cursor(prepared=True)``: COM_STMT_PREPARE, then
    COM_STMT_EXECUTE with binary parameters (``%s`` or ``?`` placeholders)."""
    conn = mysql_connect(srv, db=db)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(sql, tuple(params))
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        cur.close()
        return rows
    finally:
        conn.close()


def redis_cli(srv: Server, *args: str, timeout: float = CLIENT_TIMEOUT_S) -> str:
    """``redis-cli -h -p ARGS`` (raw output, as when not on a terminal), stripped."""
    r = _run(["redis-cli", "-h", srv.host, "-p", str(srv.port), *args], timeout=timeout)
    return r.stdout.strip()


def resp_encode(command: Sequence[str | bytes]) -> bytes:
    """A command as a RESP array of bulk strings (what redis-cli and clients send)."""
    out = [b"*%d\r\n" % len(command)]
    for a in command:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


@dataclass
class PipeResult:
    replies: int
    errors: int


def redis_pipe(srv: Server, commands: Sequence[Sequence[str]]) -> PipeResult:
    """``redis-cli --pipe``: every command written as raw RESP, replies counted by redis-cli."""
    payload = b"".join(resp_encode(c) for c in commands)
    r = _run(["redis-cli", "-h", srv.host, "-p", str(srv.port), "--pipe"], input=payload, text=False)
    out = r.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("errors:"):
            e, rep = line.split(",")
            return PipeResult(replies=int(rep.split(":")[1]), errors=int(e.split(":")[1]))
    raise ClientError(f"redis-cli --pipe printed no summary: {out[-500:]}")


def _resp_read(f) -> object:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ClientError(f"RESP: short line {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ClientError(rest.decode())  # an error reply is a value, not a raise: the pipeline goes on
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise ClientError(f"RESP: unknown type byte {kind!r}")


def resp_pipeline(srv: Server, commands: Sequence[Sequence[str | bytes]], timeout: float = 10.0) -> list:
    """All ``commands`` in one write on one connection, then every reply read back in order
    (``+OK`` -> str, ``:n`` -> int, bulk -> bytes, ``-ERR`` -> a ClientError value)."""
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as s:
        s.sendall(b"".join(resp_encode(c) for c in commands))
        f = s.makefile("rb")
        return [_resp_read(f) for _ in commands]


@dataclass
class DigResult:
    status: str                              # NOERROR, NXDOMAIN, REFUSED, ...
    answers: list[tuple[str, int, str, str]]  # (name, ttl, type, data) of the answer section
    query_time_ms: int

    def answers_of(self, rtype: str) -> list[str]:
        return [a[3] for a in self.answers if a[2] == rtype]


def dig(srv: Server, name: str, rtype: str = "A", *, tcp: bool = False, timeout: float = 15.0) -> DigResult:
    """``dig @host -p port name type`` (UDP, or TCP with ``tcp``); no retries, 2 s timeout."""
    argv = ["dig", f"@{srv.host}", "-p", str(srv.port), name, rtype, "+noall", "+answer", "+comments", "+stats",
            "+tries=1", "+time=2"]
    if tcp:
        argv.append("+tcp")
    r = _run(argv, timeout=timeout)
    status, qt, answers = "", -1, []
    for line in r.stdout.splitlines():
        if "->>HEADER<<-" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        elif line.startswith(";; Query time:"):
            qt = int(line.split(":")[1].split()[0])
        elif line.strip() and not line.startswith(";"):  # +noall +answer: only answer records
            n, ttl, _cls, t, data = line.split(None, 4)
            answers.append((n, int(ttl), t, data.strip()))
    if not status:
        raise ClientError(f"dig printed no header: {r.stdout[-500:]}")
    return DigResult(status, answers, qt)


# -- the Python server as a script ------------------------------------------------------------------
def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="andon test servers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("http", help="the threaded keep-alive HTTP/1.1 test server")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--cert")
    h.add_argument("--key")
    h = sub.add_parser("aiohttp", help="the same routes served by aiohttp (asyncio)")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--cert")
    h.add_argument("--key")
    h = sub.add_parser("grpc", help="a gRPC server in the clear (grpcio)")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h = sub.add_parser("grpc-client", help="four calls to the gRPC server, what they got as JSON")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--name", required=True)
    h = sub.add_parser("grpc-phases", help="gRPC calls on one channel in three phases, stepped by stdin")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--name", required=True)
    h.add_argument("--flood", type=int, default=3000)
    h.add_argument("--after", type=int, default=5)
    a = ap.parse_args(argv)
    if a.cmd == "grpc-phases":
        _run_grpc_phases(a.host, a.port, a.name, a.flood, a.after)
    elif a.cmd == "grpc":
        _run_grpc(a.host, a.port)
    elif a.cmd == "grpc-client":
        _run_grpc_client(a.host, a.port, a.name)
    elif a.cmd == "http":
        _run_python_http(a.host, a.port, a.cert, a.key)
    elif a.cmd == "aiohttp":
        _run_aiohttp(a.host, a.port, a.cert, a.key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
