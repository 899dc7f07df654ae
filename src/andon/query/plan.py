"""A PxL DataFrame as a SQL query for DuckDB, built one operation at a time.

Each :class:`Frame` is a SELECT over the previous one (DuckDB's optimiser flattens the
nesting), with its column names and coarse types tracked here so scripts get errors at
the line that uses a missing column, not from deep inside the generated SQL. A column
expression (:class:`Expr`) is a SQL fragment that refers to columns by name.

Coarse types: INT, FLOAT, STR, BOOL, TIME (BIGINT ns since the epoch, shown as a time).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from ..errors import AndonError
from . import semantic

INT, FLOAT, STR, BOOL, TIME = "INT", "FLOAT", "STR", "BOOL", "TIME"
_NUMERIC = {INT, FLOAT, TIME, BOOL}

QUANTILES = (("p01", 0.01), ("p10", 0.10), ("p25", 0.25), ("p50", 0.50), ("p75", 0.75), ("p90", 0.90),
             ("p99", 0.99))


class QueryError(AndonError, ValueError):
    """A script or query cannot run: where (``line``, ``col``, 1-based), what, and a hint."""

    def __init__(self, message: str, *, line: int | None = None, col: int | None = None, hint: str = "",
                 source: str = "", filename: str = "<script>") -> None:
        self.message = message
        self.line = line
        self.col = col
        self.hint = hint
        self.source = source
        self.filename = filename
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}:{self.col}: " if self.line else ""
        out = f"{where}{self.message}"
        if self.source:
            out += f"\n  {self.source}\n  {' ' * max((self.col or 1) - 1, 0)}^"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        return out


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def lit(v: object) -> str:
    """A Python scalar as a SQL literal."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise QueryError(f"integer {v} does not fit in 64 bits")
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return f"'{v}'::DOUBLE"
        return repr(v)
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    raise QueryError(f"a value of type {type(v).__name__} cannot be used in a column expression")


def lit_type(v: object) -> str | None:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        return INT
    if isinstance(v, float):
        return FLOAT
    if isinstance(v, str):
        return STR
    return None


@dataclass(frozen=True)
class Expr:
    """A column expression: SQL over the columns ``cols`` of ``frame``."""

    sql: str
    typ: str | None
    cols: frozenset[str]
    frame: "Frame | None" = None
    sem: str = ""  # Pixie's semantic type (andon.query.semantic), '' for a plain value


_ids = itertools.count()


@dataclass(frozen=True)
class Frame:
    sql: str
    columns: tuple[str, ...]
    types: dict[str, str | None] = field(default_factory=dict, compare=False)
    table: str = ""  # the source table, for messages
    sems: dict[str, str] = field(default_factory=dict, compare=False)  # semantic types, where not ''

    def col(self, name: str) -> Expr:
        return Expr(q(name), self.types.get(name), frozenset([name]), self, self.sems.get(name, ""))

    def _sems(self, names) -> dict[str, str]:
        return {c: self.sems[c] for c in names if c in self.sems}

    def _from(self) -> str:
        return f"({self.sql}) AS t{next(_ids)}"

    def check(self, names, what: str = "column") -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise QueryError(f"unknown {what} {missing[0]!r}",
                             hint=f"this DataFrame has: {', '.join(self.columns)}")

    def filter(self, e: Expr) -> "Frame":
        self.check(e.cols)
        if e.typ not in (BOOL, None):
            raise QueryError("a filter must be a boolean expression", hint="compare a column: df[df.x > 1]")
        return Frame(f"SELECT * FROM {self._from()} WHERE {e.sql}", self.columns, self.types, self.table, self.sems)

    def with_column(self, name: str, e: Expr) -> "Frame":
        self.check(e.cols)
        parts, cols, types = [], list(self.columns), dict(self.types)
        if name in self.columns:
            parts = [f"{e.sql} AS {q(c)}" if c == name else q(c) for c in self.columns]
        else:
            parts = [q(c) for c in self.columns] + [f"{e.sql} AS {q(name)}"]
            cols.append(name)
        types[name] = e.typ
        sems = dict(self.sems)
        sems.pop(name, None)
        if e.sem:
            sems[name] = e.sem
        return Frame(f"SELECT {', '.join(parts)} FROM {self._from()}", tuple(cols), types, self.table, sems)

    def select(self, names: list[str]) -> "Frame":
        self.check(names)
        return Frame(f"SELECT {', '.join(q(c) for c in names)} FROM {self._from()}", tuple(names),
                     {c: self.types.get(c) for c in names}, self.table, self._sems(names))

    def drop(self, names: list[str]) -> "Frame":
        self.check(names)
        return self.select([c for c in self.columns if c not in names])

    def head(self, n: int) -> "Frame":
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise QueryError(f"head() needs a count >= 0, not {n!r}")
        return Frame(f"SELECT * FROM {self._from()} LIMIT {n}", self.columns, self.types, self.table, self.sems)

    def agg(self, keys: list[str], aggs: list[tuple[str, str, "AggFunc"]]) -> "Frame":
        """GROUP BY ``keys``; ``aggs`` are (output name, input column, function)."""
        self.check(keys)
        self.check([c for _, c, _ in aggs])
        inner, outer, types = [q(k) for k in keys], [q(k) for k in keys], {k: self.types.get(k) for k in keys}
        sems = self._sems(keys)
        names = list(keys)
        for out, col, fn in aggs:
            if out in names:
                raise QueryError(f"agg(): column {out!r} given twice")
            names.append(out)
            raw = fn.sql(q(col), self.types.get(col))
            tmp = q(f"__agg_{len(names)}")
            inner.append(f"{raw} AS {tmp}")
            outer.append(f"{fn.post(tmp)} AS {q(out)}")
            types[out] = fn.result_type(self.types.get(col))
            sem = semantic.aggregate(fn.name, self.sems.get(col, ""))
            if sem:
                sems[out] = sem
        group = f" GROUP BY {', '.join(q(k) for k in keys)}" if keys else ""
        inner_sql = f"SELECT {', '.join(inner)} FROM {self._from()}{group}"
        order = f" ORDER BY {', '.join(q(k) for k in keys)}" if keys else ""
        sql = f"SELECT {', '.join(outer)} FROM ({inner_sql}) AS t{next(_ids)}{order}"
        return Frame(sql, tuple(names), types, self.table, sems)

    def merge(self, right: "Frame", how: str, left_on: list[str], right_on: list[str],
              suffixes: tuple[str, str]) -> "Frame":
        joins = {"inner": "INNER JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "outer": "FULL OUTER JOIN"}
        if how not in joins:
            raise QueryError(f"merge(how={how!r}) is not one of {', '.join(joins)}")
        if len(left_on) != len(right_on) or not left_on:
            raise QueryError("merge(): left_on and right_on need the same number of columns (at least one)")
        self.check(left_on)
        right.check(right_on)
        ls, rs = suffixes
        parts, names, types, sems = [], [], {}, {}
        for side, f, other, suffix in (("l", self, right, ls), ("r", right, self, rs)):
            for c in f.columns:
                n = c + suffix if c in other.columns else c
                parts.append(f"{side}.{q(c)} AS {q(n)}")
                names.append(n)
                types[n] = f.types.get(c)
                if c in f.sems:
                    sems[n] = f.sems[c]
        if len(set(names)) != len(names):
            raise QueryError("merge(): the suffixes leave two columns with the same name",
                             hint="give suffixes=['_x', '_y'] (two different suffixes)")
        on = " AND ".join(f"l.{q(a)} = r.{q(b)}" for a, b in zip(left_on, right_on))
        sql = f"SELECT {', '.join(parts)} FROM ({self.sql}) AS l {joins[how]} ({right.sql}) AS r ON {on}"
        return Frame(sql, tuple(names), types, self.table, sems)

    def append(self, other: "Frame") -> "Frame":
        if set(other.columns) != set(self.columns):
            raise QueryError("append(): both DataFrames need the same columns")
        cols = ", ".join(q(c) for c in self.columns)
        return Frame(f"SELECT {cols} FROM {self._from()} UNION ALL SELECT {cols} FROM {other._from()}",
                     self.columns, self.types, self.table,
                     {c: s for c, s in self.sems.items() if other.sems.get(c) == s})


@dataclass(frozen=True)
class AggFunc:
    """``px.count`` and friends: a value handed to ``agg()``, not called directly."""

    name: str

    def sql(self, col: str, typ: str | None) -> str:
        n = self.name
        if n == "count":
            return f"count({col})"
        if n == "sum":
            return f"sum(CAST({col} AS BIGINT))" if typ == BOOL else f"sum({col})"
        if n == "mean":
            return f"avg(CAST({col} AS DOUBLE))"
        if n in ("min", "max"):
            return f"{n}({col})"
        if n == "any":
            return f"any_value({col})"
        if n == "quantiles":
            return f"quantile_cont({col}, [{', '.join(str(p) for _, p in QUANTILES)}])"
        raise QueryError(f"unknown aggregate {n}")

    def post(self, tmp: str) -> str:
        if self.name == "quantiles":
            pairs = ", ".join(f"'{k}', {tmp}[{i + 1}]" for i, (k, _) in enumerate(QUANTILES))
            return f"CAST(json_object({pairs}) AS VARCHAR)"
        return tmp

    def result_type(self, typ: str | None) -> str | None:
        if self.name == "count":
            return INT
        if self.name == "mean":
            return FLOAT
        if self.name == "quantiles":
            return STR
        if self.name == "sum":
            return INT if typ in (BOOL, INT, TIME) else typ
        return typ


AGGREGATES = {n: AggFunc(n) for n in ("count", "sum", "mean", "min", "max", "any", "quantiles")}
