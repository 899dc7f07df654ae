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

A lookup that starts when andon first sees a container's cgroup is usually too late for
the container's first exec (its entrypoint): ``podman inspect`` takes 100 ms or more, and
a ``podman run --rm ... true`` is gone again in about as long. So, like Falco's container
plugin, the registry also follows the runtime's own event stream
(``podman events --format json --filter type=container``; docker's ``GET /events`` when
its socket is there) in a thread, and inspects a container on its ``create`` event,
before runc has even started the entrypoint. The name and image in the event itself are
kept as a fallback for a container that is gone before inspect could answer.
``pending(id)`` and ``wait(id, timeout)`` let the agent wait, briefly and only for an
alert that needs it, for an answer already under way.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import logging
import os
import queue
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

log = logging.getLogger("andon.container")

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


PRIVILEGED_ANNOTATION = "io.podman.annotations.privileged"


def privileged_from_bundle(path: str) -> bool | None:
    """podman's privileged flag from a container's OCI ``config.json``: podman writes it
    there as an annotation before it asks the OCI runtime to create the container, so it is
    readable before the entrypoint runs. None when the file is not (yet) there."""
    try:
        with open(path, "rb") as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return None
    ann = spec.get("annotations") or {} if isinstance(spec, dict) else {}
    v = ann.get(PRIVILEGED_ANNOTATION)
    return None if v is None else str(v).upper() == "TRUE"


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


# podman's container statuses after which inspect can answer (``create`` is written once
# the container is in podman's database, before the OCI runtime runs anything)
_INSPECT_ON = frozenset({"create", "init", "start", "restart"})
# statuses after which the container may be gone: keep what the events said
_GONE_ON = frozenset({"died", "die", "cleanup", "remove", "destroy"})


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    """One container lifecycle event from a runtime's event stream."""

    runtime: str  # podman or docker
    status: str  # create, init, start, died, remove, ...
    id: str  # full id, lower case
    name: str = ""
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    time_ns: int = 0

    def info(self) -> ContainerInfo:
        """What the event alone says (no privileged flag): resolved=False."""
        repo, tag, digest = split_image(self.image) if self.image else ("", "", "")
        if self.runtime == "docker" and repo and not tag and not digest:
            tag = "latest"
        return ContainerInfo(
            id=self.id, runtime=self.runtime, name=self.name or None, image=self.image or None,
            image_repository=repo or None, image_tag=tag or None, image_digest=digest or None,
            labels=dict(self.labels),
        )  # fmt: skip


def _full_id(raw: Any) -> str:
    cid = str(raw or "").lower()
    return cid if re.fullmatch(r"[0-9a-f]{64}", cid) else ""


def parse_podman_event(line: str | bytes) -> RuntimeEvent | None:
    """One line of ``podman events --format json``; None for anything that is not a
    container event with a full id (other types, garbage)."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if not isinstance(d, dict) or str(d.get("Type", "container")).lower() != "container":
        return None
    cid = _full_id(d.get("ID") or d.get("Id"))
    if not cid:
        return None
    attrs = d.get("Attributes") or {}
    labels = {str(k): str(v) for k, v in attrs.items() if k not in ("name", "image")} if isinstance(attrs, dict) else {}
    t = d.get("Time")
    return RuntimeEvent(
        runtime="podman", status=str(d.get("Status", "")).lower(), id=cid, name=str(d.get("Name") or ""),
        image=str(d.get("Image") or ""), labels=labels,
        time_ns=(parse_rfc3339_ns(t) or 0) if isinstance(t, str) else 0,
    )  # fmt: skip


def parse_docker_event(d: Any) -> RuntimeEvent | None:
    """One object of docker's ``GET /events`` stream; None unless a container event."""
    if not isinstance(d, dict) or d.get("Type") != "container":
        return None
    actor = d.get("Actor") or {}
    cid = _full_id(actor.get("ID") or d.get("id"))
    if not cid:
        return None
    attrs = dict(actor.get("Attributes") or {})
    name, image = str(attrs.pop("name", "")), str(attrs.pop("image", "") or d.get("from") or "")
    status = str(d.get("Action") or d.get("status") or "").split(":", 1)[0].lower()
    return RuntimeEvent(
        runtime="docker", status=status, id=cid, name=name, image=image,
        labels={str(k): str(v) for k, v in attrs.items()}, time_ns=int(d.get("timeNano") or 0),
    )  # fmt: skip


def podman_events(exe: str, on_start: Callable[[subprocess.Popen[bytes]], None]) -> Iterator[bytes]:
    """The lines ``podman events`` writes, until it exits (``on_start`` gets the child,
    so its owner can stop it)."""
    proc = subprocess.Popen(
        [exe, "events", "--format", "json", "--filter", "type=container"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    on_start(proc)
    assert proc.stdout is not None
    try:
        yield from proc.stdout
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DirWatch:
    """Wakes a waiter when a file in ``directory`` is written, created or moved in (inotify,
    through libc), so a tail needs no polling. Raises OSError where inotify is unavailable."""

    _MASK = 0x2 | 0x8 | 0x80 | 0x100  # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

    def __init__(self, directory: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(fd, os.fsencode(directory), self._MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}")
        self.fd = fd

    def wait(self, timeout: float) -> bool:
        """Until something changed in the directory (True) or ``timeout`` seconds (False)."""
        ready = select.select([self.fd], [], [], timeout)[0]
        try:
            while os.read(self.fd, 65536):  # the events say only "something changed": drop them
                pass
        except BlockingIOError:
            pass
        return bool(ready)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def tail_lines(path: str, stop: Callable[[], bool], every: float = 0.01, idle: float = 0.25) -> Iterator[bytes]:
    """New whole lines appended to ``path`` from now on; a file that shrinks was rotated:
    read it anew. Woken by inotify on the file's directory, looking at ``stop()`` at least
    every ``idle`` seconds; where inotify is unavailable, polled every ``every`` seconds (a
    stat, no read, while nothing changes). "From now on" is from this call, not from the
    first ``next``."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    f.seek(0, os.SEEK_END)
    try:
        watch: DirWatch | None = DirWatch(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        log.info("tail %s: no inotify (%s), polling every %.0f ms", path, e, every * 1000)
        watch = None
    return _tail(path, f, stop, every, idle, watch)


def _tail(path: str, f: BinaryIO, stop: Callable[[], bool], every: float, idle: float,
          watch: DirWatch | None) -> Iterator[bytes]:  # fmt: skip
    try:
        pos = f.tell()
        part = b""
        while not stop():
            try:
                size = os.stat(path).st_size
            except OSError:
                size = pos
            if size < pos:  # rotated (podman keeps a size-limited log): start again at its top
                f.close()
                f = open(path, "rb")  # noqa: SIM115
                pos, part = 0, b""
            if size == pos:
                # the watch is older than the stat: a write in between has woken it already
                if watch is not None:
                    watch.wait(idle)
                else:
                    time.sleep(every)
                continue
            chunk = f.read(size - pos)
            pos += len(chunk)
            lines = (part + chunk).split(b"\n")
            part = lines.pop()
            yield from lines
    finally:
        f.close()
        if watch is not None:
            watch.close()


def podman_event_logger(exe: str, timeout: float) -> str:
    """``file`` or ``journald`` (or ``none``): where podman writes its events."""
    try:
        out = subprocess.run([exe, "info", "--format", "{{.Host.EventLogger}}"], capture_output=True, timeout=timeout,
                             check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.decode(errors="replace").strip() if out.returncode == 0 else ""


def docker_events(sock_path: str, on_start: Callable[[socket.socket], None]) -> Iterator[bytes]:
    """The JSON objects of docker's ``GET /events?filters={"type":["container"]}``, one per
    line (the daemon streams newline-delimited JSON)."""
    conn = _UnixHTTPConnection(sock_path, timeout=None)  # type: ignore[arg-type]
    try:
        conn.request("GET", '/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D')
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"docker /events answered {resp.status}")
        if conn.sock is not None:
            on_start(conn.sock)
        while True:
            line = resp.readline()
            if not line:
                return
            yield line
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
    watch_events: bool = True  # follow the runtimes' event streams (``watch()``)
    # podman's events log (``events_logger = "file"``), read directly: ``podman events``
    # polls that file every 250 ms or so, too late for a container's first exec
    podman_events_log: str = "/run/libpod/events/events.log"
    # podman's storage: the OCI bundle of container <id> is <root>/<driver>-containers/<id>/userdata
    podman_storage: str = "/var/lib/containers/storage"
    early_threads: int = 8  # containers being learnt from their bundle at once
    watch_restarts: int = 5  # times a runtime's event stream is started again after it ends


class ContainerRegistry:
    """Container metadata by full id: cached, resolved off the event path.

    ``get(id)`` never blocks: it returns what is known (possibly a bare ContainerInfo with
    None fields) and queues a lookup the first time. ``resolve(id, timeout)`` waits for the
    answer, for callers that can afford to (the CLI, tests); ``wait(id, timeout)`` waits
    only for a lookup already under way (the agent, for one alert). ``watch()`` follows the
    runtimes' event streams so containers are known before their first process runs.
    Bounded: least recently used entries beyond ``max_entries`` are evicted and counted.
    Every runtime failure is counted in ``stats``; none is fatal.
    """

    def __init__(self, settings: ContainerSettings | None = None) -> None:
        self.settings = settings or ContainerSettings()
        self._cache: OrderedDict[str, ContainerInfo] = OrderedDict()
        self._failed: dict[str, float] = {}
        self._pending: set[str] = set()
        self._hints: OrderedDict[str, ContainerInfo] = OrderedDict()  # from runtime events, not inspected
        self._done = threading.Condition()
        self._queue: queue.Queue[str | None] = queue.Queue(self.settings.queue_size)
        self._worker: threading.Thread | None = None
        self._watchers: list[threading.Thread] = []
        self.watching = ""  # what the podman watcher reads, once it started
        self._drivers: list[str] | None = None
        self._early_running = 0
        self._children: list[Any] = []  # the event streams' processes and sockets, to stop them
        self._closed = False
        self._news: deque[ContainerInfo] = deque()  # resolved since the last ``drain_resolved``
        self.keep_news = False  # ``andon capture`` records them
        # pending() for a registry without lookups (replay): a function that may find the
        # answer further on (the capture's own container records)
        self.lookahead: Callable[[str, float], ContainerInfo | None] | None = None
        self._lookahead_done: set[str] = set()
        self._expired: set[str] = set()  # waited for once in vain: never wait for them again
        self.stats = {
            "lookups": 0, "resolved": 0, "failed": 0, "evicted": 0, "queue_full": 0,
            "runtime_events": 0, "runtime_events_skipped": 0, "early": 0, "from_bundle": 0, "from_events": 0,
            "watch_failures": 0, "waits": 0, "wait_expired": 0,
        }  # fmt: skip

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

    def pending(self, cid: str) -> bool:
        """An answer about ``cid`` is on its way (a lookup queued or running, or, without
        lookups, possibly further on in a capture)."""
        if not cid or cid == HOST:
            return False
        info = self._cache.get(cid)
        if info is not None and info.resolved:
            return False
        if self.lookahead is not None:
            return cid not in self._lookahead_done
        return cid in self._pending

    def wait(self, cid: str, timeout: float) -> ContainerInfo | None:
        """Wait up to ``timeout`` seconds for a pending answer about ``cid``; the info
        (resolved or not). Counted in ``stats["waits"]``/``["wait_expired"]``."""
        if cid in self._expired or not self.pending(cid):
            return self._cache.get(cid)
        self.stats["waits"] += 1
        if self.lookahead is not None:
            self._lookahead_done.add(cid)
            found = self.lookahead(cid, timeout)
            if found is not None:
                self.add(found)
        else:
            deadline = time.monotonic() + timeout
            with self._done:
                while cid in self._pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._done.wait(left)
        info = self._cache.get(cid)
        if info is None or not info.resolved:
            self.stats["wait_expired"] += 1
            if len(self._expired) >= self.settings.max_entries:
                self._expired.clear()
            self._expired.add(cid)
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
            cur = self._cache.get(cid)
            if cur is not None and cur.resolved:  # the event stream was first
                with self._done:
                    self._pending.discard(cid)
                    self._done.notify_all()
                continue
            self._finish(cid, self.lookup(cid))

    def _finish(self, cid: str, info: ContainerInfo | None) -> None:
        """Store a lookup's answer (or its failure) and wake the waiters."""
        with self._done:
            cur = self._cache.get(cid)
            if info is None and cur is not None and cur.resolved:
                info = cur  # inspect failed (the container is gone) after the bundle answered
            if info is None:
                hint = self._hints.get(cid)
                if hint is not None:  # gone before inspect answered: what its events said
                    info = ContainerInfo.from_dict({**hint.to_dict(), "resolved": True,
                                                    "error": "inspect failed; name and image from the runtime's events"})
                    self.stats["from_events"] += 1
            if info is not None:
                self._store(info)
                self._failed.pop(cid, None)
            else:
                self._failed[cid] = time.monotonic()
                if len(self._failed) > self.settings.max_entries:
                    self._failed.pop(next(iter(self._failed)))
            self._pending.discard(cid)
            self._done.notify_all()

    def _store(self, info: ContainerInfo) -> None:
        self._put(info)
        self._hints.pop(info.id, None)
        if self.keep_news and info.resolved:
            self._news.append(info)

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

    # -- the runtimes' event streams ----------------------------------------------------
    def watch(self) -> int:
        """Follow podman's and docker's event streams (those present) in threads; the
        number of streams started. No-op without lookups or with ``watch_events`` off."""
        s = self.settings
        if not s.lookups or not s.watch_events or self._watchers or self._closed:
            return 0
        exe = s.podman or shutil.which("podman")
        sources: list[tuple[str, Callable[[], Iterator[bytes]], Callable[[bytes], RuntimeEvent | None]]] = []
        if exe:
            sources.append(("podman", lambda: self._podman_stream(exe), parse_podman_event))
        if os.path.exists(s.docker_socket):
            sock = s.docker_socket

            def parse_docker(line: bytes) -> RuntimeEvent | None:
                try:
                    return parse_docker_event(json.loads(line))
                except ValueError:
                    return None

            sources.append(("docker", lambda: docker_events(sock, self._children.append), parse_docker))
        for name, open_stream, parse in sources:
            t = threading.Thread(target=self._follow, args=(open_stream, parse), name=f"andon-{name}-events",
                                 daemon=True)  # fmt: skip
            self._watchers.append(t)
            t.start()
        return len(sources)

    def _podman_stream(self, exe: str) -> Iterator[bytes]:
        log_path = self.settings.podman_events_log
        if log_path and os.path.exists(log_path) and podman_event_logger(exe, self.settings.timeout) == "file":
            self.watching = "podman events log " + log_path
            return tail_lines(log_path, lambda: self._closed)
        self.watching = "podman events"
        return podman_events(exe, self._children.append)

    def _follow(self, open_stream: Callable[[], Iterator[bytes]],
                parse: Callable[[bytes], RuntimeEvent | None]) -> None:  # fmt: skip
        restarts = 0
        while not self._closed:
            try:
                for line in open_stream():
                    if self._closed:
                        return
                    if not line.strip():
                        continue
                    rev = parse(line)
                    if rev is None:  # another type (image, pod, volume) or not JSON
                        self.stats["runtime_events_skipped"] += 1
                        continue
                    self.on_runtime_event(rev)
            except (OSError, ValueError, http.client.HTTPException):
                pass
            if self._closed:
                return
            self.stats["watch_failures"] += 1  # the stream ended: say so, start it again
            restarts += 1
            if restarts > self.settings.watch_restarts:
                return
            time.sleep(min(30.0, 0.5 * 2**restarts))

    def on_runtime_event(self, rev: RuntimeEvent) -> None:
        """A container lifecycle event: remember what it says, and inspect the container
        now (in the caller's thread: the event stream's) if it is new."""
        self.stats["runtime_events"] += 1
        cid = rev.id
        cur = self._cache.get(cid)
        if cur is not None and cur.resolved:
            return
        if rev.status in _INSPECT_ON or rev.status in _GONE_ON:
            with self._done:
                self._hints[cid] = rev.info()
                self._hints.move_to_end(cid)
                while len(self._hints) > self.settings.max_entries:
                    self._hints.popitem(last=False)
        if rev.status in _INSPECT_ON:
            with self._done:
                if cid in self._pending:
                    return  # the worker is on it
                self._pending.add(cid)
            self.stats["early"] += 1
            if rev.runtime == "podman" and rev.name and rev.image and self._early_running < self.settings.early_threads:
                # podman holds the container's lock from create to start, and inspect waits
                # for it; the bundle's config.json is written before start: read it meanwhile
                with self._done:
                    self._early_running += 1
                threading.Thread(target=self._early, args=(cid,), name="andon-container-early", daemon=True).start()
            else:
                self._finish(cid, self.lookup(cid))
        elif rev.status in _GONE_ON and cid in self._hints and cid not in self._pending and cur is not None:
            # andon saw its processes but inspect failed and the container is gone now
            self._finish(cid, None)

    def _bundle_configs(self, cid: str) -> list[str]:
        root = self.settings.podman_storage
        if self._drivers is None:
            try:
                self._drivers = [d for d in os.listdir(root) if d.endswith("-containers")]
            except OSError:
                self._drivers = []
        return [f"{root}/{d}/{cid}/userdata/config.json" for d in self._drivers]

    def _early(self, cid: str, poll: float = 0.003, limit: float = 2.0) -> None:
        """From podman's create event to its answer: name and image from the event,
        privileged from the bundle as soon as podman wrote it (provisional, resolved), then
        what inspect says (complete)."""
        try:
            paths = self._bundle_configs(cid)
            deadline = time.monotonic() + limit
            while paths and not self._closed and time.monotonic() < deadline:
                priv = next((v for v in map(privileged_from_bundle, paths) if v is not None), None)
                hint = self._hints.get(cid)
                if priv is not None and hint is not None:
                    early = ContainerInfo.from_dict({**hint.to_dict(), "privileged": priv, "resolved": True})
                    with self._done:
                        cur = self._cache.get(cid)
                        if cur is None or not cur.resolved:
                            self._put(early)
                            if self.keep_news:
                                self._news.append(early)
                        self._done.notify_all()
                    self.stats["from_bundle"] += 1
                    break
                time.sleep(poll)
            self._finish(cid, self.lookup(cid))
        finally:
            with self._done:
                self._early_running -= 1

    # -- elsewhere ----------------------------------------------------------------------
    def add(self, info: ContainerInfo) -> None:
        """Record metadata learnt elsewhere (a capture file, a test)."""
        with self._done:
            self._store(info)
            self._pending.discard(info.id)
            self._done.notify_all()

    def drain_resolved(self) -> list[ContainerInfo]:
        """Containers resolved since the last call (only with ``keep_news`` on)."""
        out = []
        while self._news:
            out.append(self._news.popleft())
        return out

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
        for child in list(self._children):
            try:
                if isinstance(child, socket.socket):
                    child.shutdown(socket.SHUT_RDWR)
                else:
                    child.terminate()
            except OSError:
                pass
        for t in self._watchers:
            t.join(timeout=3)
        self._watchers = []
        if self._worker is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._worker.join(timeout=self.settings.timeout + 1)
            self._worker = None
