"""The real servers of tests/servers.py: each starts, the real client gets the exact answer,
and stopping leaves no process, no temp dir, no namespace behind."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest

import servers as S

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts servers as their own users (postgres, mysql, nobody)"),
]


def _assert_gone(srv: S.Server, pids: list[int]) -> None:
    assert not srv.workdir.exists(), f"{srv.workdir} left behind"
    left = [p for p in pids if S.alive(p)]
    assert not left, f"{srv.name}: processes {left} still alive"
    with pytest.raises(OSError):
        socket.create_connection((srv.host, srv.port), timeout=1).close()


def _get(url: str, cafile: Path | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_nginx_static_sizes_keepalive_and_workers():
    with S.nginx(workers=2, sizes=(0, 1024, 65536)) as srv:
        workers = srv.worker_pids()
        assert len(workers) == 2
        assert all(Path(f"/proc/{w}/comm").read_text().strip() == "nginx" for w in workers)
        assert _get(srv.url("/")) == (200, S.HTTP_ROOT_BODY)

        r = S.curl(srv.url("/size/1024"), 5)
        assert (r.statuses, r.sizes, r.connects) == ([200] * 5, [1024] * 5, 1)  # one kept-alive connection
        assert len(r.latencies_s) == 5 and all(0 < t < 5 for t in r.latencies_s)

        r = S.curl([srv.url("/size/65536"), srv.url("/size/0"), srv.url("/missing")], keepalive=False)
        assert (r.statuses, r.sizes[:2], r.connects) == ([200, 200, 404], [65536, 0], 3)
        pids = [srv.pid, *workers]
    _assert_gone(srv, pids)


def test_nginx_tls():
    with S.nginx(tls=True) as srv:
        assert srv.url("/").startswith("https://")
        assert _get(srv.url("/"), srv.info["cert"]) == (200, S.HTTP_ROOT_BODY)
        r = S.curl(srv.url("/size/100"), 3, cacert=srv.info["cert"])
        assert (r.statuses, r.sizes, r.connects) == ([200] * 3, [100] * 3, 1)
        pids = [srv.pid, *srv.worker_pids()]
    _assert_gone(srv, pids)


def test_python_http_answers_and_keeps_alive():
    with S.python_http() as srv:
        assert Path(f"/proc/{srv.pid}/comm").read_text().strip().startswith("python")
        assert _get(srv.url("/")) == (200, S.HTTP_ROOT_BODY)
        assert _get(srv.url("/size/3000")) == (200, b"x" * 3000)
        assert _get(srv.url("/status/503")) == (503, b"status 503\n")
        assert _get(srv.url("/nope")) == (404, b"not found\n")
        r = S.curl(srv.url("/echo"), 4, data=b"ping-andon")
        assert (r.statuses, r.sizes, r.connects) == ([200] * 4, [10] * 4, 1)
        r = S.curl(srv.url("/"), 3, keepalive=False)
        assert (r.statuses, r.connects) == ([200] * 3, 3)
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_python_https_with_self_signed_cert():
    with S.python_http(tls=True) as srv:
        assert srv.url("/").startswith("https://127.0.0.1:")
        assert _get(srv.url("/size/5"), srv.info["cert"]) == (200, b"xxxxx")
        r = S.curl(srv.url("/"), 3, cacert=srv.info["cert"])
        assert (r.statuses, r.sizes, r.connects) == ([200] * 3, [len(S.HTTP_ROOT_BODY)] * 3, 1)
        # a client that does not trust the cert gets no response: status 0, curl's exit 60
        r = S.curl(srv.url("/"))
        assert (r.statuses, r.exit_code) == ([0], 60)
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_aiohttp_routes_keepalive_and_tls():
    with S.aiohttp_http(tls=True) as srv:
        assert srv.url("/").startswith("https://127.0.0.1:")
        assert _get(srv.url("/"), srv.info["cert"]) == (200, S.HTTP_ROOT_BODY)
        assert _get(srv.url("/size/3000"), srv.info["cert"]) == (200, b"x" * 3000)
        assert _get(srv.url("/status/503"), srv.info["cert"]) == (503, b"status 503\n")
        r = S.curl(srv.url("/echo"), 4, data=b"ping-andon", cacert=srv.info["cert"])
        assert (r.statuses, r.sizes, r.connects) == ([200] * 4, [10] * 4, 1)
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_node_https_routes_and_keepalive():
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/setup.sh installs nodejs)")
    with S.node_http(tls=True) as srv:
        assert _get(srv.url("/size/3000"), srv.info["cert"]) == (200, b"x" * 3000)
        assert _get(srv.url("/status/503"), srv.info["cert"]) == (503, b"status 503\n")
        r = S.curl([srv.url("/size/10"), srv.url("/nope")], cacert=srv.info["cert"])
        assert (r.statuses, r.sizes, r.connects) == ([200, 404], [10, 10], 1)
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_python_http_inside_a_network_namespace():
    with S.netns() as ns:
        assert ns.name in S._ip("netns", "list").stdout
        with S.python_http(netns=ns) as srv:
            assert srv.host == ns.ns_ip
            assert os.readlink(f"/proc/{srv.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            r = S.curl(srv.url("/size/7"), 2)  # from the host, over the veth pair
            assert (r.statuses, r.sizes, r.connects) == ([200, 200], [7, 7], 1)
            inside = ns.exec(["curl", "-s", srv.url("/")])  # and from inside the namespace
            assert inside.stdout == S.HTTP_ROOT_BODY.decode()
            pid = srv.pid
        _assert_gone(srv, [pid])
    assert ns.name not in S._ip("netns", "list").stdout
    assert S._ip("link", "show", ns.host_if, check=False).returncode != 0


def test_postgres_simple_and_extended_protocol():
    with S.postgres() as srv:
        assert Path(f"/proc/{srv.pid}/status").read_text().split("Uid:")[1].split()[0] == str(
            __import__("pwd").getpwnam("postgres").pw_uid)
        assert S.psql(srv, "select 1 + 1, 'a,b', null") == [["2", "a,b", ""]]
        S.psql(srv, "create table t (id int primary key, name text)")
        for i, name in [(1, "one"), (2, "two"), (3, "three")]:
            S.pg_extended(srv, "insert into t values (%s, %s)", (i, name))
        assert S.pg_extended(srv, "select id, name from t where id >= %s order by id", (2,)) == [(2, "two"), (3, "three")]
        assert S.psql(srv, "select count(*), string_agg(name, '+' order by id) from t") == [["3", "one+two+three"]]
        with pytest.raises(S.ClientError, match="does_not_exist"):
            S.psql(srv, "select * from does_not_exist")
        background = srv.worker_pids()
        assert background, "postgres runs its checkpointer, walwriter, ... as children"
        with S.pg_connect(srv) as conn:  # one more backend, a child of the postmaster, while connected
            backend = conn.execute("select pg_backend_pid()").fetchone()[0]
            assert backend in srv.worker_pids() and backend not in background
            assert [conn.execute("select %s::int + 1", (i,), prepare=True).fetchone()[0] for i in range(3)] == [1, 2, 3]
        pids = [srv.pid, *background]
    _assert_gone(srv, pids)


def test_mariadb_text_and_prepared_statements():
    with S.mariadb() as srv:
        assert S.mysql(srv, "select 1 + 1, 'x', current_user()") == [["2", "x", "root@127.0.0.1"]]
        S.mysql(srv, "create table t (id int primary key, name varchar(20))", db="test")
        for i, name in [(1, "one"), (2, "two"), (3, "three")]:
            S.mysql_prepared(srv, "insert into t values (?, ?)", (i, name))
        assert S.mysql_prepared(srv, "select id, name from t where id >= ? order by id", (2,)) == [
            (2, "two"), (3, "three")]
        assert S.mysql(srv, "select count(*), group_concat(name order by id) from t", db="test") == [
            ["3", "one,two,three"]]
        assert Path(srv.info["socket"]).is_socket()
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_redis_cli_pipe_and_raw_pipeline():
    with S.redis() as srv:
        assert S.redis_cli(srv, "set", "k", "v1") == "OK"
        assert S.redis_cli(srv, "get", "k") == "v1"
        assert S.redis_pipe(srv, [["incr", "n"]] * 1000) == S.PipeResult(replies=1000, errors=0)
        assert S.redis_cli(srv, "get", "n") == "1000"
        replies = S.resp_pipeline(srv, [["rpush", "l", "a", "b"], ["lrange", "l", "0", "-1"], ["get", "nope"],
                                        ["incrby", "n", "5"], ["nosuchcmd"]])
        assert replies[:4] == [2, [b"a", b"b"], None, 1005]
        assert isinstance(replies[4], S.ClientError) and "unknown command" in str(replies[4])
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_dnsmasq_records_over_udp_and_tcp():
    with S.dnsmasq() as srv:
        for tcp in (False, True):
            r = S.dig(srv, "svc.andon.test", "A", tcp=tcp)
            assert (r.status, r.answers) == ("NOERROR", [("svc.andon.test.", 60, "A", "10.1.2.3")])
            assert S.dig(srv, "v6.andon.test", "AAAA", tcp=tcp).answers_of("AAAA") == ["fd00::1234"]
        r = S.dig(srv, "alias.andon.test", "A")
        assert r.answers == [("alias.andon.test.", 60, "CNAME", "both.andon.test."),
                             ("both.andon.test.", 60, "A", "10.1.2.4")]
        assert S.dig(srv, "both.andon.test", "AAAA").answers_of("AAAA") == ["fd00::5"]
        assert (S.dig(srv, "missing.andon.test").status, S.dig(srv, "example.org").status) == ("NXDOMAIN", "REFUSED")
        pid = srv.pid
    _assert_gone(srv, [pid])


def test_a_server_that_cannot_start_says_why_and_leaves_nothing():
    before = set(Path("/tmp").glob("andon-redis-*"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(S.ServerError, match="(?s)exited with code 1.*log tail.*in use"):
            with S.redis(port=port):
                pass
    assert set(Path("/tmp").glob("andon-redis-*")) == before


def test_cleanup_runs_when_the_test_body_fails():
    with pytest.raises(ZeroDivisionError):
        with S.nginx() as srv:
            pids = [srv.pid, *srv.worker_pids()]
            1 / 0
    _assert_gone(srv, pids)
