"""Container identity from cgroups, and container metadata from the runtime.

Identity is pure string work: the cgroup a runtime puts a container in carries its 64-hex
id (``docker-<id>.scope``, ``/docker/<id>``, ``cri-containerd-<id>.scope``,
``crio-<id>.scope``, ``libpod-<id>``...). The layouts are the ones Falco's container plugin
matches (``src/matchers/{docker,cri,podman}.cpp``): the id must be the whole last path
component between the runtime's prefix and suffix, so a conmon cgroup
(``libpod-conmon-<id>``) is *not* the container: conmon runs on the host. Falco's
``container.id`` is the first 12 characters, or ``host``.

Metadata (name, image, privileged, start time) comes from the runtime, which is slow and
may be absent, so :class:`ContainerRegistry` never asks it on the event path: ``get(id)``
answers from the cache at once and, on a miss, queues the id for one background worker
that runs ``podman inspect`` (or asks docker's unix socket). Until it answers, the fields
are ``None`` (shown as Falco shows a missing value). Failed lookups are remembered for a
while so a storm of events from one unknown container costs one lookup.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

HOST = "host"
ID_LEN = 64
SHORT_LEN = 12

_HEX = r"([0-9a-fA-F]{64})"
# (runtime, compiled pattern over one path component)
_COMPONENT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"^docker-{_HEX}\.scope$")),
    ("containerd", re.compile(rf"^cri-containerd-{_HEX}\.scope$")),
    ("containerd", re.compile(rf"^.*:cri-containerd:{_HEX}$")),
    ("cri-o", re.compile(rf"^crio-{_HEX}(?:\.scope)?$")),
    ("podman", re.compile(rf"^libpod-(?:payload-)?{_HEX}(?:\.scope)?$")),
    ("", re.compile(rf"^{_HEX}$")),
)
# what a bare 64-hex component means, from its parent path
_BARE_PARENTS = (("/docker/", "docker"), ("kubepods", "cri"), ("/default/", "containerd"), ("/lxc.payload", "lxc"))


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    id: str  # the full id (64 hex, lower case)
    runtime: str  # docker, containerd, cri-o, podman, cri, ... or "" when only the id says so

    @property
    def short(self) -> str:
        return self.id[:SHORT_LEN]


def match_cgroup(path: str) -> CgroupMatch | None:
    """The container a cgroup path (or just its leaf name) belongs to, or None (host).

    The leaf must be the container's own cgroup, or ``container`` under a podman scope
    (``libpod-<id>.scope/container``, systemd-in-podman); anything else, conmon included,
    is not a container.
    """
    if not path:
        return None
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    cands = [parts[-1]]
    if parts[-1] == "container" and len(parts) > 1:
        cands = [parts[-2]]
    for comp in cands:
        for runtime, pat in _COMPONENT_PATTERNS:
            m = pat.match(comp)
            if m:
                if not runtime:
                    runtime = next((rt for key, rt in _BARE_PARENTS if key in "/" + path), "")
                return CgroupMatch(m.group(1).lower(), runtime)
    return None


def container_id_from_cgroup(path: str) -> str:
    """Falco's ``container.id`` for a cgroup path or leaf: 12 hex chars, or ``host``."""
    m = match_cgroup(path)
    return m.short if m else HOST


def match_proc_cgroup(text: str) -> CgroupMatch | None:
    """The container named by the contents of ``/proc/<pid>/cgroup`` (any hierarchy)."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            m = match_cgroup(parts[2])
            if m:
                return m
    return None


def short_id(full: str) -> str:
    """Falco's container.id from a full id ("" is the host)."""
    return full[:SHORT_LEN] if full else HOST


# ---------------------------------------------------------------------------------------
# Runtime metadata
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ContainerInfo:
    """What the runtime says about one container. ``None``: not known (yet)."""

    id: str  # full id
    runtime: str = ""
    name: str | None = None  # container.name
    image: str | None = None  # container.image: repository:tag as the user named it
    image_repository: str | None = None  # container.image.repository
    image_tag: str | None = None  # container.image.tag
    image_id: str | None = None  # container.image.id
    image_digest: str | None = None
    privileged: bool | None = None  # container.privileged
    start_ts: int | None = None  # container.start_ts: ns since the epoch
    labels: dict[str, str] = field(default_factory=dict)
    resolved: bool = False  # the runtime answered
    error: str = ""  # why the lookup failed, when it did

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_LEN]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerInfo:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def split_image(ref: str) -> tuple[str, str, str]:
    """``repo[:tag][@digest]`` -> (repository, tag, digest). A ':' inside the registry's
    host:port is not a tag separator."""
    digest = ""
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :], digest
    return ref, "", digest


def parse_rfc3339_ns(text: str) -> int | None:
    """``2024-05-01T10:00:00.123456789Z`` (or with an offset) -> ns since the epoch."""
    if not text or text.startswith("0001-01-01"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$", text.strip())
    if not m:
        return None
    import datetime as _dt

    base, frac, tz = m.groups()
    tzs = "+00:00" if tz in (None, "Z") else tz
    if len(tzs) == 5:
        tzs = tzs[:3] + ":" + tzs[3:]
    try:
        dt = _dt.datetime.fromisoformat(base + tzs)
    except ValueError:
        return None
    ns = int(dt.timestamp()) * 1_000_000_000
    if frac:
        ns += int((frac + "000000000")[:9])
    return ns


def info_from_podman(d: dict[str, Any]) -> ContainerInfo:
    """A ContainerInfo from one element of ``podman inspect --format json``."""
    cfg = d.get("Config") or {}
    host = d.get("HostConfig") or {}
    state = d.get("State") or {}
    ref = d.get("ImageName") or cfg.get("Image") or ""
    repo, tag, digest = split_image(ref) if ref else ("", "", "")
    return ContainerInfo(
        id=str(d.get("Id", "")).lower(),
        runtime="podman",
        name=(d.get("Name") or "").lstrip("/") or None,
        image=ref or None,
        image_repository=repo or None,
        image_tag=tag or None,
        image_id=d.get("Image") or None,
        image_digest=(d.get("ImageDigest") or digest) or None,
        privileged=bool(host.get("Privileged")) if "Privileged" in host else None,
        start_ts=parse_rfc3339_ns(state.get("StartedAt", "")),
        labels=dict(cfg.get("Labels") or {}),
        resolved=True,
    )


def info_from_docker(d: dict[str, Any]) -> ContainerInfo:
    """A ContainerInfo from docker's ``GET /containers/<id>/json``."""
    cfg = d.get("Config") or {}
    host = d.get("HostConfig") or {}
    state = d.get("State") or {}
    ref = cfg.get("Image") or ""
    repo, tag, digest = split_image(ref) if ref else ("", "", "")
    if repo and not tag and not digest:
        tag = "latest"
    return ContainerInfo(
        id=str(d.get("Id", "")).lower(),
        runtime="docker",
        name=(d.get("Name") or "").lstrip("/") or None,
        image=ref or None,
        image_repository=repo or None,
        image_tag=tag or None,
        image_id=d.get("Image") or None,
        image_digest=digest or None,
        privileged=bool(host.get("Privileged")) if "Privileged" in host else None,
        start_ts=parse_rfc3339_ns(state.get("StartedAt", "")),
        labels=dict(cfg.get("Labels") or {}),
        resolved=True,
    )


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def podman_inspect(cid: str, timeout: float = 2.0, podman: str | None = None) -> ContainerInfo | None:
    """Ask podman about one container; None when it does not know it or is not there."""
    exe = podman or shutil.which("podman")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "inspect", "--type", "container", "--format", "json", cid],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        items = json.loads(out.stdout or b"[]")
    except ValueError:
        return None
    if not items:
        return None
    return info_from_podman(items[0])


def docker_inspect(cid: str, sock_path: str = "/var/run/docker.sock", timeout: float = 2.0) -> ContainerInfo | None:
    """Ask docker's API on its unix socket; None when absent or unknown."""
    if not os.path.exists(sock_path):
        return None
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        conn.request("GET", f"/containers/{cid}/json")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        return info_from_docker(json.loads(body))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass(frozen=True)
class ContainerSettings:
    """How the registry asks runtimes. ``lookups=False`` never runs anything (replay, tests)."""

    lookups: bool = True
    timeout: float = 2.0  # per runtime call
    max_entries: int = 4096
    negative_ttl: float = 30.0  # seconds before a failed lookup is tried again
    podman: str | None = None  # podman binary, found on PATH when None
    docker_socket: str = "/var/run/docker.sock"
    queue_size: int = 1024


class ContainerRegistry:
    """Container metadata by full id: cached, resolved off the event path.

    ``get(id)`` never blocks: it returns what is known (possibly a bare ContainerInfo with
    None fields) and queues a lookup the first time. ``resolve(id, timeout)`` waits for the
    answer, for callers that can afford to (the CLI, tests). Bounded: least recently used
    entries beyond ``max_entries`` are evicted and counted.
    """

    def __init__(self, settings: ContainerSettings | None = None) -> None:
        self.settings = settings or ContainerSettings()
        self._cache: OrderedDict[str, ContainerInfo] = OrderedDict()
        self._failed: dict[str, float] = {}
        self._pending: set[str] = set()
        self._done = threading.Condition()
        self._queue: queue.Queue[str | None] = queue.Queue(self.settings.queue_size)
        self._worker: threading.Thread | None = None
        self._closed = False
        self.stats = {"lookups": 0, "resolved": 0, "failed": 0, "evicted": 0, "queue_full": 0}

    # -- the event path -----------------------------------------------------------------
    def get(self, cid: str) -> ContainerInfo | None:
        """Known metadata for a full container id ("" or "host": None). Never blocks."""
        if not cid or cid == HOST:
            return None
        info = self._cache.get(cid)
        if info is not None:
            if info.resolved:
                return info
        else:
            info = ContainerInfo(cid)
            self._put(info)
        self._request(cid)
        return info

    def _request(self, cid: str) -> None:
        if not self.settings.lookups or self._closed or cid in self._pending:
            return
        t = self._failed.get(cid)
        if t is not None and time.monotonic() - t < self.settings.negative_ttl:
            return
        try:
            self._queue.put_nowait(cid)
        except queue.Full:
            self.stats["queue_full"] += 1
            return
        self._pending.add(cid)
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="andon-containers", daemon=True)
            self._worker.start()

    def _put(self, info: ContainerInfo) -> None:
        self._cache[info.id] = info
        self._cache.move_to_end(info.id)
        while len(self._cache) > self.settings.max_entries:
            self._cache.popitem(last=False)
            self.stats["evicted"] += 1

    # -- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            cid = self._queue.get()
            if cid is None:
                return
            info = self.lookup(cid)
            with self._done:
                if info is not None:
                    self._put(info)
                    self._failed.pop(cid, None)
                else:
                    self._failed[cid] = time.monotonic()
                    if len(self._failed) > self.settings.max_entries:
                        self._failed.pop(next(iter(self._failed)))
                self._pending.discard(cid)
                self._done.notify_all()

    def lookup(self, cid: str) -> ContainerInfo | None:
        """Ask the runtimes now (blocking, bounded by the timeout): podman, then docker."""
        s = self.settings
        self.stats["lookups"] += 1
        info = podman_inspect(cid, s.timeout, s.podman)
        if info is None:
            info = docker_inspect(cid, s.docker_socket, s.timeout)
        if info is None or info.id != cid:
            self.stats["failed"] += 1
            return None
        self.stats["resolved"] += 1
        return info

    def resolve(self, cid: str, timeout: float = 5.0) -> ContainerInfo | None:
        """Wait up to ``timeout`` seconds for the runtime's answer about ``cid``."""
        info = self.get(cid)
        if info is None or info.resolved:
            return info
        deadline = time.monotonic() + timeout
        with self._done:
            while cid in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._done.wait(left)
        return self._cache.get(cid)

    def add(self, info: ContainerInfo) -> None:
        """Record metadata learnt elsewhere (a capture file, a test)."""
        with self._done:
            self._put(info)

    def forget(self, cid: str) -> None:
        self._cache.pop(cid, None)
        self._failed.pop(cid, None)

    def __len__(self) -> int:
        return len(self._cache)

    def snapshot(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in list(self._cache.values()) if i.resolved]

    def restore(self, items: list[dict[str, Any]]) -> None:
        for d in items:
            self.add(ContainerInfo.from_dict(d))

    def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._worker.join(timeout=self.settings.timeout + 1)
            self._worker = None
