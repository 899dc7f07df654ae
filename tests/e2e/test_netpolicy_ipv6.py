"""IPv6 endpoints through ``andon endpoint``/``andon policy`` (as root).

Four namespaces on one bridge of the test's (one random fdXX::/64, addresses ``nodad``, none on
the host, so nothing is routed and no sysctl changes): endpoints ``A`` (role=backend) and ``B``
(role=frontend), and two unmanaged "world" peers ``W`` and ``X``. An L4 rule (backend takes
frontend on 80/TCP), then an IPv6 CIDR rule with an exception and an ICMPv6 echo rule on A's
egress. Neighbour discovery must keep working under default deny, or nothing would. Every
probe must also agree with the model's ``decide_flow``.
"""

from __future__ import annotations

import os
import random
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

PREFIX = f"fd{random.randint(0, 255):02x}:{random.randint(0, 0xFFFF):x}:{random.randint(0, 0xFFFF):x}:1"
ADDRS = {"A": f"{PREFIX}::a", "B": f"{PREFIX}::b", "W": f"{PREFIX}::100", "X": f"{PREFIX}::200"}
CIDR_POLICY = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-out-v6
spec:
  endpointSelector: {{matchLabels: {{role: backend}}}}
  egress:
  - toCIDRSet:
    - cidr: {PREFIX}::/64
      except: ["{ADDRS['X']}/128"]
  - icmps: [{{fields: [{{type: EchoRequest, family: IPv6}}]}}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("npv6")
    lab = Lab(tmp / "state", Path("/sys/fs/bpf") / f"andon-v6-{os.getpid()}")
    try:
        for name, addr in ADDRS.items():
            lab.add_v6(name, addr, ports=[80, 81, 8080])
        lab.endpoint("A", ["role=backend"])
        lab.endpoint("B", ["role=frontend"])
        yield lab
    finally:
        lab.close()


def outcomes(lab: Lab, probes: list[tuple[str, str, str, int]]) -> tuple[list[bool], list[bool]]:
    """(what got through, what the model says) for each probe."""
    _, res = compute(NetpolicyState.load(lab.state_dir))
    model = [res.decide_flow(ADDRS[s], ADDRS[d], proto, port).allowed for s, d, proto, port in probes]
    got = [lab.reach(s, d, proto, port, expect_pass=m) for (s, d, proto, port), m in zip(probes, model)]
    return got, model


def test_endpoints_have_their_ipv6_addresses(lab):
    import json

    rows = {r["name"]: r for r in json.loads(lab.andon("endpoint", "list", "-o", "json").stdout)}
    assert rows["A"]["addresses"] == [ADDRS["A"]] and rows["B"]["addresses"] == [ADDRS["B"]]


def test_l4_rule_on_ipv6(lab):
    probes = [("B", "A", "TCP", 80), ("B", "A", "TCP", 81), ("W", "A", "TCP", 80), ("B", "A", "ICMPV6", 128),
              ("A", "B", "TCP", 8080)]
    assert outcomes(lab, probes)[0] == [True, True, True, True, True], "no policy: everything passes"
    combined = CORPUS / "cilium-policies" / "l4__l3_l4_combined.yaml"
    lab.andon("policy", "apply", str(combined))
    got, model = outcomes(lab, probes)
    # frontend on 80/TCP only; ICMPv6 echo is not in the rule; A's egress stays open
    assert got == model == [True, False, False, False, True]
    lab.andon("policy", "delete", "l4-rule")


def test_cidr_and_icmpv6_rules_on_ipv6(lab, tmp_path):
    from andon.netpolicy.datapath import Datapath, wait_flows

    path = tmp_path / "v6.yaml"
    path.write_text(CIDR_POLICY)
    lab.andon("policy", "apply", str(path))
    probes = [("A", "W", "TCP", 8080), ("A", "W", "UDP", 80), ("A", "X", "TCP", 8080), ("A", "B", "TCP", 8080),
              ("A", "W", "ICMPV6", 128), ("A", "B", "ICMPV6", 128), ("B", "A", "TCP", 80)]
    got, model = outcomes(lab, probes)
    # the /64 minus X; B is an endpoint, not a CIDR peer; echo requests go to anyone; A's ingress is open
    assert got == model == [True, True, False, False, True, True, True]
    # ASSERT: the drop to X is an IPv6 flow naming default deny
    dp = Datapath(pin_dir=lab.pin_dir)
    try:
        flows = wait_flows(dp, 100000, timeout=0.5)
        stats = dp.stats()
    finally:
        dp.close(detach=False)
    [drop] = [f for f in flows if f.dst_ip == ADDRS["X"] and f.dport == 8080 and f.tcp_flags == 0x02][:1]
    assert (drop.family, drop.verdict, drop.drop_reason_desc, drop.traffic_direction) == \
        (6, "DROPPED", "POLICY_DENIED", "EGRESS")
    def echo(dst: str) -> tuple[str, str]:
        [f] = [f for f in flows if f.proto == 58 and f.src_ip == ADDRS["A"] and f.dst_ip == ADDRS[dst]
                and f.icmp_type == 128 and f.traffic_direction == "EGRESS"]
        return f.verdict, f.policy_match_type

    # to W the CIDR entry (peer, any protocol) is more specific than the echo entry (any peer)
    assert echo("W") == ("FORWARDED", "L3_ONLY")
    assert echo("B") == ("FORWARDED", "L4_ONLY")
    assert stats["nd"] > 0, "neighbour discovery passed the default-deny endpoint (counted)"
    lab.andon("policy", "delete", "backend-out-v6")
