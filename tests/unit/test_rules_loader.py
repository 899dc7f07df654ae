"""The rules loader: Falco's rules files, append/override, exceptions, and every problem located.

Conditions are compiled by ``andon.rules.compiler``; most tests compile against a small fake
field registry (values read from a dict) so a rule's filter can be run on hand-made events.
Tests that need the compiler (or the real field registry) skip, naming the missing module,
until it is there. Structural checks (YAML, keys, append targets, versions) run regardless.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import pytest

from andon.errors import FieldArgError, RuleError, UnknownFieldError
from andon.rules.loader import ENGINE_VERSION, LoadResult, Priority, load_rules
from andon.rules.types import FieldType, Multi

from corpus import STABLE_RULES as CORPUS  # noqa: E402


def _missing(*mods: str) -> list[str]:
    return [m for m in mods if importlib.util.find_spec(m) is None]


_NO_COMPILER = _missing("andon.rules.parser", "andon.rules.compiler")
_NO_FIELDS = _missing("andon.rules.fields")
needs_compiler = pytest.mark.skipif(bool(_NO_COMPILER), reason=f"not landed yet: {', '.join(_NO_COMPILER)}")
needs_fields = pytest.mark.skipif(
    bool(_NO_COMPILER + _NO_FIELDS), reason=f"not landed yet: {', '.join(_NO_COMPILER + _NO_FIELDS)}"
)


# -- a field registry reading values from a dict ---------------------------------------------------


class Extractor:
    def __init__(self, name: str, arg: str | None, type_: FieldType) -> None:
        self.name, self.arg, self.type = name, arg, type_

    def __call__(self, ev: dict, ctx: Any) -> Any:
        return ev.get(self.name if self.arg is None else f"{self.name}[{self.arg}]")


class FakeFields:
    table = {
        "evt.type": FieldType.CHARBUF,
        "proc.name": FieldType.CHARBUF,
        "proc.pname": FieldType.CHARBUF,
        "proc.cmdline": FieldType.CHARBUF,
        "proc.pid": FieldType.INT64,
        "proc.aname": FieldType.CHARBUF,
        "fd.name": FieldType.CHARBUF,
        "fd.directory": FieldType.CHARBUF,
        "user.name": FieldType.CHARBUF,
        "container.id": FieldType.CHARBUF,
        "container.image.repository": FieldType.CHARBUF,
    }

    def lookup(self, name: str, arg: str | None) -> Extractor:
        if name not in self.table:
            raise UnknownFieldError(f"unknown field '{name}'")
        if arg is not None and name != "proc.aname":
            raise FieldArgError(f"{name} takes no argument")
        return Extractor(name, arg, self.table[name])

    def __contains__(self, name: str) -> bool:
        return name in self.table

    @staticmethod
    def render(v: Any, t: FieldType) -> str:
        return ",".join(map(str, v)) if isinstance(v, Multi) else str(v)

    @staticmethod
    def json_value(v: Any, t: FieldType) -> Any:
        return list(v) if isinstance(v, Multi) else v


FIELDS = FakeFields()


def load(*texts: str, fields: Any = FIELDS, **kw: Any) -> LoadResult:
    """Load inline YAML files named a.yaml, b.yaml... in order."""
    return load_rules([(f"{chr(97 + i)}.yaml", textwrap.dedent(t)) for i, t in enumerate(texts)], fields=fields, **kw)


def at(res: LoadResult, code: str) -> list[tuple[str, int, int]]:
    """(file, line, col) of every problem with this code."""
    return [(p.file, p.line, p.col) for p in res.errors + res.warnings if p.code == code]


def structural(res: LoadResult) -> list[str]:
    """Error codes, without the one about a missing compiler."""
    return [p.code for p in res.errors if "compiler is not available" not in p.message]


def rule(res: LoadResult, name: str):
    assert res.ruleset is not None, res.render()
    return next(r for r in res.ruleset.rules if r.name == name)


BASE = """\
- list: shells
  items: [bash, sh]
- macro: spawned
  condition: evt.type = execve
- rule: Shell
  desc: a shell
  condition: spawned and proc.name in (shells)
  output: shell %proc.name
  priority: WARNING
  tags: [shell]
"""


def syntax_error_pos(text: str) -> int:
    """Where the parser puts the error in ``text`` (the loader's job is to map it, not choose it)."""
    from andon.errors import RuleSyntaxError
    from andon.rules.parser import parse_condition

    with pytest.raises(RuleSyntaxError) as e:
        parse_condition(text)
    return e.value.pos


# -- the stable Falco rules -------------------------------------------------------------------------


def test_corpus_is_where_the_tests_expect_it():
    assert CORPUS.is_file(), CORPUS


def test_stable_rules_have_no_structural_problem():
    res = load_rules([(str(CORPUS), CORPUS.read_text())])
    assert structural(res) == []
    # the file asks for Falco 0.42's engine, which is ours
    assert ENGINE_VERSION == (0, 57, 0)
    assert res.counts == {"rules": 25, "macros": 87, "lists": 49}


@needs_fields
def test_stable_rules_load_with_zero_errors_and_exact_counts():
    res = load_rules([(str(CORPUS), CORPUS.read_text())])
    assert res.errors == [], res.render()
    rs = res.ruleset
    assert (len(rs.rules), len(rs.macros), len(rs.lists)) == (25, 87, 49)
    assert rs.required_engine_version == "0.57.0"
    for r in rs.rules:
        assert r.evttypes, r.name  # every stable rule pins its event types
        assert r.source == "syscall" and r.filter is not None and r.output_fmt is not None
    types = {r.name: r.evttypes for r in rs.rules}
    assert types["Create Symlink Over Sensitive Files"] == {"symlink", "symlinkat"}
    assert types["Create Hardlink Over Sensitive Files"] == {"link", "linkat"}
    assert types["PTRACE attached to process"] == {"ptrace"}
    assert types["Linux Kernel Module Injection Detected"] == {"init_module", "finit_module"}
    assert types["Terminal shell in container"] == {"execve", "execveat"}
    assert types["Read sensitive file untrusted"] == {"open", "openat", "openat2"}
    assert rs.evttypes() is not None and {"execve", "ptrace", "openat"} <= rs.evttypes()
    t = rule(res, "Terminal shell in container")
    assert t.priority is Priority.NOTICE and "mitre_execution" in t.tags and t.line > 0
    # only warnings: the container plugin requirement (its fields are built in)
    assert {w.code for w in res.warnings} <= {"LOAD_PLUGIN_NOT_USED", "LOAD_UNUSED_MACRO", "LOAD_UNUSED_LIST"}


# -- rules, priorities, sources -----------------------------------------------------------------


@needs_compiler
def test_a_rule_compiles_and_runs():
    res = load(BASE)
    assert res.errors == [], res.render()
    r = rule(res, "Shell")
    assert r.priority is Priority.WARNING and r.tags == ("shell",) and r.enabled
    assert (r.file, r.line) == ("a.yaml", 5)
    assert r.evttypes == {"execve"}
    assert r.filter({"evt.type": "execve", "proc.name": "sh"}, None)
    assert not r.filter({"evt.type": "execve", "proc.name": "vi"}, None)
    assert res.ruleset.lists["shells"].items == ("bash", "sh") and res.ruleset.lists["shells"].used
    assert res.ruleset.macros["spawned"].used


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("EMERGENCY", Priority.EMERGENCY),
        ("alert", Priority.ALERT),
        ("Critical", Priority.CRITICAL),
        ("error", Priority.ERROR),
        ("WARNING", Priority.WARNING),
        ("notice", Priority.NOTICE),
        ("informational", Priority.INFORMATIONAL),
        ("INFO", Priority.INFORMATIONAL),
        ("debug", Priority.DEBUG),
        ("warn", None),
        ("high", None),
    ],
)
def test_priority_names_as_falco_parses_them(text, want):
    if want is None:
        with pytest.raises(RuleError, match="unknown priority"):
            Priority.parse(text)
    else:
        assert Priority.parse(text) is want


def test_priority_labels_are_falcos():
    assert [p.label for p in Priority] == [
        "Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug",
    ]  # fmt: skip


@needs_compiler
def test_min_priority_keeps_less_severe_rules_but_disables_them():
    res = load(BASE, BASE.replace("- rule: Shell", "- rule: Shell2").replace("WARNING", "debug").split("- rule:", 1)[0]
               + "- rule: Quiet\n  desc: d\n  condition: spawned\n  output: o\n  priority: DEBUG\n", min_priority="notice")  # fmt: skip
    assert res.errors == [], res.render()
    assert rule(res, "Shell").enabled and not rule(res, "Quiet").enabled


@needs_compiler
def test_rules_of_other_sources_are_kept_not_run_with_a_warning():
    res = load(
        BASE
        + """\
- rule: Audit
  desc: k8s audit
  condition: ka.verb = create
  output: "%ka.user.name"
  priority: INFO
  source: k8s_audit
"""
    )
    assert res.errors == [], res.render()
    r = rule(res, "Audit")
    assert r.source == "k8s_audit" and r.filter is None and r.evttypes is None
    assert at(res, "LOAD_UNKNOWN_SOURCE") == [("a.yaml", 11, 3)]
    assert res.ruleset.evttypes() == {"execve"}  # other sources do not widen it


# -- append and override across files -----------------------------------------------------------


@needs_compiler
def test_override_append_condition_output_desc_tags_exceptions():
    res = load(
        BASE,
        """\
        - rule: Shell
          condition: and user.name = root
          output: user=%user.name
          desc: as root
          tags: [extra]
          exceptions:
            - name: known
              fields: proc.pname
              values: [cron]
          override:
            condition: append
            output: append
            desc: append
            tags: append
            exceptions: append
        """,
    )
    assert res.errors == [], res.render()
    r = rule(res, "Shell")
    assert r.condition == "spawned and proc.name in (shells) and user.name = root"
    assert r.output == "shell %proc.name user=%user.name"
    assert r.desc == "a shell as root"
    assert r.tags == ("extra", "shell")
    assert [e.name for e in r.exceptions] == ["known"]
    ev = {"evt.type": "execve", "proc.name": "bash", "user.name": "root", "proc.pname": "sshd"}
    assert r.filter(ev, None)
    assert not r.filter({**ev, "user.name": "bob"}, None)
    assert not r.filter({**ev, "proc.pname": "cron"}, None)


@needs_compiler
def test_override_replace_every_replaceable_key():
    res = load(
        BASE,
        """\
        - rule: Shell
          condition: evt.type = execve and proc.name = zsh
          output: zsh %proc.pid
          desc: zsh only
          tags: [zsh]
          priority: critical
          enabled: false
          exceptions:
            - name: e
              fields: [proc.pname]
              values: [[tmux]]
          override:
            condition: replace
            output: replace
            desc: replace
            tags: replace
            priority: replace
            enabled: replace
            exceptions: replace
        """,
    )
    assert res.errors == [], res.render()
    r = rule(res, "Shell")
    assert (r.condition, r.output, r.desc, r.tags) == (
        "evt.type = execve and proc.name = zsh", "zsh %proc.pid", "zsh only", ("zsh",),
    )  # fmt: skip
    assert r.priority is Priority.CRITICAL and r.enabled is False
    assert r.full_condition == "(evt.type = execve and proc.name = zsh) and not (( proc.pname = tmux))"
    assert r.filter({"evt.type": "execve", "proc.name": "zsh", "proc.pname": "bash"}, None)
    assert not r.filter({"evt.type": "execve", "proc.name": "bash"}, None)


@needs_compiler
def test_redefinition_replaces_in_place_and_enabled_only_item_toggles():
    res = load(
        BASE + "- rule: Other\n  desc: d\n  condition: spawned\n  output: o\n  priority: INFO\n",
        BASE.split("- rule:")[0].replace("bash, sh", "zsh")  # the list redefined
        + "- rule: Shell\n  enabled: false\n",
    )
    assert res.errors == [], res.render()
    assert [r.name for r in res.ruleset.rules] == ["Shell", "Other"]
    assert rule(res, "Shell").enabled is False
    assert res.ruleset.lists["shells"].items == ("zsh",)
    assert at(res, "LOAD_DEPRECATED_ITEM") == [("b.yaml", 5, 3)]


@needs_compiler
def test_list_and_macro_append_old_and_new_forms():
    res = load(
        BASE,
        """\
        - list: shells
          items: [zsh]
          override:
            items: append
        - list: shells
          items: [fish]
          append: true
        - macro: spawned
          condition: or evt.type = execveat
          override:
            condition: append
        """,
    )
    assert res.errors == [], res.render()
    assert res.ruleset.lists["shells"].items == ("bash", "sh", "zsh", "fish")
    assert res.ruleset.macros["spawned"].condition == "evt.type = execve or evt.type = execveat"
    assert rule(res, "Shell").evttypes == {"execve", "execveat"}
    assert at(res, "LOAD_DEPRECATED_ITEM") == [("b.yaml", 5, 3)]


def test_appending_to_undefined_items_is_an_error_at_the_item():
    res = load(
        """\
        - rule: Nope
          condition: and proc.name = x
          override:
            condition: append
        - list: nolist
          items: [a]
          append: true
        - macro: nomacro
          condition: x
          override:
            condition: append
        - rule: Nope2
          enabled: false
        - rule: Nope3
          priority: INFO
          override:
            priority: replace
        """
    )
    assert structural(res) == ["LOAD_ERR_VALIDATE"] * 5
    msgs = [p.message for p in res.errors if p.code == "LOAD_ERR_VALIDATE"]
    assert "no rule by that name already exists" in msgs[0]
    assert at(res, "LOAD_ERR_VALIDATE") == [("a.yaml", n, 3) for n in (1, 5, 8, 12, 14)]


def test_override_key_rules():
    res = load(
        """\
        - rule: R
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
        - rule: R
          priority: INFO
          override:
            priority: append
        - rule: R
          desc: more
          override:
            desc: prepend
        - rule: R
          desc: more
          override:
            output: append
        - rule: R
          desc: more
          output: more
          override:
            desc: append
        - rule: R
          desc: x
          append: true
          override:
            desc: append
        """
    )
    errs = [(p.line, p.message) for p in res.errors if p.code == "LOAD_ERR_YAML_VALIDATE"]
    assert errs == [
        (9, "Key 'priority' cannot be appended to, use 'replace' instead"),
        (13, "Invalid override operation for key 'desc': 'prepend'. Allowed values are: append replace"),
        (17, "An append override for 'output' was specified but 'output' is not defined"),
        (20, "Unexpected key 'output': no corresponding entry under 'override' is defined."),
        (23, ERROR_OVERRIDE_APPEND_TEXT),
    ]


ERROR_OVERRIDE_APPEND_TEXT = (
    "Keys 'override' and 'append: true' cannot be used together. Add an 'append' entry "
    "(e.g. 'condition: append') under 'override' instead."
)


# -- exceptions -----------------------------------------------------------------------------------


EXC = """\
- rule: Open
  desc: d
  condition: evt.type = open
  output: o
  priority: INFO
  exceptions:
    - name: by_proc_and_file
      fields: [proc.name, fd.name]
      values:
        - [cat, /etc/hosts]
        - [vi, "/tmp/a b"]
    - name: by_dir
      fields: [proc.name, fd.directory]
      comps: [=, in]
      values:
        - [ls, [/etc, /usr]]
    - name: single
      fields: proc.pname
      values: [cron, "my daemon"]
    - name: prefix
      fields: fd.name
      comps: pmatch
      values: [/var/log]
    - name: no_values
      fields: [user.name]
"""


@needs_compiler
def test_exception_condition_is_built_as_falco_builds_it():
    res = load(EXC)
    assert res.errors == [], res.render()
    r = rule(res, "Open")
    assert r.full_condition == (
        "(evt.type = open)"
        " and not (( proc.name = cat and  fd.name = /etc/hosts) or ( proc.name = vi and  fd.name = \"/tmp/a b\"))"
        " and not (( proc.name = ls and  fd.directory in (/etc, /usr)))"
        " and not (proc.pname in (cron, \"my daemon\"))"
        " and not (fd.name pmatch (/var/log))"
    )
    assert [(e.name, e.fields, e.comps) for e in r.exceptions] == [
        ("by_proc_and_file", ("proc.name", "fd.name"), ("=", "=")),
        ("by_dir", ("proc.name", "fd.directory"), ("=", "in")),
        ("single", "proc.pname", "in"),
        ("prefix", "fd.name", "pmatch"),
        ("no_values", ("user.name",), ("=",)),
    ]
    assert r.exceptions[1].values == (("ls", ("/etc", "/usr")),)


@needs_compiler
@pytest.mark.parametrize(
    ("ev", "fires"),
    [
        ({"proc.name": "cat", "fd.name": "/etc/shadow"}, True),
        ({"proc.name": "cat", "fd.name": "/etc/hosts"}, False),  # by_proc_and_file, 1st tuple
        ({"proc.name": "vi", "fd.name": "/tmp/a b"}, False),  # quoted value with a space
        ({"proc.name": "vi", "fd.name": "/etc/hosts"}, True),  # fields must match together
        ({"proc.name": "ls", "fd.directory": "/usr", "fd.name": "/usr/x"}, False),  # list value with `in`
        ({"proc.name": "ls", "fd.directory": "/opt", "fd.name": "/opt/x"}, True),
        ({"proc.name": "x", "proc.pname": "my daemon", "fd.name": "/a"}, False),  # single-field form
        ({"proc.name": "x", "fd.name": "/var/log/syslog"}, False),  # pmatch prefix
        ({"proc.name": "x", "fd.name": "/var/lib/x"}, True),
    ],
)
def test_exceptions_filter_behaviour(ev, fires):
    r = rule(load(EXC), "Open")
    assert r.filter({"evt.type": "open", **ev}, None) is fires


@needs_compiler
def test_exception_values_appended_to_an_existing_exception():
    res = load(
        EXC,
        """\
        - rule: Open
          exceptions:
            - name: single
              values: [sshd]
          override:
            exceptions: append
        """,
    )
    assert res.errors == [], res.render()
    r = rule(res, "Open")
    assert r.exceptions[2].values == ("cron", "my daemon", "sshd")
    assert not r.filter({"evt.type": "open", "proc.name": "x", "proc.pname": "sshd", "fd.name": "/a"}, None)


def test_exception_shape_errors():
    res = load(
        """\
        - rule: R
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          exceptions:
            - name: e1
              fields: [proc.name, fd.name]
              comps: [=]
              values: []
        - rule: R2
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          exceptions:
            - name: e2
              fields: proc.name
              comps: "="
        - rule: R3
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          exceptions:
            - name: e3
              values: [a]
        - rule: R4
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          exceptions:
            - name: e4
              fields: [proc.name]
              comps: [like]
        """
    )
    got = [(p.line, p.col, p.message) for p in res.errors if p.code in ("LOAD_ERR_VALIDATE", "LOAD_ERR_YAML_VALIDATE")]
    assert got == [
        (7, 7, "Fields and comps lists must have equal length"),
        (19, 14, "When fields is a single value, comps must be one of (in, pmatch, intersects)"),
        (26, 7, "Item has no mapping for key 'fields'"),
        (36, 15, "'like' is not a supported comparison operator"),
    ]


@needs_compiler
def test_exception_values_of_the_wrong_width_are_an_error():
    res = load(EXC.replace("- [cat, /etc/hosts]", "- [cat]"))
    assert [(p.code, p.line, p.message) for p in res.errors] == [
        ("LOAD_ERR_VALIDATE", 10, "Fields and values lists must have equal length")
    ]


def test_duplicate_exception_names_warn():
    res = load(
        """\
        - rule: R
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          exceptions:
            - name: e
              fields: proc.name
              values: [a]
            - name: e
              fields: proc.name
              values: [b]
        """
    )
    assert at(res, "LOAD_EXCEPTION_NAME_NOT_UNIQUE") == [("a.yaml", 10, 7)]


# -- versions and plugins ---------------------------------------------------------------------------


def test_required_engine_version_too_high_is_an_error_with_its_line():
    res = load("- required_engine_version: 0.99.0\n", "# comment\n- required_engine_version: 60\n")
    errs = [(p.code, p.file, p.line, p.col, p.message) for p in res.errors if p.code == "LOAD_ERR_VALIDATE"]
    assert errs == [
        ("LOAD_ERR_VALIDATE", "a.yaml", 1, 28, "Rules require engine version 0.99.0, but engine version is 0.57.0"),
        ("LOAD_ERR_VALIDATE", "b.yaml", 2, 28, "Rules require engine version 0.60.0, but engine version is 0.57.0"),
    ]


def test_required_engine_version_forms_we_meet():
    res = load("- required_engine_version: 0.57.0\n- required_engine_version: 10\n- required_engine_version: '0.3.1'\n")
    assert structural(res) == []
    bad = load("- required_engine_version: banana\n- required_engine_version: 1.0.0\n")
    assert [p.code for p in bad.errors] == ["LOAD_ERR_YAML_VALIDATE", "LOAD_ERR_VALIDATE"]


def test_plugin_requirements_warn_and_builtin_container_is_fine():
    res = load(
        """\
        - required_plugin_versions:
            - name: container
              version: 0.4.0
            - name: k8saudit
              version: 0.7.0
              alternatives:
                - name: k8saudit-eks
                  version: 0.4.0
        """
    )
    assert structural(res) == []
    w = [p for p in res.warnings if p.code == "LOAD_PLUGIN_NOT_USED"]
    assert [(p.line, p.col) for p in w] == [(2, 7), (4, 7)]
    assert "container.* fields" in w[0].message and "k8saudit" in w[1].message
    bad = load("- required_plugin_versions:\n    - name: json\n      version: latest\n")
    assert [(p.code, p.line) for p in bad.errors] == [("LOAD_ERR_VALIDATE", 2)]


# -- broken files: every problem, located -------------------------------------------------------


def test_yaml_syntax_error_is_located():
    res = load("- rule: R\n  desc: [unclosed\n  condition: x\n")
    assert [(p.code, p.file) for p in res.errors] == [("LOAD_ERR_YAML_PARSE", "a.yaml")]
    assert res.errors[0].line == 3 and res.ruleset is None


def test_not_a_list_of_items():
    res = load("rule: R\n")
    assert at(res, "LOAD_ERR_YAML_VALIDATE") == [("a.yaml", 1, 1)]


def test_unknown_key_and_unknown_item_warn_with_a_suggestion():
    res = load(BASE.replace("  tags: [shell]", "  tags: [shell]\n  prority: INFO") + "- rulez: x\n")
    assert at(res, "LOAD_UNKNOWN_KEY") == [("a.yaml", 11, 3)]
    assert next(p for p in res.warnings if p.code == "LOAD_UNKNOWN_KEY").hint == "did you mean 'priority'?"
    assert at(res, "LOAD_UNKNOWN_ITEM") == [("a.yaml", 12, 3)]


def test_missing_required_keys_are_each_reported():
    res = load("- rule: R\n  desc: d\n  condition: evt.type = open\n")
    assert [(p.code, p.line, p.col, p.message) for p in res.errors] == [
        ("LOAD_ERR_YAML_VALIDATE", 1, 3, "Item has no mapping for key 'output'"),
        ("LOAD_ERR_YAML_VALIDATE", 1, 3, "Item has no mapping for key 'priority'"),
    ]
    assert res.errors[0].item == "rule 'R'"


def test_bad_priority_points_at_the_value():
    res = load(BASE.replace("priority: WARNING", "priority: SEVERE"))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_YAML_VALIDATE")
    assert (p.line, p.col, p.message) == (9, 13, "Invalid priority")
    assert "Informational" in p.hint


def test_wrong_value_types():
    res = load(
        """\
        - list: l
          items: a
        - rule: R
          desc: d
          condition: evt.type = open
          output: o
          priority: INFO
          enabled: maybe
          tags: x
        """
    )
    assert [(p.line, p.message) for p in res.errors if p.code == "LOAD_ERR_YAML_VALIDATE"] == [
        (2, "Value is not a sequence"),
        (8, "Can't decode YAML scalar value"),
    ]


@needs_compiler
def test_condition_syntax_error_maps_to_the_file_plain_scalar():
    cond = "spawned and and proc.name = x"
    res = load(BASE.replace("spawned and proc.name in (shells)", cond))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert (p.line, p.col) == (7, 14 + syntax_error_pos(cond))
    assert p.snippet == "  condition: spawned and and proc.name = x"
    assert p.render().splitlines()[2].index("^") == 4 + p.col - 1


@needs_compiler
@pytest.mark.parametrize("style", ["|", ">", ">-", "|-"])
def test_condition_syntax_error_maps_into_block_scalars(style):
    text = f"""\
- rule: R
  desc: d
  condition: {style}
    evt.type = open
    and proc.name = bash
    and (fd.name = x or
    )
  output: o
  priority: INFO
"""
    res = load(text)
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert (p.line, p.col) == (7, 5), p.render()


@needs_compiler
def test_condition_syntax_error_maps_into_folded_quoted_scalar():
    text = '- macro: m\n  condition: "evt.type = open and\n    proc.name = ( and x"\n'
    res = load(text)
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert p.line == 3 and p.col >= 17, p.render()


@needs_compiler
def test_syntax_error_in_an_appended_condition_points_into_the_second_file():
    res = load(BASE, "- rule: Shell\n  condition: and (proc.pid > \n  override:\n    condition: append\n")
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert p.file == "b.yaml" and p.line == 2


@needs_compiler
def test_undefined_macro():
    res = load(BASE.replace("spawned and", "spwned and"))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_VALIDATE")
    assert (p.line, p.col) == (7, 14) and "spwned" in p.message
    assert p.hint == "did you mean macro 'spawned'?"
    assert res.ruleset is None


@needs_compiler
def test_macro_defined_after_its_user_is_undefined_for_a_macro_but_fine_for_a_rule():
    res = load(
        """\
        - macro: a
          condition: b and proc.name = x
        - macro: b
          condition: evt.type = open
        - rule: R
          desc: d
          condition: b
          output: o
          priority: INFO
        """
    )
    assert [(p.code, p.line, p.col) for p in res.errors] == [("LOAD_ERR_VALIDATE", 2, 14)]
    assert "defined later" in res.errors[0].hint


@needs_compiler
def test_unknown_field_is_an_error_or_a_skip_with_skip_if_unknown_filter():
    bad = BASE.replace("proc.name in (shells)", "proc.nmae in (shells)")
    res = load(bad)
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert (p.line, p.col) == (7, 26) and "proc.nmae" in p.message
    skipped = load(bad.replace("  tags: [shell]", "  tags: [shell]\n  skip-if-unknown-filter: true"))
    assert skipped.errors == [], skipped.render()
    assert [r.name for r in skipped.ruleset.rules] == []
    assert at(skipped, "LOAD_UNKNOWN_FILTER") == [("a.yaml", 7, 26)]


@needs_compiler
def test_unknown_field_inside_a_macro_points_at_the_macro():
    res = load(BASE.replace("evt.type = execve", "evt.type = execve and proc.nope = 1"))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert (p.line, p.col) == (4, 36), p.render()
    assert "macro 'spawned'" in p.message


@needs_compiler
def test_unknown_output_field_is_an_error_at_its_column():
    res = load(BASE.replace("output: shell %proc.name", "output: shell %proc.name %proc.bogus"))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_OUTPUT")
    assert (p.line, p.col) == (8, 28), p.render()  # the '%'
    assert "proc.bogus" in p.message


@needs_compiler
def test_unused_macros_and_lists_warn():
    res = load(BASE + "- macro: lonely\n  condition: proc.pid = 1\n- list: orphans\n  items: [a]\n")
    assert res.errors == [], res.render()
    assert at(res, "LOAD_UNUSED_MACRO") == [("a.yaml", 11, 3)]
    assert at(res, "LOAD_UNUSED_LIST") == [("a.yaml", 13, 3)]
    assert res.ruleset.macros["lonely"].used is False


def test_several_problems_in_one_file_are_all_reported():
    res = load(
        """\
        - rule: A
          desc: d
          condition: evt.type = open
          output: o
          priority: LOUD
        - list: l
          items: nope
        - rule: B
          desc: d
          output: o
          priority: INFO
        - macro: m
          condition: x
          append: true
        - required_engine_version: 9.0.0
        """
    )
    assert [(p.code, p.line) for p in res.errors if "compiler" not in p.message] == [
        ("LOAD_ERR_YAML_VALIDATE", 5),
        ("LOAD_ERR_YAML_VALIDATE", 7),
        ("LOAD_ERR_YAML_VALIDATE", 8),
        ("LOAD_ERR_VALIDATE", 12),
        ("LOAD_ERR_VALIDATE", 15),
    ]
    assert res.ruleset is None
    assert res.summary().endswith(f"{len(res.errors)} errors, {len(res.warnings)} warnings")


@needs_compiler
def test_a_broken_macro_is_reported_once_not_at_every_user():
    res = load(
        """\
        - macro: m
          condition: evt.type = = open
        - rule: A
          desc: d
          condition: m
          output: o
          priority: INFO
        - rule: B
          desc: d
          condition: m and proc.name = x
          output: o
          priority: INFO
        """
    )
    assert [(p.code, p.line) for p in res.errors] == [("LOAD_ERR_COMPILE_CONDITION", 2)]


def test_text_rendering_is_compiler_style():
    res = load(BASE.replace("priority: WARNING", "priority: SEVERE"))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_YAML_VALIDATE")
    lines = p.render().splitlines()
    assert lines[0] == "a.yaml:9:13: error LOAD_ERR_YAML_VALIDATE: Invalid priority [rule 'Shell']"
    assert lines[1] == "      priority: SEVERE"
    assert lines[2] == "                ^"
    assert lines[3].startswith("    hint: one of Emergency")


def test_json_shape():
    res = load(BASE.replace("priority: WARNING", "priority: SEVERE"))
    j = res.to_json()
    assert set(j) == {"successful", "files", "counts", "errors", "warnings"}
    assert j["successful"] is False and j["files"] == ["a.yaml"]
    e = next(e for e in j["errors"] if e["code"] == "LOAD_ERR_YAML_VALIDATE")
    assert e == {
        "severity": "error",
        "code": "LOAD_ERR_YAML_VALIDATE",
        "codedesc": "Error validating internal structure of YAML file",
        "message": "Invalid priority",
        "file": "a.yaml",
        "line": 9,
        "col": 13,
        "item": "rule 'Shell'",
        "snippet": "  priority: SEVERE",
        "hint": e["hint"],
    }


@needs_compiler
def test_many_item_list_as_a_single_value_is_a_condition_error():
    res = load(BASE.replace("proc.name in (shells)", "proc.name = shells"))
    p = next(p for p in res.errors if p.code == "LOAD_ERR_COMPILE_CONDITION")
    assert (p.file, p.line) == ("a.yaml", 7) and "shells" in p.message


@needs_compiler
def test_macro_loop_through_an_append_is_reported():
    res = load(
        """\
        - macro: a
          condition: evt.type = open
        - macro: b
          condition: a
        - macro: a
          condition: or b
          override:
            condition: append
        - rule: R
          desc: d
          condition: a
          output: o
          priority: INFO
        """
    )
    assert res.ruleset is None
    assert [p.code for p in res.errors] == ["LOAD_ERR_VALIDATE"]
    assert "loop" in res.errors[0].message


def test_a_bad_priority_does_not_hide_the_conditions_problems():
    text = (
        "- rule: R\n"
        "  desc: d\n"
        "  condition: evt.type = openat and fd.nme = /etc/shadow\n"
        "  output: o %proc.nam\n"
        "  priority: WARNNG\n"
    )
    res = load_rules([("r.yaml", text)])
    got = sorted((p.line, p.code) for p in res.errors)
    assert got == [(3, "LOAD_ERR_COMPILE_CONDITION"), (4, "LOAD_ERR_COMPILE_OUTPUT"), (5, "LOAD_ERR_YAML_VALIDATE")]
    assert res.ruleset is None
