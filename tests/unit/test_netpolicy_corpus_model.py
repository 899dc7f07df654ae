"""Every Cilium example policy in the shared corpus loads (with the warnings its unsupported parts
deserve) or is rejected for the documented reason."""

from __future__ import annotations

import ipaddress
import json

import pytest

from andon.cli.main import main
from andon.netpolicy.policy import load_files

from corpus import CORPUS  # noqa: E402

POLICIES = CORPUS / "cilium-policies"
FILES = sorted(p.name for p in POLICIES.glob("*.yaml"))

# file -> (policies, rules, sorted warning codes); None = rejected
EXPECTED: dict[str, tuple[int, int, list[str]] | None] = {
    "getting-started__dns-matchname.yaml": (1, 2, ["NP_NOT_ENFORCED"] * 2),  # toFQDNs, dns rules
    "getting-started__dns-port.yaml": (1, 2, ["NP_NOT_ENFORCED"] * 2),
    "host__demo-host-policy.yaml": (1, 1, ["NP_NOT_ENFORCED"]),  # nodeSelector
    "host__lock-down-dev-vms.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "hubble__l7_80_53.yaml": (1, 1, ["NP_IGNORED_FIELD", "NP_NOT_ENFORCED", "NP_NOT_ENFORCED"]),  # top-level description, http, dns
    "kubernetes__clusterwide__wildcard-from-endpoints.yaml": (1, 1, ["NP_IGNORED_FIELD"]),
    "l3__cidr__cidr.yaml": (1, 1, []),
    "l3__egress-allow-all__egress-allow-all.yaml": (1, 1, []),
    "l3__egress-default-deny__egress-default-deny.yaml": (1, 1, []),
    "l3__entities__from_world_deny.yaml": (1, 1, []),
    "l3__entities__host.yaml": (1, 1, []),
    "l3__fqdn__fqdn-cascade.yaml": (1, 1, ["NP_NOT_ENFORCED"] * 2),
    "l3__fqdn__fqdn.yaml": (1, 1, ["NP_NOT_ENFORCED"] * 2),
    "l3__ingress-allow-all__ingress-allow-all.yaml": (1, 1, []),
    "l3__match-expressions__and-statement.yaml": (1, 1, ["NP_OPERATOR_CASE"] * 2),  # operator: "in"
    "l3__requires__requires.yaml": None,
    "l3__service__service-labels.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "l3__service__service.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "l3__simple__l3.yaml": (1, 1, []),
    "l4__from_init.yaml": (1, 1, ["NP_ENTITY_ABSENT"]),
    "l4__l3_l4_combined.yaml": (1, 1, []),
    "l4__l4.yaml": (1, 1, []),
    "l4__l4_sni.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "l7__dns__dns-visibility.yaml": (1, 1, ["NP_NOT_ENFORCED"] * 2),
    "l7__http__http.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "l7__http__simple__l7.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "l7__kafka__kafka-role.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
    "l7__kafka__kafka.yaml": (1, 1, ["NP_NOT_ENFORCED"]),
}


def test_every_corpus_file_is_listed():
    assert sorted(EXPECTED) == FILES
    assert len(FILES) == 28


@pytest.mark.parametrize("name", FILES)
def test_corpus_file(name):
    r = load_files([POLICIES / name])
    want = EXPECTED[name]
    if want is None:
        assert not r.ok
        assert r.policies == []
        return
    assert r.ok, r.render()
    assert (r.counts["policies"], r.counts["rules"]) == want[:2]
    assert sorted(r.codes("warning")) == want[2]


def test_requires_is_rejected_with_the_reason():
    r = load_files([POLICIES / "l3__requires__requires.yaml"])
    [e] = r.errors
    assert e.code == "NP_REMOVED_FIELD"
    assert "fromRequires" in e.message and "1.19" in e.message
    assert (e.line, e.col) == (11, 7)
    assert e.snippet.strip() == "- fromRequires:"
    assert "fromEndpoints" in e.hint


def test_l3_l4_combined_contents():
    [p] = load_files([POLICIES / "l4__l3_l4_combined.yaml"]).policies
    assert (p.name, p.kind) == ("l4-rule", "CiliumNetworkPolicy")
    [rule] = p.rules
    assert str(rule.endpoint_selector) == "{any:role in (backend)}"
    [ing] = rule.ingress
    assert [str(s) for s in ing.endpoints] == ["{any:role in (frontend)}"]
    assert [str(pp) for pr in ing.ports for pp in pr.ports] == ["80/TCP"]
    assert rule.default_deny_ingress and not rule.default_deny_egress
    assert rule.egress == () and rule.ingress_deny == ()


def test_cidr_contents():
    [p] = load_files([POLICIES / "l3__cidr__cidr.yaml"]).policies
    [rule] = p.rules
    first, second = rule.egress
    assert [str(c) for c in first.cidrs] == ["20.1.1.1/32"]
    [cset] = second.cidrs
    assert cset.cidr == ipaddress.ip_network("10.0.0.0/8")
    assert cset.excepts == (ipaddress.ip_network("10.96.0.0/12"),)
    parts = cset.prefixes()
    # the pieces cover 10/8 minus 10.96/12 exactly
    assert sum(n.num_addresses for n in parts) == 2**24 - 2**20
    assert not any(n.overlaps(ipaddress.ip_network("10.96.0.0/12")) for n in parts)


def test_specs_envelope_two_rules():
    [p] = load_files([POLICIES / "getting-started__dns-port.yaml"]).policies
    r0, r1 = p.rules
    assert str(r0.endpoint_selector) == "{any:class in (mediabot), any:org in (empire)}"
    assert r0.egress[0].unseen == "toFQDNs"
    assert [str(pp) for pr in r0.egress[0].ports for pp in pr.ports] == ["443/TCP"]
    assert r1.endpoint_selector.is_wildcard
    [eg] = r1.egress
    assert [str(s) for s in eg.endpoints] == ["{k8s:io.kubernetes.pod.namespace in (kube-system), k8s:k8s-app in (kube-dns)}"]
    assert eg.ports[0].l7 == "dns"
    assert [str(pp) for pp in eg.ports[0].ports] == ["53/ANY"]


def test_host_policy_contents_and_icmp():
    [p] = load_files([POLICIES / "host__demo-host-policy.yaml"]).policies
    [rule] = p.rules
    assert rule.endpoint_selector is None and rule.node_selector is not None
    assert [i.entities for i in rule.ingress] == [("cluster",), (), ()]
    assert [(f.family, f.type) for f in rule.ingress[2].icmps] == [("IPv4", 8)]


def test_warning_messages_say_what_is_enforced():
    r = load_files([POLICIES / "l4__l4_sni.yaml", POLICIES / "l7__kafka__kafka.yaml"])
    msgs = [w.message for w in r.warnings]
    assert any("SNI" in m and "443/TCP" in m for m in msgs)
    assert any("Kafka" in m and "9092/TCP" in m and "L3/L4 part is" in m for m in msgs)


def test_cli_validate_all_files(capsys):
    rc = main(["policy", "validate", *[str(POLICIES / f) for f in FILES], "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1  # requires.yaml
    assert out["successful"] is False
    assert [e["code"] for e in out["errors"]] == ["NP_REMOVED_FIELD"]
    # names repeat across the examples (rule1 x3, fqdn x2, l4-rule x2): a later one replaces
    # the earlier, as kubectl apply would
    assert out["counts"]["policies"] == 23
    assert sum(w["code"] == "NP_DUPLICATE_POLICY" for w in out["warnings"]) == 4
    assert all(w["codedesc"] for w in out["warnings"])


def test_cli_validate_good_files_exit_zero(capsys):
    rc = main(["policy", "validate", str(POLICIES / "l7__http__http.yaml")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "l7__http__http.yaml:15:9: warning NP_NOT_ENFORCED" in out
    assert out.strip().endswith("1 policies, 1 rules loaded; 0 errors, 1 warnings")
