"""The policy state kept between ``andon endpoint`` / ``andon policy`` runs.

One directory (``/var/lib/andon/netpolicy/`` by default) holds ``state.json``: the endpoints
(name, kind, host-side veth, labels, addresses, and the TC filter handles the datapath needs
to take them over), the text of every applied policy file, the identity allocation and the
numeric policy ids the kernel reports. The file is written whole to a temporary name and
renamed over the old one, so a crash leaves either the old or the new state. The BPF maps
are pinned in ``bpffs`` (``/sys/fs/bpf/andon/netpolicy`` by default) beside it.

Every read-modify-write of the state (and the kernel change that goes with it) runs under
:func:`locked`, an exclusive ``flock`` on ``state.lock`` in the same directory, so two
``andon`` commands at once cannot lose each other's endpoint or policy. The endpoint
operations (:func:`add_endpoint`, :func:`remove_endpoint`, :func:`set_audit`, :func:`sync`)
take it themselves.

Endpoint records in ``endpoints`` (name -> record), by ``kind``:
``netns``: netns, ifname, ifindex, labels, addresses, audit, datapath (TC filter handles);
``container``: the same plus container_id, container_name, and ``sync`` (added by
``andon endpoint sync``, removed when the container stops); ``cgroup``: cgroup (path),
cgroup_id, labels, addresses [] (host network: the host's), ifname None, ifindex 0, audit,
datapath (attached program ids). ``config: true`` marks endpoints from the config file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .labels import PolicyError

DEFAULT_STATE_DIR = Path("/var/lib/andon/netpolicy")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/andon/netpolicy")
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
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
        data = {"format": FORMAT, "endpoints": self.endpoints, "policy_files": self.policy_files,
                "identities": self.identities, "policy_ids": self.policy_ids, "audit_files": self.audit_files}
        write_json_atomic(self.path, data)

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
                          rec.get("ifname"), rec.get("cgroup"), bool(rec.get("audit", False)))
            for name, rec in sorted(state.endpoints.items())]


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
    # the model's "every port" is 0-65535, the datapath's is port 0 (and no port at all without a
    # protocol); ICMP types go as they are: type 0 is echo reply, 0-65535 every type
    entries = [PolicyEntry(d.ep_identity, d.direction, d.peer_identity, d.proto,
                           *((0, 0) if (d.port_lo, d.port_hi) == (0, 65535) and d.proto not in (1, 58)
                             else (d.port_lo, d.port_hi)),
                           d.verdict.lower(), state.policy_id(d.policy), d.rule, d.audit)
               for d in res.datapath_entries()]
    dp.apply(entries)
    for name, epp in res.endpoints.items():
        rec = state.endpoints[name]
        deny_in, deny_out = epp.default_deny["ingress"], epp.default_deny["egress"]
        if rec.get("kind") == "cgroup":
            set_config = dp.set_cgroup_config
            key = int(rec["cgroup_id"])
        else:
            set_config = dp.set_endpoint_config
            key = int(rec["ifindex"])
        set_config(key, epp.identity.id,
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


# -- endpoint operations, each a locked read-modify-write ------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, fsync it, rename it over
    ``path``: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def lock_file(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last fd releases the lock


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[None]:
    """Hold the state directory's lock (``flock`` LOCK_EX on ``state.lock``) for the block."""
    with lock_file(Path(directory) / LOCK_FILE):
        yield


def open_datapath(state: NetpolicyState, pin_dir: str | Path) -> Any:
    """The datapath on the pinned maps, with the endpoints attached by earlier runs taken over."""
    from .datapath import Datapath

    dp = Datapath(pin_dir=Path(pin_dir))
    for rec in state.endpoints.values():
        if "datapath" not in rec:  # not yet for the one being added
            continue
        if rec.get("kind") == "cgroup":
            dp.adopt_cgroup(rec["datapath"])
        else:
            dp.adopt_endpoint(rec["datapath"])
    return dp


def _check_new(state: NetpolicyState, name: str, rec: dict[str, Any]) -> None:
    from .identity import Endpoint

    if name in state.endpoints:
        raise UsageError(f"endpoint {name!r} exists already (andon endpoint remove it first)")
    kind = rec.get("kind")
    Endpoint.make(name, kind, rec.get("labels", []), rec.get("addresses", []), rec.get("ifname"), rec.get("cgroup"))
    if kind == "cgroup":
        new = Path(rec["cgroup"])
        for other, orec in state.endpoints.items():
            if orec.get("kind") != "cgroup":
                continue
            old = Path(orec["cgroup"])
            if old == new or old in new.parents or new in old.parents:
                # the programs would run twice on one socket (BPF_F_ALLOW_MULTI runs every level's)
                raise UsageError(f"cgroup {new} nests with endpoint {other!r} ({old}): cgroup endpoints may not nest")
    else:
        for other, orec in state.endpoints.items():
            if orec.get("ifname") and orec.get("ifname") == rec.get("ifname"):
                raise UsageError(f"interface {rec['ifname']} is endpoint {other!r} already")


def _attach(dp: Any, state: NetpolicyState, name: str, res: Any) -> None:
    """Attach one endpoint of the resolution; fills its record's ifindex/cgroup_id."""
    rec = state.endpoints[name]
    ident = res.endpoints[name].identity.id
    if rec.get("kind") == "cgroup":
        rec["cgroup_id"] = dp.attach_cgroup(rec["cgroup"], ident)
        rec["ifindex"] = 0
    else:
        rec["ifindex"] = dp.attach_endpoint(rec["ifname"], ident)


def _detach(dp: Any, rec: dict[str, Any]) -> None:
    try:
        if rec.get("kind") == "cgroup":
            dp.detach_cgroup(int(rec["cgroup_id"]))
        else:
            dp.detach_endpoint(int(rec["ifindex"]))
    except (OSError, UsageError, KeyError, ValueError):
        pass  # gone with its namespace, container or cgroup


def _record(dp: Any, rec: dict[str, Any]) -> dict[str, Any]:
    if rec.get("kind") == "cgroup":
        return dp.cgroup_record(int(rec["cgroup_id"]))
    return dp.endpoint_record(int(rec["ifindex"]))


Plan = tuple[dict[str, dict[str, Any]], list[str], dict[str, dict[str, Any]]]  # (add, remove, update)


def change_endpoints(state_dir: str | Path, pin_dir: str | Path, plan: Any) -> tuple[Plan, Any, NetpolicyState]:
    """Add, remove and update (labels, audit) endpoints in one locked step, recomputing and
    re-applying everything once. ``plan(state)`` returns (add: name -> record, remove: names,
    update: name -> fields), decided under the lock. Returns (the plan, the Resolution, the
    saved state). A failure leaves the state file as it was and detaches what this call attached."""
    from .datapath import unpin

    with locked(state_dir):
        state = NetpolicyState.load(state_dir)
        add, remove, update = plan(state)
        for name in [*remove, *update]:
            if name not in state.endpoints:
                raise UsageError(f"no endpoint {name!r}")
        gone = {name: state.endpoints.pop(name) for name in remove}
        for name, fields in update.items():
            state.endpoints[name].update(fields)
        for name, rec in add.items():
            _check_new(state, name, rec)
            state.endpoints[name] = dict(rec)
        _, res = compute(state)
        if not (add or remove or update):
            return (add, remove, update), res, state
        dp = open_datapath(state, pin_dir)
        attached: list[str] = []
        try:
            for rec in gone.values():
                if "datapath" in rec:
                    (dp.adopt_cgroup if rec.get("kind") == "cgroup" else dp.adopt_endpoint)(rec["datapath"])
                _detach(dp, rec)
            try:
                for name in add:
                    _attach(dp, state, name, res)
                    attached.append(name)
                enforce(dp, state, res)
            except BaseException:
                for name in attached:
                    _detach(dp, state.endpoints[name])
                raise
            for name in add:
                state.endpoints[name]["datapath"] = _record(dp, state.endpoints[name])
            state.save()
        finally:
            dp.close(detach=False)
        if not state.endpoints:
            unpin(Path(pin_dir))  # nothing attached any more: drop the pins
        return (add, remove, update), res, state


def add_endpoint(state_dir: str | Path, pin_dir: str | Path, name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Add one endpoint; its record as saved, with its ``identity``."""
    _, res, state = change_endpoints(state_dir, pin_dir, lambda st: ({name: rec}, [], {}))
    return {**state.endpoints[name], "identity": res.endpoints[name].identity.id}


def remove_endpoint(state_dir: str | Path, pin_dir: str | Path, name: str) -> None:
    change_endpoints(state_dir, pin_dir, lambda st: ({}, [name], {}))


def set_audit(state_dir: str | Path, pin_dir: str | Path, name: str, on: bool) -> None:
    """Audit mode of one endpoint: would-be drops pass and are reported as AUDIT."""
    change_endpoints(state_dir, pin_dir, lambda st: ({}, [], {name: {"audit": bool(on)}}))


def sync(state_dir: str | Path, pin_dir: str | Path, wanted: Any, owned: Any) -> Plan:
    """Make the endpoints match ``wanted(state)`` (name -> record, computed under the lock)
    among those ``owned(record)`` says this caller manages: add the missing, remove owned ones
    no longer wanted, update labels/audit that changed. The plan carried out."""
    def plan(state: NetpolicyState) -> Plan:
        want = wanted(state)
        have = state.endpoints
        add = {n: r for n, r in want.items() if n not in have}
        remove = [n for n, r in have.items() if owned(r) and n not in want]
        update = {}
        for n, r in want.items():
            if n in have and owned(have[n]):
                changed = {k: r[k] for k in ("labels", "audit") if k in r and have[n].get(k) != r[k]}
                if changed:
                    update[n] = changed
        return add, remove, update

    done, _, _ = change_endpoints(state_dir, pin_dir, plan)
    return done
