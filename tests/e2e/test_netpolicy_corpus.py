"""Every Cilium example policy in the shared corpus, applied with ``andon policy apply`` to real
endpoints, or rejected for its documented reason (as root).

Six namespace endpoints carry the labels the files select (a label key at most once per
endpoint, so each file's selectors pick exactly the endpoints meant), two unmanaged namespaces
are "world" peers (``U1`` in 10.200-250.x, ``U2`` in 10.96.0.0/12, the part ``l3__cidr`` carves
out), and ``host@X`` is the host's address on X's link. Files are applied one at a time and
deleted after. For each file a handful of probes (TCP connect + echo, UDP echo, ICMP echo, on the
file's ports and off them) must get through exactly when the model's ``decide_flow`` says so,
and, where written down, as checked by hand from Cilium's semantics.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir
from andon.netpolicy.state import NetpolicyState, compute

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from corpus import CORPUS  # noqa: E402
from nplab import Lab  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TC, bpffs)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/policy.bpf.o").exists(), reason="make bpf first"),
]

POLICIES = CORPUS / "cilium-policies"
PORTS = [53, 80, 81, 443, 8080, 9092]
LABELS = {
    "A": ["role=backend", "app=myService", "env=dev"],
    "B": ["role=frontend", "env=prod", "app=empire-hq", "k8s:io.kubernetes.pod.namespace=production",
          "k8s:cilium.example.com/policy=strict"],
    "C": ["role=victim", "app=service", "org=empire", "class=mediabot"],
    "D": ["role=restricted", "app=kafka", "id=app2", "org=alliance"],
    "E": ["k8s:io.kubernetes.pod.namespace=kube-system", "k8s:k8s-app=kube-dns"],
    "F": ["app=test-app"],
}

# file -> probes (src, dst, proto, port, hand-checked outcome: True passes, False dropped, None: model only)
Y, N = True, False
PROBES: dict[str, list[tuple[str, str, str, int, bool | None]]] = {
    # backend (A) takes anything from frontend (B), nothing from others; A's egress is not selected
    "l3__simple__l3.yaml": [("B", "A", "TCP", 8080, Y), ("B", "A", "UDP", 53, Y), ("B", "A", "ICMP", 8, Y),
                            ("C", "A", "TCP", 8080, N), ("U1", "A", "TCP", 8080, N), ("A", "C", "TCP", 8080, Y)],
    "l4__l3_l4_combined.yaml": [("B", "A", "TCP", 80, Y), ("B", "A", "TCP", 81, N), ("B", "A", "UDP", 80, N),
                                ("C", "A", "TCP", 80, N), ("B", "A", "ICMP", 8, N)],
    # myService (A) may send TCP/80 anywhere and nothing else; its ingress stays open
    "l4__l4.yaml": [("A", "B", "TCP", 80, Y), ("A", "U1", "TCP", 80, Y), ("A", "B", "TCP", 81, N),
                    ("A", "B", "UDP", 53, N), ("A", "B", "ICMP", 8, N), ("B", "A", "TCP", 8080, Y)],
    # 10/8 except 10.96/12 and 20.1.1.1: U1 yes, U2 (in the exception) no; endpoints and the
    # host are not CIDR peers
    "l3__cidr__cidr.yaml": [("A", "U1", "TCP", 8080, Y), ("A", "U1", "UDP", 53, Y), ("A", "U1", "ICMP", 8, Y),
                            ("A", "U2", "TCP", 8080, N), ("A", "B", "TCP", 8080, N), ("A", "host@A", "TCP", 8080, N)],
    "l3__egress-default-deny__egress-default-deny.yaml": [
        ("D", "A", "TCP", 8080, N), ("D", "A", "UDP", 53, N), ("D", "A", "ICMP", 8, N), ("A", "D", "TCP", 8080, Y)],
    "l3__ingress-allow-all__ingress-allow-all.yaml": [
        ("A", "C", "TCP", 8080, Y), ("B", "C", "UDP", 53, Y), ("U1", "C", "TCP", 8080, N),
        ("host@C", "C", "TCP", 8080, N), ("C", "U1", "TCP", 8080, Y)],
    "l3__egress-allow-all__egress-allow-all.yaml": [
        ("B", "A", "TCP", 8080, Y), ("B", "C", "ICMP", 8, Y), ("B", "U1", "TCP", 8080, N),
        ("B", "host@B", "TCP", 8080, N)],
    "l3__entities__host.yaml": [("A", "host@A", "TCP", 8080, Y), ("A", "B", "TCP", 8080, N),
                                ("A", "U1", "TCP", 8080, N)],
    # ingressDeny world wins over ingress all; endpoints and the host still get in; replies to
    # A's own connection out to the world come back (conntrack)
    "l3__entities__from_world_deny.yaml": [
        ("U1", "A", "TCP", 8080, N), ("U2", "B", "UDP", 53, N), ("B", "A", "TCP", 8080, Y),
        ("host@A", "A", "TCP", 8080, Y), ("A", "U1", "TCP", 8080, Y)],
    # every endpoint takes ingress only from production+strict (B)
    "l3__match-expressions__and-statement.yaml": [
        ("B", "A", "TCP", 8080, Y), ("B", "C", "UDP", 53, Y), ("C", "A", "TCP", 8080, N), ("U1", "A", "TCP", 8080, N),
        ("host@A", "A", "TCP", 8080, N)],
    "kubernetes__clusterwide__wildcard-from-endpoints.yaml": [
        ("A", "E", "UDP", 53, Y), ("A", "E", "TCP", 53, N), ("U1", "E", "UDP", 53, N), ("A", "E", "TCP", 8080, N)],
    # specs[1] selects every endpoint: egress only to kube-dns on 53 (ANY = TCP, UDP, SCTP)
    "getting-started__dns-matchname.yaml": [
        ("C", "E", "UDP", 53, Y), ("A", "E", "TCP", 53, Y), ("A", "B", "TCP", 8080, N), ("C", "U1", "TCP", 443, N),
        ("E", "A", "TCP", 8080, N)],
    "getting-started__dns-port.yaml": [
        ("C", "E", "UDP", 53, Y), ("C", "U1", "TCP", 443, N), ("A", "E", "TCP", 80, N)],
    # nodeSelector rules are not applied: nothing changes
    "host__demo-host-policy.yaml": [("U1", "A", "TCP", 8080, Y), ("A", "U1", "ICMP", 8, Y)],
    "host__lock-down-dev-vms.yaml": [("U1", "A", "TCP", 8080, Y), ("A", "U1", "UDP", 53, Y)],
    # egress default deny on, toEntities all allows everything
    "hubble__l7_80_53.yaml": [("A", "B", "TCP", 80, Y), ("A", "U1", "TCP", 8080, Y), ("A", "B", "UDP", 53, Y)],
    "l3__fqdn__fqdn.yaml": [("F", "E", "UDP", 53, Y), ("F", "E", "TCP", 53, Y), ("F", "E", "TCP", 80, N),
                            ("F", "U1", "TCP", 443, N)],
    "l3__fqdn__fqdn-cascade.yaml": [("F", "E", "UDP", 53, Y), ("F", "U1", "TCP", 443, N)],
    "l7__dns__dns-visibility.yaml": [("D", "E", "UDP", 53, Y), ("D", "A", "TCP", 8080, N)],
    # toServices selects nothing here: id=app2 (D) may send nothing
    "l3__service__service.yaml": [("D", "A", "TCP", 8080, N), ("A", "D", "TCP", 8080, Y)],
    "l3__service__service-labels.yaml": [("D", "A", "TCP", 8080, N), ("A", "D", "TCP", 8080, Y)],
    # init never occurs; UDP/53 from anyone
    "l4__from_init.yaml": [("B", "A", "UDP", 53, Y), ("U1", "A", "UDP", 53, Y), ("B", "A", "TCP", 8080, N),
                           ("B", "A", "TCP", 53, N)],
    "l4__l4_sni.yaml": [("A", "U1", "TCP", 443, Y), ("A", "B", "TCP", 443, Y), ("A", "B", "TCP", 80, N)],
    "l7__http__http.yaml": [("B", "A", "TCP", 80, Y), ("U1", "A", "TCP", 80, Y), ("B", "A", "TCP", 81, N)],
    "l7__http__simple__l7.yaml": [("B", "C", "TCP", 80, Y), ("A", "C", "TCP", 80, N), ("B", "C", "TCP", 81, N)],
    "l7__kafka__kafka.yaml": [("B", "D", "TCP", 9092, Y), ("A", "D", "TCP", 9092, N), ("B", "D", "TCP", 80, N)],
    "l7__kafka__kafka-role.yaml": [("B", "D", "TCP", 9092, Y), ("A", "D", "TCP", 9092, N)],
}
# rejected files: the exact error codes; then traffic is as with no policy
REJECTED = {"l3__requires__requires.yaml": ["NP_REMOVED_FIELD"]}
REJECTED_PROBES = [("C", "A", "TCP", 8080, Y), ("U1", "A", "TCP", 8080, Y)]


def _unit_expected() -> dict:
    """The warning codes tests/unit/test_netpolicy_corpus_model.py expects of each file."""
    spec = importlib.util.spec_from_file_location("_np_corpus_unit", HERE.parent / "unit" / "test_netpolicy_corpus_model.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.EXPECTED


def test_every_corpus_file_has_probes_or_a_reason():
    assert sorted([*PROBES, *REJECTED]) == sorted(p.name for p in POLICIES.glob("*.yaml"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("npcorpus")
    lab = Lab(tmp / "state", Path("/sys/fs/bpf") / f"andon-corpus-{os.getpid()}")
    try:
        for name in LABELS:
            lab.add_v4(name, ports=PORTS)
        lab.add_v4("U1", ports=PORTS)
        lab.add_v4("U2", octets=(96, 111), ports=PORTS)
        for name in ("A", "B", "C"):
            lab.host_server(lab.nodes[name].gateway, [8080])
        for name, labels in LABELS.items():
            lab.endpoint(name, labels)
        yield lab
    finally:
        lab.close()
    assert not lab.pin_dir.exists(), "the last endpoint removed takes the pins with it"


def _check(lab: Lab, probes, label: str) -> list[str]:
    """Run the probes against the model's verdicts; the list of disagreements."""
    _, res = compute(NetpolicyState.load(lab.state_dir))
    bad = []
    for src, dst, proto, port, hand in probes:
        want = res.decide_flow(lab.where(src)[1], lab.where(dst)[1], proto, port)
        got = lab.reach(src, dst, proto, port, expect_pass=want.allowed)
        if got != want.allowed or (hand is not None and got != hand):
            bad.append(f"{label}: {src}->{dst} {proto}/{port}: got {'pass' if got else 'drop'}, model {want.verdict} "
                       f"({want.reason}), by hand {hand}")
    return bad


def test_corpus_applies_as_the_model_says(lab):
    expected_codes = _unit_expected()
    bad: list[str] = []
    for name, probes in PROBES.items():
        # TRIGGER: apply the file alone
        r = lab.andon("policy", "apply", str(POLICIES / name), inproc=True)
        # ASSERT: it reports the warnings its unenforced parts deserve, and traffic is as the model says
        for code in set(expected_codes[name][2]):
            assert f"warning {code}" in r.stdout, f"{name}: {code} not reported\n{r.stdout}"
        bad += _check(lab, probes, name)
        lab.andon("policy", "delete", str((POLICIES / name).resolve()), inproc=True)
    assert not bad, "\n".join(bad)


def test_rejected_files_change_nothing(lab):
    for name, codes in REJECTED.items():
        r = lab.andon("policy", "apply", str(POLICIES / name), check=False)
        assert r.returncode == 1
        found = [c for c in ("NP_YAML_PARSE", "NP_SCHEMA", "NP_UNKNOWN_FIELD", "NP_REMOVED_FIELD", "NP_INVALID_VALUE",
                             "NP_UNSUPPORTED_COMBINATION") for _ in range(r.stdout.count(f"error {c}"))]
        assert found == codes, r.stdout
        assert "nothing applied, the running policy is unchanged" in r.stdout
        assert lab.andon("policy", "list").stdout.strip() == "0 policies applied"
        assert not _check(lab, REJECTED_PROBES, name)


def test_dns_sized_udp_over_the_mtu_gets_through_a_port_rule(lab):
    """A UDP datagram over the MTU (a large DNS answer with EDNS) crosses as fragments, and only the
    first carries the port. Under Cilium's DNS example (every endpoint may send only to kube-dns on
    53), a 3000-byte echo to 53 comes back whole, between namespaces routed through the host, and
    the same to a port the policy leaves out does not."""
    # TRIGGER: the DNS example applied with the real CLI; 3000-byte UDP echoes from C to E
    lab.andon("policy", "apply", str(POLICIES / "getting-started__dns-port.yaml"), inproc=True)
    try:
        ok = lab.reach("C", "E", "UDP", 53, expect_pass=True, size=3000)
        other = lab.reach("C", "E", "UDP", 8080, size=3000)
        small = lab.reach("C", "E", "UDP", 53, expect_pass=True)
    finally:
        lab.andon("policy", "delete", str((POLICIES / "getting-started__dns-port.yaml").resolve()), inproc=True)
    # ASSERT: the allowed port's big datagram and its echo arrived whole; the other port's did not
    assert (ok, other, small) == (True, False, True)


# -- audit mode per policy ------------------------------------------------------------------------------
AUDITED_DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: no-frontend-8080
  annotations:
    andon.io/policy-audit-mode: "{audit}"
spec:
  endpointSelector: {{matchLabels: {{role: backend}}}}
  ingressDeny:
  - fromEndpoints: [{{matchLabels: {{role: frontend}}}}]
    toPorts: [{{ports: [{{port: "8080", protocol: TCP}}]}}]
  ingress:
  - fromEntities: [all]
"""


def _flows_and_counters(lab: Lab) -> tuple[list, dict]:
    """Every flow record waiting in the pinned ring, and the per-endpoint counters."""
    from andon.netpolicy.datapath import Datapath, wait_flows

    dp = Datapath(pin_dir=lab.pin_dir)
    try:
        return wait_flows(dp, 100000, timeout=0.5), dp.counters()
    finally:
        dp.close(detach=False)


def _syn(flows: list, src: str, dst: str, port: int):
    return [f for f in flows if f.src_ip == src and f.dst_ip == dst and f.dport == port and f.tcp_flags == 0x02
            and f.traffic_direction == "INGRESS"]


def test_audit_flag_and_annotation(lab, tmp_path):
    a, b, c = (lab.nodes[n] for n in "ABC")
    a_ifindex = int(NetpolicyState.load(lab.state_dir).endpoints["A"]["ifindex"])
    combined = str(POLICIES / "l4__l3_l4_combined.yaml")
    _, before = _flows_and_counters(lab)  # empties the ring; counters so far (earlier tests used A too)
    # TRIGGER: apply --audit: default deny of backend (A) switched on by an audited policy only
    r = lab.andon("policy", "apply", "--audit", combined)
    assert "in audit mode" in r.stdout and "ingress: default deny by l4-rule (audit)" in r.stdout
    [row] = __import__("json").loads(lab.andon("policy", "list", "-o", "json").stdout)
    assert (row["name"], row["audit"], row["audit_by"]) == ("l4-rule", True, "apply --audit")
    # ASSERT: would-be drops pass; the flows say AUDIT, the counters count them
    assert lab.reach("B", "A", "TCP", 81, expect_pass=True)
    assert lab.reach("C", "A", "TCP", 80, expect_pass=True)
    assert lab.reach("B", "A", "TCP", 80, expect_pass=True)
    flows, counters = _flows_and_counters(lab)
    [f81] = _syn(flows, b.addr, a.addr, 81)
    [f80c] = _syn(flows, c.addr, a.addr, 80)
    [f80b] = _syn(flows, b.addr, a.addr, 80)
    assert (f81.verdict, f81.drop_reason_desc, f81.policy_match_type) == ("AUDIT", "POLICY_DENIED", "NONE")
    assert (f80c.verdict, f80c.drop_reason_desc) == ("AUDIT", "POLICY_DENIED")
    assert (f80b.verdict, f80b.policy_match_type) == ("FORWARDED", "L3_L4")
    was = before.get((a_ifindex, "INGRESS"))
    now = counters[(a_ifindex, "INGRESS")]
    assert now.audit_packets - (was.audit_packets if was else 0) >= 2  # the two SYNs (retries would add)
    assert now.drop_packets == (was.drop_packets if was else 0)

    # TRIGGER: the same file again without --audit enforces it
    lab.andon("policy", "apply", combined)
    assert lab.andon("policy", "list").stdout.count("enforced") == 1
    assert not lab.reach("B", "A", "TCP", 81)
    lab.andon("policy", "delete", "l4-rule")

    # TRIGGER: the annotation audits a deny entry
    audited, enforced = tmp_path / "audited.yaml", tmp_path / "enforced.yaml"
    audited.write_text(AUDITED_DENY.format(audit="true"))
    lab.andon("policy", "apply", str(audited))
    assert "AUDIT (annotation)" in lab.andon("policy", "list").stdout
    assert lab.reach("B", "A", "TCP", 8080, expect_pass=True)
    assert lab.reach("C", "A", "TCP", 8080, expect_pass=True)
    flows, _ = _flows_and_counters(lab)
    [fb] = _syn(flows, b.addr, a.addr, 8080)
    [fc] = _syn(flows, c.addr, a.addr, 8080)
    assert (fb.verdict, fb.drop_reason_desc, fb.policy_match_type) == ("AUDIT", "POLICY_DENY", "L3_L4")
    assert (fc.verdict, fc.policy_match_type) == ("FORWARDED", "ALL")
    lab.andon("policy", "delete", "no-frontend-8080")
    # ASSERT: "false" enforces the deny
    enforced.write_text(AUDITED_DENY.format(audit="false"))
    lab.andon("policy", "apply", str(enforced))
    assert not lab.reach("B", "A", "TCP", 8080)
    assert lab.reach("C", "A", "TCP", 8080, expect_pass=True)
    lab.andon("policy", "delete", "no-frontend-8080")
