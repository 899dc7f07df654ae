"""What the socket data hook adds to one syscall, per kind, against no hook in the same run.

The socket data sensor's program runs at the exit of every syscall of every process, so its
cost reaches every workload on the host, traced or not. ``workloads/syscall_kinds.c`` times
six kinds of call (a syscall the hook ignores, a failed read, a write to a file that is
not a socket, and a captured HTTP request over loopback TCP, written by write(2), by sendmsg(2)
as 2 iovecs and as 32, and read by read(2)), pinned to one CPU, with:

    none          no hook
    current       the sensor built from this tree (build/bpf), ring drained unread
                  (``bench/tracers.py sock-drain``)
    REV           with ``--baseline REV``: the same with net/sockdata.bpf.c (and its
                  headers) of that commit, built into build/bench/bpf-REV
    socktp        with ``--socktp``: the experiment in workloads/sockdata_socktp.bpf.c, the
                  same sensor body on the socket tracepoints (data) and per-syscall
                  tracepoints (connect, accept, close, exec, close_range), no sys_exit hook
    socktp-data   with ``--socktp``: its two socket tracepoints alone, no syscall
                  tracepoint at all (what a lifecycle off syscalls would leave)

Configurations alternate over ``--repeat`` rounds; the median per kind is printed with the
nanoseconds each configuration adds to ``none`` and the ratio.

With ``--bpf-stats`` each kind is also run on its own with the kernel's BPF run-time
statistics on, and the sensor program's own time per call is printed (``run_time_ns`` over
the calls; every process's syscalls in that window count, the workload's are nearly all of
them). Wall-clock deltas of ~100 ns are within this VM's round-to-round noise; the program's
own time is not, so it is the measure to compare two builds by. Statistics add two clock
reads to every run, the same for every build.

    sudo .venv/bin/python bench/sock_hook.py
    sudo .venv/bin/python bench/sock_hook.py --baseline HEAD~1 --repeat 5
    sudo .venv/bin/python bench/sock_hook.py --baseline HEAD --repeat 5 --bpf-stats
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = ROOT / "build" / "bench"
KINDS = ("getppid", "read_eagain", "write_null", "http_pair", "http_iov2", "http_iov32")


class HookBenchError(RuntimeError):
    """The benchmark could not set up a configuration; it stops rather than mismeasure."""


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    if r.returncode != 0:
        raise HookBenchError(f"{' '.join(argv[:6])}: exit {r.returncode}\n{r.stderr[-1500:]}")
    return r


def workload_exe() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    exe = BUILD / "syscall_kinds"
    run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(BENCH / "workloads" / "syscall_kinds.c")])
    return exe


def socktp_bpf_dir() -> Path:
    """build/bpf with net/sockdata.bpf.o replaced by the socket-tracepoint experiment."""
    from tracers import BenchError, build_socktp

    try:
        return build_socktp(ROOT / "build" / "bpf", BUILD / "bpf-socktp")
    except BenchError as e:
        raise HookBenchError(str(e)) from e


def baseline_bpf_dir(rev: str) -> Path:
    """build/bpf with net/sockdata.bpf.o rebuilt from ``rev``'s bpf/ sources."""
    sha = run(["git", "-C", str(ROOT), "rev-parse", "--short", rev]).stdout.strip()
    out = BUILD / f"bpf-{sha}"
    src = ROOT / "build" / "bpf"
    if not (src / "net" / "sockdata.bpf.o").exists():
        raise HookBenchError("build/bpf/net/sockdata.bpf.o is missing: run `make bpf` first")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "bpf"], capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="andon-hook-") as d:
        with tarfile.open(fileobj=BytesIO(tar)) as t:
            t.extractall(d, filter="data")
        # the project's own build rule (Makefile), run on that commit's sources
        run(["make", "-s", "-f", str(ROOT / "Makefile"), "-C", d, "BUILD=build", "build/bpf/net/sockdata.bpf.o"])
        shutil.copy(Path(d) / "build" / "bpf" / "net" / "sockdata.bpf.o", out / "net" / "sockdata.bpf.o")
    return out


class Drain:
    """bench/tracers.py sock-drain with BPF objects from ``bpf_dir``, attached until exit."""

    def __init__(self, bpf_dir: Path, hooks: str = "sys_exit") -> None:
        self.bpf_dir = bpf_dir
        self.hooks = hooks
        self.proc: subprocess.Popen | None = None
        self.result: dict = {}

    def __enter__(self) -> Drain:
        env = os.environ | {"ANDON_BPF_DIR": str(self.bpf_dir), "PYTHONPATH": str(ROOT / "src")}
        argv = [sys.executable, str(BENCH / "tracers.py"), "sock-drain", "--hooks", self.hooks]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith('{"ready"'):
            self.proc.kill()
            raise HookBenchError(f"sock-drain did not attach: {line}{self.proc.stderr.read()[-1500:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        for line in out.splitlines():
            if line.startswith('{"result"'):
                self.result = json.loads(line)["result"]


def measure(exe: Path, n: int, cpu: int, only: str | None = None) -> dict[str, float]:
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
    return json.loads(run([*pin, str(exe), str(n), *([only] if only else [])]).stdout)


def program_ns(exe: Path, n: int, cpu: int, drain: Drain) -> dict[str, float]:
    """Per kind, run on its own: nanoseconds of the drain's BPF programs per call of the kind."""
    from tracers import BpfStats, bpf_prog_stats

    assert drain.proc is not None
    out = {}
    with BpfStats():
        for k in KINDS:
            before = bpf_prog_stats(drain.proc.pid)
            measure(exe, n, cpu, k)
            after = bpf_prog_stats(drain.proc.pid)
            spent = sum(v["run_time_ns"] - before.get(p, {}).get("run_time_ns", 0) for p, v in after.items())
            calls = n // 4 if k == "http_pair" else n
            out[k] = spent / calls
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="calls of each kind per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", metavar="REV", help="also the sensor built from this commit's sources")
    ap.add_argument("--cpu", type=int, default=1, help="the CPU the workload runs on (-1: anywhere)")
    ap.add_argument("--bpf-stats", action="store_true", help="also the sensor program's own ns per call, per kind")
    ap.add_argument("--socktp", action="store_true",
                    help="also the experiment on socket and per-syscall tracepoints (workloads/sockdata_socktp.bpf.c)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("sock_hook: needs root (BPF)", file=sys.stderr)
        return 2
    n = max(1000, min(args.n, 10_000_000))
    exe = workload_exe()
    configs: dict[str, Path | None] = {"none": None, "current": ROOT / "build" / "bpf"}
    if args.baseline:
        configs[args.baseline] = baseline_bpf_dir(args.baseline)
    if args.socktp:
        configs["socktp"] = configs["socktp-data"] = socktp_bpf_dir()
    got: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    prog: dict[str, list[dict[str, float]]] = {c: [] for c in configs if configs[c] is not None}
    records: dict[str, int] = {}
    for rnd in range(max(1, args.repeat)):
        names = list(configs)
        names = names[rnd % len(names):] + names[: rnd % len(names)]
        for name in names:
            bpf = configs[name]
            if bpf is None:
                got[name].append(measure(exe, n, args.cpu))
                continue
            with Drain(bpf, name if name.startswith("socktp") else "sys_exit") as d:
                time.sleep(0.5)
                got[name].append(measure(exe, n, args.cpu))
                if args.bpf_stats:
                    prog[name].append(program_ns(exe, n, args.cpu, d))
            records[name] = records.get(name, 0) + int(d.result.get("records", 0))
            print(f"  round {rnd + 1} {name}: {got[name][-1]}" + (f" program ns {prog[name][-1]}" if args.bpf_stats
                                                                  else ""), file=sys.stderr)
    med = {c: {k: statistics.median(r[k] for r in rs) for k in KINDS} for c, rs in got.items()}
    print(f"{'kind':<14}" + "".join(f"{c:>14}" for c in configs) + "".join(
        f"{'+ns ' + c:>16}{'ratio':>8}" for c in configs if c != "none"))
    for k in KINDS:
        base = med["none"][k]
        print(f"{k:<14}" + "".join(f"{med[c][k]:>14.1f}" for c in configs) + "".join(
            f"{med[c][k] - base:>16.1f}{med[c][k] / base:>8.2f}" for c in configs if c != "none"))
    print("ns per call (http_pair: per write+read), median of", max(1, args.repeat), "rounds; records the sensor "
          "shipped:", ", ".join(f"{c} {v:,}" for c, v in records.items()))
    if args.bpf_stats:
        pmed = {c: {k: statistics.median(r[k] for r in rs) for k in KINDS} for c, rs in prog.items()}
        names = list(prog)
        print()
        print(f"{'kind':<14}" + "".join(f"{'prog ns ' + c:>20}" for c in names) + "".join(
            f"{c + '/' + names[0]:>16}" for c in names[1:]))
        for k in KINDS:
            print(f"{k:<14}" + "".join(f"{pmed[c][k]:>20.1f}" for c in names) + "".join(
                f"{pmed[c][k] / pmed[names[0]][k]:>16.3f}" for c in names[1:]))
        print("the sensor program's own time per call (BPF run-time statistics), median of", max(1, args.repeat),
              "rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
