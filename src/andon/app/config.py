"""The agent's config file, ``andon.yaml``: Falco's key names where Falco has one.

Where it is looked for, first found wins: ``andon run -c FILE``, ``$ANDON_CONFIG``,
``/etc/andon/andon.yaml``; with none, the defaults below apply (andon's own rules, alerts
as text on stdout). ``config/andon.yaml`` in the repository is the documented example.

Top-level keys andon reads itself (everything else that is valid belongs to the output
channels, see :mod:`andon.app.channels`)::

    rules_files: [FILE or DIR, ...]   # Falco's `rules_files` (`rules_file` accepted); DIRs: *.yaml sorted
    rule_matching: first              # first | all, as Falco
    priority: debug                   # load only rules at or above this priority
    watch_config_files: true          # reload rules when a rules file changes (SIGHUP always does)
    hostname: NAME                    # the alerts' hostname (default: this host's name)
    sensor:
      ring_buffer_mb: 64              # kernel ring buffer size
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

PACKAGE_RULES = Path(__file__).resolve().parents[1] / "rules" / "data" / "andon_rules.yaml"
SYSTEM_CONFIG = Path("/etc/andon/andon.yaml")

_AGENT_KEYS = {"rules_files", "rules_file", "rule_matching", "priority", "watch_config_files", "hostname", "sensor",
               "append_output", "observe", "store", "flows", "network", "firewall"}
_OBSERVE_KEYS = {"enabled", "protocols", "trace_roles", "max_copy_bytes", "ring_buffer_mb", "process_stats_interval",
                 "conn_stats_interval", "idle_timeout", "unix_sockets"}
_TRACE_ROLES = ("client", "server")
_APPEND_KEYS = {"match", "extra_output", "suggested_output", "extra_fields"}
_MATCH_KEYS = {"rule", "source", "tags"}
_SENSOR_KEYS = {"ring_buffer_mb"}
_FLOWS_KEYS = {"enabled", "pin_dir", "state_dir", "poll_interval"}
_NETWORK_KEYS = {"state_dir", "pin_dir", "containers", "container_label", "endpoints"}
_FIREWALL_KEYS = {"state_file", "pin_dir", "rules"}
_FIREWALL_RULE_KEYS = {"iface", "cidr", "proto", "port"}
_ENDPOINT_KEYS = {"name", "netns", "ifname", "addresses", "container", "cgroup", "labels", "audit"}


@dataclass(frozen=True)
class ObserveConfig:
    """The ``observe:`` section: protocol tracing into Pixie's tables (docs/observability.md)."""

    enabled: bool = True
    protocols: tuple[str, ...] = ("http", "http2", "pgsql", "mysql", "redis", "dns")
    # (protocol, roles): only the client or the server end of its connections is traced (the
    # kernel copies nothing of the other); a protocol not here: both ends, as Pixie does
    trace_roles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_copy_bytes: int = 4096
    ring_buffer_mb: int = 32  # 8 lost records at saturation when the agent stalled (docs/performance.md)
    # unix stream sockets too: a host's local clients (psql, mysql -h localhost, redis-cli -s)
    unix_sockets: bool = True
    process_stats_interval_ns: int = 10 * 10**9
    conn_stats_interval_ns: int = 5 * 10**9
    idle_timeout_ns: int = 300 * 10**9

    def protocols_text(self) -> str:
        """The protocols traced, a restricted one with its end: ``http, pgsql (server end)``."""
        roles = dict(self.trace_roles)
        return ", ".join(p if set(roles.get(p, _TRACE_ROLES)) == set(_TRACE_ROLES) else f"{p} ({roles[p][0]} end)"
                         for p in self.protocols)


@dataclass(frozen=True)
class FlowsConfig:
    """The ``flows:`` section: the network policy datapath's verdicts as Hubble flows in the
    store's ``flows`` table (docs/networking.md, Flows). Kept as long as the store keeps tables
    (``store.retention``)."""

    enabled: bool = True
    pin_dir: Path = Path("/sys/fs/bpf/andon/netpolicy")  # where `andon endpoint add` pinned the maps
    state_dir: Path = Path("/var/lib/andon/netpolicy")  # state.json: endpoint names, labels, policies
    poll_interval_ns: int = 2 * 10**9  # look for the pins this often while they are missing


@dataclass(frozen=True)
class NetworkConfig:
    """The ``network:`` section: policy endpoints applied by ``andon run`` at start and by
    ``andon endpoint sync --config`` (docs/networking.md, Endpoints). Each endpoint is a dict
    {name, netns+ifname[+addresses] | container | cgroup, labels: [k=v...], audit}."""

    state_dir: Path = Path("/var/lib/andon/netpolicy")
    pin_dir: Path = Path("/sys/fs/bpf/andon/netpolicy")
    containers: str = "off"  # podman containers as endpoints: label | all | off
    container_label: str = "andon.endpoint=true"  # what `label` looks for (k=v or k)
    endpoints: tuple[dict[str, Any], ...] = ()

    @property
    def active(self) -> bool:
        """Anything for the agent to apply at start."""
        return bool(self.endpoints) or self.containers != "off"


@dataclass(frozen=True)
class FirewallConfig:
    """The ``firewall:`` section: XDP host firewall rules ``andon run`` applies at start
    (docs/networking.md, Host firewall). Each rule is a dict {iface, cidr (None: any source),
    proto, port_lo, port_hi}; rules added by ``andon firewall add`` are never touched, those from
    here are removed again when they leave this list."""

    state_file: Path = Path("/var/lib/andon/firewall.json")
    pin_dir: Path = Path("/sys/fs/bpf/andon/firewall")
    rules: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    rules_files: tuple[Path, ...] = (PACKAGE_RULES,)
    rule_matching: str = "first"
    priority: str = "debug"
    watch_config_files: bool = True
    hostname: str | None = None
    ring_buffer_mb: int = 64
    outputs: dict[str, Any] = field(default_factory=dict)  # the channel keys, as written
    append_output: tuple[Any, ...] | None = None  # engine.AppendOutput entries; None: Falco's default
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    store: Any = None  # store.settings.StoreSettings; None: its defaults
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    firewall: FirewallConfig | None = None  # None: no firewall section (andon run leaves the firewall alone)
    path: Path | None = None  # where this config came from

    def rule_paths(self) -> list[Path]:
        """The rules files in load order: directories expand to their *.yaml / *.yml, sorted."""
        out: list[Path] = []
        for p in self.rules_files:
            if p.is_dir():
                out += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
            else:
                out.append(p)
        return out


def find_config(explicit: str | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise UsageError(f"config file {explicit} does not exist")
        return p
    env = os.environ.get("ANDON_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise UsageError(f"$ANDON_CONFIG names {env}, which does not exist")
        return p
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(path: Path | None) -> AgentConfig:
    """Read and check a config file; every problem is a UsageError naming the key."""
    if path is None:
        return AgentConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the top level must be a mapping of keys")
    return config_from_dict(data, path)


def config_from_dict(data: dict[str, Any], path: Path | None = None) -> AgentConfig:
    where = f"{path}: " if path else ""
    base = path.parent if path else Path.cwd()
    kw: dict[str, Any] = {"path": path}
    files = data.get("rules_files", data.get("rules_file"))
    if files is not None:
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise UsageError(f"{where}rules_files must be a list of paths")
        kw["rules_files"] = tuple(_rules_path(f, base) for f in files)
    if "rule_matching" in data:
        v = data["rule_matching"]
        if v not in ("first", "all"):
            raise UsageError(f"{where}rule_matching must be 'first' or 'all', not {v!r}")
        kw["rule_matching"] = v
    if "priority" in data:
        from ..rules.outputs import Priority

        try:
            Priority.parse(str(data["priority"]))
        except (ValueError, KeyError):
            raise UsageError(f"{where}priority {data['priority']!r} is not a Falco priority") from None
        kw["priority"] = str(data["priority"])
    if "watch_config_files" in data:
        if not isinstance(data["watch_config_files"], bool):
            raise UsageError(f"{where}watch_config_files must be true or false")
        kw["watch_config_files"] = data["watch_config_files"]
    if "hostname" in data:
        kw["hostname"] = str(data["hostname"])
    sensor = data.get("sensor") or {}
    if not isinstance(sensor, dict):
        raise UsageError(f"{where}sensor must be a mapping")
    unknown = set(sensor) - _SENSOR_KEYS
    if unknown:
        raise UsageError(f"{where}unknown key(s) under sensor: {', '.join(sorted(unknown))}")
    if "ring_buffer_mb" in sensor:
        mb = sensor["ring_buffer_mb"]
        if not isinstance(mb, int) or not 1 <= mb <= 4096:
            raise UsageError(f"{where}sensor.ring_buffer_mb must be an integer from 1 to 4096")
        kw["ring_buffer_mb"] = mb
    # `priority` is both: rules below it are not enabled, alerts below it are not sent
    if "append_output" in data:
        kw["append_output"] = _append_output(data["append_output"], where)
    if "observe" in data:
        kw["observe"] = _observe(data["observe"], where)
    if "store" in data:
        from ..store.settings import StoreSettings

        try:
            kw["store"] = StoreSettings.from_config(data["store"] or {})
        except (UsageError, ValueError, TypeError) as e:
            raise UsageError(f"{where}{e}") from None
    if "flows" in data:
        kw["flows"] = _flows(data["flows"], where)
    if "network" in data:
        kw["network"] = _network(data["network"], where)
    if "firewall" in data:
        kw["firewall"] = _firewall(data["firewall"], where)
    kw["outputs"] = {k: v for k, v in data.items() if k not in _AGENT_KEYS or k == "priority"}
    return AgentConfig(**kw)


def _observe(sec: Any, where: str) -> ObserveConfig:
    from ..store.settings import parse_duration_ns

    if sec is None:
        return ObserveConfig()
    if not isinstance(sec, dict):
        raise UsageError(f"{where}observe must be a mapping")
    unknown = set(sec) - _OBSERVE_KEYS
    if unknown:
        raise UsageError(f"{where}unknown key(s) under observe: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = {}
    for key in ("enabled", "unix_sockets"):
        if key in sec:
            if not isinstance(sec[key], bool):
                raise UsageError(f"{where}observe.{key} must be true or false")
            kw[key] = sec[key]
    known = ObserveConfig().protocols
    if "protocols" in sec:
        protos = sec["protocols"]
        if not isinstance(protos, list) or not all(isinstance(p, str) for p in protos):
            raise UsageError(f"{where}observe.protocols must be a list of names ({', '.join(known)})")
        bad = [p for p in protos if p.lower() not in known]
        if bad:
            raise UsageError(f"{where}observe.protocols: unknown {', '.join(bad)}; known: {', '.join(known)}")
        kw["protocols"] = tuple(p.lower() for p in protos)
    if "trace_roles" in sec:
        tr = sec["trace_roles"]
        if not isinstance(tr, dict):
            raise UsageError(f"{where}observe.trace_roles must map protocol names to client, server or "
                             "[client, server]")
        pairs = []
        for name, roles in tr.items():
            if not isinstance(name, str) or name.lower() not in known:
                raise UsageError(f"{where}observe.trace_roles: unknown protocol {name!r}; known: {', '.join(known)}")
            if isinstance(roles, str):
                roles = [roles]
            if (not isinstance(roles, list) or not roles
                    or not all(isinstance(r, str) and r.lower() in _TRACE_ROLES for r in roles)):
                raise UsageError(f"{where}observe.trace_roles.{name} must be client, server or [client, server], "
                                 f"not {roles!r}")
            pairs.append((name.lower(), tuple(sorted({r.lower() for r in roles}))))
        kw["trace_roles"] = tuple(sorted(pairs))
    for key, lo, hi in (("max_copy_bytes", 1, 16384), ("ring_buffer_mb", 1, 1024)):
        if key in sec:
            v = sec[key]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise UsageError(f"{where}observe.{key} must be an integer from {lo} to {hi}")
            kw[key] = v
    for key in ("process_stats_interval", "conn_stats_interval", "idle_timeout"):
        if key in sec:
            try:
                ns = parse_duration_ns(sec[key])
            except (UsageError, ValueError) as e:
                raise UsageError(f"{where}observe.{key}: {e}") from None
            if ns <= 0:
                raise UsageError(f"{where}observe.{key} must be longer than 0")
            kw[f"{key}_ns"] = ns
    return ObserveConfig(**kw)


def _flows(sec: Any, where: str) -> FlowsConfig:
    from ..store.settings import parse_duration_ns

    if sec is None:
        return FlowsConfig()
    if not isinstance(sec, dict):
        raise UsageError(f"{where}flows must be a mapping")
    unknown = set(sec) - _FLOWS_KEYS
    if unknown:
        raise UsageError(f"{where}unknown key(s) under flows: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = {}
    if "enabled" in sec:
        if not isinstance(sec["enabled"], bool):
            raise UsageError(f"{where}flows.enabled must be true or false")
        kw["enabled"] = sec["enabled"]
    for key in ("pin_dir", "state_dir"):
        if key in sec:
            if not isinstance(sec[key], str) or not sec[key]:
                raise UsageError(f"{where}flows.{key} must be a directory path")
            kw[key] = Path(sec[key])
    if "poll_interval" in sec:
        try:
            ns = parse_duration_ns(sec["poll_interval"])
        except (UsageError, ValueError) as e:
            raise UsageError(f"{where}flows.poll_interval: {e}") from None
        if ns <= 0:
            raise UsageError(f"{where}flows.poll_interval must be longer than 0")
        kw["poll_interval_ns"] = ns
    return FlowsConfig(**kw)


def _network(sec: Any, where: str) -> NetworkConfig:
    if sec is None:
        return NetworkConfig()
    if not isinstance(sec, dict):
        raise UsageError(f"{where}network must be a mapping")
    unknown = set(sec) - _NETWORK_KEYS
    if unknown:
        raise UsageError(f"{where}unknown key(s) under network: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = {}
    for key in ("pin_dir", "state_dir"):
        if key in sec:
            if not isinstance(sec[key], str) or not sec[key]:
                raise UsageError(f"{where}network.{key} must be a directory path")
            kw[key] = Path(sec[key])
    if "containers" in sec:
        if sec["containers"] not in ("label", "all", "off") and sec["containers"] is not False:
            raise UsageError(f"{where}network.containers must be label, all or off")
        kw["containers"] = sec["containers"] or "off"  # YAML reads a bare off as false
    if "container_label" in sec:
        if not isinstance(sec["container_label"], str) or not sec["container_label"].split("=")[0]:
            raise UsageError(f"{where}network.container_label must be 'key=value' or 'key'")
        kw["container_label"] = sec["container_label"]
    eps = sec.get("endpoints") or []
    if not isinstance(eps, list):
        raise UsageError(f"{where}network.endpoints must be a list")
    out, names = [], set()
    for i, e in enumerate(eps):
        at = f"{where}network.endpoints[{i}]"
        if not isinstance(e, dict):
            raise UsageError(f"{at} must be a mapping")
        unknown = set(e) - _ENDPOINT_KEYS
        if unknown:
            raise UsageError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        name = e.get("name")
        if not isinstance(name, str) or not name:
            raise UsageError(f"{at}: needs a name")
        if name in names:
            raise UsageError(f"{at}: endpoint {name!r} is given twice")
        names.add(name)
        kinds = [k for k in ("netns", "container", "cgroup") if e.get(k)]
        if len(kinds) != 1:
            raise UsageError(f"{at} ({name}): exactly one of netns, container, cgroup")
        if kinds == ["netns"] and not e.get("ifname"):
            raise UsageError(f"{at} ({name}): netns needs ifname (its host-side veth)")
        labels = e.get("labels") or []
        if isinstance(labels, dict):
            labels = [f"{k}={v}" if v not in (None, "") else str(k) for k, v in labels.items()]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UsageError(f"{at} ({name}): labels is a list of k=v or a mapping")
        addrs = e.get("addresses") or []
        if not isinstance(addrs, list):
            raise UsageError(f"{at} ({name}): addresses is a list")
        if "audit" in e and not isinstance(e["audit"], bool):
            raise UsageError(f"{at} ({name}): audit must be true or false")
        out.append({**{k: v for k, v in e.items() if k in _ENDPOINT_KEYS}, "labels": labels,
                    "addresses": [str(a) for a in addrs], "audit": bool(e.get("audit", False))})
    kw["endpoints"] = tuple(out)
    return NetworkConfig(**kw)


def _firewall(sec: Any, where: str) -> FirewallConfig:
    """A mapping {state_file, pin_dir, rules: [...]}, or just the list of rules."""
    from ..netpolicy.kernel_firewall import make_rule, parse_ports

    if sec is None:
        return FirewallConfig()
    if isinstance(sec, list):
        sec = {"rules": sec}
    if not isinstance(sec, dict):
        raise UsageError(f"{where}firewall must be a list of rules or a mapping with rules:")
    unknown = set(sec) - _FIREWALL_KEYS
    if unknown:
        raise UsageError(f"{where}unknown key(s) under firewall: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = {}
    for key in ("state_file", "pin_dir"):
        if key in sec:
            if not isinstance(sec[key], str) or not sec[key]:
                raise UsageError(f"{where}firewall.{key} must be a path")
            kw[key] = Path(sec[key])
    rules = sec.get("rules") or []
    if not isinstance(rules, list):
        raise UsageError(f"{where}firewall.rules must be a list")
    out = []
    for i, r in enumerate(rules):
        at = f"{where}firewall.rules[{i}]"
        if not isinstance(r, dict):
            raise UsageError(f"{at} must be a mapping of iface, cidr, proto, port")
        unknown = set(r) - _FIREWALL_RULE_KEYS
        if unknown:
            raise UsageError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(r.get("iface"), str) or not r["iface"]:
            raise UsageError(f"{at}: needs an iface")
        try:
            lo, hi = parse_ports(r.get("port"))
            proto = str(r.get("proto", "any"))
            if lo and proto.lower() not in ("tcp", "udp", "6", "17"):
                raise UsageError("a port needs proto tcp or udp")
            rule = make_rule(0, r.get("cidr"), proto, lo, hi)
        except UsageError as e:
            raise UsageError(f"{at}: {e}") from None
        out.append({"iface": r["iface"], "cidr": str(rule.cidr) if rule.cidr is not None else None,
                    "proto": rule.proto, "port_lo": rule.port_lo, "port_hi": rule.port_hi})
    kw["rules"] = tuple(out)
    return FirewallConfig(**kw)


def _rules_path(name: str, base: Path) -> Path:
    if name in ("default", "andon"):  # andon's own rules, wherever andon is installed
        return PACKAGE_RULES
    p = Path(os.path.expanduser(name))
    return p if p.is_absolute() else base / p


def _append_output(items: Any, where: str) -> tuple[Any, ...]:
    """Falco's ``append_output`` list: ``match`` (rule, source, tags), ``extra_output``,
    ``suggested_output``, ``extra_fields`` (field names, JSON only)."""
    from ..rules.engine import AppendOutput

    if items is None:
        return ()
    if not isinstance(items, list):
        raise UsageError(f"{where}append_output must be a list of entries")
    out = []
    for i, e in enumerate(items):
        at = f"{where}append_output[{i}]"
        if not isinstance(e, dict) or set(e) - _APPEND_KEYS:
            raise UsageError(f"{at}: an entry has only the keys {', '.join(sorted(_APPEND_KEYS))}")
        m = e.get("match") or {}
        if not isinstance(m, dict) or set(m) - _MATCH_KEYS:
            raise UsageError(f"{at}.match has only the keys {', '.join(sorted(_MATCH_KEYS))}")
        tags = m.get("tags") or []
        fields = e.get("extra_fields") or []
        if not isinstance(tags, list) or not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise UsageError(f"{at}: match.tags and extra_fields are lists of names")
        if not isinstance(e.get("suggested_output", False), bool):
            raise UsageError(f"{at}.suggested_output must be true or false")
        out.append(AppendOutput(rule=m.get("rule"), source=m.get("source"), tags=tuple(str(t) for t in tags),
                                extra_output=str(e.get("extra_output") or ""),
                                suggested_output=e.get("suggested_output", False), extra_fields=tuple(fields)))
    return tuple(out)
