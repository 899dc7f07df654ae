"""CPU cost of the observability hot path: socket records -> Pipeline -> parser -> rows.

Synthetic replays of what the socket sensor delivers under a load generator, fed straight
into :class:`andon.observe.pipeline.Pipeline` (no kernel, no ring buffer, no store flush):

* ``http-server``  nginx-like keep-alive GET /size/1024, server side (1 read + 1 write per request)
* ``http-client``  the same traffic seen by the client (wrk)
* ``redis-p16``    redis-benchmark -P 16 GET/SET, server side (one read of 16 commands, one write of 16 replies)
* ``redis-p1``     redis-benchmark GET/SET one at a time, server side
* ``pg-extended``  pgbench -S -M extended, server side (Parse/Bind/Describe/Execute/Sync, one row back)
* ``mysql-query``  COM_QUERY with a one-row result set, server side

Prints, per replay, records/s and µs of CPU (process_time, the median of ``--repeat`` runs)
per row made. ``--profile NAME`` prints the cProfile of one replay instead.

``--baseline REV`` (e.g. a65d968, the commit before the hot-path work) also runs every replay
on the ``src/andon`` of that git revision (``git archive`` into a temporary directory), each run
in its own process, old and new interleaved, and prints new/old: on a shared machine that
ratio is steadier than either figure. Without it, the µs/row measured before the work
(``BEFORE_US``, another day's load) is printed for orientation only.

    .venv/bin/python bench/observe_pipeline.py [--n 20000] [--repeat 5] [--only http-server ...] [--baseline a65d968]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import subprocess
import tempfile
import pstats
import statistics
import struct
import sys
import time

from andon.events.sockdata import ConnOpen, Data
from andon.observe.pipeline import Pipeline, ProcessInfo
from andon.protocols.base import Direction, Protocol, Role

CONNS = 4
E, I = Direction.EGRESS, Direction.INGRESS

# µs of CPU per row (median of 3, --n 10000) measured on this machine at a65d968, before the optimisation,
# same script, same --n; see docs/performance.md
BEFORE_US = {"http-server": 85.1, "http-client": 92.7, "redis-p16": 28.9, "redis-p1": 45.4,
             "pg-extended": 18.6, "mysql-query": 24.4}

HTTP_REQ = b"GET /size/1024 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
HTTP_RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 22 Nov 2026 00:00:00 GMT\r\n"
             b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
             b"Last-Modified: Sat, 22 Nov 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n"
             b"ETag: \"abc\"\r\nAccept-Ranges: bytes\r\n\r\n" + b"x" * 1024)


def _resp_cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _pg(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("!i", len(payload) + 4) + payload


def _my(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def _pairs(name: str) -> tuple[Protocol, Role, list[tuple[Direction, bytes]], int]:
    """(protocol, role, the chunks of one exchange in order, rows it makes)."""
    if name == "http-server":
        return Protocol.HTTP, Role.SERVER, [(I, HTTP_REQ), (E, HTTP_RESP)], 1
    if name == "http-client":
        return Protocol.HTTP, Role.CLIENT, [(E, HTTP_REQ), (I, HTTP_RESP)], 1
    if name in ("redis-p1", "redis-p16"):
        n = 16 if name == "redis-p16" else 1
        cmds, replies = [], []
        for i in range(n):
            if i % 2:
                cmds.append(_resp_cmd(b"SET", b"key:__rand_int__", b"xxx"))
                replies.append(b"+OK\r\n")
            else:
                cmds.append(_resp_cmd(b"GET", b"key:__rand_int__"))
                replies.append(b"$3\r\nxxx\r\n")
        return Protocol.REDIS, Role.SERVER, [(I, b"".join(cmds)), (E, b"".join(replies))], n
    if name == "pg-extended":
        q = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
        req = (_pg(b"P", b"\0" + q + b"\0\0\0") + _pg(b"B", b"\0\0\0\0\0\1\0\0\0\x0512345\0\0")
               + _pg(b"D", b"P\0") + _pg(b"E", b"\0\0\0\0\0") + _pg(b"S", b""))
        rowdesc = _pg(b"T", b"\0\1abalance\0\0\0\x40\x0b\0\3\0\0\0\x17\0\4\xff\xff\xff\xff\0\0")
        resp = (_pg(b"1", b"") + _pg(b"2", b"") + rowdesc + _pg(b"D", b"\0\1\0\0\0\x041234")
                + _pg(b"C", b"SELECT 1\0") + _pg(b"Z", b"I"))
        return Protocol.PGSQL, Role.SERVER, [(I, req), (E, resp)], -1
    if name == "mysql-query":
        req = _my(0, b"\x03SELECT c FROM sbtest1 WHERE id=4242")
        coldef = _my(2, b"\x03def\x06sbtest\x07sbtest1\x07sbtest1\x01c\x01c\x0c\x08\x00\x78\x00\x00\x00\xfe\x00\x00\x00\x00\x00")
        resp = (_my(1, b"\x01") + coldef + _my(3, b"\xfe\x00\x00\x02\x00") + _my(4, b"\x0bhello world")
                + _my(5, b"\xfe\x00\x00\x02\x00"))
        return Protocol.MYSQL, Role.SERVER, [(I, req), (E, resp)], 1
    raise SystemExit(f"unknown replay {name}")


NAMES = ["http-server", "http-client", "redis-p16", "redis-p1", "pg-extended", "mysql-query"]


def records(name: str, n: int) -> list:
    proto, role, chunks, _ = _pairs(name)
    recs: list = [ConnOpen(c, 100, 100, 5, 0, role, 2, "127.0.0.1", 8080, "127.0.0.1", 40000 + c, 6, 0, 1, "srv")
                  for c in range(CONNS)]
    t, pos = 0, {}
    for i in range(n):
        c = i % CONNS
        for d, data in chunks:
            t += 500
            p = pos.get((c, d), 0)
            recs.append(Data(c, 100, 100, 5, t, d, proto, role, data, len(data), p))
            pos[(c, d)] = p + len(data)
    return recs


def run_once(recs: list) -> tuple[float, int]:
    rows = [0]

    def sink(table: str, batch: list[dict]) -> None:
        rows[0] += len(batch)

    p = Pipeline(sink, ProcessInfo())
    t0 = time.process_time()
    p.handle_all(recs)
    dt = time.process_time() - t0
    return dt, rows[0]


def _worker(src: str, name: str, n: int) -> tuple[float, int, int]:
    """One replay in a fresh process on the andon package under ``src``: (CPU s, rows, records)."""
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name, "--n", str(n)],
                         env=env, check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["cpu_s"], r["rows"], r["records"]


def compare(a: argparse.Namespace) -> int:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    new_src = os.path.join(repo, "src")
    with tempfile.TemporaryDirectory(prefix="andon-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", repo, "archive", a.baseline, "src/andon"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        old_src = os.path.join(tmp, "src")
        print(f"{'replay':<13} {'rows':>7} {'old us/row':>10} {'new us/row':>10} {'new/old':>8} {'spread':>12}")
        for name in a.only or NAMES:
            old, new, ratios = [], [], []
            for _ in range(a.repeat):
                o_dt, o_rows, _ = _worker(old_src, name, a.n)
                n_dt, n_rows, _ = _worker(new_src, name, a.n)
                if o_rows != n_rows:
                    print(f"{name}: rows differ, old {o_rows} new {n_rows}", file=sys.stderr)
                old.append(o_dt / o_rows * 1e6)
                new.append(n_dt / n_rows * 1e6)
                ratios.append(new[-1] / old[-1])
            ratios.sort()
            print(f"{name:<13} {n_rows:>7} {statistics.median(old):>10.1f} {statistics.median(new):>10.1f} "
                  f"{statistics.median(ratios):>8.3f} {ratios[0]:>5.2f}-{ratios[-1]:<5.2f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="exchanges per replay")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", nargs="*", choices=NAMES)
    ap.add_argument("--profile", choices=NAMES)
    ap.add_argument("--baseline", metavar="REV", help="also run the replays on src/andon of this git revision")
    ap.add_argument("--worker", choices=NAMES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        recs = records(a.worker, a.n)
        dt, rows = run_once(recs)
        print(json.dumps({"cpu_s": dt, "rows": rows, "records": len(recs)}))
        return 0
    if a.baseline:
        return compare(a)
    if a.profile:
        recs = records(a.profile, a.n)
        p = Pipeline(lambda t, r: None, ProcessInfo())
        cProfile.runctx("p.handle_all(recs)", globals(), {"p": p, "recs": recs}, "/tmp/observe_pipeline.prof")
        pstats.Stats("/tmp/observe_pipeline.prof").sort_stats("tottime").print_stats(20)
        return 0
    print(f"{'replay':<13} {'records':>8} {'rows':>7} {'rec/s':>10} {'us/row':>8} {'spread':>13} {'before':>7} {'speedup':>7}")
    for name in a.only or NAMES:
        recs = records(name, a.n)
        runs = [run_once(recs) for _ in range(a.repeat)]
        rows = runs[0][1]
        if rows == 0:
            print(f"{name:<13} made no rows", file=sys.stderr)
            continue
        us = sorted(dt / rows * 1e6 for dt, _ in runs)
        med = statistics.median(us)
        rate = len(recs) / statistics.median(dt for dt, _ in runs)
        before = BEFORE_US.get(name, 0.0)
        ratio = f"{before / med:6.1f}x" if before else "      -"
        print(f"{name:<13} {len(recs):>8} {rows:>7} {rate:>10,.0f} {med:>8.1f} {us[0]:>5.1f}-{us[-1]:<6.1f} "
              f"{before or '-':>7} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
