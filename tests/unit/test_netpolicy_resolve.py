"""Cilium's policy semantics on hand-built endpoints: exact verdicts, reasons and match types."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from andon.netpolicy.identity import Endpoint
from andon.netpolicy.policy import load_files, load_text
from andon.netpolicy.resolve import ANY_PEER, resolve

from corpus import CORPUS  # noqa: E402

POLICIES = CORPUS / "cilium-policies"
HOST = "10.0.0.1"
EPS = [
    Endpoint.make("web", "netns", {"app": "web"}, ["10.0.0.2"], ifname="h-web"),
    Endpoint.make("fe", "netns", {"app": "fe"}, ["10.0.0.3"], ifname="h-fe"),
    Endpoint.make("mon", "container", {"app": "mon"}, ["10.0.0.4"]),
    Endpoint.make("db", "cgroup", {"app": "db", "env": "prod"}, ["10.0.0.5"], cgroup="/sys/fs/cgroup/db"),
]


def cnp(name: str, spec: str, kind: str = "CiliumNetworkPolicy") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{body}\n"


def model(*texts: str, endpoints=EPS):
    policies = []
    for i, t in enumerate(texts):
        r = load_text(t, f"p{i}.yaml")
        assert r.ok, r.render()
        policies += r.policies
    return resolve(endpoints, policies, host_addresses=[HOST])


FE_TO_WEB_80 = cnp("web-80", """
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: fe}}]
  toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""")


def test_default_deny_switched_on_by_one_rule():
    m = model(FE_TO_WEB_80)
    v = m.decide("fe", "web", "TCP", 80, "ingress")
    assert (v.verdict, v.policy, v.rule, v.match_type) == ("FORWARDED", "web-80", 0, "L3_L4")
    v = m.decide("fe", "web", "TCP", 81, "ingress")
    assert (v.verdict, v.reason, v.drop_reason_desc, v.match_type) == ("DROPPED", "default deny by web-80", "POLICY_DENIED", "NONE")
    assert m.decide("mon", "web", "TCP", 80, "ingress").verdict == "DROPPED"
    # web's egress and db's ingress are not selected by any rule: no default deny there
    v = m.decide("web", "db", "TCP", 5432, "egress")
    assert (v.verdict, v.reason) == ("FORWARDED", "no policy selects web for egress")
    assert m.decide("web", "db", "TCP", 5432, "ingress").verdict == "FORWARDED"
    assert m.endpoints["web"].default_deny == {"ingress": ["web-80"], "egress": []}


def test_two_rules_add_up():
    mon = cnp("web-mon", """
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: mon}}]
""")
    m = model(FE_TO_WEB_80, mon)
    assert m.decide("fe", "web", "TCP", 80, "ingress").policy == "web-80"
    v = m.decide("mon", "web", "UDP", 9999, "ingress")
    assert (v.verdict, v.policy, v.match_type) == ("FORWARDED", "web-mon", "L3_ONLY")
    assert m.decide("fe", "web", "TCP", 22, "ingress").verdict == "DROPPED"
    assert m.endpoints["web"].default_deny["ingress"] == ["web-80", "web-mon"]


def test_deny_wins_and_conflict_reported():
    text = cnp("ssh", """
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: fe}}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: fe}}]
  toPorts: [{ports: [{port: "22", protocol: TCP}]}]
""")
    r = load_text(text)
    assert r.ok and r.codes("warning") == ["NP_CONFLICT"]
    assert "deny wins" in r.warnings[0].message and "22/TCP" in r.warnings[0].message
    m = resolve(EPS, r.policies)
    v = m.decide("fe", "web", "TCP", 22, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.match_type, v.reason) == ("DROPPED", "POLICY_DENY", "L3_L4", "denied by ssh rule 0 (ingressDeny item 0)")
    assert m.decide("fe", "web", "TCP", 23, "ingress").verdict == "FORWARDED"
    assert [p.code for p in m.problems] == ["NP_CONFLICT"]


def test_egress_empty_entry_is_default_deny_only():
    [p] = load_files([POLICIES / "l3__egress-default-deny__egress-default-deny.yaml"]).policies
    eps = [Endpoint.make("r", "netns", {"role": "restricted"}, ["10.0.0.9"]), *EPS]
    m = resolve(eps, [p], host_addresses=[HOST])
    assert m.endpoints["r"].entries == []
    for dst in ("web", "8.8.8.8", HOST):
        v = m.decide("r", dst, "UDP", 53, "egress")
        assert (v.verdict, v.reason) == ("DROPPED", "default deny by deny-all-egress")
    assert m.decide("web", "r", "TCP", 1, "ingress").verdict == "FORWARDED"  # ingress untouched


def test_from_endpoints_wildcard_is_every_managed_endpoint():
    [p] = load_files([POLICIES / "l3__ingress-allow-all__ingress-allow-all.yaml"]).policies
    eps = [Endpoint.make("v", "netns", {"role": "victim"}, ["10.0.0.9"]), *EPS]
    m = resolve(eps, [p], host_addresses=[HOST])
    for src in ("web", "fe", "db", "v"):
        assert m.decide(src, "v", "TCP", 443, "ingress").verdict == "FORWARDED"
    assert m.decide("1.2.3.4", "v", "TCP", 443, "ingress").verdict == "DROPPED"
    assert m.decide(HOST, "v", "TCP", 443, "ingress").verdict == "DROPPED"


def test_cidr_with_except():
    [p] = load_files([POLICIES / "l3__cidr__cidr.yaml"]).policies
    eps = [Endpoint.make("s", "netns", {"app": "myService"}, ["192.168.0.2"]), *EPS]
    m = resolve(eps, [p], host_addresses=[HOST])
    got = {ip: m.decide("s", ip, "TCP", 443, "egress").verdict for ip in
           ("20.1.1.1", "20.1.1.2", "10.1.2.3", "10.95.255.255", "10.96.0.1", "10.111.255.255", "10.112.0.0", "11.0.0.1")}  # fmt: skip
    assert got == {
        "20.1.1.1": "FORWARDED", "20.1.1.2": "DROPPED", "10.1.2.3": "FORWARDED", "10.95.255.255": "FORWARDED",
        "10.96.0.1": "DROPPED", "10.111.255.255": "DROPPED", "10.112.0.0": "FORWARDED", "11.0.0.1": "DROPPED",
    }  # fmt: skip
    # CIDRs select the world, not managed endpoints or the host inside the prefix
    assert m.decide("s", "10.0.0.2", "TCP", 443, "egress").verdict == "DROPPED"
    assert m.decide("s", HOST, "TCP", 443, "egress").verdict == "DROPPED"


def entity_model(entity: str):
    return model(cnp(f"to-{entity}", f"""
endpointSelector: {{matchLabels: {{app: web}}}}
egress:
- toEntities: [{entity}]
"""))


def test_entities():
    cases = {"world": ("8.8.8.8",), "host": (HOST,), "cluster": ("fe", "db", HOST), "all": ("fe", "db", HOST, "8.8.8.8")}
    for entity, allowed in cases.items():
        m = entity_model(entity)
        for dst in ("fe", "db", HOST, "8.8.8.8"):
            v = m.decide("web", dst, "TCP", 80, "egress")
            assert v.verdict == ("FORWARDED" if dst in allowed else "DROPPED"), (entity, dst)
    assert entity_model("all").decide("web", "8.8.8.8", "ICMP", 8, "egress").match_type == "ALL"


def test_world_deny_with_allow_all():
    [p] = load_files([POLICIES / "l3__entities__from_world_deny.yaml"]).policies
    m = resolve(EPS, [p], host_addresses=[HOST])
    assert m.decide("fe", "web", "TCP", 80, "ingress").verdict == "FORWARDED"
    assert m.decide(HOST, "web", "TCP", 80, "ingress").verdict == "FORWARDED"
    v = m.decide("203.0.113.9", "web", "TCP", 80, "ingress")
    assert (v.verdict, v.policy, v.drop_reason_desc) == ("DROPPED", "external-lockdown", "POLICY_DENY")


def test_port_range_with_endport_and_any_protocol():
    m = model(cnp("range", """
endpointSelector: {matchLabels: {app: web}}
ingress:
- toPorts: [{ports: [{port: "8000", endPort: 8010, protocol: TCP}, {port: "53"}]}]
"""))
    want = {("TCP", 7999): "DROPPED", ("TCP", 8000): "FORWARDED", ("TCP", 8010): "FORWARDED", ("TCP", 8011): "DROPPED",
            ("UDP", 8005): "DROPPED", ("UDP", 53): "FORWARDED", ("TCP", 53): "FORWARDED", ("SCTP", 53): "FORWARDED",
            ("ICMP", 53): "DROPPED"}  # fmt: skip
    for (proto, port), verdict in want.items():
        v = m.decide("8.8.8.8", "web", proto, port, "ingress")  # L4-only: any peer, world too
        assert v.verdict == verdict, (proto, port)
        if verdict == "FORWARDED":
            assert v.match_type == "L4_ONLY"


def test_icmp_type():
    m = model(cnp("ping", """
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: fe}}]
  icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
"""))
    assert m.decide("fe", "web", "ICMP", 8, "ingress").verdict == "FORWARDED"
    assert m.decide("fe", "web", "ICMP", 0, "ingress").verdict == "DROPPED"
    assert m.decide("fe", "web", "ICMPv6", 128, "ingress").verdict == "FORWARDED"
    assert m.decide("fe", "web", "TCP", 8, "ingress").verdict == "DROPPED"


def test_enable_default_deny_false():
    m = model(cnp("no-dd", """
endpointSelector: {matchLabels: {app: web}}
enableDefaultDeny: {ingress: false}
ingressDeny:
- fromEndpoints: [{matchLabels: {app: fe}}]
"""))
    assert not m.endpoints["web"].is_default_deny("ingress")
    assert m.decide("fe", "web", "TCP", 80, "ingress").verdict == "DROPPED"
    v = m.decide("mon", "web", "TCP", 80, "ingress")
    assert (v.verdict, v.match_type) == ("FORWARDED", "NONE")
    # another rule without the switch turns it on again
    m2 = model(cnp("no-dd", """
endpointSelector: {matchLabels: {app: web}}
enableDefaultDeny: {ingress: false}
ingress: [{fromEndpoints: [{matchLabels: {app: fe}}]}]
"""), FE_TO_WEB_80)
    assert m2.endpoints["web"].default_deny["ingress"] == ["web-80"]


def test_audit_endpoint():
    eps = [Endpoint.make("web", "netns", {"app": "web"}, ["10.0.0.2"], audit=True), EPS[1]]
    m = model(FE_TO_WEB_80, endpoints=eps)
    v = m.decide("fe", "web", "TCP", 81, "ingress")
    assert (v.verdict, v.drop_reason_desc, v.allowed) == ("AUDIT", "POLICY_DENIED", True)


def test_selects_nothing_warning():
    m = model(cnp("ghost", """
endpointSelector: {matchLabels: {app: nobody}}
ingress: [{fromEndpoints: [{matchLabels: {app: nobody-either}}]}]
"""), FE_TO_WEB_80.replace("app: fe", "app: ghost"))
    msgs = sorted(p.message for p in m.problems if p.code == "NP_SELECTS_NOTHING")
    assert msgs == [
        "endpointSelector {any:app in (nobody)} of ghost rule 0 selects no endpoint",
        "peer selector {any:app in (ghost)} of web-80 rule 0 selects no endpoint",
        "peer selector {any:app in (nobody-either)} of ghost rule 0 selects no endpoint",
    ]
    assert m.problems[0].line == 6


def test_named_port_allows_nothing_and_l7_keeps_l4():
    text = cnp("named", """
endpointSelector: {matchLabels: {app: web}}
ingress:
- toPorts: [{ports: [{port: http, protocol: TCP}]}]
- toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
""")
    r = load_text(text)
    assert r.ok and sorted(r.codes("warning")) == ["NP_NOT_ENFORCED", "NP_NOT_ENFORCED"]
    m = resolve(EPS, r.policies)
    assert m.decide("fe", "web", "TCP", 80, "ingress").verdict == "DROPPED"
    assert m.decide("fe", "web", "TCP", 8080, "ingress").verdict == "FORWARDED"


def _datapath_lookup(m, ep_name, peer_ip, proto, port, direction):
    """What the kernel does: ip -> identity by longest prefix, then deny before allow."""
    cache = m.ipcache()
    ip = ipaddress.ip_address(peer_ip)
    best = max((n for n in cache if n.version == ip.version and ip in n), key=lambda n: n.prefixlen, default=None)
    peer = cache[best] if best is not None else 2
    ep = m.endpoints[ep_name]
    ents = [e for e in m.datapath_entries() if e.ep_identity == ep.identity.id and e.direction == direction
            and e.peer_identity in (ANY_PEER, peer) and (e.proto == 0 or (e.proto == proto and e.port_lo <= port <= e.port_hi))]  # fmt: skip
    if any(e.verdict == "DENY" for e in ents):
        return "DROPPED"
    if any(e.verdict == "ALLOW" for e in ents):
        return "FORWARDED"
    return "DROPPED" if ep.is_default_deny(direction) else "FORWARDED"


def test_datapath_entries_agree_with_decide():
    [cidr] = load_files([POLICIES / "l3__cidr__cidr.yaml"]).policies
    extra = cnp("more", """
endpointSelector: {matchLabels: {app: myService}}
egress:
- toCIDR: [10.1.0.0/16]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
- toEntities: [host]
egressDeny:
- toCIDRSet: [{cidr: 10.1.2.0/24}]
""")
    r = load_text(extra)
    eps = [Endpoint.make("s", "netns", {"app": "myService"}, ["192.168.0.2"]), *EPS]
    m = resolve(eps, [cidr, *r.policies], host_addresses=[HOST])
    for ip in ("20.1.1.1", "10.1.2.3", "10.1.3.3", "10.96.0.1", "10.0.0.2", HOST, "9.9.9.9", "10.200.0.1"):
        for port in (443, 80):
            assert _datapath_lookup(m, "s", ip, 6, port, "egress") == m.decide("s", ip, "TCP", port, "egress").verdict, (ip, port)


_ACTIONS = st.sampled_from(["ingress", "ingressDeny"])
_PEERS = st.sampled_from(["fromEndpoints: [{matchLabels: {app: fe}}]", "fromEntities: [world]", "fromEntities: [all]",
                          "fromCIDR: [8.8.0.0/16]", ""])  # fmt: skip
_PORTS = st.one_of(st.just(None), st.tuples(st.sampled_from(["TCP", "UDP", "ANY"]), st.integers(1, 100), st.integers(0, 20)))


@st.composite
def _policy(draw):
    lines = ["endpointSelector: {matchLabels: {app: web}}"]
    by: dict[str, list[str]] = {}
    for _ in range(draw(st.integers(1, 5))):
        action, peer, ports = draw(_ACTIONS), draw(_PEERS), draw(_PORTS)
        item = []
        if peer:
            item.append(peer)
        if ports is not None:
            proto, port, span = ports
            item.append(f'toPorts: [{{ports: [{{port: "{port}", endPort: {port + span}, protocol: {proto}}}]}}]')
        if not item:
            item.append("fromEntities: [host]")
        by.setdefault(action, []).append("- " + "\n  ".join(item))
    for action, items in by.items():
        lines.append(f"{action}:")
        lines.extend(items)
    return cnp("prop", "\n".join(lines))


@settings(max_examples=150, deadline=None)
@given(_policy(), st.sampled_from(["fe", "8.8.4.4", "1.1.1.1", HOST, "mon"]), st.sampled_from(["TCP", "UDP"]), st.integers(0, 130))
def test_decide_never_allows_what_a_matching_deny_forbids(text, src, proto, port):
    r = load_text(text)
    assert r.ok, r.render()
    m = resolve(EPS, r.policies, host_addresses=[HOST])
    v = m.decide(src, "web", proto, port, "ingress")
    peer_id = m.identity_of(src) if src not in m.endpoints else m.endpoints[src].identity.id
    peer_ip = ipaddress.ip_address(m.endpoints[src].endpoint.addresses[0] if src in m.endpoints else src)
    pnum = {"TCP": 6, "UDP": 17}[proto]
    for e in m.endpoints["web"].entries:
        if e.verdict != "DENY" or not e.l4_matches(pnum, port):
            continue
        if isinstance(e.peer, int):
            hit = e.peer in (ANY_PEER, peer_id)
        else:
            hit = peer_id == 2 and peer_ip in e.peer
        if hit:
            assert v.verdict == "DROPPED" and v.drop_reason_desc == "POLICY_DENY", (text, src, proto, port)
