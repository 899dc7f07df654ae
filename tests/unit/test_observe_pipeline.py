"""The observability pipeline on hand-made socket records: rows, connection columns, conn_stats."""

import socket

import pytest

from andon.events.sockdata import ConnClose, ConnOpen, Data
from andon.observe.pipeline import Pipeline, ProcessInfo, Who
from andon.protocols.base import Direction, Protocol, Role

E, I = Direction.EGRESS, Direction.INGRESS
REQ = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
RESP = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"


class FakeProcs(ProcessInfo):
    def __init__(self):
        super().__init__(proc="/nonexistent")
        self.asked = []

    def get(self, pid, comm=""):
        self.asked.append(pid)
        return Who(f"0:{pid}:77", comm or "?", "c" * 64 if pid == 300 else "", "web" if pid == 300 else "")


@pytest.fixture
def run():
    out = {}

    def sink(table, rows):
        out.setdefault(table, []).extend(rows)

    p = Pipeline(sink, FakeProcs(), idle_ns=1000)
    return p, out


def opened(cid, pid=100, role=Role.CLIENT, ts=10, raddr="10.0.0.2", rport=8080, lport=40000, comm="curl"):
    return ConnOpen(cid, pid, pid, 5, ts, role, socket.AF_INET, "10.0.0.1", lport, raddr, rport, 6, 0, 1, comm)


def data(cid, ts, d, payload, proto=Protocol.HTTP, role=Role.CLIENT, pid=100, peer=None):
    return Data(cid, pid, pid, 5, ts, d, proto, role, payload, len(payload), 0, peer=peer)


def test_http_pair_gets_connection_columns(run):
    p, out = run
    p.handle_all([opened(1), data(1, 100, E, REQ), data(1, 350, I, RESP)])
    (row,) = out["http_events"]
    assert (row["req_method"], row["req_path"], row["resp_status"]) == ("GET", "/a?x=1", 404)
    assert row["latency"] == 250 and row["time_"] == 350
    assert (row["remote_addr"], row["remote_port"], row["local_addr"], row["local_port"]) == ("10.0.0.2", 8080,
                                                                                              "10.0.0.1", 40000)
    assert row["trace_role"] == 1 and row["upid"] == "0:100:77" and row["comm"] == "curl"
    assert row["encrypted"] is False and row["pid"] == 100 and row["container_id"] == ""


def test_server_side_and_container(run):
    p, out = run
    p.handle_all([opened(2, pid=300, role=Role.SERVER, comm="nginx"), data(2, 100, I, REQ, role=Role.SERVER, pid=300),
                  data(2, 180, E, RESP, role=Role.SERVER, pid=300)])
    (row,) = out["http_events"]
    assert row["trace_role"] == 2 and row["latency"] == 80
    assert p.stats.server_rows == {"http_events": 1} and p.stats.rows["http_events"] == 1
    assert row["container_id"] == "c" * 64 and row["container_name"] == "web"


def test_data_before_open_is_counted_and_parsed(run):
    p, out = run
    p.handle_all([data(3, 100, E, REQ), data(3, 200, I, RESP)])
    assert p.stats.data_without_conn == 1
    assert out["http_events"][0]["remote_addr"] == ""
    assert out["http_events"][0]["latency"] == 100


def test_unknown_and_disabled_protocols_make_no_rows():
    out = {}
    p = Pipeline(lambda t, r: out.setdefault(t, []).extend(r), FakeProcs(), protocols=[Protocol.REDIS])
    p.handle_all([opened(4), data(4, 1, E, REQ), data(4, 2, I, RESP), opened(5), data(5, 1, E, b"x", Protocol.UNKNOWN)])
    assert "http_events" not in out
    assert p.stats.data_unknown_protocol == 3


def test_conn_stats_counts_opens_closes_and_bytes(run):
    p, out = run
    p.handle_all([opened(6), data(6, 100, E, REQ), data(6, 200, I, RESP),
                  ConnClose(6, 100, 100, 5, 300, Role.CLIENT, Protocol.HTTP, 5000, 7000, 0),
                  opened(7, ts=400), data(7, 500, E, REQ)])
    p.tick(600)
    rows = [r for r in out["conn_stats"] if r["remote_port"] == 8080]
    assert len(rows) == 1
    r = rows[0]
    # the kernel's close totals win over what crossed (they include uncopied bytes)
    assert (r["conn_open"], r["conn_close"], r["conn_active"]) == (2, 1, 1)
    assert r["bytes_sent"] == 5000 + len(REQ) and r["bytes_recv"] == 7000
    assert r["protocol"] == int(Protocol.HTTP) and r["addr_family"] == 2 and r["time_"] == 600


def test_conn_stats_rows_only_on_change_and_closed_groups_forgotten(run):
    p, out = run
    # a server: each client comes from its own ephemeral port, so each is its own group
    for i, port in enumerate((50001, 50002)):
        cid = 20 + i
        p.handle_all([opened(cid, pid=300, role=Role.SERVER, raddr="10.0.0.9", rport=port, ts=10),
                      data(cid, 20, I, REQ, role=Role.SERVER, pid=300)])
    p.handle_all([ConnClose(20, 300, 300, 5, 30, Role.SERVER, Protocol.HTTP, 100, 200, 0)])
    p.tick(40)
    first = {r["remote_port"]: (r["conn_open"], r["conn_close"]) for r in out.pop("conn_stats")}
    assert first == {50001: (1, 1), 50002: (1, 0)}
    assert p.stats.connstat_groups == 2
    # nothing happened: no rows; the closed group's last row was final, so it is dropped
    p.tick(50)
    assert "conn_stats" not in out
    assert p.stats.connstat_groups == 1
    # the open one moves again: one row for it alone, with its counters carried on
    p.handle_all([data(21, 60, I, REQ, role=Role.SERVER, pid=300)])
    p.tick(70)
    (row,) = out.pop("conn_stats")
    assert row["remote_port"] == 50002 and row["bytes_recv"] == 2 * len(REQ) and row["conn_active"] == 1


def test_idle_connection_closed_on_tick_and_unmatched_counted(run):
    p, out = run
    p.handle_all([opened(8, ts=0), data(8, 10, E, REQ)])
    p.tick(5000)
    assert 8 not in p.conns and p.stats.conns_idle_closed == 1
    assert p.stats.parse.unmatched_requests == 1


def test_udp_dns_remote_from_datagram_peer(run):
    p, out = run
    q = bytes.fromhex("abcd01000001000000000000") + b"\x03svc\x04test\x00\x00\x01\x00\x01"
    a = (bytes.fromhex("abcd81800001000100000000") + b"\x03svc\x04test\x00\x00\x01\x00\x01"
         + bytes.fromhex("c00c000100010000003c00040a010203"))
    o = ConnOpen(9, 100, 100, 5, 0, Role.CLIENT, socket.AF_INET, "127.0.0.1", 5353, "", 0, 17, 0, 2, "dig")
    p.handle_all([o, data(9, 10, E, q, Protocol.DNS, peer=("127.0.0.53", 53)),
                  data(9, 90, I, a, Protocol.DNS, peer=("127.0.0.53", 53))])
    (row,) = out["dns_events"]
    assert (row["remote_addr"], row["remote_port"]) == ("127.0.0.53", 53)
    assert '"10.1.2.3"' in row["resp_body"] and row["latency"] == 80


def test_max_conns_evicts_least_recent():
    out = {}
    p = Pipeline(lambda t, r: out.setdefault(t, []).extend(r), FakeProcs(), max_conns=2)
    p.handle_all([opened(1, ts=1), opened(2, ts=2), data(1, 3, E, REQ), opened(3, ts=4)])
    assert set(p.conns) == {1, 3} and p.stats.conns_idle_closed == 1


def test_processinfo_reads_proc(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text("42 (dig) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 1 1 0\n")
    (tmp_path / "42" / "cgroup").write_text("0::/libpod_parent/libpod-" + "ab" * 32 + "\n")
    names = {"ab" * 32: "db"}
    pi = ProcessInfo(proc=str(tmp_path), names=names.get)
    who = pi.get(42, "isc-net-0000")  # the thread's name: the process's wins
    assert who.upid == "0:42:555" and who.comm == "dig"
    assert who.container_id == "ab" * 32 and who.container_name == "db"
    assert pi.get(43, "gone").upid == "0:43:0" and pi.get(43).comm == "gone"
    # the pid is reused by a new process: a new upid and name
    (tmp_path / "42" / "stat").write_text("42 (nc) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 1 1 0\n")
    who2 = pi.get(42, "nc")
    assert who2.upid == "0:42:999" and who2.comm == "nc"
    # an exec: the same process (pid, start time) now runs perl (runc's init becoming a
    # container's entrypoint, after its own socketpair was traced)
    (tmp_path / "42" / "stat").write_text("42 (perl) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 1 1 0\n")
    who3 = pi.get(42, "perl")
    assert (who3.upid, who3.comm) == ("0:42:999", "perl")


def test_tls_plaintext_marks_rows_encrypted(run):
    from andon.events.sockdata import F_ENCRYPTED

    p, out = run
    req = data(10, 100, E, REQ)
    resp = data(10, 150, I, RESP)
    req.flags = resp.flags = F_ENCRYPTED
    p.handle_all([opened(10), req, resp, opened(11), data(11, 100, E, REQ), data(11, 120, I, RESP)])
    rows = {r["latency"]: r["encrypted"] for r in out["http_events"]}
    assert rows == {50: True, 20: False}
    p.tick(200)
    ssl = {r["remote_port"]: r["ssl"] for r in out["conn_stats"]}
    assert ssl == {8080: True}  # one group for both connections: any TLS makes it ssl


def test_the_other_end_on_this_host_names_the_calling_process(run):
    p, out = run
    # a loopback connection traced at both ends: curl (pid 100) calls nginx (pid 200); the
    # server's end sees the addresses and ports swapped. Connection 3 goes elsewhere.
    srv = ConnOpen(2, 200, 200, 7, 11, Role.SERVER, socket.AF_INET, "10.0.0.2", 8080, "10.0.0.1", 40000, 6, 0, 2,
                   "nginx")
    p.handle_all([opened(1), srv, opened(3, lport=40001, raddr="192.0.2.9"),
                  data(2, 100, I, REQ, role=Role.SERVER, pid=200), data(2, 150, E, RESP, role=Role.SERVER, pid=200),
                  data(1, 90, E, REQ), data(1, 160, I, RESP),
                  data(3, 100, E, REQ), data(3, 170, I, RESP)])
    got = sorted((r["pid"], r["remote_pid"], r["remote_comm"]) for r in out["http_events"])
    assert got == [(100, 0, ""), (100, 200, "nginx"), (200, 100, "curl")]


def test_unix_socket_ends_pair_by_their_kernel_sockets(run):
    p, out = run
    path = "/run/postgresql/.s.PGSQL.5432"

    def unix(cid, pid, role, comm, sock, peer):
        return ConnOpen(cid, pid, pid, 5, 10, role, socket.AF_UNIX, path, 0, path, 0, 0, 0, 1, comm, "",
                        sock, peer)
    # two clients of one server socket path: each server end pairs with its own client
    p.handle_all([unix(1, 100, Role.CLIENT, "psql", 0xa1, 0xb1), unix(2, 200, Role.SERVER, "postgres", 0xb1, 0xa1),
                  unix(3, 101, Role.CLIENT, "app", 0xa2, 0xb2), unix(4, 201, Role.SERVER, "postgres", 0xb2, 0xa2)]
                 + [data(c, 100, d, m, role=r, pid=pid) for c, pid, r, d, m in (
                     (2, 200, Role.SERVER, I, REQ), (4, 201, Role.SERVER, I, REQ))]
                 + [data(c, 150, E, RESP, role=Role.SERVER, pid=pid) for c, pid in ((2, 200), (4, 201))])
    got = sorted((r["pid"], r["remote_pid"], r["remote_comm"], r["remote_addr"]) for r in out["http_events"])
    assert got == [(200, 100, "psql", path), (201, 101, "app", path)]
    # the closed client's process is still named on its server's later rows
    p.handle_all([ConnClose(1, 100, 100, 5, 200, Role.CLIENT, Protocol.HTTP, 0, 0, 1),
                  data(2, 300, I, REQ, role=Role.SERVER, pid=200), data(2, 350, E, RESP, role=Role.SERVER, pid=200)])
    assert out["http_events"][-1]["remote_comm"] == "psql"
