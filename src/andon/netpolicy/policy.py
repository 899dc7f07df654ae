"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML in, :class:`Policy` objects out,
with every problem found on the way.

``load_files(paths)`` / ``load_texts([(name, text), ...])`` read every document of every file
(``spec:`` one rule, ``specs:`` a list, both allowed together) and check them as Cilium 1.19
does (``pkg/policy/api``: ``rule.go``, ``ingress.go``, ``egress.go``, ``l4.go``, ``cidr.go``,
``entity.go``, ``icmp.go``, ``rule_validation.go``). Problems are collected, not first-only;
each has a code, ``file:line:col``, the source line and a hint, in the same shape as the Falco
rules loader's (:class:`andon.rules.loader.Problem`, :class:`~andon.rules.loader.LoadResult`).

A policy with an error is not returned (the caller keeps what it had); warnings do not stop
it. What andon cannot enforce on one host is parsed and reported as an ``NP_NOT_ENFORCED``
warning that says what happens instead:

* ``nodeSelector`` rules (host policies): one node, andon enforces on endpoints; not applied.
* ``toServices``, ``toFQDNs``, ``fromGroups``/``toGroups``, ``fromNodes``/``toNodes``, CIDR
  groups: the peer they name does not exist here, so the entry allows (or denies) nothing;
  the rule still switches default deny on, as in Cilium.
* L7 ``rules`` (``http``, ``dns``, ``kafka``, ``l7proto``) and SNI ``serverNames``: no proxy;
  the L3/L4 part is enforced, every request on that port is allowed.
* named ports: no Kubernetes container ports; that port entry allows nothing.

``fromRequires``/``toRequires`` are rejected: Cilium 1.19 no longer accepts them.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..rules.loader import LoadResult, Problem, SourceText
from .identity import IPNetwork
from .labels import SOURCE_ANY, split_key
from .selector import OPERATORS, EndpointSelector, Requirement, canonical_operator

KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
# metadata.annotations key: "true" puts the policy in audit mode (its would-be drops pass as AUDIT)
AUDIT_ANNOTATION = "andon.io/policy-audit-mode"
API_VERSIONS = ("cilium.io/v2",)

CODES = {
    "NP_FILE_READ": "File read error",
    "NP_YAML_PARSE": "YAML parse error",
    "NP_SCHEMA": "Wrong structure or type",
    "NP_UNKNOWN_FIELD": "Unknown field",
    "NP_REMOVED_FIELD": "Field no longer supported by Cilium",
    "NP_INVALID_VALUE": "Invalid value",
    "NP_UNSUPPORTED_COMBINATION": "Fields that cannot be combined in one rule",
    "NP_NOT_ENFORCED": "Parsed but not enforced on this host",
    "NP_IGNORED_FIELD": "Field ignored",
    "NP_ENTITY_ABSENT": "Entity that never occurs on one host",
    "NP_OPERATOR_CASE": "Selector operator not in Kubernetes' spelling",
    "NP_DUPLICATE_POLICY": "Policy defined twice",
    "NP_CONFLICT": "Allow and deny for the same peer and port: deny wins",
    "NP_SELECTS_NOTHING": "Selector that selects no endpoint",
}

# protocol names (Cilium ParseL4Proto, upper-cased) -> IP protocol number; ANY is 0
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58, "ANY": 0}
PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6", 0: "ANY"}

# entities (Cilium entity.go). all/world/host/cluster are enforced; the others name traffic
# that does not exist on one andon host (no remote nodes, no health or init endpoints).
ENTITIES = (
    "all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "init", "remote-node", "health",
    "unmanaged", "kube-apiserver", "ingress", "none",
)  # fmt: skip
ABSENT_ENTITIES = frozenset({"init", "remote-node", "health", "unmanaged", "kube-apiserver", "ingress"})

# ICMP type names Cilium accepts (icmp.go), per family
ICMP_TYPES = {
    "IPv4": {
        "EchoReply": 0, "DestinationUnreachable": 3, "SourceQuench": 4, "Redirect": 5, "EchoRequest": 8,
        "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
        "Timestamp": 13, "TimestampReply": 14,
    },
    "IPv6": {
        "DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
        "EchoRequest": 128, "EchoReply": 129, "RouterSolicitation": 133, "RouterAdvertisement": 134,
        "NeighborSolicitation": 135, "NeighborAdvertisement": 136, "Redirect": 137,
    },
}  # fmt: skip

# the fields of each object (Cilium api types' json names)
TOP_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "specs", "status"})
METADATA_KEYS = frozenset({
    "name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "managedFields", "ownerReferences", "finalizers", "generateName",
})  # fmt: skip
RULE_KEYS = frozenset({
    "endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels",
    "description", "enableDefaultDeny", "log",
})  # fmt: skip
INGRESS_KEYS = frozenset({
    "fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "fromGroups", "fromNodes",
    "toPorts", "icmps", "authentication",
})  # fmt: skip
INGRESS_DENY_KEYS = INGRESS_KEYS - {"authentication"}
EGRESS_KEYS = frozenset({
    "toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toServices", "toFQDNs", "toGroups",
    "toNodes", "toPorts", "icmps", "authentication",
})  # fmt: skip
EGRESS_DENY_KEYS = EGRESS_KEYS - {"toFQDNs", "authentication"}
PORT_RULE_KEYS = frozenset({"ports", "rules", "serverNames", "terminatingTLS", "originatingTLS", "listener"})
PORT_DENY_RULE_KEYS = frozenset({"ports"})
PORT_KEYS = frozenset({"port", "endPort", "protocol"})
L7_KEYS = frozenset({"http", "kafka", "dns", "l7proto", "l7"})
CIDR_SET_KEYS = frozenset({"cidr", "except", "cidrGroupRef", "cidrGroupSelector"})
ICMP_RULE_KEYS = frozenset({"fields"})
ICMP_FIELD_KEYS = frozenset({"type", "family"})
SELECTOR_KEYS = frozenset({"matchLabels", "matchExpressions"})
EXPRESSION_KEYS = frozenset({"key", "operator", "values"})
DEFAULT_DENY_KEYS = frozenset({"ingress", "egress"})

# peers andon cannot see: the entry selects nothing here
_UNSEEN_PEERS = {
    "toServices": "needs Kubernetes services, which one host does not have",
    "toFQDNs": "needs Cilium's DNS proxy to learn the names' addresses",
    "fromGroups": "needs a cloud provider's groups",
    "toGroups": "needs a cloud provider's groups",
    "fromNodes": "needs other nodes",
    "toNodes": "needs other nodes",
}
_REMOVED = {
    "fromRequires": "'fromRequires' was removed from Cilium (1.19 rejects it)",
    "toRequires": "'toRequires' was removed from Cilium (1.19 rejects it)",
}
_REMOVED_HINT = (
    "put the required labels into each fromEndpoints/toEndpoints selector instead "
    "(a matchLabels entry there ANDs with the others)"
)
_SVC_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*\Z")


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class PortProtocol:
    """``port`` 0 = every port; ``end_port`` >= ``port`` for a range; ``name`` a named port (unresolved)."""

    port: int
    end_port: int
    protocol: str  # TCP UDP SCTP ICMP ICMPV6 ANY
    name: str | None = None

    @property
    def lo_hi(self) -> tuple[int, int]:
        if self.port == 0:
            return 0, 65535
        return self.port, max(self.port, self.end_port)

    def __str__(self) -> str:
        p = self.name or ("*" if self.port == 0 else str(self.port))
        if self.end_port > self.port:
            p += f"-{self.end_port}"
        return f"{p}/{self.protocol}"


@dataclass(frozen=True)
class PortRule:
    ports: tuple[PortProtocol, ...]
    l7: str | None = None  # http | dns | kafka | l7proto: parsed, not enforced
    server_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ICMPField:
    family: str  # IPv4 | IPv6
    type: int


@dataclass(frozen=True)
class CIDRRule:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def prefixes(self) -> list[IPNetwork]:
        """The CIDR with its exceptions carved out, as a list of prefixes."""
        parts = [self.cidr]
        for ex in self.excepts:
            nxt: list[IPNetwork] = []
            for p in parts:
                if ex.version != p.version or not ex.overlaps(p):
                    nxt.append(p)
                elif p.subnet_of(ex):  # type: ignore[arg-type]
                    continue
                else:
                    nxt.extend(p.address_exclude(ex))  # type: ignore[arg-type]
            parts = nxt
        return sorted(parts, key=lambda n: (n.version, n.network_address, n.prefixlen))

    def __str__(self) -> str:
        return str(self.cidr) + (f" except {', '.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True)
class PeerRule:
    """One entry of ``ingress``/``egress``/``ingressDeny``/``egressDeny``.

    L3 (at most one kind per entry, as Cilium demands): ``endpoints``, ``cidrs``, ``entities``,
    or ``unseen`` (a peer kind andon cannot see: selects nothing). L4: ``ports`` or ``icmps``.
    No L3 and some L4: any peer. Neither: the entry selects nothing (``egress: [{}]``).
    """

    index: int
    endpoints: tuple[EndpointSelector, ...] = ()
    cidrs: tuple[CIDRRule, ...] = ()
    entities: tuple[str, ...] = ()
    unseen: str | None = None
    ports: tuple[PortRule, ...] = ()
    icmps: tuple[ICMPField, ...] = ()
    line: int = 0

    @property
    def has_l3(self) -> bool:
        return bool(self.endpoints or self.cidrs or self.entities or self.unseen)

    @property
    def has_l4(self) -> bool:
        return bool(self.ports or self.icmps)

    def peer_keys(self) -> list[str]:
        """Text of each peer this entry names (``any`` when it has L4 and no L3)."""
        keys = [f"endpoints {s}" for s in self.endpoints]
        keys += [f"cidr {c}" for c in self.cidrs]
        keys += [f"entity {e}" for e in self.entities]
        if self.unseen:
            keys.append(self.unseen)
        if not keys and self.has_l4:
            keys.append("any")
        return keys

    def l4_ranges(self) -> list[tuple[str, int, int]]:
        """``(protocol, lo, hi)`` of each port or ICMP type; ``[]`` = every protocol and port."""
        out = []
        for pr in self.ports:
            for pp in pr.ports:
                if pp.name is None:
                    out.append((pp.protocol, *pp.lo_hi))
        for f in self.icmps:
            out.append(("ICMP" if f.family == "IPv4" else "ICMPV6", f.type, f.type))
        return out


@dataclass(frozen=True)
class Rule:
    """One element of ``spec``/``specs``."""

    policy: str
    index: int
    endpoint_selector: EndpointSelector | None
    node_selector: EndpointSelector | None
    ingress: tuple[PeerRule, ...] = ()
    ingress_deny: tuple[PeerRule, ...] = ()
    egress: tuple[PeerRule, ...] = ()
    egress_deny: tuple[PeerRule, ...] = ()
    default_deny_ingress: bool = False  # after Cilium's defaulting (Rule.Sanitize)
    default_deny_egress: bool = False
    description: str = ""
    file: str = ""
    line: int = 0

    def peers(self, direction: str, deny: bool) -> tuple[PeerRule, ...]:
        if direction == "ingress":
            return self.ingress_deny if deny else self.ingress
        return self.egress_deny if deny else self.egress


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str
    rules: tuple[Rule, ...]
    namespace: str = ""
    file: str = ""
    line: int = 0
    audit: bool = False

    @property
    def clusterwide(self) -> bool:
        return self.kind == "CiliumClusterwideNetworkPolicy"

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "rules": len(self.rules),
            "ingress": sum(len(r.ingress) for r in self.rules),
            "ingressDeny": sum(len(r.ingress_deny) for r in self.rules),
            "egress": sum(len(r.egress) for r in self.rules),
            "egressDeny": sum(len(r.egress_deny) for r in self.rules),
        }


# ---------------------------------------------------------------------------------------------
# results: the Falco loader's shapes


@dataclass(frozen=True)
class PolicyProblem(Problem):
    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["codedesc"] = CODES.get(self.code, "")
        return d


@dataclass
class PolicyLoadResult(LoadResult):
    policies: list[Policy] = field(default_factory=list)

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c.get('policies', 0)} policies, {c.get('rules', 0)} rules loaded; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        d["policies"] = [p.summary() for p in self.policies]
        return d

    def codes(self, severity: str | None = None) -> list[str]:
        return [p.code for p in self.problems if severity is None or p.severity == severity]


# ---------------------------------------------------------------------------------------------
# the reader


_NULL = "tag:yaml.org,2002:null"
_INT = "tag:yaml.org,2002:int"
_STR = "tag:yaml.org,2002:str"


def _is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _NULL)


class _Reader:
    def __init__(self, audit_files: Iterable[str] = ()) -> None:
        self.audit_files = frozenset(str(f) for f in audit_files)
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.files: list[str] = []
        self.policies: list[Policy] = []
        self.src: SourceText | None = None
        self.item = ""

    # -- problems ---------------------------------------------------------------------------

    def _add(self, severity: str, code: str, message: str, node: Node | None, hint: str) -> None:
        src = self.src
        assert src is not None
        line = col = 0
        if node is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
        p = PolicyProblem(
            code=code, message=message, file=src.name, line=line, col=col,
            snippet=src.line_text(line) if line else "", hint=hint, item=self.item, severity=severity,
        )  # fmt: skip
        (self.errors if severity == "error" else self.warnings).append(p)

    def error(self, code: str, message: str, node: Node | None, hint: str = "") -> None:
        self._add("error", code, message, node, hint)

    def warn(self, code: str, message: str, node: Node | None, hint: str = "") -> None:
        self._add("warning", code, message, node, hint)

    # -- node helpers -----------------------------------------------------------------------

    def mapping(self, node: Node, what: str, known: frozenset[str]) -> dict[str, tuple[ScalarNode, Node]] | None:
        """The keys of a mapping; unknown keys are errors with a "did you mean"."""
        if _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.error("NP_SCHEMA", f"{what} must be a mapping (key: value), not {_kind(node)}", node)
            return None
        out: dict[str, tuple[ScalarNode, Node]] = {}
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                self.error("NP_SCHEMA", f"keys of {what} must be plain names", k)
                continue
            if k.value in out:
                self.error("NP_SCHEMA", f"'{k.value}' appears twice in {what}", k, "YAML keeps only the last one; merge them")
            if k.value in _REMOVED and k.value not in known:
                self.error("NP_REMOVED_FIELD", _REMOVED[k.value], k, _REMOVED_HINT)
                continue
            if k.value not in known:
                close = difflib.get_close_matches(k.value, sorted(known), n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"{what} takes: {', '.join(sorted(known))}"
                self.error("NP_UNKNOWN_FIELD", f"unknown field '{k.value}' in {what}", k, hint)
                continue
            out[k.value] = (k, v)
        return out

    def seq(self, node: Node, what: str) -> list[Node] | None:
        if _is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.error("NP_SCHEMA", f"{what} must be a list, not {_kind(node)}", node, f"write it as '- ...' items under {what}")
            return None
        return list(node.value)

    def scalar(self, node: Node, what: str) -> str | None:
        if not isinstance(node, ScalarNode) or _is_null(node):
            self.error("NP_SCHEMA", f"{what} must be a single value, not {_kind(node)}", node)
            return None
        return node.value

    def strings(self, node: Node, what: str) -> list[tuple[str, Node]]:
        items = self.seq(node, what)
        out = []
        for it in items or ():
            s = self.scalar(it, f"an item of {what}")
            if s is not None:
                out.append((s, it))
        return out

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return node.value.lower() in ("true", "yes", "on")
        self.error("NP_SCHEMA", f"{what} must be true or false", node)
        return None

    # -- files and documents ------------------------------------------------------------------

    def read(self, name: str, text: str) -> None:
        self.files.append(name)
        self.src = SourceText(name, text)
        self.item = ""
        try:
            docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = " ".join(x for x in (e.context, e.problem) if x) or "YAML error"
            line = mark.line + 1 if mark else 0
            col = mark.column + 1 if mark else 0
            self.errors.append(
                PolicyProblem(
                    code="NP_YAML_PARSE", message=msg, file=name, line=line, col=col,
                    snippet=self.src.line_text(line) if line else "",
                    hint="the file is not valid YAML; nothing in it was loaded",
                )  # fmt: skip
            )
            return
        except yaml.YAMLError as e:
            self.error("NP_YAML_PARSE", str(e).splitlines()[0] if str(e) else "YAML error", None)
            return
        for doc in docs:
            if _is_null(doc):
                continue
            before = len(self.errors)
            self.item = ""
            pol = self.document(doc)
            if pol is not None and len(self.errors) == before:
                self.policies.append(pol)

    def document(self, doc: Node) -> Policy | None:
        if isinstance(doc, MappingNode):
            for k, v in doc.value:
                if isinstance(k, ScalarNode) and k.value == "description":
                    # written at the top level by some examples; not a field of the CRD
                    self.warn(
                        "NP_IGNORED_FIELD", "'description' at the top level is not part of a Cilium policy; ignored", k,
                        "move it under spec: (a rule's description) to keep it",
                    )  # fmt: skip
            doc = MappingNode(doc.tag, [(k, v) for k, v in doc.value if not (isinstance(k, ScalarNode) and k.value == "description")],
                              doc.start_mark, doc.end_mark)  # fmt: skip
        top = self.mapping(doc, "a policy document", TOP_KEYS)
        if top is None:
            return None
        kind = self.scalar(top["kind"][1], "kind") if "kind" in top else None
        if "kind" not in top:
            self.error("NP_SCHEMA", "the document has no 'kind'", doc, f"add 'kind: {KINDS[0]}' (or {KINDS[1]})")
        elif kind is not None and kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            self.error(
                "NP_INVALID_VALUE", f"kind '{kind}' is not a Cilium network policy", top["kind"][1],
                f"did you mean '{close[0]}'?" if close else f"kind is {KINDS[0]} or {KINDS[1]}",
            )  # fmt: skip
            kind = None
        if "apiVersion" in top:
            api = self.scalar(top["apiVersion"][1], "apiVersion")
            if api is not None and api not in API_VERSIONS:
                self.error("NP_INVALID_VALUE", f"apiVersion '{api}' is not one andon reads", top["apiVersion"][1], "use apiVersion: cilium.io/v2")
        else:
            self.error("NP_SCHEMA", "the document has no 'apiVersion'", doc, "add 'apiVersion: cilium.io/v2'")
        name, namespace = "", ""
        audit = self.src is not None and self.src.name in self.audit_files
        if "metadata" not in top:
            self.error("NP_SCHEMA", "the document has no 'metadata'", doc, "add metadata: {name: ...}")
        else:
            meta = self.mapping(top["metadata"][1], "metadata", METADATA_KEYS)
            if meta is not None:
                if "name" not in meta:
                    self.error("NP_SCHEMA", "metadata has no 'name'", top["metadata"][0], "every policy needs a name")
                else:
                    name = self.scalar(meta["name"][1], "metadata.name") or ""
                if "annotations" in meta:
                    audit = self.annotations(meta["annotations"][1]) or audit
                if "namespace" in meta:
                    namespace = self.scalar(meta["namespace"][1], "metadata.namespace") or ""
                    if kind == KINDS[1]:
                        self.warn("NP_IGNORED_FIELD", "a clusterwide policy has no namespace; ignored", meta["namespace"][0])
                    else:
                        self.warn(
                            "NP_NOT_ENFORCED", f"namespace '{namespace}': andon has no namespaces, the selectors are not limited to it",
                            meta["namespace"][0], "label endpoints with k8s:io.kubernetes.pod.namespace to select by namespace",
                        )  # fmt: skip
        self.item = f"{kind or 'policy'} '{name}'"
        rules_nodes: list[Node] = []
        if "spec" in top:
            rules_nodes.append(top["spec"][1])
        if "specs" in top:
            rules_nodes.extend(self.seq(top["specs"][1], "specs") or [])
        if "spec" not in top and "specs" not in top:
            self.error("NP_SCHEMA", "the policy has neither 'spec' nor 'specs'", doc, "put the rule under spec: (or a list of rules under specs:)")
        rules = []
        for node in rules_nodes:
            r = self.rule(node, name, len(rules))
            if r is not None:
                rules.append(r)
        if kind is None or not name:
            return None
        for prev in self.policies:
            if prev.name == name and prev.kind == kind and prev.namespace == namespace:
                self.warn("NP_DUPLICATE_POLICY", f"{kind} '{name}' is defined again (first at {prev.file}:{prev.line}); the later one is used", doc)
                self.policies.remove(prev)
                break
        assert self.src is not None
        return Policy(name, kind, tuple(rules), namespace, self.src.name, doc.start_mark.line + 1, audit)

    def annotations(self, node: Node) -> bool:
        """``metadata.annotations``: strings to strings, as Kubernetes demands; andon reads
        ``andon.io/policy-audit-mode`` ("true" or "false"). Returns the audit mode it asks for."""
        m = self.mapping(node, "metadata.annotations", _ANY_KEY)
        if not m or AUDIT_ANNOTATION not in m:
            return False
        vnode = m[AUDIT_ANNOTATION][1]
        if not (isinstance(vnode, ScalarNode) and vnode.tag == _STR):
            self.error(
                "NP_INVALID_VALUE", f"annotation {AUDIT_ANNOTATION} must be the string \"true\" or \"false\", not {_kind(vnode)}", vnode,
                f'annotations are strings in Kubernetes: quote it, {AUDIT_ANNOTATION}: "true"',
            )  # fmt: skip
            return False
        if vnode.value not in ("true", "false"):
            self.error("NP_INVALID_VALUE", f"annotation {AUDIT_ANNOTATION} is \"true\" or \"false\", not {vnode.value!r}", vnode)
            return False
        return vnode.value == "true"

    # -- rules --------------------------------------------------------------------------------

    def rule(self, node: Node, policy: str, index: int) -> Rule | None:
        m = self.mapping(node, "a rule (spec)", RULE_KEYS)
        if m is None:
            return None
        es = ns = None
        if "endpointSelector" in m:
            es = self.selector(m["endpointSelector"][1], "endpointSelector")
        if "nodeSelector" in m:
            ns = self.selector(m["nodeSelector"][1], "nodeSelector")
            self.warn(
                "NP_NOT_ENFORCED", "nodeSelector (a host policy) is not enforced: andon runs on one node and enforces on endpoints; this rule is not applied",
                m["nodeSelector"][0], "for traffic to the host itself use andon's XDP host firewall",
            )  # fmt: skip
        if "endpointSelector" in m and "nodeSelector" in m:
            self.error("NP_UNSUPPORTED_COMBINATION", "a rule cannot have both endpointSelector and nodeSelector", m["nodeSelector"][0])
        elif "endpointSelector" not in m and "nodeSelector" not in m:
            self.error("NP_SCHEMA", "a rule must have an endpointSelector (or a nodeSelector)", node, "endpointSelector: {} selects every endpoint")
        host = "nodeSelector" in m
        lists: dict[str, tuple[PeerRule, ...]] = {}
        for key, keys, ingress, deny in (
            ("ingress", INGRESS_KEYS, True, False),
            ("ingressDeny", INGRESS_DENY_KEYS, True, True),
            ("egress", EGRESS_KEYS, False, False),
            ("egressDeny", EGRESS_DENY_KEYS, False, True),
        ):
            out = []
            if key in m:
                for i, item in enumerate(self.seq(m[key][1], key) or []):
                    pr = self.peer_rule(item, key, keys, i, ingress=ingress, deny=deny, host=host)
                    if pr is not None:
                        out.append(pr)
            lists[key] = tuple(out)
        # Cilium: default deny in a direction when the rule has entries for it, unless
        # enableDefaultDeny says otherwise (Rule.Sanitize)
        dd_in = "ingress" in m and _seq_len(m["ingress"][1]) > 0 or "ingressDeny" in m and _seq_len(m["ingressDeny"][1]) > 0
        dd_eg = "egress" in m and _seq_len(m["egress"][1]) > 0 or "egressDeny" in m and _seq_len(m["egressDeny"][1]) > 0
        if "enableDefaultDeny" in m:
            dd = self.mapping(m["enableDefaultDeny"][1], "enableDefaultDeny", DEFAULT_DENY_KEYS) or {}
            if "ingress" in dd:
                v = self.boolean(dd["ingress"][1], "enableDefaultDeny.ingress")
                dd_in = dd_in if v is None else v
            if "egress" in dd:
                v = self.boolean(dd["egress"][1], "enableDefaultDeny.egress")
                dd_eg = dd_eg if v is None else v
        desc = ""
        if "description" in m:
            desc = self.scalar(m["description"][1], "description") or ""
        if "labels" in m:
            self.seq(m["labels"][1], "labels")
        if "log" in m:
            self.warn("NP_IGNORED_FIELD", "'log' (policy log values) is ignored: andon's flows always name the policy", m["log"][0])
        return Rule(
            policy=policy, index=index, endpoint_selector=es, node_selector=ns,
            ingress=lists["ingress"], ingress_deny=lists["ingressDeny"], egress=lists["egress"],
            egress_deny=lists["egressDeny"], default_deny_ingress=bool(dd_in), default_deny_egress=bool(dd_eg),
            description=desc, file=self.src.name if self.src else "", line=node.start_mark.line + 1,
        )  # fmt: skip

    def peer_rule(self, node: Node, where: str, keys: frozenset[str], index: int, *, ingress: bool, deny: bool, host: bool) -> PeerRule | None:
        what = f"an {where} entry" if where[0] in "ie" else f"a {where} entry"
        m = self.mapping(node, what, keys)
        if m is None:
            return None
        pre = "from" if ingress else "to"
        l3_fields = [f for f in (f"{pre}Endpoints", f"{pre}CIDR", f"{pre}CIDRSet", f"{pre}Entities", f"{pre}Groups", f"{pre}Nodes", "toServices", "toFQDNs") if f in keys]
        given = [f for f in l3_fields if f in m and _seq_len(m[f][1]) > 0]
        if len(given) > 1:
            self.error(
                "NP_UNSUPPORTED_COMBINATION", f"combining {given[0]} and {given[1]} in one entry is not supported (Cilium rejects it)",
                m[given[1]][0], "write them as two entries of the list: entries OR, fields within one entry AND",
            )  # fmt: skip
        endpoints: list[EndpointSelector] = []
        cidrs: list[CIDRRule] = []
        entities: list[str] = []
        unseen = None
        if f"{pre}Endpoints" in m:
            for i, sel in enumerate(self.seq(m[f"{pre}Endpoints"][1], f"{pre}Endpoints") or []):
                s = self.selector(sel, f"{pre}Endpoints[{i}]")
                if s is not None:
                    endpoints.append(s)
        if f"{pre}CIDR" in m:
            for text, n in self.strings(m[f"{pre}CIDR"][1], f"{pre}CIDR"):
                net = self.cidr(text, n, bare_ip=True)
                if net is not None:
                    cidrs.append(CIDRRule(net))
        if f"{pre}CIDRSet" in m:
            for item in self.seq(m[f"{pre}CIDRSet"][1], f"{pre}CIDRSet") or []:
                c = self.cidr_set(item, f"{pre}CIDRSet")
                if c is not None:
                    cidrs.append(c)
                elif isinstance(item, MappingNode) and any(k.value in ("cidrGroupRef", "cidrGroupSelector") for k, _ in item.value):
                    unseen = f"{pre}CIDRSet cidrGroup"
        if f"{pre}Entities" in m:
            for text, n in self.strings(m[f"{pre}Entities"][1], f"{pre}Entities"):
                if text not in ENTITIES:
                    close = difflib.get_close_matches(text, ENTITIES, n=1)
                    self.error(
                        "NP_INVALID_VALUE", f"unknown entity '{text}'", n,
                        f"did you mean '{close[0]}'?" if close else f"entities: {', '.join(ENTITIES)}",
                    )  # fmt: skip
                    continue
                if text in ABSENT_ENTITIES and not host:  # a host rule is reported once, as not applied
                    self.warn(
                        "NP_ENTITY_ABSENT", f"entity '{text}' never occurs on one andon host: this peer selects nothing", n,
                        "andon's peers are its endpoints, the host and the world",
                    )  # fmt: skip
                entities.append(text)
        for f, why in _UNSEEN_PEERS.items():
            if f in m and f in keys:
                self.warn("NP_NOT_ENFORCED", f"{f} {why}: this {where} entry {'denies' if deny else 'allows'} nothing here", m[f][0],
                          "default deny still applies to the selected endpoints, as in Cilium")  # fmt: skip
                if f == "toFQDNs":
                    self._fqdns(m[f][1])
                else:
                    self.seq(m[f][1], f)
                unseen = f
        ports: list[PortRule] = []
        icmps: list[ICMPField] = []
        if "toPorts" in m:
            for item in self.seq(m["toPorts"][1], "toPorts") or []:
                pr = self.port_rule(item, ingress=ingress, deny=deny, host=host)
                if pr is not None:
                    ports.append(pr)
        if "icmps" in m:
            for item in self.seq(m["icmps"][1], "icmps") or []:
                icmps.extend(self.icmp_rule(item))
        if "toPorts" in m and "icmps" in m and _seq_len(m["toPorts"][1]) and _seq_len(m["icmps"][1]):
            self.error(
                "NP_UNSUPPORTED_COMBINATION", "icmps and toPorts cannot be in the same entry (Cilium rejects it)", m["icmps"][0],
                "define a separate entry for the ICMP types",
            )  # fmt: skip
        if "toServices" in m and "toPorts" in m:
            self.error("NP_UNSUPPORTED_COMBINATION", "combining toServices and toPorts is not supported (Cilium rejects it)", m["toPorts"][0])
        if "authentication" in m:
            self.warn("NP_NOT_ENFORCED", "authentication (mutual auth) is not enforced: andon has no auth handshake; the entry applies without it", m["authentication"][0])
        return PeerRule(
            index=index, endpoints=tuple(endpoints), cidrs=tuple(cidrs), entities=tuple(entities), unseen=unseen,
            ports=tuple(ports), icmps=tuple(icmps), line=node.start_mark.line + 1,
        )  # fmt: skip

    def _fqdns(self, node: Node) -> None:
        for item in self.seq(node, "toFQDNs") or []:
            m = self.mapping(item, "a toFQDNs entry", frozenset({"matchName", "matchPattern"}))
            if m is not None and not m:
                self.error("NP_SCHEMA", "a toFQDNs entry needs matchName or matchPattern", item)

    # -- selectors ----------------------------------------------------------------------------

    def selector(self, node: Node, what: str) -> EndpointSelector | None:
        m = self.mapping(node, what, SELECTOR_KEYS)
        if m is None:
            return None
        reqs: list[Requirement] = []
        ok = True
        if "matchLabels" in m:
            ml = self.mapping(m["matchLabels"][1], f"{what}.matchLabels", _ANY_KEY)
            for key, (k, v) in (ml or {}).items():
                val = "" if _is_null(v) else self.scalar(v, f"the value of label '{key}'")
                if val is None:
                    ok = False
                    continue
                if not key:
                    self.error("NP_INVALID_VALUE", "a label key is empty", k)
                    ok = False
                    continue
                source, lkey = split_key(key, SOURCE_ANY)
                reqs.append(Requirement(source, lkey, "In", frozenset({val})))
        if "matchExpressions" in m:
            for e in self.seq(m["matchExpressions"][1], f"{what}.matchExpressions") or []:
                em = self.mapping(e, "a matchExpressions entry", EXPRESSION_KEYS)
                if em is None:
                    ok = False
                    continue
                if "key" not in em or "operator" not in em:
                    self.error("NP_SCHEMA", "a matchExpressions entry needs 'key' and 'operator'", e, "e.g. {key: app, operator: In, values: [web]}")
                    ok = False
                    continue
                key = self.scalar(em["key"][1], "key")
                optext = self.scalar(em["operator"][1], "operator")
                if key is None or optext is None:
                    ok = False
                    continue
                op = canonical_operator(optext)
                if op is None:
                    close = difflib.get_close_matches(optext, OPERATORS, n=1)
                    self.error(
                        "NP_INVALID_VALUE", f"operator '{optext}' is not a selector operator", em["operator"][1],
                        f"did you mean '{close[0]}'?" if close else f"operators: {', '.join(OPERATORS)}",
                    )  # fmt: skip
                    ok = False
                    continue
                if op != optext:
                    self.warn(
                        "NP_OPERATOR_CASE", f"operator '{optext}' is spelled '{op}' in Kubernetes; read as {op}", em["operator"][1],
                        f"write '{op}': the Kubernetes API server may reject the other spelling",
                    )  # fmt: skip
                values = [s for s, _ in self.strings(em["values"][1], "values")] if "values" in em else []
                if op in ("In", "NotIn") and not values:
                    self.error("NP_INVALID_VALUE", f"operator {op} needs at least one value", em["operator"][1], "add values: [...]")
                    ok = False
                    continue
                if op in ("Exists", "DoesNotExist") and values:
                    self.error("NP_INVALID_VALUE", f"operator {op} takes no values", em["values"][0], "remove values:")
                    ok = False
                    continue
                source, lkey = split_key(key, SOURCE_ANY)
                reqs.append(Requirement(source, lkey, op, frozenset(values)))
        if not ok:
            return None
        return EndpointSelector(tuple(reqs), node.start_mark.line + 1, node.start_mark.column + 1)

    # -- CIDRs ----------------------------------------------------------------------------------

    def cidr(self, text: str, node: Node, *, bare_ip: bool) -> IPNetwork | None:
        try:
            if "/" not in text:
                if not bare_ip:
                    raise ValueError("a prefix length is required")
                return ipaddress.ip_network(ipaddress.ip_address(text))
            return ipaddress.ip_network(text, strict=False)
        except ValueError as e:
            self.error("NP_INVALID_VALUE", f"'{text}' is not a CIDR: {e}", node, "write an address/prefix such as 10.0.0.0/8 or fd00::/64")
            return None

    def cidr_set(self, node: Node, what: str) -> CIDRRule | None:
        m = self.mapping(node, f"a {what} entry", CIDR_SET_KEYS)
        if m is None:
            return None
        for g in ("cidrGroupRef", "cidrGroupSelector"):
            if g in m:
                self.warn("NP_NOT_ENFORCED", f"{g} needs CiliumCIDRGroup resources, which andon does not read: this peer selects nothing", m[g][0])
        if "cidr" not in m:
            if not any(g in m for g in ("cidrGroupRef", "cidrGroupSelector")):
                self.error("NP_SCHEMA", f"a {what} entry needs 'cidr'", node)
            return None
        text = self.scalar(m["cidr"][1], "cidr")
        net = self.cidr(text, m["cidr"][1], bare_ip=False) if text is not None else None
        if net is None:
            return None
        excepts = []
        if "except" in m:
            for t, n in self.strings(m["except"][1], "except"):
                ex = self.cidr(t, n, bare_ip=False)
                if ex is None:
                    continue
                if ex.version != net.version or not ex.subnet_of(net):  # type: ignore[arg-type]
                    self.error("NP_INVALID_VALUE", f"except {ex} is not inside {net}", n, "an exception carves a part out of its cidr")
                    continue
                excepts.append(ex)
        return CIDRRule(net, tuple(excepts))

    # -- L4 -------------------------------------------------------------------------------------

    def port_rule(self, node: Node, *, ingress: bool, deny: bool, host: bool) -> PortRule | None:
        m = self.mapping(node, "a toPorts entry", PORT_DENY_RULE_KEYS if deny else PORT_RULE_KEYS)
        if m is None:
            return None
        ports: list[PortProtocol] = []
        port_nodes: list[Node] = []
        if "ports" in m:
            for item in self.seq(m["ports"][1], "ports") or []:
                pp = self.port(item)
                if pp is not None:
                    ports.append(pp)
                    port_nodes.append(item)
        l7 = None
        if "rules" in m and not _is_null(m["rules"][1]):
            rm = self.mapping(m["rules"][1], "rules", L7_KEYS) or {}
            kinds = [k for k in ("http", "kafka", "dns", "l7proto") if k in rm]
            if "l7" in rm and "l7proto" not in rm:
                self.error("NP_SCHEMA", "'l7' needs 'l7proto' too", rm["l7"][0])
            if len(kinds) > 1:
                self.error("NP_UNSUPPORTED_COMBINATION", f"one toPorts entry holds several L7 kinds ({', '.join(kinds)})", m["rules"][0], "split them into several toPorts entries")
            if kinds:
                l7 = kinds[0]
                knode = rm[l7][0]
                if l7 != "l7proto":
                    self.seq(rm[l7][1], l7)
                if host:
                    self.error("NP_UNSUPPORTED_COMBINATION", "host policies (nodeSelector) do not support L7 rules", knode)
                if l7 == "dns" and ingress:
                    self.error("NP_UNSUPPORTED_COMBINATION", "DNS rules are not allowed on ingress", knode)
                if not ports:
                    self.error("NP_SCHEMA", f"{l7} rules need the port(s) they apply to", knode)
                for pp, pn in zip(ports, port_nodes):
                    if pp.port == 0 and pp.name is None:
                        self.error("NP_INVALID_VALUE", "L7 rules cannot be used when a port is 0", pn)
                    if l7 != "dns" and pp.protocol != "TCP":
                        self.error("NP_INVALID_VALUE", f"L7 rules apply to TCP only (not {pp.protocol}), DNS rules excepted", pn)
                what = {"http": "HTTP", "kafka": "Kafka", "dns": "DNS", "l7proto": "L7 proxy"}[l7]
                plist = ", ".join(str(p) for p in ports) or "its ports"
                self.warn(
                    "NP_NOT_ENFORCED", f"{what} rules are not enforced (no proxy): the L3/L4 part is, every request on {plist} is allowed",
                    knode, "andon sees HTTP and DNS in flows (andon observe) but does not filter them",
                )  # fmt: skip
        names: list[str] = []
        if "serverNames" in m:
            names = [s for s, _ in self.strings(m["serverNames"][1], "serverNames")]
            for s, n in self.strings(m["serverNames"][1], "serverNames"):
                if not s:
                    self.error("NP_INVALID_VALUE", "an empty server name is not allowed", n)
            plist = ", ".join(str(p) for p in ports) or "its ports"
            self.warn(
                "NP_NOT_ENFORCED", f"SNI serverNames are not enforced (no TLS inspection): the L3/L4 part is, {plist} is allowed for every server name",
                m["serverNames"][0],
            )  # fmt: skip
        for t in ("terminatingTLS", "originatingTLS", "listener"):
            if t in m:
                self.warn("NP_NOT_ENFORCED", f"{t} needs Cilium's Envoy proxy: ignored, the L3/L4 part is enforced", m[t][0])
        return PortRule(tuple(ports), l7, tuple(names))

    def port(self, node: Node) -> PortProtocol | None:
        m = self.mapping(node, "a ports entry", PORT_KEYS)
        if m is None:
            return None
        if "port" not in m:
            self.error("NP_SCHEMA", "a ports entry needs 'port'", node, 'port: "0" means every port')
            return None
        text = self.scalar(m["port"][1], "port")
        if text is None:
            return None
        proto = "ANY"
        if "protocol" in m:
            ptext = self.scalar(m["protocol"][1], "protocol")
            if ptext is None:
                return None
            proto = ptext.upper() or "ANY"
            if proto not in PROTOCOLS:
                close = difflib.get_close_matches(proto, list(PROTOCOLS), n=1)
                self.error(
                    "NP_INVALID_VALUE", f"protocol '{ptext}' is not one of TCP, UDP, SCTP, ICMP, ICMPv6, ANY", m["protocol"][1],
                    f"did you mean '{close[0]}'?" if close else "",
                )  # fmt: skip
                return None
        name = None
        port = 0
        if _SVC_NAME.match(text.lower()) and len(text) <= 15 and not text.isdigit():
            name = text.lower()
            self.warn(
                "NP_NOT_ENFORCED", f"named port '{text}' needs Kubernetes container ports, which andon endpoints do not have: this port entry allows nothing",
                m["port"][1], "write the port number",
            )  # fmt: skip
        else:
            try:
                port = int(text, 0)
            except ValueError:
                port = -1
            if not 0 <= port <= 65535:
                self.error("NP_INVALID_VALUE", f"port '{text}' is not a number 0-65535 or a port name", m["port"][1])
                return None
        end = 0
        if "endPort" in m:
            etext = self.scalar(m["endPort"][1], "endPort")
            try:
                end = int(etext or "", 0)
            except ValueError:
                end = -1
            if not 0 <= end <= 65535:
                self.error("NP_INVALID_VALUE", f"endPort '{etext}' is not a number 0-65535", m["endPort"][1])
                return None
            if name is not None:
                self.error("NP_INVALID_VALUE", "endPort cannot follow a named port", m["endPort"][1])
                return None
            if end and port and end < port:
                self.error("NP_INVALID_VALUE", f"endPort {end} is below port {port}", m["endPort"][1], "the range is port..endPort")
                return None
        if proto in ("ICMP", "ICMPV6") and (port or end):
            self.error("NP_INVALID_VALUE", f"a port cannot select {proto} messages", m["port"][1], "use icmps: [{fields: [{type: 8, family: IPv4}]}] for ICMP types")
            return None
        return PortProtocol(port, end, proto, name)

    def icmp_rule(self, node: Node) -> list[ICMPField]:
        m = self.mapping(node, "an icmps entry", ICMP_RULE_KEYS)
        out: list[ICMPField] = []
        if not m or "fields" not in m:
            if m is not None:
                self.error("NP_SCHEMA", "an icmps entry needs 'fields'", node)
            return out
        for f in self.seq(m["fields"][1], "fields") or []:
            fm = self.mapping(f, "an ICMP field", ICMP_FIELD_KEYS)
            if fm is None:
                continue
            family = "IPv4"
            if "family" in fm:
                family = self.scalar(fm["family"][1], "family") or ""
                if family not in ("IPv4", "IPv6"):
                    self.error("NP_INVALID_VALUE", f"family '{family}' is not IPv4 or IPv6", fm["family"][1])
                    continue
            if "type" not in fm:
                self.error("NP_SCHEMA", "an ICMP field needs 'type'", f)
                continue
            tnode = fm["type"][1]
            ttext = self.scalar(tnode, "type")
            if ttext is None:
                continue
            names = ICMP_TYPES[family]
            if ttext in names:
                out.append(ICMPField(family, names[ttext]))
                continue
            try:
                t = int(ttext)
            except ValueError:
                close = difflib.get_close_matches(ttext, list(names), n=1)
                self.error(
                    "NP_INVALID_VALUE", f"ICMP type '{ttext}' is not a number or an {family} type name", tnode,
                    f"did you mean '{close[0]}'?" if close else f"names: {', '.join(names)}",
                )  # fmt: skip
                continue
            if not 0 <= t <= 255:
                self.error("NP_INVALID_VALUE", f"ICMP type {t} is not 0-255", tnode)
                continue
            out.append(ICMPField(family, t))
        return out


class _AnyKey(frozenset):
    """Every key is known (label keys in matchLabels)."""

    def __contains__(self, item: object) -> bool:
        return True


_ANY_KEY = _AnyKey()


def _kind(node: Node | None) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if _is_null(node):
        return "empty"
    return f"the value {node.value!r}" if isinstance(node, ScalarNode) else "that"


def _seq_len(node: Node) -> int:
    return len(node.value) if isinstance(node, SequenceNode) else 0


# ---------------------------------------------------------------------------------------------
# conflicts: an allow that a deny of the same peer and port overrides


def _ranges_overlap(a: list[tuple[str, int, int]], b: list[tuple[str, int, int]]) -> str | None:
    if not a or not b:
        return "every port" if not a and not b else ", ".join(_fmt_range(r) for r in (a or b))
    for pa, la, ha in a:
        for pb, lb, hb in b:
            if (pa == pb or "ANY" in (pa, pb)) and la <= hb and lb <= ha:
                p = pb if pa == "ANY" else pa
                return _fmt_range((p, max(la, lb), min(ha, hb)))
    return None


def _fmt_range(r: tuple[str, int, int]) -> str:
    p, lo, hi = r
    if lo == 0 and hi == 65535:
        return f"*/{p}"
    return f"{lo}/{p}" if lo == hi else f"{lo}-{hi}/{p}"


def find_conflicts(policies: Iterable[Policy]) -> list[tuple[Rule, PeerRule, Rule, PeerRule, str, str, str]]:
    """``(allow rule, allow entry, deny rule, deny entry, direction, peer, ports)`` for every allow
    entry overridden by a deny entry naming the same peer, on rules with the same endpointSelector."""
    rules = [r for p in policies for r in p.rules if r.endpoint_selector is not None]
    out = []
    for ra in rules:
        for rd in rules:
            if str(ra.endpoint_selector) != str(rd.endpoint_selector):
                continue
            for direction in ("ingress", "egress"):
                for a in ra.peers(direction, deny=False):
                    for d in rd.peers(direction, deny=True):
                        common = [k for k in a.peer_keys() if k in d.peer_keys()]
                        if not common:
                            continue
                        ports = _ranges_overlap(a.l4_ranges(), d.l4_ranges())
                        if ports is not None:
                            out.append((ra, a, rd, d, direction, common[0], ports))
    return out


# ---------------------------------------------------------------------------------------------
# entry points


def load_texts(sources: Iterable[tuple[str, str]], audit_files: Iterable[str] = ()) -> PolicyLoadResult:
    """Read ``(name, text)`` pairs in order; a later policy of the same kind and name replaces an earlier one.
    Every policy of a source named in ``audit_files`` is in audit mode (``andon policy apply --audit``)."""
    rd = _Reader(audit_files)
    for name, text in sources:
        rd.read(name, text)
    _report_conflicts(rd)
    return _result(rd)


def load_files(paths: Iterable[str | Path], audit_files: Iterable[str] = ()) -> PolicyLoadResult:
    rd = _Reader(audit_files)
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            rd.files.append(str(p))
            rd.errors.append(PolicyProblem(code="NP_FILE_READ", message=f"cannot read the file: {e}", file=str(p)))
            continue
        rd.read(str(p), text)
    _report_conflicts(rd)
    return _result(rd)


def load_text(text: str, name: str = "<policy>", *, audit: bool = False) -> PolicyLoadResult:
    return load_texts([(name, text)], [name] if audit else ())


def _report_conflicts(rd: _Reader) -> None:
    for ra, a, rd_, d, direction, peer, ports in find_conflicts(rd.policies):
        rd.warnings.append(
            PolicyProblem(
                code="NP_CONFLICT",
                message=(
                    f"{direction} entry {a.index} of {ra.policy} rule {ra.index} allows {peer} on {ports}, "
                    f"which {direction}Deny entry {d.index} of {rd_.policy} rule {rd_.index} denies: deny wins"
                ),
                file=ra.file, line=a.line, col=0, hint="drop one of them if the overlap is not intended",
                item=f"policy '{ra.policy}'", severity="warning",
            )
        )


def _result(rd: _Reader) -> PolicyLoadResult:
    counts = {"policies": len(rd.policies), "rules": sum(len(p.rules) for p in rd.policies)}
    return PolicyLoadResult(
        errors=rd.errors, warnings=rd.warnings, ruleset=None, files=rd.files, counts=counts, policies=list(rd.policies),
    )  # fmt: skip
