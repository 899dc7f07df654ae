"""PxL subset and SQL over the same synthetic tables: exact values, parity, bundled scripts, refusals."""

from __future__ import annotations

import json
import statistics

import pytest

from andon.query import QueryError, run_pxl, run_script, run_sql
from andon.store import Store, StoreSettings
from andon.store.catalog import Catalog

S = 10**9
NOW = 1_700_000_000 * S


def http_rows():
    rows = []
    for i in range(60):
        rows.append({
            "time_": NOW - (i + 1) * 7 * S,  # 7 s apart: 7 s .. 420 s ago
            "upid": f"0:{1000 + i % 3}:55", "pid": 1000 + i % 3,
            "remote_addr": f"10.0.0.{i % 5}", "remote_port": 50000 + i, "local_addr": "127.0.0.1",
            "local_port": 8080, "trace_role": 2 if i % 6 else 1,
            "req_method": "POST" if i % 3 == 0 else "GET", "req_path": ["/a", "/b", "/healthz", "/c"][i % 4],
            "resp_status": 500 if i % 7 == 0 else 200, "resp_body_size": 10 * i,
            "latency": (i * 37 % 50 + 1) * 10**6,
            "comm": "api" if i % 2 else "nginx", "container_name": "web" if i % 2 == 0 else "",
            "container_id": "c0ffee" if i % 2 == 0 else "",
        })
    return rows


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    with Store(StoreSettings(data_dir=d, control_socket=False)) as st:
        st.append("http_events", http_rows())
        st.append("pgsql_events", [{"time_": NOW - i * S, "trace_role": 1, "remote_addr": "127.0.0.1",
                                    "remote_port": 5432, "req_cmd": "Query", "req": f"SELECT {i}",
                                    "resp": "SELECT 1", "latency": 1000 + i, "comm": "psql"} for i in range(1, 8)])
        st.append("mysql_events", [{"time_": NOW - i * S, "trace_role": 2, "remote_addr": "10.1.1.1",
                                    "req_cmd": 3, "req_body": "select 1", "resp_status": 0, "latency": i,
                                    "comm": "mariadbd"} for i in range(1, 5)])
        st.append("redis_events", [{"time_": NOW - i * S, "trace_role": 1, "remote_addr": "127.0.0.1",
                                    "remote_port": 6379, "req_cmd": "GET" if i % 2 else "SET",
                                    "req_args": '["k"]', "resp": "OK", "latency": 10 * i, "comm": "redis-cli"}
                                   for i in range(1, 11)])
        st.append("dns_events", [{"time_": NOW - 30 * S, "trace_role": 1, "remote_addr": "127.0.0.53",
                                  "req_body": '{"queries":[{"name":"example.com","type":"A"}]}',
                                  "resp_body": '{"answers":[]}', "latency": 777, "comm": "dig"}])
        st.append("http_events", [{"time_": NOW - 7200 * S, "req_path": "/old", "latency": 1, "comm": "x"}])
    c = Catalog(d)
    yield c
    c.close()


def pxl(catalog, text, **kw):
    return {r.name: r for r in run_pxl(text, catalog, now_ns=NOW, **kw)}


def recent(since_s=300):
    return [r for r in http_rows() if r["time_"] >= NOW - since_s * S]


# ---- constructs, one by one, against values computed from the records in Python -------

def test_filter_derived_select_head(catalog):
    out = pxl(catalog, """
import px
df = px.DataFrame(table='http_events', start_time='-5m')
df = df[df.resp_status >= 500 and df.req_path != '/healthz']
df.latency_ms = df.latency / 1000000
df.is_post = df.req_method == 'POST'
df = df[['time_', 'req_path', 'latency_ms', 'is_post']]
px.display(df.head(100), 'errors')
""")["errors"]
    want = sorted((r["time_"], r["req_path"], r["latency"] / 1e6, r["req_method"] == "POST") for r in recent()
                  if r["resp_status"] >= 500 and r["req_path"] != "/healthz")
    assert sorted(out.rows) == want and len(want) == 5
    assert out.columns == ["time_", "req_path", "latency_ms", "is_post"]
    assert out.types[0] == "TIME"


def test_start_and_end_time(catalog):
    out = pxl(catalog, "import px\npx.display(px.DataFrame(table='http_events', start_time='-3h', "
                       "end_time='-5m').agg(n=('latency', px.count)), 'n')")["n"]
    assert out.rows == [(len(http_rows()) - len(recent()) + 1,)]  # + the one 2 h old row


def test_groupby_all_aggregates(catalog):
    out = pxl(catalog, """
import px
df = px.DataFrame(table='http_events', start_time='-5m')
df.failure = df.resp_status >= 400
s = df.groupby(['req_path']).agg(n=('latency', px.count), total=('resp_body_size', px.sum),
    avg=('latency', px.mean), lo=('latency', px.min), hi=('latency', px.max), errs=('failure', px.sum),
    err_rate=('failure', px.mean), one=('local_port', px.any))
px.display(s, 's')
""")["s"]
    rows = recent()
    for path, n, total, avg, lo, hi, errs, rate, one in out.rows:
        g = [r for r in rows if r["req_path"] == path]
        lat = [r["latency"] for r in g]
        assert (n, total, lo, hi, one) == (len(g), sum(r["resp_body_size"] for r in g), min(lat), max(lat), 8080)
        assert avg == pytest.approx(statistics.mean(lat))
        assert errs == sum(r["resp_status"] >= 400 for r in g)
        assert rate == pytest.approx(errs / len(g))
    assert [r[0] for r in out.rows] == ["/a", "/b", "/c", "/healthz"]


def test_quantiles_and_pluck(catalog):
    out = pxl(catalog, """
import px
df = px.DataFrame(table='http_events', start_time='-5m')
s = df.agg(q=('latency', px.quantiles))
s.p50 = px.DurationNanos(px.floor(px.pluck_float64(s.q, 'p50')))
s.p99 = px.pluck_float64(s.q, 'p99')
s.missing = px.pluck_float64(s.q, 'p42')
px.display(s, 'q')
""")["q"]
    q, p50, p99, missing = out.rows[0]
    lat = sorted(r["latency"] for r in recent())
    assert set(json.loads(q)) == {"p01", "p10", "p25", "p50", "p75", "p90", "p99"}
    assert p50 == int(statistics.median(lat))
    # linear interpolation between closest ranks, as quantile_cont
    k = 0.99 * (len(lat) - 1)
    assert p99 == pytest.approx(lat[int(k)] + (lat[int(k) + 1] - lat[int(k)]) * (k - int(k)))
    assert missing == 0.0


def test_bin_ctx_upid_select_contains(catalog):
    out = pxl(catalog, """
import px
df = px.DataFrame(table='http_events', start_time='-5m')
df.window = px.bin(df.time_, px.DurationNanos(60 * 1000 * 1000 * 1000))
df.svc = df.ctx['service']
df.p = px.upid_to_pid(df.upid)
df.side = px.select(df.trace_role == 2, 'server', 'client')
df = df[px.contains(df.svc, 'e') or df.svc == 'api']
s = df.groupby(['window', 'svc', 'side']).agg(n=('p', px.count), pmax=('p', px.max))
px.display(s, 's')
""")["s"]
    want: dict = {}
    for r in recent():
        svc = r["container_name"] or r["comm"]
        key = (r["time_"] - r["time_"] % (60 * S), svc, "server" if r["trace_role"] == 2 else "client")
        n, pm = want.get(key, (0, 0))
        want[key] = (n + 1, max(pm, r["pid"]))
    assert sorted(out.rows) == sorted(k + v for k, v in want.items())
    assert {r[1] for r in out.rows} == {"web", "api"}


def test_merge_drop_append_and_functions(catalog):
    out = pxl(catalog, """
import px
ns_per_s = 1000 * 1000 * 1000
def counts(start_time: str, path: str):
    df = px.DataFrame(table='http_events', start_time=start_time)
    df = df[df.req_path == path]
    return df.groupby('pid').agg(n=('latency', px.count))

a = counts('-5m', '/a')
b = counts('-5m', '/b')
m = a.merge(b, how='inner', left_on='pid', right_on=['pid'], suffixes=['_a', '_b'])
m = m.drop(['pid_b'])
px.display(m, 'merged')
px.display(a.append(b), 'both')
""")
    rows = recent()
    ca = {p: sum(1 for r in rows if r["pid"] == p and r["req_path"] == "/a") for p in (1000, 1001, 1002)}
    cb = {p: sum(1 for r in rows if r["pid"] == p and r["req_path"] == "/b") for p in (1000, 1001, 1002)}
    assert out["merged"].columns == ["pid_a", "n_a", "n_b"]
    assert sorted(out["merged"].rows) == sorted((p, ca[p], cb[p]) for p in ca if ca[p] and cb[p])
    assert sum(r[1] for r in out["both"].rows) == sum(ca.values()) + sum(cb.values())


def test_scalar_python_subset(catalog):
    out = pxl(catalog, """
import px
x = 2 ** 10 + 7 // 2 - 5 % 3
names = ['/a', '/b']
label = f'n={x}'
if x > 1000:
    path = names[1]
else:
    path = names[0]
df = px.DataFrame(table='http_events', start_time='-5m')
df = df[df.req_path in names]
df.label = label
df = df[df.req_path == path]
px.display(df.agg(n=('latency', px.count), l=('label', px.any)), 'o')
""")["o"]
    assert out.rows == [(sum(1 for r in recent() if r["req_path"] == "/b"), "n=1025")]


# ---- the test: PxL and SQL give the same aggregates on the same data ----------

PARITY = [
    ("""df = px.DataFrame(table='http_events', start_time='-5m')
s = df.groupby(['req_path', 'resp_status']).agg(n=('latency', px.count), avg=('latency', px.mean),
                                                mx=('latency', px.max), bytes=('resp_body_size', px.sum))""",
     f"""SELECT req_path, resp_status, count(*), avg(latency), max(latency), sum(resp_body_size)
         FROM http_events WHERE time_ >= {NOW - 300 * S} GROUP BY ALL ORDER BY ALL"""),
    ("""df = px.DataFrame(table='http_events', start_time='-10m')
df.svc = df.ctx['service']
df.failure = df.resp_status >= 400
df = df[df.req_path != '/healthz']
s = df.groupby('svc').agg(err=('failure', px.mean), q=('latency', px.quantiles))
s.p90 = px.pluck_float64(s.q, 'p90')
s = s.drop('q')""",
     f"""SELECT CASE WHEN container_name <> '' THEN container_name ELSE comm END AS svc,
                avg(CASE WHEN resp_status >= 400 THEN 1.0 ELSE 0.0 END), quantile_cont(latency, 0.9)
         FROM http_events WHERE time_ >= {NOW - 600 * S} AND req_path <> '/healthz' GROUP BY 1 ORDER BY 1"""),
    ("""df = px.DataFrame(table='http_events', start_time='-5m')
df.timestamp = px.bin(df.time_, px.DurationNanos(10 * 1000 * 1000 * 1000))
s = df.groupby('timestamp').agg(n=('latency', px.count), lo=('latency', px.min))
s.rps = s.n / 10""",
     f"""SELECT time_ - time_ % 10000000000 AS ts, count(*), min(latency), count(*) / 10
         FROM http_events WHERE time_ >= {NOW - 300 * S} GROUP BY ts ORDER BY ts"""),
    ("""df = px.DataFrame(table='redis_events', start_time='-1m')
s = df.groupby('req_cmd').agg(n=('latency', px.count), total=('latency', px.sum))""",
     f"SELECT req_cmd, count(*), sum(latency) FROM redis_events WHERE time_ >= {NOW - 60 * S} GROUP BY 1 ORDER BY 1"),
]


@pytest.mark.parametrize("script,sql", PARITY)
def test_pxl_and_sql_same_aggregates(catalog, script, sql):
    got = pxl(catalog, f"import px\n{script}\npx.display(s, 's')\n")["s"].rows
    want = run_sql(sql, catalog)[0].rows
    assert len(got) == len(want) > 1
    for g, w in zip(got, want):
        assert g == pytest.approx(w)


# ---- the bundled scripts ---------------------------------------------------------------

def test_bundled_http_data(catalog):
    (r,) = run_script("px/http_data", catalog, now_ns=NOW, args={"num_head": "1000"})
    rows = recent()
    assert len(r.rows) == len(rows)
    assert r.columns[:4] == ["time_", "source", "destination", "latency"]
    by_t = {x[0]: x for x in r.rows}
    for rec in rows:
        pod = rec["container_name"] or rec["comm"]
        src, dst = (rec["remote_addr"], pod) if rec["trace_role"] == 2 else (pod, rec["remote_addr"])
        assert by_t[rec["time_"]][1:4] == (src, dst, rec["latency"])
    (f,) = run_script("px/http_data", catalog, now_ns=NOW, args={"destination_filter": "web", "num_head": "3"})
    assert len(f.rows) == 3 and all(x[2] == "web" for x in f.rows)


def test_bundled_service_stats(catalog):
    res = {r.name: r for r in run_script("px/service_stats", catalog, now_ns=NOW, args={"svc": "web"})}
    assert list(res) == ["LET", "HTTP status codes", "latency histogram", "incoming traffic", "outgoing traffic"]
    rows = [r for r in recent() if r["container_name"] == "web" and r["req_path"] not in ("/healthz", "/readyz")]
    codes = {}
    for r in rows:
        codes[r["resp_status"]] = codes.get(r["resp_status"], 0) + 1
    assert sorted(res["HTTP status codes"].rows) == sorted(codes.items())
    hist = {}
    for r in rows:
        b = r["latency"] - r["latency"] % (50 * 10**6)
        hist[b] = hist.get(b, 0) + 1
    assert sorted(res["latency histogram"].rows) == sorted(hist.items())
    let = res["LET"]
    window = 10 * S
    assert sum(round(x[6] * window) for x in let.rows) == len(rows)  # request_throughput * window = count
    for t, k8s, p50, p90, p99, err, rps, bps in let.rows:
        g = [r for r in rows if r["time_"] - r["time_"] % window == t]
        assert k8s == "web" and rps == pytest.approx(len(g) / window)
        assert p50 == int(statistics.median([r["latency"] for r in g]))
        assert bps == pytest.approx(sum(r["resp_body_size"] for r in g) / window)
    inc = res["incoming traffic"].rows
    assert [(a, b) for a, b, *_ in inc] == [("", "web")]


@pytest.mark.parametrize("name,n,first", [
    ("px/pgsql_data", 7, ("psql", "127.0.0.1", 5432, "SELECT 1", "SELECT 1", 1001)),
    ("px/mysql_data", 4, ("10.1.1.1", "mariadbd", 0, 3, "select 1", 0, "", 1)),
    ("px/redis_data", 10, ("redis-cli", "127.0.0.1", 6379, "GET", '["k"]', "OK", 10)),
    ("px/dns_data", 1, ("dig", "127.0.0.53", 777, "", '{"queries":[{"name":"example.com","type":"A"}]}', "",
                        '{"answers":[]}')),
])
def test_bundled_protocol_data(catalog, name, n, first):
    (r,) = run_script(name, catalog, now_ns=NOW)
    assert len(r.rows) == n
    newest = max(r.rows, key=lambda x: x[0])
    assert newest[1:] == first


# ---- errors and refusals ---------------------------------------------------------------

@pytest.mark.parametrize("body,msg", [
    ("x = ().__class__", "attribute '__class__' is not allowed"),
    ("x = df.latency.__class__.__mro__", "not allowed"),
    ("open('/etc/passwd')", "name 'open' is not defined"),
    ("__import__('os').system('true')", "name '__import__' is not defined"),
    ("import os", "import of 'os' is not allowed"),
    ("x = [c for c in 'ab']", "ListComp is not supported"),
    ("f = lambda: 1", "Lambda is not supported"),
    ("for i in [1]:\n    pass", "For statements are not supported"),
    ("x = 'a' * 10000000", "too large"),
    ("x = 10 ** 100000", "power out of range"),
    ("x = px.eval", "px.eval is not supported"),
    ("x = df.groupby.__globals__", "not allowed"),
    ("def f():\n    return f()\nf()", "too deeply"),
    ("df = df[df.nope > 1]", "unknown column 'nope'"),
    ("df = px.DataFrame(table='htttp_events')", "unknown table 'htttp_events'"),
    ("df = df[df.latency]", "boolean"),
    ("x = px.count(df.latency)", "is an aggregate"),
])
def test_refused_with_position(catalog, body, msg):
    text = f"import px\ndf = px.DataFrame(table='http_events')\n{body}\n"
    with pytest.raises(QueryError) as ei:
        run_pxl(text, catalog, now_ns=NOW)
    assert msg in str(ei.value)
    assert ei.value.line is not None and ei.value.line >= 3


def test_error_points_at_the_column(catalog):
    with pytest.raises(QueryError) as ei:
        run_pxl("import px\ndf = px.DataFrame(table='http_events')\ndf = df[df.nope > 1]\n", catalog, now_ns=NOW)
    e = ei.value
    assert (e.line, e.col) == (3, 9)
    assert "hint: this DataFrame has: time_, upid" in str(e)


def test_syntax_error_reported(catalog):
    with pytest.raises(QueryError, match=r"<script>:2:\d+: syntax error"):
        run_pxl("import px\ndf = = 1\n", catalog, now_ns=NOW)
