"""Pixie's Kubernetes lookups on one host (``px.ip_to_pod_id``, ``px.pod_id_to_pod_name``...):
a pod is a container, known by the address its traced processes report as ``local_addr``.

Synthetic rows: a container client calling a host server, a container database, a
host-network container sharing an address with a host process, and a container's own
loopback. Exact values from the lookups, and through Pixie's bundled scripts.
"""

from __future__ import annotations

import socket

import pytest

from andon.query import run_pxl
from andon.query.runner import run_script
from andon.store import Store, StoreSettings
from andon.store.catalog import Catalog
from andon.store.schema import TABLES

S = 10**9
NOW = 1_700_000_000 * S


def http(i, path, role, local, remote, comm, cid="", cname=""):
    return {"time_": NOW - (10 - i) * S, "upid": f"0:{100 + i}:1", "trace_role": role, "local_addr": local,
            "remote_addr": remote, "req_method": "GET", "req_path": path, "resp_status": 200, "latency": 1000 + i,
            "comm": comm, "container_id": cid, "container_name": cname}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    with Store(StoreSettings(data_dir=d, control_socket=False)) as st:
        st.append("http_events", [
            http(0, "/web", 1, "10.88.0.5", "10.88.0.1", "curl", "c1", "web"),       # web's client end
            http(1, "/web", 2, "10.88.0.1", "10.88.0.5", "python3"),                # the host server's end
            http(2, "/hostnet", 1, "192.168.7.2", "192.168.7.9", "curl", "c2", "hostnet"),  # host network
            http(3, "/wget", 1, "192.168.7.2", "192.168.7.9", "wget"),              # a host process, same address
            http(4, "/hostnet", 2, "192.168.7.9", "192.168.7.2", "python3"),
            http(5, "/lo", 2, "127.0.0.1", "127.0.0.1", "python3", "c3", "solo"),    # a container's own loopback
            http(6, "/db", 2, "10.88.0.1", "10.88.0.7", "python3"),                 # called from the db container
        ])
        st.append("pgsql_events", [{"time_": NOW - 5 * S, "trace_role": 2, "local_addr": "10.88.0.7",
                                    "remote_addr": "10.88.0.5", "req_cmd": "Query", "req": "SELECT 1",
                                    "comm": "postgres", "container_id": "c4", "container_name": "db"}])
    c = Catalog(d)
    yield c
    c.close()


LOOKUPS = """
import px
df = px.DataFrame(table='http_events', start_time='-1m')
df.pod_id = px.ip_to_pod_id(df.remote_addr)
df.pod = px.pod_id_to_pod_name(df.pod_id)
df.svc = px.pod_id_to_service_name(px.pod_id_to_service_id(px.ip_to_service_id(df.remote_addr)))
df.node = px.pod_id_to_node_name(df.pod_id)
df.ns = px.pod_id_to_namespace(df.pod_id)
px.display(df[['req_path', 'trace_role', 'remote_addr', 'pod_id', 'pod', 'svc', 'node', 'ns']])
"""


def test_an_address_is_a_pod_when_only_one_containers_processes_report_it(catalog):
    out = run_pxl(LOOKUPS, catalog, now_ns=NOW)[0].dicts()
    got = [(r["req_path"], r["trace_role"], r["pod_id"], r["pod"], r["svc"], r["node"], r["ns"]) for r in out]
    host = socket.gethostname()
    assert got == [
        ("/web", 1, "", "", "", "", ""),               # the host server is no container
        ("/web", 2, "c1", "web", "web", host, ""),     # the caller is the web container
        ("/hostnet", 1, "", "", "", "", ""),
        ("/wget", 1, "", "", "", "", ""),
        ("/hostnet", 2, "", "", "", "", ""),           # 192.168.7.2 is also a host process's: not a pod
        ("/lo", 2, "", "", "", "", ""),                # loopback is every namespace's own
        ("/db", 2, "c4", "db", "db", host, ""),        # known from pgsql_events' rows
    ]
    # a plain string looks up the same way
    plain = run_pxl("import px\ndf = px.DataFrame(table='http_events', start_time='-1m').head(2)\n"
                    "df.x = px.pod_id_to_pod_name(px.ip_to_pod_id('10.88.0.7'))\n"
                    "df.y = px.ip_to_pod_id('10.88.0.1')\npx.display(df[['x', 'y']])\n", catalog, now_ns=NOW)
    assert plain[0].dicts() == [{"x": "db", "y": ""}] * 2


def test_bundled_scripts_name_the_calling_container(catalog):
    data = run_script("px/http_data", catalog, args={"start_time": "-1m"}, now_ns=NOW)[0].dicts()
    src_dst = sorted((r["req_path"], r["source"], r["destination"]) for r in data)
    assert src_dst == [
        ("/db", "db", "python3"), ("/hostnet", "192.168.7.2", "python3"), ("/hostnet", "hostnet", "192.168.7.9"),
        ("/lo", "127.0.0.1", "solo"), ("/web", "web", "10.88.0.1"), ("/web", "web", "python3"),
        ("/wget", "wget", "192.168.7.9")]
    edges = run_script("px/service_stats", catalog, args={"start_time": "-1m", "svc": "python3"}, now_ns=NOW)
    incoming = next(r for r in edges if r.name == "incoming traffic").dicts()
    assert sorted(r["requestor"] for r in incoming) == ["", "db", "web"]  # "": 192.168.7.2, no pod
    assert {r["responder"] for r in incoming} == {"python3"}


def test_lookups_over_a_catalog_without_some_protocol_tables_use_those_it_has(catalog):
    """A Catalog made for some tables only: the lookups read the protocol tables it has (here
    http_events, so the db container, known from pgsql_events, is unknown) and do not fail."""
    only_http = Catalog(catalog.data_dir, tables={"http_events": TABLES["http_events"]})
    try:
        out = run_pxl(LOOKUPS, only_http, now_ns=NOW)[0].dicts()
    finally:
        only_http.close()
    assert [(r["req_path"], r["trace_role"], r["pod_id"], r["pod"]) for r in out if r["pod_id"] or
            r["req_path"] == "/db"] == [("/web", 2, "c1", "web"), ("/db", 2, "", "")]


def test_an_address_reused_by_another_container_names_the_one_in_the_scripts_time_range(tmp_path):
    """10.88.0.9 was container c5's an hour ago and is c6's now: a script over the last minute
    names c6, one over the last two hours cannot tell (''), one over an hour ago names c5."""
    hour = 3600 * S
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        st.append("http_events", [
            {**http(0, "/then", 1, "10.88.0.9", "10.88.0.1", "curl", "c5", "old"), "time_": NOW - hour},
            {**http(1, "/then", 2, "10.88.0.1", "10.88.0.9", "python3"), "time_": NOW - hour + S},
            http(2, "/now", 1, "10.88.0.9", "10.88.0.1", "curl", "c6", "new"),
            http(3, "/now", 2, "10.88.0.1", "10.88.0.9", "python3"),
        ])
    c = Catalog(tmp_path)
    try:
        def callers(start: str, end: str | None = None) -> list[tuple[str, str]]:
            span = f", start_time='{start}'" + (f", end_time='{end}'" if end else "")
            out = run_pxl("import px\n"
                          f"df = px.DataFrame(table='http_events'{span})\n"
                          "df = df[df.trace_role == 2]\n"
                          "df.pod = px.pod_id_to_pod_name(px.ip_to_pod_id(df.remote_addr))\n"
                          "px.display(df[['req_path', 'pod']])\n", c, now_ns=NOW)[0].dicts()
            return [(r["req_path"], r["pod"]) for r in out]

        assert callers("-1m") == [("/now", "new")]
        assert callers("-2h") == [("/then", ""), ("/now", "")]
        assert callers("-2h", "-30m") == [("/then", "old")]
        # http_data's source column, over the last minute
        data = run_script("px/http_data", c, args={"start_time": "-1m"}, now_ns=NOW)[0].dicts()
        assert sorted((r["req_path"], r["source"]) for r in data) == [("/now", "new"), ("/now", "new")]
    finally:
        c.close()
