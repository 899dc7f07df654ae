"""The policy state kept between ``andon endpoint`` / ``andon policy`` runs.

One directory (``/var/lib/andon/netpolicy/`` by default) holds ``state.json``: the endpoints
(name, kind, host-side veth, labels, addresses, and the TC filter handles the datapath needs
to take them over), the text of every applied policy file, the identity allocation and the
numeric policy ids the kernel reports. The file is written whole to a temporary name and
renamed over the old one, so a crash leaves either the old or the new state. The BPF maps
are pinned in ``bpffs`` (``/sys/fs/bpf/andon/netpolicy`` by default) beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .labels import PolicyError

DEFAULT_STATE_DIR = Path("/var/lib/andon/netpolicy")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/andon/netpolicy")
STATE_FILE = "state.json"
FORMAT = 1


@dataclass
class NetpolicyState:
    """Plain data: what is applied. :meth:`load` / :meth:`save` round-trip it through JSON."""

    directory: Path
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> record
    policy_files: dict[str, str] = field(default_factory=dict)  # file name -> text, in apply order
    identities: dict[str, Any] = field(default_factory=dict)  # IdentityAllocator.to_dict()
    policy_ids: dict[str, int] = field(default_factory=dict)  # policy name -> id the kernel reports
    audit_files: list[str] = field(default_factory=list)  # applied files in audit mode (policy apply --audit)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def load(cls, directory: str | Path) -> NetpolicyState:
        d = Path(directory)
        path = d / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(d)
        except (OSError, ValueError) as e:
            raise PolicyError(f"{path}: unreadable state ({e}); move it away to start afresh") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PolicyError(f"{path}: not an andon netpolicy state of format {FORMAT}")
        try:
            return cls(d, dict(data["endpoints"]), dict(data["policy_files"]), dict(data["identities"]),
                       {str(k): int(v) for k, v in data["policy_ids"].items()},
                       [str(f) for f in data.get("audit_files", [])])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"{path}: malformed state ({e!r})") from None

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "endpoints": self.endpoints, "policy_files": self.policy_files,
                "identities": self.identities, "policy_ids": self.policy_ids, "audit_files": self.audit_files}
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def policy_id(self, name: str) -> int:
        """A stable number for a policy name (1 up; 0 means 'no policy')."""
        if name not in self.policy_ids:
            self.policy_ids[name] = max(self.policy_ids.values(), default=0) + 1
        return self.policy_ids[name]


# -- from the state to the kernel ----------------------------------------------------------------
def host_addresses() -> list[str]:
    """Every address on the host's own interfaces (they have the host identity)."""
    import subprocess

    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", []) if "local" in a]


def netns_addresses(netns: str) -> list[str]:
    """Global addresses inside a named network namespace (not loopback, not link-local)."""
    import subprocess

    r = subprocess.run(["ip", "-n", netns, "-j", "addr", "show"], capture_output=True, text=True)
    if r.returncode != 0:
        raise PolicyError(f"network namespace {netns!r}: {r.stderr.strip() or 'not found'}")
    return [a["local"] for link in json.loads(r.stdout) if link.get("ifname") != "lo"
            for a in link.get("addr_info", []) if a.get("scope") == "global" and "local" in a]


def endpoints_of(state: NetpolicyState) -> list[Any]:
    from .identity import Endpoint

    return [Endpoint.make(name, rec.get("kind", "netns"), rec.get("labels", []), rec.get("addresses", []),
                          rec.get("ifname")) for name, rec in sorted(state.endpoints.items())]


def compute(state: NetpolicyState, policy_files: dict[str, str] | None = None) -> tuple[Any, Any]:
    """(PolicyLoadResult, Resolution) of the state's endpoints and policies (or ``policy_files``).
    The identity allocation in ``state`` grows as needed."""
    from .identity import IdentityAllocator
    from .policy import load_texts
    from .resolve import resolve

    loaded = load_texts(list((policy_files if policy_files is not None else state.policy_files).items()),
                        audit_files=state.audit_files)
    alloc = IdentityAllocator.from_dict(state.identities) if state.identities else IdentityAllocator()
    res = resolve(endpoints_of(state), loaded.policies if loaded.ok else [], alloc, host_addresses())
    state.identities = alloc.to_dict()
    return loaded, res


def enforce(dp: Any, state: NetpolicyState, res: Any) -> int:
    """Put a resolution into a datapath: ip -> identity, then the whole policy atomically, then
    each endpoint's default deny; stale ip entries go last. Returns the policy entries installed."""
    from .datapath import IP_KEY, PolicyEntry, ip_key

    cache = res.ipcache()
    for net, ident in cache.items():
        dp.set_ip_identity(net, ident)
    # the model's "every port" is 0-65535, the datapath's is port 0 (and no port at all without a protocol)
    entries = [PolicyEntry(d.ep_identity, d.direction, d.peer_identity, d.proto,
                           *((0, 0) if (d.port_lo, d.port_hi) == (0, 65535) else (d.port_lo, d.port_hi)),
                           d.verdict.lower(), state.policy_id(d.policy), d.rule, d.audit)
               for d in res.datapath_entries()]
    dp.apply(entries)
    for name, epp in res.endpoints.items():
        rec = state.endpoints[name]
        deny_in, deny_out = epp.default_deny["ingress"], epp.default_deny["egress"]
        dp.set_endpoint_config(int(rec["ifindex"]), epp.identity.id,
                               default_deny_ingress=epp.is_default_deny("ingress"),
                               default_deny_egress=epp.is_default_deny("egress"), audit=epp.endpoint.audit,
                               deny_policy_ingress=state.policy_id(deny_in[0]) if deny_in else 0,
                               deny_policy_egress=state.policy_id(deny_out[0]) if deny_out else 0,
                               audit_default_deny_ingress=epp.default_deny_audit["ingress"],
                               audit_default_deny_egress=epp.default_deny_audit["egress"])
    keep = {ip_key(n) for n in cache}
    for k in list(dp.ipcache.keys(IP_KEY.size)):
        if k not in keep:
            dp.ipcache.delete(k)
    state.identities = res.allocator.to_dict()  # CIDR identities allocated on the way
    return dp.entries_installed
