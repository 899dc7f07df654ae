"""``andon run``: the runtime-security agent.

Start-up, in order: read the config, load and compile every rules file (any error stops
the start, every problem is printed), open the output channels, load the sensor with only
the event types the rules and the state tables need, attach, seed the process table from
/proc, say ``andon: ready``, then: event -> state -> rules -> alerts -> channels.

Reload (SIGHUP, or a rules file changed when ``watch_config_files`` is on): the files are
loaded again beside the running rules; if anything is wrong the problems are printed and
the running rules stay; if all is well the new rules replace the old in one step between
two events, and the kernel's event selection follows.

Replay (``andon run -r CAPTURE``): the same pipeline over a capture file, with the process
table the capture recorded, so the alerts are the ones the live agent would have raised.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import AndonError, RuleError, UsageError
from ..events.capture import CaptureReader
from ..events.live import LiveSource, SensorSettings
import numpy as np

from ..events.schema import (
    DATA_SMALL,
    EVENT_DTYPE,
    F_EXEC_INFO,
    F_SOCK,
    F_TRUNCATED,
    REC_SMALL,
    Event,
    EventType,
    decode_batch,
    decode_record,
)
from ..events.syscalls import ALL_TYPES, BY_NAME, syscall_name
from ..rules.engine import EngineSettings, RuleEngine
from ..rules.prefilter import PATH_NRS, clean_path
from ..state.fd import OPEN_PATH_NRS, open_args
from .config import AgentConfig
from .enrich import ContainerWait, Tracker
from .stream import Counts, StopFlag, kernel_types, polls

log = logging.getLogger("andon.agent")

_SYSCALL = int(EventType.SYSCALL)
_NR_CLOSE = BY_NAME["close"].nr

# how _handle_batch applies a record: decoded into an Event (_FULL), or from its raw values:
# a close no rule watches, a path open that no rule evaluates (_LEAN_OPEN), whose header
# rules out every rule (_SKIP), or whose path does (_PATH: only where the fd entry it makes
# is fd.name, see Agent._may_match)
_FULL, _LEAN_CLOSE, _LEAN_OPEN, _LEAN_OPEN_SKIP, _LEAN_OPEN_PATH = 0, 1, 2, 3, 4
_DONE = 5  # a close applied with the open just before it (Tracker.open_close_raw)
_NAME_OF_NR = {nr: syscall_name(nr) for nr in OPEN_PATH_NRS}
_PATH_NAMES = frozenset(_NAME_OF_NR.values())  # their bits are made with the open candidates'


def _event_name(key: int) -> str:
    """Event.name of ``type << 16 | nr``."""
    return Event(0, key >> 16, key & 0xFFFF, 0, 0, 0, 0, 0, 0, (), "").name
_OPEN_NR = np.zeros(1 << 16, dtype=bool)
_OPEN_NR[sorted(OPEN_PATH_NRS)] = True


def _open_candidates(full: np.ndarray, fpos: np.ndarray, bigs: dict[int, bytes] | None) -> np.ndarray:
    """Positions in ``full`` of the path opens that carry their path and nothing else in the
    data area (one string, no socket or exec facts) and are whole in their slot."""
    m = (full["type"] == _SYSCALL) & _OPEN_NR[full["nr"]] & (full["nstr"] == 1)
    m &= (full["flags"] & (F_SOCK | F_EXEC_INFO)) == 0
    if bigs:
        m &= ~np.isin(fpos, np.fromiter(bigs, dtype=np.int64))
    return np.flatnonzero(m)


def _first_strings(data: np.ndarray) -> list[str]:
    """The first NUL-terminated string of each data area, as ``decode_batch`` reads it."""
    zero = data == 0
    lens = np.where(zero.any(axis=1), zero.argmax(axis=1), DATA_SMALL).tolist()
    blob = data.tobytes()
    return [blob[b : b + ln].decode("utf-8", "surrogateescape") for b, ln in zip(range(0, len(blob), DATA_SMALL), lens)]


class RulesLoadFailed(RuleError):
    """Rules files with errors; ``result`` holds every problem."""

    def __init__(self, result: Any, text: str) -> None:
        self.result = result
        self.text = text
        n = len(result.errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in the rules files")


@dataclass
class RunSummary:
    events: int = 0
    alerts: int = 0
    lost: int = 0
    truncated: int = 0
    rule_errors: int = 0
    container_waits: int = 0  # alerts that waited for a container lookup under way
    container_wait_expired: int = 0  # ... in vain
    container_lookup_failures: int = 0
    reloads: int = 0
    reload_failures: int = 0
    seconds: float = 0.0
    by_rule: dict[str, int] = field(default_factory=dict)


def load_ruleset(paths: list[Path], priority: str = "debug") -> tuple[Any, Any]:
    """(ruleset, result) from the files, in order; RulesLoadFailed if any error."""
    from ..rules.loader import load_rules

    sources = []
    for p in paths:
        try:
            sources.append((str(p), p.read_text()))
        except OSError as e:
            raise UsageError(f"cannot read rules file {p}: {e.strerror}") from None
    result = load_rules(sources, min_priority=priority)
    if result.errors:
        raise RulesLoadFailed(result, result.render())
    return result.ruleset, result


class Agent:
    """One configured agent; ``run_live`` or ``run_replay`` drive it."""

    def __init__(
        self,
        config: AgentConfig,
        channels: Any,
        *,
        rules_paths: list[Path] | None = None,
        status: TextIO = sys.stderr,
    ) -> None:
        self.config = config
        self.channels = channels
        self.paths = rules_paths if rules_paths is not None else config.rule_paths()
        if not self.paths:
            raise UsageError("no rules files to load")
        self.status = status
        extra: dict[str, Any] = {}
        if config.hostname:
            extra["hostname"] = config.hostname
        if config.append_output is not None:
            extra["append_output"] = config.append_output
        self.settings = EngineSettings(rule_matching=config.rule_matching, **extra)
        self.ruleset, result = load_ruleset(self.paths, config.priority)
        for w in result.warnings:
            log.info("%s", w)
        self.warnings = len(result.warnings)
        self.engine = RuleEngine(self.ruleset, self.settings)
        self.summary = RunSummary()
        self.fast_paths = True  # see _handle_batch; off: every event through state and rules
        self._mtimes = self._stat()
        self._hup = False
        self._last_watch = time.monotonic()
        self._cwait: ContainerWait | None = None

    # -- what to switch on ---------------------------------------------------------------
    def kernel_types(self, engine: RuleEngine | None = None) -> frozenset[str]:
        """What the kernel must send for ``engine``'s rules (default: the running ones) and
        the state behind them. open/close are always asked for: they keep the fd tables
        true and load the syscall program, so a reload can switch on any syscall later."""
        return kernel_types((engine or self.engine).evttypes() | {"open", "close"})

    def say(self, text: str) -> None:
        print(f"andon: {text}", file=self.status, flush=True)

    # -- reload ------------------------------------------------------------------------------
    def _stat(self) -> dict[Path, float]:
        out = {}
        for p in self.paths:
            try:
                out[p] = p.stat().st_mtime_ns
            except OSError:
                out[p] = -1
        return out

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._hup = True

    def reload_due(self) -> bool:
        if self._hup:
            return True
        if not self.config.watch_config_files:
            return False
        now = time.monotonic()
        if now - self._last_watch < 1.0:
            return False
        self._last_watch = now
        return self._stat() != self._mtimes

    def reload(self, on_types: Callable[[frozenset[str]], None] | None = None) -> bool:
        """Load the files again; swap in the new rules only if all of them load."""
        self._hup = False
        self._mtimes = self._stat()
        try:
            ruleset, result = load_ruleset(self.paths, self.config.priority)
        except (RulesLoadFailed, UsageError) as e:
            self.summary.reload_failures += 1
            self.say(f"reload failed, the {len(self.engine.rules)} running rules stay: {e}")
            if isinstance(e, RulesLoadFailed):
                print(e.text, file=self.status, flush=True)
            return False
        engine = RuleEngine(ruleset, self.settings)
        if on_types is not None:
            on_types(self.kernel_types(engine))
        self.ruleset, self.engine = ruleset, engine
        self.summary.reloads += 1
        self.say(f"reloaded: {len(engine.rules)} rules, {len(result.warnings)} warnings")
        return True

    # -- the pipeline ------------------------------------------------------------------------
    def _handle(self, ev: Event, tracker: Tracker) -> None:
        ctx = tracker(ev)
        cw = self._cwait
        if cw is None or cw.engine is not self.engine:
            cw = self._cwait = ContainerWait(self.engine)
        cw.before(ev, ctx, tracker)
        for alert in cw.after(self.engine.process(ev, ctx), ev, ctx, tracker):
            self.summary.by_rule[alert.rule] = self.summary.by_rule.get(alert.rule, 0) + 1
            self.channels.emit(alert)

    def _handle_batch(self, recs: np.ndarray, tracker: Tracker, boot_offset: int, counts: Counts,
                      count: int | None, bigs: dict[int, bytes] | None = None) -> bool:
        """A batch of one-slot records, in order, as ``_handle`` would take them one by one;
        True when ``count`` alerts were reached (the rest of the batch is not applied).

        With ``fast_paths`` (the default) an event no rule can match is only applied to
        the state tables, and the two commonest, ``close`` (when no rule watches it) and a
        path open (open, openat, openat2, creat), straight from the raw record, without an
        Event; any other without a Context or a rule run. "Cannot match" is decided by
        :mod:`andon.rules.prefilter` (necessary conditions of every rule, from the record
        header and an open's path), so the alerts are the same with and without."""
        if not self.fast_paths:
            evs = decode_batch(recs, boot_offset)
            for i, big in (bigs or {}).items():
                evs[i] = decode_record(big, boot_offset)
            for ev in evs:
                counts.seen += 1
                if ev.flags & F_TRUNCATED:
                    counts.truncated += 1
                self._handle(ev, tracker)
                if count is not None and self.engine.alerts >= count:
                    return True
            return False
        engine = self.engine
        pf = engine.prefilter()
        n = len(recs)
        kinds = np.zeros(n, dtype=np.int8)  # _FULL, or how the record is applied without an Event
        keep = None  # the records that are not lean closes (``full``), where lean closes exist
        if not engine.evaluates("close"):
            lean = (recs["type"] == _SYSCALL) & (recs["nr"] == _NR_CLOSE)
            if bigs:
                lean[list(bigs)] = False
            if lean.any():
                kinds[lean] = _LEAN_CLOSE
                keep = ~lean
        full = recs if keep is None else recs[keep]
        fpos = np.arange(n) if keep is None else np.flatnonzero(keep)  # recs position of each full record
        may = pf.raw(full)
        any_l = may.any(axis=0).tolist()
        # path opens that carry their path: which can be applied raw, decided before the loop
        # (the prefilter's two stages are pure functions of the record)
        bits: dict[int, int] = {}  # full position -> header-stage bits, for the path and process stages
        if pf.has_proc:  # every record a rule evaluates (opens included, below)
            keys = (full["type"].astype(np.int64) << 16) | full["nr"]
            for key in np.unique(keys).tolist():
                name = _event_name(key)
                if name in pf.by_type and name not in _PATH_NAMES:
                    cols = np.flatnonzero(keys == key)
                    bits.update(zip(cols.tolist(), pf.header_bits(name, may, cols)))
        opens = _open_candidates(full, fpos, bigs)
        o_dirfd = o_flags = o_path = o_name = None
        if len(opens):
            ftyp_nr = full["nr"][opens]
            paths = _first_strings(full["data"][opens])
            dirfd, oflags = open_args(ftyp_nr, full["args"][opens])
            names = [_NAME_OF_NR[x] for x in ftyp_nr.tolist()]
            opens_l = opens.tolist()
            for name in set(names):
                if name in pf.by_type:
                    sel = [c for c, nm in zip(opens_l, names) if nm == name]
                    bits.update(zip(sel, pf.header_bits(name, may, np.asarray(sel, dtype=np.intp))))
            evaluated = {nm: engine.evaluates(nm) for nm in set(names)}
            rules_out = pf.path_rules_out
            okind = []
            for c, name, path in zip(opens_l, names, paths):
                if not evaluated[name]:
                    okind.append(_LEAN_OPEN)
                elif not any_l[c]:
                    okind.append(_LEAN_OPEN_SKIP)
                elif rules_out(name, path, bits[c]):
                    okind.append(_LEAN_OPEN_PATH)
                else:
                    okind.append(_FULL)
            okind_a = np.array(okind, dtype=np.int8)
            sel = okind_a != _FULL
            if sel.any():
                kinds[fpos[opens[sel]]] = okind_a[sel]
                o_dirfd, o_flags = dirfd[sel].tolist(), oflags[sel].tolist()
                o_path = [p for p, s in zip(paths, sel.tolist()) if s]
                o_name = [nm for nm, s in zip(names, sel.tolist()) if s]
        kinds_f = kinds[fpos]
        dec = kinds_f == _FULL
        evs = decode_batch(full if dec.all() else full[dec], boot_offset)
        if bigs:  # a record larger than a slot: its header is in recs, the whole of it here
            where = np.cumsum(kinds == _FULL) - 1
            for i, big in bigs.items():
                evs[int(where[i])] = decode_record(big, boot_offset)
        kinds_l = kinds.tolist()
        pair_l = None
        if o_path is not None or keep is not None:
            pid = recs["pid"]
            ret = recs["ret"]
            pid_l = pid.tolist()
            ts_l = (recs["ts"].astype(np.int64) + boot_offset).tolist()
            ret_l = ret.tolist()
            flags_l = recs["flags"].tolist()
            fd = recs["args"][:, 0].astype(np.uint32).astype(np.int32) if keep is not None else None
            fd_l = fd.tolist() if fd is not None else None
            if o_path is not None and fd is not None and n > 1:
                # a lean open whose next record is the same process closing the fd it got:
                # the pair is applied in one step, without building the fd entry
                nxt = slice(1, None)
                pair = ((kinds[:-1] >= _LEAN_OPEN) & (kinds[nxt] == _LEAN_CLOSE) & (pid[:-1] == pid[nxt])
                        & (ret[:-1] >= 0) & (fd[nxt] == ret[:-1]))
                if pair.any():
                    pair_l = pair.tolist() + [False]
        open_close = tracker.open_close_raw
        skipped: dict[str, int] = {}
        procs = tracker.table.procs
        handle, advance, close_raw, open_raw = self._handle, tracker.advance, tracker.close_raw, tracker.open_raw
        e = j = o = 0  # next decoded event, full record, lean open
        seen = truncated = 0  # added to ``counts`` at the end (also on an early return)
        try:
            for i in range(n):
                kd = kinds_l[i]
                if kd == _LEAN_CLOSE:
                    if close_raw(pid_l[i], ts_l[i], fd_l[i], ret_l[i]):
                        seen += 1
                        if flags_l[i] & F_TRUNCATED:
                            truncated += 1
                        continue
                    ev = decode_batch(recs[i : i + 1], boot_offset)[0]  # an unknown pid: the full path
                    k = -1
                elif kd == _FULL:
                    ev = evs[e]
                    e += 1
                    k = j
                    j += 1
                elif kd == _DONE:
                    continue
                else:  # a lean open
                    if pair_l is not None and pair_l[i] and open_close(pid_l[i], ts_l[i], ts_l[i + 1], ret_l[i],
                                                                       ret_l[i + 1]):
                        kinds_l[i + 1] = _DONE
                        seen += 2
                        if flags_l[i] & F_TRUNCATED:
                            truncated += 1
                        if flags_l[i + 1] & F_TRUNCATED:
                            truncated += 1
                        if kd != _LEAN_OPEN:
                            nm = o_name[o]  # type: ignore[index]
                            skipped[nm] = skipped.get(nm, 0) + 1
                        o += 1
                        j += 1
                        continue
                    if open_raw(pid_l[i], ts_l[i], ret_l[i], o_dirfd[o], o_flags[o], o_path[o],  # type: ignore[index]
                                kd == _LEAN_OPEN_PATH):
                        seen += 1
                        if flags_l[i] & F_TRUNCATED:
                            truncated += 1
                        if kd != _LEAN_OPEN:
                            nm = o_name[o]  # type: ignore[index]
                            skipped[nm] = skipped.get(nm, 0) + 1
                        o += 1
                        j += 1
                        continue
                    # an unknown pid, or an entry older than its /proc read: the full path,
                    # which decides on the event as it would have without the lean path
                    ev = decode_batch(recs[i : i + 1], boot_offset)[0]
                    o += 1
                    k = j
                    j += 1
                seen += 1
                if ev.flags & F_TRUNCATED:
                    truncated += 1
                name = ev.name
                if k < 0 or not engine.evaluates(name):
                    advance(ev)
                    continue
                if not any_l[k] or not self._may_match(ev, k, pf, name, may, bits, procs):
                    advance(ev)
                    skipped[name] = skipped.get(name, 0) + 1
                    continue
                handle(ev, tracker)
                if count is not None and engine.alerts >= count:
                    return True
        finally:
            counts.seen += seen
            counts.truncated += truncated
            for name, c in skipped.items():
                engine.skipped(name, c)
        return False

    @staticmethod
    def _may_match(ev: Event, k: int, pf: Any, name: str, may: np.ndarray, bits: dict[int, int],
                   procs: dict[int, Any]) -> bool:
        """The process and path stages of the prefilter for full record ``k`` (its header
        stage passed), both before the event is applied."""
        if ev.type != _SYSCALL or name not in pf.by_type:
            return True
        b = bits.get(k)
        if b is None:
            b = bits[k] = pf.header_bits(name, may, np.array([k], dtype=np.intp))[0]
        if pf.has_proc:
            # a syscall leaves its process where it was (in or out of a container), so
            # the process before apply is the one the rules would see
            p = procs.get(ev.pid)
            if p is not None:
                b = pf.proc_bits(name, b, bool(p.container))
                if not b:
                    return False
        if ev.nr not in PATH_NRS or not ev.strings:
            return True
        path = ev.strings[0]
        if not clean_path(path):
            return True
        if ev.ret >= 0:
            # fd.name is the table entry this event makes: only if apply will make it
            p = procs.get(ev.pid)
            if p is None or ev.ts < p.proc_ts:
                return True
        return pf.path_may(name, path, b)

    def run_live(self, *, duration: float | None = None, count: int | None = None) -> RunSummary:
        """Until SIGINT/SIGTERM, ``duration`` seconds or ``count`` alerts."""
        counts = Counts()
        types = self.kernel_types()
        src = LiveSource(SensorSettings(types=types, ring_bytes=self.config.ring_buffer_mb << 20))
        deadline = time.monotonic() + duration if duration else None
        old_hup = signal.signal(signal.SIGHUP, self._on_hup)
        tracker: Tracker | None = None
        try:
            with StopFlag() as stop:
                src.start()
                tracker = Tracker(boot_offset=src.boot_offset)
                tracker.seed()
                self.say(
                    f"ready: {len(self.engine.rules)} rules from {len(self.paths)} file(s), "
                    f"{len(types)} event types on ({src.syscall_hook or 'process events only'})"
                )
                for timeout in polls(stop, deadline):
                    got = 0
                    # one batch per ~4096 records, records larger than a slot (execs) inside
                    # it, as in replay: the prefilter's cost is per batch, not per event
                    for arr, bigs in _runs(src.read_raw(timeout)):
                        got += len(arr)
                        if self._handle_batch(arr, tracker, src.boot_offset, counts, count, bigs):
                            break
                    if count is not None and self.engine.alerts >= count:
                        break
                    if self.reload_due():
                        self.reload(src.set_types)
                    self.channels.tick()  # rate-limit notices due
                    if 0 < got < _SMALL_READ:
                        # a trickle: let it gather for a moment rather than pay the per-batch
                        # cost (~0.3-0.7 ms) for a handful of events; alerts wait at most this
                        time.sleep(_GATHER_S)
        finally:
            st = src.stats()
            src.close()
            if tracker is not None:
                tracker.close()
                self._container_counts(tracker)
            signal.signal(signal.SIGHUP, old_hup)
            self.summary.events = counts.seen
            self.summary.lost = st["drops"]
            self.summary.truncated = st["truncated"]
            self._finish(counts)
        return self.summary

    def run_replay(self, path: str | Path, *, count: int | None = None) -> RunSummary:
        counts = Counts()
        reader = CaptureReader(path)
        missing = set(self.engine.evttypes()) - set(reader.header.types) - {"execveat"}
        if missing and set(reader.header.types) != set(ALL_TYPES):
            self.say(
                "this capture did not record every type the rules watch ("
                + ", ".join(sorted(missing)[:8]) + (" ..." if len(missing) > 8 else "")
                + "): those rules cannot fire on it"
            )
        tracker = Tracker(boot_offset=reader.header.boot_offset, snapshot=reader.header.state, offline=True)
        tracker.follow_capture(reader)  # container records, where the capture learnt them
        try:
            with reader, StopFlag() as stop:
                self.say(f"ready: {len(self.engine.rules)} rules, replaying {path}")
                off = reader.header.boot_offset
                for arr, bigs in _runs(reader.batches()):
                    if stop.stop:
                        break
                    if self._handle_batch(arr, tracker, off, counts, count, bigs):
                        break
        finally:
            tracker.close()
            self._container_counts(tracker)
            self.summary.events = counts.seen
            self.summary.truncated = counts.truncated
            self._finish(counts)
        return self.summary

    def _container_counts(self, tracker: Tracker) -> None:
        st = tracker.containers.stats
        self.summary.container_waits = st["waits"]
        self.summary.container_wait_expired = st["wait_expired"]
        self.summary.container_lookup_failures = st["failed"] + st["watch_failures"]

    def _finish(self, counts: Counts) -> None:
        self.summary.seconds = counts.elapsed
        self.summary.alerts = sum(self.summary.by_rule.values())
        self.summary.rule_errors = self.engine.errors()
        self.channels.close()


_RUN = 4096
_SMALL_READ = 1024  # records: a read smaller than this is a trickle (run_live)
_GATHER_S = 0.01  # ... after which the agent waits this long before the next read


def _runs(items: Any) -> Any:
    """``(records, bigs)`` of about ``_RUN`` records from ``(array, None) | (None, bytes)``
    items: a record larger than a slot gets a slot holding its header (what the prefilter
    reads) and its whole bytes in ``bigs`` by position, so batches stay long."""
    parts: list[np.ndarray] = []
    bigs: dict[int, bytes] = {}
    n = 0
    for arr, big in items:
        if arr is None:
            arr = np.frombuffer(big[:REC_SMALL].ljust(REC_SMALL, b"\0"), dtype=EVENT_DTYPE)
            bigs[n] = big
        parts.append(arr)
        n += len(arr)
        if n >= _RUN:
            yield _join(parts, n), bigs
            parts, bigs, n = [], {}, 0
    if parts:
        yield _join(parts, n), bigs


def _join(parts: list[np.ndarray], n: int) -> np.ndarray:
    """``np.concatenate(parts)``, by slice copies into one array: concatenate works out a
    common dtype for structured arrays on every call, which costs more than the copy."""
    if len(parts) == 1:
        return parts[0]
    out = np.empty(n, dtype=EVENT_DTYPE)
    pos = 0
    for p in parts:
        out[pos : pos + len(p)] = p
        pos += len(p)
    return out


def describe(summary: RunSummary, channel_stats: dict[str, Any] | None = None) -> str:
    s = summary
    parts = [
        f"{s.events} events in {s.seconds:.1f}s",
        f"{s.alerts} alerts",
        f"{s.lost} lost",
        f"{s.truncated} truncated",
    ]
    if s.rule_errors:
        parts.append(f"{s.rule_errors} rule evaluation errors")
    if s.container_waits:
        parts.append(f"{s.container_waits} waits for container metadata ({s.container_wait_expired} expired)")
    if s.container_lookup_failures:
        parts.append(f"{s.container_lookup_failures} container runtime failures")
    if s.reloads or s.reload_failures:
        parts.append(f"{s.reloads} reloads ({s.reload_failures} failed)")
    suppressed = 0
    if channel_stats:
        suppressed = sum(v.get("suppressed", 0) for v in channel_stats.get("rules", {}).values())
    if suppressed:
        parts.append(f"{suppressed} alerts suppressed by rate limits")
    return ", ".join(parts)


__all__ = ["Agent", "AgentConfig", "RulesLoadFailed", "RunSummary", "describe", "load_ruleset", "AndonError"]
