"""``andon query``: run a PxL script or SQL over the agent's tables, print the result.

    andon query px/http_data --arg num_head=20
    andon query my_script.pxl -o json
    andon query --sql "SELECT req_path, count(*) FROM http_events GROUP BY 1"

If an agent is running on the data directory it is asked to flush first (a short wait,
then whatever is on disk is used).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..query import semantic
from ..store.settings import DEFAULT_DATA_DIR


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "query",
        help="query the protocol tables with a PxL script or SQL",
        description="Run a PxL script (a file, or a bundled one such as px/http_data) or SQL (--sql) over the "
        "tables the agent stores (http_events, pgsql_events, ...), running or stopped.",
    )
    p.add_argument("script", nargs="?", help="a .pxl file, - for stdin, or a bundled script name (see --list)")
    p.add_argument("--sql", metavar="QUERY", help="run SQL instead of a script")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a script argument, as `px run -- --NAME VALUE` (repeatable)")
    p.add_argument("--func", dest="script_func", metavar="NAME", help="show only what this function of the script returns")
    p.add_argument("--table", metavar="NAME", help="print only the displayed table with this name")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"(default: {DEFAULT_DATA_DIR})")
    p.add_argument("-o", "--output", choices=("table", "records", "json", "csv"), default="table",
                   help="table (one record per block when too wide, as psql's \\x auto), records, json or csv")
    p.add_argument("--no-flush", action="store_true", help="do not ask a running agent to flush first")
    p.add_argument("--list", action="store_true", help="list the bundled scripts and the tables")
    p.set_defaults(func=run_query)
    return p


def _args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for s in pairs:
        k, sep, v = s.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--arg {s!r}: expected NAME=VALUE")
        out[k.strip()] = v
    return out


def run_query(args: argparse.Namespace) -> int:
    from ..query import runner
    from ..store.catalog import Catalog, with_catalog
    from ..store.control import request_flush
    from ..store.schema import TABLES

    if args.list:
        for x in sorted(runner.SCRIPTS_DIR.rglob("*.pxl")):
            print(x.relative_to(runner.SCRIPTS_DIR).with_suffix(""))
        print("tables: " + ", ".join(TABLES))
        return 0
    if bool(args.script) == bool(args.sql):
        raise UsageError("give a script or --sql QUERY (one of them)")
    if not args.data_dir.is_dir():
        raise UsageError(f"no data directory {args.data_dir}: is the agent storing tables there? (--data-dir DIR)")
    if not args.no_flush:
        request_flush(args.data_dir, timeout=1.0)
    stdin_script = sys.stdin.read() if args.script == "-" else ""

    def run(catalog: Catalog) -> list:
        for w in catalog.warnings:
            print(f"andon: warning: {w}", file=sys.stderr)
        if args.sql:
            return runner.run_sql(args.sql, catalog)
        if args.script == "-":
            return runner.run_pxl(stdin_script, catalog, args=_args(args.arg), func=args.script_func,
                                  filename="<stdin>")
        return runner.run_script(args.script, catalog, args=_args(args.arg), func=args.script_func)

    results = with_catalog(args.data_dir, run)
    if args.table:
        names = [r.name for r in results]
        results = [r for r in results if r.name == args.table]
        if not results:
            raise UsageError(f"--table {args.table!r}: the script shows {', '.join(map(repr, names))}")
    render(results, args.output, sys.stdout)
    return 0


def format_time(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9:09d}Z"


def _cells(result) -> list[list[Any]]:
    times = [i for i, t in enumerate(result.types) if t == "TIME"]
    rows = []
    for r in result.rows:
        r = list(r)
        for i in times:
            if isinstance(r[i], int):
                r[i] = format_time(r[i])
        rows.append(r)
    return rows


def _cell(v: Any, sem: str = "") -> str:
    """A value for reading: by its semantic type (5.07 ms, 1.2 KiB, 4 /s) as ``px run``
    shows it, else as it is; json and csv keep every digit."""
    if v is None:
        return ""
    if sem:
        shown = semantic.show(sem, v)
        if shown is not None:
            return shown
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def render(results, fmt: str, out) -> None:
    if fmt == "json":
        doc = [{"table": r.name, "columns": r.columns, "rows": [dict(zip(r.columns, row)) for row in _cells(r)]}
               for r in results]
        json.dump(doc, out, default=str)
        out.write("\n")
        return
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        for n, r in enumerate(results):
            if len(results) > 1:
                if n:
                    out.write("\n")
                out.write(f"# {r.name}\n")
            w.writerow(r.columns)
            w.writerows(_cells(r))
        return
    from rich.console import Console

    console = Console(file=out, soft_wrap=False, width=None if out.isatty() else 160)
    for r in results:
        _print_result(console, r, records=(fmt == "records"))


# A cell of the table view is one line: longer values are cut here (json and csv keep them).
CELL_MAX = 40
_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r", 127: "\\x7f"}


def _shown(v: Any, sem: str) -> str:
    """A cell's text on one line: control characters (a body's newlines) as escapes."""
    return _cell(v, sem).translate(_CONTROL)


def _print_result(console, r, records: bool) -> None:
    """One result as a table, or, when the table would not fit the console (or ``-o
    records``), one block of ``column  value`` lines per row, as ``psql``'s expanded display
    (``\\x auto``) does: wide tables such as ``px/http_data`` stay readable."""
    from rich.table import Table
    from rich.text import Text

    sems = r.semantics or [""] * len(r.columns)
    rows = [[_shown(v, sem) for v, sem in zip(row, sems)] for row in _cells(r)]
    styles = [[semantic.style(sem, c, v) for v, sem, c in zip(row, sems, r.columns)] for row in r.rows]
    widths = [max([len(c), *(min(len(row[i]), CELL_MAX) for row in rows)]) for i, c in enumerate(r.columns)]
    table_width = sum(widths) + 3 * len(widths) + 1
    if not rows and table_width > console.width:
        console.print(f"[bold]{r.name}[/bold] (0 rows)", highlight=False)
        return
    if records or table_width > console.width:
        why = "" if records else f", one record each: a table would be {table_width} columns wide"
        console.print(f"[bold]{r.name}[/bold] ({len(r.rows)} rows{why})", highlight=False)
        name_w = max(map(len, r.columns), default=0)
        for n, (row, st) in enumerate(zip(rows, styles), 1):
            console.print(Text(f"-[ RECORD {n} ]---", style="dim"))
            for c, text, style in zip(r.columns, row, st):
                # a long value folds onto lines of its own width, under itself
                lines = Text(text, style=style).wrap(console, max(console.width - name_w - 2, 20), overflow="fold")
                if not text:
                    console.print(Text(c, style="bold"))
                for i, part in enumerate(lines if text else []):
                    part.rstrip()
                    console.print(Text(c.ljust(name_w) if i == 0 else " " * name_w, style="bold" if i == 0 else ""),
                                  Text("  ") + part, sep="")
        return
    console.print(f"[bold]{r.name}[/bold] ({len(r.rows)} rows)", highlight=False)
    t = Table()
    for c, sem in zip(r.columns, sems):
        numeric = sem and sem not in (semantic.HTTP_RESP_STATUS, semantic.QUANTILES, semantic.DURATION_NS_QUANTILES)
        t.add_column(c, no_wrap=True, overflow="ellipsis", max_width=max(CELL_MAX, len(c)),
                     justify="right" if numeric else "left")
    for row, st in zip(rows, styles):
        t.add_row(*(Text(text, style=style) for text, style in zip(row, st)))
    console.print(t)
    cut = sum(len(text) > CELL_MAX for row in rows for text in row)
    if cut:
        console.print(f"[dim]{cut} values longer than {CELL_MAX} characters cut (…): -o records, -o json or "
                      f"-o csv show them whole[/dim]", highlight=False)
