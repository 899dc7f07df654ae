"""A small network of the test's own for the ``andon policy`` end-to-end tests.

:class:`Lab` makes network namespaces joined to the host by veths (IPv4: each a routed /30;
IPv6: every namespace on one bridge of the test's, so no forwarding sysctl is touched), runs
one echo server thread per namespace (TCP and UDP on a list of ports), adds endpoints and
applies policies with the real CLI (each command its own process), and probes: a TCP connect
plus echo, a UDP echo, an ICMP/ICMPv6 echo (raw socket). Everything it made goes in
:meth:`Lab.close`, run by the fixtures' ``finally``; the pins go with the last endpoint.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import in_netns, ipv4_forwarding  # noqa: E402  (tests/servers.py)

DROP_TIMEOUT = 0.3  # a probe with no answer in this long was dropped ...
RETRY_TIMEOUT = 1.5  # ... unless a second, longer try (for probes expected to pass) gets one


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class EchoServer:
    """TCP and UDP echo on ``addr`` for every port in ``ports``, one selector thread."""

    def __init__(self, netns: str | None, addr: str, ports: list[int]) -> None:
        fam = _family(addr)

        def make() -> list[socket.socket]:
            out = []
            for p in ports:
                t = socket.socket(fam, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((addr, p))
                t.listen(64)
                u = socket.socket(fam, socket.SOCK_DGRAM)
                u.bind((addr, p))
                out += [t, u]
            return out

        self.socks: list[socket.socket] = in_netns(netns, make)  # type: ignore[assignment]
        self.sel = selectors.DefaultSelector()
        for s in self.socks:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.1):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    if s.type == socket.SOCK_DGRAM:
                        data, peer = s.recvfrom(65536)  # whole, also a datagram over the MTU
                        s.sendto(data, peer)
                    elif s in self.socks:  # a listener
                        c, _ = s.accept()
                        c.setblocking(False)
                        self.sel.register(c, selectors.EVENT_READ)
                    else:
                        data = s.recv(256)
                        if data:
                            s.sendall(data)
                        self.sel.unregister(s)
                        s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()


# -- probes ------------------------------------------------------------------------------------------
def tcp_probe(netns: str | None, addr: str, port: int, timeout: float) -> bool:
    def go() -> bool:
        with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((addr, port))
                s.sendall(b"andon")
                return s.recv(64) == b"andon"
            except OSError:
                return False
    return bool(in_netns(netns, go))


def udp_probe(netns: str | None, addr: str, port: int, timeout: float, size: int = 0) -> bool:
    """A UDP echo; with ``size``, a datagram of that many random bytes (over the MTU: fragments)
    that must come back whole."""
    payload = os.urandom(size) if size else b"andon"

    def go() -> bool:
        with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(payload, (addr, port))
                return s.recvfrom(65536)[0] == payload
            except OSError:
                return False
    return bool(in_netns(netns, go))


def _checksum(b: bytes) -> int:
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ping_probe(netns: str | None, addr: str, timeout: float) -> bool:
    """One echo request (ICMP type 8, or ICMPv6 128 whose checksum the kernel fills in);
    True when the matching reply comes back."""
    v6 = ":" in addr
    ident = random.randint(1, 0xFFFF)

    def go() -> bool:
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        with socket.socket(_family(addr), socket.SOCK_RAW, proto) as s:
            body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"andon!"
            if not v6:
                body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
            s.sendto(body, (addr, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    pkt, peer = s.recvfrom(256)
                except OSError:
                    return False
                icmp = pkt if v6 else pkt[(pkt[0] & 0x0F) * 4:]
                reply = 129 if v6 else 0
                if ipaddress.ip_address(peer[0]) == ipaddress.ip_address(addr) and icmp[0] == reply \
                        and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return True
            return False
    return bool(in_netns(netns, go))


def probe(netns: str | None, addr: str, proto: str, port: int, timeout: float, size: int = 0) -> bool:
    """``size``: UDP only, a datagram of that many bytes (udp_probe)."""
    if proto == "TCP":
        return tcp_probe(netns, addr, port, timeout)
    if proto == "UDP":
        return udp_probe(netns, addr, port, timeout, size)
    return ping_probe(netns, addr, timeout)


# -- the lab -----------------------------------------------------------------------------------------
@dataclass
class Node:
    """A namespace (``netns``), its host veth (``host_if``), the host's address on that link
    (``gateway``) and its own address (``addr``); ``netns`` None = the host itself."""

    name: str
    netns: str | None
    host_if: str
    gateway: str
    addr: str


def _free_v4_slash30(first_octets: tuple[int, int], used: str) -> tuple[str, str]:
    for _ in range(200):
        a, b = first_octets
        c, d = random.randint(a, b), random.randint(0, 255)
        e = random.randrange(0, 256, 4)
        if f"10.{c}.{d}." not in used:
            return f"10.{c}.{d}.{e + 1}", f"10.{c}.{d}.{e + 2}"
    raise RuntimeError("no free 10.x.y.0/30 for a test namespace")


@dataclass
class Lab:
    state_dir: Path
    pin_dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    servers: list[EchoServer] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    bridge: str | None = None
    _tag: str = field(default_factory=lambda: f"{os.getpid() % 1000}{random.randint(0, 99):02d}")
    _links: list[str] = field(default_factory=list)
    _netns: list[str] = field(default_factory=list)
    _forwarding: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # -- topology ----------------------------------------------------------------------------------
    def add_v4(self, name: str, octets: tuple[int, int] = (200, 250), ports: list[int] | None = None) -> Node:
        """A namespace on a routed /30 in 10.<octets range>.x.y (default route via the host)."""
        host_ip, ns_ip = _free_v4_slash30(octets, ip("-o", "-4", "addr", "show").stdout)
        if not any(n.gateway for n in self.nodes.values()):  # the first routed /30: through the host
            self._forwarding.enter_context(ipv4_forwarding())
        node = self._make(name)
        ip("addr", "add", f"{host_ip}/30", "dev", node.host_if)
        ip("link", "set", node.host_if, "up")
        ip("-n", node.netns, "addr", "add", f"{ns_ip}/30", "dev", "eth0")  # type: ignore[arg-type]
        ip("-n", node.netns, "link", "set", "eth0", "up")  # type: ignore[arg-type]
        ip("-n", node.netns, "route", "add", "default", "via", host_ip)  # type: ignore[arg-type]
        node.gateway, node.addr = host_ip, ns_ip
        return self._serve(node, ports)

    def add_v6(self, name: str, addr: str, ports: list[int] | None = None) -> Node:
        """A namespace on the lab's bridge with ``addr``/64 (nodad); the host has no address there."""
        if self.bridge is None:
            self.bridge = f"anb{self._tag}"
            ip("link", "add", self.bridge, "type", "bridge")
            self._links.append(self.bridge)
            ip("link", "set", self.bridge, "up")
        node = self._make(name)
        ip("link", "set", node.host_if, "master", self.bridge)
        ip("link", "set", node.host_if, "up")
        ip("-n", node.netns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")  # type: ignore[arg-type]
        ip("-n", node.netns, "link", "set", "eth0", "up")  # type: ignore[arg-type]
        node.addr = addr
        return self._serve(node, ports)

    def _make(self, name: str) -> Node:
        ns, host_if = f"anl{self._tag}{name}", f"anl{self._tag}{name}"[:15]
        ip("netns", "add", ns)
        self._netns.append(ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._links.append(host_if)
        ip("-n", ns, "link", "set", "lo", "up")
        node = Node(name, ns, host_if, "", "")
        self.nodes[name] = node
        return node

    def _serve(self, node: Node, ports: list[int] | None) -> Node:
        if ports:
            self.servers.append(EchoServer(node.netns, node.addr, ports))
        return node

    def host_server(self, addr: str, ports: list[int]) -> None:
        self.servers.append(EchoServer(None, addr, ports))

    # -- andon ---------------------------------------------------------------------------------------
    def andon(self, *argv: str, check: bool = True, inproc: bool = False) -> subprocess.CompletedProcess:
        """Run ``andon ARGV`` as its own process, or (``inproc``) through ``andon.cli.main.main``
        in this one: the same code path without the interpreter start and imports (~1 s a call),
        for tests that run dozens of commands; what outlives a process is the CLI test's job."""
        args = [*argv, "--state-dir", str(self.state_dir), "--pin-dir", str(self.pin_dir)]
        if inproc:
            from andon.cli.main import main

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(args)
            r = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
        else:
            r = subprocess.run([sys.executable, "-m", "andon.cli.main", *args], capture_output=True, text=True,
                               timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"andon {' '.join(argv)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def endpoint(self, name: str, labels: list[str], *extra: str) -> None:
        node = self.nodes[name]
        self.andon("endpoint", "add", name, "--netns", node.netns or "", "--ifname", node.host_if,
                   "--labels", ",".join(labels), *extra)
        self.endpoints.append(name)

    # -- probes --------------------------------------------------------------------------------------
    def where(self, name: str) -> tuple[str | None, str]:
        """(namespace, address) of a node; ``host@X`` is the host's address on X's link."""
        if name.startswith("host@"):
            return None, self.nodes[name[5:]].gateway
        node = self.nodes[name]
        return node.netns, node.addr

    def reach(self, src: str, dst: str, proto: str, port: int, *, expect_pass: bool | None = None,
              size: int = 0) -> bool:
        """Does a new connection (or echo) from ``src`` to ``dst`` get through? Short timeout;
        a probe expected to pass gets a second, longer try before it counts as dropped.
        ``size``: a UDP echo of that many bytes."""
        ns, _ = self.where(src)
        _, addr = self.where(dst)
        ok = probe(ns, addr, proto, port, DROP_TIMEOUT, size)
        if not ok and expect_pass:
            ok = probe(ns, addr, proto, port, RETRY_TIMEOUT, size)
        return ok

    # -- teardown ------------------------------------------------------------------------------------
    def close(self) -> None:
        for s in self.servers:
            s.close()
        for name in reversed(self.endpoints):
            self.andon("endpoint", "remove", name, check=False)
        for ns in self._netns:
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            ip("netns", "del", ns, check=False)
        for link in reversed(self._links):
            ip("link", "del", link, check=False)
        self._forwarding.close()
