"""``andon doctor``: what this kernel lets andon do, and what is lost where it does not.

Every row comes from :func:`andon.bpf.features.probe_all`, which tries each feature
rather than reading version numbers. The exit code answers one question: can the
sensor core run here (everything in :data:`andon.bpf.features.CORE` ok)?
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# features.py only loads libbpf when probe_all runs, so rendering needs no root
from ..bpf.features import CORE, Feature

OK_MARK, FAIL_MARK = "✔", "✘"


def core_missing(features: Sequence[Feature]) -> list[str]:
    """Core features that are not ok, or were not reported at all (no evidence is not ok)."""
    ok = {f.name for f in features if f.ok}
    return [name for name in CORE if name not in ok]


def exit_code(features: Sequence[Feature]) -> int:
    return 0 if not core_missing(features) else 1


def to_json(features: Sequence[Feature]) -> str:
    rows = [
        {"name": f.name, "ok": f.ok, "core": f.name in CORE, "detail": f.detail, "consequence": f.consequence}
        for f in features
    ]
    return json.dumps(rows, indent=2, ensure_ascii=False)


def build_table(features: Sequence[Feature]) -> Table:
    table = Table(title="andon doctor", title_justify="left", show_lines=False)
    table.add_column("feature", no_wrap=True)
    table.add_column("status", justify="center", no_wrap=True)
    table.add_column("what we found", overflow="fold")
    table.add_column("consequence", overflow="fold")
    for f in features:
        name = Text(f.name, style="bold" if f.name in CORE else "")
        mark = Text(OK_MARK, style="green") if f.ok else Text(FAIL_MARK, style="bold red" if f.name in CORE else "red")
        table.add_row(name, mark, f.detail, Text(f.consequence, style="dim" if f.ok else ""))
    return table


def summary(features: Sequence[Feature]) -> str:
    n_ok = sum(1 for f in features if f.ok)
    missing = core_missing(features)
    core = "sensor core: ready" if not missing else f"sensor core: NOT ready, missing {', '.join(missing)}"
    return f"{core} (core = {', '.join(CORE)}); {n_ok} of {len(features)} rows ok"


def render_table(features: Sequence[Feature], width: int = 160) -> str:
    """The table and summary as plain text (what a pipe or a test sees)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    console.print(build_table(features))
    console.print(summary(features), highlight=False)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from ..bpf.features import probe_all

    features = probe_all(mount=not getattr(args, "no_mount", False))
    if getattr(args, "output", "table") == "json":
        print(to_json(features))
    else:
        console = Console()
        console.print(build_table(features))
        console.print(summary(features), highlight=False)
    return exit_code(features)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "doctor",
        help="check what this kernel supports and what andon loses without it",
        description="Try every kernel feature andon uses (load, attach, trigger, detach) and report what works. "
        "Exit status 0 when the sensor core can run here, 1 otherwise.",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--no-mount", action="store_true", help="do not mount tracefs, bpffs or securityfs when missing")
    p.set_defaults(func=run)
    return p
