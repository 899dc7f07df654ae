"""``andon rules validate|list|fields`` in-process: exit codes, text and JSON shapes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from andon.cli import rules as rules_cmd
from andon.cli.main import main

from corpus import STABLE_RULES as CORPUS  # noqa: E402
_MISSING = [m for m in ("andon.rules.parser", "andon.rules.compiler", "andon.rules.fields") if importlib.util.find_spec(m) is None]
needs_compiler = pytest.mark.skipif(bool(_MISSING), reason=f"not landed yet: {', '.join(_MISSING)}")

GOOD = """\
- macro: spawned
  condition: evt.type in (execve, execveat)
- rule: Shell spawned
  desc: a shell
  condition: spawned and proc.name in (bash, sh)
  output: shell %proc.name
  priority: WARNING
  tags: [shell, mitre_execution]
"""

BAD = """\
- rule: A
  desc: d
  condition: evt.type = open
  output: o
  priority: LOUD
- list: l
  items: nope
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, text in (("good.yaml", GOOD), ("bad.yaml", BAD), ("syntax.yaml", "- rule: [\n")):
        p = tmp_path / name
        p.write_text(text)
        out[name] = str(p)
    return out


def test_validate_reports_every_problem_of_every_file_and_exits_1(files, capsys):
    rc = main(["rules", "validate", files["bad.yaml"], files["syntax.yaml"]])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"{files['bad.yaml']}:5:13: error LOAD_ERR_YAML_VALIDATE: Invalid priority [rule 'A']" in out
    assert f"{files['bad.yaml']}:7:10: error LOAD_ERR_YAML_VALIDATE: Value is not a sequence [list 'l']" in out
    assert f"{files['syntax.yaml']}:2:1: error LOAD_ERR_YAML_PARSE:" in out
    assert out.rstrip().splitlines()[-1].endswith("errors, 0 warnings")


def test_validate_json_shape(files, capsys):
    rc = main(["rules", "validate", "-o", "json", files["bad.yaml"]])
    j = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert j["successful"] is False and j["files"] == [files["bad.yaml"]]
    assert set(j["counts"]) == {"rules", "macros", "lists"}
    codes = [(e["code"], e["line"], e["col"]) for e in j["errors"] if "compiler" not in e["message"]]
    assert codes == [("LOAD_ERR_YAML_VALIDATE", 5, 13), ("LOAD_ERR_YAML_VALIDATE", 7, 10)]
    assert set(j["errors"][0]) == {"severity", "code", "codedesc", "message", "file", "line", "col", "item", "snippet", "hint"}


def test_validate_missing_file_is_a_file_read_error(tmp_path, capsys):
    rc = main(["rules", "validate", str(tmp_path / "nope.yaml")])
    out = capsys.readouterr().out
    assert rc == 1 and "error LOAD_ERR_FILE_READ: cannot read the file: No such file or directory" in out


@needs_compiler
def test_validate_good_files_exit_0_with_the_summary(files, capsys):
    rc = main(["rules", "validate", files["good.yaml"]])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.strip().splitlines()[-1] == "1 rules, 1 macros, 0 lists loaded; 0 errors, 0 warnings"


@needs_compiler
def test_validate_stable_falco_rules(capsys):
    rc = main(["rules", "validate", str(CORPUS)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    assert last.startswith("25 rules, 87 macros, 49 lists loaded; 0 errors")


@needs_compiler
def test_list_json(files, capsys):
    rc = main(["rules", "list", "-o", "json", files["good.yaml"]])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert rows == [
        {
            "rule": "Shell spawned",
            "priority": "Warning",
            "tags": ["mitre_execution", "shell"],
            "enabled": True,
            "source": "syscall",
            "evttypes": ["execve", "execveat"],
            "runs": True,
            "file": files["good.yaml"],
            "line": 3,
            "desc": "a shell",
        }
    ]


@needs_compiler
def test_list_table(files):
    res = rules_cmd._load([files["good.yaml"]])
    text = rules_cmd.render_list(res, "rules: good.yaml")
    assert "Shell spawned" in text and "Warning" in text and "execve, execveat" in text
    assert text.strip().splitlines()[-1] == "1 rules (1 enabled), 1 macros, 0 lists; the enabled rules need 2 event types"


@needs_compiler
def test_list_defaults_to_andons_rules(capsys):
    rc = main(["rules", "list", "-o", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and rows and all(r["file"].endswith("andon_rules.yaml") for r in rows)


def test_list_without_default_rules_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(rules_cmd, "DEFAULT_RULES", tmp_path / "andon_rules.yaml")
    rc = main(["rules", "list"])
    err = capsys.readouterr().err
    assert rc == 2 and "default rules are not installed" in err


def test_list_of_broken_rules_exits_1_and_points_to_validate(files, capsys):
    rc = main(["rules", "list", files["bad.yaml"]])
    err = capsys.readouterr().err
    assert rc == 1 and "Invalid priority" in err and "andon rules validate" in err


@pytest.mark.skipif(importlib.util.find_spec("andon.rules.fields") is None, reason="not landed yet: andon.rules.fields")
def test_fields_json(capsys):
    rc = main(["rules", "fields", "-o", "json", "proc.name"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0
    names = [r["name"] for r in rows]
    assert "proc.name" in names and all("proc.name" in n for n in names)
    row = next(r for r in rows if r["name"] == "proc.name")
    assert row["type"] == "string" and row["desc"]
