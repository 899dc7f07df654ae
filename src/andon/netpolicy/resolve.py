"""Endpoints + policies -> what each endpoint allows and denies, and the verdict for one packet.

Cilium's semantics (``pkg/policy/repository.go``, ``distillery.go``, ``mapstate.go``):

* an endpoint is default-deny in a direction once a rule selecting it has entries for that
  direction (``ingress`` or ``ingressDeny``; even ``egress: [{}]``), unless the rule says
  ``enableDefaultDeny: {<direction>: false}``; one rule that switches it on is enough.
* rules add up; within one entry the L3 part and the L4 part AND; list items OR.
* deny beats allow, whatever the specificity.
* peers: ``fromEndpoints`` selectors select managed endpoints (``[{}]``: all of them) and, when
  they name a ``reserved:`` label, the reserved identity that carries it; ``fromCIDR``/``CIDRSet``
  select addresses that are no managed endpoint and not the host (Cilium's CIDR identities),
  ``except`` carves parts out; entities: ``all`` = any peer, ``world`` = any address that is no
  endpoint and not the host, ``host`` = the host, ``cluster`` = every managed endpoint plus the
  host and Cilium's other in-cluster reserved identities; an entry with ports and no L3 applies
  to any peer.
* nodeSelector rules are not applied (see ``policy.py``).

:func:`resolve` gives one :class:`EndpointPolicy` per endpoint (its default-deny state and its
:class:`Entry` list) and :meth:`Resolution.decide` evaluates them for one packet, the reference
the kernel datapath is tested against. :meth:`Resolution.datapath_entries` turns CIDR and
entity peers into identities for the datapath's ip -> identity LPM map and identity-keyed
policy map.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..rules.loader import Problem
from .identity import (
    ID_HOST,
    ID_WORLD,
    RESERVED,
    Endpoint,
    Identity,
    IdentityAllocator,
    IPAddress,
    IPNetwork,
)
from .labels import PolicyError
from .policy import PROTOCOL_NAMES, PROTOCOLS, PeerRule, Policy, PolicyProblem, Rule
from .selector import EndpointSelector

INGRESS, EGRESS = "ingress", "egress"
DIRECTIONS = (INGRESS, EGRESS)
ALLOW, DENY = "ALLOW", "DENY"
FORWARDED, DROPPED, AUDIT = "FORWARDED", "DROPPED", "AUDIT"  # Hubble's verdicts
ANY_PEER = 0

# Hubble's policy_match_type names, most specific first (the order a lookup tries them)
MATCH_ORDER = ("L3_L4", "L3_PROTO", "L4_ONLY", "PROTO_ONLY", "L3_ONLY", "ALL")
# Cilium drop reasons as Hubble names them
DROP_POLICY_DENIED = "POLICY_DENIED"  # 133: no allow and default deny
DROP_POLICY_DENY = "POLICY_DENY"  # 181: a deny entry matched

_CLUSTER_RESERVED = ("host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver")
_L4_EXPAND_ANY = ("TCP", "UDP", "SCTP")  # ANY is these three (Cilium expands it the same way)


@dataclass(frozen=True)
class Entry:
    """One policy entry of one endpoint: ``peer`` is an identity (0 = any peer) or a CIDR prefix;
    ``proto`` an IP protocol number (0 = any, then ports are 0-65535); ICMP types are ports."""

    direction: str
    peer: int | IPNetwork
    proto: int
    port_lo: int
    port_hi: int
    verdict: str
    policy: str
    rule: int  # index of the rule in its policy (spec = 0, specs[i] = i)
    item: int  # index of the entry in the rule's ingress/egress/...Deny list
    audit: bool = False

    @property
    def match_type(self) -> str:
        l3 = self.peer != ANY_PEER
        if self.proto == 0:
            return "L3_ONLY" if l3 else "ALL"
        if self.port_lo == 0 and self.port_hi == 65535:
            return "L3_PROTO" if l3 else "PROTO_ONLY"
        return "L3_L4" if l3 else "L4_ONLY"

    def l4_matches(self, proto: int, port: int) -> bool:
        return self.proto == 0 or (self.proto == proto and self.port_lo <= port <= self.port_hi)

    def describe(self) -> str:
        peer = "any peer" if self.peer == ANY_PEER else (f"cidr {self.peer}" if not isinstance(self.peer, int) else f"identity {self.peer}")
        if self.proto == 0:
            l4 = "any protocol"
        else:
            pn = PROTOCOL_NAMES.get(self.proto, str(self.proto))
            l4 = f"{pn} " + ("any port" if (self.port_lo, self.port_hi) == (0, 65535) else
                              str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}")  # fmt: skip
        return f"{self.verdict} {self.direction} {peer} {l4} ({self.policy} rule {self.rule} item {self.item})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction, "peer": self.peer if isinstance(self.peer, int) else str(self.peer),
            "proto": self.proto, "port_lo": self.port_lo, "port_hi": self.port_hi, "verdict": self.verdict,
            "policy": self.policy, "rule": self.rule, "item": self.item, "audit": self.audit,
            "match_type": self.match_type,
        }  # fmt: skip


@dataclass
class EndpointPolicy:
    endpoint: Endpoint
    identity: Identity
    default_deny: dict[str, list[str]] = field(default_factory=lambda: {INGRESS: [], EGRESS: []})  # policies that switched it on
    default_deny_audit: dict[str, bool] = field(default_factory=lambda: {INGRESS: False, EGRESS: False})
    entries: list[Entry] = field(default_factory=list)

    def is_default_deny(self, direction: str) -> bool:
        return bool(self.default_deny[direction])


@dataclass(frozen=True)
class Verdict:
    verdict: str  # FORWARDED | DROPPED | AUDIT
    direction: str
    policy: str | None
    rule: int | None
    match_type: str  # L3_L4 ... ALL, or NONE
    reason: str
    drop_reason_desc: str = ""  # POLICY_DENIED | POLICY_DENY when dropped (or audited)
    entry: Entry | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict != DROPPED


@dataclass(frozen=True)
class DatapathEntry:
    """An entry with identities on both sides: what the policy map holds."""

    ep_identity: int
    peer_identity: int  # 0 = any
    direction: str
    proto: int
    port_lo: int
    port_hi: int
    verdict: str
    audit: bool
    policy: str
    rule: int
    item: int
    match_type: str


def _proto_number(proto: int | str) -> int:
    if isinstance(proto, int):
        return proto
    p = PROTOCOLS.get(str(proto).upper())
    if p is None:
        raise PolicyError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    return p


class Resolution:
    """The resolved policy of every endpoint; ``problems`` holds warnings found on the way."""

    def __init__(self, allocator: IdentityAllocator, host_addresses: Iterable[str | IPAddress]) -> None:
        self.allocator = allocator
        self.host_addresses = frozenset(ipaddress.ip_address(a) for a in host_addresses)
        self.endpoints: dict[str, EndpointPolicy] = {}
        self.problems: list[Problem] = []
        self._by_address: dict[IPAddress, EndpointPolicy] = {}
        self.policy_audit: dict[str, bool] = {}

    # -- lookups --------------------------------------------------------------------------------

    def identity_of(self, addr: str | IPAddress) -> int:
        """The identity an address has: its endpoint's, the host's (1) or the world's (2)."""
        ip = ipaddress.ip_address(addr)
        ep = self._by_address.get(ip)
        if ep is not None:
            return ep.identity.id
        if ip in self.host_addresses:
            return ID_HOST
        return ID_WORLD

    def endpoint(self, which: str | Endpoint | IPAddress) -> EndpointPolicy | None:
        if isinstance(which, Endpoint):
            return self.endpoints.get(which.name)
        if isinstance(which, str) and which in self.endpoints:
            return self.endpoints[which]
        try:
            return self._by_address.get(ipaddress.ip_address(which))  # type: ignore[arg-type]
        except ValueError:
            return None

    def _peer(self, which: str | Endpoint | IPAddress) -> tuple[int, IPAddress | None]:
        """(identity, address) of a peer given as an endpoint, an endpoint's name or an address."""
        if isinstance(which, Endpoint) or (isinstance(which, str) and which in self.endpoints):
            ep = self.endpoint(which)
            if ep is None:
                raise PolicyError(f"endpoint {which!r} is not in this resolution")
            return ep.identity.id, (ep.endpoint.addresses[0] if ep.endpoint.addresses else None)
        try:
            ip = ipaddress.ip_address(which)  # type: ignore[arg-type]
        except ValueError:
            raise PolicyError(f"{which!r} is neither a known endpoint nor an IP address") from None
        return self.identity_of(ip), ip

    # -- the verdict -----------------------------------------------------------------------------

    def decide(
        self,
        src: str | Endpoint | IPAddress,
        dst: str | Endpoint | IPAddress,
        proto: int | str,
        port: int,
        direction: str,
    ) -> Verdict:
        """The verdict for a packet from ``src`` to ``dst`` as the endpoint enforcing ``direction``
        sees it: ``egress`` is decided for ``src`` (an endpoint), ``ingress`` for ``dst``.
        ``port`` is the destination port, or the ICMP type for ICMP."""
        if direction not in DIRECTIONS:
            raise PolicyError(f"direction is ingress or egress, not {direction!r}")
        pnum = _proto_number(proto)
        subject_ref, peer_ref = (dst, src) if direction == INGRESS else (src, dst)
        subject = self.endpoint(subject_ref)
        if subject is None:
            raise PolicyError(f"{subject_ref!r} is not a managed endpoint: only endpoints enforce {direction}")
        peer_id, peer_ip = self._peer(peer_ref)

        def peer_ok(e: Entry) -> bool:
            if isinstance(e.peer, int):
                return e.peer == ANY_PEER or e.peer == peer_id
            # CIDR peers select addresses that are neither endpoints nor the host
            return peer_id == ID_WORLD and peer_ip is not None and peer_ip.version == e.peer.version and peer_ip in e.peer

        matching = [e for e in subject.entries if e.direction == direction and e.l4_matches(pnum, port) and peer_ok(e)]
        audit_ep = subject.endpoint.audit
        # Audit changes only what the audited policy itself would do: an enforced deny entry, or
        # enforced default deny without an allow, still drops; an audited deny entry that
        # matches otherwise makes the verdict AUDIT (the packet passes, reported as that deny).
        # The datapath keeps audited deny entries apart for this (bpf/enforce/policy.bpf.c).
        denies = [e for e in matching if e.verdict == DENY and not e.audit]
        if denies:
            e = _most_specific(denies)
            return Verdict(
                AUDIT if audit_ep else DROPPED, direction, e.policy, e.rule, e.match_type,
                f"denied by {e.policy} rule {e.rule} ({direction}Deny item {e.item})", DROP_POLICY_DENY, e,
            )  # fmt: skip
        allows = [e for e in matching if e.verdict == ALLOW]
        default_deny = not allows and subject.is_default_deny(direction)
        if default_deny and not subject.default_deny_audit[direction]:
            by = subject.default_deny[direction][0]
            return Verdict(AUDIT if audit_ep else DROPPED, direction, by, None, "NONE", f"default deny by {by}", DROP_POLICY_DENIED)
        audited = [e for e in matching if e.verdict == DENY and e.audit]
        if audited:
            e = _most_specific(audited)
            return Verdict(
                AUDIT, direction, e.policy, e.rule, e.match_type,
                f"denied by {e.policy} rule {e.rule} ({direction}Deny item {e.item})", DROP_POLICY_DENY, e,
            )  # fmt: skip
        if allows:
            e = _most_specific(allows)
            return Verdict(FORWARDED, direction, e.policy, e.rule, e.match_type, f"allowed by {e.policy} rule {e.rule} ({direction} item {e.item})", "", e)
        if default_deny:  # switched on by audited policies only
            by = subject.default_deny[direction][0]
            return Verdict(AUDIT, direction, by, None, "NONE", f"default deny by {by}", DROP_POLICY_DENIED)
        return Verdict(FORWARDED, direction, None, None, "NONE", f"no policy selects {subject.endpoint.name} for {direction}")

    def decide_flow(self, src: str | Endpoint | IPAddress, dst: str | Endpoint | IPAddress, proto: int | str, port: int) -> Verdict:
        """Both ends: the source's egress (if it is an endpoint), then the destination's ingress."""
        if self.endpoint(src) is not None:
            v = self.decide(src, dst, proto, port, EGRESS)
            if not v.allowed or self.endpoint(dst) is None:
                return v
        return self.decide(src, dst, proto, port, INGRESS)

    # -- for the datapath ---------------------------------------------------------------------------

    def ipcache(self) -> dict[IPNetwork, int]:
        """ip prefix -> identity, for the LPM map: endpoints' addresses, the host's, and one
        node-local identity per CIDR prefix the entries use. Addresses outside are world."""
        out: dict[IPNetwork, int] = {}
        for net in sorted(self._cidr_prefixes(), key=lambda n: (n.version, n.network_address, n.prefixlen)):
            out[net] = self.allocator.allocate_cidr(net).id
        for ip in self.host_addresses:
            out[ipaddress.ip_network(ip)] = ID_HOST
        for ip, ep in self._by_address.items():
            out[ipaddress.ip_network(ip)] = ep.identity.id
        return out

    def _cidr_prefixes(self) -> set[IPNetwork]:
        return {e.peer for ep in self.endpoints.values() for e in ep.entries if not isinstance(e.peer, int)}

    def datapath_entries(self) -> list[DatapathEntry]:
        """Every entry with identities only (deduplicated per endpoint identity): a CIDR peer
        becomes every CIDR identity whose prefix lies inside it (as Cilium's selector cache does),
        and world also covers every CIDR identity (a CIDR's addresses are still world)."""
        cache = self.ipcache()
        cidr_ids = {net: ident for net, ident in cache.items() if ident >= (1 << 24)}
        seen: set[DatapathEntry] = set()
        out: list[DatapathEntry] = []
        for ep in self.endpoints.values():
            for e in ep.entries:
                if isinstance(e.peer, int):
                    peers = [e.peer]
                    if e.peer == ID_WORLD:
                        peers += sorted(cidr_ids.values())
                else:
                    peers = [ident for net, ident in cidr_ids.items() if net.version == e.peer.version and net.subnet_of(e.peer)]  # type: ignore[arg-type]
                for pid in peers:
                    d = DatapathEntry(ep.identity.id, pid, e.direction, e.proto, e.port_lo, e.port_hi, e.verdict, e.audit,
                                      e.policy, e.rule, e.item, e.match_type)  # fmt: skip
                    if d not in seen:
                        seen.add(d)
                        out.append(d)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {
                "identity": ep.identity.id,
                "default_deny": {d: list(v) for d, v in ep.default_deny.items()},
                "entries": [e.to_dict() for e in ep.entries],
            }
            for name, ep in self.endpoints.items()
        }


def _most_specific(entries: list[Entry]) -> Entry:
    return min(entries, key=lambda e: (MATCH_ORDER.index(e.match_type), e.port_hi - e.port_lo, e.policy, e.rule, e.item))


# ---------------------------------------------------------------------------------------------
# resolution


def resolve(
    endpoints: Iterable[Endpoint],
    policies: Iterable[Policy],
    allocator: IdentityAllocator | None = None,
    host_addresses: Iterable[str | IPAddress] = (),
) -> Resolution:
    alloc = allocator if allocator is not None else IdentityAllocator()
    res = Resolution(alloc, host_addresses)
    eps = list(endpoints)
    pols = list(policies)
    for ep in eps:
        if ep.name in res.endpoints:
            raise PolicyError(f"endpoint {ep.name!r} is given twice")
        epp = EndpointPolicy(ep, alloc.allocate(ep.labels))
        res.endpoints[ep.name] = epp
        for a in ep.addresses:
            other = res._by_address.get(a)
            if other is not None:
                raise PolicyError(f"address {a} belongs to both {other.endpoint.name!r} and {ep.name!r}")
            if a in res.host_addresses:
                raise PolicyError(f"address {a} of endpoint {ep.name!r} is one of the host's")
            res._by_address[a] = epp
    managed = {epp.identity.id: epp.identity for epp in res.endpoints.values()}
    reserved_idents = [alloc.reserved_identity(n) for n in RESERVED]

    def select_peers(sel: EndpointSelector) -> list[int]:
        if sel.selects_all:
            return [ANY_PEER]
        ids = [i.id for i in managed.values() if sel.matches(i.labels)]
        if sel.names_reserved:
            ids += [i.id for i in reserved_idents if sel.matches(i.labels)]
        return sorted(set(ids))

    reported: set[tuple[str, int, int]] = set()

    def nothing(rule: Rule, sel: EndpointSelector, what: str) -> None:
        key = (rule.file, sel.line, sel.col)
        if key in reported:
            return
        reported.add(key)
        res.problems.append(
            PolicyProblem(
                code="NP_SELECTS_NOTHING", message=f"{what} {sel} of {rule.policy} rule {rule.index} selects no endpoint",
                file=rule.file, line=sel.line, col=sel.col, hint="check the labels of `andon endpoint list`",
                item=f"policy '{rule.policy}'", severity="warning",
            )  # fmt: skip
        )

    for pol in pols:
        res.policy_audit[pol.name] = pol.audit
        for rule in pol.rules:
            sel = rule.endpoint_selector
            if sel is None:  # a nodeSelector rule: not applied (reported by the parser)
                continue
            subjects = [epp for epp in res.endpoints.values() if sel.matches(epp.endpoint.labels)]
            if not subjects and eps:
                nothing(rule, sel, "endpointSelector")
            for direction in DIRECTIONS:
                allow_entries: list[Entry] = []
                for deny in (False, True):
                    for pr in rule.peers(direction, deny):
                        peers = _peers(pr, select_peers, managed, lambda s: nothing(rule, s, "peer selector") if eps else None)
                        for peer in peers:
                            for proto, lo, hi in _l4(pr):
                                # audit marks deny entries only: allows forward anyway (the datapath refuses audited allows)
                                e = Entry(direction, peer, proto, lo, hi, DENY if deny else ALLOW, pol.name, rule.index, pr.index,
                                          pol.audit and deny)  # fmt: skip
                                allow_entries.append(e)
                dd = rule.default_deny_ingress if direction == INGRESS else rule.default_deny_egress
                for epp in subjects:
                    if dd:
                        if pol.name not in epp.default_deny[direction]:
                            first = not epp.default_deny[direction]
                            epp.default_deny[direction].append(pol.name)
                            # audited only while every policy that switched it on is audited
                            epp.default_deny_audit[direction] = pol.audit if first else (epp.default_deny_audit[direction] and pol.audit)
                    for e in allow_entries:
                        if e not in epp.entries:
                            epp.entries.append(e)
    _report_shadowed(res)
    return res


def _peers(pr: PeerRule, select_peers, managed: dict[int, Identity], nothing) -> list[int | IPNetwork]:
    out: list[int | IPNetwork] = []
    for sel in pr.endpoints:
        ids = select_peers(sel)
        if not ids:
            nothing(sel)
        out.extend(ids)
    for c in pr.cidrs:
        out.extend(c.prefixes())
    for ent in pr.entities:
        if ent == "all":
            out.append(ANY_PEER)
        elif ent == "world":
            out.append(ID_WORLD)
        elif ent == "world-ipv4":
            out.append(ipaddress.ip_network("0.0.0.0/0"))
        elif ent == "world-ipv6":
            out.append(ipaddress.ip_network("::/0"))
        elif ent == "cluster":
            out.extend(sorted(managed))
            out.extend(RESERVED[n] for n in _CLUSTER_RESERVED)
        elif ent in RESERVED:
            out.append(RESERVED[ent])
        # "none": nothing
    if not pr.has_l3 and pr.has_l4:
        out.append(ANY_PEER)
    seen: list[int | IPNetwork] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def _l4(pr: PeerRule) -> list[tuple[int, int, int]]:
    if not pr.has_l4:
        return [(0, 0, 65535)]
    out: list[tuple[int, int, int]] = []
    for rule in pr.ports:
        if not rule.ports:  # toPorts without ports: every port, as Cilium reads it
            out.append((0, 0, 65535))
        for pp in rule.ports:
            if pp.name is not None:  # named port: not resolvable here (reported); allows nothing
                continue
            lo, hi = pp.lo_hi
            names = _L4_EXPAND_ANY if pp.protocol == "ANY" else (pp.protocol,)
            out.extend((PROTOCOLS[n], lo, hi) for n in names)
    for f in pr.icmps:
        out.append((1 if f.family == "IPv4" else 58, f.type, f.type))
    return list(dict.fromkeys(out))


def _report_shadowed(res: Resolution) -> None:
    """An allow entry that a deny entry for the same peer (or any peer) overlaps: deny wins there."""
    seen: set[tuple] = set()
    for epp in res.endpoints.values():
        denies = [e for e in epp.entries if e.verdict == DENY]
        if not denies:
            continue
        for a in epp.entries:
            if a.verdict != ALLOW:
                continue
            for d in denies:
                if d.direction != a.direction or d.peer not in (a.peer, ANY_PEER):
                    continue
                if not (d.proto == 0 or a.proto == 0 or d.proto == a.proto) or d.port_hi < a.port_lo or a.port_hi < d.port_lo:
                    continue
                key = (a, d)
                if key in seen:
                    break
                seen.add(key)
                res.problems.append(
                    PolicyProblem(
                        code="NP_CONFLICT",
                        message=f"on {epp.endpoint.name}: {a.describe()} overlaps {d.describe()}: deny wins where they overlap",
                        file="", item=f"endpoint '{epp.endpoint.name}'", severity="warning",
                    )
                )
                break
