"""The engine's own logic: event-type index, load order, rule_matching, errors counted.

Rules here are plain objects with a hand-made filter, so the test holds the engine alone;
the loader/compiler tests cover real conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from andon.errors import UsageError
from andon.rules.engine import EngineSettings, RuleEngine


class Flt:
    def __init__(self, types, pred):
        self.evttypes = None if types is None else frozenset(types)
        self.pred = pred

    def __call__(self, ev, ctx):
        return self.pred(ev)


@dataclass
class R:
    name: str
    filter: Flt
    enabled: bool = True
    source: str = "syscall"
    tags: tuple = ()
    output: str = ""


@dataclass
class RS:
    rules: list = field(default_factory=list)


class Engine(RuleEngine):
    def _alert(self, rule, ev, ctx):
        return (rule.name, ev.name)


def ev(name, **kw):
    return SimpleNamespace(name=name, **kw)


def make(rules, matching="first"):
    return Engine(RS(rules), EngineSettings(rule_matching=matching, hostname="h", append_output=()))


def test_only_rules_indexed_under_the_type_are_tried():
    calls = []
    a = R("a", Flt({"openat"}, lambda e: calls.append("a") or True))
    b = R("b", Flt({"connect"}, lambda e: calls.append("b") or True))
    eng = make([a, b])
    assert eng.process(ev("connect"), None) == [("b", "connect")]
    assert calls == ["b"]
    assert eng.process(ev("mkdir"), None) == []
    assert eng.counts["a"].evaluated == 0 and eng.counts["b"].evaluated == 1


def test_first_match_in_load_order_wins_and_all_gives_every_match():
    rules = [R("r1", Flt({"openat"}, lambda e: False)), R("r2", Flt({"openat", "open"}, lambda e: True)),
             R("r3", Flt(None, lambda e: True))]
    assert make(rules).process(ev("openat"), None) == [("r2", "openat")]
    assert make(rules, "all").process(ev("openat"), None) == [("r2", "openat"), ("r3", "openat")]
    # r3 pins no type: it is tried on every type, in its place in the order
    assert make(rules).process(ev("mkdir"), None) == [("r3", "mkdir")]


def test_any_type_rule_before_typed_rules_keeps_its_place():
    rules = [R("any", Flt(None, lambda e: e.name == "openat")), R("typed", Flt({"openat"}, lambda e: True))]
    assert make(rules).process(ev("openat"), None) == [("any", "openat")]


def test_disabled_and_other_source_rules_do_not_run():
    rules = [R("off", Flt({"openat"}, lambda e: True), enabled=False),
             R("k8s", Flt({"openat"}, lambda e: True), source="k8s_audit"),
             R("on", Flt({"openat"}, lambda e: True))]
    eng = make(rules)
    assert [r.name for r in eng.rules] == ["on"]
    assert eng.process(ev("openat"), None) == [("on", "openat")]


def test_evttypes_is_the_union_or_everything_with_an_untyped_rule():
    eng = make([R("a", Flt({"openat"}, bool)), R("b", Flt({"connect", "socket"}, bool))])
    assert eng.evttypes() == {"openat", "connect", "socket"}
    eng = make([R("a", Flt({"openat"}, bool)), R("b", Flt(None, bool))])
    assert "mkdir" in eng.evttypes() and "execve" in eng.evttypes()


def test_a_failing_condition_is_counted_and_the_next_rule_still_runs():
    def boom(e):
        raise KeyError("x")

    eng = make([R("bad", Flt({"openat"}, boom)), R("good", Flt({"openat"}, lambda e: True))])
    assert eng.process(ev("openat"), None) == [("good", "openat")]
    assert eng.process(ev("openat"), None) == [("good", "openat")]
    assert eng.counts["bad"].errors == 2 and eng.errors() == 2
    assert eng.counts["good"].matched == 2 and eng.alerts == 2


def test_rule_matching_is_checked():
    with pytest.raises(UsageError, match="rule_matching"):
        EngineSettings(rule_matching="some")


def test_append_output_matches_rule_source_and_tags():
    from andon.rules.engine import AppendOutput

    r = R("x", Flt({"openat"}, bool), tags=("a", "b"))
    assert AppendOutput(tags=("a",)).matches(r) and not AppendOutput(tags=("a", "c")).matches(r)
    assert AppendOutput(rule="x", source="syscall").matches(r) and not AppendOutput(rule="y").matches(r)
    assert AppendOutput(extra_output="on %evt.type", suggested_output=True).text() == (
        "on %evt.type container_id=%container.id container_name=%container.name")

    # a field the rule prints itself is not appended again; a longer field name is not it
    a = AppendOutput(suggested_output=True)
    assert a.text("x=%container.id y=%container.name") == ""
    assert a.text("x=%container.id_other") == "container_id=%container.id container_name=%container.name"
    assert a.text("n=%container.name") == "container_id=%container.id"
