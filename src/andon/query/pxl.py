"""A PxL-subset interpreter: Python syntax, parsed with :mod:`ast`, never executed by Python.

Only the constructs below are evaluated; anything else is refused with its line, column
and a hint. There is no access to Python builtins, modules or object attributes: names
resolve only to the script's own variables, ``px`` and its functions; attributes only to
DataFrame columns and methods.

    import px                                  (pxtrace/pxviews: refused with a hint)
    x = ..., x += ..., df.col = expr, df['col'] = expr, a, b = ...
    def f(a: str, b: int = 3): ... return df   (calls, positional and keyword)
    if <plain value>: ... else: ...
    px.DataFrame(table=, start_time=, end_time=, select=)
    df[expr]  df['c']  df[['a', 'b']]  df['a', 'b']  df.c  df.ctx['pod']
    + - * / // % ** == != < <= > >= and or not & | ~ in, on columns and plain values
    df.groupby(keys).agg(name=('col', px.fn)), df.agg(...), df.merge(...), df.head(n),
    df.drop(cols), df.append(other), px.display(df, name), px.debug(df, name)

A DataFrame is a :class:`~andon.query.plan.Frame` (a SQL query); assignments to its
columns rebind the variable to a new Frame, as PxL does.
"""

from __future__ import annotations

import abc
import ast
import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

from ..store.settings import parse_duration_ns
from ..errors import UsageError
from . import semantic
from .functions import Builtin, Ctx, as_expr, combine, ctx_column, make_px
from .plan import BOOL, FLOAT, INT, STR, TIME, AggFunc, Expr, Frame, QueryError, lit_type

_MAX_CALL_DEPTH = 64
_MAX_SEQ = 100_000  # longest string/list a script may build


@dataclass
class Display:
    name: str
    frame: Frame
    # the time range of every table the script read, [since, until) in ns (None: unbounded);
    # the pod lookups read the same range
    window: tuple[int | None, int | None] = (None, None)


@dataclass
class _Func:
    node: ast.FunctionDef


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Px:
    """The ``px`` module object."""

    def __init__(self, fns: dict[str, object]) -> None:
        self.fns = fns


class _Method:
    def __init__(self, target: Any, name: str) -> None:
        self.target = target
        self.name = name


class _GroupBy:
    def __init__(self, frame: Frame, keys: list[str]) -> None:
        self.frame = frame
        self.keys = keys


class SourceTables(abc.ABC):
    """What ``px.DataFrame(table=...)`` reads; the runner gives a catalog-backed one."""

    @abc.abstractmethod
    def frame(self, table: str, since_ns: int | None, until_ns: int | None) -> Frame:
        """The rows of ``table`` with ``time_`` in [since_ns, until_ns) (None: unbounded)."""


def parse_time(v: Any, now_ns: int, what: str) -> int | None:
    """PxL times: '-5m' (relative to now), an int of ns since the epoch, or an ISO-8601 string."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise QueryError(f"{what}: not a time: {v!r}")
    if isinstance(v, int):
        return v if v >= 0 else now_ns + v
    if isinstance(v, str):
        s = v.strip()
        if s in ("", "now"):
            return now_ns
        if s.startswith("-") or s.startswith("+"):
            try:
                d = parse_duration_ns(s[1:])
            except UsageError:
                raise QueryError(f"{what}: not a relative time: {v!r}", hint="e.g. '-5m', '-1h', '-30s'") from None
            return now_ns - d if s[0] == "-" else now_ns + d
        try:
            t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(f"{what}: not a time: {v!r}", hint="e.g. '-5m' or '2024-05-01T12:00:00Z'") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return int(t.timestamp()) * 10**9 + t.microsecond * 1000
    raise QueryError(f"{what}: not a time: {v!r}")


class Interpreter:
    def __init__(self, text: str, tables: SourceTables, *, now_ns: int, filename: str = "<script>") -> None:
        self.text = text
        self.lines = text.splitlines()
        self.filename = filename
        self.tables = tables
        self.now_ns = now_ns
        self.px = _Px(make_px(now_ns))
        self.globals: dict[str, Any] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.displays: list[Display] = []
        self._depth = 0
        try:
            self.tree = ast.parse(text, filename=filename)
        except SyntaxError as e:
            raise QueryError(f"syntax error: {e.msg}", line=e.lineno, col=e.offset, filename=filename,
                             source=self._line(e.lineno)) from None

    # ---- errors ---------------------------------------------------------------------

    def _line(self, n: int | None) -> str:
        return self.lines[n - 1].strip() if n and 0 < n <= len(self.lines) else ""

    def fail(self, node: ast.AST, msg: str, hint: str = "") -> QueryError:
        line = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", 0) + 1
        src = self.lines[line - 1].rstrip() if line and 0 < line <= len(self.lines) else ""
        return QueryError(msg, line=line, col=col, hint=hint, source=src, filename=self.filename)

    def _locate(self, node: ast.AST, e: QueryError) -> QueryError:
        return e if e.line is not None else self.fail(node, e.message, e.hint)

    # ---- statements -----------------------------------------------------------------

    def run_module(self) -> None:
        self._block(self.tree.body, self.globals, top=True)

    def _block(self, body: list[ast.stmt], env: dict[str, Any], top: bool = False) -> None:
        for st in body:
            try:
                self._stmt(st, env, top)
            except QueryError as e:
                raise self._locate(st, e) from None

    def _stmt(self, st: ast.stmt, env: dict[str, Any], top: bool) -> None:
        if isinstance(st, ast.Expr):
            if isinstance(st.value, ast.Constant) and isinstance(st.value.value, str):
                return  # docstring
            self.eval(st.value, env)
        elif isinstance(st, ast.Import):
            for a in st.names:
                if a.name == "px":
                    env[a.asname or "px"] = self.px
                elif a.name in ("pxtrace", "pxviews", "pxlog"):
                    raise self.fail(st, f"module {a.name!r} is not supported by andon",
                                    hint="andon runs the px DataFrame subset; see docs/queries.md")
                else:
                    raise self.fail(st, f"import of {a.name!r} is not allowed", hint="only `import px` is")
        elif isinstance(st, ast.Assign):
            value = self.eval(st.value, env)
            for t in st.targets:
                self._assign(t, value, env)
        elif isinstance(st, ast.AnnAssign) and st.value is not None:
            self._assign(st.target, self.eval(st.value, env), env)
        elif isinstance(st, ast.AugAssign):
            if not isinstance(st.target, ast.Name):
                raise self.fail(st, "augmented assignment only to a plain variable")
            cur = self._name(st.target, env)
            self._assign(st.target, self._binop(st, st.op, cur, self.eval(st.value, env)), env)
        elif isinstance(st, ast.FunctionDef):
            if st.decorator_list:
                raise self.fail(st, "decorators are not supported")
            a = st.args
            if a.vararg or a.kwarg or a.posonlyargs or a.kwonlyargs:
                raise self.fail(st, "only plain parameters (name: type = default) are supported")
            env[st.name] = _Func(st)
            if top:
                self.functions[st.name] = st
        elif isinstance(st, ast.Return):
            raise _Return(self.eval(st.value, env) if st.value is not None else None)
        elif isinstance(st, ast.If):
            cond = self.eval(st.test, env)
            if isinstance(cond, (Expr, Frame)):
                raise self.fail(st, "`if` on a column is not possible", hint="use px.select(cond, a, b)")
            self._block(st.body if cond else st.orelse, env)
        elif isinstance(st, ast.Pass):
            return
        else:
            raise self.fail(st, f"{type(st).__name__} statements are not supported in PxL",
                            hint="PxL has no loops, classes, try, with or global; see docs/queries.md")

    def _assign(self, t: ast.expr, value: Any, env: dict[str, Any]) -> None:
        if isinstance(t, ast.Name):
            env[t.id] = value
        elif isinstance(t, (ast.Attribute, ast.Subscript)):
            if not isinstance(t.value, ast.Name):
                raise self.fail(t, "assign columns on a DataFrame variable: df.col = ...")
            frame = self._name(t.value, env)
            if not isinstance(frame, Frame):
                raise self.fail(t, f"{t.value.id!r} is not a DataFrame")
            col = t.attr if isinstance(t, ast.Attribute) else self.eval(t.slice, env)
            if not isinstance(col, str):
                raise self.fail(t, "a column name must be a string")
            if isinstance(value, (Frame, _GroupBy, Builtin, AggFunc, _Func, _Method, list, tuple, dict)):
                raise self.fail(t, f"cannot store a {type(value).__name__} in column {col!r}",
                                hint="a column is an expression of other columns or a plain value")
            e = as_expr(value)
            if e.frame is not None and e.frame is not frame:
                frame.check(e.cols)
            env[t.value.id] = frame.with_column(col, e)
        elif isinstance(t, (ast.Tuple, ast.List)):
            if not isinstance(value, (list, tuple)) or len(value) != len(t.elts):
                raise self.fail(t, "cannot unpack: the number of values does not match")
            for sub, v in zip(t.elts, value):
                self._assign(sub, v, env)
        else:
            raise self.fail(t, f"cannot assign to {type(t).__name__}")

    # ---- expressions ----------------------------------------------------------------

    def _name(self, node: ast.Name, env: dict[str, Any]) -> Any:
        if node.id in env:
            return env[node.id]
        if node.id in self.globals:
            return self.globals[node.id]
        raise self.fail(node, f"name {node.id!r} is not defined",
                        hint="Python builtins are not available in PxL" if node.id in _PY_BUILTINS else
                        "define it above, or pass it with --arg")

    def eval(self, node: ast.expr, env: dict[str, Any]) -> Any:
        try:
            return self._eval(node, env)
        except QueryError as e:
            raise self._locate(node, e) from None

    def _eval(self, node: ast.expr, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, int, float, str)) or node.value is None:
                if isinstance(node.value, str) and len(node.value) > _MAX_SEQ:
                    raise self.fail(node, "string constant too long")
                return node.value
            raise self.fail(node, f"constants of type {type(node.value).__name__} are not supported")
        if isinstance(node, ast.Name):
            return self._name(node, env)
        if isinstance(node, ast.Attribute):
            return self._attr(node, self.eval(node.value, env))
        if isinstance(node, ast.Subscript):
            return self._subscript(node, self.eval(node.value, env), env)
        if isinstance(node, ast.Call):
            return self._call(node, env)
        if isinstance(node, ast.BinOp):
            return self._binop(node, node.op, self.eval(node.left, env), self.eval(node.right, env))
        if isinstance(node, ast.UnaryOp):
            return self._unary(node, self.eval(node.operand, env))
        if isinstance(node, ast.BoolOp):
            return self._boolop(node, env)
        if isinstance(node, ast.Compare):
            return self._compare(node, env)
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [self.eval(e, env) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self.fail(node, "** in a dict is not supported")
            return {self._hashable(k, env): self.eval(v, env) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.IfExp):
            cond = self.eval(node.test, env)
            if isinstance(cond, Expr):
                raise self.fail(node, "`a if cond else b` on a column is not possible", hint="use px.select(cond, a, b)")
            return self.eval(node.body if cond else node.orelse, env)
        if isinstance(node, ast.JoinedStr):
            out = []
            for v in node.values:
                x = self.eval(v.value, env) if isinstance(v, ast.FormattedValue) else v.value
                if not isinstance(x, (str, int, float, bool)):
                    raise self.fail(v, "only plain values can be formatted into a string")
                out.append(str(x))
            return "".join(out)
        raise self.fail(node, f"{type(node).__name__} is not supported in PxL",
                        hint="no lambdas, comprehensions or generators; see docs/queries.md")

    def _hashable(self, k: ast.expr, env: dict[str, Any]) -> Any:
        v = self.eval(k, env)
        if not isinstance(v, (str, int, float, bool)):
            raise self.fail(k, "dict keys must be plain values")
        return v

    def _attr(self, node: ast.Attribute, obj: Any) -> Any:
        name = node.attr
        if name.startswith("__"):
            raise self.fail(node, f"attribute {name!r} is not allowed")
        if isinstance(obj, _Px):
            if name == "DataFrame":
                return _Method(self, "DataFrame")
            if name in ("display", "debug"):
                return _Method(self, name)
            if name in obj.fns:
                return obj.fns[name]
            raise self.fail(node, f"px.{name} is not supported by andon", hint="see docs/queries.md for the px subset")
        if isinstance(obj, Frame):
            if name == "ctx":
                return Ctx(obj)
            if name in _FRAME_METHODS:
                return _Method(obj, name)
            if name in obj.columns:
                return obj.col(name)
            raise self.fail(node, f"unknown column {name!r}", hint=f"this DataFrame has: {', '.join(obj.columns)}")
        if isinstance(obj, _GroupBy) and name == "agg":
            return _Method(obj, "agg")
        raise self.fail(node, f"{type(obj).__name__ if not isinstance(obj, Expr) else 'a column'} has no "
                              f"attribute {name!r} in PxL")

    def _subscript(self, node: ast.Subscript, obj: Any, env: dict[str, Any]) -> Any:
        if isinstance(node.slice, ast.Slice):
            raise self.fail(node, "slices are not supported", hint="use df.head(n)")
        key = self.eval(node.slice, env)
        if isinstance(obj, Frame):
            if isinstance(key, str):
                if key not in obj.columns:
                    raise self.fail(node, f"unknown column {key!r}", hint=f"this DataFrame has: {', '.join(obj.columns)}")
                return obj.col(key)
            if isinstance(key, (list, tuple)):
                if not all(isinstance(k, str) for k in key):
                    raise self.fail(node, "select columns with a list of names: df[['a', 'b']]")
                return obj.select(list(key))
            if isinstance(key, Expr):
                return obj.filter(key)
            if isinstance(key, bool):
                return obj if key else obj.filter(as_expr(False))
            raise self.fail(node, "a DataFrame is indexed by a column name, a list of names or a condition")
        if isinstance(obj, Ctx):
            return ctx_column(obj.frame, key)
        if isinstance(obj, (list, tuple)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise self.fail(node, "list indexes must be integers")
            try:
                return obj[key]
            except IndexError:
                raise self.fail(node, "list index out of range") from None
        if isinstance(obj, dict):
            if not isinstance(key, (str, int, float, bool)) or key not in obj:
                raise self.fail(node, f"key {key!r} not in dict")
            return obj[key]
        raise self.fail(node, "this value cannot be indexed")

    # ---- operators ------------------------------------------------------------------

    _SQL_BIN = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
                ast.BitAnd: "AND", ast.BitOr: "OR"}

    def _binop(self, node: ast.AST, op: ast.operator, a: Any, b: Any) -> Any:
        if isinstance(a, Expr) or isinstance(b, Expr):
            return self._sql_binop(node, op, a, b)
        for v in (a, b):
            if not isinstance(v, (int, float, str, bool, list, tuple)):
                raise self.fail(node, f"operator not supported on {type(v).__name__}")
        try:
            if isinstance(op, ast.Add):
                r = a + b
            elif isinstance(op, ast.Sub):
                r = a - b
            elif isinstance(op, ast.Mult):
                if isinstance(a, (str, list, tuple)) or isinstance(b, (str, list, tuple)):
                    n = b if isinstance(a, (str, list, tuple)) else a
                    s = a if isinstance(a, (str, list, tuple)) else b
                    if not isinstance(n, int) or len(s) * max(n, 0) > _MAX_SEQ:
                        raise self.fail(node, "sequence repetition too large")
                r = a * b
            elif isinstance(op, ast.Div):
                r = a / b
            elif isinstance(op, ast.FloorDiv):
                r = a // b
            elif isinstance(op, ast.Mod):
                if isinstance(a, str):
                    raise self.fail(node, "% formatting is not supported", hint="use an f-string")
                r = a % b
            elif isinstance(op, ast.Pow):
                if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or abs(b) > 64 or abs(a) > 2**64:
                    raise self.fail(node, "power out of range")
                r = a ** b
            elif isinstance(op, (ast.BitAnd, ast.BitOr)) and isinstance(a, bool) and isinstance(b, bool):
                r = (a and b) if isinstance(op, ast.BitAnd) else (a or b)
            else:
                raise self.fail(node, f"operator {type(op).__name__} is not supported here")
        except (TypeError, ZeroDivisionError, OverflowError) as e:
            raise self.fail(node, f"cannot compute: {e}") from None
        if isinstance(r, (str, list, tuple)) and len(r) > _MAX_SEQ:
            raise self.fail(node, "value too large")
        return r

    def _sql_binop(self, node: ast.AST, op: ast.operator, a: Any, b: Any) -> Expr:
        if type(op) not in self._SQL_BIN:
            raise self.fail(node, f"operator {type(op).__name__} is not supported on columns")
        ea, eb = self._expr(node, a), self._expr(node, b)
        sym = self._SQL_BIN[type(op)]
        if sym in ("AND", "OR"):
            return combine(f"({ea.sql} {sym} {eb.sql})", BOOL, a, b)
        ta, tb = ea.typ, eb.typ
        if sym == "+" and STR in (ta, tb):
            if ta != tb:
                raise self.fail(node, "cannot add a string and a number")
            return combine(f"({ea.sql} || {eb.sql})", STR, a, b)
        if STR in (ta, tb):
            raise self.fail(node, f"operator {sym} is not defined on strings")
        sem = semantic.binop(sym, ea.sem, eb.sem)
        if sym == "/":
            typ = FLOAT
            sql = f"(CAST({ea.sql} AS DOUBLE) / {eb.sql})"
        elif sym == "//":
            typ = INT if FLOAT not in (ta, tb) else FLOAT
            sql = f"floor(CAST({ea.sql} AS DOUBLE) / {eb.sql})" if typ == FLOAT else f"({ea.sql} // {eb.sql})"
        else:
            if FLOAT in (ta, tb):
                typ = FLOAT
            elif sym in ("+", "-") and TIME in (ta, tb):
                typ = INT if (ta == tb == TIME and sym == "-") else TIME
            elif ta is None or tb is None:
                typ = None
            else:
                typ = INT
            sql = f"({ea.sql} {sym} {eb.sql})"
        return combine(sql, typ, a, b, sem=sem)

    def _expr(self, node: ast.AST, v: Any) -> Expr:
        if isinstance(v, Expr):
            return v
        if isinstance(v, (Frame, _GroupBy, Builtin, AggFunc, _Func, _Method, Ctx, dict, list, tuple, _Px)) or v is None:
            raise self.fail(node, f"a {type(v).__name__} cannot be used in a column expression")
        return as_expr(v)

    def _unary(self, node: ast.UnaryOp, v: Any) -> Any:
        if isinstance(v, Expr):
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return combine(f"(NOT {v.sql})", BOOL, v)
            if isinstance(node.op, ast.USub):
                return combine(f"(-{v.sql})", v.typ, v)
            return v
        if isinstance(node.op, ast.Not):
            return not v
        if isinstance(node.op, ast.Invert):
            if isinstance(v, bool):
                return not v
            raise self.fail(node, "~ is for conditions")
        if not isinstance(v, (int, float)):
            raise self.fail(node, "unary minus needs a number")
        return -v if isinstance(node.op, ast.USub) else +v

    def _boolop(self, node: ast.BoolOp, env: dict[str, Any]) -> Any:
        sym = "AND" if isinstance(node.op, ast.And) else "OR"
        vals: list[Any] = []
        for sub in node.values:
            v = self.eval(sub, env)
            if not isinstance(v, Expr) and not vals:
                # plain-value short-circuit, as Python, while no column is involved
                if (sym == "AND" and not v) or (sym == "OR" and v):
                    return v
                continue
            vals.append(v)
        if not vals:
            return v
        if len(vals) == 1:
            return vals[0] if isinstance(vals[0], Expr) else vals[0]
        es = [self._expr(node, v) for v in vals]
        return combine("(" + f" {sym} ".join(e.sql for e in es) + ")", BOOL, *vals)

    _CMP = {ast.Eq: "=", ast.NotEq: "<>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}

    def _compare(self, node: ast.Compare, env: dict[str, Any]) -> Any:
        left = self.eval(node.left, env)
        parts: list[Any] = []
        for op, rnode in zip(node.ops, node.comparators):
            right = self.eval(rnode, env)
            parts.append(self._cmp1(node, op, left, right))
            left = right
        if len(parts) == 1:
            return parts[0]
        if not any(isinstance(p, Expr) for p in parts):
            return all(parts)
        es = [self._expr(node, p) for p in parts]
        return combine("(" + " AND ".join(e.sql for e in es) + ")", BOOL, *parts)

    def _cmp1(self, node: ast.AST, op: ast.cmpop, a: Any, b: Any) -> Any:
        if isinstance(op, (ast.In, ast.NotIn)):
            if not isinstance(b, (list, tuple, str)):
                raise self.fail(node, "`in` needs a list (or a string) on the right")
            if isinstance(a, Expr):
                if isinstance(b, str):
                    sql = f"contains({self._expr(node, b).sql}, {a.sql})"
                elif b:
                    sql = f"({a.sql} IN ({', '.join(self._expr(node, x).sql for x in b)}))"
                else:
                    sql = "FALSE"
                if isinstance(op, ast.NotIn):
                    sql = f"(NOT {sql})"
                return combine(sql, BOOL, a)
            if any(isinstance(x, Expr) for x in b):
                raise self.fail(node, "`in` with columns in the list is not supported")
            return (a in b) == isinstance(op, ast.In)
        if isinstance(op, (ast.Is, ast.IsNot)):
            raise self.fail(node, "`is` is not supported", hint="use == or !=")
        if isinstance(a, Expr) or isinstance(b, Expr):
            ea, eb = self._expr(node, a), self._expr(node, b)
            return combine(f"({ea.sql} {self._CMP[type(op)]} {eb.sql})", BOOL, a, b)
        try:
            return {ast.Eq: lambda: a == b, ast.NotEq: lambda: a != b, ast.Lt: lambda: a < b,
                    ast.LtE: lambda: a <= b, ast.Gt: lambda: a > b, ast.GtE: lambda: a >= b}[type(op)]()
        except TypeError as e:
            raise self.fail(node, f"cannot compare: {e}") from None

    # ---- calls ----------------------------------------------------------------------

    def _call(self, node: ast.Call, env: dict[str, Any]) -> Any:
        fn = self.eval(node.func, env)
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.fail(node, "*args and **kwargs are not supported")
        args = [self.eval(a, env) for a in node.args]
        kwargs = {k.arg: self.eval(k.value, env) for k in node.keywords}
        if isinstance(fn, Builtin):
            lo, hi = fn.nargs
            bad = [k for k in kwargs if k not in fn.kwargs]
            if bad or not lo <= len(args) <= hi:
                n = f"{lo}" if lo == hi else f"{lo} to {hi}"
                raise self.fail(node, f"px.{fn.name}() takes {n} argument(s)" + (f", not {bad[0]}=" if bad else ""))
            try:
                return fn.fn(*args, **kwargs)
            except QueryError as e:
                raise self._locate(node, e) from None
            except (TypeError, ValueError, OverflowError, ZeroDivisionError) as e:
                raise self.fail(node, f"px.{fn.name}(): {e}") from None
        if isinstance(fn, _Func):
            return self._call_user(node, fn.node, args, kwargs)
        if isinstance(fn, _Method):
            try:
                return self._method(node, fn, args, kwargs)
            except QueryError as e:
                raise self._locate(node, e) from None
        if isinstance(fn, AggFunc):
            raise self.fail(node, f"px.{fn.name} is an aggregate: use it in agg(), e.g. "
                                  f"df.groupby('x').agg(n=('col', px.{fn.name}))")
        raise self.fail(node, "this value cannot be called")

    def call_function(self, name: str, args: dict[str, Any]) -> Any:
        node = self.functions[name]
        return self._call_user(node, node, [], args)

    def _call_user(self, node: ast.AST, fdef: ast.FunctionDef, args: list, kwargs: dict) -> Any:
        params = [a.arg for a in fdef.args.args]
        defaults = fdef.args.defaults
        if len(args) > len(params):
            raise self.fail(node, f"{fdef.name}() takes {len(params)} argument(s), {len(args)} given")
        local: dict[str, Any] = dict(zip(params, args))
        for k, v in kwargs.items():
            if k not in params:
                raise self.fail(node, f"{fdef.name}() has no parameter {k!r}")
            if k in local:
                raise self.fail(node, f"{fdef.name}() got {k!r} twice")
            local[k] = v
        first_default = len(params) - len(defaults)
        for i, p in enumerate(params):
            if p not in local:
                if i >= first_default:
                    local[p] = self.eval(defaults[i - first_default], self.globals)
                else:
                    raise self.fail(node, f"{fdef.name}() is missing argument {p!r}")
        self._depth += 1
        if self._depth > _MAX_CALL_DEPTH:
            self._depth = 0
            raise self.fail(node, "functions call each other too deeply (recursion?)")
        try:
            self._block(fdef.body, _Scope(local, self.globals))
        except _Return as r:
            return r.value
        finally:
            self._depth -= 1
        return None

    def _method(self, node: ast.Call, m: _Method, args: list, kw: dict) -> Any:
        t, name = m.target, m.name
        if t is self:
            if name == "DataFrame":
                return self._dataframe(args, kw)
            return self._display(name, args, kw)
        if isinstance(t, _GroupBy):
            return self._agg(t.frame, t.keys, args, kw)
        assert isinstance(t, Frame)
        if name == "groupby":
            keys = _one(args, kw, "by", "groupby")
            keys = [keys] if isinstance(keys, str) else keys
            if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys) or not keys:
                raise QueryError("groupby() needs a column name or a list of them")
            t.check(keys)
            return _GroupBy(t, list(keys))
        if name == "agg":
            return self._agg(t, [], args, kw)
        if name == "head":
            return t.head(_one(args, kw, "n", "head", default=5))
        if name == "drop":
            cols = _one(args, kw, "columns", "drop")
            cols = [cols] if isinstance(cols, str) else cols
            if not isinstance(cols, (list, tuple)) or not all(isinstance(c, str) for c in cols):
                raise QueryError("drop() needs a column name or a list of them")
            return t.drop(list(cols))
        if name == "merge":
            return self._merge(t, args, kw)
        if name == "append":
            other = _one(args, kw, "objs", "append")
            if isinstance(other, list) and len(other) == 1:
                other = other[0]
            if not isinstance(other, Frame):
                raise QueryError("append() needs a DataFrame")
            return t.append(other)
        if name == "stream":
            return t
        raise QueryError(f"DataFrame.{name}() is not supported")

    def _dataframe(self, args: list, kw: dict) -> Frame:
        allowed = {"table", "start_time", "end_time", "select"}
        bad = set(kw) - allowed
        if bad:
            raise QueryError(f"px.DataFrame() has no argument {sorted(bad)[0]!r}",
                             hint="use table=, start_time=, end_time=, select=")
        if args:
            if len(args) > 1 or "table" in kw:
                raise QueryError("px.DataFrame() takes the table name, then keywords")
            kw["table"] = args[0]
        table = kw.get("table")
        if not isinstance(table, str):
            raise QueryError("px.DataFrame() needs table='name'")
        since = parse_time(kw.get("start_time"), self.now_ns, "start_time")
        until = parse_time(kw.get("end_time"), self.now_ns, "end_time")
        frame = self.tables.frame(table, since, until)
        sel = kw.get("select")
        if sel is not None:
            if not isinstance(sel, (list, tuple)) or not all(isinstance(c, str) for c in sel):
                raise QueryError("select= needs a list of column names")
            frame = frame.select(list(sel))
        return frame

    def _display(self, name: str, args: list, kw: dict) -> None:
        if not args or not isinstance(args[0], Frame):
            raise QueryError(f"px.{name}() needs a DataFrame first")
        title = args[1] if len(args) > 1 else kw.get("name", "output")
        if not isinstance(title, str):
            raise QueryError(f"px.{name}(): the name must be a string")
        self.displays.append(Display(title, args[0]))
        return None

    def _agg(self, frame: Frame, keys: list[str], args: list, kw: dict) -> Frame:
        if args:
            raise QueryError("agg() takes keywords: agg(name=('column', px.fn))")
        aggs = []
        for out, spec in kw.items():
            if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)
                    and isinstance(spec[1], AggFunc)):
                raise QueryError(f"agg({out}=...) needs a pair ('column', px.fn)",
                                 hint="e.g. agg(latency_p50=('latency', px.quantiles))")
            aggs.append((out, spec[0], spec[1]))
        if not aggs and not keys:
            raise QueryError("agg() needs at least one aggregate")
        return frame.agg(keys, aggs)

    def _merge(self, left: Frame, args: list, kw: dict) -> Frame:
        if not args or not isinstance(args[0], Frame):
            right = kw.pop("right", None)
        else:
            right = args[0]
        if not isinstance(right, Frame):
            raise QueryError("merge() needs the other DataFrame first")
        bad = set(kw) - {"how", "left_on", "right_on", "suffixes", "right"}
        if bad:
            raise QueryError(f"merge() has no argument {sorted(bad)[0]!r}")
        lo, ro = kw.get("left_on"), kw.get("right_on")
        lo = [lo] if isinstance(lo, str) else list(lo or [])
        ro = [ro] if isinstance(ro, str) else list(ro or [])
        suf = kw.get("suffixes", ("_x", "_y"))
        if not isinstance(suf, (list, tuple)) or len(suf) != 2 or not all(isinstance(s, str) for s in suf):
            raise QueryError("suffixes= needs two strings")
        return left.merge(right, kw.get("how", "inner"), lo, ro, (suf[0], suf[1]))


class _Scope(dict):
    """A function's locals, falling back to the script's globals on lookup."""

    def __init__(self, local: dict[str, Any], globals_: dict[str, Any]) -> None:
        super().__init__(local)
        self._globals = globals_

    def __contains__(self, k: object) -> bool:
        return dict.__contains__(self, k) or k in self._globals

    def __getitem__(self, k: str) -> Any:
        if dict.__contains__(self, k):
            return dict.__getitem__(self, k)
        return self._globals[k]


def _one(args: list, kw: dict, key: str, fn: str, default: Any = ...) -> Any:
    if len(args) > 1 or (args and key in kw):
        raise QueryError(f"{fn}() takes one argument")
    if args:
        return args[0]
    if key in kw:
        return kw[key]
    if default is ...:
        raise QueryError(f"{fn}() needs an argument")
    return default


_FRAME_METHODS = {"groupby", "agg", "head", "drop", "merge", "append", "stream"}
_PY_BUILTINS = {"open", "eval", "exec", "__import__", "getattr", "setattr", "globals", "locals", "compile",
                "vars", "dir", "type", "object", "print", "len", "range", "input", "breakpoint", "__builtins__"}

_ARG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
