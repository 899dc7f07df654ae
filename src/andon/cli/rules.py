"""``andon rules validate|list|fields``: check Falco rules files, show what they hold.

``validate`` loads the files together, in order (as ``andon run`` would) and prints every
problem of every file, compiler style, then one summary line. Exit status 0 when they load,
1 when any error (warnings alone do not fail).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import UsageError

DEFAULT_RULES = Path(__file__).resolve().parents[1] / "rules" / "data" / "andon_rules.yaml"
EXIT_OK, EXIT_FAIL = 0, 1

_PRIORITY_STYLE = {0: "bold red", 1: "bold red", 2: "red", 3: "red", 4: "yellow", 5: "cyan", 6: "", 7: "dim"}


def _load(paths: list[str], min_priority: str | None = None) -> Any:
    from ..rules.loader import load_files

    return load_files(paths, min_priority=min_priority)


def _evttypes_text(rule: Any, width: int = 6) -> str:
    if rule.filter is None:
        return "(not run)"
    types = rule.evttypes
    if types is None:
        return "all"
    names = sorted(types)
    if len(names) > width:
        return ", ".join(names[:width]) + f", … (+{len(names) - width})"
    return ", ".join(names)


# -- validate ---------------------------------------------------------------------------------


def render_validate(result: Any, warnings: bool = True) -> str:
    return result.render(warnings=warnings)


def run_validate(args: argparse.Namespace) -> int:
    result = _load(args.files)
    if args.output == "json":
        print(result.to_json_text())
    else:
        out = render_validate(result, warnings=not args.no_warnings)
        print(out, file=sys.stdout)
    return EXIT_OK if result.ok else EXIT_FAIL


# -- list -------------------------------------------------------------------------------------


def rules_json(result: Any) -> str:
    rows = []
    for r in result.ruleset.rules:
        types = r.evttypes
        rows.append(
            {
                "rule": r.name,
                "priority": r.priority.label,
                "tags": list(r.tags),
                "enabled": r.enabled,
                "source": r.source,
                "evttypes": None if types is None else sorted(types),
                "runs": r.filter is not None,
                "file": r.file,
                "line": r.line,
                "desc": r.desc,
            }
        )
    return json.dumps(rows, indent=2, ensure_ascii=False)


def build_rules_table(result: Any, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("rule", overflow="fold", ratio=3)
    table.add_column("priority", no_wrap=True)
    table.add_column("tags", overflow="fold", ratio=2)
    table.add_column("enabled", justify="center", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("event types", overflow="fold", ratio=2)
    for r in result.ruleset.rules:
        table.add_row(
            r.name,
            Text(r.priority.label, style=_PRIORITY_STYLE.get(int(r.priority), "")),
            ", ".join(r.tags),
            Text("yes", style="green") if r.enabled else Text("no", style="dim"),
            r.source,
            _evttypes_text(r),
        )
    return table


def list_summary(result: Any) -> str:
    rs = result.ruleset
    enabled = sum(1 for r in rs.rules if r.enabled)
    need = rs.evttypes()
    need_text = "every event type" if need is None else f"{len(need)} event types"
    return f"{len(rs.rules)} rules ({enabled} enabled), {len(rs.macros)} macros, {len(rs.lists)} lists; the enabled rules need {need_text}"


def render_list(result: Any, title: str, width: int = 160) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    console.print(build_rules_table(result, title))
    console.print(list_summary(result), highlight=False)
    return buf.getvalue()


def run_list(args: argparse.Namespace) -> int:
    files = args.files
    if not files:
        if not DEFAULT_RULES.is_file():
            raise UsageError(
                f"andon's default rules are not installed ({DEFAULT_RULES} is missing); name rules files: andon rules list FILE..."
            )
        files = [str(DEFAULT_RULES)]
    result = _load(files)
    if not result.ok:
        print(result.render(warnings=False), file=sys.stderr)
        print("andon: the rules do not load; `andon rules validate` shows every problem", file=sys.stderr)
        return EXIT_FAIL
    if args.output == "json":
        print(rules_json(result))
    else:
        title = "rules: " + ", ".join(files)
        console = Console()
        console.print(build_rules_table(result, title))
        console.print(list_summary(result), highlight=False)
    return EXIT_OK


# -- fields -----------------------------------------------------------------------------------


def _field_rows(registry: Any) -> list[dict[str, Any]]:
    """One row per field: name, type, argument (none/optional/required and its kind), description."""
    rows = []
    for name in registry.names():
        f = registry.info(name)
        rows.append(
            {
                "name": name,
                "type": f.type.value,
                "arg": f.arg,
                "arg_kind": f.arg_kind,
                "filter_only": f.filter_only,
                "desc": f.desc,
            }
        )
    return rows


def run_fields(args: argparse.Namespace) -> int:
    try:
        from ..rules.fields import FIELDS
    except ImportError as e:
        raise UsageError(f"the field registry is not available in this build ({e})") from None
    rows = _field_rows(FIELDS)
    if args.match:
        rows = [r for r in rows if args.match in r["name"]]
    if args.output == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    table = Table(title="andon rules fields", title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("description", overflow="fold")
    for r in rows:
        kind = r["arg_kind"] or "arg"
        name = r["name"] + {"required": f"[{kind}]", "optional": f"[{kind}]?"}.get(r["arg"], "")
        table.add_row(Text(name), r["type"], Text(r["desc"]))
    console = Console()
    console.print(table)
    console.print(f"{len(rows)} fields", highlight=False)
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "rules",
        help="validate Falco rules files and show what they hold",
        description="Falco-compatible rules: check files (`validate`), show their rules (`list`) and the fields "
        "conditions may use (`fields`).",
    )
    sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    sub.required = True

    v = sub.add_parser(
        "validate",
        help="load rules files together and report every problem",
        description="Load the files in order, as `andon run` would, and print every error and warning with "
        "file:line:col. Exit status 0 when they load, 1 if any error.",
    )
    v.add_argument("files", nargs="+", metavar="FILE", help="rules files, loaded in this order")
    v.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format (default: text)")
    v.add_argument("--no-warnings", action="store_true", help="print errors only (the summary still counts warnings)")
    v.set_defaults(func=run_validate)

    ls = sub.add_parser(
        "list",
        help="show the rules of rules files (default: andon's own)",
        description="Load the files and show each rule: priority, tags, enabled, source and the event types it needs.",
    )
    ls.add_argument("files", nargs="*", metavar="FILE", help=f"rules files (default: {DEFAULT_RULES.name})")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format (default: table)")
    ls.set_defaults(func=run_list)

    f = sub.add_parser("fields", help="the fields conditions and outputs may use", description="andon's field registry.")
    f.add_argument("match", nargs="?", default="", help="only fields whose name contains this")
    f.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format (default: table)")
    f.set_defaults(func=run_fields)
    return p
