"""CPU cost of the agent's observability hot path, per row, from ring bytes to Parquet.

Synthetic replays of what the socket sensor writes under a load generator, as ring records
laid out byte for byte as the kernel writes them (``bpf/abi/sockdata.h``) into memory laid
out as a mapped BPF ring buffer (``MemoryRing``), then the agent's whole chain: VarRingReader
-> SockSource decode -> the Observer loop -> Pipeline -> parser -> Store.append, and at the
end the pipeline closed and the Store flushed to Parquet segments on a temporary directory
(also every ``FLUSH_ROWS`` rows on the way, as its thread would).
Only the agent's side is timed (process_time, all threads: DuckDB's too), not the writing of
the ring, and not a warm-up replay of ``WARM_ROWS`` rows on other connections before it.

* ``http-server``  nginx-like keep-alive GET /size/1024, server side (1 read + 1 write per request)
* ``http-client``  the same traffic seen by the client (wrk)
* ``http-varied``  server side, every request path and response head different
* ``h2-server``    the same GET over HTTP/2, server side (a HEADERS frame in; HEADERS and DATA out)
* ``h2-client``    the same traffic seen by the client (h2load)
* ``redis-p16``    redis-benchmark -P 16 GET/SET, server side (one read of 16 commands, one write of 16 replies)
* ``redis-p1``     redis-benchmark GET/SET one at a time, server side
* ``pg-extended``  pgbench -S -M extended, server side (Parse/Bind/Describe/Execute/Sync, one row back)
* ``mysql-query``  COM_QUERY with a one-row result set, server side

Prints, per replay, records/s and µs of CPU (the median of ``--repeat`` runs) per row
written. ``--profile NAME`` prints the cProfile of one replay instead.

``--baseline REV`` (e.g. e2bfc90, the commit before the second hot-path round) also runs every
replay on the ``src/andon`` of that git revision (``git archive`` into a temporary directory),
each run in its own process, old and new interleaved, and prints new/old: on a shared machine
that ratio is steadier than either figure.

    .venv/bin/python bench/observe_pipeline.py [--n 20000] [--repeat 5] [--only http-server ...] [--baseline e2bfc90]
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import json
import mmap
import os
import pstats
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import snapshot  # bench/snapshot.py, beside this script
from andon.app.config import ObserveConfig
from andon.app import observer as observer_mod
from andon.app.observer import Observer
from andon.bpf.varring import VarRingReader
from andon.events import sockdata as sd
from andon.events.sockdata import SockSettings, SockSource
from andon.observe.pipeline import Pipeline, ProcessInfo
from andon.protocols.base import Direction, Protocol, Role
from andon.store.settings import StoreSettings
from andon.store.store import Store

CONNS = 4
PAGE = mmap.PAGESIZE
E, I = Direction.EGRESS, Direction.INGRESS

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
    if name == "h2-server":
        import hpack

        def frame(ftype: int, flags: int, payload: bytes) -> bytes:
            return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + b"\0\0\0\1" + payload

        req = frame(1, 0x5, hpack.Encoder().encode([
            (":method", "GET"), (":scheme", "https"), (":authority", "127.0.0.1:8443"), (":path", "/size/1024"),
            ("user-agent", "Go-http-client/2.0"), ("accept-encoding", "gzip")]))
        resp = frame(1, 0x4, hpack.Encoder().encode([
            (":status", "200"), ("content-type", "application/octet-stream"), ("content-length", "1024"),
            ("date", "Sat, 22 Nov 2026 00:00:00 GMT")])) + frame(0, 0x1, b"x" * 1024)
        return Protocol.HTTP2, Role.SERVER, [(I, req), (E, resp)], 1
    if name == "h2-client":
        proto, _, chunks, rows = _pairs("h2-server")
        return proto, Role.CLIENT, [(E if d == I else I, data) for d, data in chunks], rows
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


NAMES = ["http-server", "http-client", "http-varied", "h2-server", "h2-client", "redis-p16", "redis-p1", "pg-extended", "mysql-query"]
TABLES = {Protocol.HTTP: "http_events", Protocol.HTTP2: "http_events", Protocol.REDIS: "redis_events", Protocol.PGSQL: "pgsql_events",
          Protocol.MYSQL: "mysql_events"}
PID = 3_999_999  # no such process: ProcessInfo falls back to the record's comm
RING = 8 << 20  # the agent's default ring (observe.ring_buffer_mb)
FLUSH_ROWS = 10_000  # rows buffered when the store is flushed (its thread: every second, ~10k rows/s here)
WARM_ROWS = FLUSH_ROWS  # rows of the warm-up replay: one full-size flush before the measured part


def _exchanges(name: str, n: int, first: int = 0) -> Iterator[tuple[int, list[tuple[Direction, bytes]]]]:
    """(connection, chunks of one exchange) n times, round robin over CONNS connections."""
    if name in ("h2-server", "h2-client"):  # each connection's header blocks from its own encoders, as a real peer's
        import hpack

        def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
            return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload

        encs = [(hpack.Encoder(), hpack.Encoder()) for _ in range(CONNS)]
        for i in range(first, first + n):
            c = i % CONNS
            sid = 2 * (i // CONNS) + 1
            req = frame(1, 0x5, sid, encs[c][0].encode([
                (":method", "GET"), (":scheme", "https"), (":authority", "127.0.0.1:8443"), (":path", "/size/1024"),
                ("user-agent", "Go-http-client/2.0"), ("accept-encoding", "gzip")]))
            resp = frame(1, 0x4, sid, encs[c][1].encode([
                (":status", "200"), ("content-type", "application/octet-stream"), ("content-length", "1024"),
                ("date", "Sat, 22 Nov 2026 00:%02d:%02d GMT" % (i // 60000 % 60, i // 1000 % 60))]))
            out, back = (E, I) if name == "h2-client" else (I, E)
            yield c, [(out, req), (back, resp + frame(0, 0x1, sid, b"x" * 1024))]
        return
    if name != "http-varied":
        _, _, chunks, _ = _pairs(name)
        for i in range(n):
            yield i % CONNS, chunks
        return
    # every head different (path, ETag, Date): nothing learned from one message helps the next
    for i in range(first, first + n):
        req = b"GET /item/%d?v=%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n" % (i, i * 7)
        resp = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 22 Nov 2026 00:%02d:%02d GMT\r\n"
                b"Content-Type: text/plain\r\nContent-Length: 64\r\nConnection: keep-alive\r\n"
                b"ETag: \"%08x\"\r\n\r\n" % (i // 60 % 60, i % 60, i) + b"y" * 64)
        yield i % CONNS, [(I, req), (E, resp)]


def ring_records(name: str, n: int, first: int = 0) -> list[bytes]:
    """The replay as the kernel writes it into the ring (bpf/abi/sockdata.h): opens, data, closes.
    ``first``: the index of the first exchange (and connection ids from there), so a warm-up
    replay shares nothing with the measured one."""
    proto, role, _, _ = _pairs("http-server" if name == "http-varied" else name)
    addr = bytes([127, 0, 0, 1]) + bytes(12)
    # the open record's fields after tcomm, as far as the andon being measured has them (--baseline)
    tail = tuple({"path": b""}.get(f, 0) for f in sd.OPEN_FIELDS[10:])
    out = [sd.OPEN.pack(sd.REC_OPEN, int(role), int(proto), PID, PID, 5 + c, 1000, first + c + 1, 2, 6, 8080,
                        40000 + c, addr, addr, 4026531840, 2, b"srv", b"srv", *tail) for c in range(CONNS)]
    t, pos = 1000, {}
    for c, chunks in _exchanges(name, n, first):
        for d, data in chunks:
            t += 500
            p = pos.get((c, d), 0)
            out.append(sd.DATA.pack(sd.REC_DATA, int(role), int(proto), PID, PID, 5 + c, t, first + c + 1, p, len(data),
                                    len(data), 0 if d == I else 1, int(d), 0, 0, 0, bytes(16)) + data)
            pos[(c, d)] = p + len(data)
    for c in range(CONNS):
        t += 500
        out.append(sd.CLOSE.pack(sd.REC_CLOSE, int(role), int(proto), PID, PID, 5 + c, t, first + c + 1,
                                 pos.get((c, E), 0), pos.get((c, I), 0), sd.CLOSE_SYSCALL, 0))
    return out


class MemoryRing:
    """A BPF ring buffer's memory laid out as the kernel maps it (kernel/bpf/ringbuf.c): the
    producer page, then the data area twice in a row; this side is the producer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.mem = mmap.mmap(-1, PAGE + 2 * size)  # anonymous: slicing it gives bytes, as the real ring's
        self.prod = 0
        self.cons = ctypes.c_uint64(0)  # the consumer position the reader advances

    def put(self, rec: bytes) -> bool:
        total = (len(rec) + 8 + 7) & ~7
        if self.prod + total - self.cons.value > self.size:
            return False
        off = self.prod & (self.size - 1)
        item = struct.pack("<II", len(rec), 0) + rec
        for base in (off, off + self.size):  # both mappings of the data area
            end = min(base + len(item), 2 * self.size)
            self.mem[PAGE + base : PAGE + end] = item[: end - base]
        if off + len(item) > self.size:  # the wrapped tail, seen at the start of the first mapping
            self.mem[PAGE : PAGE + off + len(item) - self.size] = item[self.size - off :]
        self.prod += total
        struct.pack_into("<Q", self.mem, 0, self.prod)
        return True

    def reader(self) -> VarRingReader:
        """A VarRingReader on this memory (what map_ring gives it on a real ring)."""
        if hasattr(VarRingReader, "on_memory"):
            return VarRingReader.on_memory(self.mem, self.cons, self.size)
        r = VarRingReader.__new__(VarRingReader)  # before on_memory: its attributes by hand
        r.fd, r.size, r.mask = -1, self.size, self.size - 1
        r._cons_map, r._prod_map, r._cons = None, self.mem, self.cons
        r._view = memoryview(self.mem)
        r._prod = r._view[0:8].cast("Q")
        r._ep = select.epoll()
        r.records_read = r.bytes_read = 0
        return r


def run_chain(name: str, n: int) -> tuple[float, int, int]:
    """The agent's whole path on one replay: ring records -> VarRingReader -> SockSource decode ->
    Observer loop -> Pipeline -> parser -> Store.append, then Store.flush to Parquet.
    Returns (CPU s of the agent's side only, rows written, records)."""
    recs = ring_records(name, n)
    ring = MemoryRing(RING)
    src = SockSource(SockSettings(tls=False))
    src.boot_offset = 0
    src.reader = ring.reader()
    table = TABLES[_pairs("http-server" if name == "http-varied" else name)[0]]
    with tempfile.TemporaryDirectory(prefix="andon-bench-") as tmp:
        store = Store(StoreSettings(data_dir=Path(tmp), control_socket=False))
        obs = Observer(ObserveConfig(), StoreSettings(data_dir=Path(tmp)), container_name=lambda cid: None)
        obs.source, obs.store = src, store
        obs.pipeline = Pipeline(store.append, ProcessInfo(names=obs._container_name), obs.protocols)
        tune_gc = getattr(observer_mod, "tune_gc", None)
        if tune_gc is not None:  # what Observer.start() does
            tune_gc()
        pump = getattr(obs, "pump", None)
        if pump is None:  # the loop body of Observer.run before it had pump()
            def pump(timeout: float) -> None:
                for rec in src.read(timeout):
                    obs.pipeline.handle(rec)
                obs.pipeline.flush()

        def replay(recs: list[bytes]) -> float:
            cpu = 0.0
            i = 0
            while i < len(recs):
                while i < len(recs) and ring.put(recs[i]):
                    i += 1
                t0 = time.process_time()
                while src.reader.pending_bytes() > 0:
                    pump(0)
                if store.stats.rows_in - store.stats.rows_written >= FLUSH_ROWS:
                    store.flush()  # what the store's thread does every second
                cpu += time.process_time() - t0
            return cpu

        # warm-up, not timed: the agent under load has run a while (allocator, a full-size flush);
        # its own connections and, for http-varied, its own heads
        per = _pairs("http-server" if name == "http-varied" else name)[3]
        replay(ring_records(name, max(1, WARM_ROWS // (4 if per < 0 else per)), first=10 * n + CONNS))
        store.flush()
        warm_rows = store.stats.per_table.get(table, 0)
        cpu = replay(recs)
        t0 = time.process_time()
        obs.pipeline.close(2**62)
        store.flush()
        cpu += time.process_time() - t0
        rows = store.stats.per_table.get(table, 0) - warm_rows
        if store.stats.rows_dropped_write:
            raise SystemExit(f"{name}: the store dropped {store.stats.rows_dropped_write} rows")
        store._con.close()
    return cpu, rows, len(recs)


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
        old_src = snapshot.source_at(a.baseline, tmp)
        print(f"whole chain (ring bytes -> Store flushed), µs of CPU per row, median of {a.repeat}; "
              f"old = {a.baseline}")
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


def profile(name: str, n: int) -> None:
    cProfile.runctx("run_chain(name, n)", globals(), {"name": name, "n": n}, "/tmp/observe_pipeline.prof")
    pstats.Stats("/tmp/observe_pipeline.prof").sort_stats("tottime").print_stats(25)


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
        dt, rows, nrec = run_chain(a.worker, a.n)
        print(json.dumps({"cpu_s": dt, "rows": rows, "records": nrec}))
        return 0
    if a.baseline:
        return compare(a)
    if a.profile:
        profile(a.profile, a.n)
        return 0
    print(f"whole chain (ring bytes -> Store flushed), µs of CPU per row, median of {a.repeat}")
    print(f"{'replay':<13} {'records':>8} {'rows':>7} {'rec/s':>10} {'us/row':>8} {'spread':>13}")
    for name in a.only or NAMES:
        runs = [run_chain(name, a.n) for _ in range(a.repeat)]
        rows, nrec = runs[0][1], runs[0][2]
        if rows == 0:
            print(f"{name:<13} made no rows", file=sys.stderr)
            continue
        us = sorted(dt / rows * 1e6 for dt, _, _ in runs)
        rate = nrec / statistics.median(dt for dt, _, _ in runs)
        print(f"{name:<13} {nrec:>8} {rows:>7} {rate:>10,.0f} {statistics.median(us):>8.1f} "
              f"{us[0]:>5.1f}-{us[-1]:<6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
