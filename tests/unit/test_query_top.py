"""andon top's aggregation: endpoints, rates, error rates and latency quantiles per protocol."""

import json
import subprocess
import sys

import pytest

from andon.query.top import top
from andon.store.catalog import Catalog
from andon.store.settings import StoreSettings
from andon.store.store import Store

T0 = 1_700_000_000 * 10**9
S = 10**9


def http(t, path, status, latency_ms, role=2, comm="web", container="", port=8080):
    return {"time_": t, "req_method": "GET", "req_path": path, "resp_status": status, "latency": latency_ms * 10**6,
            "trace_role": role, "comm": comm, "container_name": container, "local_port": port}


@pytest.fixture
def data_dir(tmp_path):
    rows = [http(T0 + i * S // 10, f"/api?id={i}", 500 if i % 4 == 0 else 200, i + 1) for i in range(40)]
    rows += [http(T0 + S, "/health", 200, 1, container="db-1")] * 5
    rows += [http(T0 + S, "/api", 200, 1, role=1)] * 7  # client side: not counted by default
    rows += [http(T0 - 100 * S, "/old", 200, 1)] * 3  # outside the window
    redis = [{"time_": T0 + S, "req_cmd": "get", "resp": "$1", "latency": 10**5, "trace_role": 2, "comm": "redis-server",
              "local_port": 6379}] * 3 + [{"time_": T0 + S, "req_cmd": "GET", "resp": "-ERR wrong", "latency": 10**5,
                                            "trace_role": 2, "comm": "redis-server", "local_port": 6379}]
    pg = [{"time_": T0 + S, "req_cmd": "Execute", "req": "query=[select 1] params=[]", "resp": "SELECT 1",
           "latency": 10**6, "trace_role": 2, "comm": "postgres", "local_port": 5432},
          {"time_": T0 + S, "req_cmd": "Parse", "req": "select 1", "resp": "", "latency": 0, "trace_role": 2,
           "comm": "postgres", "local_port": 5432},
          {"time_": T0 + S, "req_cmd": "Query", "req": "drop table x", "resp": "ERROR RESPONSE [Severity=ERROR]",
           "latency": 10**6, "trace_role": 2, "comm": "postgres", "local_port": 5432}]
    dns = [{"time_": T0 + S, "req_body": json.dumps({"queries": [{"name": "a.test", "type": "A"}]}),
            "resp_header": json.dumps({"rcode": 3}), "latency": 10**6, "trace_role": 2, "comm": "dnsmasq",
            "local_port": 53}]
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        st.append("http_events", rows)
        st.append("redis_events", redis)
        st.append("pgsql_events", pg)
        st.append("dns_events", dns)
    return tmp_path


def by_endpoint(rows):
    return {(r.protocol, r.endpoint): r for r in rows}


def test_top_counts_rates_errors_and_quantiles(data_dir):
    cat = Catalog(data_dir)
    rows = top(cat, T0, T0 + 10 * S)
    got = by_endpoint(rows)
    api = got[("http", "GET /api")]
    assert rows[0] is api  # busiest first
    assert (api.requests, api.errors, api.service, api.port) == (40, 10, "web", 8080)
    assert api.rate == pytest.approx(4.0) and api.error_rate == pytest.approx(0.25)
    assert api.p50_ms == pytest.approx(20.5) and api.p99_ms == pytest.approx(39.61)
    health = got[("http", "GET /health")]
    assert health.service == "db-1" and health.requests == 5  # a container's name over the process name
    assert got[("redis", "GET")].requests == 4 and got[("redis", "GET")].errors == 1
    assert got[("pgsql", "SELECT")].requests == 1 and got[("pgsql", "SELECT")].errors == 0
    assert got[("pgsql", "DROP")].errors == 1
    assert ("pgsql", "SELECT") in got and not any(e == "PARSE" for _, e in got)
    assert got[("dns", "a.test")].errors == 1  # NXDOMAIN
    assert ("http", "GET /old") not in got


def test_a_failed_grpc_call_is_an_error_though_its_status_is_200(tmp_path):
    """gRPC fails a call with HTTP status 200 and grpc-status in its trailers (resp_headers).
    A gRPC call is protocol grpc and its path; a path never seen says so."""
    def call(grpc_status, ctype=2, headers=None):
        trailers = headers if headers is not None else (
            '{":status":"200","content-type":"application/grpc","grpc-status":"%s"}' % grpc_status)
        return {**http(T0 + S, "/demo.Greeter/SayHello", 200, 1), "req_method": "POST", "content_type": ctype,
                "resp_headers": trailers}
    rows = [call("0")] * 5 + [call("5")] * 2 + [call("14")]
    rows += [call("", headers='{":status":"200"}')]  # its trailers named entries lost: not known to fail
    rows += [call("", headers='{":status":"200","grpc-message":"x","grpc-st')]  # cut at the column's bound
    rows += [call("7", ctype=0)]  # not gRPC: its headers are not gRPC's word
    rows += [call("", headers='{":status":"200","x-note":"\\"grpc-status\\":\\"9\\""}')]  # a value's quotes
    rows += [{**call("2"), "req_path": ""}] * 4  # its path named an HPACK entry lost
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        st.append("http_events", rows)
    got = {(e.protocol, e.endpoint): (e.requests, e.errors) for e in top(Catalog(tmp_path), T0, T0 + 10 * S)}
    assert got == {("grpc", "/demo.Greeter/SayHello"): (11, 3), ("grpc", "POST (path not seen)"): (4, 4),
                   ("http", "POST /demo.Greeter/SayHello"): (1, 0)}


def test_top_client_side_and_limit(data_dir):
    cat = Catalog(data_dir)
    rows = top(cat, T0, T0 + 10 * S, client=True)
    assert [(r.endpoint, r.requests) for r in rows] == [("GET /api", 7)]
    assert len(top(cat, T0, T0 + 10 * S, limit=2)) == 2


def test_top_empty_dir(tmp_path):
    assert top(Catalog(tmp_path), T0, T0 + S) == []


def test_cli_once_json(data_dir):
    out = subprocess.run([sys.executable, "-m", "andon", "top", "--data-dir", str(data_dir), "--window", "100000d",
                          "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = [json.loads(x) for x in out.splitlines()]
    assert rows[0]["endpoint"] == "GET /api" and rows[0]["requests"] == 40 and rows[0]["errors"] == 10


def test_cli_bad_window(data_dir):
    r = subprocess.run([sys.executable, "-m", "andon", "top", "--data-dir", str(data_dir), "--window", "0s",
                        "--once"], capture_output=True, text=True)
    assert r.returncode == 2 and "--window" in r.stderr
