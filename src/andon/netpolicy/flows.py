"""Hubble-style flows: the policy datapath's verdicts, enriched, stored and printed.

    np_flows ring (pinned)  ->  decode_flow  ->  flow_row (FlowContext: names, labels,     ->  Store "flows"
                                                 identities, policy and rule from state.json)
    http_events / dns_events rows  ->  l7_rows (read time, same FlowContext)  ->  andon observe

Every record the kernel reports (a new connection, a drop, a first reply, FIN/RST) becomes one
row of the ``flows`` table (``andon.store.schema.FLOWS``) with Hubble's field names;
:func:`to_hubble` turns a row into Hubble's JSON (``observer.GetFlowsResponse``: ``{"flow":
{...}, "node_name", "time"}``, flow.proto's names and casing) and :func:`compact` into
``hubble observe``'s one-line format (``hubble/pkg/printer``):
``TIME: SRC (ID) -> DST (ID) TYPE VERDICT (SUMMARY)``.

How a record maps onto Hubble's event kinds: a drop is a *drop* event (type: Cilium's drop
reason text, "Policy denied"); a new connection allowed or audited is a *policy-verdict*
event (``policy-verdict:L3-L4 INGRESS ALLOWED``); everything else (replies, FIN/RST) is a
*trace* event at the endpoint (``to-endpoint`` / ``from-endpoint``). Unlike Hubble, which
cannot tell for drops, andon knows ``is_reply`` for every record (its conntrack decided), so
drops print ``->`` rather than ``<>``. After Hubble's summary the compact line names what
decided: ``allowed by P rule 0 (ingress item 0)``, ``denied by P rule 1 (ingressDeny item 0)``
or ``default deny by P`` (the policy that switched default deny on).

:class:`FlowService` is the agent's part: it opens the pinned ring when the pin directory
exists (and looks again every ``poll_interval`` if it does not, or if the pins were replaced),
reloads ``state.json`` when it changes, and appends rows to the store. The ring has one
consumer position: two readers (an agent and ``andon observe --follow`` without an agent)
would each see part of the flows, so only one should read at a time.
"""

from __future__ import annotations

import copy
import ctypes
import datetime as dt
import ipaddress
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datapath import DIR_EGRESS, DIR_INGRESS, DROP_FRAG_NOT_FOUND, DROP_POLICY, PROTO_NAMES, STAT_NAMES, Flow, decode_flow

log = logging.getLogger("andon.flows")

# -- Hubble's vocabulary ----------------------------------------------------------------------------
# Cilium's drop reason texts (pkg/monitor/api/drop.go) for the codes the datapath uses
DROP_REASON_TEXT = {133: "Policy denied", 135: "CT: Truncated or invalid header", 155: "CT: Map insertion failed",
                    175: "First logical datagram fragment not found", 181: "Policy denied by denylist"}
# pkg/monitor/api PolicyMatchType.String()
MATCH_TEXT = {"NONE": "none", "L3_ONLY": "L3-Only", "L3_L4": "L3-L4", "L4_ONLY": "L4-Only", "ALL": "all",
              "L3_PROTO": "L3-Proto", "PROTO_ONLY": "Proto-Only"}
MATCH_NUMBER = {"NONE": 0, "L3_ONLY": 1, "L3_L4": 2, "L4_ONLY": 3, "ALL": 4, "L3_PROTO": 5, "PROTO_ONLY": 6}
# pkg/monitor/api MessageType*: the numbers Hubble's JSON carries in event_type
EVENT_DROP, EVENT_TRACE, EVENT_POLICY_VERDICT, EVENT_L7 = "drop", "trace", "policy-verdict", "l7"
EVENT_NUMBER = {EVENT_DROP: 1, EVENT_TRACE: 4, EVENT_POLICY_VERDICT: 5, EVENT_L7: 129}
# trace observation points: TraceToLxc 0 "to-endpoint", TraceFromLxc 5 "from-endpoint"; flow.proto's enum names
TRACE_POINT = {"INGRESS": ("to-endpoint", 0, "TO_ENDPOINT"), "EGRESS": ("from-endpoint", 5, "FROM_ENDPOINT")}
# Hubble's summary order of TCP flags (threefour parser getTCPFlags), joined with ", "
TCP_FLAG_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")
TCP_FLAG_BITS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40,
                 "CWR": 0x80}
ICMP4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 5: "Redirect", 8: "EchoRequest", 11: "TimeExceeded",
               12: "ParameterProblem"}
ICMP6_TYPES = {1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded", 4: "ParameterProblem",
               128: "EchoRequest", 129: "EchoReply", 133: "RouterSolicitation", 134: "RouterAdvertisement",
               135: "NeighborSolicitation", 136: "NeighborAdvertisement"}
# Cilium's reserved identities (the ones a flow on one host can carry)
RESERVED_NAMES = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
                  7: "kube-apiserver", 8: "ingress", 9: "world-ipv4", 10: "world-ipv6"}
MIN_USER_IDENTITY = 256
NS_LABEL = "io.kubernetes.pod.namespace"
DNS_RCODES = {0: "NoError", 1: "FormErr", 2: "ServFail", 3: "NXDomain", 4: "NotImp", 5: "Refused"}


# -- what state.json tells about endpoints and policies ----------------------------------------------
@dataclass(frozen=True)
class EndpointInfo:
    """A flow's source or destination as Hubble's ``Endpoint``: ``id`` is the endpoint's host veth
    ifindex (Cilium's endpoint ID has no counterpart here; 0 for a cgroup endpoint, which has
    ``cgroup_id`` instead), ``labels`` canonical ``source:key=value``."""

    name: str
    identity: int
    id: int = 0
    namespace: str = ""
    labels: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    cgroup_id: int = 0


def reserved_endpoint(identity: int, extra_labels: Iterable[str] = ()) -> EndpointInfo:
    name = RESERVED_NAMES.get(identity, "")
    labels = tuple(sorted(set(extra_labels))) + ((f"reserved:{name}",) if name else ())
    if identity >= 1 << 24:  # a CIDR identity: its cidr: label, and it is still world
        labels = tuple(sorted(set(extra_labels) | {"reserved:world"}))
    return EndpointInfo("", identity, 0, "", labels)


def _norm_ip(addr: str) -> str:
    """``::ffff:10.0.0.1`` -> ``10.0.0.1``; anything unparsable stays as it is."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass
class FlowContext:
    """Names for numbers: endpoints by address, identity and ifindex; policy ids -> names and kinds;
    the resolved datapath entries (to name a rule's item). Built from ``state.json``
    (:meth:`from_state`) or by hand in tests."""

    endpoints: list[EndpointInfo] = field(default_factory=list)
    policy_names: dict[int, str] = field(default_factory=dict)
    policy_kinds: dict[str, str] = field(default_factory=dict)
    entries: list[Any] | None = None  # resolve.DatapathEntry; None: rules are named "rule N" only
    cidr_labels: dict[int, tuple[str, ...]] = field(default_factory=dict)
    host_addresses: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.by_address = {_norm_ip(a): ep for ep in self.endpoints for a in ep.addresses}
        self.by_identity: dict[int, EndpointInfo] = {}
        for ep in self.endpoints:
            self.by_identity.setdefault(ep.identity, ep)
        self.by_id = {ep.id: ep for ep in self.endpoints if ep.id}
        self.by_cgroup = {ep.cgroup_id: ep for ep in self.endpoints if ep.cgroup_id}

    @classmethod
    def from_state(cls, state: Any, *, resolve_rules: bool = True) -> FlowContext:
        """From a :class:`~andon.netpolicy.state.NetpolicyState` (read only: a copy is resolved)."""
        from .identity import IdentityAllocator
        from .labels import format_labels, labels_from

        alloc = IdentityAllocator.from_dict(copy.deepcopy(state.identities)) if state.identities \
            else IdentityAllocator()
        eps = []
        for name, rec in sorted(state.endpoints.items()):
            try:
                lbls = labels_from(rec.get("labels", []))
                ident = alloc.allocate(lbls).id
            except (ValueError, TypeError):
                continue  # a record this andon cannot read names nothing
            ns = next((lb.value for lb in lbls if lb.key == NS_LABEL), "")
            try:
                cgid = int(rec.get("cgroup_id") or 0) if rec.get("kind") == "cgroup" else 0
            except (ValueError, TypeError):
                cgid = 0
            eps.append(EndpointInfo(name, ident, int(rec.get("ifindex") or 0), ns, tuple(format_labels(lbls)),
                                    tuple(str(a) for a in rec.get("addresses", [])), cgid))
        names = {int(v): str(k) for k, v in state.policy_ids.items()}
        kinds: dict[str, str] = {}
        entries = None
        hosts: frozenset[str] = frozenset()
        cidr: dict[int, tuple[str, ...]] = {}
        try:
            from .policy import load_texts

            for p in load_texts(list(state.policy_files.items())).policies:
                kinds[p.name] = p.kind
        except Exception as e:  # a state this andon cannot parse: names only, no kinds
            log.warning("policies in %s not readable for flow names: %s", state.path, e)
        if resolve_rules and state.endpoints:
            try:
                from .state import compute

                scratch = copy.deepcopy(state)
                _, res = compute(scratch)
                entries = res.datapath_entries()
                hosts = frozenset(str(a) for a in res.host_addresses)
                cidr = {i.id: tuple(format_labels(i.labels)) for i in
                        (res.allocator.lookup(n) for n in res.ipcache().values()) if i is not None and i.id >= 1 << 24}
            except Exception as e:  # rule items are a nicety: "rule N" still names the rule
                log.warning("cannot resolve %s for rule names: %s", state.path, e)
        return cls(eps, names, kinds, entries, cidr, hosts)

    # -- lookups ------------------------------------------------------------------------------------
    def endpoint_for(self, ip: str, identity: int) -> EndpointInfo:
        ep = self.by_address.get(_norm_ip(ip))
        if ep is not None and (identity == 0 or ep.identity == identity):
            return ep
        if identity >= MIN_USER_IDENTITY and identity < 1 << 24 and identity in self.by_identity:
            return self.by_identity[identity]  # an address not in state.json: one endpoint of that identity
        return reserved_endpoint(identity, self.cidr_labels.get(identity, ()))

    def identity_of(self, ip: str) -> int:
        """For L7 rows, which carry no identity: the endpoint's, the host's or the world's."""
        ep = self.by_address.get(_norm_ip(ip))
        if ep is not None:
            return ep.identity
        try:
            if ipaddress.ip_address(_norm_ip(ip)).is_loopback or _norm_ip(ip) in self.host_addresses:
                return 1
        except ValueError:
            pass
        return 2

    def rule_name(self, policy: str, rule: int, direction: str, deny: bool, ep_identity: int, peer_identity: int,
                  proto: int, port: int | None) -> str:
        """``rule 0 (ingress item 1)`` as ``resolve`` names it; ``rule 0`` when the entry is not found."""
        base = f"rule {rule}"
        if self.entries is None:
            return base
        verdict = "DENY" if deny else "ALLOW"
        best = None
        for e in self.entries:
            if (e.policy != policy or e.rule != rule or e.direction != direction or e.verdict != verdict
                    or e.ep_identity != ep_identity or e.peer_identity not in (peer_identity, 0)
                    or e.proto not in (proto, 0)):
                continue
            if port is not None and e.proto and not e.port_lo <= port <= (e.port_hi or e.port_lo):
                continue
            score = (e.peer_identity == peer_identity, e.proto == proto, -(e.port_hi - e.port_lo))
            if best is None or score > best[0]:
                best = (score, e)
        if best is None:
            return base
        return f"{base} ({direction}{'Deny' if deny else ''} item {best[1].item})"


# -- one record -> one row ------------------------------------------------------------------------------
def tcp_flag_text(flags: int) -> str:
    return ",".join(n for n in TCP_FLAG_ORDER if n in TCP_FLAG_BITS and flags & TCP_FLAG_BITS[n])


def l4_summary(l4: str, tcp_flags: str, icmp_type: int, icmp_code: int) -> str:
    """Hubble's summary of a packet: ``TCP Flags: SYN, ACK``, ``UDP``, ``ICMPv4 EchoRequest``."""
    if l4 == "TCP":
        return "TCP Flags: " + ", ".join(f for f in tcp_flags.split(",") if f)
    if l4 in ("ICMPv4", "ICMPv6"):
        names = ICMP4_TYPES if l4 == "ICMPv4" else ICMP6_TYPES
        return f"{l4} {names.get(icmp_type, f'{icmp_type}({icmp_code})')}"
    return l4


def _event_type(f: Flow) -> str:
    if f.verdict == "DROPPED":
        return EVENT_DROP
    if f.ct_new and not f.is_reply:
        return EVENT_POLICY_VERDICT
    return EVENT_TRACE


def flow_row(f: Flow, ctx: FlowContext, node_name: str = "") -> dict[str, Any]:
    """One ``flows`` table row for a decoded record."""
    l4 = PROTO_NAMES.get(f.proto, str(f.proto))
    src = ctx.endpoint_for(f.src_ip, f.src_identity)
    dst = ctx.endpoint_for(f.dst_ip, f.dst_identity)
    # the endpoint where the datapath saw it: a veth by ifindex, a cgroup endpoint (ifindex 0) by
    # the cgroup id; that side of the flow is this endpoint, whatever else shares its identity
    here = ctx.by_id.get(f.ifindex) if f.ifindex else ctx.by_cgroup.get(f.cgroup_id) if f.cgroup_id else None
    if here is not None and f.direction == DIR_INGRESS and here.identity == f.dst_identity:
        dst = here
    elif here is not None and f.direction == DIR_EGRESS and here.identity == f.src_identity:
        src = here
    # the decision came from the connection's first packet: a reply was decided the other way round
    decided_dir = f.direction if not f.is_reply else (DIR_EGRESS if f.direction == DIR_INGRESS else DIR_INGRESS)
    decided = "ingress" if decided_dir == DIR_INGRESS else "egress"
    policy = ctx.policy_names.get(f.policy_id, f"policy {f.policy_id}") if f.policy_id else ""
    subject_identity = (f.dst_identity if f.direction == DIR_INGRESS else f.src_identity)
    peer_identity = (f.src_identity if f.direction == DIR_INGRESS else f.dst_identity)
    port: int | None
    if f.proto in (6, 17, 132):
        port = f.sport if f.is_reply else f.dport
    elif f.proto in (1, 58) and not f.is_reply:
        port = f.icmp_type
    else:
        port = None
    rule, decided_by = "", ""
    subject = here.name if here else (dst.name if f.direction == DIR_INGRESS else src.name)
    # no allow entry and default deny (for a later fragment whose ports are unknown: 175, the
    # datapath's reason for it): the flow names who switched it on
    if f.drop_reason in (DROP_POLICY, DROP_FRAG_NOT_FOUND):
        rule = "default deny"
        decided_by = f"default deny by {policy}" if policy else "default deny"
    elif policy and f.drop_reason == 181:
        rule = ctx.rule_name(policy, f.rule_index, decided, True, subject_identity, peer_identity, f.proto, port)
        decided_by = f"denied by {policy} {rule}"
    elif policy and f.match_type:
        rule = ctx.rule_name(policy, f.rule_index, decided, False, subject_identity, peer_identity, f.proto, port)
        decided_by = f"allowed by {policy} {rule}"
    elif f.verdict == "FORWARDED":
        decided_by = f"no policy selects {subject or 'the endpoint'} for {decided}"
    flags = tcp_flag_text(f.tcp_flags) if f.proto == 6 else ""
    return {
        "time_": f.time_ns, "node_name": node_name, "verdict": f.verdict, "drop_reason": f.drop_reason,
        "drop_reason_desc": f.drop_reason_desc if f.drop_reason else "",
        "event_type": _event_type(f), "traffic_direction": f.traffic_direction, "is_reply": f.is_reply,
        "policy_match_type": f.policy_match_type, "ip_version": 6 if f.family == 6 else 4,
        "source_ip": f.src_ip, "destination_ip": f.dst_ip, "l4_protocol": l4,
        "source_port": f.sport if f.proto in (6, 17, 132) else 0,
        "destination_port": f.dport if f.proto in (6, 17, 132) else 0,
        "tcp_flags": flags, "icmp_type": f.icmp_type if f.proto in (1, 58) else 0,
        "icmp_code": f.icmp_code if f.proto in (1, 58) else 0,
        "source_identity": f.src_identity, "source_id": src.id, "source_name": src.name,
        "source_namespace": src.namespace, "source_labels": json.dumps(list(src.labels)),
        "destination_identity": f.dst_identity, "destination_id": dst.id, "destination_name": dst.name,
        "destination_namespace": dst.namespace, "destination_labels": json.dumps(list(dst.labels)),
        "endpoint": subject, "ifindex": f.ifindex, "policy_id": f.policy_id, "policy_name": policy,
        "policy_kind": ctx.policy_kinds.get(policy, "CiliumNetworkPolicy" if policy else ""),
        "rule_index": f.rule_index, "policy_rule": rule, "policy_direction": decided.upper() if policy else "",
        "decided_by": decided_by, "ct_new": f.ct_new, "bytes": f.len,
        "summary": l4_summary(l4, flags, f.icmp_type, f.icmp_code) if f.proto in PROTO_NAMES
        else ("IPv6" if f.family == 6 else "IPv4"),  # Hubble names the last layer it decoded
    }


# -- L7: the observability tables' rows as flows -----------------------------------------------------------
def _json(text: Any, default: Any) -> Any:
    if not isinstance(text, str) or not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _headers(text: Any) -> list[dict[str, str]]:
    h = _json(text, {})
    return [{"key": str(k), "value": str(v)} for k, v in sorted(h.items())] if isinstance(h, dict) else []


def _l7_ends(row: dict, ctx: FlowContext) -> tuple[tuple[str, int], tuple[str, int], str] | None:
    """((client ip, port), (server ip, port), where seen: EGRESS at the client, INGRESS at the server)."""
    local = (_norm_ip(str(row.get("local_addr", ""))), int(row.get("local_port") or 0))
    remote = (_norm_ip(str(row.get("remote_addr", ""))), int(row.get("remote_port") or 0))
    if local[0] not in ctx.by_address and remote[0] not in ctx.by_address:
        return None  # neither end is a managed endpoint: not a flow of ours
    role = int(row.get("trace_role") or 0)
    if role == 0:  # unknown: the lower port is the server's
        role = 2 if local[1] < remote[1] else 1
    if role == 1:
        return local, remote, "EGRESS"
    return remote, local, "INGRESS"


def _l7_base(t: int, src: tuple[str, int], dst: tuple[str, int], l4: str, ctx: FlowContext, node: str,
             direction: str, is_reply: bool) -> dict[str, Any]:
    si, di = ctx.identity_of(src[0]), ctx.identity_of(dst[0])
    s, d = ctx.endpoint_for(src[0], si), ctx.endpoint_for(dst[0], di)
    version = 6 if ":" in src[0] else 4
    return {
        "time_": t, "node_name": node, "verdict": "FORWARDED", "drop_reason": 0, "drop_reason_desc": "",
        "event_type": EVENT_L7, "traffic_direction": direction, "is_reply": is_reply, "policy_match_type": "",
        "ip_version": version, "source_ip": src[0], "destination_ip": dst[0], "l4_protocol": l4,
        "source_port": src[1], "destination_port": dst[1], "tcp_flags": "", "icmp_type": 0, "icmp_code": 0,
        "source_identity": si, "source_id": s.id, "source_name": s.name, "source_namespace": s.namespace,
        "source_labels": json.dumps(list(s.labels)), "destination_identity": di, "destination_id": d.id,
        "destination_name": d.name, "destination_namespace": d.namespace,
        "destination_labels": json.dumps(list(d.labels)), "endpoint": (s.name if direction == "EGRESS" else d.name),
        "ifindex": 0, "policy_id": 0, "policy_name": "", "policy_kind": "", "rule_index": 0, "policy_rule": "",
        "policy_direction": "", "decided_by": "", "ct_new": False, "bytes": 0, "Type": "L7",
    }


def http_l7_rows(row: dict, ctx: FlowContext, node: str = "") -> list[dict[str, Any]]:
    """An ``http_events`` row (one request and its response) -> a REQUEST and a RESPONSE flow."""
    ends = _l7_ends(row, ctx)
    if ends is None:
        return []
    client, server, direction = ends
    latency = max(int(row.get("latency") or 0), 0)
    t = int(row.get("time_") or 0)
    proto = f"HTTP/{int(row.get('major_version') or 1)}.{int(row.get('minor_version') or 0)}"
    req_h = _headers(row.get("req_headers"))
    host = next((h["value"] for h in req_h if h["key"].lower() == "host"), "")
    if not host:
        host = f"[{server[0]}]:{server[1]}" if ":" in server[0] else f"{server[0]}:{server[1]}"
    path = str(row.get("req_path") or "/")
    url = f"http://{host}{path if path.startswith('/') else '/' + path}"
    method = str(row.get("req_method") or "")
    code = int(row.get("resp_status") or 0)
    req = _l7_base(t - latency, client, server, "TCP", ctx, node, direction, False)
    req.update({"l7_type": "REQUEST", "l7_latency_ns": 0, "l7_protocol": "http",
                "http": {"method": method, "url": url, "protocol": proto, "headers": req_h},
                "summary": f"{proto} {method} {url}"})
    resp = _l7_base(t, server, client, "TCP", ctx, node, direction, True)
    resp.update({"l7_type": "RESPONSE", "l7_latency_ns": latency, "l7_protocol": "http",
                 "http": {"code": code, "method": method, "url": url, "protocol": proto,
                          "headers": _headers(row.get("resp_headers"))},
                 "summary": f"{proto} {code} {latency // 1_000_000}ms ({method} {url})"})
    return [req, resp]


def dns_l7_rows(row: dict, ctx: FlowContext, node: str = "") -> list[dict[str, Any]]:
    """A ``dns_events`` row -> a DNS REQUEST (query) and RESPONSE (answer) flow."""
    ends = _l7_ends(row, ctx)
    if ends is None:
        return []
    client, server, direction = ends
    latency = max(int(row.get("latency") or 0), 0)
    t = int(row.get("time_") or 0)
    queries = _json(row.get("req_body"), {}).get("queries", []) if isinstance(_json(row.get("req_body"), {}), dict) else []
    answers = _json(row.get("resp_body"), {}).get("answers", []) if isinstance(_json(row.get("resp_body"), {}), dict) else []
    hdr = _json(row.get("resp_header"), {})
    rcode = int(hdr.get("rcode", 0)) if isinstance(hdr, dict) else 0
    name = str(queries[0].get("name", "")) if queries and isinstance(queries[0], dict) else ""
    query = name if name.endswith(".") or not name else name + "."
    qtypes = [str(q.get("type", "")) for q in queries if isinstance(q, dict) and q.get("type")]
    ips = [str(a["addr"]) for a in answers if isinstance(a, dict) and a.get("addr")]
    cnames = [str(a["cname"]) for a in answers if isinstance(a, dict) and a.get("cname")]
    qt = ",".join(qtypes)
    req = _l7_base(t - latency, client, server, "UDP", ctx, node, direction, False)
    req.update({"l7_type": "REQUEST", "l7_latency_ns": 0, "l7_protocol": "dns",
                "dns": {"query": query, "qtypes": qtypes, "observation_source": "socket"},
                "summary": f"DNS Query {query} {qt}".rstrip()})
    answer = f"RCode: {DNS_RCODES.get(rcode, rcode)}" if rcode else f'"{",".join(ips)}"'
    resp = _l7_base(t, server, client, "UDP", ctx, node, direction, True)
    resp.update({"l7_type": "RESPONSE", "l7_latency_ns": latency, "l7_protocol": "dns",
                 "dns": {"query": query, "ips": ips, "cnames": cnames, "rcode": rcode, "qtypes": qtypes,
                         "observation_source": "socket"},
                 "summary": f"DNS Answer {answer} ({' '.join(x for x in ('Query', query, qt) if x)})"})
    return [req, resp]


# -- output: Hubble's JSON and compact line ---------------------------------------------------------------
def _labels(text: Any) -> list[str]:
    v = _json(text, []) if isinstance(text, str) else text
    return [str(x) for x in v] if isinstance(v, list) else []


def _rfc3339(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def _endpoint_json(row: dict, side: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if row.get(f"{side}_id"):
        out["ID"] = int(row[f"{side}_id"])
    if row.get(f"{side}_identity"):
        out["identity"] = int(row[f"{side}_identity"])
    if row.get(f"{side}_namespace"):
        out["namespace"] = row[f"{side}_namespace"]
    labels = _labels(row.get(f"{side}_labels"))
    if labels:
        out["labels"] = labels
    if row.get(f"{side}_name"):
        out["pod_name"] = row[f"{side}_name"]
    return out


def flow_kind(row: dict) -> str:
    return row.get("Type") or "L3_L4"


def to_hubble(row: dict) -> dict[str, Any]:
    """Hubble's JSON for one row (``hubble observe -o json``): zero values left out, as protojson does."""
    f: dict[str, Any] = {"time": _rfc3339(int(row["time_"])), "verdict": row["verdict"]}
    if row.get("drop_reason"):
        f["drop_reason"] = int(row["drop_reason"])
    f["IP"] = {"source": row["source_ip"], "destination": row["destination_ip"],
               "ipVersion": "IPv6" if int(row.get("ip_version") or 4) == 6 else "IPv4"}
    l4 = row.get("l4_protocol", "")
    if l4 == "TCP":
        tcp: dict[str, Any] = {"source_port": int(row["source_port"]), "destination_port": int(row["destination_port"])}
        flags = [x for x in str(row.get("tcp_flags") or "").split(",") if x]
        if flags:
            tcp["flags"] = {x: True for x in flags}
        f["l4"] = {"TCP": tcp}
    elif l4 in ("UDP", "SCTP"):
        f["l4"] = {l4: {"source_port": int(row["source_port"]), "destination_port": int(row["destination_port"])}}
    elif l4 in ("ICMPv4", "ICMPv6"):
        icmp = {k: int(row[f"icmp_{k}"]) for k in ("type", "code") if row.get(f"icmp_{k}")}
        f["l4"] = {l4: icmp}
    f["source"] = _endpoint_json(row, "source")
    f["destination"] = _endpoint_json(row, "destination")
    f["Type"] = flow_kind(row)
    if row.get("node_name"):
        f["node_name"] = row["node_name"]
    if f["Type"] == "L7":
        l7: dict[str, Any] = {"type": row["l7_type"]}
        if row.get("l7_latency_ns"):
            l7["latency_ns"] = str(int(row["l7_latency_ns"]))  # uint64: a string in protojson
        for k in ("http", "dns"):
            if k in row:
                l7[k] = {a: b for a, b in row[k].items() if b not in ("", 0, [], None)}
        f["l7"] = l7
    event = row.get("event_type", EVENT_TRACE)
    et: dict[str, Any] = {"type": EVENT_NUMBER.get(event, 0)}
    if event == EVENT_DROP and row.get("drop_reason"):
        et["sub_type"] = int(row["drop_reason"])
    elif event == EVENT_TRACE and TRACE_POINT.get(row.get("traffic_direction", ""), ("", 0, ""))[1]:
        et["sub_type"] = TRACE_POINT[row["traffic_direction"]][1]
    f["event_type"] = et
    if row.get("traffic_direction"):
        f["traffic_direction"] = row["traffic_direction"]
    match = MATCH_NUMBER.get(str(row.get("policy_match_type") or "NONE"), 0)
    if match and event == EVENT_POLICY_VERDICT:
        f["policy_match_type"] = match
    if event == EVENT_TRACE and row.get("traffic_direction") in TRACE_POINT:
        f["trace_observation_point"] = TRACE_POINT[row["traffic_direction"]][2]
    if row.get("drop_reason"):
        f["drop_reason_desc"] = row["drop_reason_desc"]
    f["is_reply"] = bool(row.get("is_reply"))
    if row.get("ifindex"):
        f["interface"] = {"index": int(row["ifindex"])}
    if row.get("policy_name"):
        pol = {"name": row["policy_name"], "labels": [f"k8s:io.cilium.k8s.policy.derived-from={row['policy_kind']}",
                                                       f"k8s:io.cilium.k8s.policy.name={row['policy_name']}"],
               "kind": row["policy_kind"], "rule": row.get("policy_rule", "")}  # rule: andon's addition
        denied = row.get("verdict") in ("DROPPED", "AUDIT") and row.get("drop_reason")
        key = f"{str(row.get('policy_direction') or row['traffic_direction']).lower()}_{'denied' if denied else 'allowed'}_by"
        f[key] = [pol]
    if row.get("decided_by"):
        f["policy_log"] = [row["decided_by"]]  # andon's words for who decided (Hubble: policy_log)
    f["Summary"] = row.get("summary", "")
    return {"flow": f, "node_name": row.get("node_name", ""), "time": f["time"]}


def flow_type_text(row: dict) -> str:
    """Hubble printer's ``GetFlowType``."""
    event = row.get("event_type")
    if flow_kind(row) == "L7":
        t = f"{row.get('l7_protocol', 'l7')}-{str(row.get('l7_type', '')).lower()}"
        if row.get("l7_protocol") == "dns":
            t += " " + str(row.get("dns", {}).get("observation_source", ""))
        return t
    if event == EVENT_DROP:
        return DROP_REASON_TEXT.get(int(row.get("drop_reason") or 0), str(row.get("drop_reason")))
    if event == EVENT_POLICY_VERDICT:
        return f"policy-verdict:{MATCH_TEXT.get(str(row.get('policy_match_type')), 'unknown')} {row.get('traffic_direction')}"
    return TRACE_POINT.get(row.get("traffic_direction", ""), ("UNKNOWN",))[0]


def verdict_text(row: dict) -> str:
    """Hubble printer's ``getVerdict``: policy-verdict events say ALLOWED/DENIED/AUDITED."""
    v = row.get("verdict", "")
    if row.get("event_type") == EVENT_POLICY_VERDICT:
        return {"FORWARDED": "ALLOWED", "DROPPED": "DENIED", "AUDIT": "AUDITED"}.get(v, v)
    return v


def _host(row: dict, side: str) -> str:
    ip = row[f"{side}_ip"]
    name = row.get(f"{side}_name") or ""
    ns = row.get(f"{side}_namespace") or ""
    host = f"{ns}/{name}" if ns and name else name or ip
    port = int(row.get(f"{side}_port") or 0)
    if port:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host


def _identity_text(identity: int) -> str:
    name = RESERVED_NAMES.get(identity)
    return f"({name})" if name else f"(ID:{identity})"


def time_text(ns: int, tz: dt.tzinfo | None = None) -> str:
    """Go's ``time.StampMilli`` (``Jan _2 15:04:05.000``), local time unless ``tz``."""
    t = dt.datetime.fromtimestamp(ns / 1e9, tz=tz or dt.datetime.now().astimezone().tzinfo)
    return f"{t.strftime('%b')} {t.day:2d} {t.strftime('%H:%M:%S')}.{(ns // 1_000_000) % 1000:03d}"


def summary_text(row: dict) -> str:
    s = row.get("summary", "")
    if row.get("decided_by") and row.get("event_type") in (EVENT_DROP, EVENT_POLICY_VERDICT):
        s += f"; {row['decided_by']}"
    return s


def compact(row: dict, tz: dt.tzinfo | None = None) -> str:
    """``hubble observe``'s compact line: TIME: SRC (ID) ARROW DST (ID) TYPE VERDICT (SUMMARY).
    A reply flips the two ends and the arrow, as Hubble does."""
    src, dst = _host(row, "source"), _host(row, "destination")
    sid, did = _identity_text(int(row["source_identity"])), _identity_text(int(row["destination_identity"]))
    arrow = "->"
    if row.get("is_reply"):
        src, dst, sid, did, arrow = dst, src, did, sid, "<-"
    return (f"{time_text(int(row['time_']), tz)}: {src} {sid} {arrow} {dst} {did} {flow_type_text(row)} "
            f"{verdict_text(row)} ({summary_text(row)})")


# -- filters (hubble observe's flags) ---------------------------------------------------------------------
@dataclass(frozen=True)
class LabelSelector:
    """``k8s:app=web,tier!=db,env`` (Kubernetes selector syntax: =, ==, !=, key, !key); a key without
    a source matches that key from any source."""

    terms: tuple[tuple[str | None, str, str, str], ...]  # (source or None, key, op, value)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        from ..errors import UsageError
        from .labels import split_key

        terms = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            neg = part.startswith("!")
            if neg:
                part = part[1:].strip()
            for op in ("!=", "==", "="):
                if op in part:
                    k, _, v = part.partition(op)
                    op = "=" if op == "==" else op
                    break
            else:
                k, op, v = part, "!" if neg else "exists", ""
            if neg and op != "!":
                raise UsageError(f"label selector {text!r}: '!' goes before a bare key only")
            k = k.strip()
            if not k:
                raise UsageError(f"label selector {text!r}: a term has no key")
            src, key = split_key(k, "")
            terms.append((src or None, key, op, v.strip()))
        if not terms:
            raise UsageError(f"label selector {text!r} is empty")
        return cls(tuple(terms))

    def matches(self, labels: Iterable[str]) -> bool:
        parsed = []
        for s in labels:
            head, _, value = s.partition("=")
            src, _, key = head.partition(":")
            parsed.append((src, key, value) if key else ("", src, value))
        for src, key, op, value in self.terms:
            have = [v for s, k, v in parsed if k == key and (src is None or s == src)]
            if op == "exists" and not have:
                return False
            if op == "!" and have:
                return False
            if op == "=" and value not in have:
                return False
            if op == "!=" and value in have:
                return False
        return True


def _status_matches(code: int, spec: str) -> bool:
    """Hubble's ``--http-status``: ``404`` exact, ``4+`` any 4xx, ``40+`` 400-409."""
    text = str(code)
    if spec.endswith("+"):
        return len(text) == 3 and text.startswith(spec[:-1])
    return text == spec


@dataclass
class FlowFilter:
    """One AND of ``hubble observe`` flags; an empty field does not constrain."""

    verdicts: frozenset[str] = frozenset()
    from_labels: tuple[LabelSelector, ...] = ()
    to_labels: tuple[LabelSelector, ...] = ()
    ports: frozenset[int] = frozenset()
    protocols: frozenset[str] = frozenset()
    types: tuple[tuple[str, str], ...] = ()  # (event type, sub type or "")
    http_status: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None

    def matches(self, row: dict) -> bool:
        t = int(row["time_"])
        if self.since_ns is not None and t < self.since_ns:
            return False
        if self.until_ns is not None and t > self.until_ns:
            return False
        if self.verdicts and row.get("verdict") not in self.verdicts:
            return False
        if self.from_labels and not any(s.matches(_labels(row.get("source_labels"))) for s in self.from_labels):
            return False
        if self.to_labels and not any(s.matches(_labels(row.get("destination_labels"))) for s in self.to_labels):
            return False
        if self.ports and not ({int(row.get("source_port") or 0), int(row.get("destination_port") or 0)} & self.ports):
            return False
        if self.protocols:
            have = {str(row.get("l4_protocol", "")).lower()}
            if have & {"icmpv4", "icmpv6"}:
                have.add("icmp")
            if row.get("l7_protocol"):
                have.add(row["l7_protocol"])
            if not have & self.protocols:
                return False
        if self.types and not any(self._type_ok(row, t, sub) for t, sub in self.types):
            return False
        if self.http_status:
            code = int(row.get("http", {}).get("code") or 0) if row.get("l7_protocol") == "http" else 0
            if not code or not any(_status_matches(code, s) for s in self.http_status):
                return False
        return True

    @staticmethod
    def _type_ok(row: dict, typ: str, sub: str) -> bool:
        event = row.get("event_type")
        if typ != event:
            return False
        if not sub:
            return True
        if event == EVENT_TRACE:
            return TRACE_POINT.get(row.get("traffic_direction", ""), ("",))[0] == sub
        if event == EVENT_DROP:
            return sub in (str(row.get("drop_reason")), DROP_REASON_TEXT.get(int(row.get("drop_reason") or 0), ""))
        if event == EVENT_L7:
            return sub == row.get("l7_protocol")
        return sub.lower() == MATCH_TEXT.get(str(row.get("policy_match_type")), "").lower()


# -- the pinned ring ---------------------------------------------------------------------------------------
def _libbpf() -> Any:
    from ..bpf import libbpf as lb

    return lb.lib()


class PinnedFlowRing:
    """The ``np_flows`` ring (and ``np_stats``) of a pin directory, opened by path, read only.

    Raises OSError when the pins are not there."""

    def __init__(self, pin_dir: Path) -> None:
        from ..bpf.pins import obj_get, obj_info
        from ..bpf.varring import VarRingReader
        from ..events.live import boot_offset_ns, possible_cpus

        self.pin_dir = Path(pin_dir)
        path = self.pin_dir / "np_flows"
        self.inode = os.stat(path).st_ino
        self._fd = obj_get(path)
        self._stats_fd = -1
        try:
            # struct bpf_map_info starts: type, id, key_size, value_size, max_entries (u32 each)
            size = struct.unpack_from("<5I", obj_info(self._fd, 32, "np_flows"))[4]
            self._reader = VarRingReader(self._fd, size)
            try:
                self._stats_fd = obj_get(self.pin_dir / "np_stats")
            except OSError:
                self._stats_fd = -1  # counters are a nicety
        except BaseException:
            os.close(self._fd)
            raise
        self._offset = boot_offset_ns()
        self._ncpu = possible_cpus()
        self.decode_errors = 0

    def still_pinned(self) -> bool:
        """False once the pin is gone or a new datapath pinned another ring there."""
        try:
            return os.stat(self.pin_dir / "np_flows").st_ino == self.inode
        except OSError:
            return False

    def ring_full(self) -> int | None:
        """The datapath's count of records lost to a full ring (np_stats ``ring_full``, all CPUs)."""
        if self._stats_fd < 0:
            return None
        fn = _libbpf().bpf_map_lookup_elem
        key = ctypes.create_string_buffer(struct.pack("<I", STAT_NAMES.index("ring_full")), 4)
        val = ctypes.create_string_buffer(8 * self._ncpu)
        if fn(self._stats_fd, key, val) < 0:
            return None
        return sum(struct.unpack(f"<{self._ncpu}Q", val.raw))

    def wait(self, timeout: float) -> bool:
        return self._reader.wait(timeout)

    def flows(self, max_records: int = 4096) -> Iterator[Flow]:
        for raw in self._reader.read(max_records):
            try:
                yield decode_flow(raw, self._offset)
            except (ValueError, struct.error):
                self.decode_errors += 1

    def close(self) -> None:
        self._reader.close()
        for fd in (self._fd, self._stats_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stats_fd = -1


class StateWatcher:
    """A :class:`FlowContext` that follows ``state.json``: rebuilt when its mtime or size changes
    (checked at most once a second); an unreadable state keeps the last good context."""

    def __init__(self, state_dir: Path, *, resolve_rules: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.resolve_rules = resolve_rules
        self.context = FlowContext()
        self._sig: tuple[int, int] | None = None
        self._checked = 0.0
        self.reloads = 0
        self.errors = 0
        self.check(force=True)

    def check(self, force: bool = False) -> FlowContext:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return self.context
        self._checked = now
        from .state import STATE_FILE, NetpolicyState

        try:
            st = os.stat(self.state_dir / STATE_FILE)
            sig = (st.st_mtime_ns, st.st_size)
        except OSError:
            sig = (0, 0)
        if sig == self._sig:
            return self.context
        self._sig = sig
        try:
            self.context = FlowContext.from_state(NetpolicyState.load(self.state_dir), resolve_rules=self.resolve_rules)
            self.reloads += 1
        except Exception as e:  # a half-edited or foreign state: keep the names we had
            self.errors += 1
            log.warning("flow names: %s", e)
        return self.context


# -- the agent's flow service ------------------------------------------------------------------------------
@dataclass
class FlowStats:
    flows: int = 0
    forwarded: int = 0
    dropped: int = 0
    audit: int = 0
    decode_errors: int = 0
    ring_opens: int = 0
    kernel_ring_full: int = 0  # lost in the kernel while this service ran (np_stats ring_full delta)


class FlowService:
    """Pinned ring -> rows -> store, in one thread (see the module docstring)."""

    def __init__(self, cfg: Any, store: Any = None, store_settings: Any = None, node_name: str | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self._own_store = None
        self._store_settings = store_settings
        self.node_name = node_name if node_name is not None else socket.gethostname()
        self.stats = FlowStats()
        self.ring: PinnedFlowRing | None = None
        self._full0: int | None = None
        self._watcher: StateWatcher | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_look = 0.0

    def start(self) -> None:
        if self.store is None:
            from ..store.settings import StoreSettings
            from ..store.store import Store

            self._own_store = Store(self._store_settings or StoreSettings())
            self._own_store.start()
            self.store = self._own_store
        self._watcher = StateWatcher(self.cfg.state_dir)
        self._look()
        self._thread = threading.Thread(target=self.run, name="andon-flows", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        """Open the ring if the pins are there (again, if they were replaced)."""
        if self.ring is not None and not self.ring.still_pinned():
            self._drain()
            self._close_ring()
        if self.ring is None:
            try:
                self.ring = PinnedFlowRing(self.cfg.pin_dir)
            except OSError:
                return
            self.stats.ring_opens += 1
            self._full0 = self.ring.ring_full()
            log.info("flows: reading %s", self.ring.pin_dir / "np_flows")

    def _close_ring(self) -> None:
        if self.ring is None:
            return
        full = self.ring.ring_full()
        if full is not None and self._full0 is not None:
            self.stats.kernel_ring_full += max(full - self._full0, 0)
        self.stats.decode_errors += self.ring.decode_errors
        self.ring.close()
        self.ring = None

    def _drain(self) -> int:
        assert self._watcher is not None and self.store is not None
        if self.ring is None:
            return 0
        ctx = self._watcher.check()
        rows = []
        for f in self.ring.flows():
            rows.append(flow_row(f, ctx, self.node_name))
            self.stats.flows += 1
            if f.verdict == "FORWARDED":
                self.stats.forwarded += 1
            elif f.verdict == "DROPPED":
                self.stats.dropped += 1
            elif f.verdict == "AUDIT":
                self.stats.audit += 1
        if rows:
            self.store.append("flows", rows)
        return len(rows)

    def run(self) -> None:
        every = self.cfg.poll_interval_ns / 1e9
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= self._next_look:
                    self._next_look = now + every
                    self._look()
                if self.ring is None:
                    self._stop.wait(min(every, 0.5))
                    continue
                self.ring.wait(0.2)
                self._drain()
            except Exception:  # one bad record or a vanished map must not stop the service
                log.exception("flow service error")
                self._stop.wait(0.5)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            if self.ring is not None and self._watcher is not None:
                self._drain()
        finally:
            self._close_ring()
            if self._own_store is not None:
                self._own_store.close()
                self._own_store = None

    def describe(self) -> str:
        s = self.stats
        where = "" if s.ring_opens else f" (no datapath pinned at {self.cfg.pin_dir})"
        return (f"flows: {s.flows} stored ({s.forwarded} forwarded, {s.dropped} dropped, {s.audit} audit){where}; "
                f"{s.kernel_ring_full} lost in the kernel ring, {s.decode_errors} undecodable")


