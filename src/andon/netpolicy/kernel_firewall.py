"""The XDP host firewall: ``enforce/xdp_fw.bpf.o`` on one interface.

Drops by source CIDR, protocol and destination port range (ICMP: the type) before the
stack sees the packet; everything else passes. Rules are kept here and compiled into
the kernel's LPM map: one rule set per distinct prefix, each holding its own rules and
those of every shorter prefix that covers it (the LPM gives only the most specific
prefix), at most ``NP_FW_RULES`` (8) per set. Per-rule counters are per CPU.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ..bpf import libbpf as lb
from ..bpf.object import BpfObject, Link
from ..errors import BpfError, NotSupported, UsageError
from ..events.live import default_bpf_dir, possible_cpus
from .datapath import PROTO_NUMBERS, _sum_percpu, ip_key

FW_RULES = 8  # NP_FW_RULES
FW_MAX_RULES = 1024  # NP_FW_MAX_RULES; the pass counter is at this index
FW_RULE = struct.Struct("<BBHHHI")
FW_RULE_FIELDS = ("proto", "used", "port_lo", "port_hi", "pad", "rule_id")
FW_CNT = struct.Struct("<QQ")
FW_CNT_FIELDS = ("packets", "bytes")
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1 << 1, 1 << 2


@dataclass(frozen=True)
class FirewallRule:
    rule_id: int
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    proto: int
    port_lo: int
    port_hi: int


class HostFirewall:
    """XDP drop rules on ``ifname``. ``mode``: None lets the kernel choose (native where the
    driver has XDP, as veth does), 'generic' or 'native' force one."""

    def __init__(self, ifname: str, *, mode: str | None = None, bpf_dir: Path | None = None) -> None:
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise UsageError(f"no network interface {ifname!r}") from None
        if mode not in (None, "generic", "native"):
            raise UsageError(f"XDP mode {mode!r}: expected 'generic' or 'native'")
        self.ifname = ifname
        self._rules: dict[int, FirewallRule] = {}
        self._written: set[bytes] = set()
        self._flags = 0
        self._link: Link | None = None
        self._obj = BpfObject((bpf_dir or default_bpf_dir()) / "enforce/xdp_fw.bpf.o")
        try:
            self._obj.load()
            self.ncpu = possible_cpus()
            self._sets = self._obj.map("np_fw_src")
            self._cnt = self._obj.map("np_fw_cnt")
            prog = self._obj.program("xdp__host_fw")
            if mode is None:
                self._link = prog.attach_with("bpf_program__attach_xdp", self.ifindex)
            else:
                self._flags = XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE
                rc = lb.lib().bpf_xdp_attach(self.ifindex, prog.fd, self._flags, None)
                if rc < 0:
                    self._flags = 0
                    if -rc in (errno.EOPNOTSUPP, errno.EINVAL, 524):
                        raise NotSupported(f"xdp ({mode})", f"{ifname} refused it: {errno.errorcode.get(-rc, -rc)}")
                    raise BpfError(f"bpf_xdp_attach({ifname})", -rc)
        except BaseException:
            self._obj.close()
            raise

    def add_rule(self, cidr: str, proto: int | str = 0, port_lo: int = 0, port_hi: int = 0) -> int:
        """Drop packets from ``cidr`` with ``proto`` (0 any) to ports ``port_lo..port_hi``
        (0 any; ``port_hi`` 0 = just ``port_lo``). Returns the rule id for :meth:`counters`."""
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as e:
            raise UsageError(f"firewall rule: {e}") from None
        p = PROTO_NUMBERS.get(proto.lower(), -1) if isinstance(proto, str) else proto
        if not 0 <= p <= 255:
            raise UsageError(f"firewall rule: protocol {proto!r}")
        hi = port_hi or port_lo
        if not (0 <= port_lo <= hi <= 0xFFFF) or (port_lo == 0 and port_hi):
            raise UsageError(f"firewall rule: port range {port_lo}-{port_hi}")
        if (port_lo or port_hi) and p == 0:
            raise UsageError("firewall rule: a port needs a protocol")
        rule_id = next(i for i in range(FW_MAX_RULES + 1) if i not in self._rules)
        if rule_id >= FW_MAX_RULES:
            raise UsageError(f"firewall: at most {FW_MAX_RULES} rules")
        rule = FirewallRule(rule_id, net, p, port_lo, hi)
        self._rules[rule_id] = rule
        try:
            self._sync()
        except BaseException:
            del self._rules[rule_id]
            self._sync()
            raise
        # counters of a reused slot start from zero
        self._cnt.update(struct.pack("<I", rule_id), bytes(((FW_CNT.size + 7) & ~7) * self.ncpu))
        return rule_id

    def remove_rule(self, rule_id: int) -> None:
        if self._rules.pop(rule_id, None) is None:
            raise UsageError(f"firewall: no rule {rule_id}")
        self._sync()

    def _sync(self) -> None:
        sets: dict[bytes, list[FirewallRule]] = {}
        for r in self._rules.values():
            key = ip_key(r.cidr)
            if key in sets:
                continue
            covering = [o for o in self._rules.values()
                        if o.cidr.version == r.cidr.version and r.cidr.subnet_of(o.cidr)]  # type: ignore[arg-type]
            covering.sort(key=lambda o: (-o.cidr.prefixlen, o.rule_id))
            if len(covering) > FW_RULES:
                raise UsageError(f"firewall: {len(covering)} rules apply to {r.cidr}; at most {FW_RULES}")
            sets[key] = covering
        for key, rules in sets.items():
            body = b"".join(FW_RULE.pack(o.proto, 1, o.port_lo, o.port_hi, 0, o.rule_id) for o in rules)
            self._sets.update(key, body.ljust(FW_RULE.size * FW_RULES, b"\0"))
        for stale in self._written - sets.keys():
            self._sets.delete(stale)
        self._written = set(sets)

    def rules(self) -> list[FirewallRule]:
        return sorted(self._rules.values(), key=lambda r: r.rule_id)

    def counters(self) -> dict[int | str, tuple[int, int]]:
        """{rule_id: (packets, bytes) dropped, 'pass': (packets, bytes) passed}."""
        size = ((FW_CNT.size + 7) & ~7) * self.ncpu
        out: dict[int | str, tuple[int, int]] = {}
        for idx in [*self._rules, FW_MAX_RULES]:
            raw = self._cnt.lookup(struct.pack("<I", idx), size)
            out["pass" if idx == FW_MAX_RULES else idx] = _sum_percpu(raw, FW_CNT, self.ncpu) if raw else (0, 0)
        return out

    def close(self) -> None:
        if self._flags:
            lb.lib().bpf_xdp_detach(self.ifindex, self._flags, None)
            self._flags = 0
        self._obj.close()  # destroys the XDP link when the kernel chose the mode

    def __enter__(self) -> HostFirewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

