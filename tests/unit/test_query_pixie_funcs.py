"""px functions that Pixie's bundled scripts use: regex_match, replace, normalize_pgsql,
normalize_mysql, and df.ctx[...] resolved from the upid after select= dropped andon's columns.

Exact values on synthetic rows, the column path against the plain-value path, and refusals.
"""

from __future__ import annotations

import json

import pytest

from andon.query import QueryError, run_pxl
from andon.store import Store, StoreSettings
from andon.store.catalog import Catalog

S = 10**9
NOW = 1_700_000_000 * S

PG = [  # (req_cmd, req): what andon's pgsql parser stores for simple and extended queries
    ("Query", "SELECT name FROM users WHERE id = 42 AND tag = 'x''y'"),
    ("Execute", "query=[UPDATE users SET seen = $2 WHERE id = $1] params=[7, 'now']"),
    ("Query", "CREATE TABLE t (a varchar(20), b numeric(10, 2) DEFAULT 5)"),
    ("Query", "SELECT u.id2 FROM users u -- id 3\nWHERE \"col 9\" > 1.5e3 AND ok = TRUE"),
    ("Bind", "SELECT 1"),
    ("Query", "SELECT 'open"),
    ("Query", "SELECT $1"),
]
MY = [  # (req_cmd, req_body): COM_QUERY = 3, COM_STMT_EXECUTE = 23, COM_STMT_PREPARE = 22
    (3, "SELECT * FROM orders WHERE total > 99.5 AND note = \"hi\" AND owner = @me"),
    (23, "query=[INSERT INTO orders (id, total) VALUES (?, ?)] params=[12, 3.5]"),
    (23, "query=[SELECT ? + ?] params=[1]"),
    (22, "SELECT ?"),
    (3, "SELECT `col 1`, 0x1F FROM t # 77"),
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    with Store(StoreSettings(data_dir=d, control_socket=False)) as st:
        st.append("http_events", [{
            "time_": NOW - (i + 1) * S, "upid": f"0:{2000 + i}:9", "pid": 2000 + i,
            "remote_addr": ["127.0.0.1", "127.0.0.19", "10.0.0.1", "127.0.0.1x"][i],
            "req_path": ["/a/1", "/b/22/c", "/", "/x"][i], "resp_body": ["ok", "line1\nline2", "", "abc"][i],
            "comm": ["api", "nginx", "api", "worker"][i], "container_name": ["", "", "web", ""][i],
        } for i in range(4)])
        st.append("pgsql_events", [{"time_": NOW - (i + 1) * S, "req_cmd": c, "req": r, "latency": i}
                                   for i, (c, r) in enumerate(PG)])
        st.append("mysql_events", [{"time_": NOW - (i + 1) * S, "req_cmd": c, "req_body": r, "latency": i}
                                   for i, (c, r) in enumerate(MY)])
    c = Catalog(d)
    yield c
    c.close()


def rows(catalog, text, **kw):
    out = run_pxl(text, catalog, now_ns=NOW, **kw)
    assert len(out) == 1
    return out[0].dicts()


# ---- px.regex_match, px.replace -------------------------------------------------------------

def test_regex_match_is_a_full_match_on_columns(catalog):
    got = rows(catalog, r"""
import px
df = px.DataFrame(table='http_events', start_time='-1m')
df.local = px.regex_match(r'127\.0\.0\.[0-9]+', df.remote_addr)
df.multi = px.regex_match('line1.line2', df.resp_body)
df.prefix = px.regex_match('ab', df.resp_body)
px.display(df[['remote_addr', 'local', 'multi', 'prefix']], 'out')
""")
    got = sorted((r["remote_addr"], r["local"], r["multi"], r["prefix"]) for r in got)
    # '127.0.0.1x' is not a full match; '.' matches the newline, as RE2 with dot_nl in Pixie
    assert got == [("10.0.0.1", False, False, False), ("127.0.0.1", True, False, False),
                   ("127.0.0.19", True, True, False), ("127.0.0.1x", False, False, False)]


def test_regex_match_and_replace_on_plain_values(catalog):
    got = rows(catalog, r"""
import px
a = px.regex_match('abcd.*', 'abcdefg')
b = px.regex_match('abcd.*', 'abce')
c = px.replace(r'([0-9]+)\w+', '12ab 3cd x9', r'\1n')
df = px.DataFrame(table='http_events', start_time='-1m')
df = df[df.remote_addr == '10.0.0.1']
df.a = a
df.b = b
df.c = c
px.display(df[['a', 'b', 'c']], 'out')
""")
    assert got == [{"a": True, "b": False, "c": "12n 3n x9"}]


def test_replace_on_a_column(catalog):
    got = rows(catalog, r"""
import px
df = px.DataFrame(table='http_events', start_time='-1m')
df.route = px.replace('/[0-9]+', df.req_path, '/:id')
df.dots = px.replace(r'\.', df.remote_addr, '_')
px.display(df[['req_path', 'route', 'dots']], 'out')
""")
    assert sorted((r["req_path"], r["route"], r["dots"]) for r in got) == [
        ("/", "/", "10_0_0_1"), ("/a/1", "/a/:id", "127_0_0_1"), ("/b/22/c", "/b/:id/c", "127_0_0_19"),
        ("/x", "/x", "127_0_0_1x")]


@pytest.mark.parametrize("table, call, msg", [
    ("http_events", "px.regex_match('(', df.req_path)", "not a valid regular expression"),
    ("http_events", "px.regex_match(df.req_path, df.req_path)", "needs a fixed pattern"),
    ("http_events", "px.regex_match(5, df.req_path)", "needs a string"),
    ("http_events", "px.regex_match('a', 5)", "needs a string"),
    ("http_events", "px.replace('[', df.req_path, 'x')", "not a valid regular expression"),
    ("http_events", "px.replace('a', df.req_path, 1)", "needs a string"),
    ("http_events", "px.replace('a', df.req_path)", "takes 3 argument"),
    ("pgsql_events", "px.normalize_pgsql(df.req, 3)", "command string"),
    ("pgsql_events", "px.normalize_pgsql(df.latency, df.req_cmd)", "query text"),
    ("pgsql_events", "px.normalize_pgsql(df.req)", "takes 2 argument"),
    ("pgsql_events", "px.normalize_mysql(df.req, 'Query')", "command code"),
    ("pgsql_events", "px.normalize_mysql(1, 3)", "query text"),
])
def test_refusals(catalog, table, call, msg):
    with pytest.raises(QueryError, match=msg) as ei:
        run_pxl(f"import px\ndf = px.DataFrame(table='{table}')\ndf.x = {call}\npx.display(df)\n",
                catalog, now_ns=NOW)
    assert ei.value.line == 3


# ---- px.normalize_pgsql, px.normalize_mysql --------------------------------------------------

PG_WANT = [
    {"query": "SELECT name FROM users WHERE id = $1 AND tag = $2", "params": ["42", "'x''y'"]},
    # the Execute's own placeholders are renumbered in the order they appear, values from its params
    {"query": "UPDATE users SET seen = $1 WHERE id = $2", "params": ["'now'", "7"]},
    # type sizes are not values; the DEFAULT is
    {"query": "CREATE TABLE t (a varchar(20), b numeric(10, 2) DEFAULT $1)", "params": ["5"]},
    # not inside names, quoted names or comments
    {"query": "SELECT u.id2 FROM users u -- id 3\nWHERE \"col 9\" > $1 AND ok = $2", "params": ["1.5e3", "TRUE"]},
    {"error": "cmd_code must be one of 'Query' or 'Execute'"},
    {"error": "SQL Parsing Failed: unterminated quoted string"},
    {"error": "Query has more parameter placeholders in it than parameter values were passed in"},
]
MY_WANT = [
    {"query": "SELECT * FROM orders WHERE total > ? AND note = ? AND owner = @me", "params": ["99.5", '"hi"']},
    {"query": "INSERT INTO orders (id, total) VALUES (?, ?)", "params": ["12", "3.5"]},
    {"error": "Query has more parameter placeholders in it than parameter values were passed in"},
    {"error": "cmd_code must be one of '3' or '23'"},
    {"query": "SELECT `col 1`, ? FROM t # 77", "params": ["0x1F"]},
]


def test_normalize_pgsql_on_a_column(catalog):
    got = rows(catalog, """
import px
df = px.DataFrame(table='pgsql_events', start_time='-1m')
df.normed = px.normalize_pgsql(df.req, df.req_cmd)
df.normed_query = px.pluck(df.normed, 'query')
df.params = px.pluck(df.normed, 'params')
px.display(df[['latency', 'normed', 'normed_query', 'params']], 'out')
""")
    got = sorted(got, key=lambda r: r["latency"])
    assert [json.loads(r["normed"]) for r in got] == PG_WANT
    assert [r["normed_query"] for r in got] == [w.get("query", "") for w in PG_WANT]
    assert json.loads(got[0]["params"]) == ["42", "'x''y'"]
    # compact JSON, as Pixie's rapidjson Writer
    assert got[0]["normed"] == ('{"query":"SELECT name FROM users WHERE id = $1 AND tag = $2",'
                                '"params":["42","\'x\'\'y\'"]}')


def test_normalize_mysql_on_a_column(catalog):
    got = rows(catalog, """
import px
df = px.DataFrame(table='mysql_events', start_time='-1m')
df.normed = px.normalize_mysql(df.req_body, df.req_cmd)
px.display(df[['latency', 'normed']], 'out')
""")
    assert [json.loads(r["normed"]) for r in sorted(got, key=lambda r: r["latency"])] == MY_WANT


@pytest.mark.parametrize("fn, cases, want", [("normalize_pgsql", PG, PG_WANT), ("normalize_mysql", MY, MY_WANT)])
def test_normalize_plain_values_match_the_column(catalog, fn, cases, want):
    for (cmd, text), w in zip(cases, want):
        got = rows(catalog, f"""
import px
n = px.{fn}({text!r}, {cmd!r})
df = px.DataFrame(table='http_events', start_time='-1m')
df = df[df.remote_addr == '10.0.0.1']
df.n = n
px.display(df[['n']], 'out')
""")
        assert json.loads(got[0]["n"]) == w, text


def test_normalized_queries_group_like_pixies_sql_queries(catalog):
    got = rows(catalog, """
import px
df = px.DataFrame(table='pgsql_events', start_time='-1m')
df.normed_query = px.pluck(px.normalize_pgsql(df.req, df.req_cmd), 'query')
df = df[df.normed_query != '']
df = df.groupby('normed_query').agg(n=('latency', px.count))
px.display(df, 'out')
""")
    assert {r["normed_query"]: r["n"] for r in got} == {w["query"]: 1 for w in PG_WANT if "query" in w}


# ---- df.ctx[...] after select= ---------------------------------------------------------------

def test_ctx_from_upid_when_select_dropped_the_enrichment(catalog):
    got = rows(catalog, """
import px
df = px.DataFrame(table='http_events', select=['time_', 'upid', 'remote_addr'], start_time='-1m')
df.svc = df.ctx['service']
df.pid = df.ctx['pid']
df.cid = px.upid_to_container_name(df.upid)
df = df.drop(columns=['upid'])
px.display(df, 'out')
""")
    assert sorted((r["remote_addr"], r["svc"], r["pid"], r["cid"]) for r in got) == [
        ("10.0.0.1", "web", 2002, "web"), ("127.0.0.1", "api", 2000, ""), ("127.0.0.19", "nginx", 2001, ""),
        ("127.0.0.1x", "worker", 2003, "")]


def test_ctx_without_upid_or_enrichment_is_refused(catalog):
    with pytest.raises(QueryError, match="needs column 'container_name' or 'upid'"):
        run_pxl("import px\ndf = px.DataFrame(table='http_events', select=['time_', 'req_path'])\n"
                "df.s = df.ctx['service']\npx.display(df)\n", catalog, now_ns=NOW)
