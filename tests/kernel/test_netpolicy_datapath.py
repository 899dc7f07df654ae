"""The network policy datapath on a real endpoint: a network namespace of the test's own,
reached through its host-side veth, with TC programs on that veth and entries written by
hand (no policy model). Peers are the host's side of the veth: its address (identity
PEER) and a second address on the same veth (a CIDR identity), so no forwarding is needed.

Directions are the endpoint's: a client inside the namespace is EGRESS, a client on the
host connecting in is INGRESS.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from andon.errors import UsageError
from andon.events.live import default_bpf_dir
from andon.netpolicy.datapath import (
    DROP_POLICY,
    DROP_POLICY_DENY,
    Datapath,
    Flow,
    PolicyEntry,
    PolicyEntryError,
    wait_flows,
)
from andon.netpolicy import kernel_firewall
from andon.netpolicy.kernel_firewall import HostFirewall, make_rule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import servers as S  # noqa: E402  (tests/servers.py: netns())
from servers import in_netns  # noqa: E402

EP = 300                 # the endpoint's identity
PEER = 1001              # the host side's address
CIDR_ID = (1 << 24) + 7  # the second host address, as a CIDR identity
DENY_POLICY = 42         # the policy that "switched default deny on"
TIMEOUT = 1.0            # a connection that gets no answer in this long was dropped

OBJ = default_bpf_dir() / "enforce/policy.bpf.o"


# -- namespaces and sockets ------------------------------------------------------------------------
class Server:
    """TCP and UDP echo on ``ip:port`` (a listening socket made where the caller says)."""

    def __init__(self, make: Callable[[Callable[[], object]], object], ip: str, port: int) -> None:
        def listen() -> tuple[socket.socket, socket.socket]:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((ip, port))
            t.listen(64)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((ip, port))
            return t, u

        self.tcp, self.udp = make(listen)  # type: ignore[misc]
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._tcp_loop, daemon=True),
                         threading.Thread(target=self._udp_loop, daemon=True)]
        for t in self._threads:
            t.start()

    def _tcp_loop(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with c:
                c.settimeout(TIMEOUT)
                with contextlib.suppress(OSError):
                    data = c.recv(64)
                    c.sendall(data)

    def _udp_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(64)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(OSError):
                self.udp.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.tcp.close()
        self.udp.close()


def tcp_ok(ip: str, port: int, *, ns: str | None = None, src: str | None = None, timeout: float = TIMEOUT) -> bool:
    """True when a new TCP connection to ip:port completes and echoes a message."""
    def go() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            if src:
                s.bind((src, 0))
            try:
                s.connect((ip, port))
                s.sendall(b"ping")
                return s.recv(64) == b"ping"
            except OSError:
                return False
    return bool(in_netns(ns, go) if ns else go())


def udp_ok(ip: str, port: int, *, ns: str | None = None, timeout: float = TIMEOUT) -> bool:
    def go() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"ping", (ip, port))
            try:
                return s.recvfrom(64)[0] == b"ping"
            except OSError:
                return False
    return bool(in_netns(ns, go) if ns else go())


def _checksum(b: bytes) -> int:
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ping_ok(ns: S.NetNs, ip: str, timeout: float = TIMEOUT) -> bool:
    """One ICMP echo request from inside the namespace (a raw socket: no ping binary here);
    True when its reply comes back."""
    ident = random.randint(1, 0xFFFF)

    def go() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"andon!"  # even length: the checksum below sums 16-bit words
            s.sendto(body[:2] + struct.pack("!H", _checksum(body)) + body[4:], (ip, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    pkt, (src, _) = s.recvfrom(256)
                except OSError:
                    return False
                icmp = pkt[(pkt[0] & 0x0F) * 4:]
                if src == ip and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return True
            return False
    return bool(in_netns(ns.name, go))


def free_ports(n: int) -> list[int]:
    base = random.randrange(20000, 30000, 200)
    return [base + i for i in range(n)]


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env() -> Iterator[tuple[S.NetNs, str]]:
    if not OBJ.exists():
        pytest.skip(f"{OBJ} not built: run `make bpf`")
    with S.netns() as ns:
        used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
        for _ in range(100):
            alt = f"10.249.{random.randint(0, 255)}.{random.randint(1, 254)}"
            if alt not in used:
                break
        subprocess.run(["ip", "addr", "add", f"{alt}/32", "dev", ns.host_if], check=True)
        ns.exec(["ip", "route", "add", f"{alt}/32", "dev", ns.ns_if], check=True)
        yield ns, alt


@pytest.fixture(scope="module")
def dp(env) -> Iterator[Datapath]:
    ns, alt = env
    d = Datapath()
    try:
        d.attach_endpoint(ns.host_if, EP)
        d.set_ip_identity(f"{ns.host_ip}/32", PEER)
        d.set_cidr_identity(f"{alt.rsplit('.', 1)[0]}.0/24", CIDR_ID)
        yield d
    finally:
        d.close()


@pytest.fixture(autouse=True)
def fresh(request) -> Iterator[None]:
    """Each test starts with no policy, no conntrack, no pending flows, deny both ways."""
    if "dp" not in request.fixturenames:
        yield
        return
    d: Datapath = request.getfixturevalue("dp")
    ns, _ = request.getfixturevalue("env")
    d.apply([])
    d.flush_conntrack()
    list(d.flows())
    config(d, ns)
    yield


def config(d: Datapath, ns: S.NetNs, *, ingress: bool = True, egress: bool = True, audit: bool = False) -> None:
    d.set_endpoint_config(socket.if_nametoindex(ns.host_if), EP, default_deny_ingress=ingress,
                          default_deny_egress=egress, audit=audit, deny_policy_id=DENY_POLICY)


def entry(direction: str, peer: int, proto: int | str, port: int = 0, end: int = 0, verdict: str = "allow",
          policy: int = 7, rule: int = 0, audit: bool = False) -> PolicyEntry:
    return PolicyEntry(EP, direction, peer, proto, port, end, verdict, policy, rule, audit)


@pytest.fixture
def host_server(env) -> Iterator[Callable[[int], Server]]:
    """Servers on the host side (ns.host_ip and the alt address): the endpoint's EGRESS peers."""
    made: list[Server] = []

    def make(port: int, ip: str | None = None) -> Server:
        s = Server(lambda f: f(), ip or env[0].host_ip, port)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.fixture
def ns_server(env) -> Iterator[Callable[[int], Server]]:
    """Servers inside the endpoint: INGRESS."""
    made: list[Server] = []

    def make(port: int) -> Server:
        s = Server(lambda f: in_netns(env[0].name, f), env[0].ns_ip, port)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def flows_of(d: Datapath, want: int, timeout: float = 2.0) -> list[Flow]:
    return wait_flows(d, want, timeout)


def syns(flows: list[Flow], dport: int) -> list[Flow]:
    return [f for f in flows if f.proto == 6 and f.dport == dport and f.tcp_flags & 0x02 and not f.tcp_flags & 0x10]


# -- TCP: allow, deny, replies --------------------------------------------------------------------------
def test_egress_allowed_connection_and_its_flows(dp, env, host_server):
    ns, _ = env
    port, other = free_ports(2)
    host_server(port)
    host_server(other)
    dp.apply([entry("egress", PEER, "tcp", port, rule=3)])

    # TRIGGER
    assert tcp_ok(ns.host_ip, port, ns=ns.name)
    assert not tcp_ok(ns.host_ip, other, ns=ns.name)

    # ASSERT: the SYN was forwarded by rule 3, an exact L3_L4 match, and opened conntrack
    flows = flows_of(dp, 4)
    syn = syns(flows, port)[0]
    assert (syn.verdict, syn.traffic_direction, syn.is_reply) == ("FORWARDED", "EGRESS", False)
    assert (syn.src_identity, syn.dst_identity) == (EP, PEER)
    assert (syn.policy_id, syn.rule_index, syn.policy_match_type) == (7, 3, "L3_L4")
    assert (syn.src_ip, syn.dst_ip, syn.dport) == (ns.ns_ip, ns.host_ip, port)
    assert syn.tcp_flag_names == ("SYN",) and syn.ct_new
    # the SYN-ACK came back through conntrack (ingress is default deny with no entry at all)
    synack = [f for f in flows if f.is_reply and f.sport == port][0]
    assert synack.verdict == "FORWARDED" and synack.traffic_direction == "INGRESS"
    assert set(synack.tcp_flag_names) >= {"SYN", "ACK"}
    assert (synack.src_identity, synack.dst_identity) == (PEER, EP)
    # the other port: default deny, named by the policy that switched it on
    drop = syns(flows, other)[0]
    assert (drop.verdict, drop.drop_reason, drop.drop_reason_desc) == ("DROPPED", DROP_POLICY, "POLICY_DENIED")
    assert (drop.policy_id, drop.policy_match_type) == (DENY_POLICY, "NONE")


def test_ingress_allowed_and_replies_pass_without_reverse_entry(dp, env, ns_server):
    ns, _ = env
    port, other = free_ports(2)
    ns_server(port)
    ns_server(other)
    dp.apply([entry("ingress", PEER, "tcp", port, rule=1)])  # nothing for egress, which is default deny

    assert tcp_ok(ns.ns_ip, port)
    assert not tcp_ok(ns.ns_ip, other)

    flows = flows_of(dp, 3)
    syn = syns(flows, port)[0]
    assert (syn.verdict, syn.traffic_direction, syn.src_identity, syn.dst_identity) == ("FORWARDED", "INGRESS",
                                                                                        PEER, EP)
    reply = [f for f in flows if f.is_reply and f.sport == port][0]
    assert (reply.traffic_direction, reply.verdict) == ("EGRESS", "FORWARDED")
    assert syns(flows, other)[0].verdict == "DROPPED"
    assert dp.stats()["ct_hit"] > 0


def test_no_default_deny_forwards_without_entries(dp, env, host_server):
    ns, _ = env
    port, = free_ports(1)
    host_server(port)
    config(dp, ns, ingress=False, egress=False)
    assert tcp_ok(ns.host_ip, port, ns=ns.name)
    syn = syns(flows_of(dp, 1), port)[0]
    assert (syn.verdict, syn.policy_match_type, syn.policy_id) == ("FORWARDED", "NONE", 0)


def test_default_deny_with_no_entries_drops_both_ways(dp, env, host_server, ns_server):
    ns, _ = env
    a, b = free_ports(2)
    host_server(a)
    ns_server(b)
    assert not tcp_ok(ns.host_ip, a, ns=ns.name)
    assert not tcp_ok(ns.ns_ip, b)
    flows = flows_of(dp, 2)
    assert {(f.traffic_direction, f.verdict) for f in syns(flows, a) + syns(flows, b)} == {
        ("EGRESS", "DROPPED"), ("INGRESS", "DROPPED")}


def test_deny_beats_allow_at_every_level(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    dp.apply([
        entry("egress", PEER, "tcp", p, rule=1),                        # exact allow
        entry("egress", PEER, 0, rule=2),                                # L3-only allow
        entry("egress", 0, "tcp", p, verdict="deny", policy=9, rule=5),  # any-peer deny of p
    ])
    assert not tcp_ok(ns.host_ip, p, ns=ns.name)
    assert tcp_ok(ns.host_ip, q, ns=ns.name)
    flows = flows_of(dp, 3)
    denied = syns(flows, p)[0]
    assert (denied.verdict, denied.drop_reason, denied.drop_reason_desc) == ("DROPPED", DROP_POLICY_DENY,
                                                                             "POLICY_DENY")
    assert (denied.policy_id, denied.rule_index, denied.policy_match_type) == (9, 5, "L4_ONLY")
    allowed = syns(flows, q)[0]
    assert (allowed.verdict, allowed.rule_index, allowed.policy_match_type) == ("FORWARDED", 2, "L3_ONLY")


@pytest.mark.parametrize("peer,proto,port,match", [
    (PEER, "tcp", True, "L3_L4"),
    (PEER, "tcp", False, "L3_PROTO"),
    (PEER, 0, False, "L3_ONLY"),
    (0, "tcp", True, "L4_ONLY"),
    (0, "tcp", False, "PROTO_ONLY"),
    (0, 0, False, "ALL"),
])
def test_wildcard_levels_report_their_match_type(dp, env, host_server, peer, proto, port, match):
    ns, _ = env
    p, = free_ports(1)
    host_server(p)
    dp.apply([entry("egress", peer, proto, p if port else 0, rule=11),
              entry("egress", PEER + 1, "tcp", p, rule=12)])  # another peer's entry: never used
    assert tcp_ok(ns.host_ip, p, ns=ns.name)
    syn = syns(flows_of(dp, 1), p)[0]
    assert (syn.rule_index, syn.policy_match_type) == (11, match)


def test_port_range(dp, env, host_server):
    ns, _ = env
    lo = random.randrange(31000, 40000, 200)
    ports = [lo - 1, lo, lo + 50, lo + 100, lo + 101]
    for p in ports:
        host_server(p)
    dp.apply([entry("egress", PEER, "tcp", lo, lo + 100, rule=4)])
    got = {p: tcp_ok(ns.host_ip, p, ns=ns.name, timeout=0.5) for p in ports}
    assert got == {lo - 1: False, lo: True, lo + 50: True, lo + 100: True, lo + 101: False}


def test_udp_allowed_and_reply_via_conntrack(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    dp.apply([entry("egress", PEER, "udp", p, rule=2)])
    assert udp_ok(ns.host_ip, p, ns=ns.name)
    assert not udp_ok(ns.host_ip, q, ns=ns.name, timeout=0.3)
    flows = flows_of(dp, 3)
    assert [(f.verdict, f.is_reply) for f in flows if f.proto == 17 and p in (f.sport, f.dport)] == [
        ("FORWARDED", False), ("FORWARDED", True)]
    assert [f.verdict for f in flows if f.proto == 17 and f.dport == q] == ["DROPPED"]


def test_cidr_identity_most_specific_prefix(dp, env, ns_server):
    ns, alt = env
    p, = free_ports(1)
    ns_server(p)
    dp.apply([entry("ingress", CIDR_ID, "tcp", p, rule=6)])
    # TRIGGER: from the alt address (in the CIDR's /24) and from the host address (PEER)
    assert tcp_ok(ns.ns_ip, p, src=alt)
    assert not tcp_ok(ns.ns_ip, p, src=ns.host_ip)
    flows = flows_of(dp, 2)
    assert {(f.src_identity, f.verdict) for f in syns(flows, p)} == {(CIDR_ID, "FORWARDED"), (PEER, "DROPPED")}
    # a longer prefix inside the /24 gets its own identity, and the /24's entry no longer applies
    dp.set_cidr_identity(f"{alt}/32", CIDR_ID + 1)
    try:
        dp.flush_conntrack()
        assert not tcp_ok(ns.ns_ip, p, src=alt)
        assert syns(flows_of(dp, 1), p)[0].src_identity == CIDR_ID + 1
    finally:
        dp.delete_ip_identity(f"{alt}/32")


def test_icmp_echo_allowed_and_denied(dp, env):
    ns, _ = env
    assert not ping_ok(ns, ns.host_ip)
    dp.apply([entry("egress", PEER, "icmp", 8, rule=8)])  # echo request; the reply is not in the policy
    assert ping_ok(ns, ns.host_ip)
    flows = [f for f in flows_of(dp, 3) if f.proto == 1]
    assert [(f.icmp_type, f.verdict, f.is_reply) for f in flows] == [
        (8, "DROPPED", False), (8, "FORWARDED", False), (0, "FORWARDED", True)]
    assert (flows[1].rule_index, flows[1].policy_match_type) == (8, "L3_L4")


def test_audit_mode_lets_would_be_drops_through(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    config(dp, ns, audit=True)
    dp.apply([entry("egress", 0, "tcp", q, verdict="deny", policy=13, rule=2)])
    assert tcp_ok(ns.host_ip, p, ns=ns.name)  # default deny, audited
    assert tcp_ok(ns.host_ip, q, ns=ns.name)  # deny entry, audited
    flows = flows_of(dp, 4)
    a, b = syns(flows, p)[0], syns(flows, q)[0]
    assert (a.verdict, a.drop_reason_desc, a.policy_id) == ("AUDIT", "POLICY_DENIED", DENY_POLICY)
    assert (b.verdict, b.drop_reason_desc, b.policy_id, b.rule_index) == ("AUDIT", "POLICY_DENY", 13, 2)


def test_audit_on_a_deny_entry_only(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    config(dp, ns, egress=False)  # enforced default deny would drop p whatever its audited entry says
    dp.apply([entry("egress", PEER, "tcp", p, verdict="deny", policy=14, rule=0, audit=True),
              entry("egress", PEER, "tcp", q, verdict="deny", policy=14, rule=1)])
    assert tcp_ok(ns.host_ip, p, ns=ns.name)
    assert not tcp_ok(ns.host_ip, q, ns=ns.name)
    flows = flows_of(dp, 3)
    assert syns(flows, p)[0].verdict == "AUDIT"
    assert syns(flows, q)[0].verdict == "DROPPED"


def test_counters_match_the_flows(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    before = dp.counters().get((socket.if_nametoindex(ns.host_if), "EGRESS"))
    dp.apply([entry("egress", PEER, "tcp", p)])
    for _ in range(3):
        assert tcp_ok(ns.host_ip, p, ns=ns.name)
    assert not tcp_ok(ns.host_ip, q, ns=ns.name, timeout=0.3)
    flows = flows_of(dp, 20, timeout=1.0)
    after = dp.counters()[(socket.if_nametoindex(ns.host_if), "EGRESS")]
    b = before or type(after)()
    drops = [f for f in flows if f.verdict == "DROPPED" and f.traffic_direction == "EGRESS"]
    # every drop is both counted and reported; forwarded packets are counted, not each reported
    assert after.drop_packets - b.drop_packets == len(drops) >= 1
    assert after.drop_bytes - b.drop_bytes == sum(f.len for f in drops)
    # 3 connections, each at least SYN, ACK, data, FIN from the endpoint
    assert after.fwd_packets - b.fwd_packets >= 12
    assert after.fwd_bytes - b.fwd_bytes > 12 * 54


def test_atomic_flips_under_a_connection_loop(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    filler = [entry("egress", 5000 + i, "tcp", 1000 + i % 500, rule=100) for i in range(1500)]
    gen_a = [entry("egress", PEER, "tcp", p, rule=1), entry("egress", PEER, "tcp", q, verdict="deny", rule=1)]
    gen_b = [entry("egress", 0, "tcp", p - 5, p + 5, rule=2), entry("egress", 0, "tcp", q, verdict="deny", rule=2)]
    dp.apply(gen_a + filler)
    stop = threading.Event()
    flips = []

    def flipper() -> None:
        for i in range(50):
            flips.append(dp.apply((gen_b if i % 2 == 0 else gen_a) + filler))
        stop.set()

    t = threading.Thread(target=flipper)
    t.start()
    wrong = []
    n = 0
    try:
        while not stop.is_set() or n < 10:
            n += 1
            if not tcp_ok(ns.host_ip, p, ns=ns.name):
                wrong.append(("p refused", n))
            if tcp_ok(ns.host_ip, q, ns=ns.name, timeout=0.05):
                wrong.append(("q allowed", n))
    finally:
        t.join()
    assert len(flips) == 50 and wrong == []
    flows = wait_flows(dp, 10 ** 6, timeout=0.5)
    p_syns, q_syns = syns(flows, p), syns(flows, q)
    assert len(p_syns) >= n and {f.verdict for f in p_syns} == {"FORWARDED"}
    assert {f.verdict for f in q_syns} == {"DROPPED"}
    assert {f.rule_index for f in p_syns} <= {1, 2}
    assert dp.stats()["ring_full"] == 0


def test_bad_entry_is_rejected_and_the_policy_stays(dp, env):
    dp.apply([entry("egress", PEER, "tcp", 80)])
    keys, gen = dp.policy_keys(), dp.generation
    for bad in (entry("egress", PEER, 0, 80),               # a port without a protocol
                entry("egress", PEER, "tcp", 90, 80),        # endPort below port
                entry("sideways", PEER, "tcp", 80),          # no such direction
                entry("egress", PEER, "tcp", 80, verdict="allow", audit=True),
                entry("egress", PEER, "icmp", 300)):         # no such ICMP type
        with pytest.raises(PolicyEntryError):
            dp.apply([entry("egress", PEER, "tcp", 81), bad])
        assert (dp.policy_keys(), dp.generation) == (keys, gen)


def test_detach_removes_filters_and_our_qdisc():
    if not OBJ.exists():
        pytest.skip("make bpf")
    with S.netns() as ns:
        d = Datapath()
        try:
            d.attach_endpoint(ns.host_if, EP)
            shown = subprocess.run(["tc", "filter", "show", "dev", ns.host_if, "ingress"], capture_output=True,
                                   text=True).stdout
            assert "tc__from_endpoi" in shown  # the kernel keeps 15 characters of a name
            with pytest.raises(UsageError):
                d.attach_endpoint(ns.host_if, EP)
        finally:
            d.close()
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", ns.host_if], capture_output=True, text=True).stdout
        assert "clsact" not in qdiscs


# -- XDP host firewall -------------------------------------------------------------------------------
@pytest.fixture
def fw_ns() -> Iterator[S.NetNs]:
    """A namespace of its own: the policy endpoint of the other tests stays out of the way."""
    if not (default_bpf_dir() / "enforce/xdp_fw.bpf.o").exists():
        pytest.skip("make bpf")
    with S.netns() as ns:
        yield ns


@pytest.mark.parametrize("mode", [None, "generic"])
def test_xdp_firewall_drops_cidr_proto_port_and_counts(fw_ns, mode):
    ns = fw_ns
    p, q = free_ports(2)
    servers = [Server(lambda f: f(), ns.host_ip, port) for port in (p, q)]
    try:
        with HostFirewall(ns.host_if, mode=mode) as fw:
            # TRIGGER: a port rule for the endpoint's /32, an ICMP rule for the /24 around it
            r_tcp = fw.add_rule(f"{ns.ns_ip}/32", "tcp", p)
            r_icmp = fw.add_rule(f"{ns.ns_ip.rsplit('.', 1)[0]}.0/24", "icmp")
            r_other = fw.add_rule("192.0.2.0/24", "udp", 53)  # covers nothing we send
            assert not tcp_ok(ns.host_ip, p, ns=ns.name, timeout=0.5)
            assert tcp_ok(ns.host_ip, q, ns=ns.name)
            assert not ping_ok(ns, ns.host_ip)
            # ASSERT: per-rule counters; the /32 set carries the /24's ICMP rule too
            c = fw.counters()
            assert c[r_tcp][0] >= 1 and c[r_icmp][0] == 1 and c[r_other] == (0, 0)
            assert c[r_icmp][1] == 14 + 20 + 8 + 6  # one echo request: eth + ip + icmp + 6 bytes
            assert c["pass"][0] >= 4  # SYN, ACK, data, FIN of the allowed connection
            fw.remove_rule(r_icmp)
            assert ping_ok(ns, ns.host_ip)
            assert [r.rule_id for r in fw.rules()] == [r_tcp, r_other]
        # gone with close(): everything passes again
        assert tcp_ok(ns.host_ip, p, ns=ns.name)
    finally:
        for s in servers:
            s.close()


def test_xdp_firewall_rejects_bad_rules(fw_ns):
    with HostFirewall(fw_ns.host_if) as fw:
        for args in (("10.0.0.0/33",), ("10.0.0.0/8", 0, 80), ("10.0.0.0/8", "tcp", 90, 80), ("10.0.0.0/8", "tcpx")):
            with pytest.raises(UsageError):
                fw.add_rule(*args)
        for bits in range(8, 16):  # nested: 10.0.0.0/8 ... /15, each set holds all that cover it
            fw.add_rule(f"10.0.0.0/{bits}", "udp", 100 + bits)
        with pytest.raises(UsageError):  # a ninth prefix covering 10.0.0.0/16
            fw.add_rule("10.0.0.0/16", "udp", 99)
        fw.add_rule("10.128.0.0/16", "udp", 99)  # under /8 only: two rules in its set
        assert len(fw.rules()) == 9


def test_xdp_firewall_pins_outlive_the_object_and_are_adopted(fw_ns, tmp_path):
    pin_dir = Path(f"/sys/fs/bpf/andon-test-xdp-{os.getpid()}-{tmp_path.name}")
    try:
        # TRIGGER: nested prefixes, a rule for every source, ports; the kernel map read back
        fw = HostFirewall(fw_ns.host_if, pin_dir=pin_dir)
        ids = [fw.add_rule("10.0.0.0/8", "udp", 53), fw.add_rule("10.1.0.0/16", "tcp", 80, 90),
               fw.add_rule(None, "icmp"), fw.add_rule("2001:db8::/32", "udp"), fw.add_rule("0.0.0.0/0", "tcp", 22)]
        assert fw.kernel_rules() == fw.rules() and len(fw.rules()) == 5
        assert not ping_ok(fw_ns, fw_ns.host_ip)
        link, before = fw.link_id, fw.counters()
        fw.close()
        # ASSERT: still attached with no process holding it; a new object adopts link, rules, counters
        assert not ping_ok(fw_ns, fw_ns.host_ip)
        fw = HostFirewall(fw_ns.host_if, pin_dir=pin_dir)
        assert fw.adopted and fw.link_id == link and fw.rules() == fw.kernel_rules()
        assert [r.rule_id for r in fw.rules()] == sorted(ids) and fw.rules()[2].cidr is None
        assert fw.counters()[ids[2]] == (before[ids[2]][0] + 1, before[ids[2]][1] + 48)
        old_prog = fw.prog_id
        fw.upgrade()  # this object's program into the pinned link
        assert fw.prog_id != old_prog and fw.link_id == link
        with pytest.raises(UsageError):  # a bad set changes nothing
            fw.set_rules([*fw.rules(), *[make_rule(10 + i, f"10.1.0.0/{16 + i}", "udp", 1) for i in range(8)]])
        assert fw.kernel_rules() == fw.rules() and len(fw.rules()) == 5
        fw.detach()
        assert ping_ok(fw_ns, fw_ns.host_ip) and not pin_dir.exists()
    finally:
        kernel_firewall.unpin(pin_dir)


# -- audit keeps enforced verdicts (model: tests/unit/test_netpolicy_audit.py) ---------------------------
def test_audited_deny_does_not_lift_enforced_default_deny(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    # TRIGGER: egress default deny (enforced, policy 42); an audited deny entry for p, no allow
    dp.apply([entry("egress", PEER, "tcp", p, verdict="deny", policy=14, audit=True)])
    # ASSERT: default deny drops it; the flow names default deny, not the audited entry
    assert not tcp_ok(ns.host_ip, p, ns=ns.name)
    f = syns(flows_of(dp, 1), p)[0]
    assert (f.verdict, f.drop_reason_desc, f.policy_id) == ("DROPPED", "POLICY_DENIED", DENY_POLICY)
    # TRIGGER: an enforced allow for p too: passes, reported as what the audited deny would do
    dp.apply([entry("egress", PEER, "tcp", p, verdict="deny", policy=14, rule=3, audit=True),
              entry("egress", PEER, "tcp", p, policy=7, rule=1)])
    assert tcp_ok(ns.host_ip, p, ns=ns.name)
    assert not tcp_ok(ns.host_ip, q, ns=ns.name)
    flows = flows_of(dp, 3)
    a = syns(flows, p)[0]
    assert (a.verdict, a.drop_reason_desc, a.policy_id, a.rule_index, a.policy_match_type) == \
        ("AUDIT", "POLICY_DENY", 14, 3, "L3_L4")
    assert syns(flows, q)[0].verdict == "DROPPED"


@pytest.mark.parametrize("enforced, audited, match", [
    (("egress", PEER, 0), ("egress", PEER, "tcp"), "L3_ONLY"),    # broader enforced, same peer
    (("egress", 0, "tcp"), ("egress", PEER, "tcp"), "L4_ONLY"),   # enforced for any peer, audited for this one
    (("egress", PEER, "tcp"), ("egress", 0, "tcp"), "L3_L4"),     # enforced for this peer, audited for any
])
def test_a_more_specific_audited_deny_does_not_hide_an_enforced_one(dp, env, host_server, enforced, audited, match):
    ns, _ = env
    p = free_ports(1)[0]
    host_server(p)
    config(dp, ns, egress=False)  # no default deny: only the deny entries decide
    e_dir, e_peer, e_proto = enforced
    a_dir, a_peer, a_proto = audited
    dp.apply([entry(e_dir, e_peer, e_proto, p if e_proto else 0, verdict="deny", policy=21, rule=1),
              entry(a_dir, a_peer, a_proto, p, verdict="deny", policy=22, rule=2, audit=True),
              entry(a_dir, a_peer, a_proto, p, end=p + 1, verdict="deny", policy=22, rule=3, audit=True)])
    # ASSERT: the enforced deny drops and is the one reported
    assert not tcp_ok(ns.host_ip, p, ns=ns.name)
    f = syns(flows_of(dp, 1), p)[0]
    assert (f.verdict, f.drop_reason_desc, f.policy_id, f.rule_index, f.policy_match_type) == \
        ("DROPPED", "POLICY_DENY", 21, 1, match)


def test_audited_deny_under_audited_default_deny(dp, env, host_server):
    ns, _ = env
    p, q = free_ports(2)
    host_server(p)
    host_server(q)
    dp.set_endpoint_config(socket.if_nametoindex(ns.host_if), EP, default_deny_ingress=True, default_deny_egress=True,
                           deny_policy_id=DENY_POLICY, audit_default_deny_egress=True)
    dp.apply([entry("egress", PEER, "tcp", p, verdict="deny", policy=14, rule=5, audit=True)])
    # ASSERT: both pass; p reported as the deny entry, q as default deny
    assert tcp_ok(ns.host_ip, p, ns=ns.name) and tcp_ok(ns.host_ip, q, ns=ns.name)
    flows = flows_of(dp, 4)
    a, b = syns(flows, p)[0], syns(flows, q)[0]
    assert (a.verdict, a.drop_reason_desc, a.policy_id, a.rule_index) == ("AUDIT", "POLICY_DENY", 14, 5)
    assert (b.verdict, b.drop_reason_desc, b.policy_id) == ("AUDIT", "POLICY_DENIED", DENY_POLICY)


# -- ICMP types: type 0 is echo reply, not "any" -------------------------------------------------------
def send_icmp(ns: S.NetNs, ip: str, icmp_type: int, ident: int) -> None:
    """One ICMP message of ``icmp_type`` (echo layout) from inside the namespace; no answer awaited."""
    def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            body = struct.pack("!BBHHH", icmp_type, 0, 0, ident, 1) + b"andon!"
            s.sendto(body[:2] + struct.pack("!H", _checksum(body)) + body[4:], (ip, 0))
    in_netns(ns.name, go)


def test_icmp_type_0_allowed_does_not_allow_echo_request(dp, env):
    ns, _ = env
    # TRIGGER: egress default deny; only ICMP type 0 (echo reply) allowed to the peer
    dp.apply([entry("egress", PEER, "icmp", 0, rule=9)])
    assert not ping_ok(ns, ns.host_ip)
    send_icmp(ns, ns.host_ip, 0, 4242)  # an echo reply nobody asked for: allowed by the entry
    flows = [f for f in flows_of(dp, 2) if f.proto == 1]
    # ASSERT: the request dropped by default deny; the reply forwarded by rule 9 (an exact type match)
    assert [(f.icmp_type, f.verdict, f.drop_reason_desc) for f in flows] == [
        (8, "DROPPED", "POLICY_DENIED"), (0, "FORWARDED", "DROP_REASON_UNKNOWN")]
    assert (flows[1].rule_index, flows[1].policy_match_type, flows[1].sport) == (9, "L3_L4", 4242)
    # every ICMP type (the model's 0-65535): echo works
    dp.apply([entry("egress", PEER, "icmp", 0, 65535, rule=10)])
    assert ping_ok(ns, ns.host_ip)
    f = [f for f in flows_of(dp, 2) if f.proto == 1 and not f.is_reply][-1]
    assert (f.icmp_type, f.verdict, f.rule_index, f.policy_match_type) == (8, "FORWARDED", 10, "L3_PROTO")
    # type 8 and a range 5..9 still select echo request, 9..20 does not
    for lo, hi, ok in ((8, 0, True), (5, 9, True), (9, 20, False)):
        dp.apply([entry("egress", PEER, "icmp", lo, hi, rule=11)])
        dp.flush_conntrack()
        assert ping_ok(ns, ns.host_ip) is ok, (lo, hi)


@pytest.fixture
def v6(env, dp) -> Iterator[tuple[str, str]]:
    """ULA addresses on the veth pair (nodad: usable at once); the host's is PEER."""
    ns, _ = env
    net = f"fd{random.randint(0, 0xff):02x}:{random.randint(0, 0xffff):x}:{random.randint(0, 0xffff):x}::"
    host, inside = f"{net}1", f"{net}2"
    subprocess.run(["ip", "addr", "add", f"{host}/64", "dev", ns.host_if, "nodad"], check=True)
    ns.exec(["ip", "addr", "add", f"{inside}/64", "dev", ns.ns_if, "nodad"], check=True)
    dp.set_ip_identity(f"{host}/128", PEER)
    try:
        yield host, inside
    finally:
        dp.delete_ip_identity(f"{host}/128")
        subprocess.run(["ip", "addr", "del", f"{host}/64", "dev", ns.host_if], check=False)


def ping6_ok(ns: S.NetNs, ip: str, timeout: float = TIMEOUT) -> bool:
    """One ICMPv6 echo request from inside the namespace (the kernel fills the checksum)."""
    ident = random.randint(1, 0xFFFF)

    def go() -> bool:
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
            s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"andon!", (ip, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    pkt, addr = s.recvfrom(256)  # ICMPv6 raw sockets get the message without the IP header
                except OSError:
                    return False
                if pkt[0] == 129 and struct.unpack("!H", pkt[4:6])[0] == ident:
                    return True
            return False
    return bool(in_netns(ns.name, go))


def test_icmpv6_echo_reply_allowed_does_not_allow_echo_request(dp, env, v6):
    ns, _ = env
    host, _inside = v6
    # TRIGGER: ICMPv6 type 129 (echo reply) allowed, then type 128 (echo request)
    dp.apply([entry("egress", PEER, "icmpv6", 129, rule=12)])
    assert not ping6_ok(ns, host)
    dp.apply([entry("egress", PEER, "icmpv6", 128, rule=13)])
    assert ping6_ok(ns, host)
    # ASSERT: the request dropped under 129, forwarded by rule 13 under 128; neighbour discovery passed
    flows = [f for f in flows_of(dp, 4) if f.proto == 58 and f.icmp_type in (128, 129)]
    got = [(f.icmp_type, f.verdict, f.rule_index if f.verdict == "FORWARDED" else None, f.is_reply) for f in flows]
    assert got == [(128, "DROPPED", None, False), (128, "FORWARDED", 13, False), (129, "FORWARDED", 13, True)], got
    assert dp.stats()["nd"] > 0


# -- IPv6 extension headers ---------------------------------------------------------------------------
IPV6_HOPOPTS = 54                           # linux/in6.h
HOP_BY_HOP = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # next header (the kernel's), 8 bytes long, one PadN of 4


def send6_with_hop_by_hop(ns: str, ip: str, port: int, raw_icmp_type: int | None = None) -> None:
    """One datagram from namespace ``ns`` with a hop-by-hop header in front of its UDP header (or,
    with ``raw_icmp_type``, in front of an ICMPv6 message of that type, as every MLD report has)."""
    def go() -> None:
        if raw_icmp_type is None:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            payload = b"hop-by-hop"
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            payload = struct.pack("!BBHI", raw_icmp_type, 0, 0, 0)  # the kernel fills the checksum
        with s:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, HOP_BY_HOP)
            s.sendto(payload, (ip, port))
    in_netns(ns, go)


def received(rx: socket.socket, timeout: float = TIMEOUT) -> bytes | None:
    rx.settimeout(timeout)
    try:
        return rx.recv(64)
    except OSError:
        return None


def test_ipv6_extension_headers_are_walked_to_the_ports(dp, env, v6):
    """UDP behind a hop-by-hop header is matched by its own protocol and port, and an MLD report
    behind one passes as link plumbing (not dropped as protocol 0 under default deny)."""
    ns, _ = env
    host, _inside = v6
    port, other = free_ports(2)
    dp.apply([entry("egress", PEER, "udp", port, rule=21)])
    nd_before = dp.stats()["nd"]
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx_other:
        rx.bind((host, port))
        rx_other.bind((host, other))
        # TRIGGER: UDP to the allowed and to another port, and an MLDv2 report (143), each behind
        # a hop-by-hop header
        send6_with_hop_by_hop(ns.name, host, port)
        send6_with_hop_by_hop(ns.name, host, other)
        send6_with_hop_by_hop(ns.name, host, 0, raw_icmp_type=143)
        # ASSERT: the allowed port got it, the other did not
        assert received(rx) == b"hop-by-hop"
        assert received(rx_other, 0.3) is None
    flows = [f for f in flows_of(dp, 2) if f.family == 6]
    got = sorted((f.proto, f.dport, f.verdict, f.rule_index if f.verdict == "FORWARDED" else None) for f in flows)
    assert got == sorted([(17, port, "FORWARDED", 21), (17, other, "DROPPED", None)]), got
    assert dp.stats()["nd"] > nd_before


def test_xdp_firewall_sees_udp_behind_a_hop_by_hop_header(fw_ns):
    """A UDP port rule on an IPv6 prefix drops a datagram whose UDP header sits behind a
    hop-by-hop header; another port passes."""
    ns = fw_ns
    net = f"fd{random.randint(0, 0xff):02x}:{random.randint(0, 0xffff):x}:{random.randint(0, 0xffff):x}::"
    host, inside = f"{net}1", f"{net}2"
    subprocess.run(["ip", "addr", "add", f"{host}/64", "dev", ns.host_if, "nodad"], check=True)
    ns.exec(["ip", "addr", "add", f"{inside}/64", "dev", ns.ns_if, "nodad"], check=True)
    p, q = free_ports(2)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx_p, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx_q, \
            HostFirewall(ns.host_if, mode="generic") as fw:
        rx_p.bind((host, p))
        rx_q.bind((host, q))
        # TRIGGER: a rule for UDP to p from the namespace's /128; one datagram to each port
        rule = fw.add_rule(f"{inside}/128", "udp", p)
        send6_with_hop_by_hop(ns.name, host, p)
        send6_with_hop_by_hop(ns.name, host, q)
        # ASSERT: p's was dropped and counted, q's arrived
        assert received(rx_q) == b"hop-by-hop"
        assert received(rx_p, 0.3) is None
        assert fw.counters()[rule][0] == 1


# -- IP fragments -------------------------------------------------------------------------------------
BIG = 3000  # a UDP payload over the veth's 1500-byte MTU: three fragments (IPv4 and IPv6)


def big_echo(ns: str, family: int, server: str, port: int, timeout: float = TIMEOUT) -> tuple[bool, bool]:
    """A BIG-byte datagram from namespace ``ns`` to ``server:port`` on the host, echoed back whole by
    the host; (the host got it whole, the namespace got the echo whole)."""
    payload = bytes(random.getrandbits(8) for _ in range(BIG))
    with socket.socket(family, socket.SOCK_DGRAM) as rx:
        rx.bind((server, port))
        rx.settimeout(timeout)
        done = threading.Event()
        got: list[bool] = []

        def echo() -> None:
            try:
                data, peer = rx.recvfrom(65536)
            except OSError:
                got.append(False)
                return
            got.append(data == payload)
            rx.sendto(data, peer)
            done.set()

        t = threading.Thread(target=echo, daemon=True)
        t.start()

        def client() -> bool:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(payload, (server, port))
                try:
                    return s.recvfrom(65536)[0] == payload
                except OSError:
                    return False
        back = bool(in_netns(ns, client))
        t.join()
    return bool(got and got[0]), back


def test_fragmented_udp_takes_its_first_fragments_verdict_both_ways(dp, env):
    """A datagram larger than the MTU crosses as three fragments; only the first has the UDP header.
    With UDP to one port allowed (egress) and default deny both ways, the later fragments of the
    request and of its echo pass on the first fragment's ports (its conntrack entry), so both arrive
    whole; to another port every fragment is dropped and reported with that port."""
    ns, _ = env
    port, other = free_ports(2)
    dp.apply([entry("egress", PEER, "udp", port, rule=31)])
    before = dp.stats()
    # TRIGGER: a 3000-byte datagram to the allowed port and its 3000-byte echo, then one to the other port
    assert big_echo(ns.name, socket.AF_INET, ns.host_ip, port) == (True, True)
    assert big_echo(ns.name, socket.AF_INET, ns.host_ip, other, timeout=0.3) == (False, False)
    # ASSERT: 2 later fragments each way of the allowed exchange and 2 of the dropped datagram,
    # each found its first fragment
    after = dp.stats()
    assert after["fragments"] - before["fragments"] == 6
    assert after["frag_miss"] == before["frag_miss"]
    flows = [f for f in flows_of(dp, 5) if f.proto == 17 and f.family == 4]
    got = [(f.dport, f.verdict, f.is_reply) for f in flows]
    assert got == [(port, "FORWARDED", False), (ns_port := flows[1].dport, "FORWARDED", True)] + [
        (other, "DROPPED", False)] * 3, got
    assert flows[1].sport == port and ns_port != 0


def send_later_fragment(ns: str, src: str, dst: str, ident: int) -> None:
    """One IPv4 fragment at offset 1480 (no UDP header) from ``ns``, its first never sent."""
    def go() -> None:
        payload = b"x" * 64
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 1480 // 8, 64, 17, 0,
                          socket.inet_aton(src), socket.inet_aton(dst))
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(hdr + payload, (dst, 0))
    in_netns(ns, go)


def test_a_later_fragment_without_its_first_is_counted_and_dropped(dp, env):
    """A later fragment whose first was never seen has no ports: it is counted (frag_miss) and, with
    only a port rule for UDP, dropped by default deny, reported with port 0 and Cilium's drop
    reason for it."""
    ns, _ = env
    port, = free_ports(1)
    dp.apply([entry("egress", PEER, "udp", port, rule=32)])
    before = dp.stats()
    # TRIGGER: a lone fragment at offset 1480 with a fresh identification
    send_later_fragment(ns.name, ns.ns_ip, ns.host_ip, random.randint(1, 0xFFFF))
    # ASSERT: counted as a fragment and as a miss; one drop with no ports
    flows = [f for f in flows_of(dp, 1) if f.proto == 17]
    after = dp.stats()
    assert (after["fragments"] - before["fragments"], after["frag_miss"] - before["frag_miss"]) == (1, 1)
    assert [(f.sport, f.dport, f.verdict, f.drop_reason_desc) for f in flows] == [
        (0, 0, "DROPPED", "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND")]


def test_fragmented_udp_over_ipv6_takes_its_first_fragments_verdict(dp, env, v6):
    """The same over IPv6, where the fragment header is an extension header walked to its
    identification."""
    ns, _ = env
    host, _inside = v6
    port, = free_ports(1)
    dp.apply([entry("egress", PEER, "udp", port, rule=33)])
    before = dp.stats()
    # TRIGGER: a 3000-byte datagram to the allowed port over IPv6 and its echo
    assert big_echo(ns.name, socket.AF_INET6, host, port) == (True, True)
    # ASSERT: 2 later fragments each way, none without its first
    after = dp.stats()
    assert (after["fragments"] - before["fragments"], after["frag_miss"] - before["frag_miss"]) == (4, 0)
