"""Pixie's semantic types in ``andon query``: derived by Pixie's rules, shown in the table
output as ``px run`` shows them (5.07 ms, 4 /s, 1.5 KiB), raw in json and csv."""

from __future__ import annotations

import json
import time

import pytest

from andon.cli.main import main
from andon.query import run_pxl, run_script
from andon.query import semantic as st
from andon.store import Store, StoreSettings
from andon.store.catalog import Catalog

S = 10**9


@pytest.fixture()
def data_dir(tmp_path):
    # 20 requests in one 10 s window, 5 of them 404; latency 1..20 ms; bodies of 100 bytes
    now = time.time_ns()
    base = now - now % (10 * S) - 10 * S  # the whole previous 10 s window
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st_:
        st_.append("http_events", [{"time_": base + i * (S // 4), "trace_role": 2, "remote_addr": "10.0.0.9",
                                    "req_method": "GET", "req_path": "/x", "resp_status": 404 if i % 4 == 0 else 200,
                                    "resp_body_size": 100, "latency": (i + 1) * 10**6, "comm": "nginx"}
                                   for i in range(20)])
    return tmp_path


def test_rules_are_pixies():
    assert st.binop("/", st.NONE, st.DURATION_NS) == st.THROUGHPUT_PER_NS
    assert st.binop("/", st.BYTES, st.DURATION_NS) == st.THROUGHPUT_BYTES_PER_NS
    assert st.binop("/", st.DURATION_NS, st.NONE) == st.NONE
    assert st.binop("/", st.DURATION_NS, st.DURATION_NS) == st.NONE
    assert st.binop("+", st.DURATION_NS, st.DURATION_NS) == st.DURATION_NS
    assert st.binop("-", st.BYTES, st.NONE) == st.NONE
    assert st.binop("*", st.DURATION_NS, st.NONE) == st.NONE
    assert st.aggregate("mean", st.DURATION_NS) == st.DURATION_NS
    assert st.aggregate("count", st.DURATION_NS) == st.NONE
    assert st.aggregate("quantiles", st.DURATION_NS) == st.DURATION_NS_QUANTILES
    assert st.aggregate("quantiles", st.NONE) == st.QUANTILES
    assert st.aggregate("max", st.HTTP_RESP_STATUS) == st.NONE
    assert st.pluck(st.DURATION_NS_QUANTILES) == st.DURATION_NS
    assert st.absolute(st.PERCENT) == st.PERCENT and st.absolute(st.DURATION_NS_QUANTILES) == st.NONE


def test_values_are_shown_in_their_units():
    assert st.show(st.DURATION_NS, 999) == "999 ns"
    assert st.show(st.DURATION_NS, 1000) == "1 µs"
    assert st.show(st.DURATION_NS, 5_068_120) == "5.07 ms"
    assert st.show(st.DURATION_NS, 12_500_000_000) == "12.5 s"
    assert st.show(st.DURATION_NS, 4_000_000_000_000) == "4000 s"
    assert st.show(st.BYTES, 1536) == "1.5 KiB"
    assert st.show(st.BYTES, 0) == "0 B"
    assert st.show(st.THROUGHPUT_PER_NS, 4e-9) == "4 /s"
    assert st.show(st.THROUGHPUT_PER_NS, 1.2345e-5) == "12,345 /s"
    assert st.show(st.THROUGHPUT_PER_NS, 1e-13) == "0.0001 /s"
    assert st.show(st.THROUGHPUT_BYTES_PER_NS, 2e-6) == "1.95 KiB/s"
    assert st.show(st.PERCENT, 0.1234) == "12.34 %"
    assert st.show(st.DURATION_NS_QUANTILES, '{"p50": 1500.0, "p99": 2000000}') == "p50: 1.5 µs, p99: 2 ms"
    assert st.show(st.DURATION_NS, "not a number") is None
    assert st.show(st.DURATION_NS_QUANTILES, "{broken") is None
    assert st.style(st.HTTP_RESP_STATUS, "resp_status", 503) == "red"
    assert st.style(st.HTTP_RESP_STATUS, "resp_status", 204) == "green"
    assert st.style(st.DURATION_NS, "latency_p99", 450e6) == "red"
    assert st.style(st.DURATION_NS, "request_latency", 450e6) == ""


def test_service_stats_columns_carry_pixies_types(data_dir):
    cat = Catalog(data_dir)
    try:
        res = {r.name: r for r in run_script("px/service_stats", cat, args={"start_time": "-1m"})}
    finally:
        cat.close()
    let = res["LET"]
    sem = dict(zip(let.columns, let.semantics))
    assert sem == {"time_": "", "k8s": "", "latency_p50": st.DURATION_NS, "latency_p90": st.DURATION_NS,
                   "latency_p99": st.DURATION_NS, "error_rate": st.THROUGHPUT_PER_NS,
                   "request_throughput": st.THROUGHPUT_PER_NS, "bytes_throughput": st.THROUGHPUT_BYTES_PER_NS}
    row = dict(zip(let.columns, let.rows[0]))
    assert row["request_throughput"] == pytest.approx(20 / (10 * S))
    assert st.show(st.THROUGHPUT_PER_NS, row["request_throughput"]) == "2 /s"
    assert st.show(st.THROUGHPUT_PER_NS, row["error_rate"]) == "0.5 /s"
    assert st.show(st.THROUGHPUT_BYTES_PER_NS, row["bytes_throughput"]) == "200 B/s"
    codes = res["HTTP status codes"]
    assert dict(zip(codes.columns, codes.semantics)) == {"resp_status": st.HTTP_RESP_STATUS, "count": ""}


def test_expressions_keep_or_drop_their_type(data_dir):
    cat = Catalog(data_dir)
    try:
        out = run_pxl("""
import px
df = px.DataFrame(table='http_events', start_time='-1m')
df.twice = df.latency + df.latency
df.scaled = df.latency * 2
df.size = px.Bytes(df.resp_status)
df.share = px.Percent(df.latency / 100000000)
df.window = px.DurationNanos(5 * 1000)
m = df.merge(df.groupby('req_path').agg(q=('latency', px.quantiles), n=('latency', px.count),
                                        mx=('resp_body_size', px.max)),
             how='inner', left_on='req_path', right_on='req_path', suffixes=['', '_r'])
px.display(m[['latency', 'twice', 'scaled', 'size', 'share', 'window', 'q', 'n', 'mx']].head(1))
""", cat)
    finally:
        cat.close()
    r = out[0]
    assert dict(zip(r.columns, r.semantics)) == {
        "latency": st.DURATION_NS, "twice": st.DURATION_NS, "scaled": "", "size": st.BYTES, "share": st.PERCENT,
        "window": st.DURATION_NS, "q": st.DURATION_NS_QUANTILES, "n": "", "mx": st.BYTES}


def test_table_output_uses_units_and_json_keeps_raw_values(capsys, data_dir):
    rc = main(["query", "px/service_stats", "--data-dir", str(data_dir), "--table", "LET", "--arg", "start_time=-1m"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 /s" in out and "0.5 /s" in out and "200 B/s" in out
    assert "ms" in out and "e-09" not in out
    rc = main(["query", "px/service_stats", "--data-dir", str(data_dir), "--table", "LET", "--arg", "start_time=-1m",
               "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    row = doc[0]["rows"][0]
    assert row["request_throughput"] == pytest.approx(2e-9)
    assert isinstance(row["latency_p50"], int) and 1_000_000 <= row["latency_p50"] <= 20_000_000
    # SQL results have no semantic types: the numbers are printed as they are
    rc = main(["query", "--data-dir", str(data_dir), "--sql", "SELECT max(latency) AS latency FROM http_events"])
    assert rc == 0 and "20000000" in capsys.readouterr().out
