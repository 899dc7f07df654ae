"""Per-policy audit mode in the model: the annotation, ``load_texts(audit_files=...)``, the
verdicts ``decide`` gives and the entries the datapath gets."""

from __future__ import annotations

from andon.netpolicy.identity import Endpoint
from andon.netpolicy.policy import AUDIT_ANNOTATION, load_text, load_texts
from andon.netpolicy.resolve import resolve

EPS = [
    Endpoint.make("web", "netns", {"app": "web"}, ["10.0.0.2"], ifname="h-web"),
    Endpoint.make("fe", "netns", {"app": "fe"}, ["10.0.0.3"], ifname="h-fe"),
]


def cnp(name: str, spec: str, annotations: str = "") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    meta = f"  name: {name}\n" + (f"  annotations:\n    {annotations}\n" if annotations else "")
    return f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n{meta}spec:\n{body}\n"


WEB_80 = """
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: fe}}]
  toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""
WEB_DENY_22 = """
endpointSelector: {matchLabels: {app: web}}
ingressDeny:
- fromEndpoints: [{matchLabels: {app: fe}}]
  toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"""
AUDIT_ON = f'{AUDIT_ANNOTATION}: "true"'


def resolved(*texts: tuple[str, bool]):
    srcs = [(f"p{i}.yaml", t) for i, (t, _) in enumerate(texts)]
    r = load_texts(srcs, audit_files=[f"p{i}.yaml" for i, (_, a) in enumerate(texts) if a])
    assert r.ok, r.render()
    return r, resolve(EPS, r.policies, host_addresses=["10.0.0.1"])


def test_annotation_sets_audit():
    r = load_text(cnp("a", WEB_80, AUDIT_ON))
    assert r.ok and [p.audit for p in r.policies] == [True]
    r = load_text(cnp("a", WEB_80, f'{AUDIT_ANNOTATION}: "false"\n    other.io/x: "y"'))
    assert r.ok and [p.audit for p in r.policies] == [False]
    assert [p.audit for p in load_text(cnp("a", WEB_80)).policies] == [False]


def test_annotation_bad_values_are_errors():
    r = load_text(cnp("a", WEB_80, f"{AUDIT_ANNOTATION}: true"))  # a YAML bool, not the string
    assert r.codes("error") == ["NP_INVALID_VALUE"] and r.policies == []
    assert 'quote it' in r.errors[0].hint
    r = load_text(cnp("a", WEB_80, f'{AUDIT_ANNOTATION}: "yes"'))
    assert r.codes("error") == ["NP_INVALID_VALUE"]
    assert r.errors[0].line == 6 and "'yes'" in r.errors[0].message


def test_audit_files_and_load_text_flag():
    r = load_texts([("a.yaml", cnp("a", WEB_80)), ("b.yaml", cnp("b", WEB_DENY_22))], audit_files=["b.yaml"])
    assert {p.name: p.audit for p in r.policies} == {"a": False, "b": True}
    assert [p.audit for p in load_text(cnp("a", WEB_80), audit=True).policies] == [True]


def test_default_deny_of_an_audited_policy_audits():
    _, m = resolved((cnp("web-80", WEB_80), True))
    v = m.decide("fe", "web", "TCP", 81, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy, v.allowed) == ("AUDIT", "POLICY_DENIED", "web-80", True)
    assert v.reason == "default deny by web-80"
    assert m.decide("fe", "web", "TCP", 80, "ingress").verdict == "FORWARDED"
    assert m.endpoints["web"].default_deny_audit == {"ingress": True, "egress": False}


def test_one_enforcing_policy_makes_default_deny_drop():
    # the audited policy and an enforcing one both switch ingress default deny on: it drops
    _, m = resolved((cnp("audited", WEB_80), True), (cnp("enforced", WEB_80.replace('"80"', '"443"')), False))
    assert m.endpoints["web"].default_deny["ingress"] == ["audited", "enforced"]
    assert m.endpoints["web"].default_deny_audit["ingress"] is False
    assert m.decide("fe", "web", "TCP", 81, "ingress").verdict == "DROPPED"
    # either order
    _, m = resolved((cnp("enforced", WEB_80.replace('"80"', '"443"')), False), (cnp("audited", WEB_80), True))
    assert m.decide("fe", "web", "TCP", 81, "ingress").verdict == "DROPPED"


def test_audited_deny_entry_passes_enforced_deny_drops():
    _, m = resolved((cnp("allow-all", WEB_80.replace('"80"', '"0"')), False), (cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy, v.match_type) == ("AUDIT", "POLICY_DENY", "deny22", "L3_L4")
    _, m = resolved((cnp("allow-all", WEB_80.replace('"80"', '"0"')), False), (cnp("deny22", WEB_DENY_22), False))
    assert m.decide("fe", "web", "TCP", 22, "ingress").verdict == "DROPPED"


def test_datapath_entries_carry_audit_on_denies_only():
    _, m = resolved((cnp("allow", WEB_80), True), (cnp("deny22", WEB_DENY_22), True))
    got = sorted((d.verdict, d.port_lo, d.audit) for d in m.datapath_entries())
    assert got == [("ALLOW", 80, False), ("DENY", 22, True)]


WEB_DEFAULT_DENY_ONLY = """
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: nobody}}]
"""
WEB_DENY_FE_ALL = """
endpointSelector: {matchLabels: {app: web}}
ingressDeny:
- fromEndpoints: [{matchLabels: {app: fe}}]
"""
WEB_DENY_ANY_22 = """
endpointSelector: {matchLabels: {app: web}}
ingressDeny:
- toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"""


def test_audited_deny_does_not_lift_enforced_default_deny():
    # an enforced policy switches ingress default deny on and allows nothing for fe:22; the
    # audited deny entry matching fe:22 must not let it through
    _, m = resolved((cnp("dd", WEB_DEFAULT_DENY_ONLY), False), (cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy) == ("DROPPED", "POLICY_DENIED", "dd")
    # with an allow for the port in the enforced policy: passes, reported as the audited deny
    _, m = resolved((cnp("allow22", WEB_80.replace('"80"', '"22"')), False), (cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy) == ("AUDIT", "POLICY_DENY", "deny22")


def test_a_more_specific_audited_deny_does_not_hide_an_enforced_one():
    # enforced: deny everything from fe (L3_ONLY); audited: deny fe:22 (L3_L4, more specific)
    _, m = resolved((cnp("deny-fe", WEB_DENY_FE_ALL), False), (cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy, v.match_type) == ("DROPPED", "POLICY_DENY", "deny-fe", "L3_ONLY")
    # enforced: deny 22 from anyone (L4_ONLY, the any-peer lookup); audited: fe:22 (its own peer)
    _, m = resolved((cnp("deny-any-22", WEB_DENY_ANY_22), False), (cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.policy, v.match_type) == ("DROPPED", "deny-any-22", "L4_ONLY")
    # and the other way round: enforced fe:22, audited from anyone: the enforced one drops
    _, m = resolved((cnp("deny22", WEB_DENY_22), False), (cnp("deny-any-22", WEB_DENY_ANY_22), True))
    assert m.decide("fe", "web", "TCP", 22, "ingress").verdict == "DROPPED"


def test_audited_deny_with_audited_or_no_default_deny_audits():
    # default deny only from audited policies: the deny entry is what is reported
    _, m = resolved((cnp("dd", WEB_DEFAULT_DENY_ONLY), True), (cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy) == ("AUDIT", "POLICY_DENY", "deny22")
    v = m.decide("fe", "web", "TCP", 23, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy) == ("AUDIT", "POLICY_DENIED", "dd")
    # the deny-only policy alone (its ingressDeny switches ingress default deny on, audited)
    _, m = resolved((cnp("deny22", WEB_DENY_22), True))
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy) == ("AUDIT", "POLICY_DENY", "deny22")
    v = m.decide("fe", "web", "TCP", 23, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.policy) == ("AUDIT", "POLICY_DENIED", "deny22")
