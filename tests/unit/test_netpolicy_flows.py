"""Flows without a kernel: hand-built records and state -> rows, Hubble's JSON and compact lines,
the filters, L7 flows from protocol rows, and ``andon observe`` over a store written here."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from andon.cli.main import main
from andon.errors import UsageError
from andon.netpolicy.datapath import Flow
from andon.netpolicy.flows import (
    EndpointInfo,
    FlowContext,
    FlowFilter,
    LabelSelector,
    compact,
    dns_l7_rows,
    flow_row,
    http_l7_rows,
    to_hubble,
)
from andon.netpolicy.resolve import DatapathEntry
from andon.store.settings import StoreSettings
from andon.store.store import Store

UTC = dt.timezone.utc
T = 1_700_000_000_123_456_789  # Nov 14 22:13:20.123 UTC
FE = EndpointInfo("frontend", 256, 11, "default", ("k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=default"),
                  ("10.0.0.3",))
API = EndpointInfo("api", 257, 12, "", ("k8s:app=api",), ("10.0.0.2",))
ENTRIES = [
    DatapathEntry(257, 256, "ingress", 6, 8080, 8080, "ALLOW", False, "api-allows-frontend", 0, 0, "L3_L4"),
    DatapathEntry(257, 256, "ingress", 6, 9000, 9100, "ALLOW", False, "api-allows-frontend", 0, 1, "L3_L4"),
    DatapathEntry(257, 0, "ingress", 6, 22, 22, "DENY", False, "no-ssh", 1, 0, "L4_ONLY"),
]


def ctx(entries=ENTRIES) -> FlowContext:
    return FlowContext([FE, API], {1: "api-allows-frontend", 2: "no-ssh"},
                       {"api-allows-frontend": "CiliumNetworkPolicy", "no-ssh": "CiliumClusterwideNetworkPolicy"},
                       entries)


def rec(*, sport=40000, dport=8080, verdict=1, reason=0, policy=1, rule=0, match=2, flags=0x02, direction=0,
        reply=False, ct_new=True, src=("10.0.0.3", 256), dst=("10.0.0.2", 257), ifindex=12, proto=6,
        icmp=(0, 0), t=T) -> Flow:
    return Flow(t, ifindex, src[1], dst[1], policy, rule, 60, src[0], dst[0], sport, dport, 4, proto, verdict, reason,
                direction, reply, match, flags, icmp[0], icmp[1], 1 if ct_new else 0)


def test_allowed_syn_is_a_policy_verdict_naming_policy_rule_and_item():
    row = flow_row(rec(dport=9050), ctx(), "node1")
    assert row["decided_by"] == "allowed by api-allows-frontend rule 0 (ingress item 1)"
    assert compact(row, UTC) == (
        "Nov 14 22:13:20.123: default/frontend:40000 (ID:256) -> api:9050 (ID:257) policy-verdict:L3-L4 INGRESS "
        "ALLOWED (TCP Flags: SYN; allowed by api-allows-frontend rule 0 (ingress item 1))")
    j = to_hubble(row)
    f = j["flow"]
    assert j["time"] == f["time"] == "2023-11-14T22:13:20.123456789Z" and j["node_name"] == "node1"
    assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4" and f["traffic_direction"] == "INGRESS"
    assert f["IP"] == {"source": "10.0.0.3", "destination": "10.0.0.2", "ipVersion": "IPv4"}
    assert f["l4"] == {"TCP": {"source_port": 40000, "destination_port": 9050, "flags": {"SYN": True}}}
    assert f["source"] == {"ID": 11, "identity": 256, "namespace": "default",
                           "labels": ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=default"],
                           "pod_name": "frontend"}
    assert f["destination"] == {"ID": 12, "identity": 257, "labels": ["k8s:app=api"], "pod_name": "api"}
    assert f["event_type"] == {"type": 5} and f["policy_match_type"] == 2 and f["is_reply"] is False
    assert f["ingress_allowed_by"][0]["name"] == "api-allows-frontend"
    assert f["ingress_allowed_by"][0]["rule"] == "rule 0 (ingress item 1)"
    assert "drop_reason_desc" not in f and f["Summary"] == "TCP Flags: SYN"


def test_default_deny_drop_names_the_policy_that_switched_it_on():
    row = flow_row(rec(dport=5432, verdict=2, reason=133, match=0), ctx())
    assert row["policy_rule"] == "default deny" and row["decided_by"] == "default deny by api-allows-frontend"
    assert compact(row, UTC) == (
        "Nov 14 22:13:20.123: default/frontend:40000 (ID:256) -> api:5432 (ID:257) Policy denied DROPPED "
        "(TCP Flags: SYN; default deny by api-allows-frontend)")
    f = to_hubble(row)["flow"]
    assert f["drop_reason_desc"] == "POLICY_DENIED" and f["drop_reason"] == 133
    assert f["event_type"] == {"type": 1, "sub_type": 133}
    assert f["ingress_denied_by"] == [{"name": "api-allows-frontend", "kind": "CiliumNetworkPolicy",
                                       "rule": "default deny", "labels": [
                                           "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                                           "k8s:io.cilium.k8s.policy.name=api-allows-frontend"]}]
    assert "ingress_allowed_by" not in f


def test_a_fragment_without_its_first_dropped_by_default_deny_says_so_as_cilium():
    row = flow_row(rec(sport=0, dport=0, proto=17, verdict=2, reason=175, match=0), ctx())
    assert row["decided_by"] == "default deny by api-allows-frontend"
    assert "First logical datagram fragment not found DROPPED" in compact(row, UTC)
    f = to_hubble(row)["flow"]
    assert (f["drop_reason"], f["drop_reason_desc"]) == (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND")
    assert f["event_type"] == {"type": 1, "sub_type": 175}


def test_deny_rule_drop_names_rule_and_deny_item():
    row = flow_row(rec(dport=22, verdict=2, reason=181, policy=2, rule=1, match=3), ctx())
    assert row["decided_by"] == "denied by no-ssh rule 1 (ingressDeny item 0)"
    assert row["policy_kind"] == "CiliumClusterwideNetworkPolicy"
    assert "Policy denied by denylist DROPPED" in compact(row, UTC)
    assert to_hubble(row)["flow"]["drop_reason_desc"] == "POLICY_DENY"


def test_without_resolved_entries_the_rule_is_named_by_number():
    row = flow_row(rec(), ctx(entries=None))
    assert row["policy_rule"] == "rule 0" and row["decided_by"] == "allowed by api-allows-frontend rule 0"


def test_reply_flips_ends_and_arrow_and_is_a_trace_with_hubble_flag_order():
    r = rec(sport=8080, dport=40000, flags=0x12, direction=1, reply=True, ct_new=False, src=("10.0.0.2", 257),
            dst=("10.0.0.3", 256))
    row = flow_row(r, ctx())
    # the decision was the ingress one of the connection's first packet (sport is its port)
    assert row["decided_by"] == "allowed by api-allows-frontend rule 0 (ingress item 0)"
    assert compact(row, UTC) == ("Nov 14 22:13:20.123: default/frontend:40000 (ID:256) <- api:8080 (ID:257) "
                                 "from-endpoint FORWARDED (TCP Flags: SYN, ACK)")
    f = to_hubble(row)["flow"]
    assert f["is_reply"] is True and f["trace_observation_point"] == "FROM_ENDPOINT"
    assert f["event_type"] == {"type": 4, "sub_type": 5} and "policy_match_type" not in f


def test_world_and_host_peers_and_icmp_summary():
    r = rec(proto=1, sport=7, dport=7, flags=0, icmp=(8, 0), src=("10.0.0.3", 256), dst=("1.1.1.1", 2),
            direction=1, ifindex=11, policy=0, match=0)
    row = flow_row(r, ctx())
    assert row["decided_by"] == "no policy selects frontend for egress"
    assert compact(row, UTC) == ("Nov 14 22:13:20.123: default/frontend (ID:256) -> 1.1.1.1 (world) "
                                 "policy-verdict:none EGRESS ALLOWED (ICMPv4 EchoRequest; no policy selects "
                                 "frontend for egress)")
    f = to_hubble(row)["flow"]
    assert f["l4"] == {"ICMPv4": {"type": 8}} and f["destination"] == {"identity": 2, "labels": ["reserved:world"]}


def test_label_selectors():
    labels = ["k8s:app=web", "k8s:tier=front", "container:env=prod"]
    assert LabelSelector.parse("app=web").matches(labels)
    assert LabelSelector.parse("k8s:app=web,tier").matches(labels)
    assert not LabelSelector.parse("k8s:env=prod").matches(labels)  # env is a container: label
    assert LabelSelector.parse("env==prod,!db").matches(labels)
    assert not LabelSelector.parse("tier!=front").matches(labels)
    with pytest.raises(UsageError):
        LabelSelector.parse(" , ")


def test_filters_on_rows():
    c = ctx()
    allowed = flow_row(rec(), c)
    dropped = flow_row(rec(dport=5432, verdict=2, reason=133, match=0), c)
    rows = [allowed, dropped]
    assert [r["destination_port"] for r in rows if FlowFilter(verdicts=frozenset({"DROPPED"})).matches(r)] == [5432]
    assert all(FlowFilter(to_labels=(LabelSelector.parse("app=api"),)).matches(r) for r in rows)
    assert not any(FlowFilter(from_labels=(LabelSelector.parse("app=api"),)).matches(r) for r in rows)
    assert [r["verdict"] for r in rows if FlowFilter(ports=frozenset({8080})).matches(r)] == ["FORWARDED"]
    assert [r["verdict"] for r in rows if FlowFilter(types=(("drop", ""),)).matches(r)] == ["DROPPED"]
    assert [r["verdict"] for r in rows if FlowFilter(types=(("policy-verdict", "l3-l4"),)).matches(r)] == ["FORWARDED"]
    assert not any(FlowFilter(protocols=frozenset({"udp"})).matches(r) for r in rows)
    assert not FlowFilter(since_ns=T + 1).matches(allowed) and FlowFilter(until_ns=T).matches(allowed)


HTTP_ROW = {"time_": T, "local_addr": "::ffff:10.0.0.2", "local_port": 8080, "remote_addr": "10.0.0.3",
            "remote_port": 40000, "trace_role": 2, "major_version": 1, "minor_version": 1,
            "req_headers": '{"Host":"api:8080","User-Agent":"curl"}', "req_method": "GET", "req_path": "/x?q=1",
            "resp_headers": '{"Content-Length":"3"}', "resp_status": 404, "latency": 12_000_000}


def test_http_row_becomes_request_and_response_flows():
    req, resp = http_l7_rows(HTTP_ROW, ctx(), "n")
    assert req["time_"] == T - 12_000_000 and resp["time_"] == T
    assert compact(req, UTC) == ("Nov 14 22:13:20.111: default/frontend:40000 (ID:256) -> api:8080 (ID:257) "
                                 "http-request FORWARDED (HTTP/1.1 GET http://api:8080/x?q=1)")
    assert compact(resp, UTC) == ("Nov 14 22:13:20.123: default/frontend:40000 (ID:256) <- api:8080 (ID:257) "
                                  "http-response FORWARDED (HTTP/1.1 404 12ms (GET http://api:8080/x?q=1))")
    f = to_hubble(resp)["flow"]
    assert f["Type"] == "L7" and f["event_type"] == {"type": 129} and f["traffic_direction"] == "INGRESS"
    assert f["l7"] == {"type": "RESPONSE", "latency_ns": "12000000",
                       "http": {"code": 404, "method": "GET", "url": "http://api:8080/x?q=1", "protocol": "HTTP/1.1",
                                "headers": [{"key": "Content-Length", "value": "3"}]}}
    assert f["source"]["pod_name"] == "api" and f["destination"]["pod_name"] == "frontend"
    assert FlowFilter(http_status=("4+",)).matches(resp) and not FlowFilter(http_status=("40+",)).matches(req)
    assert FlowFilter(http_status=("404",)).matches(resp) and not FlowFilter(http_status=("5+",)).matches(resp)
    assert FlowFilter(types=(("l7", "http"),), protocols=frozenset({"http"})).matches(req)


def test_rows_between_unmanaged_addresses_are_not_flows_and_dns_rows_are():
    assert http_l7_rows(dict(HTTP_ROW, local_addr="192.0.2.1", remote_addr="192.0.2.2"), ctx()) == []
    dns = {"time_": T, "local_addr": "10.0.0.3", "local_port": 5353, "remote_addr": "10.0.0.2", "remote_port": 53,
           "trace_role": 1, "req_body": '{"queries":[{"name":"example.com","type":"A"}]}',
           "resp_header": '{"rcode":0}', "resp_body": '{"answers":[{"name":"example.com","type":"A","addr":"1.2.3.4"}]}',
           "latency": 1_000_000}
    req, resp = dns_l7_rows(dns, ctx())
    assert req["summary"] == "DNS Query example.com. A"
    assert resp["summary"] == 'DNS Answer "1.2.3.4" (Query example.com. A)'
    assert to_hubble(resp)["flow"]["l7"]["dns"] == {"query": "example.com.", "ips": ["1.2.3.4"], "qtypes": ["A"],
                                                    "observation_source": "socket"}
    assert resp["traffic_direction"] == "EGRESS" and resp["source_name"] == "api"
    bad = dict(dns, req_body="not json", resp_body="{", resp_header="[]")
    assert [r["summary"] for r in dns_l7_rows(bad, ctx())] == ["DNS Query", 'DNS Answer "" (Query)']


def _state(tmp: Path) -> Path:
    d = tmp / "state"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({
        "format": 1, "policy_files": {}, "policy_ids": {"api-allows-frontend": 1},
        "identities": {"identities": {"256": ["k8s:app=frontend"], "257": ["k8s:app=api"]}},
        "endpoints": {"frontend": {"labels": ["app=frontend"], "addresses": ["10.0.0.3"], "ifindex": 11},
                      "api": {"labels": ["app=api"], "addresses": ["10.0.0.2"], "ifindex": 12}}}))
    return d


def test_andon_observe_reads_the_store_merges_l7_and_filters(tmp_path, capsys):
    c = ctx(entries=None)
    store = Store(StoreSettings(data_dir=tmp_path / "data", control_socket=False))
    store.append("flows", [flow_row(rec(t=T + 5_000_000), c, "n"),
                           flow_row(rec(dport=5432, verdict=2, reason=133, match=0, t=T + 20_000_000), c, "n")])
    store.append("http_events", [HTTP_ROW])
    store.close()
    state = _state(tmp_path)
    base = ["observe", "--data-dir", str(tmp_path / "data"), "--state-dir", str(state), "--utc"]
    assert main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(") ", 2)[2].split(" (")[0] for ln in lines] == [
        "http-request FORWARDED", "http-response FORWARDED", "policy-verdict:L3-L4 INGRESS ALLOWED",
        "Policy denied DROPPED"]  # time order: request T-12ms, response T, then T+5ms, T+20ms
    assert main(base + ["--verdict", "dropped", "-o", "json"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["flow"]["l4"]["TCP"]["destination_port"] for o in out] == [5432]
    assert main(base + ["--type", "l7", "--last", "1"]) == 0
    assert "http-response" in capsys.readouterr().out
    assert main(base + ["--type", "bogus"]) == 2
    assert main(base + ["--since", "yesterday-ish"]) == 2
    assert main(["observe", "--data-dir", str(tmp_path / "nothing")]) == 2


def test_cgroup_endpoint_flows_are_named_by_cgroup_id():
    """A cgroup endpoint's flows have ifindex 0 and its cgroup id: they name that endpoint even
    where another endpoint has the same labels (the same identity) and the address is the host's."""
    from dataclasses import replace

    from andon.netpolicy.state import NetpolicyState

    state = NetpolicyState(Path("/nonexistent"), endpoints={
        "batch": {"kind": "cgroup", "cgroup": "/sys/fs/cgroup/unified/batch", "cgroup_id": 4242, "ifindex": 0,
                  "ifname": None, "labels": ["app=batch"], "addresses": []},
        "alpha": {"kind": "netns", "netns": "x", "ifname": "veth-x", "ifindex": 31, "labels": ["app=batch"],
                     "addresses": ["10.0.0.9"]},
        "client": {"kind": "netns", "netns": "c", "ifname": "veth-c", "ifindex": 32, "labels": ["app=client"],
                   "addresses": ["10.0.0.7"]},
    }, policy_ids={"batch-egress": 3})
    c = FlowContext.from_state(state, resolve_rules=False)
    batch = next(e for e in c.endpoints if e.name == "batch")
    assert batch.cgroup_id == 4242 and batch.id == 0
    assert batch.identity == next(e for e in c.endpoints if e.name == "alpha").identity
    ident, client = batch.identity, next(e for e in c.endpoints if e.name == "client").identity
    # a denied connect() at the cgroup: no source address yet, egress, ifindex 0
    drop = replace(rec(dport=9090, verdict=2, reason=133, policy=3, match=0, direction=1, src=("0.0.0.0", ident),
                       dst=("10.0.0.7", client), ifindex=0, ct_new=False), cgroup_id=4242)
    row = flow_row(drop, c)
    assert row["endpoint"] == "batch" and row["source_name"] == "batch" and row["destination_name"] == "client"
    assert row["source_labels"] == '["k8s:app=batch"]' and row["decided_by"] == "default deny by batch-egress"
    f = to_hubble(row)["flow"]
    assert f["source"]["pod_name"] == "batch" and f["source"]["labels"] == ["k8s:app=batch"]
    assert "interface" not in f  # no veth
    # ingress into the cgroup endpoint from the host's address: still batch, not alpha (first of that identity by name)
    inbound = replace(rec(dport=5000, direction=0, src=("10.0.0.7", client), dst=("192.0.2.1", ident), ifindex=0,
                          policy=0, match=0), cgroup_id=4242)
    row = flow_row(inbound, c)
    assert row["endpoint"] == "batch" and row["destination_name"] == "batch"
    # the same flow seen at alpha's veth names alpha; an unknown cgroup id names by identity
    assert flow_row(replace(inbound, ifindex=31, cgroup_id=0), c)["endpoint"] == "alpha"
    assert flow_row(replace(inbound, cgroup_id=999), c)["endpoint"] == "alpha"  # by identity: the first by name
