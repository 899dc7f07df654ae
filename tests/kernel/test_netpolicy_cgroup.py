"""Cgroup endpoints: the policy object's cgroup_skb programs on a cgroup2 directory of the
test's own, entries written by hand. A client process on the host network is moved into the
cgroup (or a child of it) before it opens sockets, and connects to an echo server in a network
namespace of the test's own; the server's address has identity PEER.

Egress drops at cgroup_skb make connect() fail at once with EPERM (no timeout); the flows
carry ifindex 0 and the cgroup id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.errors import UsageError
from andon.events.live import default_bpf_dir
from andon.netpolicy import cgroup as cg
from andon.netpolicy.datapath import DROP_POLICY, KEY_CGROUP, Datapath, PolicyEntry, wait_flows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import servers as S  # noqa: E402
from test_netpolicy_datapath import Server, free_ports, in_netns  # noqa: E402

EP, PEER, DENY_POLICY = 300, 1001, 42
OBJ = default_bpf_dir() / "enforce/policy.bpf.o"
CGROUP2 = Path("/sys/fs/cgroup/unified")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, namespaces, BPF)"),
    pytest.mark.skipif(not OBJ.exists(), reason="make bpf first"),
    pytest.mark.skipif(not (CGROUP2 / "cgroup.procs").exists(), reason="no cgroup2 at /sys/fs/cgroup/unified"),
]

# the client: joins the cgroup, then connects to each port; prints {port: "ok" | errno name}
CLIENT = r"""
import errno, json, os, socket, sys
cgdir, ip, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
out = {}
for p in ports:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((ip, p)); s.sendall(b"ping"); out[p] = "ok" if s.recv(8) == b"ping" else "bad echo"
    except OSError as e:
        out[p] = errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def client(cgdir: Path, ip: str, *ports: int) -> dict[int, str]:
    r = subprocess.run([sys.executable, "-c", CLIENT, str(cgdir), ip, *map(str, ports)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return {int(k): v for k, v in json.loads(r.stdout).items()}


@pytest.fixture
def world() -> Iterator[dict]:
    cgdir = CGROUP2 / f"andon-test-{uuid.uuid4().hex[:8]}"
    cgdir.mkdir()
    child = cgdir / "child"
    child.mkdir()
    ok_port, deny_port = free_ports(2)
    try:
        with S.netns() as ns:
            servers = [Server(lambda f: in_netns(ns.name, f), ns.ns_ip, p) for p in (ok_port, deny_port)]
            dp = Datapath()
            try:
                dp.set_ip_identity(f"{ns.ns_ip}/32", PEER)
                yield {"dp": dp, "cg": cgdir, "child": child, "ns": ns, "ok": ok_port, "deny": deny_port}
            finally:
                dp.close()
                for s in servers:
                    s.close()
    finally:
        child.rmdir()
        cgdir.rmdir()


def test_cgroup_egress_allow_deny_audit(world):
    dp, cgdir, ns, ok, deny = world["dp"], world["cg"], world["ns"], world["ok"], world["deny"]
    cgid = dp.attach_cgroup(cgdir, EP, default_deny_egress=True, deny_policy_id=DENY_POLICY)
    assert cgid == os.stat(cgdir).st_ino
    ids = cg.attached(cgdir, "egress")
    assert dp.cgroup_record(cgid)["prog_ids"]["egress"] in ids
    dp.apply([PolicyEntry(EP, "egress", PEER, "tcp", ok, 0, "allow", 7, 0)])
    list(dp.flows())

    # TRIGGER: a process in the cgroup connects to the allowed and the denied port
    got = client(cgdir, ns.ns_ip, ok, deny)
    # ASSERT: allowed one echoes; the denied SYN is dropped at egress: connect() gets EPERM
    assert got == {ok: "ok", deny: "EPERM"}
    flows = wait_flows(dp, 3)
    syn_ok = next(f for f in flows if f.dport == ok and f.tcp_flag_names == ("SYN",))
    assert (syn_ok.verdict, syn_ok.ifindex, syn_ok.cgroup_id) == ("FORWARDED", 0, cgid)
    assert (syn_ok.src_identity, syn_ok.dst_identity, syn_ok.policy_id, syn_ok.traffic_direction) == \
        (EP, PEER, 7, "EGRESS")
    drop = next(f for f in flows if f.dport == deny)
    assert drop.tcp_flag_names == ("SYN",) and drop.src_ip == "0.0.0.0", "decided at connect(): nothing was sent"
    assert (drop.verdict, drop.drop_reason, drop.policy_id, drop.cgroup_id) == ("DROPPED", DROP_POLICY, DENY_POLICY,
                                                                                   cgid)
    counters = dp.counters()
    assert counters[(KEY_CGROUP | (cgid & 0x7FFFFFFF), "EGRESS")].drop_packets >= 1

    # TRIGGER: a process in a child cgroup: the endpoint's policy covers it
    assert client(world["child"], ns.ns_ip, ok, deny) == {ok: "ok", deny: "EPERM"}

    # TRIGGER: audit mode on the endpoint
    dp.set_cgroup_config(cgid, EP, default_deny_egress=True, deny_policy_id=DENY_POLICY, audit=True)
    list(dp.flows())
    assert client(cgdir, ns.ns_ip, deny) == {deny: "ok"}
    audited = [f for f in wait_flows(dp, 2) if f.dport == deny and f.verdict == "AUDIT"]
    assert audited and audited[0].drop_reason == DROP_POLICY and audited[0].cgroup_id == cgid

    # TRIGGER: detach: nothing enforced any more
    dp.set_cgroup_config(cgid, EP, default_deny_egress=True, deny_policy_id=DENY_POLICY)
    egress_id = dp.cgroup_record(cgid)["prog_ids"]["egress"]
    dp.detach_cgroup(cgid)
    assert egress_id not in cg.attached(cgdir, "egress")
    assert client(cgdir, ns.ns_ip, deny) == {deny: "ok"}


def test_cgroup_ingress_and_takeover(world):
    dp, cgdir, ns = world["dp"], world["cg"], world["ns"]
    port = world["deny"] + 1
    cgid = dp.attach_cgroup(cgdir, EP, default_deny_ingress=True, deny_policy_id=DENY_POLICY)
    dp.apply([])
    # a server on the host, in the cgroup; the namespace connects in
    server = subprocess.Popen([sys.executable, "-c", r"""
import os, socket, sys
open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write(str(os.getpid()))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3]))); s.listen(8); s.settimeout(10)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.sendall(c.recv(8)); c.close()
""", str(cgdir), ns.host_ip, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        from test_netpolicy_datapath import tcp_ok

        # ASSERT: ingress default deny: the namespace cannot connect in
        assert not tcp_ok(ns.host_ip, port, ns=ns.name)
        drop = [f for f in wait_flows(dp, 1) if f.dport == port]
        assert drop and drop[0].traffic_direction == "INGRESS" and drop[0].verdict == "DROPPED"
        assert (drop[0].src_identity, drop[0].dst_identity) == (PEER, EP)
        # TRIGGER: allow it from PEER
        dp.apply([PolicyEntry(EP, "ingress", PEER, "tcp", port, 0, "allow", 9, 1)])
        assert tcp_ok(ns.host_ip, port, ns=ns.name)
        # TRIGGER: a second datapath takes the endpoint over from the record and detaches it
        rec = dp.cgroup_record(cgid)
        other = Datapath()
        try:
            other.adopt_cgroup(json.loads(json.dumps(rec)))
            other.detach_cgroup(cgid)
        finally:
            other.close()
        assert rec["prog_ids"]["ingress"] not in cg.attached(cgdir, "ingress")
        with pytest.raises(UsageError):
            dp.attach_cgroup("relative/path", EP)
    finally:
        server.kill()
        server.wait()


# the client: joins the cgroup, sends one UDP datagram with a hop-by-hop header to [::1]:port
# for each port; prints {port: "ok" | errno name}
HOP_BY_HOP_CLIENT = r"""
import errno, json, os, socket, sys
cgdir, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
out = {}
for p in ports:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, 54, bytes([0, 0, 1, 4, 0, 0, 0, 0]))  # IPV6_HOPOPTS, one PadN
        try:
            s.sendto(b"hop-by-hop", ("::1", p)); out[p] = "ok"
        except OSError as e:
            out[p] = errno.errorcode.get(e.errno, str(e))
print(json.dumps(out))
"""


def test_cgroup_sees_udp_behind_a_hop_by_hop_header(world):
    """cgroup_skb reads headers with bpf_skb_load_bytes: the IPv6 extension walk there too."""
    dp, cgdir, ok, deny = world["dp"], world["cg"], world["ok"], world["deny"]
    dp.set_ip_identity("::1/128", PEER)
    dp.attach_cgroup(cgdir, EP, default_deny_egress=True, deny_policy_id=DENY_POLICY)
    dp.apply([PolicyEntry(EP, "egress", PEER, "udp", ok, 0, "allow", 7, 3)])
    list(dp.flows())
    # TRIGGER: UDP with a hop-by-hop header to the allowed and the denied port
    r = subprocess.run([sys.executable, "-c", HOP_BY_HOP_CLIENT, str(cgdir), str(ok), str(deny)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # ASSERT: the allowed port's send went out, the other got EPERM; the flows name UDP and the port
    assert {int(k): v for k, v in json.loads(r.stdout).items()} == {ok: "ok", deny: "EPERM"}
    flows = [f for f in wait_flows(dp, 2) if f.family == 6]
    got = sorted((f.proto, f.dport, f.verdict) for f in flows)
    assert got == sorted([(17, ok, "FORWARDED"), (17, deny, "DROPPED")]), got
