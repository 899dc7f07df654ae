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
from ..events.schema import Event
from ..events.syscalls import ALL_TYPES
from ..rules.engine import EngineSettings, RuleEngine
from .config import AgentConfig
from .enrich import Tracker
from .stream import Counts, StopFlag, kernel_types, polls

log = logging.getLogger("andon.agent")


class RulesLoadFailed(RuleError):
    """Rules files with errors; ``result`` holds every problem."""

    def __init__(self, result: Any, text: str) -> None:
        self.result = result
        self.text = text
        n = len(result.errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in the rules files; nothing was started")


@dataclass
class RunSummary:
    events: int = 0
    alerts: int = 0
    lost: int = 0
    truncated: int = 0
    rule_errors: int = 0
    reloads: int = 0
    reload_failures: int = 0
    seconds: float = 0.0
    by_rule: dict[str, int] = field(default_factory=dict)


def problems_text(result: Any) -> str:
    """Every problem of a LoadResult, as the loader renders it."""
    render = getattr(result, "render_text", None) or getattr(result, "to_text", None)
    if render is not None:
        return render()
    return "\n".join(str(p) for p in [*result.errors, *result.warnings])


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
        raise RulesLoadFailed(result, problems_text(result))
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
        self._mtimes = self._stat()
        self._hup = False
        self._last_watch = time.monotonic()

    # -- what to switch on ---------------------------------------------------------------
    def kernel_types(self) -> frozenset[str]:
        return kernel_types(self.engine.evttypes() | {"open", "close"})

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
            on_types(kernel_types(engine.evttypes() | {"open", "close"}))
        self.ruleset, self.engine = ruleset, engine
        self.summary.reloads += 1
        self.say(f"reloaded: {len(engine.rules)} rules, {len(result.warnings)} warnings")
        return True

    # -- the pipeline ------------------------------------------------------------------------
    def _handle(self, ev: Event, tracker: Tracker) -> None:
        ctx = tracker(ev)
        for alert in self.engine.process(ev, ctx):
            self.summary.by_rule[alert.rule] = self.summary.by_rule.get(alert.rule, 0) + 1
            self.channels.emit(alert)

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
                    for ev in src.read(timeout, None, counts):
                        self._handle(ev, tracker)
                    if count is not None and self.engine.alerts >= count:
                        break
                    if self.reload_due():
                        self.reload(src.set_types)
                    tick = getattr(self.channels, "tick", None)
                    if tick is not None:
                        tick()
        finally:
            st = src.stats()
            src.close()
            if tracker is not None:
                tracker.close()
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
        try:
            with reader, StopFlag() as stop:
                self.say(f"ready: {len(self.engine.rules)} rules, replaying {path}")
                for ev in reader.events():
                    if stop.stop:
                        break
                    counts.seen += 1
                    if ev.truncated:
                        counts.truncated += 1
                    self._handle(ev, tracker)
                    if count is not None and self.engine.alerts >= count:
                        break
        finally:
            tracker.close()
            self.summary.events = counts.seen
            self.summary.truncated = counts.truncated
            self._finish(counts)
        return self.summary

    def _finish(self, counts: Counts) -> None:
        self.summary.seconds = counts.elapsed
        self.summary.alerts = sum(self.summary.by_rule.values())
        self.summary.rule_errors = self.engine.errors()
        self.channels.close()


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
    if s.reloads or s.reload_failures:
        parts.append(f"{s.reloads} reloads ({s.reload_failures} failed)")
    suppressed = 0
    if channel_stats:
        suppressed = sum(v.get("suppressed", 0) for v in channel_stats.get("rules", {}).values())
    if suppressed:
        parts.append(f"{suppressed} alerts suppressed by rate limits")
    return ", ".join(parts)


__all__ = ["Agent", "AgentConfig", "RulesLoadFailed", "RunSummary", "describe", "load_ruleset", "AndonError"]
