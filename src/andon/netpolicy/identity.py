"""Numeric identities for label sets, and the endpoints that carry them.

As Cilium (``pkg/identity/numericidentity.go``): a few small numbers are reserved for
entities without labels of their own (host 1, world 2, ...); identities for label sets are
allocated from 256 up, one per distinct label set, so endpoints with the same labels share an
identity. CIDR prefixes used by policies get node-local identities from ``1 << 24`` up
(Cilium's local scope), which is what the datapath puts in its ip -> identity LPM map.

The allocation is kept as a plain dict (``to_dict``/``from_dict``) so an agent restart hands
out the same numbers again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .labels import Label, LabelSet, PolicyError, SOURCE_CIDR, format_labels, labels_from, reserved

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cilium's reserved identities (pkg/identity/numericidentity.go)
ID_UNKNOWN = 0
ID_HOST = 1
ID_WORLD = 2
ID_UNMANAGED = 3
ID_HEALTH = 4
ID_INIT = 5
ID_REMOTE_NODE = 6
ID_KUBE_APISERVER = 7
ID_INGRESS = 8
ID_WORLD_IPV4 = 9
ID_WORLD_IPV6 = 10
RESERVED = {
    "host": ID_HOST,
    "world": ID_WORLD,
    "unmanaged": ID_UNMANAGED,
    "health": ID_HEALTH,
    "init": ID_INIT,
    "remote-node": ID_REMOTE_NODE,
    "kube-apiserver": ID_KUBE_APISERVER,
    "ingress": ID_INGRESS,
    "world-ipv4": ID_WORLD_IPV4,
    "world-ipv6": ID_WORLD_IPV6,
}
RESERVED_NAMES = {v: k for k, v in RESERVED.items()}
MIN_USER_IDENTITY = 256  # Cilium's MinimalAllocationIdentity
MAX_USER_IDENTITY = 65535
LOCAL_IDENTITY_BASE = 1 << 24  # Cilium's IdentityScopeLocal: CIDR identities


@dataclass(frozen=True)
class Identity:
    id: int
    labels: LabelSet

    @property
    def reserved(self) -> bool:
        return self.id < MIN_USER_IDENTITY

    def __str__(self) -> str:
        return f"{self.id} ({', '.join(format_labels(self.labels)) or 'no labels'})"


class IdentityAllocator:
    """Same label set -> same identity, for as long as the allocator (or its dict) lives."""

    def __init__(self) -> None:
        self._by_labels: dict[LabelSet, Identity] = {}
        self._by_id: dict[int, Identity] = {}
        self._next_user = MIN_USER_IDENTITY
        self._next_local = LOCAL_IDENTITY_BASE
        for name, num in RESERVED.items():
            self._add(Identity(num, reserved(name)))

    def _add(self, ident: Identity) -> Identity:
        self._by_labels[ident.labels] = ident
        self._by_id[ident.id] = ident
        return ident

    def allocate(self, labels: Iterable[str] | Mapping[str, str] | LabelSet) -> Identity:
        """The identity of a label set, allocating the next free number the first time."""
        lbls = labels_from(labels)
        got = self._by_labels.get(lbls)
        if got is not None:
            return got
        if any(lbl.source == SOURCE_CIDR for lbl in lbls):
            return self._add(Identity(self._take_local(), lbls))
        while self._next_user in self._by_id:
            self._next_user += 1
        if self._next_user > MAX_USER_IDENTITY:
            raise PolicyError(f"no identity left: {MAX_USER_IDENTITY - MIN_USER_IDENTITY + 1} label sets in use")
        ident = self._add(Identity(self._next_user, lbls))
        self._next_user += 1
        return ident

    def _take_local(self) -> int:
        while self._next_local in self._by_id:
            self._next_local += 1
        n = self._next_local
        self._next_local += 1
        return n

    def allocate_cidr(self, prefix: str | IPNetwork) -> Identity:
        """A node-local identity for a CIDR prefix (``cidr:10.0.0.0/8``)."""
        net = ipaddress.ip_network(prefix, strict=False)
        return self.allocate(frozenset({Label(SOURCE_CIDR, str(net), "")}))

    def reserved_identity(self, name: str) -> Identity:
        return self._by_id[RESERVED[name]]

    def lookup(self, num: int) -> Identity | None:
        return self._by_id.get(num)

    def lookup_labels(self, labels: LabelSet) -> Identity | None:
        return self._by_labels.get(labels)

    def __iter__(self):
        return iter(sorted(self._by_id.values(), key=lambda i: i.id))

    def __len__(self) -> int:
        return len(self._by_id)

    def to_dict(self) -> dict[str, Any]:
        """``{"identities": {"256": ["k8s:app=web"], ...}}``: allocated ones only, reserved are implied."""
        return {
            "identities": {str(i.id): format_labels(i.labels) for i in self if not i.reserved},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentityAllocator:
        alloc = cls()
        idents = data.get("identities", {}) if isinstance(data, Mapping) else None
        if not isinstance(idents, Mapping):
            raise PolicyError("an identity allocation is {'identities': {id: [labels...]}}")
        for num_text, labels in idents.items():
            try:
                num = int(num_text)
            except (TypeError, ValueError):
                raise PolicyError(f"identity {num_text!r} is not a number") from None
            if num < MIN_USER_IDENTITY:
                raise PolicyError(f"identity {num} is reserved, it cannot be restored")
            lbls = labels_from(labels)
            if num in alloc._by_id or lbls in alloc._by_labels:
                raise PolicyError(f"identity {num} or its labels appear twice in the allocation")
            alloc._add(Identity(num, lbls))
        return alloc


ENDPOINT_KINDS = ("netns", "container", "cgroup")


@dataclass(frozen=True)
class Endpoint:
    """A workload on this host: a network namespace (seen through its host-side veth), a podman
    container, or a cgroup on the host network."""

    name: str
    kind: str
    labels: LabelSet
    addresses: tuple[IPAddress, ...] = ()
    ifname: str | None = None
    cgroup: str | None = None
    audit: bool = False  # would-be drops are let through and reported as AUDIT

    @classmethod
    def make(
        cls,
        name: str,
        kind: str = "netns",
        labels: Iterable[str] | Mapping[str, str] = (),
        addresses: Iterable[str] = (),
        ifname: str | None = None,
        cgroup: str | None = None,
        audit: bool = False,
    ) -> Endpoint:
        if not name:
            raise PolicyError("an endpoint needs a name")
        if kind not in ENDPOINT_KINDS:
            raise PolicyError(f"endpoint {name!r}: kind is one of {', '.join(ENDPOINT_KINDS)}, not {kind!r}")
        if kind == "cgroup" and not cgroup:
            raise PolicyError(f"endpoint {name!r}: a cgroup endpoint needs its cgroup path")
        addrs = []
        for a in addresses:
            try:
                addrs.append(ipaddress.ip_address(a))
            except ValueError:
                raise PolicyError(f"endpoint {name!r}: {a!r} is not an IPv4 or IPv6 address") from None
        lbls = labels_from(labels)
        for lbl in lbls:
            if lbl.source in ("reserved", "any", SOURCE_CIDR):
                raise PolicyError(f"endpoint {name!r}: label {lbl} uses source {lbl.source!r}, kept for Cilium's own identities")
        return cls(name, kind, lbls, tuple(addrs), ifname, cgroup, audit)


__all__ = [
    "Endpoint", "Identity", "IdentityAllocator", "IPAddress", "IPNetwork", "RESERVED", "RESERVED_NAMES",
    "ID_HOST", "ID_WORLD", "ID_WORLD_IPV4", "ID_WORLD_IPV6", "MIN_USER_IDENTITY", "LOCAL_IDENTITY_BASE",
]  # fmt: skip
