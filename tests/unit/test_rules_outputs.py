"""Rule outputs: output strings, priorities, Falco's text line and JSON alert.

The field registry here is a fake with the contract of ``andon.rules.fields`` so these tests
pin down the formatting alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from andon.errors import FieldArgError, RuleError, RuleSyntaxError, UnknownFieldError
from andon.rules.outputs import (
    Alert,
    OutputFormat,
    Priority,
    dump_json,
    internal_alert,
    make_alert,
    time_iso8601,
    time_json,
    time_text,
)
from andon.rules.types import FieldType, Multi

TS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


@dataclass
class Ev:
    ts: int = TS
    values: dict[str, Any] = field(default_factory=dict)


class Extractor:
    def __init__(self, name: str, arg: str | None, type_: FieldType) -> None:
        self.name, self.arg, self.type = name, arg, type_

    def __call__(self, ev: Ev, ctx: Any) -> Any:
        if self.name == "proc.boom":
            raise RuntimeError("extractor bug")
        key = self.name if self.arg is None else f"{self.name}[{self.arg}]"
        return ev.values.get(key)


class FakeFields:
    """name -> (type, arg: 'none' | 'required' | 'int')."""

    table = {
        "proc.name": (FieldType.CHARBUF, "none"),
        "proc.pid": (FieldType.INT64, "none"),
        "proc.cmdline": (FieldType.CHARBUF, "none"),
        "proc.aname": (FieldType.CHARBUF, "int"),
        "proc.boom": (FieldType.CHARBUF, "none"),
        "fd.name": (FieldType.CHARBUF, "none"),
        "fd.port": (FieldType.PORT, "none"),
        "evt.arg": (FieldType.CHARBUF, "required"),
        "user.name": (FieldType.CHARBUF, "none"),
        "container.id": (FieldType.CHARBUF, "none"),
    }

    def __init__(self) -> None:
        self.lookups: list[tuple[str, str | None]] = []

    def lookup(self, name: str, arg: str | None) -> Extractor:
        self.lookups.append((name, arg))
        if name not in self.table:
            raise UnknownFieldError(f"unknown field {name!r}")
        t, policy = self.table[name]
        if policy == "none" and arg is not None:
            raise FieldArgError(f"{name} takes no argument")
        if policy in ("required", "int") and arg is None:
            raise FieldArgError(f"{name} needs an argument")
        if policy == "int" and not arg.isdigit():  # type: ignore[union-attr]
            raise FieldArgError(f"{name}: the argument must be a number, not {arg!r}")
        return Extractor(name, arg, t)

    @staticmethod
    def render(v: Any, t: FieldType) -> str:
        if isinstance(v, Multi):
            return ",".join(str(x) for x in v)
        return str(v)

    @staticmethod
    def json_value(v: Any, t: FieldType) -> Any:
        if isinstance(v, Multi):
            return list(v)
        return v


F = FakeFields()


def fmt(text: str, **values: Any) -> tuple[str, dict[str, Any]]:
    return OutputFormat.parse(text, F).format(Ev(values=values), None)


# -- output strings ----------------------------------------------------------------------------


def test_plain_field_and_literal_text():
    assert fmt("File opened by %proc.name (pid=%proc.pid)", **{"proc.name": "cat", "proc.pid": 42}) == (
        "File opened by cat (pid=42)",
        {"proc.name": "cat", "proc.pid": 42},
    )


def test_field_with_argument_keeps_the_argument_in_the_key():
    text, of = fmt("a2=%proc.aname[2] fd=%evt.arg[fd]", **{"proc.aname[2]": "bash", "evt.arg[fd]": "3"})
    assert text == "a2=bash fd=3"
    assert of == {"proc.aname[2]": "bash", "evt.arg[fd]": "3"}


def test_quoted_field_argument():
    text, of = fmt('x=%evt.arg["fd"]', **{"evt.arg[fd]": "5"})
    assert (text, of) == ("x=5", {"evt.arg[fd]": "5"})


def test_parenthesized_field_forms():
    text, of = fmt("%(proc.name)d and %(proc.aname[1])x", **{"proc.name": "sshd", "proc.aname[1]": "init"})
    assert text == "sshdd and initx"
    assert of == {"proc.name": "sshd", "proc.aname[1]": "init"}


def test_missing_values_print_NA_and_are_null_in_output_fields():
    text, of = fmt("user=%user.name port=%fd.port cid=%container.id", **{"user.name": "root", "fd.port": Multi()})
    assert text == "user=root port=<NA> cid=<NA>"
    assert of == {"user.name": "root", "fd.port": None, "container.id": None}


def test_multi_value_uses_the_registry_rendering():
    text, of = fmt("port=%fd.port", **{"fd.port": Multi((80, 443))})
    assert (text, of) == ("port=80,443", {"fd.port": [80, 443]})


def test_longest_known_prefix_wins_like_libs():
    # libs tries shorter and shorter names until one is a field: the rest is literal text
    text, of = fmt("%proc.namefoo %proc.name_x.", **{"proc.name": "cat"})
    assert text == "catfoo cat_x."
    assert of == {"proc.name": "cat"}


def test_field_width_pads_and_cuts():
    text, of = fmt("[%8proc.name][%2proc.name][%6user.name]", **{"proc.name": "bash"})
    assert text == "[bash    ][ba][<NA>  ]"
    assert of == {"proc.name": "bash", "user.name": None}


def test_leading_star_is_dropped():
    assert fmt("*x %proc.name", **{"proc.name": "a"})[0] == "x a"


def test_field_at_start_and_end_and_adjacent():
    assert fmt("%proc.name%proc.pid", **{"proc.name": "a", "proc.pid": 1})[0] == "a1"


def test_output_without_fields():
    f = OutputFormat.parse("nothing to see", F)
    assert f.format(Ev(), None) == ("nothing to see", {})
    assert f.fields == ()


def test_repeated_field_is_one_key():
    f = OutputFormat.parse("%proc.name %proc.name %proc.pid", F)
    assert f.fields == ("proc.name", "proc.pid")


def test_extractor_exception_prints_NA_and_is_counted():
    f = OutputFormat.parse("x=%proc.boom", F)
    assert f.format(Ev(), None) == ("x=<NA>", {"proc.boom": None})
    assert f.errors == 1


@pytest.mark.parametrize(
    "text, cls, pos, words",
    [
        ("a %proc.nope b", UnknownFieldError, 2, "proc.nope"),
        ("x %evt.arg y", FieldArgError, 2, "needs an argument"),
        ("x %proc.name[3] y", FieldArgError, 2, "takes no argument"),
        ("x %proc.aname[abc]", FieldArgError, 2, "must be a number"),
        ("100%", RuleSyntaxError, 3, "end with a '%'"),
        ("50%% off", RuleSyntaxError, 2, "'%%' is not an escape"),
        ("50% off", RuleSyntaxError, 2, "must start a field"),
        ("%toupper(proc.name)", RuleSyntaxError, 0, "transformer toupper()"),
        ("%(proc.name", RuleSyntaxError, 0, "closing ')'"),
        ("%proc.aname[2", RuleSyntaxError, 0, "']'"),
        ("%12", RuleSyntaxError, 0, "field width"),
    ],
)
def test_bad_outputs(text, cls, pos, words):
    with pytest.raises(cls) as ei:
        OutputFormat.parse(text, F)
    assert ei.value.pos == pos
    assert words in ei.value.message
    assert isinstance(ei.value, RuleError)


def test_every_problem_is_collected_with_its_offset():
    text = "a=%proc.nope b=%proc.name c=%fd.nope[1] d=%evt.arg"
    with pytest.raises(UnknownFieldError) as ei:
        OutputFormat.parse(text, F)
    probs = ei.value.problems
    assert [(type(p), p.pos) for p in probs] == [
        (UnknownFieldError, 2),
        (UnknownFieldError, 28),
        (FieldArgError, 42),
    ]
    assert "and 2 more problems" in ei.value.message
    assert text[28:].startswith("%fd.nope") and text[42:] == "%evt.arg"


# -- priorities --------------------------------------------------------------------------------


def test_priority_names_order_and_parse():
    assert [p.display for p in Priority] == [
        "Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug",
    ]
    assert [int(p) for p in Priority] == list(range(8))  # the syslog severities
    assert Priority.parse("WARNING") is Priority.WARNING
    assert Priority.parse("info") is Priority.parse("Informational") is Priority.INFORMATIONAL
    assert Priority.parse(" critical ") is Priority.CRITICAL
    assert Priority.ERROR.at_least(Priority.WARNING)
    assert Priority.WARNING.at_least(Priority.WARNING)
    assert not Priority.NOTICE.at_least(Priority.WARNING)
    assert str(Priority.NOTICE) == "Notice"
    with pytest.raises(RuleError, match="unknown priority 'loud'"):
        Priority.parse("loud")
    with pytest.raises(ValueError):  # config code catches ValueError
        Priority.parse("warn")


# -- time strings ------------------------------------------------------------------------------


@pytest.fixture
def tz_plus2(monkeypatch):
    monkeypatch.setenv("TZ", "UTC-2")  # POSIX: two hours east of UTC
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_time_strings(tz_plus2):
    assert time_json(TS) == "2023-11-14T22:13:20.123456789Z"
    assert time_iso8601(TS) == "2023-11-14T22:13:20.123456789+0000"
    assert time_text(TS) == "00:13:20.123456789"  # local time, like Falco's evt.time
    assert time_json(1_000_000_000 * 86400 + 5) == "1970-01-02T00:00:00.000000005Z"


# -- alerts ------------------------------------------------------------------------------------


@dataclass
class Rule:
    name: str = "Write below etc"
    output: str = "File below /etc opened for writing (user=%user.name command=%proc.cmdline file=%fd.name)"
    priority: Any = Priority.ERROR
    tags: tuple[str, ...] = ("filesystem", "mitre_persistence", "filesystem")
    source: str = "syscall"
    output_fmt: Any = None


def alert() -> Alert:
    rule = Rule()
    rule.output_fmt = OutputFormat.parse(rule.output, F)
    ev = Ev(values={"user.name": "root", "proc.cmdline": 'touch "/etc/x"', "fd.name": "/etc/x"})
    return make_alert(rule, ev, None, "host1")


def test_make_alert():
    a = alert()
    assert a.time == TS
    assert a.rule == "Write below etc"
    assert a.priority is Priority.ERROR
    assert a.source == "syscall"
    assert a.hostname == "host1"
    assert a.output == 'File below /etc opened for writing (user=root command=touch "/etc/x" file=/etc/x)'
    assert a.output_fields == {"user.name": "root", "proc.cmdline": 'touch "/etc/x"', "fd.name": "/etc/x"}


def test_make_alert_parses_priority_names_from_a_plain_rule():
    rule = Rule(priority="warning")
    rule.output_fmt = OutputFormat.parse("x %proc.name", F)
    assert make_alert(rule, Ev(), None, "h").priority is Priority.WARNING


def test_json_alert_exact(tz_plus2):
    line = alert().to_json_line()
    assert line == (
        '{"hostname":"host1",'
        '"output":"00:13:20.123456789: Error File below /etc opened for writing '
        '(user=root command=touch \\"/etc/x\\" file=/etc/x)",'
        '"output_fields":{"evt.time":1700000000123456789,"fd.name":"/etc/x",'
        '"proc.cmdline":"touch \\"/etc/x\\"","user.name":"root"},'
        '"priority":"Error","rule":"Write below etc","source":"syscall",'
        '"tags":["filesystem","mitre_persistence"],'
        '"time":"2023-11-14T22:13:20.123456789Z"}'
    )
    d = json.loads(line)
    assert list(d) == ["hostname", "output", "output_fields", "priority", "rule", "source", "tags", "time"]


def test_json_alert_options():
    a = alert()
    d = a.to_json(iso8601=True, include_output=False, include_tags=False, include_message=True)
    assert set(d) == {"hostname", "message", "output_fields", "priority", "rule", "source", "time"}
    assert d["message"] == a.output
    assert d["output_fields"]["evt.time.iso8601"] == TS
    assert "evt.time" not in d["output_fields"]
    d = a.to_json(iso8601=True)
    assert d["output"].startswith("2023-11-14T22:13:20.123456789+0000: Error File below")
    d = a.to_json(include_output_fields=False)
    assert "output_fields" not in d
    assert a.output_fields == {"user.name": "root", "proc.cmdline": 'touch "/etc/x"', "fd.name": "/etc/x"}


def test_text_line(tz_plus2):
    a = alert()
    # Falco 0.44 encodes the plain-text line like a JSON string: the quotes come out escaped
    assert a.text_line() == (
        '00:13:20.123456789: Error File below /etc opened for writing '
        '(user=root command=touch \\"/etc/x\\" file=/etc/x)'
    )
    assert a.text_line(iso8601=True).startswith("2023-11-14T22:13:20.123456789+0000: Error File below")


def test_text_line_escapes_control_characters(tz_plus2):
    a = Alert(TS, "r", Priority.WARNING, "syscall", "h", "a\nb\tc\x01d\\e")
    assert a.text_line() == "00:13:20.123456789: Warning a\\nb\\tc\\u0001d\\\\e"


def test_invalid_utf8_becomes_replacement_character():
    bad = b"ab\xffcd".decode("utf-8", "surrogateescape")
    a = Alert(TS, "r", Priority.WARNING, "syscall", "h", bad, {"proc.name": bad})
    d = json.loads(a.to_json_line())
    assert d["output_fields"]["proc.name"] == "ab\ufffdcd"
    assert d["output"].endswith("ab\ufffdcd")


def test_internal_notice_shape(tz_plus2):
    n = internal_alert(TS, Priority.WARNING, "andon internal: rate limit", "3 alerts suppressed", {"n": 3, "rule": "x"}, "h")
    assert n.text_line() == '00:13:20.123456789: Warning 3 alerts suppressed (n=3 rule="x")'
    assert dump_json(n.to_json()) == (
        '{"hostname":"h","output":"3 alerts suppressed","output_fields":{"n":3,"rule":"x"},'
        '"priority":"Warning","rule":"andon internal: rate limit","source":"internal",'
        '"time":"2023-11-14T22:13:20.123456789Z"}'
    )


# -- with the real loader, fields and engine ---------------------------------------------------


RULES = """
- rule: Write below etc
  desc: a file below /etc opened for writing
  condition: evt.type in (open, openat) and evt.is_open_write=true and fd.name startswith /etc/
  output: >
    File below /etc opened for writing (user=%user.name command=%proc.cmdline
    pid=%proc.pid file=%fd.name parent=%proc.pname gparent=%proc.aname[2] container=%container.id
    flags=%evt.arg.flags)
  priority: ERROR
  tags: [filesystem, mitre_persistence, host]
"""


def test_real_pipeline_alert(tz_plus2):
    import os

    from andon.app.enrich import Tracker
    from andon.events.schema import Event, EventType, ExecInfo
    from andon.events.syscalls import BY_NAME
    from andon.rules.engine import EngineSettings, RuleEngine
    from andon.rules.loader import load_rules

    sec = 1_000_000_000
    boot = 1_700_000_000 * sec
    result = load_rules([("t.yaml", RULES)])
    assert not result.errors, result.errors
    engine = RuleEngine(result.ruleset, EngineSettings(rule_matching="first", hostname="node1"))
    tr = Tracker(boot_offset=boot, offline=True)

    def exec_(pid: int, ppid: int, argv: list[str], ts: int) -> None:
        x = ExecInfo(
            cap_effective=0, cap_permitted=0, start_time=pid * sec, exe_ctime=boot, exe_mtime=boot, ppid=ppid,
            ruid=0, rgid=0, loginuid=0xFFFFFFFF, tty=0, sid=pid, vpid=pid, pidns=4026531836, mntns=1, netns=1,
            exe_flags=0, exepath=argv[0], filename=argv[0], cwd="/root", cgroup="", cgroup2="", argv=argv,
        )  # fmt: skip
        tr(Event(ts, EventType.EXEC, 0, pid, pid, 0, 0, 77, 0, (pid, 0, 0, 0, 0, 0), os.path.basename(argv[0]), exec=x))

    exec_(100, 1, ["/usr/sbin/sshd"], TS - 3000)
    exec_(200, 100, ["/bin/bash"], TS - 2000)
    exec_(300, 200, ["/usr/bin/tee", "-a", "/etc/hosts"], TS - 1000)
    flags = 0o1 | 0o100 | 0o2000  # O_WRONLY|O_CREAT|O_APPEND
    ev = Event(TS, EventType.SYSCALL, BY_NAME["openat"].nr, 300, 300, 0, 0, 77, 3,
               (2**64 - 100, 0, flags, 0o644, 0, 0), "tee", strings=("/etc/hosts",))  # fmt: skip
    (a,) = engine.process(ev, tr(ev))
    tr.close()
    assert a.text_line() == (
        "00:13:20.123456789: Error File below /etc opened for writing (user=root command=tee -a /etc/hosts "
        "pid=300 file=/etc/hosts parent=bash gparent=sshd container=host flags=O_APPEND|O_CREAT|O_WRONLY)"
        # Falco's default append_output (suggested_output): the container plugin's fields,
        # less container.id, which this rule prints itself
        " container_name=host"
    )
    d = json.loads(a.to_json_line())
    assert d["output_fields"] == {
        "container.id": "host",
        "container.name": "host",
        "evt.arg.flags": "O_APPEND|O_CREAT|O_WRONLY",
        "evt.time": TS,
        "fd.name": "/etc/hosts",
        "proc.aname[2]": "sshd",
        "proc.cmdline": "tee -a /etc/hosts",
        "proc.pid": 300,
        "proc.pname": "bash",
        "user.name": "root",
    }
    assert (d["rule"], d["priority"], d["hostname"], d["tags"]) == (
        "Write below etc", "Error", "node1", ["filesystem", "host", "mitre_persistence"],
    )
