"""The agent's observability side: socket sensor -> pipeline -> table store, in one thread.

    SockSource (kernel, its own ring)  ->  Pipeline (connections, parsers)  ->  Store
                                            every conn_stats_interval: conn_stats rows
    ProcStatsSampler (/proc)           ->  process_stats rows every process_stats_interval

``Observer.start()`` loads the sensor and starts the store (its flush thread and control
socket, which ``andon query`` uses to ask for a flush); ``run()`` is the reading loop, each
turn one ``pump()``: every record in the ring straight into the pipeline, rows to the store;
``close()`` stops it, finishes every connection and flushes. A kernel that cannot load the
sensor raises :class:`~andon.errors.NotSupported` from ``start()``; the security side of
the agent carries on without it (the agent decides).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from ..events.sockdata import SockSettings, SockSource
from ..observe.pipeline import Pipeline, ProcessInfo
from ..observe.procstats import ProcStatsSampler
from ..protocols.base import Protocol, Role
from ..store.schema import upid as make_upid
from ..store.settings import StoreSettings
from ..store.store import Store
from .config import ObserveConfig

log = logging.getLogger("andon.observe")

PROTOCOL_NAMES = {"http": Protocol.HTTP, "http2": Protocol.HTTP2, "pgsql": Protocol.PGSQL,
                  "mysql": Protocol.MYSQL, "redis": Protocol.REDIS, "dns": Protocol.DNS}


# allocations between young-generation collections while tracing. Every record makes a few
# short-lived dicts, tuples and lists that reference counting frees at once; at the default
# (700) the cycle collector ran every ~100 records and cost 10-15% of the hot path's CPU
# (bench/observe_pipeline.py). Only ever raised, never lowered.
GC_GEN0 = 50_000


def tune_gc() -> None:
    """Give the cycle collector's young generation room for a burst of records."""
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0:
        gc.set_threshold(GC_GEN0, gen1, gen2)


class Observer:
    def __init__(self, cfg: ObserveConfig, store_settings: StoreSettings | None = None,
                 container_name: Any = None, trace_self: bool = False) -> None:
        self.cfg = cfg
        self.store_settings = store_settings or StoreSettings()
        self.protocols = frozenset(PROTOCOL_NAMES[p] for p in cfg.protocols)
        self.source: SockSource | None = None
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.procstats = ProcStatsSampler()
        self._registry = None
        if container_name is None:
            from ..state.container import ContainerRegistry

            self._registry = ContainerRegistry()

            def container_name(cid: str) -> str | None:
                info = self._registry.get(cid)
                return info.name if info is not None else None
        self._container_name = container_name
        self._trace_self = trace_self
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_stats: dict[str, Any] = {}

    def start(self) -> None:
        self.store = Store(self.store_settings)
        try:
            self.source = SockSource(SockSettings(
                protocols=self.protocols, max_copy=self.cfg.max_copy_bytes,
                trace_roles={PROTOCOL_NAMES[p]: frozenset(Role[r.upper()] for r in roles)
                             for p, roles in self.cfg.trace_roles},
                ring_bytes=self.cfg.ring_buffer_mb << 20, trace_self=self._trace_self, unix=self.cfg.unix_sockets))
            self.source.start()
        except BaseException:
            self.store.close()
            self.store = None
            self.source = None
            raise
        self.store.start()
        if self._registry is not None:
            self._registry.watch()
        self.pipeline = Pipeline(self.store.append, ProcessInfo(names=self._container_name),
                                 self.protocols, idle_ns=self.cfg.idle_timeout_ns)
        tune_gc()

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self.run, name="andon-observe", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Read, parse and store until stopped; periodic tables on their intervals."""
        assert self.source is not None and self.pipeline is not None and self.store is not None
        conn_every = self.cfg.conn_stats_interval_ns / 1e9
        proc_every = self.cfg.process_stats_interval_ns / 1e9
        next_conn = time.monotonic() + conn_every
        next_proc = time.monotonic()
        while not self._stop.is_set():
            try:
                self.pump(0.1)
                now = time.monotonic()
                if now >= next_conn:
                    next_conn = now + conn_every
                    self.pipeline.tick(time.time_ns())
                if now >= next_proc:
                    next_proc = now + proc_every
                    self.sample_processes(time.time_ns())
            except Exception:  # one bad record or file must not stop tracing: log, go on
                log.exception("observability loop error")

    def pump(self, timeout: float) -> int:
        """Wait up to ``timeout`` for records, put every one there is through the pipeline,
        hand the rows made to the store. Returns records read."""
        assert self.source is not None and self.pipeline is not None
        n = self.source.read_into(self.pipeline.data, self.pipeline.handle, timeout)
        self.pipeline.flush()
        return n

    # how long close() keeps reading a backlog: the ring holds a few seconds of parsing at most
    DRAIN_S = 30.0

    def drain(self, limit_s: float | None = None) -> int:
        """Put everything still in the ring through the pipeline (a busy agent stopped with a
        backlog: one read takes one batch, the ring may hold many). What is left after
        ``limit_s`` is counted as ``unread_bytes``, never silently gone. Returns records read."""
        assert self.source is not None and self.pipeline is not None
        deadline = time.monotonic() + (self.DRAIN_S if limit_s is None else limit_s)
        total = 0
        while time.monotonic() < deadline:
            n = self.source.read_into(self.pipeline.data, self.pipeline.handle, 0)
            self.pipeline.flush()
            if not n:
                break
            total += n
        self.source.unread_bytes = self.source.pending_bytes()
        return total

    def sample_processes(self, now_ns: int) -> int:
        """Write one process_stats row per live process."""
        assert self.store is not None
        rows = self.procstats.sample(now_ns)
        for r in rows:
            r["upid"] = make_upid(r["pid"], r.pop("start_ticks"))
            r.pop("ppid", None)
        self.store.append("process_stats", rows)
        return len(rows)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.source is not None:
            out["sensor"] = self.source.stats()
        if self.pipeline is not None:
            p = self.pipeline.stats
            out["rows"] = dict(p.rows)
            out["server_rows"] = dict(p.server_rows)
            out["connections"] = {"opened": p.conns_opened, "closed": p.conns_closed,
                                  "idle_closed": p.conns_idle_closed, "open": len(self.pipeline.conns)}
            out["parse"] = {k: getattr(p.parse, k) for k in p.parse.__slots__}  # type: ignore[attr-defined]
        if self.store is not None:
            out["store"] = self.store.stats.as_dict()
        return out

    # how long close() waits for the reading thread to finish the pass it is in (one pass is at
    # most BATCH_RECORDS records, ~0.1 s; longer means it is stuck)
    STOP_S = 30.0

    def close(self) -> None:
        """Stop reading, finish every connection, flush; ``last_stats`` keeps the final figures."""
        self._stop.set()
        stuck = False
        if self._thread is not None:
            self._thread.join(timeout=self.STOP_S)
            stuck = self._thread.is_alive()
            self._thread = None
        if self.source is not None:
            try:
                if stuck:
                    # reading beside a thread still inside the pipeline would feed the parsers
                    # from two threads at once: leave the backlog, counted and said
                    self.source.unread_bytes = self.source.pending_bytes()
                    log.warning("observe: the reading thread did not stop within %.0f s; %d bytes left "
                                "unread in the ring", self.STOP_S, self.source.unread_bytes)
                elif self.pipeline is not None:
                    self.drain()
                    self.pipeline.close(time.time_ns())
                self.last_stats = self.stats()  # the kernel's counters, before the maps go
            finally:
                self.source.close()
                self.source = None
        elif self.pipeline is not None:
            self.pipeline.close(time.time_ns())
            self.last_stats = self.stats()
        self.pipeline = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None


def tls_text(source: Any) -> str:
    """What the agent's start line says of TLS capture: the files probed, or why it is off."""
    if source is None or not source.settings.tls:
        return "TLS off"
    if source.tls is None:
        return f"TLS off ({source.tls_error})"
    files = list(source.tls.files.values())
    go = sum(1 for f in files if f.go)
    text = f"TLS on: {len(files) - go} OpenSSL file(s)" + (f", {go} Go program(s)" if go else "")
    if source.go_tls_error:
        text += f"; Go's crypto/tls off ({source.go_tls_error})"
    return text


def describe(stats: dict[str, Any]) -> str:
    """The closing line's observability part: rows per table, connections, loss."""
    rows = stats.get("rows", {})
    server = stats.get("server_rows", {})
    sensor = stats.get("sensor", {})
    parse = stats.get("parse", {})
    tables = ", ".join(
        f"{n} {t}" + (f" ({server.get(t, 0)} server side)" if t != "conn_stats" else "")
        for t, n in sorted(rows.items()) if n) or "no rows"
    conns = stats.get("connections", {})
    return (f"observe: {tables}; {conns.get('opened', 0)} connections; "
            f"{sensor.get('drops', 0)} records lost, {sensor.get('gap_bytes', 0)} bytes in gaps, "
            f"{parse.get('invalid', 0)} unparsable spots, {parse.get('unmatched_requests', 0)} unanswered requests"
            + (f", {sensor['unread_bytes']} bytes left unread at stop" if sensor.get("unread_bytes") else ""))
