"""Podman containers as policy endpoints: labels, addresses and host-side veth from podman.

A container on a podman bridge network (``podman0`` with netavark, ``cni-podman0`` with CNI)
has one veth pair: ``eth0`` in its network namespace, the other end on the host. The host
end's ifindex is eth0's ``iflink`` (``link_index`` in ``ip -j link``), read inside the
container's namespace through ``/proc/<pid>/ns/net``; the TC programs go on that host end, as
for any namespace endpoint.

Labels: a container's labels (``podman run --label app=api``) become ``container:app=api``, the
source Cilium gives labels that come from the container runtime (as it gives ``k8s:`` to pod
labels). A policy selector written without a source (``matchLabels: {app: api}``) means
``any:app`` and so selects the container; ``k8s:app`` would not. Labels given on the command
line are added as written (no source: ``k8s:``).

``podman ps``/``inspect`` give the containers now; the runtime's event stream
(:func:`andon.state.container.podman_events`, :func:`~andon.state.container.parse_podman_event`,
shared with the rules side) tells when one starts or stops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import AndonError, UsageError
from .labels import SOURCE_CONTAINER

# the label a container carries to become an endpoint when sync follows labelled containers
DEFAULT_SELECT_LABEL = "andon.endpoint=true"
_START = frozenset({"start", "restart"})
_STOP = frozenset({"died", "die", "stop", "cleanup", "remove", "kill"})


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    pid: int  # 0 when not running
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.pid > 0


def _podman(podman: str | None) -> str:
    exe = podman or shutil.which("podman")
    if not exe:
        raise UsageError("podman is not installed (container endpoints need it)")
    return exe


def inspect(ref: str, podman: str | None = None, timeout: float = 10.0) -> Container | None:
    """A container by name or id; None when podman does not know it."""
    try:
        r = subprocess.run([_podman(podman), "inspect", "--type", "container", "--format", "json", ref],
                           capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"podman inspect {ref} took longer than {timeout:g} s") from None
    if r.returncode != 0:
        return None
    try:
        items = json.loads(r.stdout or b"[]")
        d = items[0]
        labels = (d.get("Config") or {}).get("Labels") or {}
        state = d.get("State") or {}
        pid = int(state.get("Pid") or 0) if state.get("Running", True) else 0
        return Container(str(d["Id"]), str(d.get("Name", "")).lstrip("/"), pid,
                         {str(k): str(v) for k, v in labels.items()})
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None


def running(podman: str | None = None, label: str | None = None, timeout: float = 10.0) -> list[Container]:
    """Running containers, those with ``label`` (``k=v`` or ``k``) only when given."""
    argv = [_podman(podman), "ps", "--format", "json", "--no-trunc"]
    if label:
        argv += ["--filter", f"label={label}"]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"podman ps took longer than {timeout:g} s") from None
    if r.returncode != 0:
        raise UsageError(f"podman ps failed: {r.stderr.decode(errors='replace').strip()}")
    try:
        ids = [str(c["Id"]) for c in json.loads(r.stdout or b"[]")]
    except (ValueError, KeyError, TypeError):
        raise UsageError("podman ps gave no JSON list") from None
    out = []
    for cid in ids:
        c = inspect(cid, podman, timeout)
        if c is not None and c.running:  # it may have stopped in between
            out.append(c)
    return out


def has_label(c: Container, label: str) -> bool:
    """``k=v``: that value; ``k``: any value."""
    key, eq, value = label.partition("=")
    return key in c.labels and (not eq or c.labels[key] == value)


def container_labels(labels: dict[str, str]) -> list[str]:
    """``{"app": "api"}`` -> ``["container:app=api"]``."""
    return sorted(f"{SOURCE_CONTAINER}:{k}={v}" if v else f"{SOURCE_CONTAINER}:{k}" for k, v in labels.items())


def host_veth(pid: int) -> tuple[str, int, list[str]]:
    """(host-side ifname, its ifindex, the container's global addresses) for the network
    namespace of process ``pid``: the one interface there that is a veth peer of the host."""
    netns = f"/proc/{pid}/ns/net"
    if not os.path.exists(netns):
        raise UsageError(f"process {pid} is gone (the container stopped?)")
    r = subprocess.run(["nsenter", f"--net={netns}", "ip", "-j", "addr", "show"], capture_output=True, text=True,
                       timeout=10, check=False)
    if r.returncode != 0:
        raise UsageError(f"cannot read the container's interfaces: {r.stderr.strip()}")
    links = [ln for ln in json.loads(r.stdout or "[]") if ln.get("ifname") != "lo"]
    peers = [ln for ln in links if ln.get("link_index") and ln.get("link_netnsid") is not None]
    if not peers:
        raise UsageError("the container has no veth to the host (--network host? then use a cgroup endpoint: "
                         "andon endpoint add NAME --cgroup DIR)")
    if len(peers) > 1:
        raise UsageError(f"the container has {len(peers)} veths ({', '.join(p['ifname'] for p in peers)}): "
                         "one network per container endpoint")
    link = peers[0]
    ifindex = int(link["link_index"])
    try:
        ifname = socket_ifname(ifindex)
    except OSError:
        raise UsageError(f"the container's veth peer (ifindex {ifindex}) is not in the host's namespace") from None
    addrs = [a["local"] for a in link.get("addr_info", []) if a.get("scope") == "global" and "local" in a]
    return ifname, ifindex, addrs


def socket_ifname(ifindex: int) -> str:
    import socket

    return socket.if_indextoname(ifindex)


def endpoint_record(c: Container, extra_labels: Iterable[str] = (), audit: bool = False) -> dict[str, Any]:
    """The state.json record of a running container as an endpoint."""
    if not c.running:
        raise UsageError(f"container {c.name or c.id[:12]} is not running")
    ifname, _, addrs = host_veth(c.pid)
    if not addrs:
        raise UsageError(f"container {c.name or c.id[:12]} has no global address")
    return {"kind": "container", "container_id": c.id, "container_name": c.name, "netns": f"/proc/{c.pid}/ns/net",
            "ifname": ifname, "labels": sorted(set(container_labels(c.labels)) | set(extra_labels)),
            "addresses": addrs, "audit": audit}


@dataclass(frozen=True)
class Change:
    """A container started (``start``) or stopped (``stop``)."""

    what: str
    id: str
    name: str


def changes(podman: str | None, on_start: Callable[[Any], None]) -> Iterator[Change]:
    """Container starts and stops from ``podman events``, until it ends (``on_start`` gets the
    child process so the caller can stop it)."""
    from ..state.container import parse_podman_event, podman_events

    for line in podman_events(_podman(podman), on_start):
        ev = parse_podman_event(line)
        if ev is None:
            continue
        if ev.status in _START:
            yield Change("start", ev.id, ev.name)
        elif ev.status in _STOP:
            yield Change("stop", ev.id, ev.name)


# -- sync: endpoints from the config file and podman's running containers ------------------------
class EndpointSync:
    """Keeps the state's endpoints in line with the config's ``network.endpoints`` and with
    podman's running containers (``containers``: ``label`` = those carrying ``label``, ``all``,
    ``off``). It owns what it added (records marked ``config`` or ``sync``) and never touches
    endpoints added by hand. :meth:`sync_once` does one pass; :meth:`follow` does one more
    after every burst of podman container events, so a container is an endpoint from its
    ``start`` event on and stops being one when it stops."""

    def __init__(self, state_dir: str, pin_dir: str, *, containers: str = "label",
                 label: str = DEFAULT_SELECT_LABEL, endpoints: Iterable[dict[str, Any]] = (),
                 podman: str | None = None) -> None:
        if containers not in ("label", "all", "off"):
            raise UsageError(f"containers: 'label', 'all' or 'off', not {containers!r}")
        self.state_dir, self.pin_dir = state_dir, pin_dir
        self.containers, self.label = containers, label
        self.endpoints = [dict(e) for e in endpoints]
        self.podman = podman
        self.report: Callable[[str], None] = lambda line: None

    @classmethod
    def from_settings(cls, network: Any, *, state_dir: str | None = None, pin_dir: str | None = None,
                      containers: str | None = None, label: str | None = None) -> EndpointSync:
        """From a config's ``network`` section (or None); explicit arguments win."""
        from .state import DEFAULT_PIN_DIR, DEFAULT_STATE_DIR

        return cls(
            str(state_dir or (network.state_dir if network else DEFAULT_STATE_DIR)),
            str(pin_dir or (network.pin_dir if network else DEFAULT_PIN_DIR)),
            containers=containers or (network.containers if network else "label"),
            label=label or (network.container_label if network else DEFAULT_SELECT_LABEL),
            endpoints=network.endpoints if network else (),
        )  # fmt: skip

    def config_records(self) -> dict[str, dict[str, Any]]:
        """Records for the config's endpoints (a container that is not running is skipped, said)."""
        from .state import netns_addresses

        out = {}
        for e in self.endpoints:
            name, labels, audit = e["name"], list(e.get("labels", [])), bool(e.get("audit", False))
            if e.get("container"):
                c = inspect(e["container"], self.podman)
                if c is None or not c.running:
                    self.report(f"endpoint {name}: container {e['container']} is not running, skipped")
                    continue
                rec = endpoint_record(c, labels, audit)
            elif e.get("cgroup"):
                from . import cgroup

                rec = {"kind": "cgroup", "cgroup": str(cgroup.resolve(e["cgroup"])), "ifname": None,
                       "labels": labels, "addresses": [], "audit": audit}
            else:
                addrs = list(e.get("addresses") or netns_addresses(e["netns"]))
                rec = {"kind": "netns", "netns": e["netns"], "ifname": e["ifname"], "labels": labels,
                       "addresses": addrs, "audit": audit}
            rec["config"] = True
            out[name] = rec
        return out

    def container_records(self) -> dict[str, dict[str, Any]]:
        if self.containers == "off":
            return {}
        out = {}
        for c in running(self.podman, self.label if self.containers == "label" else None):
            try:
                rec = endpoint_record(c)
            except UsageError as e:  # host network, several networks, stopped meanwhile
                self.report(f"container {c.name}: not an endpoint: {e}")
                continue
            rec["sync"] = True
            out[c.name or c.id[:12]] = rec
        return out

    def sync_once(self) -> tuple[list[str], list[str], list[str]]:
        """One pass; (added, removed, updated) endpoint names."""
        from .state import sync

        wanted = {**self.container_records(), **self.config_records()}  # config wins a name
        add, remove, update = sync(self.state_dir, self.pin_dir, lambda state: self._claim(state, wanted),
                                   lambda rec: bool(rec.get("sync") or rec.get("config")))
        for n in sorted(add):
            self.report(f"endpoint {n} added")
        for n in sorted(remove):
            self.report(f"endpoint {n} removed")
        for n in sorted(update):
            self.report(f"endpoint {n} updated")
        return sorted(add), sorted(remove), sorted(update)

    def _claim(self, state: Any, wanted: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Drop wanted names that an endpoint added by hand already uses (said once per pass)."""
        out = {}
        for n, rec in wanted.items():
            have = state.endpoints.get(n)
            if have is not None and not (have.get("sync") or have.get("config")):
                self.report(f"endpoint {n}: added by hand, left alone")
                continue
            out[n] = rec
        return out

    def follow(self, stop: Any, deadline: float | None = None) -> None:
        """Sync again after each burst of container events until ``stop`` is set, the
        monotonic ``deadline`` passes or podman's event stream ends."""
        import queue
        import threading
        import time

        children: list[Any] = []
        q: queue.Queue[Change | None] = queue.Queue()

        def read() -> None:
            try:
                for ch in changes(self.podman, children.append):
                    q.put(ch)
            except OSError as e:
                self.report(f"podman events failed: {e}")
            finally:
                q.put(None)

        t = threading.Thread(target=read, name="andon-endpoint-sync", daemon=True)
        t.start()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    ch = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if ch is None:
                    self.report("podman events ended")
                    return
                time.sleep(0.05)  # a start or stop comes as several events: take them as one
                while True:
                    try:
                        if q.get_nowait() is None:
                            stop.set()
                    except queue.Empty:
                        break
                try:
                    self.sync_once()
                except (AndonError, OSError) as e:  # a container that went away in between: next event
                    self.report(f"sync failed: {e}")
        finally:
            for c in children:
                if c.poll() is None:
                    c.terminate()
            t.join(timeout=3)


class EndpointService:
    """The agent's part (``andon run``): apply the config's ``network`` section at start and,
    when containers are followed, keep following podman's events in a thread until
    :meth:`close`. A failure is reported, never fatal to the agent."""

    def __init__(self, network: Any, report: Callable[[str], None] = lambda line: None) -> None:
        import threading

        self.sync = EndpointSync.from_settings(network)
        self.sync.report = report
        self.report = report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.follows = network.containers != "off"

    def start(self) -> bool:
        """Apply the section once (and start following); False when that failed (reported)."""
        import threading

        ok = True
        try:
            self.sync.sync_once()
        except (AndonError, OSError) as e:
            self.report(f"endpoints not applied: {e}")
            ok = False
        if self.follows:
            self._thread = threading.Thread(target=self.sync.follow, args=(self._stop,), name="andon-endpoints",
                                            daemon=True)
            self._thread.start()
        return ok

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
