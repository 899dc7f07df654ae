"""Throughput of real servers under load, with a tracer off and on, as a ratio from the same run.

Cases (servers and load generators from tests/servers.py, on 127.0.0.1):

    nginx-1k      wrk -t2 -c16 against nginx /size/1024 (keep-alive, as wrk always is)
    nginx-small   wrk -t1 -c4 against nginx / (17 bytes; the most requests per second)
    nginx-tls     nginx-1k over TLS (self-signed; wrk does not verify), for libssl uprobe tracing
    pg-simple     pgbench -S (select-only) -c4 -j2, simple query protocol, after pgbench -i -s 1
    pg-extended   the same with -M extended (Parse/Bind/Execute for every statement)
    redis-p1      redis-benchmark -t get,set -c16 -P 1 (one command per round trip)
    redis-p16     redis-benchmark -t get,set -c16 -P 16 (16 commands pipelined per write)

Every case runs ``--repeat`` times untraced and traced, interleaved (off, on, off, on, ...) so
drift of the machine's speed hits both alike; the table shows the medians and their ratio.
The tracer is ``--tracer CMD`` (a shell-split command line) started before each traced run and
stopped with SIGINT after it; until ``andon trace`` exists the example is bpftrace counting
every read(2). Its CPU time and peak RSS are read from /proc/<pid>/stat and /status just
before it is stopped (the load's share, not its shutdown). ``--captured-regex`` pulls the
count of requests the tracer says it captured from its output (summed over every match), to
set against the count the load generator sent.

    .venv/bin/python bench/proto_load.py --quick
    .venv/bin/python bench/proto_load.py --tracer "bpftrace -e 'tracepoint:syscalls:sys_exit_read { @[comm] = count(); }'"
"""

from __future__ import annotations

import argparse
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

from tracers import HZ, ForeignWatch  # noqa: E402

RESULTS = BENCH / "results"
EXAMPLE_TRACER = "bpftrace -e 'tracepoint:syscalls:sys_exit_read { @[comm] = count(); }'"


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
    detail: dict = field(default_factory=dict)


def _run(argv: list[str], timeout: float) -> tuple[str, float]:
    """Run a load generator; its stdout and the CPU seconds it used (its own rusage from
    wait4, so nothing else this process runs meanwhile is counted)."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
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
        raise LoadError(f"{' '.join(argv)} exited {proc.returncode}: {stderr.strip()[-1500:]}")
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


_UNIT = {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}


def wrk(url: str, *, threads: int, conns: int, seconds: int) -> Load:
    out, cpu = _run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", url], timeout=seconds + 30)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise LoadError(f"wrk printed no request count:\n{out[-800:]}")
    sent = int(m.group(1))
    elapsed = float(m.group(2)) * (1e-3 if m.group(3) == "ms" else 1)
    errors = 0
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(e.group(1))
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in e.groups())
    lat = {p: v for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    return Load(sent / elapsed, sent, errors, cpu, detail={"latency_p50": lat.get("50"), "latency_p99": lat.get("99")})


def pgbench(srv: S.Server, *, mode: str, clients: int, seconds: int) -> Load:
    out, cpu = _run(["pgbench", "-h", srv.host, "-p", str(srv.port), "-U", "postgres", "-n", "-S", "-M", mode,
                "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "postgres"], timeout=seconds + 60)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if not (tx and tps):
        raise LoadError(f"pgbench printed no transaction count:\n{out[-800:]}")
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    return Load(float(tps.group(1)), int(tx.group(1)), int(failed.group(1)) if failed else 0, cpu,
                detail={"latency_avg_ms": float(lat.group(1)) if lat else None})


def redis_benchmark(srv: S.Server, *, pipeline: int, n: int, clients: int = 16) -> Load:
    out, cpu = _run(["redis-benchmark", "-h", srv.host, "-p", str(srv.port), "-t", "get,set", "-n", str(n),
                "-c", str(clients), "-P", str(pipeline), "-r", "10000", "--csv"], timeout=300)
    rows = [line.replace('"', "").split(",") for line in out.splitlines() if line.startswith('"') and "rps" not in line]
    if not rows:
        raise LoadError(f"redis-benchmark printed no rows:\n{out[-800:]}")
    per = {r[0]: float(r[1]) for r in rows}
    # each test sends n commands; the rate over both is total commands / total time
    total_s = sum(n / rps for rps in per.values())
    return Load(len(per) * n / total_s, len(per) * n, 0, cpu, detail={f"{k.lower()}_rps": v for k, v in per.items()})


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
    """The ``--tracer`` command: started in its own session, ready after ``ready_line`` appears
    in its output or ``ready_s`` seconds, stopped with SIGINT (then SIGKILL after 30 s)."""

    def __init__(self, argv: list[str], ready_s: float, ready_line: str | None) -> None:
        self.argv, self.ready_s, self.ready_line = argv, ready_s, ready_line
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc: subprocess.Popen | None = None
        self.cpu_s = 0.0
        self.hwm_kb = 0
        self.output = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Tracer:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
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
        self.cpu0 = _proc_cpu_s(self.proc.pid)
        return self

    def _text(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.cpu_s = _proc_cpu_s(self.proc.pid) - self.cpu0  # during the load only
            self.hwm_kb = _proc_hwm_kb(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self._kill()
        elif not exc[0]:
            raise LoadError(f"tracer exited with {self.proc.returncode} during the load:\n{self._text()[-1500:]}")
        self.output = self._text()
        self.out.close()


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    server: str                       # key into the servers started once per case family
    load: Callable[[S.Server], Load]
    table: str = ""                   # the Pixie table its requests land in ({table} in --captured-regex)
    rows_per_req: int = 1             # rows a request makes there (pgbench -M extended: Parse, Bind, Describe, Execute)


def measured(case: Case, srv: S.Server) -> Load:
    before = server_cpu_s(srv)
    load = case.load(srv)
    load.server_cpu_s = server_cpu_s(srv) - before
    return load


def cases(seconds: int, redis_n: int) -> list[Case]:
    return [
        Case("nginx-1k", "nginx", lambda s: wrk(s.url("/size/1024"), threads=2, conns=16, seconds=seconds),
             "http_events"),
        Case("nginx-small", "nginx", lambda s: wrk(s.url("/"), threads=1, conns=4, seconds=seconds), "http_events"),
        Case("nginx-tls", "nginx-tls", lambda s: wrk(s.url("/size/1024"), threads=2, conns=16, seconds=seconds),
             "http_events"),
        Case("pg-simple", "postgres", lambda s: pgbench(s, mode="simple", clients=4, seconds=seconds), "pgsql_events"),
        Case("pg-extended", "postgres", lambda s: pgbench(s, mode="extended", clients=4, seconds=seconds),
             "pgsql_events", 4),
        Case("redis-p1", "redis", lambda s: redis_benchmark(s, pipeline=1, n=redis_n), "redis_events"),
        Case("redis-p16", "redis", lambda s: redis_benchmark(s, pipeline=16, n=redis_n * 8), "redis_events"),
    ]


STARTERS = {"nginx": lambda: S.nginx(workers=1), "nginx-tls": lambda: S.nginx(workers=1, tls=True),
            "postgres": lambda: S.postgres(settings={"autovacuum": "off"}),  # no background work in the windows
            "redis": S.redis}


def _prepare(kind: str, srv: S.Server) -> None:
    if kind == "postgres":
        _run(["pgbench", "-h", srv.host, "-p", str(srv.port), "-U", "postgres", "-i", "-s", "1", "-q", "postgres"],
             timeout=120)


def run(args: argparse.Namespace) -> dict:
    tracer_argv = shlex.split(args.tracer) if args.tracer else None
    chosen = [c for c in cases(args.seconds, args.redis_n) if not args.only or any(c.name == o or c.name.startswith(o + "-") for o in args.only)]
    results: dict = {"cases": {}, "tracer": args.tracer, "seconds": args.seconds, "repeat": args.repeat,
                     "started": datetime.now().isoformat(timespec="seconds"), "foreign_tracing": []}
    for kind in dict.fromkeys(c.server for c in chosen):
        with STARTERS[kind]() as srv:
            _prepare(kind, srv)
            for case in (c for c in chosen if c.server == kind):
                # "{table}" in the regex: this case's table (andon's closing line counts rows per table)
                rx = (re.compile(args.captured_regex.replace("{table}", case.table)) if args.captured_regex
                      else None)
                runs: dict[str, list] = {"off": [], "on": []}
                for i in range(args.repeat):
                    for mode in ("off", "on") if tracer_argv else ("off",):
                        # other tracing attached while we measure slows every process (the
                        # baseline too); recorded so a reader can discard the run
                        if mode == "on":
                            with Tracer(tracer_argv, args.ready_s, args.ready_line) as tr:
                                with ForeignWatch({tr.pid}) as watch:
                                    load = measured(case, srv)
                            rec = asdict(load) | {"tracer_cpu_s": tr.cpu_s, "tracer_hwm_kb": tr.hwm_kb}
                            if rx:
                                rec["captured_rows"] = sum(int(m) for m in rx.findall(tr.output))
                                rec["captured"] = rec["captured_rows"] / case.rows_per_req
                        else:
                            with ForeignWatch(set()) as watch:
                                load = measured(case, srv)
                            rec = asdict(load)
                        if fresh := watch.seen:
                            rec["foreign_tracing"] = sorted(fresh)
                            results["foreign_tracing"] += sorted(fresh)
                        runs[mode].append(rec)
                        print(f"  {case.name:12} {mode:3} #{i + 1}: {load.rps:12,.0f} req/s  sent {load.sent:,}"
                              f"  cpu client {load.client_cpu_s:.2f} s server {load.server_cpu_s:.2f} s"
                              f"  errors {load.errors}" + (f"  tracer cpu {rec['tracer_cpu_s']:.2f} s"
                                                            if mode == "on" else ""), flush=True)
                results["cases"][case.name] = runs
    return results


def summarize(results: dict) -> list[dict]:
    rows = []
    for name, runs in results["cases"].items():
        off = statistics.median(r["rps"] for r in runs["off"])
        def cpu_us(r: dict) -> float:  # client + server CPU per request: less hostage to other load than req/s
            return 1e6 * (r["client_cpu_s"] + r["server_cpu_s"]) / r["sent"]
        off_cpu = statistics.median(cpu_us(r) for r in runs["off"])
        row = {"case": name, "off_rps": off, "off_runs": [round(r["rps"]) for r in runs["off"]],
               "off_cpu_us_per_req": off_cpu}
        if runs["on"]:
            on = statistics.median(r["rps"] for r in runs["on"])
            sent = sum(r["sent"] for r in runs["on"])
            cpu = statistics.median(r["tracer_cpu_s"] for r in runs["on"])
            on_cpu = statistics.median(cpu_us(r) for r in runs["on"])
            row |= {"on_rps": on, "on_runs": [round(r["rps"]) for r in runs["on"]], "ratio": on / off,
                    "on_cpu_us_per_req": on_cpu, "cpu_ratio": on_cpu / off_cpu,
                    "tracer_cpu_s": cpu, "tracer_cpu_per_1k_req_ms": 1e6 * cpu / (sent / len(runs["on"])),
                    "tracer_hwm_mb": max(r["tracer_hwm_kb"] for r in runs["on"]) / 1024}
            if all("captured" in r for r in runs["on"]):
                row["captured_of_sent"] = sum(r["captured"] for r in runs["on"]) / sent
        row["runs_with_foreign_tracing"] = sum("foreign_tracing" in r for m in ("off", "on") for r in runs[m])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    traced = any("ratio" in r for r in rows)
    head = "| case | untraced req/s | CPU µs/req |" + (
        " traced req/s | CPU µs/req | req/s traced/untraced | CPU/req traced/untraced | tracer CPU s "
        "| tracer CPU ms per 1k req | tracer peak RSS MB | captured/sent |" if traced else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = f"| {r['case']} | {r['off_rps']:,.0f} | {r['off_cpu_us_per_req']:.1f} |"
        if "ratio" in r:
            cap = f"{r['captured_of_sent']:.3f}" if "captured_of_sent" in r else "-"
            line += (f" {r['on_rps']:,.0f} | {r['on_cpu_us_per_req']:.1f} | {r['ratio']:.3f} | {r['cpu_ratio']:.3f} | "
                     f"{r['tracer_cpu_s']:.2f} | "
                     f"{r['tracer_cpu_per_1k_req_ms']:.2f} | {r['tracer_hwm_mb']:.1f} | {cap} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracer", help=f"command started before each traced run, e.g. {EXAMPLE_TRACER!r}")
    ap.add_argument("--ready-s", type=float, default=2.0, help="seconds to let the tracer attach (default 2)")
    ap.add_argument("--ready-line", help="wait for this text in the tracer's output instead of --ready-s")
    ap.add_argument("--captured-regex", help="regex with one group: a count of captured requests in the tracer's "
                                             "output, summed over matches; {table} is replaced by the case's "
                                             "table (http_events, pgsql_events, redis_events) and the count "
                                             "divided by the rows one request makes there")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk and pgbench run (default 10)")
    ap.add_argument("--redis-n", type=int, default=200_000, help="requests per redis-benchmark test at -P 1 "
                                                                 "(x8 at -P 16)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved off/on pairs per case (default 3)")
    ap.add_argument("--only", nargs="*", help="cases by name or family (nginx, pg, redis, redis-p16, ...)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 repetition, small redis -n: proves the harness")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.repeat, args.redis_n = 3, 1, 50_000
    if os.geteuid() != 0:
        print("proto_load: run as root (servers start as their own users; tracers need BPF)", file=sys.stderr)
        return 2
    results = run(args)
    rows = summarize(results)
    results["summary"] = rows
    results["markdown"] = markdown(rows)
    print()
    print(results["markdown"])
    if results["foreign_tracing"]:
        print(f"\nwarning: other tracing was attached during some runs: {sorted(set(results['foreign_tracing']))[:5]}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"proto_load-{datetime.now().strftime('%Y-%m-%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {out.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
