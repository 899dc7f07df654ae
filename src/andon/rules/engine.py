"""The rule engine: each event against the rules indexed under its type.

Falco's semantics: rules are tried in the order they were loaded; with
``rule_matching: first`` (Falco's default) the first rule whose condition holds raises the
only alert for that event, with ``all`` every matching rule alerts. Rules are indexed by
event type (``Filter.evttypes``), so an ``openat`` is only tried against rules that can
match an ``openat``; a rule whose condition does not pin the type is tried on every event
(Falco warns about those; the loader does too).

A condition that fails at run time (a bug, or a value we could not decode) never stops
the engine: the error is counted per rule and shown in the closing counts.
"""

from __future__ import annotations

import logging
import re
import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

log = logging.getLogger("andon.rules")

RULE_MATCHING = ("first", "all")


# The fields Falco's container plugin marks "suggested": with Falco's default
# ``append_output: [{suggested_output: true}]`` every syscall alert ends with them.
SUGGESTED_FIELDS = ("container.id", "container.name")


@dataclass(frozen=True)
class AppendOutput:
    """One ``append_output`` entry of the config, as Falco's: which rules (all of ``rule``,
    ``source``, ``tags`` that are set must hold) get ``extra_output`` appended to their
    output text, the ``suggested_output`` fields (``container_id=%container.id ...``), and
    ``extra_fields`` in the JSON ``output_fields`` only."""

    rule: str | None = None
    source: str | None = None
    tags: tuple[str, ...] = ()
    extra_output: str = ""
    suggested_output: bool = False
    extra_fields: tuple[str, ...] = ()

    def matches(self, rule: Any) -> bool:
        if self.rule is not None and rule.name != self.rule:
            return False
        if self.source is not None and (rule.source or "syscall") != self.source:
            return False
        return set(self.tags) <= set(rule.tags or ())

    def text(self, output: str = "") -> str:
        """What to append to ``output``. A suggested field the output already prints is not
        repeated (andon's own rules print container.id themselves)."""
        parts = [self.extra_output] if self.extra_output else []
        if self.suggested_output:
            parts += [f"{f.replace('.', '_')}=%{f}" for f in SUGGESTED_FIELDS
                      if not re.search(rf"%\(?{re.escape(f)}(?![\w.\[])", output)]
        return " ".join(parts)


DEFAULT_APPEND = (AppendOutput(suggested_output=True),)


@dataclass(frozen=True)
class EngineSettings:
    rule_matching: str = "first"
    hostname: str = field(default_factory=socket.gethostname)
    source: str = "syscall"
    append_output: tuple[AppendOutput, ...] = DEFAULT_APPEND

    def __post_init__(self) -> None:
        if self.rule_matching not in RULE_MATCHING:
            raise UsageError(f"rule_matching must be one of {', '.join(RULE_MATCHING)}, not {self.rule_matching!r}")


@dataclass
class RuleCounts:
    evaluated: int = 0
    matched: int = 0
    errors: int = 0


class RuleEngine:
    """Runs the enabled rules of one source (``syscall``) of a loaded RuleSet."""

    def __init__(self, ruleset: Any, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.ruleset = ruleset
        self.rules = [r for r in ruleset.rules if r.enabled and r.source == self.settings.source]
        self.counts: dict[str, RuleCounts] = {r.name: RuleCounts() for r in self.rules}
        self.first = self.settings.rule_matching == "first"
        by_type: dict[str, list[Any]] = defaultdict(list)
        self._any_type: list[Any] = []
        for r in self.rules:
            types = r.filter.evttypes
            if types is None:
                self._any_type.append(r)
            else:
                for t in types:
                    by_type[t].append(r)
        # keep file order inside each type, with the any-type rules merged in place
        order = {r.name: i for i, r in enumerate(self.rules)}
        self._index: dict[str, tuple[Any, ...]] = {}
        for t in set(by_type) | set(self._all_types()):
            rules = by_type.get(t, []) + self._any_type
            rules.sort(key=lambda r: order[r.name])
            if rules:
                self._index[t] = tuple(rules)
        self._fallback = tuple(self._any_type)
        self._prefilter: Any = None
        self.alerts = 0
        self._formats = {r.name: self._format_for(r) for r in self.rules}

    def _format_for(self, rule: Any) -> Any:
        """The rule's output with every matching append_output entry applied, or None
        (then the loader's ``rule.output_fmt`` is used as it is)."""
        extra = [a for a in self.settings.append_output if a.matches(rule)]
        text = " ".join(t for t in (a.text(rule.output) for a in extra) if t)
        fields = [f for a in extra for f in a.extra_fields]
        if not text and not fields:
            return None
        from .outputs import OutputFormat

        return OutputFormat.parse(rule.output + (" " + text if text else ""), extra_fields=fields)

    @staticmethod
    def _all_types() -> Iterable[str]:
        from ..events.syscalls import ALL_TYPES

        return ALL_TYPES

    def evttypes(self) -> frozenset[str]:
        """The event types the kernel must send for these rules."""
        if self._any_type:
            return frozenset(self._all_types())
        out: set[str] = set()
        for r in self.rules:
            out |= r.filter.evttypes
        return frozenset(out)

    def prefilter(self) -> Any:
        """The rules' necessary conditions on raw records (:mod:`andon.rules.prefilter`),
        made on first use."""
        if self._prefilter is None:
            from .prefilter import Prefilter

            self._prefilter = Prefilter(self.rules, self._index)
        return self._prefilter

    def skipped(self, evtype: str, n: int = 1) -> None:
        """``n`` events of ``evtype`` that no rule can match were not evaluated: count them
        as evaluated, as ``process`` would have (every rule of the type tried, none hit)."""
        for r in self._index.get(evtype, self._fallback):
            self.counts[r.name].evaluated += n

    def evaluates(self, evtype: str) -> bool:
        """Whether ``process`` tries any rule on an event of ``evtype`` (else an event of
        that type only matters to the state tables)."""
        return bool(self._index.get(evtype, self._fallback))

    def rules_for(self, evtype: str) -> tuple[Any, ...]:
        return self._index.get(evtype, self._fallback)

    def process(self, ev: Any, ctx: Any) -> list[Any]:
        """The alerts this event raises (at most one with rule_matching: first)."""
        rules = self._index.get(ev.name, self._fallback)
        if not rules:
            return []
        out = []
        for r in rules:
            c = self.counts[r.name]
            c.evaluated += 1
            try:
                hit = r.filter(ev, ctx)
            except Exception as e:  # a bug must not stop the agent: count it, say it once
                c.errors += 1
                if c.errors == 1:
                    log.warning("rule %r failed on a %s event: %s: %s", r.name, ev.name, type(e).__name__, e)
                continue
            if hit:
                c.matched += 1
                out.append(self._alert(r, ev, ctx))
                if self.first:
                    break
        self.alerts += len(out)
        return out

    def _alert(self, rule: Any, ev: Any, ctx: Any) -> Any:
        from .outputs import make_alert

        return make_alert(rule, ev, ctx, self.settings.hostname, self._formats.get(rule.name))

    def errors(self) -> int:
        return sum(c.errors for c in self.counts.values())
