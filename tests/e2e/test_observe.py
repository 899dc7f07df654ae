"""Protocol tracing end to end: the real agent (`andon run --no-rules`), real servers and real
clients (tests/servers.py), rows read back with SQL and with `andon query`.

One agent for the module (loading the sensor verifies a large program). The machine is
shared with other work whose traffic the sensor also sees, so every query picks this
test's rows by its own server port (and client process name or pid).

TRIGGER: start a server on a free port, run the real client N times.
ASSERT: the tables hold exactly those N exchanges, on the client side (trace_role 1) and
the server side (trace_role 2), with the protocol fields the client sent and received.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import servers as S
from observe_agent import ObserveAgent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs and starts servers as their own users"),
]

CLIENT, SERVER = 1, 2  # trace_role

# a bigger ring than the default 8 MiB: other work on the machine may flood it for a while
CONFIG = """\
observe:
  ring_buffer_mb: 64
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    if not (S_BPF := Path(__file__).resolve().parents[2] / "build" / "bpf" / "net" / "sockdata.bpf.o").exists():
        pytest.skip(f"BPF objects not built ({S_BPF} missing): run `make bpf`")
    with ObserveAgent(tmp_path_factory.mktemp("observe") / "data", config=CONFIG) as a:
        yield a


def _on_port(port: int) -> str:
    """SQL: this server's rows, both ends (the server's local port, the client's remote port)."""
    return f"((local_port = {port} AND trace_role = {SERVER}) OR (remote_port = {port} AND trace_role = {CLIENT}))"


# -- HTTP --------------------------------------------------------------------------------------------
def test_http_keepalive_client_and_server_rows(agent: ObserveAgent):
    n = 20
    tag = secrets.token_hex(4)
    # statuses that carry a body (not 1xx/204/304, which the Python server would break)
    codes = [200, 201, 202, 400, 403, 404, 418, 500, 502, 503]
    paths = [f"/status/{codes[i % 10]}?t={tag}" if i % 4 else f"/size/{i * 10}?t={tag}" for i in range(n)]
    with S.python_http() as srv:
        r = S.curl([srv.url(p) for p in paths])
        assert r.connects == 1, "curl kept one connection alive"
        want = [(p, 200 if p.startswith("/size/") else int(p[8:11])) for p in paths]
        assert r.statuses == [s for _, s in want]
        q = ("SELECT time_, trace_role, req_method, req_path, resp_status, resp_message, resp_body_size, latency, "
             "comm, pid, local_addr, local_port, remote_addr, remote_port, encrypted, major_version, minor_version "
             f"FROM http_events WHERE {_on_port(srv.port)} "
             # servers.py's readiness probe (curl /) is on this port too: keep the tagged requests
             f"AND req_path LIKE '%t={tag}' ORDER BY time_")
        rows = agent.wait_rows(q, 2 * n)

    clients = [x for x in rows if x["trace_role"] == CLIENT]
    servers_ = [x for x in rows if x["trace_role"] == SERVER]
    assert len(clients) == n and len(servers_) == n, agent.log_tail()
    for side, comm in ((clients, "curl"), (servers_, "python3")):
        assert [(x["req_path"], x["resp_status"]) for x in side] == want
        assert {x["req_method"] for x in side} == {"GET"}
        assert {(x["major_version"], x["minor_version"]) for x in side} == {(1, 1)}
        assert {x["comm"] for x in side} == {comm}
        assert {x["encrypted"] for x in side} == {False}
        assert [x["resp_body_size"] for x in side if x["req_path"].startswith("/size/")] == [
            int(p.split("/")[2].split("?")[0]) for p, _ in want if p.startswith("/size/")]
        assert len({x["pid"] for x in side}) == 1
    assert servers_[0]["pid"] == srv.pid
    # one connection: the client's local port is the server's remote port on every row
    assert {(x["local_addr"], x["remote_addr"], x["remote_port"]) for x in clients} == {
        ("127.0.0.1", "127.0.0.1", srv.port)}
    assert {(x["remote_port"], x["local_port"]) for x in servers_} == {(clients[0]["local_port"], srv.port)}
    # latency: > 0, and the client's is within what curl measured for the same request
    # (curl's time_total also covers its own parsing; 2 ms slack for clock reads)
    for row, curl_s in zip(clients, r.latencies_s):
        assert 0 < row["latency"] <= curl_s * 1e9 + 2e6, (row["req_path"], row["latency"], curl_s)
    for row, curl_s in zip(servers_, r.latencies_s):
        assert 0 < row["latency"] <= curl_s * 1e9 + 2e6, (row["req_path"], row["latency"], curl_s)
