"""The XDP host firewall: ``enforce/xdp_fw.bpf.o`` on one interface.

Drops by source CIDR, protocol and destination port range (ICMP: the type) before the
stack sees the packet; everything else passes. Rules are kept here and compiled into
the kernel's LPM map: one rule set per distinct prefix, each holding its own rules and
those of every shorter prefix that covers it (the LPM gives only the most specific
prefix), at most ``NP_FW_RULES`` (8) per set. A rule with no CIDR matches every source of
both families (its rules sit under 0.0.0.0/0 and ::/0 with one counter). Per-rule
counters are per CPU; the last slot counts the packets passed.

Persistence (``pin_dir``): the two maps and the XDP *link* are pinned in a bpffs directory
(``/sys/fs/bpf/andon/firewall/<ifname>/`` for the CLI), so the program stays attached after
the process exits, and a later :class:`HostFirewall` on the same directory adopts them: it
re-uses the pinned maps, loads the program of this build and swaps it into the link with
one ``BPF_LINK_UPDATE`` (atomic: every packet sees the old or the new program).
:meth:`HostFirewall.detach` takes the program off and removes the pins. A link, unlike a
program attached through netlink, cannot be replaced or removed by another tool by mistake,
and the kernel turns it defunct when its interface goes away (:func:`read_pins` reports it).
Mode: native (driver) XDP is tried first, generic (skb) XDP when the driver has none.

The rules themselves are kept in a state file (:data:`DEFAULT_STATE_FILE`, JSON, written
whole and renamed over the old one, every change under an ``flock``); :func:`add_rules`,
:func:`remove_rules` and :func:`firewall_status` are what ``andon firewall`` and ``andon
run`` call. A change that fails leaves the state file and the kernel as they were.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bpf import libbpf as lb
from ..bpf.object import BpfObject
from ..bpf.pins import errno_of, lib_fn, obj_get, obj_info, obj_pin, pin_maps, reuse_pinned_maps
from ..errors import BpfError, NotSupported, UsageError
from ..events.live import default_bpf_dir, possible_cpus
from .state import lock_file, write_json_atomic
from .datapath import IP_KEY, PROTO_NUMBERS, _sum_percpu, ip_key

FW_RULES = 8  # NP_FW_RULES
FW_MAX_RULES = 1024  # NP_FW_MAX_RULES; the pass counter is at this index
FW_RULE = struct.Struct("<BBHHHI")
FW_RULE_FIELDS = ("proto", "used", "port_lo", "port_hi", "pad", "rule_id")
FW_CNT = struct.Struct("<QQ")
FW_CNT_FIELDS = ("packets", "bytes")
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1 << 1, 1 << 2
MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
BPF_XDP = 37  # enum bpf_attach_type
PINNED_MAPS = ("np_fw_src", "np_fw_cnt")
LINK_PIN = "link"
PORT_PROTOS = (6, 17, 1, 58)  # the program reads a port (ICMP: the type) of these only
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/andon/firewall")
DEFAULT_STATE_FILE = Path("/var/lib/andon/firewall.json")
STATE_FORMAT = 1
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY_NETS: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class FirewallRule:
    rule_id: int
    cidr: IPNetwork | None  # None: every source, IPv4 and IPv6
    proto: int
    port_lo: int
    port_hi: int

    @property
    def nets(self) -> tuple[IPNetwork, ...]:
        return ANY_NETS if self.cidr is None else (self.cidr,)

    def same_match(self, other: FirewallRule) -> bool:
        return (self.cidr, self.proto, self.port_lo, self.port_hi) == \
            (other.cidr, other.proto, other.port_lo, other.port_hi)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.rule_id, "cidr": str(self.cidr) if self.cidr is not None else None, "proto": self.proto,
                "port_lo": self.port_lo, "port_hi": self.port_hi}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FirewallRule:
        return make_rule(int(d["id"]), d.get("cidr"), int(d.get("proto", 0)), int(d.get("port_lo", 0)),
                         int(d.get("port_hi", 0)))


def proto_name(p: int) -> str:
    return {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}.get(p, str(p))


def port_text(r: FirewallRule) -> str:
    if not r.port_lo:
        return "any"
    return str(r.port_lo) if r.port_lo == r.port_hi else f"{r.port_lo}-{r.port_hi}"


def parse_ports(text: str | int | None) -> tuple[int, int]:
    """'443' or 443 -> (443, 443), '8000-8080' -> (8000, 8080), None -> (0, 0) (any port)."""
    if text is None:
        return 0, 0
    lo_s, sep, hi_s = str(text).partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise UsageError(f"port {text!r}: expected P or LO-HI (1-65535)") from None
    if not (1 <= lo <= hi <= 65535):
        raise UsageError(f"port {text!r}: expected P or LO-HI with 1 <= LO <= HI <= 65535")
    return lo, hi


def make_rule(rule_id: int, cidr: str | IPNetwork | None, proto: int | str = 0, port_lo: int = 0,
              port_hi: int = 0) -> FirewallRule:
    """A checked rule (pure: no kernel). ``port_hi`` 0 = just ``port_lo``; a port needs a
    protocol whose packets carry one (tcp, udp; icmp/icmpv6: the type)."""
    if cidr is None or isinstance(cidr, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = cidr
    else:
        try:
            net = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError as e:
            raise UsageError(f"firewall rule: {e}") from None
    if isinstance(proto, str):
        p = PROTO_NUMBERS.get(proto.lower(), -1)
        if p < 0 and proto.isdigit():
            p = int(proto)
    else:
        p = proto
    if not 0 <= p <= 255:
        raise UsageError(f"firewall rule: protocol {proto!r} (icmp, icmpv6, tcp, udp, sctp or a number 0-255)")
    hi = port_hi or port_lo
    if not (0 <= port_lo <= hi <= 0xFFFF) or (port_lo == 0 and port_hi):
        raise UsageError(f"firewall rule: port range {port_lo}-{port_hi} (1-65535, low <= high)")
    if port_lo and p == 0:
        raise UsageError("firewall rule: a port needs a protocol (tcp or udp)")
    if port_lo and p not in PORT_PROTOS:
        raise UsageError(f"firewall rule: {proto_name(p)} packets have no port the firewall reads (tcp or udp)")
    if not 0 <= rule_id < FW_MAX_RULES:
        raise UsageError(f"firewall: at most {FW_MAX_RULES} rules (ids 0-{FW_MAX_RULES - 1})")
    return FirewallRule(rule_id, net, p, port_lo, hi)


# -- raw libbpf calls this module needs beyond andon.bpf.libbpf ---------------------------------------
class _LinkCreateOpts(ctypes.Structure):
    """The head of libbpf.h struct bpf_link_create_opts (sz, flags); libbpf reads no further."""

    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _XdpQueryOpts(ctypes.Structure):
    """libbpf.h struct bpf_xdp_query_opts (1.1)."""

    _fields_ = [("sz", ctypes.c_size_t), ("prog_id", ctypes.c_uint32), ("drv_prog_id", ctypes.c_uint32),
                ("hw_prog_id", ctypes.c_uint32), ("skb_prog_id", ctypes.c_uint32), ("attach_mode", ctypes.c_uint8),
                ("_pad", ctypes.c_uint8 * 7)]


def _link_info(fd: int) -> tuple[int, int, int]:
    """(link id, program id, ifindex) of an XDP link; ifindex 0 once its interface is gone.
    struct bpf_link_info: type, id, prog_id (u32 each), then the union at offset 16, whose
    xdp member starts with ifindex."""
    raw = obj_info(fd, 64, "link")
    _type, link_id, prog_id = struct.unpack_from("<III", raw, 0)
    (ifindex,) = struct.unpack_from("<I", raw, 16)
    return link_id, prog_id, ifindex


def xdp_mode(ifindex: int, prog_id: int) -> str | None:
    """'native' or 'generic': where ``prog_id`` is attached on ``ifindex`` (None: not there)."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    rc = lib_fn("bpf_xdp_query", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p])(
        ifindex, 0, ctypes.byref(opts))
    if rc < 0:
        raise BpfError(f"bpf_xdp_query({ifindex})", errno_of(rc))
    if opts.drv_prog_id == prog_id:
        return "native"
    if opts.skb_prog_id == prog_id:
        return "generic"
    return None


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise UsageError(f"no network interface {ifname!r}") from None


class _PinnedMap:
    """A pinned map read by fd (no object loaded): lookups and key walks only."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.fd = obj_get(path)

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value_size)
        rc = lb.lib().bpf_map_lookup_elem(self.fd, k, v)
        if rc < 0:
            if errno_of(rc) == errno.ENOENT:
                return None
            raise BpfError(f"lookup in map {self.name}", errno_of(rc))
        return v.raw

    def keys(self, key_size: int) -> Iterator[bytes]:
        nxt = ctypes.create_string_buffer(key_size)
        rc = lb.lib().bpf_map_get_next_key(self.fd, None, nxt)
        while rc == 0:
            cur = nxt.raw
            yield cur
            rc = lb.lib().bpf_map_get_next_key(self.fd, ctypes.create_string_buffer(cur, key_size), nxt)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _cnt_size(ncpu: int) -> int:
    return ((FW_CNT.size + 7) & ~7) * ncpu


def _read_counters(cnt: Any, ids: Iterable[int], ncpu: int) -> dict[int | str, tuple[int, int]]:
    out: dict[int | str, tuple[int, int]] = {}
    for idx in [*ids, FW_MAX_RULES]:
        raw = cnt.lookup(struct.pack("<I", idx), _cnt_size(ncpu))
        out["pass" if idx == FW_MAX_RULES else idx] = _sum_percpu(raw, FW_CNT, ncpu) if raw else (0, 0)
    return out


def _read_sets(src: Any) -> dict[bytes, list[tuple[int, int, int, int]]]:
    """LPM key -> [(rule_id, proto, port_lo, port_hi)] as the kernel holds them."""
    out = {}
    for key in list(src.keys(IP_KEY.size)):
        raw = src.lookup(key, FW_RULE.size * FW_RULES)
        if raw is None:
            continue
        rules = [FW_RULE.unpack_from(raw, i * FW_RULE.size) for i in range(FW_RULES)]
        out[key] = [(r[5], r[0], r[2], r[3]) for r in rules if r[1]]
    return out


def _rules_from_sets(sets: dict[bytes, list[tuple[int, int, int, int]]]) -> list[FirewallRule]:
    """The rules back from the kernel's sets: a rule's own prefix is the shortest prefix
    whose set holds it (it is copied only into the sets of longer prefixes it covers);
    one under both 0.0.0.0/0 and ::/0 is a rule for every source."""
    best: dict[int, tuple[tuple[int, int, int], list[IPNetwork]]] = {}
    for key, rules in sets.items():
        plen, fam, _, addr = IP_KEY.unpack(key)
        net = ipaddress.ip_network((addr[:4] if fam == 4 else addr, plen - 32))
        for rid, proto, lo, hi in rules:
            best.setdefault(rid, ((proto, lo, hi), []))[1].append(net)
    out = []
    for rid, ((proto, lo, hi), nets) in best.items():
        own = {n.version: min((m for m in nets if m.version == n.version), key=lambda m: m.prefixlen) for n in nets}
        cidr = None if set(own.values()) == set(ANY_NETS) else min(own.values(), key=lambda m: m.prefixlen)
        out.append(FirewallRule(rid, cidr, proto, lo, hi))
    return sorted(out, key=lambda r: r.rule_id)


def rule_sets(rules: Iterable[FirewallRule], where: str = "") -> dict[bytes, list[FirewallRule]]:
    """LPM key -> the rules its set holds, most specific prefix first (pure). Raises
    UsageError when more than ``FW_RULES`` rules apply to one prefix."""
    rules = list(rules)
    sets: dict[bytes, list[FirewallRule]] = {}
    for r in rules:
        for net in r.nets:
            key = ip_key(net)
            if key in sets:
                continue
            covering = [(o, m) for o in rules for m in o.nets
                        if m.version == net.version and net.subnet_of(m)]  # type: ignore[arg-type]
            covering.sort(key=lambda om: (-om[1].prefixlen, om[0].rule_id))
            if len(covering) > FW_RULES:
                raise UsageError(f"firewall: {len(covering)} rules apply to {net}{' on ' + where if where else ''}; "
                                 f"at most {FW_RULES}")
            sets[key] = [o for o, _ in covering]
    return sets


class HostFirewall:
    """XDP drop rules on ``ifname``. ``mode``: None tries native XDP, then generic;
    'generic' or 'native' force one. ``pin_dir``: adopt or create the pins there (the
    program then stays attached after :meth:`close`; :meth:`detach` removes it)."""

    def __init__(self, ifname: str, *, mode: str | None = None, bpf_dir: Path | None = None,
                 pin_dir: Path | None = None) -> None:
        self.ifindex = _ifindex(ifname)
        if mode not in (None, *MODES):
            raise UsageError(f"XDP mode {mode!r}: expected 'generic' or 'native'")
        self.ifname = ifname
        self.pin_dir = Path(pin_dir) if pin_dir is not None else None
        self._rules: dict[int, FirewallRule] = {}
        self._written: set[bytes] = set()
        self._link_fd = -1
        self.adopted = False  # True: the link and maps were pinned by an earlier process
        self._obj = BpfObject((bpf_dir or default_bpf_dir()) / "enforce/xdp_fw.bpf.o")
        try:
            link_fd = self._pinned_link()
            reused = self._reuse_pins() if link_fd >= 0 or self._maps_pinned() else set()
            self._obj.load()
            self.ncpu = possible_cpus()
            self._sets = self._obj.map("np_fw_src")
            self._cnt = self._obj.map("np_fw_cnt")
            prog = self._obj.program("xdp__host_fw")
            if link_fd >= 0:
                self._link_fd = link_fd
                self.adopted = True
                self._written = set(_read_sets(self._sets))
                self._rules = {r.rule_id: r for r in self.kernel_rules()}  # what a failed change goes back to
            else:
                self._link_fd = self._attach(prog.fd, mode)
            self.link_id, self.prog_id, _ = _link_info(self._link_fd)
            self.mode = xdp_mode(self.ifindex, self.prog_id) or "unknown"
            self._pin(reused)
        except BaseException:
            if self._link_fd >= 0 and not self.adopted:
                os.close(self._link_fd)  # a link of ours, not pinned yet: closing detaches it
            self._link_fd = -1
            self._obj.close()
            raise

    # -- pins and the link -----------------------------------------------------------------------
    def _maps_pinned(self) -> bool:
        return self.pin_dir is not None and all((self.pin_dir / n).exists() for n in PINNED_MAPS)

    def _pinned_link(self) -> int:
        """The pinned link's fd when it is alive on this interface; a stale one (its interface
        gone or renumbered) is unpinned together with its maps, so counters start afresh."""
        if self.pin_dir is None or not (self.pin_dir / LINK_PIN).exists():
            return -1
        fd = obj_get(self.pin_dir / LINK_PIN)
        _, _, ifindex = _link_info(fd)
        if ifindex == self.ifindex:
            return fd
        os.close(fd)
        unpin(self.pin_dir)
        return -1

    def _reuse_pins(self) -> set[str]:
        return reuse_pinned_maps(self._obj, self.pin_dir, PINNED_MAPS)  # type: ignore[arg-type]

    def _pin(self, reused: set[str]) -> None:
        if self.pin_dir is None:
            return
        pin_maps(self._obj, self.pin_dir, PINNED_MAPS, reused)
        if not (self.pin_dir / LINK_PIN).exists():
            obj_pin(self._link_fd, self.pin_dir / LINK_PIN)

    def _attach(self, prog_fd: int, mode: str | None) -> int:
        create = lib_fn("bpf_link_create", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p])
        tried = []
        for name in ([mode] if mode else ["native", "generic"]):
            opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=MODES[name])
            fd = create(prog_fd, self.ifindex, BPF_XDP, ctypes.byref(opts))
            if fd >= 0:
                return fd
            err = errno_of(fd)
            tried.append(f"{name}: {errno.errorcode.get(err, err)}")
            if err in (errno.EBUSY, errno.EEXIST):
                raise UsageError(f"{self.ifname} carries another XDP program already (ip link show {self.ifname}); "
                                 "take it off first")
            if err not in (errno.EOPNOTSUPP, errno.EINVAL, 524):
                raise BpfError(f"XDP link on {self.ifname} ({name})", err)
        raise NotSupported(f"xdp on {self.ifname}", "; ".join(tried))

    def upgrade(self) -> None:
        """Swap this object's program into an adopted link (BPF_LINK_UPDATE: atomic, every
        packet sees the old or the new program), so the running program is this build's."""
        if not self.adopted:
            return
        prog_fd = self._obj.program("xdp__host_fw").fd
        rc = lib_fn("bpf_link_update", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p])(
            self._link_fd, prog_fd, None)
        if rc < 0:
            raise BpfError(f"update the XDP link on {self.ifname}", errno_of(rc))
        self.link_id, self.prog_id, _ = _link_info(self._link_fd)

    # -- rules -----------------------------------------------------------------------------------
    def add_rule(self, cidr: str | None, proto: int | str = 0, port_lo: int = 0, port_hi: int = 0, *,
                 rule_id: int | None = None) -> int:
        """Drop packets from ``cidr`` (None: any source) with ``proto`` (0 any) to ports
        ``port_lo..port_hi`` (0 any; ``port_hi`` 0 = just ``port_lo``). Returns the rule id
        for :meth:`counters` (the lowest free one unless ``rule_id`` is given)."""
        if rule_id is None:
            rule_id = next(i for i in range(FW_MAX_RULES + 1) if i not in self._rules)
        elif rule_id in self._rules:
            raise UsageError(f"firewall: rule {rule_id} exists already")
        rule = make_rule(rule_id, cidr, proto, port_lo, port_hi)
        self._zero(rule_id)
        self._rules[rule_id] = rule
        try:
            self._sync()
        except BaseException:
            del self._rules[rule_id]
            self._sync()
            raise
        return rule_id

    def _zero(self, rule_id: int) -> None:
        """Counters of a reused slot start from zero (cleared before the rule goes in)."""
        self._cnt.update(struct.pack("<I", rule_id), bytes(_cnt_size(self.ncpu)))

    def set_rules(self, rules: Iterable[FirewallRule]) -> None:
        """Make the kernel hold exactly ``rules`` (counters of kept ids go on counting). A set
        that cannot be built raises and leaves the rules as they were."""
        old = self._rules
        self._rules = {r.rule_id: r for r in rules}
        for rid in self._rules.keys() - old.keys():
            self._zero(rid)
        try:
            self._sync()
        except BaseException:
            self._rules = old
            self._sync()
            raise

    def remove_rule(self, rule_id: int) -> None:
        if self._rules.pop(rule_id, None) is None:
            raise UsageError(f"firewall: no rule {rule_id}")
        self._sync()

    def _sync(self) -> None:
        sets = rule_sets(self._rules.values(), self.ifname)
        for key, rules in sets.items():
            body = b"".join(FW_RULE.pack(o.proto, 1, o.port_lo, o.port_hi, 0, o.rule_id) for o in rules)
            self._sets.update(key, body.ljust(FW_RULE.size * FW_RULES, b"\0"))
        for stale in self._written - sets.keys():
            self._sets.delete(stale)
        self._written = set(sets)

    def rules(self) -> list[FirewallRule]:
        return sorted(self._rules.values(), key=lambda r: r.rule_id)

    def kernel_rules(self) -> list[FirewallRule]:
        """The rules as read back from the kernel's map (what the packets see)."""
        return _rules_from_sets(_read_sets(self._sets))

    def counters(self) -> dict[int | str, tuple[int, int]]:
        """{rule_id: (packets, bytes) dropped, 'pass': (packets, bytes) passed}."""
        return _read_counters(self._cnt, self._rules, self.ncpu)

    # -- lifetime --------------------------------------------------------------------------------
    def detach(self) -> None:
        """Take the program off the interface and remove the pins."""
        if self._link_fd >= 0:
            lib_fn("bpf_link_detach", ctypes.c_int, [ctypes.c_int])(self._link_fd)
        if self.pin_dir is not None:
            unpin(self.pin_dir)
        self.close()

    def close(self) -> None:
        """Release our fds: an unpinned link goes with them (the program leaves the
        interface); a pinned one stays attached."""
        if self._link_fd >= 0:
            os.close(self._link_fd)
            self._link_fd = -1
        self._obj.close()

    def __enter__(self) -> HostFirewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unpin(pin_dir: Path) -> None:
    """Remove a firewall's pins and their directory (the link pin last: the program leaves
    the interface when no pin and no fd holds the link any more)."""
    for name in (*PINNED_MAPS, LINK_PIN):
        with contextlib.suppress(FileNotFoundError):
            (Path(pin_dir) / name).unlink()
    with contextlib.suppress(OSError):
        Path(pin_dir).rmdir()


@dataclass
class PinStatus:
    """What the pins of one interface say, read without loading anything."""

    attached: bool  # a live link on the interface of that name
    reason: str  # why not, when not attached
    link_id: int = 0
    prog_id: int = 0
    mode: str | None = None
    counters: dict[int | str, tuple[int, int]] = field(default_factory=dict)
    kernel_rules: list[FirewallRule] = field(default_factory=list)


def read_pins(pin_dir: Path, ifname: str, rule_ids: Iterable[int]) -> PinStatus:
    """The link, counters and kernel rules under ``pin_dir`` (read only)."""
    if not (pin_dir / LINK_PIN).exists():
        return PinStatus(False, "not attached (no pins)")
    fd = obj_get(pin_dir / LINK_PIN)
    try:
        link_id, prog_id, ifindex = _link_info(fd)
    finally:
        os.close(fd)
    try:
        now = socket.if_nametoindex(ifname)
    except OSError:
        now = 0
    st = PinStatus(bool(ifindex) and ifindex == now, "", link_id, prog_id)
    if not ifindex:
        st.reason = "interface gone (link defunct)"
    elif ifindex != now:
        st.reason = f"link on ifindex {ifindex}, {ifname} is now {now or 'gone'}"
    else:
        st.mode = xdp_mode(ifindex, prog_id)
    maps = {}
    if not all((pin_dir / n).exists() for n in PINNED_MAPS):
        st.reason = st.reason or "maps not pinned"
        return st
    try:
        for name in PINNED_MAPS:
            maps[name] = _PinnedMap(pin_dir / name)
        st.counters = _read_counters(maps["np_fw_cnt"], rule_ids, possible_cpus())
        st.kernel_rules = _rules_from_sets(_read_sets(maps["np_fw_src"]))
    finally:
        for m in maps.values():
            m.close()
    return st


# -- the state file and the locked operations on it ----------------------------------------------
@dataclass
class FirewallState:
    """Plain data: the rules per interface. Records: ifname -> {"mode": str | None,
    "rules": [{"id", "cidr", "proto", "port_lo", "port_hi", "config"?}]}."""

    path: Path
    interfaces: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> FirewallState:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(p)
        except (OSError, ValueError) as e:
            raise UsageError(f"{p}: unreadable firewall state ({e}); move it away to start afresh") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or \
                not isinstance(data.get("interfaces"), dict):
            raise UsageError(f"{p}: not an andon firewall state of format {STATE_FORMAT}")
        st = cls(p, data["interfaces"])
        try:
            st.rules()  # every record parses
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"{p}: malformed firewall state ({e!r})") from None
        return st

    def save(self) -> None:
        write_json_atomic(self.path, {"format": STATE_FORMAT, "interfaces": self.interfaces})

    def rules(self, ifname: str | None = None) -> list[FirewallRule]:
        return [FirewallRule.from_dict(d) for name, rec in sorted(self.interfaces.items())
                if ifname in (None, name) for d in rec["rules"]]

    def used_ids(self) -> set[int]:
        return {int(d["id"]) for rec in self.interfaces.values() for d in rec["rules"]}


@contextlib.contextmanager
def locked(state_file: str | Path) -> Iterator[None]:
    """Hold ``<state file>.lock`` (``flock`` LOCK_EX) for the block."""
    with lock_file(Path(state_file).with_suffix(".lock")):
        yield


@dataclass(frozen=True)
class RuleSpec:
    """A rule to add: where and what (checked by :func:`make_rule` when given an id)."""

    ifname: str
    cidr: str | None = None
    proto: int | str = 0
    port_lo: int = 0
    port_hi: int = 0
    config: bool = False  # from the config file (``andon run`` keeps these in step with it)


def _apply(state: FirewallState, ifname: str, rules: list[FirewallRule], pin_root: Path,
           bpf_dir: Path | None, mode: str | None = None) -> None:
    """Make ``ifname`` hold ``rules``: attach (or adopt) and set them; no rule left: detach."""
    pin_dir = pin_root / ifname
    if not rules:
        if (pin_dir / LINK_PIN).exists() or (pin_dir / PINNED_MAPS[0]).exists():
            with contextlib.suppress(OSError, UsageError):
                fd = obj_get(pin_dir / LINK_PIN)
                try:
                    lib_fn("bpf_link_detach", ctypes.c_int, [ctypes.c_int])(fd)
                finally:
                    os.close(fd)
            unpin(pin_dir)
        return
    rule_sets(rules, ifname)  # a rule set that cannot be built fails before the kernel is touched
    fw = HostFirewall(ifname, mode=mode, bpf_dir=bpf_dir, pin_dir=pin_dir)
    try:
        fw.set_rules(rules)
        fw.upgrade()
    except BaseException:
        if not fw.adopted:
            fw.detach()  # nothing of ours stays behind a failed first rule
        else:
            fw.close()
        raise
    state.interfaces.setdefault(ifname, {"rules": []})["mode"] = fw.mode
    fw.close()


def add_rules(specs: list[RuleSpec], *, state_file: str | Path = DEFAULT_STATE_FILE,
              pin_dir: str | Path = DEFAULT_PIN_DIR, bpf_dir: Path | None = None,
              mode: str | None = None) -> list[int]:
    """Add rules (each checked first: a bad one changes nothing); their ids, which are unique
    across interfaces. A rule that matches an existing one of its interface is an error."""
    pin_root = Path(pin_dir)
    with locked(state_file):
        state = FirewallState.load(state_file)
        used = state.used_ids()
        new: dict[str, list[tuple[FirewallRule, bool]]] = {}
        ids = []
        for s in specs:
            _ifindex(s.ifname)
            free = next((i for i in range(FW_MAX_RULES) if i not in used), None)
            if free is None:
                raise UsageError(f"firewall: at most {FW_MAX_RULES} rules")
            r = make_rule(free, s.cidr, s.proto, s.port_lo, s.port_hi)
            for o in [*state.rules(s.ifname), *(x for x, _ in new.get(s.ifname, []))]:
                if o.same_match(r):
                    raise UsageError(f"firewall: rule {o.rule_id} on {s.ifname} is the same rule")
            used.add(free)
            ids.append(free)
            new.setdefault(s.ifname, []).append((r, s.config))
        done: list[str] = []
        try:
            for ifname, added in new.items():
                rules = state.rules(ifname) + [r for r, _ in added]
                _apply(state, ifname, rules, pin_root, bpf_dir, mode)
                done.append(ifname)
        except BaseException:
            for ifname in done:  # back to what the state file says
                with contextlib.suppress(Exception):
                    _apply(state, ifname, state.rules(ifname), pin_root, bpf_dir)
            raise
        for ifname, added in new.items():
            rec = state.interfaces.setdefault(ifname, {"rules": []})
            rec["rules"].extend({**r.to_dict(), **({"config": True} if cfg else {})} for r, cfg in added)
        state.save()
        return ids


def remove_rules(ids: Iterable[int] = (), *, ifname: str | None = None, config_only: bool = False,
                 state_file: str | Path = DEFAULT_STATE_FILE, pin_dir: str | Path = DEFAULT_PIN_DIR,
                 bpf_dir: Path | None = None) -> list[FirewallRule]:
    """Remove rules by id, or every rule of ``ifname`` (``config_only``: those from the
    config file). An interface left with no rule is detached and unpinned; one that is gone
    only loses its pins. The rules removed."""
    pin_root = Path(pin_dir)
    with locked(state_file):
        state = FirewallState.load(state_file)
        want = set(ids)
        unknown = want - state.used_ids()
        if unknown:
            raise UsageError(f"firewall: no rule {', '.join(map(str, sorted(unknown)))} (andon firewall list)")
        if ifname is not None and ifname not in state.interfaces:
            raise UsageError(f"firewall: no rules on {ifname}")
        gone: list[FirewallRule] = []
        for name, rec in sorted(state.interfaces.items()):
            drop = [d for d in rec["rules"] if int(d["id"]) in want or
                    (name == ifname and (not config_only or d.get("config")))]
            if not drop:
                continue
            keep = [d for d in rec["rules"] if d not in drop]
            try:
                live = socket.if_nametoindex(name)
            except OSError:
                live = 0
            if live:
                _apply(state, name, [FirewallRule.from_dict(d) for d in keep], pin_root, bpf_dir, rec.get("mode"))
            elif not keep:
                unpin(pin_root / name)
            gone.extend(FirewallRule.from_dict(d) for d in drop)
            rec["rules"] = keep
            if not keep:
                del state.interfaces[name]
        state.save()
        return gone


def sync_config(specs: list[RuleSpec], **kw: Any) -> tuple[list[int], list[FirewallRule]]:
    """Make the rules marked ``config`` match ``specs`` (the config file's ``firewall:``):
    add the missing ones, remove those no longer listed. Rules added by hand are left alone.
    Returns (ids added, rules removed)."""
    state_file = kw.get("state_file", DEFAULT_STATE_FILE)
    if not specs and not Path(state_file).exists():
        return [], []  # nothing configured, nothing applied before: touch nothing
    with locked(state_file):
        state = FirewallState.load(state_file)
    wanted = {(s.ifname, make_rule(0, s.cidr, s.proto, s.port_lo, s.port_hi)) for s in specs}
    have = {(name, FirewallRule.from_dict({**d, "id": 0})): int(d["id"])
            for name, rec in state.interfaces.items() for d in rec["rules"] if d.get("config")}
    stale = [rid for key, rid in have.items() if key not in wanted]
    removed = remove_rules(stale, **kw) if stale else []
    missing = [s for s in specs if (s.ifname, make_rule(0, s.cidr, s.proto, s.port_lo, s.port_hi)) not in have]
    added = add_rules([RuleSpec(s.ifname, s.cidr, s.proto, s.port_lo, s.port_hi, True) for s in missing],
                      **kw) if missing else []
    restore(**kw)
    return added, removed


def restore(*, state_file: str | Path = DEFAULT_STATE_FILE, pin_dir: str | Path = DEFAULT_PIN_DIR,
            bpf_dir: Path | None = None) -> list[str]:
    """Attach again every interface of the state file that is there but carries no live link of
    ours (after a reboot, or when the pins were removed): all its rules go back in, counters from
    zero. The interfaces restored."""
    pin_root = Path(pin_dir)
    if not Path(state_file).exists():
        return []
    done = []
    with locked(state_file):
        state = FirewallState.load(state_file)
        for name, rec in sorted(state.interfaces.items()):
            try:
                ifindex = socket.if_nametoindex(name)
            except OSError:
                continue  # gone: nothing to attach to
            link = pin_root / name / LINK_PIN
            if link.exists():
                fd = obj_get(link)
                try:
                    if _link_info(fd)[2] == ifindex:
                        continue
                finally:
                    os.close(fd)
            _apply(state, name, state.rules(name), pin_root, bpf_dir, rec.get("mode"))
            done.append(name)
        if done:
            state.save()
    return done


def firewall_status(*, state_file: str | Path = DEFAULT_STATE_FILE,
                    pin_dir: str | Path = DEFAULT_PIN_DIR) -> dict[str, Any]:
    """Rules with their drop counters and each interface's passed total, read without
    changing anything: {"rules": [...], "interfaces": [...]}."""
    pin_root = Path(pin_dir)
    p = Path(state_file)
    if not p.exists():
        return {"rules": [], "interfaces": []}
    with locked(p):
        state = FirewallState.load(p)
    rules_out, ifaces_out = [], []
    for name, rec in sorted(state.interfaces.items()):
        rules = state.rules(name)
        st = read_pins(pin_root / name, name, [r.rule_id for r in rules])
        by_id = {r.rule_id for r in st.kernel_rules}
        for r, d in zip(rules, rec["rules"]):
            pk, by = st.counters.get(r.rule_id, (0, 0))
            rules_out.append({"id": r.rule_id, "iface": name, "cidr": str(r.cidr) if r.cidr else "any",
                              "proto": proto_name(r.proto), "port": port_text(r),
                              "dropped_packets": pk, "dropped_bytes": by,
                              "in_kernel": r.rule_id in by_id, "source": "config" if d.get("config") else "cli"})
        pk, by = st.counters.get("pass", (0, 0))
        ifaces_out.append({"iface": name, "attached": st.attached, "status": st.reason or "attached",
                           "mode": st.mode or rec.get("mode"), "link_id": st.link_id, "prog_id": st.prog_id,
                           "rules": len(rules), "passed_packets": pk, "passed_bytes": by})
    return {"rules": rules_out, "interfaces": ifaces_out}
