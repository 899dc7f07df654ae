"""Run a PxL script or a SQL query over a data directory; results as plain rows.

Both paths run on the same DuckDB connection over the same views (one per table, see
:class:`andon.store.catalog.Catalog`): PxL is compiled to SQL (:mod:`.plan`), so a PxL
aggregate and the equivalent hand-written SQL give the same numbers.

Which frames a script shows, as ``px run`` decides:

1. ``func``: call that function (``--func NAME``);
2. else, the frames the script passes to ``px.display(df, 'name')`` at top level;
3. else, the widgets of the script's ``.yaml`` sidecar (our stand-in for Pixie's
   ``vis.json``: ``variables`` with defaults, ``widgets`` naming functions);
4. else, every top-level function whose parameters are all annotated with plain types
   (``start_time: str``) and that no other function calls.

Function parameters come from ``--arg name=value`` (converted by the annotation: int,
float, bool, else string), then the sidecar's defaults, then the function's own
defaults, then ``start_time='-5m'`` and '' for strings.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import yaml

from ..store.catalog import Catalog
from ..store.schema import BOOLEAN, FLOAT64, STRING, TIME64NS, UINT128
from .functions import prepare_lookups, register_udfs
from .plan import BOOL, FLOAT, INT, STR, TIME, Frame, QueryError
from .pxl import Display, Interpreter, SourceTables

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"

_COARSE = {TIME64NS: TIME, FLOAT64: FLOAT, STRING: STR, UINT128: STR, BOOLEAN: BOOL}


@dataclass
class Result:
    name: str
    columns: list[str]
    types: list[str | None]  # coarse types; TIME columns hold ns since the epoch
    rows: list[tuple]
    semantics: list[str] = field(default_factory=list)  # Pixie's semantic types ('' none); empty for SQL

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def span(windows: list[tuple[int | None, int | None]]) -> tuple[int | None, int | None]:
    """The smallest time range [since, until) that holds all of ``windows`` (None: unbounded)."""
    if not windows:
        return (None, None)
    starts = [w[0] for w in windows]
    ends = [w[1] for w in windows]
    return (None if None in starts else min(s for s in starts if s is not None),
            None if None in ends else max(e for e in ends if e is not None))


class CatalogTables(SourceTables):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.windows: list[tuple[int | None, int | None]] = []  # of every frame made

    def frame(self, table: str, since_ns: int | None, until_ns: int | None) -> Frame:
        schema = self.catalog.tables.get(table)
        if schema is None:
            raise QueryError(f"unknown table {table!r}", hint=f"tables: {', '.join(sorted(self.catalog.tables))}")
        self.windows.append((since_ns, until_ns))
        types = {c.name: _COARSE.get(c.type, INT) for c in schema.columns}
        sems = {c.name: c.semantic for c in schema.columns if c.semantic}
        return Frame(self.catalog.rows_sql(table, since_ns, until_ns), schema.names, types, table, sems)


def find_script(name: str) -> Path:
    """A script path, or a bundled script's name (``px/http_data``)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (SCRIPTS_DIR / f"{name}.pxl", SCRIPTS_DIR / name):
        if cand.is_file() and cand.resolve().is_relative_to(SCRIPTS_DIR):
            return cand
    bundled = sorted(str(x.relative_to(SCRIPTS_DIR).with_suffix("")) for x in SCRIPTS_DIR.rglob("*.pxl"))
    raise QueryError(f"no script {name!r}", hint=f"a .pxl file, or one of: {', '.join(bundled)}")


def load_vis(script: Path) -> dict[str, Any] | None:
    side = script.with_suffix(".yaml")
    if not side.is_file():
        return None
    try:
        vis = yaml.safe_load(side.read_text()) or {}
    except yaml.YAMLError as e:
        raise QueryError(f"{side}: not valid YAML: {e}") from None
    if not isinstance(vis, dict):
        raise QueryError(f"{side}: expected a mapping with variables and widgets")
    return vis


def _convert(value: str, annotation: ast.expr | None, name: str) -> Any:
    kind = annotation.id if isinstance(annotation, ast.Name) else "str"
    if not isinstance(value, str):
        return value
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise QueryError(f"--arg {name}={value}: not a {kind}") from None
    if kind == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise QueryError(f"--arg {name}={value}: not a bool (true/false)")
    return value


def _plain_params(fdef: ast.FunctionDef) -> bool:
    for a in fdef.args.args:
        ann = a.annotation
        if ann is None:
            return False
        if not (isinstance(ann, ast.Name) and ann.id in ("str", "int", "float", "bool")
                or isinstance(ann, ast.Attribute) and isinstance(ann.value, ast.Name) and ann.value.id == "px"):
            return False
    return True


def _called_names(fdef: ast.FunctionDef) -> set[str]:
    return {n.func.id for n in ast.walk(fdef) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def plan_pxl(text: str, catalog: Catalog, *, args: dict[str, str] | None = None, func: str | None = None,
             vis: dict[str, Any] | None = None, now_ns: int | None = None,
             filename: str = "<script>") -> list[Display]:
    """Interpret the script; the frames it shows, not yet run."""
    tables = CatalogTables(catalog)
    displays = _plan(text, tables, args=args, func=func, vis=vis, now_ns=now_ns, filename=filename)
    window = span(tables.windows)
    for d in displays:
        d.window = window
    return displays


def _plan(text: str, tables: CatalogTables, *, args: dict[str, str] | None, func: str | None,
          vis: dict[str, Any] | None, now_ns: int | None, filename: str) -> list[Display]:
    args = dict(args or {})
    interp = Interpreter(text, tables, now_ns=time.time_ns() if now_ns is None else now_ns, filename=filename)
    for k, v in args.items():  # top-level scripts may use --arg values as variables
        interp.globals.setdefault(k, v)
    interp.run_module()
    variables = dict((vis or {}).get("variables") or {})
    widgets = (vis or {}).get("widgets") or []
    if func is not None:
        if func not in interp.functions:
            raise QueryError(f"no function {func!r} in {filename}",
                             hint=f"functions: {', '.join(interp.functions) or 'none'}")
        calls = [(func, func)]
    elif interp.displays:
        return interp.displays
    elif widgets:
        calls = []
        for w in widgets:
            if not isinstance(w, dict) or w.get("func") not in interp.functions:
                raise QueryError(f"{filename}: widget {w!r} names no function of the script")
            calls.append((str(w.get("name", w["func"])), w["func"]))
    else:
        fns = {n: f for n, f in interp.functions.items() if _plain_params(f)}
        called = set().union(*(_called_names(f) for f in interp.functions.values())) if interp.functions else set()
        calls = [(n, n) for n in fns if n not in called]
        if not calls:
            raise QueryError(f"{filename} shows nothing",
                             hint="call px.display(df, 'name'), or name a function with --func")
    out: list[Display] = []
    for title, fname in calls:
        fdef = interp.functions[fname]
        kw: dict[str, Any] = {}
        n_defaults = len(fdef.args.defaults)
        params = fdef.args.args
        for i, a in enumerate(params):
            if a.arg in args:
                kw[a.arg] = _convert(args[a.arg], a.annotation, a.arg)
            elif a.arg in variables:
                kw[a.arg] = _convert(variables[a.arg], a.annotation, a.arg)
            elif i >= len(params) - n_defaults:
                continue
            elif a.arg == "start_time":
                kw[a.arg] = "-5m"
            elif not (isinstance(a.annotation, ast.Name) and a.annotation.id in ("int", "float", "bool")):
                kw[a.arg] = ""
            else:
                raise QueryError(f"{fname}() needs a value for {a.arg!r}", hint=f"pass --arg {a.arg}=VALUE")
        value = interp.call_function(fname, kw)
        if not isinstance(value, Frame):
            raise QueryError(f"{fname}() returned {type(value).__name__}, not a DataFrame", filename=filename)
        out.append(Display(title, value))
    return interp.displays + out


def execute(displays: list[Display], catalog: Catalog) -> list[Result]:
    results = []
    register_udfs(catalog.con)
    since, until = span([d.window for d in displays])
    prepare_lookups(catalog, "\n".join(d.frame.sql for d in displays), since, until)
    for d in displays:
        try:
            rows = catalog.con.execute(d.frame.sql).fetchall()
        except duckdb.Error as e:
            raise QueryError(f"{d.name}: the query failed in DuckDB: {str(e).splitlines()[0]}",
                             hint="usually a type mismatch, e.g. comparing a string column with a number") from None
        f = d.frame
        results.append(Result(d.name, list(f.columns), [f.types.get(c) for c in f.columns], rows,
                              [f.sems.get(c, "") for c in f.columns]))
    return results


def run_pxl(text: str, catalog: Catalog, **kw: Any) -> list[Result]:
    return execute(plan_pxl(text, catalog, **kw), catalog)


def run_script(name: str, catalog: Catalog, **kw: Any) -> list[Result]:
    path = find_script(name)
    return run_pxl(path.read_text(), catalog, vis=load_vis(path), filename=str(name), **kw)


def run_sql(sql: str, catalog: Catalog, name: str = "output") -> list[Result]:
    try:
        cur = catalog.con.execute(sql)
        rows = cur.fetchall() if cur.description else []
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {str(e).strip()}",
                         hint=f"tables: {', '.join(sorted(catalog.tables))}") from None
    cols = [d[0] for d in cur.description or []]
    return [Result(name, cols, [None] * len(cols), rows)]
