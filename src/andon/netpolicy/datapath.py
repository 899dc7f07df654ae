"""The network policy datapath: ``enforce/policy.bpf.o`` on endpoints' host-side veths.

:class:`Datapath` owns the loaded object, its TC filters and its maps. It takes abstract
:class:`PolicyEntry` rows (what ``resolve`` computes; tests write them by hand) and
enforces them; every verdict worth reporting comes back from :meth:`Datapath.flows` as a
:class:`Flow`. The kernel side and the map layouts are told in ``bpf/enforce/policy.bpf.c``
and ``bpf/abi/netpolicy.h``; the struct formats below mirror that header field by field
(``tests/kernel/test_netpolicy_datapath.py`` checks them against the object's BTF).

Directions are the endpoint's: the program on the host veth's clsact *ingress* sees what
the endpoint sends (its EGRESS), the one on clsact *egress* what it receives (INGRESS).

Atomic policy changes: the policy lives in two generations of maps. :meth:`Datapath.apply`
validates and encodes every entry first (a bad entry raises and nothing changes), fills
the inactive generation, flips ``np_gen[0]`` (one 4-byte array write, read once per
packet), waits until no program still runs with the old generation (an update of the
``np_sync`` map-in-map makes the kernel wait for running BPF programs), then empties the
old one. A packet therefore sees the whole old policy or the whole new one.

Pinning (``pin_dir``): the maps are pinned in a bpffs directory and re-used by the next
:class:`Datapath` opened on the same directory, and the TC filters stay on the veths after
``close(detach=False)``, so the enforcement outlives the process (``andon endpoint`` /
``andon policy`` run once each). A later process takes over an endpoint attached earlier with
:meth:`Datapath.adopt_endpoint` (its filter handles come from :meth:`endpoint_record`), and
:meth:`Datapath.unpin` removes the pins once no endpoint is left.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bpf import libbpf as lb
from ..bpf.object import BpfObject, Map
from ..bpf.pins import pin_maps, reuse_pinned_maps
from ..bpf.ringbuf import page_aligned_size
from ..bpf.varring import VarRingReader
from ..errors import AndonError, BpfError, NotSupported, UsageError
from ..events.live import boot_offset_ns, default_bpf_dir, possible_cpus

# -- constants of bpf/abi/netpolicy.h ---------------------------------------------------------
DIR_INGRESS, DIR_EGRESS = 0, 1
DIRECTIONS = {DIR_INGRESS: "INGRESS", DIR_EGRESS: "EGRESS"}
ALLOW, DENY = 1, 2
VERDICT_FORWARDED, VERDICT_DROPPED, VERDICT_AUDIT = 1, 2, 4
VERDICTS = {0: "VERDICT_UNKNOWN", 1: "FORWARDED", 2: "DROPPED", 4: "AUDIT"}
DROP_NONE, DROP_POLICY, DROP_CT_INVALID_HDR, DROP_CT_INSERT, DROP_POLICY_DENY = 0, 133, 135, 155, 181
DROP_FRAG_NOT_FOUND = 175
# Hubble's DropReason names for Cilium's drop codes
DROP_REASONS = {
    0: "DROP_REASON_UNKNOWN",
    133: "POLICY_DENIED",
    135: "CT_TRUNCATED_OR_INVALID_HEADER",
    155: "CT_MAP_INSERTION_FAILED",
    175: "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
    181: "POLICY_DENY",
}
MATCH_NONE, MATCH_L3_ONLY, MATCH_L3_L4, MATCH_L4_ONLY, MATCH_ALL, MATCH_L3_PROTO, MATCH_PROTO_ONLY = range(7)
MATCH_TYPES = {0: "NONE", 1: "L3_ONLY", 2: "L3_L4", 3: "L4_ONLY", 4: "ALL", 5: "L3_PROTO", 6: "PROTO_ONLY"}
ID_HOST, ID_WORLD = 1, 2
LOCAL_IDENTITY_MIN = 1 << 24  # Cilium's node-local scope: CIDR identities
EP_DENY_INGRESS, EP_DENY_EGRESS, EP_AUDIT = 0x01, 0x02, 0x04
EP_AUDIT_DD_INGRESS, EP_AUDIT_DD_EGRESS = 0x08, 0x10  # default deny of that direction only audits
POL_F_AUDIT = 0x01
POL_DIR_AUDIT = 0x80  # in a policy key's direction: an audited deny entry (a key space of its own)
ICMP_PROTOS = (1, 58)
KEY_CGROUP = 0x80000000  # conntrack/counters key of a cgroup endpoint: KEY_CGROUP | low 31 bits of its id
POL_PREFIX_PEER, POL_PREFIX_PROTO, POL_PREFIX_FULL = 72, 80, 96
FLOW_F_CT_NEW, FLOW_F_EP_AUDIT = 0x01, 0x02
TCP_FLAG_NAMES = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
                  (0x40, "ECE"), (0x80, "CWR"))
PROTO_NAMES = {1: "ICMPv4", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
PROTO_NUMBERS = {"any": 0, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}

# -- wire structs (names in C order, for the ABI test) ------------------------------------------
IP_KEY = struct.Struct("<IB3s16s")
IP_KEY_FIELDS = ("prefixlen", "family", "pad", "addr")
IP_VAL = struct.Struct("<II")
IP_VAL_FIELDS = ("identity", "flags")
ENDPOINT = struct.Struct("<IIII")
ENDPOINT_FIELDS = ("identity", "flags", "deny_policy_ingress", "deny_policy_egress")
POL_KEY = struct.Struct("<IIIBB2s")  # dport: network order
POL_KEY_FIELDS = ("prefixlen", "ep_identity", "peer_identity", "direction", "proto", "dport")
POL_VAL = struct.Struct("<BBBBII")
POL_VAL_FIELDS = ("verdict", "flags", "match_type", "pad", "policy_id", "rule_index")
CT_KEY = struct.Struct("<16s16sHHBBHI")
CT_KEY_FIELDS = ("saddr", "daddr", "sport", "dport", "proto", "family", "pad", "ifindex")
CT_VAL = struct.Struct("<QQQQIIIIBBBBI")
CT_VAL_FIELDS = ("created", "last_seen", "packets", "bytes", "policy_id", "rule_index", "src_identity",
                 "dst_identity", "flags", "direction", "match_type", "verdict", "pad")
CNT_KEY = struct.Struct("<II")
CNT_KEY_FIELDS = ("ifindex", "direction")
CNT_VAL = struct.Struct("<QQQQQQ")
CNT_VAL_FIELDS = ("fwd_packets", "fwd_bytes", "drop_packets", "drop_bytes", "audit_packets", "audit_bytes")
FLOW = struct.Struct("<QIIIIII16s16sHHBBBBBBBBBBBBQ")
FLOW_FIELDS = ("ts", "ifindex", "src_identity", "dst_identity", "policy_id", "rule_index", "len", "saddr",
               "daddr", "sport", "dport", "family", "proto", "verdict", "drop_reason", "direction", "is_reply",
               "match_type", "tcp_flags", "icmp_type", "icmp_code", "flags", "pad", "cgroup_id")
FLOW_V1_SIZE = 80  # records before cgroup_id was appended (same fields at the same offsets)
STAT_NAMES = ("packets", "unmanaged", "non_ip", "bad_hdr", "ring_full", "ct_new", "ct_hit", "ct_full",
              "policy_lookups", "fragments", "nd", "frag_miss")

BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyEntryError(AndonError, ValueError):
    """A policy entry cannot be encoded (bad port range, wildcard protocol with a port, ...)."""


# -- entries -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyEntry:
    """One abstract policy map entry, as the model computes it.

    ``peer_identity`` 0 = any peer; ``proto`` 0 = any protocol (then no port); ``port_lo``
    0 = any port, else ``port_lo..port_hi`` (``port_hi`` 0 = just ``port_lo``). For ICMP and
    ICMPv6 the "port" is the ICMP type, and type 0 (echo reply) is a type: ``port_lo..port_hi``
    is always the type range (``(0, 0)`` is echo reply only, ``(8, 0)`` echo request), every
    type is ``(0, 255)`` or more (the model's ``(0, 65535)``). ``direction`` 'ingress'/'egress'
    (or DIR_*), ``verdict`` 'allow'/'deny' (or ALLOW/DENY). ``audit`` on a deny entry: report
    AUDIT, let it pass unless an enforced entry or enforced default deny drops it.
    """

    endpoint_identity: int
    direction: str | int
    peer_identity: int
    proto: int | str
    port_lo: int
    port_hi: int
    verdict: str | int
    policy_id: int
    rule_index: int
    audit: bool = False


def _direction(d: str | int) -> int:
    if isinstance(d, str):
        try:
            return {"ingress": DIR_INGRESS, "egress": DIR_EGRESS}[d.lower()]
        except KeyError:
            raise PolicyEntryError(f"direction {d!r}: expected 'ingress' or 'egress'") from None
    if d not in DIRECTIONS:
        raise PolicyEntryError(f"direction {d!r}: expected 0 (ingress) or 1 (egress)")
    return d


def _proto(p: int | str) -> int:
    if isinstance(p, str):
        try:
            return PROTO_NUMBERS[p.lower()]
        except KeyError:
            raise PolicyEntryError(f"protocol {p!r}: expected one of {', '.join(PROTO_NUMBERS)}") from None
    if not 0 <= p <= 255:
        raise PolicyEntryError(f"protocol {p}: not an IP protocol number")
    return p


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover ``lo..hi`` with aligned power-of-two blocks: ``(first_port, prefix_bits)``.

    A block of 2^(16-bits) ports starting at a multiple of its size is one LPM prefix on
    the big-endian port; any range takes at most 30 blocks (1..65535 takes 16)."""
    if not 0 < lo <= hi <= 0xFFFF:
        raise PolicyEntryError(f"port range {lo}-{hi}: need 1 <= port <= endPort <= 65535")
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def _match_type(peer: int, prefix: int) -> int:
    if peer:
        return MATCH_L3_L4 if prefix > POL_PREFIX_PROTO else MATCH_L3_PROTO if prefix == POL_PREFIX_PROTO \
            else MATCH_L3_ONLY
    return MATCH_L4_ONLY if prefix > POL_PREFIX_PROTO else MATCH_PROTO_ONLY if prefix == POL_PREFIX_PROTO \
        else MATCH_ALL


def encode_entry(e: PolicyEntry) -> tuple[bool, list[tuple[bytes, bytes]]]:
    """(is_deny, [(key, value), ...]) for one entry: one key per port block."""
    direction = _direction(e.direction)
    proto = _proto(e.proto)
    verdict = e.verdict
    if isinstance(verdict, str):
        verdict = {"allow": ALLOW, "deny": DENY}.get(verdict.lower(), -1)
    if verdict not in (ALLOW, DENY):
        raise PolicyEntryError(f"verdict {e.verdict!r}: expected 'allow' or 'deny'")
    for name in ("endpoint_identity", "peer_identity", "policy_id", "rule_index"):
        v = getattr(e, name)
        if not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
            raise PolicyEntryError(f"{name} {v!r}: expected an unsigned 32-bit number")
    if e.endpoint_identity == 0:
        raise PolicyEntryError("endpoint_identity 0: an entry belongs to one endpoint identity")
    if e.audit and verdict != DENY:
        raise PolicyEntryError("audit applies to deny entries only (allow entries forward anyway)")
    if proto == 0 and (e.port_lo or e.port_hi):
        raise PolicyEntryError(f"port {e.port_lo}: a port needs a protocol (proto 0 means any)")
    if proto in ICMP_PROTOS:
        # the key holds type + 1 (bpf/abi/netpolicy.h NP_POL_ICMP_TYPE): dport 0 is "any"
        lo, hi = e.port_lo, e.port_hi or e.port_lo
        if not 0 <= lo <= hi or (lo > 0 and hi > 255):
            raise PolicyEntryError(f"ICMP types {lo}-{hi}: ICMP types are 0..255 (lo <= hi)")
        blocks = [(0, -1)] if lo == 0 and hi >= 255 else port_blocks(lo + 1, hi + 1)
    elif e.port_lo == 0:
        if e.port_hi:
            raise PolicyEntryError(f"endPort {e.port_hi} without a port")
        blocks = [(0, -1)] if proto else [(0, -2)]
    else:
        blocks = port_blocks(e.port_lo, e.port_hi or e.port_lo)
    out = []
    for port, bits in blocks:
        prefix = {-2: POL_PREFIX_PEER, -1: POL_PREFIX_PROTO}.get(bits, POL_PREFIX_PROTO + bits)
        key = POL_KEY.pack(prefix, e.endpoint_identity, e.peer_identity, direction | (POL_DIR_AUDIT if e.audit else 0),
                           proto, port.to_bytes(2, "big"))
        val = POL_VAL.pack(verdict, POL_F_AUDIT if e.audit else 0, _match_type(e.peer_identity, prefix), 0,
                           e.policy_id, e.rule_index)
        out.append((key, val))
    return verdict == DENY, out


def ip_key(prefix: str | IPNetwork) -> bytes:
    net = ipaddress.ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
    return IP_KEY.pack(32 + net.prefixlen, net.version, b"\0\0\0", net.network_address.packed.ljust(16, b"\0"))


# -- flows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flow:
    """One flow record, fields as the C struct ``np_flow`` names them; Hubble's names as
    properties. ``time_ns`` is wall-clock ns."""

    time_ns: int
    ifindex: int
    src_identity: int
    dst_identity: int
    policy_id: int
    rule_index: int
    len: int
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    family: int
    proto: int
    verdict_code: int
    drop_reason: int
    direction: int
    is_reply: bool
    match_type: int
    tcp_flags: int
    icmp_type: int
    icmp_code: int
    flags: int
    cgroup_id: int = 0  # a cgroup endpoint's flow (ifindex 0 then)

    @property
    def verdict(self) -> str:
        return VERDICTS.get(self.verdict_code, f"VERDICT_{self.verdict_code}")

    @property
    def drop_reason_desc(self) -> str:
        return DROP_REASONS.get(self.drop_reason, f"DROP_REASON_{self.drop_reason}")

    @property
    def traffic_direction(self) -> str:
        return DIRECTIONS.get(self.direction, "TRAFFIC_DIRECTION_UNKNOWN")

    @property
    def policy_match_type(self) -> str:
        return MATCH_TYPES.get(self.match_type, str(self.match_type))

    @property
    def tcp_flag_names(self) -> tuple[str, ...]:
        return tuple(n for bit, n in TCP_FLAG_NAMES if self.tcp_flags & bit)

    @property
    def ct_new(self) -> bool:
        return bool(self.flags & FLOW_F_CT_NEW)

    def summary(self) -> str:
        proto = PROTO_NAMES.get(self.proto, str(self.proto))
        if self.proto in (6, 17):
            where = f"{self.src_ip}:{self.sport} -> {self.dst_ip}:{self.dport}"
        else:
            where = f"{self.src_ip} -> {self.dst_ip}"
        extra = f" {','.join(self.tcp_flag_names)}" if self.proto == 6 else \
            f" type {self.icmp_type}" if self.proto in (1, 58) else ""
        why = f" {self.drop_reason_desc}" if self.drop_reason else ""
        return (f"{where} {self.traffic_direction.lower()} {proto}{extra} {self.verdict}{why} "
                f"ids {self.src_identity}->{self.dst_identity} policy {self.policy_id}#{self.rule_index} "
                f"match {self.policy_match_type}{' reply' if self.is_reply else ''}")


def decode_flow(raw: bytes, offset_ns: int = 0) -> Flow:
    if len(raw) < FLOW_V1_SIZE:
        raise ValueError(f"flow record of {len(raw)} bytes, expected {FLOW.size}")
    if len(raw) < FLOW.size:  # an object built before cgroup_id: no cgroup endpoints
        raw = bytes(raw[:FLOW_V1_SIZE]) + bytes(FLOW.size - FLOW_V1_SIZE)
    (ts, ifindex, sid, did, pid, ridx, length, saddr, daddr, sport, dport, family, proto, verdict, reason,
     direction, is_reply, match, tflags, itype, icode, flags, _pad, cgid) = FLOW.unpack_from(raw)
    if family == 6:
        src, dst = str(ipaddress.IPv6Address(saddr)), str(ipaddress.IPv6Address(daddr))
    else:
        src, dst = str(ipaddress.IPv4Address(saddr[:4])), str(ipaddress.IPv4Address(daddr[:4]))
    return Flow(ts + offset_ns, ifindex, sid, did, pid, ridx, length, src, dst, sport, dport, family, proto,
                verdict, reason, direction, bool(is_reply), match, tflags, itype, icode, flags, cgid)


@dataclass(frozen=True)
class Counters:
    fwd_packets: int = 0
    fwd_bytes: int = 0
    drop_packets: int = 0
    drop_bytes: int = 0
    audit_packets: int = 0
    audit_bytes: int = 0


def _sum_percpu(raw: bytes, fmt: struct.Struct, ncpu: int) -> tuple[int, ...]:
    """Per-CPU values come as one slot per possible CPU, each rounded up to 8 bytes."""
    stride = (fmt.size + 7) & ~7
    total = [0] * len(fmt.unpack_from(raw, 0))
    for cpu in range(ncpu):
        for i, v in enumerate(fmt.unpack_from(raw, cpu * stride)):
            total[i] += v
    return tuple(total)


# -- TC attach -----------------------------------------------------------------------------------
@dataclass
class _TcFilter:
    ifindex: int
    attach_point: int
    handle: int
    priority: int


def _tc_hook(ifindex: int, point: int) -> lb.bpf_tc_hook:
    return lb.bpf_tc_hook(sz=ctypes.sizeof(lb.bpf_tc_hook), ifindex=ifindex, attach_point=point)


def _tc_attach(ifindex: int, point: int, prog_fd: int, what: str) -> _TcFilter:
    lib = lb.lib()
    hook = _tc_hook(ifindex, point)
    opts = lb.bpf_tc_opts(sz=ctypes.sizeof(lb.bpf_tc_opts), prog_fd=prog_fd)
    rc = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if rc < 0:
        if -rc in (errno.EOPNOTSUPP, errno.EINVAL, 524):
            raise NotSupported("tc", f"attaching {what} failed ({errno.errorcode.get(-rc, -rc)}): "
                                     "the kernel needs clsact and BPF TC classifiers (andon doctor)")
        raise BpfError(f"bpf_tc_attach({what})", -rc)
    return _TcFilter(ifindex, point, opts.handle, opts.priority)


def _tc_detach(f: _TcFilter) -> None:
    hook = _tc_hook(f.ifindex, f.attach_point)
    opts = lb.bpf_tc_opts(sz=ctypes.sizeof(lb.bpf_tc_opts), handle=f.handle, priority=f.priority)
    lb.lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))  # gone with its device: fine


@dataclass
class _Endpoint:
    ifname: str
    ifindex: int
    identity: int
    filters: list[_TcFilter]
    created_qdisc: bool


@dataclass
class _CgroupEndpoint:
    path: str
    cgroup_id: int
    identity: int
    prog_ids: dict[str, int]  # direction -> attached program id


def _ifindex(ifname: str | int) -> int:
    if isinstance(ifname, int):
        return ifname
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise UsageError(f"no network interface {ifname!r}") from None


# maps shared through pins; np_sync/np_sync_inner stay per process (only the userspace wait uses them)
PINNED_MAPS = ("np_ipcache", "np_endpoints", "np_cgroups", "np_allow0", "np_allow1", "np_deny0", "np_deny1", "np_gen",
               "np_ct", "np_counters", "np_stats", "np_flows")


def unpin(pin_dir: Path) -> None:
    """Remove a datapath's pins and their directory."""
    for name in PINNED_MAPS:
        try:
            (Path(pin_dir) / name).unlink()
        except FileNotFoundError:
            pass
    try:
        Path(pin_dir).rmdir()
    except OSError:
        pass


def _endpoint_value(identity: int, *, default_deny_ingress: bool = False, default_deny_egress: bool = False,
                    audit: bool = False, deny_policy_id: int = 0, deny_policy_ingress: int | None = None,
                    deny_policy_egress: int | None = None, audit_default_deny_ingress: bool = False,
                    audit_default_deny_egress: bool = False) -> bytes:
    """struct np_endpoint for an endpoint's config (see :meth:`Datapath.set_endpoint_config`)."""
    flags = (EP_DENY_INGRESS if default_deny_ingress else 0) | (EP_DENY_EGRESS if default_deny_egress else 0) \
        | (EP_AUDIT if audit else 0) | (EP_AUDIT_DD_INGRESS if audit_default_deny_ingress else 0) \
        | (EP_AUDIT_DD_EGRESS if audit_default_deny_egress else 0)
    pin = deny_policy_id if deny_policy_ingress is None else deny_policy_ingress
    pout = deny_policy_id if deny_policy_egress is None else deny_policy_egress
    return ENDPOINT.pack(identity, flags, pin, pout)


class Datapath:
    """The loaded policy program, its maps, and the endpoints it is attached to."""

    def __init__(self, bpf_dir: Path | None = None, *, ring_bytes: int = 1 << 20, ct_entries: int = 65536,
                 policy_entries: int = 262144, ipcache_entries: int = 65536, pin_dir: Path | None = None) -> None:
        self._obj = BpfObject((bpf_dir or default_bpf_dir()) / "enforce/policy.bpf.o")
        self._endpoints: dict[int, _Endpoint] = {}
        self._cgroups: dict[int, _CgroupEndpoint] = {}
        self._reader: VarRingReader | None = None
        self.pin_dir = Path(pin_dir) if pin_dir is not None else None
        try:
            ring = page_aligned_size(ring_bytes)
            self._obj.set_max_entries("np_flows", ring)
            self._obj.set_max_entries("np_ct", ct_entries)
            self._obj.set_max_entries("np_ipcache", ipcache_entries)
            for name in ("np_allow0", "np_allow1", "np_deny0", "np_deny1"):
                self._obj.set_max_entries(name, policy_entries)
            reused = self._reuse_pins()
            self._obj.load()
            self._pin(reused)
            self.ncpu = possible_cpus()
            m = self._obj.map
            self.ipcache, self.endpoints_map, self.ct = m("np_ipcache"), m("np_endpoints"), m("np_ct")
            self.cgroups_map = m("np_cgroups")
            self.gen_map, self.sync_map, self.sync_inner = m("np_gen"), m("np_sync"), m("np_sync_inner")
            self.counters_map, self.stats_map = m("np_counters"), m("np_stats")
            self._allow = (m("np_allow0"), m("np_allow1"))
            self._deny = (m("np_deny0"), m("np_deny1"))
            self._reader = VarRingReader(m("np_flows").fd, ring)
            self._offset = boot_offset_ns()
            raw = self.gen_map.lookup(struct.pack("<I", 0), 4)
            self.generation = struct.unpack("<I", raw)[0] & 1 if raw else 0  # pinned: the running one
            self.entries_installed = 0
        except BaseException:
            self._obj.close()
            raise

    def _reuse_pins(self) -> set[str]:
        if self.pin_dir is None:
            return set()
        return reuse_pinned_maps(self._obj, self.pin_dir, PINNED_MAPS)

    def _pin(self, reused: set[str]) -> None:
        if self.pin_dir is not None:
            pin_maps(self._obj, self.pin_dir, PINNED_MAPS, reused)

    def unpin(self) -> None:
        """Remove the pins (the maps live on while a filter or process still holds them)."""
        if self.pin_dir is not None:
            unpin(self.pin_dir)

    # -- endpoints ---------------------------------------------------------------------------
    def attach_endpoint(self, ifname: str | int, endpoint_identity: int, *, default_deny_ingress: bool = False,
                        default_deny_egress: bool = False, audit: bool = False, deny_policy_id: int = 0) -> int:
        """Enforce on the host-side veth ``ifname`` for an endpoint of ``endpoint_identity``;
        returns its ifindex. The config is written before the filters go on, so the first
        packet already sees it."""
        ifindex = _ifindex(ifname)
        if ifindex in self._endpoints:
            raise UsageError(f"interface {ifname} is already an endpoint")
        self.set_endpoint_config(ifindex, endpoint_identity, default_deny_ingress=default_deny_ingress,
                                 default_deny_egress=default_deny_egress, audit=audit,
                                 deny_policy_id=deny_policy_id)
        lib = lb.lib()
        whole = _tc_hook(ifindex, BPF_TC_INGRESS)
        rc = lib.bpf_tc_hook_create(ctypes.byref(whole))
        if rc < 0 and rc != -errno.EEXIST:
            self.endpoints_map.delete(struct.pack("<I", ifindex))
            if -rc in (errno.EOPNOTSUPP, errno.EINVAL):
                raise NotSupported("tc", "cannot add a clsact qdisc (andon doctor: tc row)")
            raise BpfError(f"clsact qdisc on {ifname}", -rc)
        ep = _Endpoint(str(ifname), ifindex, endpoint_identity, [], created_qdisc=rc == 0)
        self._endpoints[ifindex] = ep
        try:
            ep.filters.append(_tc_attach(ifindex, BPF_TC_INGRESS, self._obj.program("tc__from_endpoint").fd,
                                         f"{ifname} ingress"))
            ep.filters.append(_tc_attach(ifindex, BPF_TC_EGRESS, self._obj.program("tc__to_endpoint").fd,
                                         f"{ifname} egress"))
        except BaseException:
            self.detach_endpoint(ifindex)
            raise
        return ifindex

    def endpoint_record(self, ifindex: int) -> dict[str, object]:
        """What a later process needs to take the endpoint over (JSON-able)."""
        ep = self._endpoints[ifindex]
        return {"ifname": ep.ifname, "ifindex": ep.ifindex, "identity": ep.identity, "created_qdisc": ep.created_qdisc,
                "filters": [[f.attach_point, f.handle, f.priority] for f in ep.filters]}

    def adopt_endpoint(self, record: dict[str, object]) -> int:
        """Take over an endpoint a previous process attached (from :meth:`endpoint_record`)."""
        try:
            ifindex = int(record["ifindex"])  # type: ignore[arg-type]
            filters = [_TcFilter(ifindex, int(p), int(h), int(pr)) for p, h, pr in record["filters"]]  # type: ignore[union-attr]
            ep = _Endpoint(str(record["ifname"]), ifindex, int(record["identity"]), filters,  # type: ignore[arg-type]
                           bool(record["created_qdisc"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"endpoint record {record!r} is malformed: {e}") from None
        self._endpoints[ifindex] = ep
        return ifindex

    def detach_endpoint(self, ifname: str | int) -> None:
        ifindex = ifname if isinstance(ifname, int) else next(
            (i for i, e in self._endpoints.items() if e.ifname == ifname), None)
        ep = self._endpoints.pop(ifindex, None) if ifindex is not None else None
        if ep is None:
            raise UsageError(f"{ifname} is not an endpoint of this datapath")
        for f in ep.filters:
            _tc_detach(f)
        if ep.created_qdisc:
            whole = _tc_hook(ep.ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
            lb.lib().bpf_tc_hook_destroy(ctypes.byref(whole))
        self.endpoints_map.delete(struct.pack("<I", ep.ifindex))

    def set_endpoint_config(self, ifindex: int, endpoint_identity: int, *, default_deny_ingress: bool = False,
                            default_deny_egress: bool = False, audit: bool = False, deny_policy_id: int = 0,
                            deny_policy_ingress: int | None = None, deny_policy_egress: int | None = None,
                            audit_default_deny_ingress: bool = False, audit_default_deny_egress: bool = False) -> None:
        """Default deny per direction, audit mode, and the policy that switched default deny
        on (one id for both directions, or one each). ``audit_default_deny_*``: that direction's
        default deny only audits (it was switched on by audited policies only)."""
        self.endpoints_map.update(struct.pack("<I", ifindex), _endpoint_value(
            endpoint_identity, default_deny_ingress=default_deny_ingress, default_deny_egress=default_deny_egress,
            audit=audit, deny_policy_id=deny_policy_id, deny_policy_ingress=deny_policy_ingress,
            deny_policy_egress=deny_policy_egress, audit_default_deny_ingress=audit_default_deny_ingress,
            audit_default_deny_egress=audit_default_deny_egress))
        if ifindex in self._endpoints:
            self._endpoints[ifindex].identity = endpoint_identity

    # -- cgroup endpoints ------------------------------------------------------------------------
    def attach_cgroup(self, path: str | Path, endpoint_identity: int, **config: Any) -> int:
        """Enforce on the sockets of a cgroup v2 directory (and of its descendants) with the
        cgroup_skb programs; returns the cgroup id. ``config``: as :meth:`set_endpoint_config`.
        The config goes in first, then the programs."""
        from . import cgroup as cg

        p = cg.resolve(path)
        cgid = cg.cgroup_id(p)
        if cgid in self._cgroups:
            raise UsageError(f"cgroup {path} is already an endpoint")
        self.set_cgroup_config(cgid, endpoint_identity, **config)
        ep = _CgroupEndpoint(str(p), cgid, endpoint_identity, {})
        self._cgroups[cgid] = ep
        try:
            for hook, prog in cg.PROGRAMS.items():
                ep.prog_ids[hook] = cg.attach(self._obj.program(prog).fd, p, hook)
        except BaseException:
            self.detach_cgroup(cgid)
            raise
        return cgid

    def cgroup_record(self, cgid: int) -> dict[str, object]:
        """What a later process needs to take a cgroup endpoint over (JSON-able)."""
        ep = self._cgroups[cgid]
        return {"cgroup": ep.path, "cgroup_id": ep.cgroup_id, "identity": ep.identity, "prog_ids": dict(ep.prog_ids)}

    def adopt_cgroup(self, record: dict[str, object]) -> int:
        """Take over a cgroup endpoint a previous process attached (from :meth:`cgroup_record`)."""
        try:
            ids = {str(d): int(i) for d, i in record["prog_ids"].items()}  # type: ignore[union-attr]
            ep = _CgroupEndpoint(str(record["cgroup"]), int(record["cgroup_id"]),  # type: ignore[arg-type]
                                 int(record["identity"]), ids)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"cgroup endpoint record {record!r} is malformed: {e}") from None
        self._cgroups[ep.cgroup_id] = ep
        return ep.cgroup_id

    def detach_cgroup(self, cgid: int) -> None:
        from . import cgroup as cg

        ep = self._cgroups.pop(cgid, None)
        if ep is None:
            raise UsageError(f"cgroup id {cgid} is not an endpoint of this datapath")
        for direction, pid in ep.prog_ids.items():
            cg.detach(ep.path, direction, pid)  # False: gone with its cgroup, fine
        self.cgroups_map.delete(struct.pack("<Q", cgid))

    def set_cgroup_config(self, cgid: int, endpoint_identity: int, **config: Any) -> None:
        """As :meth:`set_endpoint_config`, for a cgroup endpoint (keyed by its cgroup id)."""
        self.cgroups_map.update(struct.pack("<Q", cgid), _endpoint_value(endpoint_identity, **config))
        if cgid in self._cgroups:
            self._cgroups[cgid].identity = endpoint_identity

    # -- maps, for tools that read them (bench, debugging) ---------------------------------------
    def policy_maps(self) -> tuple[Map, Map, Map, Map]:
        """The policy tries: allow generation 0 and 1, deny generation 0 and 1."""
        return (*self._allow, *self._deny)

    def map(self, name: str) -> Map:
        """One of the object's maps by its C name (``np_ct``, ``np_flows``, ...)."""
        return self._obj.map(name)

    # -- identities ----------------------------------------------------------------------------
    def set_ip_identity(self, prefix: str | IPNetwork, identity: int) -> None:
        """Addresses in ``prefix`` have ``identity`` (the most specific prefix wins)."""
        if not 0 < identity <= 0xFFFFFFFF:
            raise UsageError(f"identity {identity}: expected 1..2^32-1")
        self.ipcache.update(ip_key(prefix), IP_VAL.pack(identity, 0))

    def set_cidr_identity(self, prefix: str | IPNetwork, identity: int) -> None:
        """A CIDR's local identity (Cilium's node-local scope, from 2^24)."""
        if identity < LOCAL_IDENTITY_MIN:
            raise UsageError(f"CIDR identity {identity}: CIDR identities are local, >= {LOCAL_IDENTITY_MIN}")
        self.set_ip_identity(prefix, identity)

    def delete_ip_identity(self, prefix: str | IPNetwork) -> bool:
        return self.ipcache.delete(ip_key(prefix))

    # -- policy ----------------------------------------------------------------------------------
    def apply(self, entries: Iterable[PolicyEntry]) -> int:
        """Replace the whole policy with ``entries``, atomically; returns the new generation.

        Every entry is encoded first: one bad entry raises :class:`PolicyEntryError` and
        the running policy is untouched. A full map raises BpfError, the same way."""
        allow: dict[bytes, bytes] = {}
        deny: dict[bytes, bytes] = {}
        for e in entries:
            is_deny, kvs = encode_entry(e)
            target = deny if is_deny else allow
            for k, v in kvs:
                target.setdefault(k, v)  # the first entry for a key names the rule
        new = 1 - self.generation
        try:
            self._clear(new)
            for m, kvs in ((self._allow[new], allow), (self._deny[new], deny)):
                for k, v in kvs.items():
                    m.update(k, v)
        except BaseException:
            self._clear(new)
            raise
        self.gen_map.update(struct.pack("<I", 0), struct.pack("<I", new))
        self._wait_for_programs()
        old, self.generation = self.generation, new
        self._clear(old)
        self.entries_installed = len(allow) + len(deny)
        return new

    def _wait_for_programs(self) -> None:
        # an update of a map-in-map returns only after every running BPF program ended
        self.sync_map.update(struct.pack("<I", 0), struct.pack("<I", self.sync_inner.fd))

    def _clear(self, gen: int) -> None:
        for m in (self._allow[gen], self._deny[gen]):
            for k in list(m.keys(POL_KEY.size)):
                m.delete(k)

    def policy_keys(self, deny: bool = False) -> list[bytes]:
        """The active generation's keys (for tests and `andon` debugging)."""
        m = (self._deny if deny else self._allow)[self.generation]
        return list(m.keys(POL_KEY.size))

    def flush_conntrack(self, ifindex: int | None = None) -> int:
        """Drop conntrack entries (of one endpoint key: an ifindex, or KEY_CGROUP | cgroup id bits)."""
        n = 0
        for k in list(self.ct.keys(CT_KEY.size)):
            if ifindex is None or CT_KEY.unpack(k)[-1] == ifindex:
                n += self.ct.delete(k)
        return n

    # -- flows, counters -----------------------------------------------------------------------------
    def flows(self, timeout: float = 0.0) -> Iterator[Flow]:
        """Decoded flow records now in the ring; waits up to ``timeout`` s for the first."""
        assert self._reader is not None
        if timeout and not self._reader.wait(timeout):
            return
        for raw in self._reader.read():
            yield decode_flow(raw, self._offset)

    def counters(self) -> dict[tuple[int, str], Counters]:
        """{(ifindex, 'INGRESS'|'EGRESS'): Counters} summed over CPUs."""
        out = {}
        size = ((CNT_VAL.size + 7) & ~7) * self.ncpu
        for k in list(self.counters_map.keys(CNT_KEY.size)):
            raw = self.counters_map.lookup(k, size)
            if raw is None:
                continue
            ifindex, direction = CNT_KEY.unpack(k)
            out[(ifindex, DIRECTIONS.get(direction, str(direction)))] = Counters(*_sum_percpu(raw, CNT_VAL, self.ncpu))
        return out

    def stats(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(STAT_NAMES):
            raw = self.stats_map.lookup(struct.pack("<I", i), 8 * self.ncpu)
            out[name] = sum(struct.unpack(f"<{self.ncpu}Q", raw)) if raw else 0
        return out

    # -- lifetime --------------------------------------------------------------------------------
    def close(self, detach: bool = True) -> None:
        """Release the object; ``detach=False`` leaves the TC filters (and pinned maps) in place."""
        for ifindex in list(self._endpoints) if detach else ():
            try:
                self.detach_endpoint(ifindex)
            except OSError:
                pass
        for cgid in list(self._cgroups) if detach else ():
            try:
                self.detach_cgroup(cgid)
            except OSError:
                pass
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._obj.close()

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_flows(dp: Datapath, want: int, timeout: float = 2.0) -> list[Flow]:
    """Read flows until ``want`` have come or ``timeout`` s passed (tests, demos)."""
    out: list[Flow] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out.extend(dp.flows(timeout=min(0.1, max(0.0, deadline - time.monotonic()))))
    return out
