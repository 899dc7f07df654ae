"""The ``px`` module as andon provides it: column functions, aggregates, time helpers.

Functions take column expressions (:class:`~andon.query.plan.Expr`) or plain values; on
plain values most compute in Python (``px.DurationNanos(10 * ns_per_s)`` is a number),
on columns they build SQL. Kubernetes lookups (``px.ip_to_pod_id``...) take a pod to be
a container, known by the addresses its traced processes report.
"""

from __future__ import annotations

import functools
import json
import math
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from . import semantic
from .plan import AGGREGATES, BOOL, FLOAT, INT, STR, TIME, Expr, Frame, QueryError, lit, lit_type, q

if TYPE_CHECKING:
    from ..store.catalog import Catalog

NS = {"nanoseconds": 1, "microseconds": 10**3, "milliseconds": 10**6, "seconds": 10**9, "minutes": 60 * 10**9,
      "hours": 3600 * 10**9, "days": 86400 * 10**9}


def as_expr(v: object) -> Expr:
    if isinstance(v, Expr):
        return v
    return Expr(lit(v), lit_type(v), frozenset(), None, semantic.of(v))


def frame_of(*vals: object) -> Frame | None:
    for v in vals:
        if isinstance(v, Expr) and v.frame is not None:
            return v.frame
    return None


def combine(sql: str, typ: str | None, *vals: object, sem: str = "") -> Expr:
    cols: frozenset[str] = frozenset()
    for v in vals:
        if isinstance(v, Expr):
            cols |= v.cols
    return Expr(sql, typ, cols, frame_of(*vals), sem)


# ---- df.ctx[...] ------------------------------------------------------------------------

def _entity(frame: Frame) -> str:
    return f"(CASE WHEN {q('container_name')} <> '' THEN {q('container_name')} ELSE {q('comm')} END)"


# ctx key -> (columns it needs, SQL, type). pod/service: the container's name, else the process name.
CTX = {
    "pid": (("pid",), q("pid"), INT),
    "upid": (("upid",), q("upid"), STR),
    "cmd": (("comm",), q("comm"), STR),
    "cmdline": (("comm",), q("comm"), STR),
    "comm": (("comm",), q("comm"), STR),
    "container": (("container_name",), q("container_name"), STR),
    "container_name": (("container_name",), q("container_name"), STR),
    "container_id": (("container_id",), q("container_id"), STR),
    "pod_id": (("container_id",), q("container_id"), STR),
    "service_id": (("container_id",), q("container_id"), STR),
    "pod": (("container_name", "comm"), None, STR),
    "pod_name": (("container_name", "comm"), None, STR),
    "service": (("container_name", "comm"), None, STR),
    "service_name": (("container_name", "comm"), None, STR),
    "deployment": (("container_name", "comm"), None, STR),
    "deployment_name": (("container_name", "comm"), None, STR),
    "namespace": ((), "''", STR),
    "node": ((), None, STR),
    "node_name": ((), None, STR),
    "hostname": ((), None, STR),
}


def ctx_column(frame: Frame, key: object) -> Expr:
    if not isinstance(key, str) or key not in CTX:
        raise QueryError(f"ctx[{key!r}] is not known", hint=f"andon knows ctx[...] for: {', '.join(sorted(CTX))}")
    need, sql, typ = CTX[key]
    missing = [c for c in need if c not in frame.columns]
    if sql is None:
        sql = lit(socket.gethostname()) if not need else _entity(frame)
    if missing and "upid" in frame.columns and frame.table:
        return _ctx_by_upid(frame, need, sql, typ)
    if missing:
        raise QueryError(f"ctx[{key!r}] needs column {missing[0]!r} or 'upid', which this DataFrame no longer has",
                         hint="use df.ctx[...] before groupby/drop, as in Pixie")
    return Expr(sql, typ, frozenset(need), frame)


def _ctx_by_upid(frame: Frame, need: tuple[str, ...], sql: str, typ: str) -> Expr:
    """ctx[...] of a DataFrame that kept ``upid`` but not andon's enrichment columns
    (``px.DataFrame(select=['time_', 'upid', ...])``): Pixie resolves ctx from the upid,
    so do we, from the rows of the same table (one process, one name: any row will do)."""
    if need == ("pid",):  # the pid is part of the upid itself ("asid:pid:start_ts")
        return Expr(f"COALESCE(TRY_CAST(split_part({q('upid')}, ':', 2) AS BIGINT), 0)", typ, frozenset(["upid"]),
                    frame)
    names = (f"(SELECT map(list(u), list(v)) FROM (SELECT {q('upid')} AS u, any_value({sql}) AS v "
             f"FROM {q(frame.table)} GROUP BY {q('upid')}))")
    return Expr(f"COALESCE(map_extract_value({names}, {q('upid')}), '')", typ, frozenset(["upid"]), frame)


class Ctx:
    """``df.ctx``: subscript it with a key."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame


# ---- builtins ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Builtin:
    name: str
    fn: Callable
    nargs: tuple[int, int]  # min, max positional
    kwargs: tuple[str, ...] = ()


def _need_str(name: str, v: object) -> str:
    if not isinstance(v, str):
        raise QueryError(f"px.{name}() needs a string here, not {type(v).__name__}")
    return v


def _str_fn(sqlf: Callable[..., str], pyf: Callable, typ: str):
    def f(*args):
        if not any(isinstance(a, Expr) for a in args):
            return pyf(*args)
        return combine(sqlf(*(as_expr(a).sql for a in args)), typ, *args)
    return f


def _contains(s, sub):
    return _str_fn(lambda a, b: f"contains({a}, {b})", lambda a, b: b in a, BOOL)(s, sub)


def _select(cond, a, b):
    if not isinstance(cond, Expr):
        return a if cond else b
    ta = a.typ if isinstance(a, Expr) else lit_type(a)
    tb = b.typ if isinstance(b, Expr) else lit_type(b)
    sa, sb = semantic.of(a), semantic.of(b)
    return combine(f"(CASE WHEN {cond.sql} THEN {as_expr(a).sql} ELSE {as_expr(b).sql} END)", ta or tb, cond, a, b,
                   sem=sa if sa == sb else "")


def _bin(v, size):
    if isinstance(size, Expr):
        raise QueryError("px.bin() needs a fixed bin size, not a column")
    if not isinstance(size, int) or size <= 0:
        raise QueryError(f"px.bin() needs a positive integer bin size, not {size!r}")
    if not isinstance(v, Expr):
        return v - v % size
    e = as_expr(v)
    return combine(f"({e.sql} - ({e.sql} % {size}))", e.typ if e.typ in (TIME, INT) else INT, v)


def _duration(v):
    if isinstance(v, Expr):
        return combine(f"CAST({v.sql} AS BIGINT)", INT, v, sem=semantic.DURATION_NS)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise QueryError(f"px.DurationNanos() needs a number, not {v!r}")
    return semantic.tag(int(v), semantic.DURATION_NS)


def _identity_num(name, sem=""):
    """px.Bytes(), px.Percent(), ...: the same number, said to be of semantic type ``sem``."""
    def f(v):
        if isinstance(v, Expr):
            return combine(v.sql, v.typ, v, sem=sem) if sem else v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return semantic.tag(v, sem) if sem else v
        raise QueryError(f"px.{name}() needs a number, not {v!r}")
    return f


def _math(name, sqlname, pyf, typ, keep_sem=False):
    def f(v):
        if isinstance(v, Expr):
            return combine(f"{sqlname}({v.sql})", typ, v, sem=semantic.absolute(v.sem) if keep_sem else "")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise QueryError(f"px.{name}() needs a number, not {v!r}")
        return pyf(v)
    return f


def _json_path(key: str) -> str:
    return lit('$."' + key.replace('"', '\\"') + '"')


def _pluck(kind):
    def f(v, key):
        key = _need_str("pluck", key)
        e = as_expr(v)
        s = f"json_extract_string({e.sql}, {_json_path(key)})"
        if kind == "float":
            return combine(f"COALESCE(TRY_CAST({s} AS DOUBLE), 0.0)", FLOAT, v, sem=semantic.pluck(e.sem))
        if kind == "int":
            return combine(f"COALESCE(TRY_CAST({s} AS BIGINT), 0)", INT, v)
        return combine(f"COALESCE({s}, '')", STR, v)
    return f


def _upid_part(idx):
    def f(v):
        if isinstance(v, str):
            parts = v.split(":")
            return int(parts[idx]) if len(parts) == 3 and parts[idx].isdigit() else 0
        e = as_expr(v)
        return combine(f"COALESCE(TRY_CAST(split_part({e.sql}, ':', {idx + 1}) AS BIGINT), 0)", INT, v)
    return f


def _upid_to(key):
    def f(v):
        if not isinstance(v, Expr) or v.frame is None:
            raise QueryError(f"px.upid_to_{key}() needs the upid column of a DataFrame")
        return ctx_column(v.frame, key)
    return f


def _empty(*_a):
    return ""


def _first(v, *_rest):
    return v


def _equals_any(v, values):
    if not isinstance(values, (list, tuple)):
        raise QueryError("px.equals_any() needs a list of values")
    if not isinstance(v, Expr):
        return v in values
    if not values:
        return as_expr(False)
    return combine(f"({v.sql} IN ({', '.join(lit(x) for x in values)}))", BOOL, v)


def _substring(s, pos, length):
    if not isinstance(s, Expr):
        return s[pos:pos + length]
    return combine(f"substr({s.sql}, {as_expr(pos).sql} + 1, {as_expr(length).sql})", STR, s, pos, length)


# ---- regular expressions (RE2, as Pixie's regex_ops.h) -----------------------------------

def _re2(sql: str, *params: object) -> object:
    """One RE2 call on plain values, in a throwaway DuckDB: the same regex engine and flags as
    the column path, so a plain value and a column never disagree."""
    try:
        with duckdb.connect() as con:
            return con.execute(sql, list(params)).fetchone()[0]
    except duckdb.Error as e:
        raise QueryError(f"not a valid regular expression: {str(e).splitlines()[0]}",
                         hint="RE2 syntax: https://github.com/google/re2/wiki/Syntax") from None


def _pattern(name: str, pattern: object) -> str:
    if isinstance(pattern, Expr):
        raise QueryError(f"px.{name}() needs a fixed pattern, not a column")
    pattern = _need_str(name, pattern)
    _re2("SELECT regexp_matches('', ?)", pattern)  # refuse a bad pattern now, not mid-query
    return pattern


def _regex_match(pattern, s):
    """True when the whole string matches; '.' matches newlines too (RE2 dot_nl, as Pixie)."""
    pattern = _pattern("regex_match", pattern)
    if not isinstance(s, Expr):
        return bool(_re2("SELECT regexp_full_match(?, ?, 's')", _need_str("regex_match", s), pattern))
    return combine(f"regexp_full_match({s.sql}, {lit(pattern)}, 's')", BOOL, s)


def _replace(pattern, s, sub):
    """Every match of the pattern replaced by ``sub``, where \\1..\\9 are capture groups."""
    pattern = _pattern("replace", pattern)
    sub = _need_str("replace", sub)
    if not isinstance(s, Expr):
        return _re2("SELECT regexp_replace(?, ?, ?, 'g')", _need_str("replace", s), pattern, sub)
    return combine(f"regexp_replace({s.sql}, {lit(pattern)}, {lit(sub)}, 'g')", STR, s)


# ---- SQL normalization: px.normalize_pgsql, px.normalize_mysql ------------------------------
#
# Pixie (carnot/funcs/builtins/sql_ops.cc) parses the query with ANTLR and replaces each
# constant with a placeholder, in order: $1, $2... for PostgreSQL, ? for MySQL. Placeholders
# already in an Execute's query take their values from its params, in the same sequence. The
# answer is JSON: {"query":...,"params":[...]} or {"error":...}. We find the constants with a
# tokenizer instead of a grammar (the same answers on ordinary queries): strings, numbers,
# true and false; never inside names, quoted names or comments, nor the sizes of types in a
# CREATE/ALTER (varchar(20)), which Pixie's grammar does not count as values either. Columns
# call the same Python function as plain values, through a DuckDB UDF (register_udfs).

_NUM = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_TYPEMOD = r"[A-Za-z_][A-Za-z0-9_]*\s*\(\s*[0-9]+(?:\s*,\s*[0-9]+)*\s*\)"
_TOKENS = {
    "pgsql": (r"--[^\n]*", r"/\*[\s\S]*?\*/", r"[Ee]'(?:[^'\\]|''|\\[\s\S])*'", r"[BbXxNn]?'(?:[^']|'')*'",
              r'"(?:[^"]|"")*"', r"\$[0-9]+", r"[A-Za-z_][A-Za-z0-9_$]*", _NUM, r"[\s\S]"),
    "mysql": (r"--[^\n]*", r"#[^\n]*", r"/\*[\s\S]*?\*/", r"[Xx]'[0-9A-Fa-f]*'", r"[Bb]'[01]*'",
              r"'(?:[^'\\]|''|\\[\s\S])*'", r'"(?:[^"\\]|""|\\[\s\S])*"', r"`(?:[^`]|``)*`",
              r"@@?[A-Za-z0-9_.$]*", r"0[xX][0-9A-Fa-f]+", r"0[bB][01]+", r"[A-Za-z_$][A-Za-z0-9_$]*", _NUM,
              r"[\s\S]"),
}
# a whole token that is a value; in MySQL "..." is a string too (without ANSI_QUOTES)
_CONSTANT = {"pgsql": r"(?i)[ebxn]?'[\s\S]+|" + _NUM + "|true|false",
             "mysql": r"(?i)[xb]?'[\s\S]+|\"[\s\S]+|0[xb][0-9a-f]+|" + _NUM + "|true|false"}
_PLACEHOLDER = {"pgsql": r"\$[0-9]+", "mysql": r"\?"}
_UNCLOSED = {"pgsql": ("'",), "mysql": ("'", '"')}  # a quote the tokenizer could not close
_DDL = r"(?is)\s*(create|alter)\b.*"
_SQL_CMDS = {"pgsql": ("Query", "Execute"), "mysql": (3, 0x17)}  # COM_QUERY, COM_STMT_EXECUTE
_ERR_CMD = {"pgsql": "cmd_code must be one of 'Query' or 'Execute'", "mysql": "cmd_code must be one of '3' or '23'"}
_ERR_QUOTE = "SQL Parsing Failed: unterminated quoted string"
_ERR_MORE = "Query has more parameter placeholders in it than parameter values were passed in"


_MAYBE_VALUE = "?$'\".`"  # a one-character token or a name starting so may be a value or a placeholder
_compiled = functools.lru_cache(maxsize=64)(re.compile)


def _json(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)  # as Pixie's rapidjson Writer


def _token_re(dialect: str, ddl: bool) -> str:
    return "|".join(((_TYPEMOD,) if ddl else ()) + _TOKENS[dialect])


def _split_execute(text: str) -> tuple[str, list[str]]:
    """``query=[Q] params=[a, b]`` as Pixie's ParseExecuteCommand reads it: Q ends at the first ']'."""
    v = text[len("query=["):] if text.startswith("query=[") else text
    query = v[:v.index("]")] if "]" in v else v
    rest = v[len(query):]
    rest = rest[len("] params=["):] if rest.startswith("] params=[") else rest
    return query, (rest[:rest.rindex("]")] if "]" in rest else rest).split(", ")


def normalize_sql(text: str, cmd: object, dialect: str) -> str:
    """Pixie's normalize_pgsql / normalize_mysql of one query, as its JSON answer."""
    query_cmd, execute_cmd = _SQL_CMDS[dialect]
    if cmd == execute_cmd:
        query, values = _split_execute(text)
    elif cmd == query_cmd:
        query, values = text, []
    else:
        return _json({"error": _ERR_CMD[dialect]})
    tokens = _compiled(_token_re(dialect, _compiled(_DDL).fullmatch(query) is not None)).findall(query)
    out, params, generic = [], [], 0
    placeholder, constant = _compiled(_PLACEHOLDER[dialect]).fullmatch, _compiled(_CONSTANT[dialect]).fullmatch
    for t in tokens:
        c = t[0]
        # most tokens are names, spaces and punctuation: no regex for them
        if (c.isalpha() or c == "_" or len(t) == 1) and not c.isdigit() and c not in _MAYBE_VALUE \
                and "'" not in t and t.lower() not in ("true", "false"):
            out.append(t)
            continue
        if t in _UNCLOSED[dialect]:
            return _json({"error": _ERR_QUOTE})
        if placeholder(t):
            generic += 1
            idx = generic if dialect == "mysql" else int(t[1:])
            if not 1 <= idx <= len(values):
                return _json({"error": _ERR_MORE})
            params.append(values[idx - 1])
        elif constant(t):
            params.append(t)
        else:
            out.append(t)
            continue
        out.append(f"${len(params)}" if dialect == "pgsql" else "?")
    return _json({"query": "".join(out), "params": params})


@functools.lru_cache(maxsize=16384)
def _normalize_cached(text: str, cmd: str, dialect: str) -> str:
    """The column path's UDF: one Python answer per distinct (query, command), cached,
    because a table holds the same few statements many times over."""
    code: object = cmd
    if dialect == "mysql":
        code = int(cmd) if cmd.lstrip("-").isdigit() else cmd
    return normalize_sql(text, code, dialect)


UDF_NORMALIZE = "andon_normalize_sql"


def register_udfs(con: duckdb.DuckDBPyConnection) -> None:
    """Give a DuckDB connection the Python functions column expressions call (once per connection)."""
    known = con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name = ?", [UDF_NORMALIZE]).fetchall()
    if not known[0][0]:
        con.create_function(UDF_NORMALIZE, _normalize_cached, ["VARCHAR", "VARCHAR", "VARCHAR"], "VARCHAR",
                            side_effects=False)


def _normalize(dialect: str):
    name = f"normalize_{dialect}"
    cmd_type = STR if dialect == "pgsql" else INT

    def f(text, cmd):
        for v, typ in ((text, STR), (cmd, cmd_type)):
            if (v.typ not in (typ, None)) if isinstance(v, Expr) else lit_type(v) != typ:
                what = "the command string ('Query', 'Execute')" if typ == STR else "the command code (3, 23)"
                raise QueryError(f"px.{name}() needs the query text and {what}",
                                 hint=f"px.{name}(df.{'req' if dialect == 'pgsql' else 'req_body'}, df.req_cmd)")
        if not isinstance(text, Expr) and not isinstance(cmd, Expr):
            return normalize_sql(text, cmd, dialect)
        sql = f"{UDF_NORMALIZE}({as_expr(text).sql}, CAST({as_expr(cmd).sql} AS VARCHAR), {lit(dialect)})"
        return combine(sql, STR, text, cmd)
    return f


def make_px(now_ns: int) -> dict[str, object]:
    fns: dict[str, object] = {}

    def add(name, fn, lo, hi=None, kwargs=()):
        fns[name] = Builtin(name, fn, (lo, lo if hi is None else hi), tuple(kwargs))

    add("now", lambda: now_ns, 0)
    for unit, mult in NS.items():
        add(unit, (lambda m: lambda n: _duration(n * m) if not isinstance(n, Expr) else
                   combine(f"({n.sql} * {m})", INT, n, sem=semantic.DURATION_NS))(mult), 1)
    add("DurationNanos", _duration, 1)
    add("Bytes", _identity_num("Bytes", semantic.BYTES), 1)
    add("Percent", _identity_num("Percent", semantic.PERCENT), 1)
    add("Time", _identity_num("Time"), 1)
    add("time_to_int64", _identity_num("time_to_int64"), 1)
    add("int64_to_time", lambda v: combine(v.sql, TIME, v) if isinstance(v, Expr) else v, 1)
    add("bin", _bin, 2)
    add("floor", _math("floor", "floor", math.floor, FLOAT), 1)
    add("ceil", _math("ceil", "ceil", math.ceil, FLOAT), 1)
    add("round", _math("round", "round", round, FLOAT), 1)
    add("abs", _math("abs", "abs", abs, None, keep_sem=True), 1)
    add("log", _math("log", "ln", math.log, FLOAT), 1)
    add("contains", _contains, 2)
    add("length", _str_fn(lambda a: f"length({a})", len, INT), 1)
    add("toupper", _str_fn(lambda a: f"upper({a})", str.upper, STR), 1)
    add("tolower", _str_fn(lambda a: f"lower({a})", str.lower, STR), 1)
    add("trim", _str_fn(lambda a: f"trim({a})", str.strip, STR), 1)
    add("find", _str_fn(lambda a, b: f"(strpos({a}, {b}) - 1)", lambda a, b: a.find(b), INT), 2)
    add("substring", _substring, 3)
    add("select", _select, 3)
    add("equals_any", _equals_any, 2)
    add("pluck", _pluck("str"), 2)
    add("pluck_float64", _pluck("float"), 2)
    add("pluck_int64", _pluck("int"), 2)
    add("upid_to_pid", _upid_part(1), 1)
    add("upid_to_asid", _upid_part(0), 1)
    for key in ("pod_name", "service_name", "container_name", "container_id", "cmdline", "node_name",
                "namespace", "pod_id", "service_id", "hostname"):
        add(f"upid_to_{key}", _upid_to(key), 1)
    for name in ("ip_to_pod_id", "ip_to_service_id"):
        add(name, _lookup(name, _ADDR_TO_CONTAINER), 1)
    for name in ("pod_id_to_pod_name", "pod_id_to_service_name", "service_id_to_service_name"):
        add(name, _lookup(name, _CONTAINER_NAMES), 1)
    for name in ("pod_id_to_service_id", "pod_name_to_service_name"):  # one container: pod and service
        add(name, _same_str, 1)
    add("pod_id_to_namespace", _empty_expr, 1)
    add("pod_id_to_node_name", _node_of, 1)
    add("regex_match", _regex_match, 2)
    add("replace", _replace, 3)
    add("normalize_pgsql", _normalize("pgsql"), 2)
    add("normalize_mysql", _normalize("mysql"), 2)
    add("nslookup", _first, 1)
    add("script_reference", _first, 2, 3)
    fns.update(AGGREGATES)
    # annotation-only names, usable as values too (px.Service is a string type in Pixie)
    for t in ("Service", "Pod", "Namespace", "Node", "Container", "UPID"):
        fns[t] = Builtin(t, lambda v: str(v), (1, 1))
    return fns


def _empty_expr(v):
    if isinstance(v, Expr):
        return combine("''", STR, v)
    return ""


# ---- Kubernetes lookups on one host: a pod is a container ----------------------------------
# Pixie maps a peer's IP to its pod from the cluster's metadata. On one host the tables know
# the containers' addresses: a traced process in a container reports its own address as
# local_addr. An address maps to a container when every row that has it as local_addr, in
# any protocol table, belongs to that one container: host processes, host-network containers
# and loopback (each namespace has its own) never do.
_PEER_TABLES = ("http_events", "pgsql_events", "mysql_events", "redis_events", "dns_events")
# What a query's lookups read: every (local_addr, container_id, container_name) in the protocol
# tables, made once per run (``prepare_lookups``) as a temporary table, so each lookup is a map
# over a few rows instead of a scan of every table.
PODS = "_andon_pods"


def prepare_lookups(catalog: Catalog, sql: str, since_ns: int | None = None, until_ns: int | None = None) -> None:
    """Before a run whose SQL uses the Kubernetes lookups: their table, from the rows of the
    catalog's protocol tables in the run's time range [since_ns, until_ns) (None: unbounded),
    as they are now: an address two containers held at different times names the one that
    held it then."""
    if PODS not in sql:
        return
    sources = [f"SELECT local_addr, container_id, container_name FROM ({catalog.rows_sql(t, since_ns, until_ns)})"
               for t in _PEER_TABLES if t in catalog.tables]
    union = " UNION ALL ".join(sources) or "SELECT ''::VARCHAR, ''::VARCHAR, ''::VARCHAR WHERE false"
    con = catalog.con
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {PODS} (local_addr VARCHAR, container_id VARCHAR, "
                    "container_name VARCHAR)")
        con.execute(f"INSERT INTO {PODS} SELECT DISTINCT * FROM ({union})")
    except duckdb.Error as e:
        raise QueryError(f"px.ip_to_pod_id and the other pod lookups could not read the tables: "
                         f"{str(e).splitlines()[0]}") from None


_ADDR_TO_CONTAINER = (
    f"(SELECT map(list(a), list(c)) FROM (SELECT local_addr AS a, min(container_id) AS c FROM {PODS} "
    "WHERE local_addr NOT LIKE '127.%' AND local_addr NOT LIKE '::ffff:127.%' AND local_addr NOT IN ('', '::1') "
    "GROUP BY local_addr HAVING count(DISTINCT container_id) = 1 AND min(container_id) <> ''))")
_CONTAINER_NAMES = (
    f"(SELECT map(list(i), list(n)) FROM (SELECT container_id AS i, max(container_name) AS n FROM {PODS} "
    "WHERE container_id <> '' GROUP BY container_id))")


def _lookup(name: str, table_sql: str) -> Callable[[object], Expr]:
    """A lookup of its argument (a column or a plain string) in a map the tables give, '' when absent."""
    def fn(v: object) -> Expr:
        key = v.sql if isinstance(v, Expr) else lit(_need_str(name, v))
        return combine(f"COALESCE(map_extract_value({table_sql}, {key}), '')", STR, v)
    return fn


def _same_str(v: object) -> object:
    return combine(f"CAST({v.sql} AS VARCHAR)", STR, v) if isinstance(v, Expr) else str(v)


def _node_of(v: object) -> object:
    """The node of a pod: this host, for a container; '' for no pod."""
    host = socket.gethostname()
    if isinstance(v, Expr):
        return combine(f"(CASE WHEN {v.sql} <> '' THEN {lit(host)} ELSE '' END)", STR, v)
    return host if v else ""
