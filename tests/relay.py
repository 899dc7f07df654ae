"""A tiny userspace TCP/UDP relay on 127.0.0.1 that records both directions of real
conversations, for the protocol parser fixtures under ``tests/data/streams/``.

    with servers.redis() as srv, Relay(srv.port) as relay:
        servers.redis_cli(relay, "SET", "k", "v")     # a relay has .host and .port
    relay.save("tests/data/streams/redis_set.jsonl")

Every ``recv`` is one chunk, stamped with ``time.monotonic_ns()`` when it returned, as the
socket sensor stamps a syscall's return. Directions are seen from the *client*: what the
client sent is ``egress``, what it received ``ingress``.

Stream file format (JSON lines, one chunk per line, in the order the relay saw them):
``{"t": <ns>, "dir": "egress"|"ingress", "hex": "<bytes as hex>"}``.
Replay as the client: as written; as the server: swap the directions.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

from andon.protocols.base import DataChunk, Direction

MAX_RECORDED = 4 << 20  # bytes per relay, a bound on what one test can record
IDLE_S = 10.0


class Relay:
    def __init__(self, target_port: int, *, udp: bool = False, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.udp = udp
        self.host = "127.0.0.1"
        self.conns: list[list[tuple[int, str, bytes]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._recorded = 0
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((self.host, 0))
        self.port = self.sock.getsockname()[1]

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Relay:
        if self.udp:
            self._spawn(self._udp_loop)
        else:
            self.sock.listen(16)
            self.sock.settimeout(0.2)
            self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=3)
        for s in [self.sock, *self._socks]:
            try:
                s.close()
            except OSError:
                pass

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _record(self, conn: list, direction: str, data: bytes) -> None:
        with self._lock:
            if self._recorded + len(data) <= MAX_RECORDED:
                self._recorded += len(data)
                conn.append((time.monotonic_ns(), direction, data))

    # -- TCP --------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.create_connection(self.target, timeout=5)
            for s in (client, upstream):
                s.settimeout(0.2)
                self._socks.append(s)
            conn: list = []
            with self._lock:
                self.conns.append(conn)
            self._spawn(self._pump, client, upstream, conn, "egress")
            self._spawn(self._pump, upstream, client, conn, "ingress")

    def _pump(self, src: socket.socket, dst: socket.socket, conn: list, direction: str) -> None:
        idle_until = time.monotonic() + IDLE_S
        while not self._stop.is_set() and time.monotonic() < idle_until:
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            self._record(conn, direction, data)
            idle_until = time.monotonic() + IDLE_S
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- UDP --------------------------------------------------------------------------------
    def _udp_loop(self) -> None:
        self.sock.settimeout(0.2)
        upstreams: dict[tuple, tuple[socket.socket, list]] = {}
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except (socket.timeout, OSError):
                continue
            if addr not in upstreams:
                up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.connect(self.target)
                up.settimeout(0.2)
                self._socks.append(up)
                conn: list = []
                with self._lock:
                    self.conns.append(conn)
                upstreams[addr] = (up, conn)
                self._spawn(self._udp_back, up, addr, conn)
            up, conn = upstreams[addr]
            self._record(conn, "egress", data)
            up.send(data)

    def _udp_back(self, up: socket.socket, addr: tuple, conn: list) -> None:
        while not self._stop.is_set():
            try:
                data = up.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            self._record(conn, "ingress", data)
            try:
                self.sock.sendto(data, addr)
            except OSError:
                break

    # -- output -----------------------------------------------------------------------------
    def save(self, path: str | Path, conn: int | None = None) -> Path:
        """Write one connection (default: the one that moved the most bytes) as JSON lines."""
        with self._lock:
            conns = [list(c) for c in self.conns]
        if not conns:
            raise RuntimeError("the relay saw no connection")
        chosen = conns[conn] if conn is not None else max(conns, key=lambda c: sum(len(d) for _, _, d in c))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for t, direction, data in chosen:
                f.write(json.dumps({"t": t, "dir": direction, "hex": data.hex()}) + "\n")
        return path


def load(path: str | Path, *, as_server: bool = False) -> list[DataChunk]:
    """A recorded stream as chunks for a parser: seen by the client, or (``as_server``) by
    the server, directions swapped."""
    chunks = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        egress = rec["dir"] == "egress"
        if as_server:
            egress = not egress
        chunks.append(DataChunk(rec["t"], Direction.EGRESS if egress else Direction.INGRESS, bytes.fromhex(rec["hex"])))
    return chunks


def record_all(outdir: str | Path) -> list[Path]:
    """Record the fixture conversations with the real servers of ``tests/servers.py``
    (needs root to start them): ``python tests/relay.py tests/data/streams``."""
    import servers

    out = Path(outdir)
    saved: list[Path] = []
    with servers.nginx() as srv, Relay(srv.port) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        servers.curl([f"{base}/", f"{base}/size/{servers.NGINX_SIZES[0]}", f"{base}/missing"])
    saved.append(relay.save(out / "http_nginx_keepalive.jsonl"))
    with servers.python_http() as srv, Relay(srv.port) as relay:
        servers.curl([f"http://127.0.0.1:{relay.port}/", f"http://127.0.0.1:{relay.port}/nothing-here"])
    saved.append(relay.save(out / "http_python_keepalive.jsonl"))
    with servers.postgres() as srv:
        with Relay(srv.port) as relay:
            with contextlib.suppress(servers.ClientError):  # the second statement fails on purpose
                servers.psql(relay, "select 1 as a, null as b union all select 2, 'x'; select nosuchcol from pg_class")
        saved.append(relay.save(out / "pgsql_simple.jsonl"))
        with Relay(srv.port) as relay:
            servers.pg_extended(relay, "select %s::int * 2 as doubled", (21,))
        saved.append(relay.save(out / "pgsql_extended.jsonl"))
    with servers.mariadb() as srv:
        with Relay(srv.port) as relay:
            with contextlib.suppress(servers.ClientError):  # the second statement fails on purpose
                servers.mysql(relay, "select 1 as a union select 2; select nosuchcol from mysql.user")
        saved.append(relay.save(out / "mysql_query.jsonl"))
        with Relay(srv.port) as relay:
            servers.mysql_prepared(relay, "select ? + 1 as n, ? as s", (41, "hi"))
        saved.append(relay.save(out / "mysql_prepared.jsonl"))
    with servers.redis() as srv:
        with Relay(srv.port) as relay:
            servers.resp_pipeline(relay, [["SET", "k", "v"], ["GET", "k"], ["INCR", "n"], ["LPUSH", "l", "a", "b"],
                                          ["LRANGE", "l", "0", "-1"], ["GET", "nosuch"], ["BADCMD"]])
        saved.append(relay.save(out / "redis_pipeline.jsonl"))
    with servers.dnsmasq() as srv:
        with Relay(srv.port, udp=True) as relay:
            servers.dig(relay, "both.andon.test", "A")
        saved.append(relay.save(out / "dns_udp.jsonl"))
        with Relay(srv.port) as relay:
            servers.dig(relay, "v6.andon.test", "AAAA", tcp=True)
        saved.append(relay.save(out / "dns_tcp.jsonl"))
    return saved


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    for p in record_all(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data/streams"):
        print(p, sum(1 for _ in p.open()), "chunks")
