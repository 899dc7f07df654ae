"""Real servers under load, untraced and traced, as ratios from the same run.

Two modes (``--mode flat|paced|both``):

    flat    each generator flat out: throughput at saturation, traced / untraced
    paced   each generator at fixed offered rates (``--rates``): the rate reached, client
            latency p50/p99, and whether every request was captured at that rate

Cases (servers from tests/servers.py on 127.0.0.1; flat generator / paced generator):

    nginx-1k      wrk -t2 -c16 on /size/1024     / the same with workloads/paced.lua (wrk's delay() hook)
    nginx-small   wrk -t1 -c4 on / (17 bytes)    / paced.lua
    nginx-tls     nginx-1k over TLS              / paced.lua
    nginx-sendfile  nginx-1k with `sendfile on` (Debian's nginx.conf): the file's bytes go by
                  sendfile(2), so the sensor sends their size, not a copy  / paced.lua
    aiohttp       an aiohttp server (asyncio, one Python thread), wrk -t2 -c16 on /size/1024 / paced.lua
    aiohttp-tls   the same over TLS: asyncio's SSLs are on memory BIOs, the socket read
                  outside the library call names each call's connection  / paced.lua
    node-tls      a node HTTPS server (one thread; NodeSource's node exports its static OpenSSL,
                  probed in the executable), wrk -t2 -c16 on /size/1024  / paced.lua
    go-tls        a Go HTTPS server (tests/go/tlsdemo: net/http over Go's own crypto/tls,
                  probed in the executable), wrk -t2 -c16 on /size/1024  / paced.lua
    nginx-h2c     nginx with HTTP/2 in the clear, h2load -t2 -c16 -m1 on /size/1024 (one stream
                  at a time a connection)  / h2load --rps (per connection)
    pg-simple     pgbench -S -c4 -j2 -M simple   / pgbench -S -c8 -j2 -R RATE (built-in throttling)
    pg-extended   the same with -M extended      / the same with -M extended
    pg-unix       pg-extended over the server's unix socket (a client on the database's host)
    pg-tpcb       pgbench -c4 -j2, its default TPC-B-like script (a transaction of 7 statements
                  that updates three tables and inserts a row)  / pgbench -c8 -j2 -R RATE
    redis-p1      redis-benchmark -c16 -P 1      / workloads/redis_paced.c, 16 connections, 1 command a request
    redis-p16     redis-benchmark -c16 -P 16     / redis_paced.c, 16 commands a request

Configurations (``--configs``), run interleaved in an order rotated every repetition:

    off      nothing traced
    sensor   the agent's socket data sensor alone, its ring drained unread
             (``bench/tracers.py sock-drain``): the kernel's share of the cost
    sensor-track   the same, connections followed and protocols inferred, no data shipped
    sensor-floor   the same hook with no process traced: what any syscall-exit hook costs
    sensor-exported  the sensor with OpenSSL's exported SSL_read/SSL_write(_ex) probed, not the
             function each pair shares (as before stop 28; as on a libssl where none is found)
    sensor-nogo  the sensor without the probes on Go's crypto/tls (the Go server's TLS then
             goes uncaptured: what those probes cost)
    sensor-socktp  an experiment: the same sensor body on the socket tracepoints (data) and
             per-syscall tracepoints (lifecycle), no sys_exit hook
             (``bench/workloads/sockdata_socktp.bpf.c``)
    agent    ``andon run --no-rules --data-dir DIR``: the whole protocol-tracing agent
    agent-server   the same with ``observe.trace_roles`` set to the server end of every
             protocol: the load generator's end is not copied, nor parsed
    agent-server-ring32   the same with a 32 MiB sensor ring (``observe.ring_buffer_mb``; 8 by default)
    on       ``--tracer CMD``: any command (bpftrace...), with ``--ready-line`` and
             ``--captured-regex`` as before

``--agent-cpu N`` gives the tracer CPU N to itself and pins the servers and load generators to
the other CPUs, in every configuration ("off" too): a node where the agent has a core of its
own, as Pixie's per-node agent has on a large node. The BPF programs still run in the traced
processes' syscalls, on their CPUs, so the traced/untraced ratio is then the kernel side's
cost, and the captured count says whether one core of the agent keeps up.

For ``agent`` the captured count is read from the tables it wrote (rows of the case's table
for this server's port, the request the case sends, server side and client side
separately) and the loss from its closing line. The andon code and BPF objects are frozen
at the start (bench/snapshot.py), so every run measures the same code.

    .venv/bin/python bench/proto_load.py --quick
    .venv/bin/python bench/proto_load.py --only nginx-1k pg-extended redis-p1 redis-p16
    .venv/bin/python bench/proto_load.py --mode flat --agent-cpu 1 --configs off,sensor,agent-server
    .venv/bin/python bench/proto_load.py --mode paced --rates 500,1000,2000,5000,10000 --only redis-p1
    .venv/bin/python bench/proto_load.py --tracer "bpftrace -e 'tracepoint:syscalls:sys_exit_read { @[comm] = count(); }'"
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
import servers as S  # noqa: E402

import snapshot  # noqa: E402
from tracers import HZ, ForeignWatch, RssSampler, build_socktp, cpu_busy_s  # noqa: E402

RESULTS = BENCH / "results"
WORKLOADS = BENCH / "workloads"
BUILD = BENCH.parent / "build" / "bench"
EXAMPLE_TRACER = "bpftrace -e 'tracepoint:syscalls:sys_exit_read { @[comm] = count(); }'"
DEFAULT_RATES = "500,1000,2000,5000,10000"


class LoadError(RuntimeError):
    """A load generator or the tracer failed; the run stops rather than report a wrong figure."""


# -- what a load run measured -----------------------------------------------------------------------
@dataclass
class Load:
    rps: float          # requests (HTTP requests, pgbench transactions, redis commands) per second
    sent: int           # how many the generator completed
    errors: int = 0     # non-2xx/3xx, socket errors, failed transactions
    client_cpu_s: float = 0.0   # the load generator's CPU time
    server_cpu_s: float = 0.0   # the server's (all its processes) during the load
    p50_us: float | None = None  # client-side latency of a request (from its send, not from when it fell due)
    p99_us: float | None = None
    detail: dict = field(default_factory=dict)


def _run(argv: list[str], timeout: float, cwd: str | None = None) -> tuple[str, float]:
    """Run a load generator; its stdout and the CPU seconds it used (its own rusage from
    wait4, so nothing else this process runs meanwhile is counted)."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, cwd=cwd)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode == -signal.SIGKILL:
        raise LoadError(f"{argv[0]} did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        raise LoadError(f"{' '.join(argv)} exited {proc.returncode}: {stderr.strip()[-1500:]}{stdout[-500:]}")
    return stdout, ru.ru_utime + ru.ru_stime


def server_cpu_s(srv: S.Server) -> float:
    """CPU seconds of the server so far: its main process, the children it has reaped
    (postgres backends of closed connections) and the children alive now (nginx workers,
    open backends), from /proc/<pid>/stat."""
    def fields(pid: int) -> list[str]:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return []
    f = fields(srv.pid)
    total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime (proc(5) fields 14-17)
    for c in srv.worker_pids():
        total += sum(int(x) for x in fields(c)[11:13])
    return total / HZ


_TIME_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _us(text: str | None) -> float | None:
    """wrk's ``123.45us`` / ``1.20ms`` / ``2.00s`` -> microseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text or "")
    return float(m.group(1)) * _TIME_UNIT[m.group(2)] if m else None


def _percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * q / 100))]


def wrk(url: str, *, threads: int, conns: int, seconds: int, rate: float | None = None) -> Load:
    """wrk flat out, or paced at ``rate`` requests/s by workloads/paced.lua."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if rate:
        argv += ["-s", str(WORKLOADS / "paced.lua"), url, "--", str(rate), str(threads)]
    else:
        argv.append(url)
    out, cpu = _run(argv, timeout=seconds + 30)
    # wrk prints the elapsed time as 999.99ms, 8.00s or 1.50m
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if not m:
        raise LoadError(f"wrk printed no request count:\n{out[-800:]}")
    sent = int(m.group(1))
    elapsed = float(m.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[m.group(3)]
    errors = 0
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(e.group(1))
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in e.groups())
    if p := re.search(r"paced: requests=\d+ p50_us=(\d+) p99_us=(\d+)", out):
        p50, p99 = float(p.group(1)), float(p.group(2))
    else:
        lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
        p50, p99 = _us(lat.get("50")), _us(lat.get("99"))
    return Load(sent / elapsed, sent, errors, cpu, p50_us=p50, p99_us=p99)


def h2load(url: str, *, threads: int, conns: int, seconds: int, rate: float | None = None) -> Load:
    """h2load (nghttp2) flat out, or paced at ``rate`` requests/s (``--rps``, per connection),
    one stream at a time on each connection (``-m1``, as wrk's one request at a time). h2load
    prints latency's mean, not its percentiles: p50/p99 are left empty."""
    argv = ["h2load", f"-t{threads}", f"-c{conns}", "-m1", "-D", str(seconds)]
    if rate:
        argv.append(f"--rps={max(1, round(rate / conns))}")
    argv.append(url)
    out, cpu = _run(argv, timeout=seconds + 30)
    m = re.search(r"finished in ([\d.]+)(ms|s)\b", out)
    r = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                  r"(\d+) timeout", out)
    if not m or not r:
        raise LoadError(f"h2load printed no request count:\n{out[-800:]}")
    elapsed = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1)
    sent = int(r.group(1))
    errors = sum(int(x) for x in r.groups()[1:])
    if c := re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out):
        errors += int(c.group(1)) + int(c.group(2))
    return Load(sent / elapsed, sent, errors, cpu)


def pgbench(srv: S.Server, *, mode: str, clients: int, seconds: int, rate: float | None = None,
            script: str = "select-only", unix: bool = False) -> Load:
    """pgbench's built-in ``script`` (``select-only`` is -S; ``tpcb-like`` its default) flat
    out, or throttled to ``rate`` transactions/s (-R). Latency from its
    per-transaction log: the elapsed time less the schedule lag (with -R pgbench counts a
    transaction from when it fell due; here, as for wrk, from when it started). ``unix``: over
    the server's unix socket, as a client on the database's own host connects by default."""
    with tempfile.TemporaryDirectory(prefix="andon-pgbench-") as logdir:
        host = str(srv.info["socket_dir"]) if unix else srv.host  # a directory: libpq's unix socket there
        argv = ["pgbench", "-h", host, "-p", str(srv.port), "-U", "postgres", "-n", "-b", script, "-M", mode,
                "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "--log",
                f"--log-prefix={logdir}/tx"]
        if rate:
            argv += ["-R", str(rate)]
        out, cpu = _run(argv + ["postgres"], timeout=seconds + 60, cwd=logdir)
        lat: list[float] = []
        for path in glob.glob(f"{logdir}/tx*"):
            with open(path) as f:
                for line in f:
                    # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
                    parts = line.split()
                    if len(parts) >= 6 and parts[2].isdigit():
                        lag = float(parts[6]) if rate and len(parts) >= 7 else 0.0
                        lat.append(float(parts[2]) - lag)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if not (tx and tps):
        raise LoadError(f"pgbench printed no transaction count:\n{out[-800:]}")
    lat.sort()
    lag = re.search(r"rate limit schedule lag: avg ([\d.]+)", out)
    return Load(float(tps.group(1)), int(tx.group(1)), int(failed.group(1)) if failed else 0, cpu,
                p50_us=_percentile(lat, 50), p99_us=_percentile(lat, 99),
                detail={"schedule_lag_avg_ms": float(lag.group(1)) if lag else None})


def redis_benchmark(srv: S.Server, *, pipeline: int, n: int, clients: int = 16) -> Load:
    out, cpu = _run(["redis-benchmark", "-h", srv.host, "-p", str(srv.port), "-t", "get,set", "-n", str(n),
                     "-c", str(clients), "-P", str(pipeline), "-r", "10000", "--csv"], timeout=300)
    lines = [line.replace('"', "").split(",") for line in out.splitlines() if line.startswith('"')]
    head = next((r for r in lines if r[0] == "test"), None)
    rows = [r for r in lines if r[0] != "test"]
    if not rows:
        raise LoadError(f"redis-benchmark printed no rows:\n{out[-800:]}")
    per = {r[0]: float(r[1]) for r in rows}
    # each test sends n commands; the rate over both is total commands / total time
    total_s = sum(n / rps for rps in per.values())
    p50 = p99 = None
    if head and "p50_latency_ms" in head and "p99_latency_ms" in head:  # the mean of the GET and SET tests
        i50, i99 = head.index("p50_latency_ms"), head.index("p99_latency_ms")
        p50 = 1e3 * statistics.mean(float(r[i50]) for r in rows)
        p99 = 1e3 * statistics.mean(float(r[i99]) for r in rows)
    return Load(len(per) * n / total_s, len(per) * n, 0, cpu, p50_us=p50, p99_us=p99,
                detail={f"{k.lower()}_rps": v for k, v in per.items()})


def redis_paced_exe() -> Path:
    """workloads/redis_paced.c built -O2 -static into build/bench (each run: it takes a second)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    exe = BUILD / "ab-redis_paced"
    cmd = ["gcc", "-O2", "-static", "-Wall", "-Werror", "-o", str(exe), str(WORKLOADS / "redis_paced.c")]
    rc = subprocess.run(cmd, capture_output=True, text=True)
    if rc.returncode != 0:
        raise LoadError(f"{' '.join(cmd)} failed:\n{rc.stderr}")
    return exe


def redis_paced(srv: S.Server, *, rate: float, seconds: int, pipeline: int, conns: int = 16) -> Load:
    out, cpu = _run([str(redis_paced_exe()), srv.host, str(srv.port), str(rate), str(seconds), str(conns),
                     str(pipeline)], timeout=seconds + 30)
    m = dict(re.findall(r"(\w+)=([\d.]+)", out))
    if "completed" not in m:
        raise LoadError(f"redis_paced printed no counts:\n{out[-800:]}")
    return Load(float(m["rate"]), int(m["completed"]), int(m["errors"]), cpu, p50_us=float(m["p50_us"]),
                p99_us=float(m["p99_us"]), detail={"late": int(m["late"])})


# -- the tracer -------------------------------------------------------------------------------------
def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime and the children's cutime, cstime (proc(5) fields 14-17): a tracer that
    # is a wrapper script counts its waited-for children too
    return sum(int(x) for x in fields[11:15]) / HZ


def _proc_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Tracer:
    """A tracing command: started in its own session, ready after ``ready_line`` appears in
    its output or ``ready_s`` seconds, stopped with SIGINT (then SIGKILL after 60 s).
    ``mark()`` before and after the load brackets the CPU time counted; its memory is
    sampled every 0.2 s from start to stop (peak VmRSS, RssAnon) and VmHWM read at the end."""

    def __init__(self, argv: list[str], ready_s: float, ready_line: str | None,
                 env: dict[str, str] | None = None, cpu: int | None = None) -> None:
        # taskset execs the command: the process watched and signalled is the tracer itself
        argv = ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv
        self.argv, self.ready_s, self.ready_line, self.env = argv, ready_s, ready_line, env
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc: subprocess.Popen | None = None
        self.cpu_s = 0.0
        self.hwm_kb = 0
        self.output = ""
        self._marks: list[float] = []
        self.rss: RssSampler | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Tracer:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, env=self.env)
        deadline = time.monotonic() + max(self.ready_s, 60.0 if self.ready_line else self.ready_s)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise LoadError(f"tracer exited with {self.proc.returncode} before the load:\n{self._text()[-1500:]}")
            if self.ready_line:
                if self.ready_line in self._text():
                    break
            elif time.monotonic() - t0 >= self.ready_s:
                break
            if time.monotonic() > deadline:
                self._kill()
                raise LoadError(f"tracer never printed {self.ready_line!r}:\n{self._text()[-1500:]}")
            time.sleep(0.05)
        self.rss = RssSampler(self.proc.pid).__enter__()
        return self

    def mark(self) -> None:
        assert self.proc is not None
        self._marks.append(_proc_cpu_s(self.proc.pid))
        if len(self._marks) == 2:
            self.cpu_s = self._marks[1] - self._marks[0]  # during the load only

    def _text(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.rss is not None:
            self.rss.__exit__()
        if self.proc.poll() is None:
            self.hwm_kb = _proc_hwm_kb(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self._kill()
        elif not exc[0]:
            raise LoadError(f"tracer exited with {self.proc.returncode} during the load:\n{self._text()[-1500:]}")
        self.output = self._text()
        self.out.close()


# -- what the agent captured ------------------------------------------------------------------------
_OBSERVE_LINE = re.compile(r"andon: observe: (.*); (\d+) connections; (\d+) records lost, (\d+) bytes in gaps, "
                           r"(\d+) unparsable spots, (\d+) unanswered requests(?:, (\d+) bytes left unread at stop)?")


def agent_closing(output: str) -> dict:
    """The agent's closing line: records lost in the ring, bytes in gaps, unparsable spots,
    unanswered requests, ring bytes left unread at stop (LoadError when it is missing: the
    agent did not stop cleanly)."""
    m = _OBSERVE_LINE.search(output)
    if not m:
        raise LoadError(f"andon run gave no closing observe line:\n{output[-1500:]}")
    return {"lost": int(m.group(3)), "gap_bytes": int(m.group(4)), "unparsable": int(m.group(5)),
            "unanswered": int(m.group(6)), "unread_bytes": int(m.group(7) or 0), "rows_line": m.group(1)}


def captured_rows(data_dir: Path, table: str, match: str, port: int, path: str = "") -> dict[str, int]:
    """Rows of ``table`` the agent stored for this server's port whose columns satisfy
    ``match`` (the request the case sends), by side: ``server`` (trace_role 2, local port)
    and ``client`` (trace_role 1, remote port); ``no_addr``: matching rows with neither
    port known (a connection whose open record was lost), not counted as either. ``path``:
    the server's unix socket instead (both address columns of its rows name it)."""
    import duckdb

    files = sorted(glob.glob(str(data_dir / table / "*.parquet")))
    out = {"server": 0, "client": 0, "no_addr": 0}
    if not files:
        return out
    con = duckdb.connect()
    ours_l, ours_r = (f"local_addr = '{path}'", f"remote_addr = '{path}'") if path else (
        f"local_port = {port}", f"remote_port = {port}")
    try:
        q = (f"SELECT CASE WHEN trace_role = 2 AND {ours_l} THEN 'server' "
             f"WHEN trace_role = 1 AND {ours_r} THEN 'client' "
             f"WHEN local_addr = '' AND remote_addr = '' THEN 'no_addr' END AS side, count(*) "
             f"FROM read_parquet(?) WHERE {match} GROUP BY side")
        for side, n in con.execute(q, [files]).fetchall():
            if side:
                out[side] = n
    finally:
        con.close()
    return out


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    server: str                       # key into the servers started once per case family
    load: Callable[[S.Server], Load]  # flat out
    paced: Callable[[S.Server, float], Load] | None = None  # at an offered rate
    table: str = ""                   # the Pixie table its requests land in ({table} in --captured-regex)
    rows_per_req: int = 1             # rows a request makes there (pgbench -M extended: Parse, Bind, Describe, Execute)
    match: str = "true"               # SQL over that table: the rows of the requests the case sends
    rows_per_match: int = 1           # rows matching ``match`` per request sent (per redis command: 1)
    reset: Callable[[S.Server], None] | None = None  # before every run, untraced: a case that writes starts afresh
    unix: Callable[[S.Server], str] | None = None  # the client connects to this unix socket, not the port


def measured(case: Case, srv: S.Server, rate: float | None) -> tuple[Load, float, float]:
    """The load, with the server's CPU, the machine's busy CPU seconds (/proc/stat) and the
    wall time over it."""
    before = server_cpu_s(srv)
    busy0, t0 = cpu_busy_s()[0], time.monotonic()
    load = case.paced(srv, rate) if rate else case.load(srv)  # type: ignore[misc]
    busy, wall = cpu_busy_s()[0] - busy0, time.monotonic() - t0
    load.server_cpu_s = server_cpu_s(srv) - before
    return load, busy, wall


PG_MATCH = "req_cmd IN ('Query', 'Execute') AND req LIKE '%pgbench_accounts%'"


def cases(seconds: int, redis_n: int) -> list[Case]:
    def http(path: str, threads: int, conns: int, name: str, server: str) -> Case:
        return Case(name, server, lambda s: wrk(s.url(path), threads=threads, conns=conns, seconds=seconds),
                    lambda s, r: wrk(s.url(path), threads=threads, conns=conns, seconds=seconds, rate=r),
                    "http_events", match=f"req_path = '{path}'")

    def h2(path: str, threads: int, conns: int, name: str, server: str) -> Case:
        return Case(name, server, lambda s: h2load(s.url(path), threads=threads, conns=conns, seconds=seconds),
                    lambda s, r: h2load(s.url(path), threads=threads, conns=conns, seconds=seconds, rate=r),
                    "http_events", match=f"req_path = '{path}' AND major_version = 2")

    def pg(mode: str, rows: int, script: str = "select-only", name: str = "", match: str = PG_MATCH,
           unix: bool = False) -> Case:
        return Case(name or f"pg-{mode}", "postgres",
                    lambda s: pgbench(s, mode=mode, clients=4, seconds=seconds, script=script, unix=unix),
                    lambda s, r: pgbench(s, mode=mode, clients=8, seconds=seconds, rate=r, script=script, unix=unix),
                    "pgsql_events", rows, match=match,
                    unix=(lambda s: f"{s.info['socket_dir']}/.s.PGSQL.{s.port}") if unix else None,
                    # its updates leave dead rows (autovacuum is off): each run would find the tables
                    # bigger than the last, so each starts from freshly built ones
                    reset=None if script == "select-only" else lambda s: _prepare("postgres", s))

    def redis(p: int, n: int) -> Case:
        return Case(f"redis-p{p}", "redis", lambda s: redis_benchmark(s, pipeline=p, n=n),
                    lambda s, r: redis_paced(s, rate=r, seconds=seconds, pipeline=p),
                    "redis_events", match="req_cmd IN ('GET', 'SET')")

    return [
        http("/size/1024", 2, 16, "nginx-1k", "nginx"),
        http("/", 1, 4, "nginx-small", "nginx"),
        http("/size/1024", 2, 16, "nginx-tls", "nginx-tls"),
        http("/size/1024", 2, 16, "nginx-sendfile", "nginx-sendfile"),
        http("/size/1024", 2, 16, "aiohttp", "aiohttp"),
        http("/size/1024", 2, 16, "aiohttp-tls", "aiohttp-tls"),
        http("/size/1024", 2, 16, "node-tls", "node-tls"),
        http("/size/1024", 2, 16, "go-tls", "go-tls"),
        h2("/size/1024", 2, 16, "nginx-h2c", "nginx-h2c"),
        pg("simple", 1),
        pg("extended", 4),
        pg("extended", 4, name="pg-unix", unix=True),
        # BEGIN, 3 UPDATEs, a SELECT, an INSERT, END: 7 Query rows; one INSERT a transaction
        pg("simple", 7, "tpcb-like", "pg-tpcb", "req_cmd = 'Query' AND req LIKE 'INSERT INTO pgbench_history%'"),
        redis(1, redis_n),
        redis(16, redis_n * 8),
    ]


STARTERS = {"nginx": lambda: S.nginx(workers=1), "nginx-tls": lambda: S.nginx(workers=1, tls=True),
            "nginx-sendfile": lambda: S.nginx(workers=1, sendfile=True),
            "nginx-h2c": lambda: S.nginx(workers=1, http2=True),
            "aiohttp": S.aiohttp_http, "aiohttp-tls": lambda: S.aiohttp_http(tls=True),
            "node-tls": lambda: S.node_http(tls=True), "go-tls": S.go_https,
            "postgres": lambda: S.postgres(settings={"autovacuum": "off"}),  # no background work in the windows
            "redis": S.redis}


def _prepare(kind: str, srv: S.Server) -> None:
    if kind == "postgres":
        _run(["pgbench", "-h", srv.host, "-p", str(srv.port), "-U", "postgres", "-i", "-s", "1", "-q", "postgres"],
             timeout=120)


# sensor configurations: bench/tracers.py sock-drain --variant
SENSORS = {"sensor": "full", "sensor-track": "track", "sensor-floor": "floor", "sensor-socktp": "full",
           "sensor-exported": "exported", "sensor-nogo": "nogo"}
# agent configurations: (the andon config file it runs with, "" for none; whether it traces
# the client end, so that a complete run must capture every request there too)
AGENTS = {"agent": ("", True),
          "agent-server": ("observe:\n  trace_roles: {http: server, http2: server, pgsql: server, mysql: server, redis: server, "
                           "dns: server}\n", False),
          "agent-server-ring32": ("observe:\n  ring_buffer_mb: 32\n  trace_roles: {http: server, http2: server, pgsql: server, "
                                  "mysql: server, redis: server, dns: server}\n", False)}
CONFIGS = ("off", *SENSORS, *AGENTS, "on")


def tracer_for(config: str, args: argparse.Namespace, data_dir: Path) -> Tracer:
    if config in AGENTS:
        argv = [sys.executable, "-m", "andon", "run", "--no-rules", "--data-dir", str(data_dir)]
        if AGENTS[config][0]:
            cfg = data_dir.parent / "andon.yaml"
            cfg.write_text(AGENTS[config][0])
            argv += ["-c", str(cfg)]
        return Tracer(argv, 2.0, "no rules", env=snapshot.env(), cpu=args.agent_cpu)
    if config in SENSORS:
        if config == "sensor-socktp":
            out = snapshot.SNAP / "bpf-socktp"
            if not out.exists():
                build_socktp(snapshot.SNAP / "bpf", out)
            return Tracer([sys.executable, str(BENCH / "tracers.py"), "sock-drain", "--hooks", "socktp"], 2.0,
                          '"ready"', env=snapshot.env(out), cpu=args.agent_cpu)
        return Tracer([sys.executable, str(BENCH / "tracers.py"), "sock-drain", "--variant", SENSORS[config]], 2.0,
                      '"ready"', env=snapshot.env(), cpu=args.agent_cpu)
    if config == "on":
        return Tracer(shlex.split(args.tracer), args.ready_s, args.ready_line, cpu=args.agent_cpu)
    raise LoadError(f"unknown configuration {config!r} ({', '.join(CONFIGS)}; on with --tracer)")


def one_run(case: Case, srv: S.Server, config: str, rate: float | None, args: argparse.Namespace) -> dict:
    """One load run under one configuration; everything it measured."""
    if config == "off":
        with ForeignWatch(set()) as watch:
            load, busy, wall = measured(case, srv, rate)
        rec = asdict(load)
    else:
        with tempfile.TemporaryDirectory(prefix="andon-load-") as d:
            data_dir = Path(d) / "data"
            with tracer_for(config, args, data_dir) as tr:
                with ForeignWatch({tr.pid}) as watch:
                    tr.mark()
                    load, busy, wall = measured(case, srv, rate)
                    tr.mark()
            assert tr.rss is not None
            rec = asdict(load) | {"tracer_cpu_s": tr.cpu_s, "tracer_cpu_pct": 100 * tr.cpu_s / wall,
                                  "tracer_hwm_kb": tr.hwm_kb, "tracer_peak_rss_kb": tr.rss.peak["VmRSS"],
                                  "tracer_peak_anon_kb": tr.rss.peak["RssAnon"]}
            if config in AGENTS:
                rec |= agent_closing(tr.output)
                rows = captured_rows(data_dir, case.table, case.match, srv.port,
                                     case.unix(srv) if case.unix else "")
                rec |= {f"rows_{k}": v for k, v in rows.items()}
                rec["captured_server"] = rows["server"] / case.rows_per_match
                rec["captured_client"] = rows["client"] / case.rows_per_match
                rec["client_traced"] = AGENTS[config][1]
            elif config in SENSORS:
                res = [json.loads(line)["result"] for line in tr.output.splitlines() if line.startswith('{"result"')]
                if not res:
                    raise LoadError(f"sock-drain gave no result:\n{tr.output[-1500:]}")
                rec |= {"lost": res[0]["drops"], "records": res[0]["records"]}
            elif args.captured_regex:
                rx = re.compile(args.captured_regex.replace("{table}", case.table))
                rec["captured_rows"] = sum(int(m) for m in rx.findall(tr.output))
                rec["captured"] = rec["captured_rows"] / case.rows_per_req
    rec |= {"config": config, "rate": rate, "node_busy_s": busy, "wall_s": wall, "loadavg": os.getloadavg()[0]}
    if fresh := watch.seen:
        rec["foreign_tracing"] = sorted(fresh)
    return rec


def _line(case: Case, rec: dict, i: int) -> str:
    rate = f"@{rec['rate']:,.0f}/s" if rec["rate"] else "flat"
    s = (f"  {case.name:12} {rate:10} {rec['config']:6} #{i + 1}: {rec['rps']:10,.0f} req/s  sent {rec['sent']:,}"
         f"  p50/p99 {_fmt_us(rec['p50_us'])}/{_fmt_us(rec['p99_us'])}  node busy {rec['node_busy_s']:.1f} s"
         f"  errors {rec['errors']}")
    if "tracer_cpu_pct" in rec:
        s += f"  tracer {rec['tracer_cpu_pct']:.0f}% cpu {rec['tracer_peak_rss_kb'] / 1024:.0f} MB"
    if "captured_server" in rec:
        s += (f"  captured srv {rec['captured_server'] / max(rec['sent'], 1):.3f}"
              f" cli {rec['captured_client'] / max(rec['sent'], 1):.3f}")
    if "lost" in rec:
        s += f"  lost {rec['lost']:,}"
    return s


def _fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f}ms" if v >= 1000 else f"{v:.0f}us"


def run(args: argparse.Namespace) -> dict:
    configs = args.configs
    chosen = [c for c in cases(args.seconds, args.redis_n)
              if not args.only or any(c.name == o or c.name.startswith(o + "-") for o in args.only)]
    modes = ["flat", "paced"] if args.mode == "both" else [args.mode]
    results: dict = {"runs": [], "configs": configs, "tracer": args.tracer, "seconds": args.seconds,
                     "repeat": args.repeat, "rates": args.rates, "modes": modes,
                     "started": datetime.now().isoformat(timespec="seconds"), "loadavg_start": os.getloadavg(),
                     "ncpu": os.cpu_count(), "foreign_tracing": [], "agent_cpu": args.agent_cpu}
    if args.agent_cpu is not None:
        # servers and generators are started from here: they inherit the other CPUs
        app = os.sched_getaffinity(0) - {args.agent_cpu}
        os.sched_setaffinity(0, app)
        results["app_cpus"] = sorted(app)
        print(f"tracer on CPU {args.agent_cpu}; servers, generators and this harness on CPUs {sorted(app)}")
    if any(c in AGENTS or c in SENSORS for c in configs):
        results["snapshot"] = snapshot.freeze()
    if "paced" in modes and any(c.server == "redis" for c in chosen):
        redis_paced_exe()
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    k = 0
    for kind in dict.fromkeys(c.server for c in chosen):
        with STARTERS[kind]() as srv:
            _prepare(kind, srv)
            for case in (c for c in chosen if c.server == kind):
                points = ([None] if "flat" in modes else []) + (list(args.rates) if "paced" in modes else [])
                for rate in points:
                    for i in range(args.repeat):
                        # rotated every repetition: a slow minute on the host lands on every configuration
                        order = configs[k % len(configs):] + configs[: k % len(configs)]
                        k += 1
                        for config in order:
                            if case.reset:
                                case.reset(srv)
                            rec = one_run(case, srv, config, rate, args)
                            rec["case"] = case.name
                            rec["repeat"] = i
                            results["runs"].append(rec)
                            results["foreign_tracing"] += rec.get("foreign_tracing", [])
                            print(_line(case, rec, i), flush=True)
    return results


def _med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


REACHED = 0.97  # a paced run "holds" its rate when it reached this share of the offered rate


def complete(r: dict) -> bool:
    """Every request of the run captured on both sides (the server's only, for an agent that
    does not trace the client end), nothing lost in the ring, and (paced)
    the offered rate reached: a rate the traced server could not sustain is not reported."""
    client = not r.get("client_traced", True) or r.get("captured_client", 0) >= r["sent"]
    return (r.get("lost", 1) == 0 and r.get("captured_server", 0) >= r["sent"]
            and client and (not r["rate"] or r["rps"] >= REACHED * r["rate"]))


def summarize(results: dict) -> list[dict]:
    rows = []
    runs = results["runs"]
    keys = list(dict.fromkeys((r["case"], r["rate"]) for r in runs))
    for case, rate in keys:
        here = [r for r in runs if r["case"] == case and r["rate"] == rate]
        off = [r for r in here if r["config"] == "off"]
        for config in [c for c in results["configs"] if c != "off"] or ["off"]:
            on = [r for r in here if r["config"] == config] if config != "off" else []
            row: dict = {"case": case, "rate": rate, "config": config}

            def cpu_us(r: dict) -> float:  # client + server CPU per request: less hostage to other load
                return 1e6 * (r["client_cpu_s"] + r["server_cpu_s"]) / max(r["sent"], 1)

            def busy(r: dict) -> float:  # the machine's busy CPUs over the run
                return r["node_busy_s"] / r["wall_s"]
            if off:
                row |= {"off_rps": _med([r["rps"] for r in off]), "off_runs": [round(r["rps"]) for r in off],
                        "off_p50_us": _med([r["p50_us"] for r in off]), "off_p99_us": _med([r["p99_us"] for r in off]),
                        "off_cpu_us_per_req": _med([cpu_us(r) for r in off]), "off_node_busy": _med([busy(r) for r in off])}
            if on:
                sent = sum(r["sent"] for r in on)
                row |= {"on_rps": _med([r["rps"] for r in on]), "on_runs": [round(r["rps"]) for r in on],
                        "on_p50_us": _med([r["p50_us"] for r in on]), "on_p99_us": _med([r["p99_us"] for r in on]),
                        "on_cpu_us_per_req": _med([cpu_us(r) for r in on]), "on_node_busy": _med([busy(r) for r in on]),
                        "tracer_cpu_pct": _med([r["tracer_cpu_pct"] for r in on]),
                        "tracer_cpu_pct_runs": [round(r["tracer_cpu_pct"]) for r in on],
                        "tracer_peak_rss_mb": max(r["tracer_peak_rss_kb"] for r in on) / 1024,
                        "tracer_peak_anon_mb": max(r["tracer_peak_anon_kb"] for r in on) / 1024}
                if off:
                    row["ratio"] = row["on_rps"] / row["off_rps"]
                    row["cpu_ratio"] = row["on_cpu_us_per_req"] / row["off_cpu_us_per_req"]
                    row["node_cpu_overhead"] = row["on_node_busy"] / row["off_node_busy"] - 1
                if all("lost" in r for r in on):
                    row["lost"] = sum(r["lost"] for r in on)
                if all("captured_server" in r for r in on):
                    row["captured_server"] = sum(r["captured_server"] for r in on) / sent
                    row["captured_client"] = sum(r["captured_client"] for r in on) / sent
                    row["complete"] = all(complete(r) for r in on)
                elif all("captured" in r for r in on):
                    row["captured_server"] = sum(r["captured"] for r in on) / sent
            row["runs_with_foreign_tracing"] = sum("foreign_tracing" in r for r in off + on)
            rows.append(row)
    return rows


def best_rates(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per case and configuration: the highest offered rate at which every run captured every
    request on both sides with nothing lost (None: not even the lowest)."""
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        if r["rate"] is None or "complete" not in r:
            continue
        cur = out.setdefault(r["case"], {}).setdefault(r["config"], None)
        if r["complete"] and (cur is None or r["rate"] > cur):
            out[r["case"]][r["config"]] = r["rate"]
    return out


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
    out = []
    flat = [r for r in rows if r["rate"] is None]
    paced = [r for r in rows if r["rate"] is not None]
    if flat:
        out += ["Flat out (each generator as fast as it goes): throughput at saturation", "",
                "| case | config | untraced req/s | traced req/s | traced/untraced | CPU/req traced/untraced "
                "| tracer CPU % of a core | tracer peak RSS MB (anon) | captured server | captured client "
                "| ring records lost |", "|" + "---|" * 11]
        for r in flat:
            out.append(f"| {r['case']} | {r['config']} | {_f(r.get('off_rps'), ',.0f')} | {_f(r.get('on_rps'), ',.0f')} "
                       f"| {_f(r.get('ratio'), '.3f')} | {_f(r.get('cpu_ratio'), '.3f')} "
                       f"| {_f(r.get('tracer_cpu_pct'), '.0f')} "
                       f"| {_f(r.get('tracer_peak_rss_mb'), '.0f')} ({_f(r.get('tracer_peak_anon_mb'), '.0f')}) "
                       f"| {_f(r.get('captured_server'), '.3f')} | {_f(r.get('captured_client'), '.3f')} "
                       f"| {_f(r.get('lost'), ',')} |")
        out.append("")
    if paced:
        out += ["Paced (fixed offered rate): rate reached, client latency, capture", "",
                "| case | offered/s | config | reached/s untraced | reached/s traced | p50 untraced | p50 traced "
                "| p99 untraced | p99 traced | node CPU overhead | tracer CPU % of a core | tracer peak RSS MB (anon) "
                "| captured server | captured client | ring records lost |", "|" + "---|" * 15]
        for r in paced:
            out.append(f"| {r['case']} | {r['rate']:,.0f} | {r['config']} | {_f(r.get('off_rps'), ',.0f')} "
                       f"| {_f(r.get('on_rps'), ',.0f')} | {_fmt_us(r.get('off_p50_us'))} | {_fmt_us(r.get('on_p50_us'))} "
                       f"| {_fmt_us(r.get('off_p99_us'))} | {_fmt_us(r.get('on_p99_us'))} "
                       f"| {_f(100 * r['node_cpu_overhead'] if 'node_cpu_overhead' in r else None, '+.0f')}% "
                       f"| {_f(r.get('tracer_cpu_pct'), '.0f')} "
                       f"| {_f(r.get('tracer_peak_rss_mb'), '.0f')} ({_f(r.get('tracer_peak_anon_mb'), '.0f')}) "
                       f"| {_f(r.get('captured_server'), '.4f')} | {_f(r.get('captured_client'), '.4f')} "
                       f"| {_f(r.get('lost'), ',')} |")
        best = best_rates(rows)
        if best:
            out += ["", f"Highest offered rate reached (>= {REACHED:.0%}) with every request captured on both sides and 0 lost, in every run:", ""]
            for case, per in best.items():
                out.append(f"* {case}: " + ", ".join(f"{c} {_f(v, ',.0f') if v else 'none'}" for c, v in per.items()))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["flat", "paced", "both"], default="both")
    ap.add_argument("--rates", default=DEFAULT_RATES,
                    help=f"offered rates of the paced mode, requests (redis: commands) per second (default {DEFAULT_RATES})")
    ap.add_argument("--configs", help="comma-separated, from off, sensor, sensor-track, sensor-floor, "
                                      "sensor-socktp, agent, agent-server, on (default off,sensor,agent; "
                                      "off,on with --tracer)")
    ap.add_argument("--tracer", help=f"the 'on' configuration: a command started before each traced run, "
                                     f"e.g. {EXAMPLE_TRACER!r}")
    ap.add_argument("--ready-s", type=float, default=2.0, help="seconds to let --tracer attach (default 2)")
    ap.add_argument("--ready-line", help="wait for this text in --tracer's output instead of --ready-s")
    ap.add_argument("--captured-regex", help="regex with one group: a count of captured requests in --tracer's "
                                             "output, summed over matches; {table} is replaced by the case's "
                                             "table (http_events, pgsql_events, redis_events) and the count "
                                             "divided by the rows one request makes there")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each run (redis flat: --redis-n) (default 10)")
    ap.add_argument("--redis-n", type=int, default=200_000, help="requests per redis-benchmark test at -P 1 "
                                                                 "(x8 at -P 16)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of every configuration (default 3)")
    ap.add_argument("--only", nargs="*", help="cases by name or family (nginx, pg, redis, redis-p16, ...)")
    ap.add_argument("--agent-cpu", type=int, metavar="N", help="the tracer alone on CPU N, servers and generators "
                                                                "on the others, in every configuration")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 repetition, small redis -n, rates 1000,5000: "
                                                         "proves the harness")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.repeat, args.redis_n = 3, 1, 50_000
        if args.rates == DEFAULT_RATES:
            args.rates = "1000,5000"
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
        if any(r <= 0 for r in args.rates):
            raise ValueError
    except ValueError:
        ap.error(f"--rates: positive numbers separated by commas, not {args.rates!r}")
    default = "off,on" if args.tracer else "off,sensor,agent"
    args.configs = [c.strip() for c in (args.configs or default).split(",") if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad or ("on" in args.configs and not args.tracer):
        ap.error(f"--configs: from {', '.join(CONFIGS)} (on needs --tracer); not {','.join(bad) or 'on'}")
    if args.agent_cpu is not None:
        mine = os.sched_getaffinity(0)
        if args.agent_cpu not in mine or len(mine) < 2:
            ap.error(f"--agent-cpu: one of the CPUs this process may use ({sorted(mine)}), with one left for the "
                     f"servers; not {args.agent_cpu}")
    if os.geteuid() != 0:
        print("proto_load: run as root (servers start as their own users; tracers need BPF)", file=sys.stderr)
        return 2
    results = run(args)
    rows = summarize(results)
    results["summary"] = rows
    results["best_rates"] = best_rates(rows)
    results["markdown"] = markdown(rows)
    results["loadavg_end"] = os.getloadavg()
    print()
    print(results["markdown"])
    print(f"\nload average: start {' '.join(f'{x:.2f}' for x in results['loadavg_start'])}, "
          f"end {' '.join(f'{x:.2f}' for x in results['loadavg_end'])}")
    if results["foreign_tracing"]:
        print(f"\nwarning: other tracing was attached during some runs: {sorted(set(results['foreign_tracing']))[:5]}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"proto_load-{datetime.now().strftime('%Y-%m-%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {out.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
