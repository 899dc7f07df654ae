"""Output channels: where alerts go, as Falco sends them (``userspace/falco/outputs_*.cpp``).

``Channels(settings)`` fans every alert out to the enabled channels; ``emit(alert)`` never
raises and never blocks on the network; ``tick()`` (called from the agent's poll loop) emits
due rate-limit notices; ``stats()`` has every count; ``close()`` flushes and stops.

Each alert is formatted once: Falco's text line, or with ``json_output`` its JSON alert, and
that line goes to every channel, as in Falco (HTTP is the exception: it always posts JSON,
which is what Falcosidekick and webhooks take; Falco posts the text line as ``text/plain``
when ``json_output`` is off, which Falcosidekick rejects).

stdout
    one line per alert; flushed each time unless ``buffered_outputs``.
file
    appended to ``filename``; with ``keep_alive`` the file stays open, without it the file is
    opened and closed for every alert (Falco's ``output_file``). ``reopen()`` closes and
    reopens it (log rotation; Falco does this on SIGUSR1).
syslog
    RFC 3164 datagrams to a unix socket (``/dev/log``), as glibc's ``syslog(3)`` writes them
    for Falco: ``<PRI>Mmm dd hh:mm:ss andon: LINE``, PRI = facility * 8 + severity, the
    severity being the Falco priority's number (Emergency 0 ... Debug 7, the same scale).
    A stream socket at the path is used as glibc does (each message NUL-terminated).
program
    ``/bin/sh -c PROGRAM`` with each line written to its stdin; with ``keep_alive`` one process
    for all alerts (restarted, and counted, when its pipe breaks), otherwise one per alert.
http
    POST of the JSON alert, ``Content-Type: application/json``, from a background thread fed
    by a bounded queue: a full queue drops the alert (counted), failures are counted with the
    last error, nothing reaches the agent's loop.

Rate limiting (``outputs: {rate, max_burst}``, Falco's old global token bucket, applied per
rule here): a rule gets ``max_burst`` alerts at once and ``rate`` more per second. Alerts
over that are suppressed and counted; a notice (an internal alert with the rule's priority,
source ``internal``) says ``N alerts of rule "X" suppressed in the last T s`` when the rule
alerts again, or every ``notice_interval`` seconds while it keeps being suppressed, and on
``close()``.
"""

from __future__ import annotations

import abc
import http.client
import logging
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..errors import UsageError
from ..rules.outputs import Alert, Priority, internal_alert

log = logging.getLogger("andon.channels")

NOTICE_RULE = "andon internal: alerts suppressed"

try:
    from importlib.metadata import version as _version

    _ANDON_VERSION = _version("andon")
except Exception:  # not installed as a distribution (running from a source tree)
    _ANDON_VERSION = "0"

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StdoutSettings:
    enabled: bool = True


@dataclass(frozen=True)
class FileSettings:
    enabled: bool = False
    keep_alive: bool = False
    filename: str = "./events.txt"


@dataclass(frozen=True)
class SyslogSettings:
    # off unless asked for (Falco's falco.yaml turns it on): many hosts and containers have
    # no /dev/log, and an alert channel that fails on every alert is noise, not safety
    enabled: bool = False
    socket: str = "/dev/log"
    facility: str = "user"
    ident: str = "andon"


@dataclass(frozen=True)
class ProgramSettings:
    enabled: bool = False
    keep_alive: bool = False
    program: str = ""


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = False
    url: str = ""
    user_agent: str = f"andon/{_ANDON_VERSION}"
    headers: tuple[tuple[str, str], ...] = ()
    insecure: bool = False
    ca_cert: str = ""
    ca_bundle: str = ""
    ca_path: str = ""
    mtls: bool = False
    client_cert: str = ""
    client_key: str = ""
    echo: bool = False
    keep_alive: bool = False
    max_consecutive_timeouts: int = 5


@dataclass(frozen=True)
class RateLimit:
    rate: float = 0.0  # alerts per second per rule; 0 = no limit
    max_burst: float = 1000.0
    notice_interval: float = 60.0  # s between notices while a rule stays suppressed


@dataclass(frozen=True)
class ChannelSettings:
    """The output keys of ``andon.yaml`` (Falco's names). Build with :meth:`from_dict`."""

    json_output: bool = False
    json_include_output_property: bool = True
    json_include_tags_property: bool = True
    json_include_message_property: bool = False
    json_include_output_fields_property: bool = True
    time_format_iso_8601: bool = False
    buffered_outputs: bool = False
    priority: Priority = Priority.DEBUG
    output_timeout: int = 2000  # ms: HTTP request timeout, and how long close() waits for the queue
    queue_capacity: int = 10000  # outputs_queue.capacity: HTTP alerts waiting; 0 = unbounded
    stdout: StdoutSettings = field(default_factory=StdoutSettings)
    file: FileSettings = field(default_factory=FileSettings)
    syslog: SyslogSettings = field(default_factory=SyslogSettings)
    program: ProgramSettings = field(default_factory=ProgramSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    rate_limit: RateLimit = field(default_factory=RateLimit)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ChannelSettings:
        """From the config's keys; every bad key or value is a UsageError naming it."""
        data = dict(data or {})
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise UsageError(
                "unknown output key(s): " + ", ".join(sorted(unknown)) + "; known: " + ", ".join(sorted(_TOP_KEYS))
            )
        kw: dict[str, Any] = {}
        for k in _TOP_BOOLS:
            if k in data:
                kw[k] = _bool(k, data[k])
        if "priority" in data:
            try:
                kw["priority"] = Priority.parse(data["priority"])
            except ValueError as e:
                raise UsageError(f"priority: {e}") from None
        if "output_timeout" in data:
            kw["output_timeout"] = _int("output_timeout", data["output_timeout"], 1, 3_600_000)
        if "outputs_queue" in data:
            q = _section("outputs_queue", data["outputs_queue"], {"capacity"})
            if "capacity" in q:
                kw["queue_capacity"] = _int("outputs_queue.capacity", q["capacity"], 0, 1 << 40)

        s = _section("stdout_output", data.get("stdout_output"), {"enabled"})
        kw["stdout"] = StdoutSettings(**_bools("stdout_output", s, ("enabled",)))

        s = _section("file_output", data.get("file_output"), {"enabled", "keep_alive", "filename"})
        fkw: dict[str, Any] = _bools("file_output", s, ("enabled", "keep_alive"))
        if "filename" in s:
            fkw["filename"] = _str("file_output.filename", s["filename"], empty=False)
        kw["file"] = FileSettings(**fkw)

        s = _section("syslog_output", data.get("syslog_output"), {"enabled", "socket", "facility", "ident"})
        skw: dict[str, Any] = _bools("syslog_output", s, ("enabled",))
        if "socket" in s:
            skw["socket"] = _str("syslog_output.socket", s["socket"], empty=False)
        if "facility" in s:
            fac = _str("syslog_output.facility", s["facility"], empty=False).lower()
            if fac not in FACILITIES:
                raise UsageError(f"syslog_output.facility {fac!r}: one of " + ", ".join(FACILITIES))
            skw["facility"] = fac
        if "ident" in s:
            skw["ident"] = _str("syslog_output.ident", s["ident"], empty=False)
        kw["syslog"] = SyslogSettings(**skw)

        s = _section("program_output", data.get("program_output"), {"enabled", "keep_alive", "program"})
        pkw: dict[str, Any] = _bools("program_output", s, ("enabled", "keep_alive"))
        if "program" in s:
            pkw["program"] = _str("program_output.program", s["program"])
        prog = ProgramSettings(**pkw)
        if prog.enabled and not prog.program.strip():
            raise UsageError("program_output.program: enabled, but no program given")
        kw["program"] = prog

        kw["http"] = _http(data.get("http_output"))

        s = _section("outputs", data.get("outputs"), {"rate", "max_burst", "notice_interval"})
        rkw: dict[str, Any] = {}
        if "rate" in s:
            rkw["rate"] = _num("outputs.rate", s["rate"], 0, 1e9)
        if "max_burst" in s:
            rkw["max_burst"] = _num("outputs.max_burst", s["max_burst"], 1, 1e12)
        if "notice_interval" in s:
            rkw["notice_interval"] = _num("outputs.notice_interval", s["notice_interval"], 0.001, 86400 * 365)
        kw["rate_limit"] = RateLimit(**rkw)
        return cls(**kw)

    def json_options(self) -> dict[str, bool]:
        return {
            "iso8601": self.time_format_iso_8601,
            "include_output": self.json_include_output_property,
            "include_tags": self.json_include_tags_property,
            "include_message": self.json_include_message_property,
            "include_output_fields": self.json_include_output_fields_property,
        }


_TOP_BOOLS = (
    "json_output",
    "json_include_output_property",
    "json_include_tags_property",
    "json_include_message_property",
    "json_include_output_fields_property",
    "time_format_iso_8601",
    "buffered_outputs",
)
_TOP_KEYS = frozenset(
    {
        *_TOP_BOOLS,
        "priority",
        "output_timeout",
        "outputs_queue",
        "stdout_output",
        "file_output",
        "syslog_output",
        "program_output",
        "http_output",
        "outputs",
    }
)
_HTTP_KEYS = {
    "enabled", "url", "user_agent", "headers", "insecure", "ca_cert", "ca_bundle", "ca_path", "mtls",
    "client_cert", "client_key", "echo", "keep_alive", "max_consecutive_timeouts", "compress_uploads",
}  # fmt: skip


def _http(raw: Any) -> HttpSettings:
    s = _section("http_output", raw, _HTTP_KEYS)
    kw: dict[str, Any] = _bools("http_output", s, ("enabled", "insecure", "mtls", "echo", "keep_alive"))
    for k in ("url", "user_agent", "ca_cert", "ca_bundle", "ca_path", "client_cert", "client_key"):
        if k in s:
            kw[k] = _str(f"http_output.{k}", s[k])
    if _bool("http_output.compress_uploads", s.get("compress_uploads", False)):
        raise UsageError("http_output.compress_uploads: not supported by andon (leave it false)")
    if "max_consecutive_timeouts" in s:
        kw["max_consecutive_timeouts"] = _int("http_output.max_consecutive_timeouts", s["max_consecutive_timeouts"], 0, 255)
    if "headers" in s:
        h = s["headers"] or {}
        if not isinstance(h, Mapping) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in h.items()):
            raise UsageError("http_output.headers must map header names to values")
        for k, v in h.items():
            if not k or any(c in k for c in ":\r\n ") or any(c in str(v) for c in "\r\n"):
                raise UsageError(f"http_output.headers: bad header {k!r}: {v!r}")
        kw["headers"] = tuple((k, str(v)) for k, v in h.items())
    hs = HttpSettings(**kw)
    if hs.enabled:
        _split_url(hs.url)  # raises UsageError if it is no http(s) URL
    if hs.mtls and not (hs.client_cert and hs.client_key):
        raise UsageError("http_output.mtls needs client_cert and client_key")
    return hs


def _split_url(url: str) -> tuple[str, str, int | None, str]:
    u = url.strip()
    if len(u) >= 2 and u[0] == u[-1] and u[0] in "'\"":  # Falco accepts a quoted URL
        u = u[1:-1]
    p = urllib.parse.urlsplit(u)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise UsageError(f"http_output.url {url!r} is not an http:// or https:// URL")
    try:
        port = p.port
    except ValueError:
        raise UsageError(f"http_output.url {url!r} has a bad port") from None
    path = (p.path or "/") + (f"?{p.query}" if p.query else "")
    return p.scheme, p.hostname, port, path


def _section(name: str, raw: Any, keys: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"{name} must be a mapping of keys")
    unknown = set(raw) - keys
    if unknown:
        raise UsageError(f"unknown key(s) under {name}: {', '.join(sorted(map(str, unknown)))}; known: {', '.join(sorted(keys))}")
    return dict(raw)


def _bools(section: str, s: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, bool]:
    return {k: _bool(f"{section}.{k}", s[k]) for k in keys if k in s}


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):  # falco -o key=value style
        return v.lower() == "true"
    raise UsageError(f"{name} must be true or false, not {v!r}")


def _str(name: str, v: Any, empty: bool = True) -> str:
    if not isinstance(v, str) or (not empty and not v.strip()):
        raise UsageError(f"{name} must be a{'' if empty else ' non-empty'} string, not {v!r}")
    return v


def _num(name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise UsageError(f"{name} must be a number from {lo:g} to {hi:g}, not {v!r}")
    return float(v)


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise UsageError(f"{name} must be an integer from {lo} to {hi}, not {v!r}")
    return v


# -- channels ---------------------------------------------------------------------------------


class Channel(abc.ABC):
    """One destination. ``emit(line, alert)`` counts ``sent`` or ``failed``; never raises."""

    name = "?"
    json = False  # wants the JSON line whatever json_output says

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._failing = False

    def emit(self, line: str, alert: Alert) -> None:
        try:
            self.write(line, alert)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self._fail(e)
        else:
            self._ok()

    @abc.abstractmethod
    def write(self, line: str, alert: Alert) -> None:
        """Send one alert line; raise OSError/ValueError/SubprocessError on failure."""

    def _ok(self) -> None:
        self.sent += 1
        if self._failing:
            self._failing = False
            log.warning("output channel %s works again", self.name)

    def _fail(self, e: BaseException | str) -> None:
        self.failed += 1
        self.last_error = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        if not self._failing:  # say it once per streak; every failure is counted
            self._failing = True
            log.warning("output channel %s failed: %s (alerts are counted as failed until it works)", self.name, self.last_error)

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error}


class StdoutChannel(Channel):
    name = "stdout"

    def __init__(self, buffered: bool, stream: TextIO | None = None) -> None:
        super().__init__()
        self.buffered = buffered
        self.stream = stream

    def write(self, line: str, alert: Alert) -> None:
        out = self.stream or sys.stdout  # looked up each time: tests and the CLI swap it
        out.write(line + "\n")
        if not self.buffered:
            out.flush()

    def close(self) -> None:
        try:
            (self.stream or sys.stdout).flush()
        except (OSError, ValueError):
            pass


class FileChannel(Channel):
    name = "file"

    def __init__(self, s: FileSettings, buffered: bool) -> None:
        super().__init__()
        self.s = s
        self.buffered = buffered
        self._f: Any = None

    def write(self, line: str, alert: Alert) -> None:
        if self._f is None:
            self._f = open(self.s.filename, "a", encoding="utf-8", errors="replace")
        try:
            self._f.write(line + "\n")
            if not self.buffered or not self.s.keep_alive:
                self._f.flush()
        except OSError:
            self.close()
            raise
        if not self.s.keep_alive:
            self.close()

    def reopen(self) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError as e:
                self._fail(e)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def syslog_time(ns: int) -> str:
    """glibc's RFC 3164 timestamp, ``%h %e %T`` in local time: ``Nov  4 09:05:01``."""
    t = time.localtime(ns // 1_000_000_000)
    return f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


class SyslogChannel(Channel):
    name = "syslog"

    def __init__(self, s: SyslogSettings, wall: Callable[[], int]) -> None:
        super().__init__()
        self.s = s
        self.base = FACILITIES[s.facility] * 8
        self.wall = wall
        self._sock: socket.socket | None = None
        self._stream = False

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(self.s.socket)
            self._stream = False
            return sock
        except OSError as e:
            sock.close()
            if e.errno != 91:  # EPROTOTYPE: a stream socket listens there (glibc tries it next)
                raise
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.s.socket)
        except OSError:
            sock.close()
            raise
        self._stream = True
        return sock

    def message(self, line: str, alert: Alert) -> bytes:
        pri = self.base + int(alert.priority)
        return f"<{pri}>{syslog_time(self.wall())} {self.s.ident}: {line}".encode("utf-8", "replace")

    def write(self, line: str, alert: Alert) -> None:
        data = self.message(line, alert)
        if self._sock is None:
            self._sock = self._connect()
        try:
            if self._stream:
                self._sock.sendall(data + b"\0")
            else:
                self._sock.send(data)
        except OSError:
            self.close()  # reconnect on the next alert (syslogd restarted)
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class ProgramChannel(Channel):
    name = "program"

    def __init__(self, s: ProgramSettings, buffered: bool, timeout: float) -> None:
        super().__init__()
        self.s = s
        self.buffered = buffered
        self.timeout = timeout
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._zombies: list[subprocess.Popen[bytes]] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.s.program, shell=True, stdin=subprocess.PIPE)

    def write(self, line: str, alert: Alert) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        if not self.s.keep_alive:
            p = self._spawn()
            try:
                assert p.stdin is not None
                p.stdin.write(data)
                p.stdin.close()
            finally:
                self._reap(p)
            return
        if self._proc is not None and self._proc.poll() is not None:  # it exited since
            self._stop()
            self.restarts += 1
        if self._proc is None:
            self._proc = self._spawn()
        try:
            self._send(data)
        except BrokenPipeError:  # the reader went away: start it again, once
            self._stop()
            self.restarts += 1
            self._proc = self._spawn()
            self._send(data)

    def _send(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(data)
        if not self.buffered:
            self._proc.stdin.flush()

    def _reap(self, p: subprocess.Popen[bytes]) -> None:
        """Wait for ``p`` like pclose(3), but at most ``timeout``: a slow one is reaped later."""
        try:
            p.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._zombies.append(p)
        self._zombies = [z for z in self._zombies if z.poll() is None]

    def _stop(self) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            if p.stdin is not None:
                p.stdin.close()
        except OSError:
            pass
        self._reap(p)

    def reopen(self) -> None:
        self._stop()

    def close(self) -> None:
        self._stop()
        for z in self._zombies:
            try:
                z.wait(self.timeout)
            except subprocess.TimeoutExpired:
                pass
        self._zombies = []

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "restarts": self.restarts}


_STOP = object()


class HttpChannel(Channel):
    """POSTs from a background thread; ``emit`` only queues."""

    name = "http"
    json = True

    def __init__(self, s: HttpSettings, capacity: int, timeout: float) -> None:
        super().__init__()
        self.s = s
        self.timeout = timeout
        self.scheme, self.host, self.port, self.path = _split_url(s.url)
        self.headers = {"Content-Type": "application/json", "User-Agent": s.user_agent, **dict(s.headers)}
        self.ctx = self._tls() if self.scheme == "https" else None
        self.q: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._conn: http.client.HTTPConnection | None = None
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="andon-http-output", daemon=True)
        self.thread.start()

    def _tls(self) -> ssl.SSLContext:
        s = self.s
        try:
            ctx = ssl.create_default_context(cafile=(s.ca_cert or s.ca_bundle or None), capath=(s.ca_path or None))
            if s.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if s.mtls:
                ctx.load_cert_chain(s.client_cert, s.client_key)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"http_output: cannot set up TLS: {e}") from None
        return ctx

    def emit(self, line: str, alert: Alert) -> None:
        try:
            self.q.put_nowait(line)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("http output queue full: %d alerts dropped so far", self.dropped)

    # -- the worker thread -----------------------------------------------------------------
    def write(self, line: str, alert: Alert | None = None) -> None:
        """One POST, made by the worker thread (``emit`` only queues)."""
        self._post(line.encode("utf-8", "replace"))

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is _STOP:
                return
            if self._deadline is not None and time.monotonic() > self._deadline:
                self._drop_rest(1)
                return
            self.write(item)

    def _drop_rest(self, n: int) -> None:
        while True:
            try:
                if self.q.get_nowait() is not _STOP:
                    n += 1
            except queue.Empty:
                break
        with self._lock:
            self.dropped += n

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ctx)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, body: bytes) -> None:
        # like Falco's libcurl loop: a timeout is retried up to max_consecutive_timeouts times
        for _ in range(1 + self.s.max_consecutive_timeouts):
            try:
                conn = self._connection()
                conn.request("POST", self.path, body=body, headers=self.headers)
                resp = conn.getresponse()
                answer = resp.read()
                if not self.s.keep_alive or resp.will_close:
                    self._drop_conn()
            except TimeoutError:
                self._drop_conn()
                err = f"timed out after {self.timeout:g} s"
                continue
            except (OSError, http.client.HTTPException) as e:
                self._drop_conn()
                with self._lock:
                    self._fail(e)
                return
            if resp.status >= 400:
                with self._lock:
                    self._fail(f"HTTP {resp.status} {resp.reason}")
                return
            if self.s.echo:
                sys.stdout.write(answer.decode("utf-8", "replace"))
            with self._lock:
                self._ok()
            return
        with self._lock:
            self._fail(err)

    def close(self) -> None:
        """Deliver what is queued within the output timeout, drop (and count) the rest."""
        if not self.thread.is_alive():
            return
        self._deadline = time.monotonic() + self.timeout
        try:
            self.q.put(_STOP, timeout=self.timeout)
        except queue.Full:
            pass
        self.thread.join(max(0.0, self._deadline - time.monotonic()) + 0.2)
        if self.thread.is_alive():  # stuck in a request: what is still queued is lost
            n = self.q.qsize()
            with self._lock:
                self.dropped += n
        self._drop_conn()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**super().stats(), "queued": self.q.qsize()}


# -- the fan-out ------------------------------------------------------------------------------


def _plain(x: float) -> float | int:
    return int(x) if x.is_integer() else x


class _RuleState:
    __slots__ = ("tokens", "last", "emitted", "suppressed", "pending", "since", "priority", "hostname")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.last = now
        self.emitted = 0
        self.suppressed = 0
        self.pending = 0  # suppressed since the last notice
        self.since = 0.0
        self.priority = Priority.DEBUG
        self.hostname = ""


class Channels:
    """The alert sink: ``emit``, ``tick``, ``reopen``, ``stats``, ``close``.

    ``clock`` (monotonic seconds) drives the rate limits, ``wall`` (ns since the epoch) the
    notices' time and syslog's timestamp; tests inject both.
    """

    def __init__(
        self,
        settings: ChannelSettings | Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], int] = time.time_ns,
        stdout: TextIO | None = None,
    ) -> None:
        if not isinstance(settings, ChannelSettings):
            settings = ChannelSettings.from_dict(settings)
        self.settings = s = settings
        self.clock = clock
        self.wall = wall
        self._json_opts = s.json_options()
        self.rules: dict[str, _RuleState] = {}
        self._pending: set[str] = set()
        self.below_priority = 0
        self.notices = 0
        self.channels: list[Channel] = []
        timeout = s.output_timeout / 1000
        try:
            if s.stdout.enabled:
                self.channels.append(StdoutChannel(s.buffered_outputs, stdout))
            if s.file.enabled:
                self.channels.append(FileChannel(s.file, s.buffered_outputs))
            if s.syslog.enabled:
                self.channels.append(SyslogChannel(s.syslog, wall))
            if s.program.enabled:
                self.channels.append(ProgramChannel(s.program, s.buffered_outputs, timeout))
            if s.http.enabled:
                self.channels.append(HttpChannel(s.http, s.queue_capacity, timeout))
        except BaseException:
            self.close()
            raise
        self._closed = False

    # -- alerts ----------------------------------------------------------------------------
    def emit(self, alert: Alert) -> None:
        """Send one alert to every channel (after the priority threshold and rate limit)."""
        if not alert.priority.at_least(self.settings.priority):
            self.below_priority += 1
            return
        st = self.rules.get(alert.rule)
        now = self.clock()
        if st is None:
            st = self.rules[alert.rule] = _RuleState(self.settings.rate_limit.max_burst, now)
        rl = self.settings.rate_limit
        if rl.rate > 0:
            st.tokens = min(rl.max_burst, st.tokens + rl.rate * (now - st.last))  # Falco's token_bucket
            st.last = now
            if st.tokens < 1:
                st.suppressed += 1
                if st.pending == 0:
                    st.since = now
                    self._pending.add(alert.rule)
                st.pending += 1
                st.priority, st.hostname = alert.priority, alert.hostname
                return
            st.tokens -= 1
            if st.pending:
                self._notice(alert.rule, st, now)
        st.emitted += 1
        self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        text = js = None
        for ch in self.channels:
            if ch.json or self.settings.json_output:
                if js is None:
                    js = alert.to_json_line(**self._json_opts)
                ch.emit(js, alert)
            else:
                if text is None:
                    text = alert.text_line(self.settings.time_format_iso_8601)
                ch.emit(text, alert)

    def _notice(self, rule: str, st: _RuleState, now: float) -> None:
        secs = round(now - st.since, 1)
        n = st.pending
        st.pending = 0
        self._pending.discard(rule)
        rl = self.settings.rate_limit
        msg = f'{n} alert{"s" if n != 1 else ""} of rule "{rule}" suppressed in the last {secs:g} s'
        fields = {"rule": rule, "suppressed": n, "seconds": secs, "rate": _plain(rl.rate), "max_burst": _plain(rl.max_burst)}
        self.notices += 1
        self._deliver(internal_alert(self.wall(), st.priority, NOTICE_RULE, msg, fields, st.hostname))

    def tick(self) -> None:
        """Emit the notices that are due; call it now and then (the agent does, every poll)."""
        if not self._pending:
            return
        now = self.clock()
        every = self.settings.rate_limit.notice_interval
        for rule in list(self._pending):
            st = self.rules[rule]
            if now - st.since >= every:
                self._notice(rule, st, now)

    def flush_notices(self) -> None:
        now = self.clock()
        for rule in list(self._pending):
            self._notice(rule, self.rules[rule], now)

    # -- life --------------------------------------------------------------------------------
    def reopen(self) -> None:
        """Close and reopen files and programs (log rotation; Falco does it on SIGUSR1)."""
        for ch in self.channels:
            ch.reopen()

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        if hasattr(self, "_pending"):
            self.flush_notices()
        for ch in getattr(self, "channels", []):
            try:
                ch.close()
            except Exception as e:  # one channel's trouble must not keep the others open
                log.warning("closing output channel %s: %s", ch.name, e)
        self._closed = True

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """``channels``: name -> sent/failed/dropped/last_error (+ restarts, queued);
        ``rules``: name -> emitted/suppressed; ``below_priority``; ``notices``."""
        return {
            "channels": {ch.name: ch.stats() for ch in self.channels},
            "rules": {r: {"emitted": st.emitted, "suppressed": st.suppressed} for r, st in self.rules.items()},
            "below_priority": self.below_priority,
            "notices": self.notices,
        }


AlertSink = Channels


def build_channels(outputs: Mapping[str, Any] | None) -> Channels:
    """``Channels`` from the config's output keys (``AgentConfig.outputs``); UsageError if bad."""
    return Channels(ChannelSettings.from_dict(outputs))

__all__ = [
    "AlertSink",
    "Channel",
    "ChannelSettings",
    "Channels",
    "FileSettings",
    "HttpSettings",
    "NOTICE_RULE",
    "ProgramSettings",
    "RateLimit",
    "StdoutSettings",
    "SyslogSettings",
    "build_channels",
    "syslog_time",
]
