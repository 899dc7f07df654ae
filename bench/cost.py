"""Where andon's overhead comes from: the open/close loop under variants that remove one cost at a time.

Part 1, timings (interleaved, as overhead.py; ratio to the baseline of this run):

    baseline              no tracing
    andon-filter-only     the sys_exit program attached, but only chroot selected: every
                          syscall runs the program, finds its number disabled, returns.
                          The cost of the hook and the in-kernel filter, with no event.
    andon-ring-only       openat+close emitted into a 1 GiB ring nobody reads: every event
                          is built and committed, the consumer is woken once (it never
                          catches up again, so no further wake-ups). BPF side, no Python.
    andon-skip            a consumer that moves the ring's consumer position over whatever
                          is pending each time RingReader.wait() returns, without reading
                          it: the ring's consumer side with no per-event Python work.
    andon-raw             the product path: numpy batches from read_raw (as overhead.py)
    andon-raw-rawtp       the same with the raw_tp/sys_exit object (BPF_CORE_READ probe
                          reads) instead of tp_btf/sys_exit (plain loads)
    andon-raw-nolinger    the same with the reader reading as soon as anything is pending
                          (RingReader's 2 ms linger for a fuller batch switched off): the
                          consumer keeps catching up, and each commit that finds it caught
                          up queues a wake-up (irq_work) in the traced task's syscall
    andon-raw-wakeup      SensorSettings.wakeup_bytes = 256 KiB: the BPF side asks for a
                          wake-up only when that much is pending
    andon-raw-nowakeup    wakeup_bytes = 4 GiB - 1, more than any ring holds: no submit
                          ever wakes the consumer, which polls every 10 ms (Falco's modern
                          probe submits with BPF_RB_NO_WAKEUP and polls)
    andon-decode          every record decoded to an Event (as overhead.py)
    bpftrace              per-syscall tracepoints sys_enter_openat/close, counting
    bpftrace-sys_exit     the raw_syscalls:sys_exit tracepoint with a filter on the syscall
                          number, counting: andon's hook design without emitting

Part 2, BPF run time per invocation (interleaved runs, with kernel BPF stats switched on
through bpf(BPF_ENABLE_STATS), the fd form of ``sysctl kernel.bpf_stats_enabled=1``):
run_time_ns / run_cnt of every program the tracer holds, and BPF time per loop iteration;
then the same for the exec path (execloop under andon: sched_process_exec and sys_exit).
The stats add two clock reads to every program run, so Part 1 runs without them.

    .venv/bin/python bench/cost.py                  # 1M iterations, 5 repetitions
    .venv/bin/python bench/cost.py --perf           # also a perf profile of the workload under andon-raw
    .venv/bin/python bench/cost.py --variant direct=build/bench/exp-direct \
        --configs andon-ring-only,andon-ring-only@direct,andon-raw,andon-raw@direct
                                                    # a candidate BPF change against the current objects
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import report
import snapshot
import tracers
import workloads
from overhead import Config, Workload, measure, run_once, summarize
from tracers import AndonTracer, BpftraceTracer, SnoopTracer

NR_OPENAT, NR_CLOSE = 257, 3  # x86_64
WAKEUP_BYTES = 256 << 10
# wakeup_bytes is a u32 the BPF side compares with the bytes pending: no ring holds 4 GiB,
# so every submit says BPF_RB_NO_WAKEUP and the consumer finds data by polling
NEVER = 0xFFFFFFFF
RING_ONLY_BYTES = 1 << 30


def workload(n: int, variants: dict[str, Path] | None = None, only: set[str] | None = None) -> Workload:
    """The configurations above; ``variants`` (name -> a directory of BPF objects laid out as
    build/bpf) add ``andon-ring-only@name`` and ``andon-raw@name``; ``only`` keeps just those
    names (and the baseline)."""
    comm = workloads.comm("openclose")
    w = Workload("openclose", [n], comm, {"openat": n, "close": n})
    tc = "openat,close"
    raw_tp = snapshot.RAW_TP_DIR
    w.configs = [
        Config("baseline", None),
        Config("andon-filter-only", lambda: AndonTracer("chroot", "raw", comm), "hook + filter, nothing emitted",
               expected={}),
        Config("andon-ring-only", lambda: AndonTracer(tc, "idle", comm, ring_bytes=RING_ONLY_BYTES),
               "emitted, never read, 1 wake-up"),
        Config("andon-skip", lambda: AndonTracer(tc, "skip", comm), "consumer side, no per-event Python"),
        Config("andon-raw", lambda: AndonTracer(tc, "raw", comm), "the product path: read_raw, numpy batches"),
        Config("andon-raw-rawtp", lambda: AndonTracer(tc, "raw", comm, bpf_dir=raw_tp),
               "same, raw_tp/sys_exit hook (probe reads) instead of tp_btf"),
        Config("andon-raw-nolinger", lambda: AndonTracer(tc, "raw", comm, extra=["--no-linger"]),
               "same, reader reads as soon as anything is pending"),
        Config("andon-raw-wakeup", lambda: AndonTracer(tc, "raw", comm, wakeup_bytes=WAKEUP_BYTES),
               f"same, wakeup_bytes={WAKEUP_BYTES >> 10} KiB"),
        Config("andon-raw-nowakeup", lambda: AndonTracer(tc, "raw", comm, wakeup_bytes=NEVER, poll_ms=10),
               "same, no wake-ups: the consumer polls every 10 ms"),
        Config("andon-decode", lambda: AndonTracer(tc, "decode", comm), "read, Event objects"),
        Config("bpftrace", lambda: BpftraceTracer(["tracepoint:syscalls:sys_enter_openat",
                                                   "tracepoint:syscalls:sys_enter_close"]),
               "per-syscall tracepoints, count"),
        Config("bpftrace-sys_exit", lambda: BpftraceTracer(
            ["tracepoint:raw_syscalls:sys_exit"], name="bpftrace-sys_exit",
            body=f"/args->id == {NR_OPENAT} || args->id == {NR_CLOSE}/ {{ @[args->id] = count(); }}"),
            "one hook on every syscall, filter by nr, count"),
    ]
    for vname, vdir in (variants or {}).items():
        at = [c.name for c in w.configs].index("andon-raw-rawtp")
        w.configs[at:at] = [
            Config(f"andon-ring-only@{vname}", lambda d=vdir: AndonTracer(tc, "idle", comm, ring_bytes=RING_ONLY_BYTES,
                                                                        bpf_dir=d), f"ring-only, objects from {vdir}"),
            Config(f"andon-raw@{vname}", lambda d=vdir: AndonTracer(tc, "raw", comm, bpf_dir=d),
                   f"the product path, objects from {vdir}"),
        ]
    if only:
        w.configs = [c for c in w.configs if c.name == "baseline" or c.name in only]
    return w


def stats_configs(w: Workload, only: set[str] | None = None) -> list[Config]:
    """The configurations whose BPF run time is measured: the timed ones that run BPF, and a few
    more that only this table needs (the raw_tp hook without a consumer, opensnoop)."""
    comm, tc, raw_tp = w.comm, "openat,close", snapshot.RAW_TP_DIR
    by_name = {c.name: c for c in w.configs}
    extra = {
        "andon-filter-only-rawtp": Config("andon-filter-only-rawtp",
                                          lambda: AndonTracer("chroot", "raw", comm, bpf_dir=raw_tp), expected={}),
        "andon-ring-only-rawtp": Config("andon-ring-only-rawtp", lambda: AndonTracer(
            tc, "idle", comm, ring_bytes=RING_ONLY_BYTES, bpf_dir=raw_tp)),
        "opensnoop": Config("opensnoop", lambda: SnoopTracer("/usr/sbin/opensnoop",
                                                             {"sys_enter_openat", "sys_exit_openat"})),
        # an empty program on the same tracepoints: the floor of ns/run (entering a program
        # and the stats' own two clock reads)
        "bpftrace-empty": Config("bpftrace-empty", lambda: BpftraceTracer(
            ["tracepoint:syscalls:sys_enter_openat", "tracepoint:syscalls:sys_enter_close"], name="bpftrace-empty",
            body="{ }")),
    }
    variants = [c.name for c in w.configs if "@" in c.name]
    names = variants + ["andon-filter-only", "andon-filter-only-rawtp", "andon-ring-only", "andon-ring-only-rawtp", "andon-raw",
             "andon-raw-rawtp", "andon-raw-nolinger", "andon-raw-wakeup", "andon-raw-nowakeup", "bpftrace-empty",
             "bpftrace", "bpftrace-sys_exit", "opensnoop"]
    return [by_name.get(n) or extra[n] for n in names if n in by_name or (n in extra and not only)]


def bpf_cost(w: Workload, repeat: int = 3, only: set[str] | None = None, log=print) -> list[dict]:
    """``repeat`` interleaved runs per tracer with BPF stats on: ns per program run and BPF ns
    per loop iteration, medians over the runs."""
    samples: dict[tuple[str, str], list[dict]] = {}
    per_iter: dict[str, list[float]] = {}
    cfgs = stats_configs(w, only)
    with tracers.BpfStats():
        for r in range(repeat):
            for cfg in cfgs[r % len(cfgs):] + cfgs[: r % len(cfgs)]:
                run = run_once(w, cfg, bpf_stats=True)
                total_ns = 0
                for d in run["bpf"].values():
                    if not d["run_cnt"]:
                        continue
                    total_ns += d["run_time_ns"]
                    samples.setdefault((cfg.name, d["name"]), []).append(d)
                    log(f"  {cfg.name:<24} {d['name']:<16} runs {d['run_cnt']:>9}  "
                        f"{d['run_time_ns'] / d['run_cnt']:7.0f} ns/run")
                per_iter.setdefault(cfg.name, []).append(total_ns / w.iterations)
    out = []
    for (name, prog), ds in samples.items():
        ns = report.summary([d["run_time_ns"] / d["run_cnt"] for d in ds])
        out.append({"config": name, "prog": prog, "run_cnt": report.summary([d["run_cnt"] for d in ds]),
                    "ns_per_run": ns, "bpf_ns_per_iteration_all_progs": report.summary(per_iter[name])})
    order = [c.name for c in cfgs]
    out.sort(key=lambda x: (order.index(x["config"]), x["prog"]))
    return out


def exec_cost(n: int, repeat: int, log=print) -> list[dict]:
    """BPF ns per run of the exec path: execloop under andon (execve selected), stats on."""
    from overhead import execloop

    w = execloop(n)
    cfg = next(c for c in w.configs if c.name == "andon-raw")
    samples: dict[str, list[dict]] = {}
    with tracers.BpfStats():
        for _ in range(repeat):
            run = run_once(w, cfg, bpf_stats=True)
            for d in run["bpf"].values():
                if d["run_cnt"]:
                    samples.setdefault(d["name"], []).append(d)
                    log(f"  execloop {n} andon-raw {d['name']:<18} runs {d['run_cnt']:>8}  "
                        f"{d['run_time_ns'] / d['run_cnt']:7.0f} ns/run")
    return [{"config": f"andon-raw (execloop {n})", "prog": prog, "run_cnt": report.summary([d["run_cnt"] for d in ds]),
             "ns_per_run": report.summary([d["run_time_ns"] / d["run_cnt"] for d in ds]),
             "bpf_ns_per_iteration_all_progs": report.summary(
                 [sum(d["run_time_ns"] for d in ds2) / n for ds2 in zip(*samples.values())])}
            for prog, ds in samples.items()]


def perf_profile(w: Workload, seconds_note: str = "") -> str:
    """perf record -a (cpu-clock, 999 Hz) around one andon-raw run; the kernel and user symbols
    of the workload process (comm filter) and of the consumer, top entries."""
    data = Path(workloads.OUT) / "perf-andon-raw.data"
    cfg = next(c for c in w.configs if c.name == "andon-raw")
    with cfg.make() as tr:
        consumer_pid = tr.pid
        rec = subprocess.Popen(["perf", "record", "-q", "-o", str(data), "-a", "-g", "-e", "cpu-clock", "-F", "999"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # perf record -a needs a moment to open its per-CPU events
        try:
            workloads.run(w.name, *w.args)
        finally:
            rec.send_signal(2)
            rec.wait(timeout=60)
    parts = []
    for title, filt in ((f"workload ({w.comm})", ["--comms", w.comm]), ("consumer", ["--pid", str(consumer_pid)])):
        rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio",
                              "-g", "none", "--percentage", "relative", "--percent-limit", "1", *filt], capture_output=True, text=True)
        lines = [ln for ln in rep.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        parts.append(f"--- {title} ---\n" + "\n".join(lines[:30]))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000, help="openclose iterations (2 events each)")
    ap.add_argument("--stats-repeat", type=int, default=3, help="runs per tracer with BPF stats on")
    ap.add_argument("--exec-n", type=int, default=2000, help="execloop iterations for the exec path's BPF cost")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                    help="also measure BPF objects built into DIR (laid out as build/bpf), e.g. a candidate change")
    ap.add_argument("--configs", default="", help="comma-separated configuration names to run (baseline always)")
    ap.add_argument("--perf", action="store_true", help="also profile one andon-raw run with perf record -a")
    ap.add_argument("--no-build", action="store_true", help="use the workloads and the code snapshot already in build/bench")
    args = ap.parse_args(argv)
    tracers.stop_on_signals()
    notes = tracers.check_prerequisites()
    if not args.no_build:
        workloads.build()
        snapshot.freeze()
    code = snapshot.info()
    variants = {}
    for v in args.variant:
        name, _, d = v.partition("=")
        if not (Path(d) / "syscalls").is_dir():
            ap.error(f"--variant {v}: {d} has no syscalls/ objects")
        variants[name] = Path(d).resolve()
    only = set(filter(None, args.configs.split(","))) or None
    w = workload(args.n, variants, only)
    data: dict = {"kind": "cost", "machine": report.machine(), "notes": notes, "code": code, "repeat": args.repeat, "n": args.n,
                  "variants": {k: str(v) for k, v in variants.items()}}

    report.console.print(f"[bold]where the cost is: openclose {args.n} x {args.repeat}, interleaved[/]")
    runs = measure(w, args.repeat)
    summ = summarize(w, runs)
    cols = ["config", "median ms", "min ms", "max ms", "ratio", "+ns/iter", "tracer CPU", "wake-ups", "events/wake-up",
            "kernel drops", "re-runs", "what it isolates"]
    rows = []
    for name, r in summ.items():
        e = r["elapsed_ns"]
        wake = per_wake = ""
        if "wakeups" in r and name.startswith(("andon-raw", "andon-decode")):
            med = r["wakeups"]["median"]
            wake = f"{med:.0f}"
            per_wake = f"{2 * args.n / med:.1f}" if med else ""
        rows.append([name, f"{e['median'] / 1e6:.1f}", f"{e['min'] / 1e6:.1f}", f"{e['max'] / 1e6:.1f}",
                     report.fmt_ratio(r["ratio"]), f"{r['added_ns_per_iteration']:.0f}" if name != "baseline" else "",
                     f"{r['tracer_cpu_pct']['median']:.0f}%" if "tracer_cpu_pct" in r else "", wake, per_wake,
                     str(r.get("kernel_drops_total", "")), str(r["reruns"]), r.get("note", "")])
    report.console.print(report.table(f"openclose {args.n}: median of {args.repeat}", cols, rows))
    data["summary"] = summ
    data["runs"] = runs
    data["markdown"] = report.markdown_table(cols, rows)

    report.console.print(f"[bold]BPF run time per program invocation (BPF stats on, {args.stats_repeat} interleaved "
                         f"runs per tracer)[/]")
    costs = bpf_cost(w, args.stats_repeat, only)
    if not only:
        costs += exec_cost(args.exec_n, args.stats_repeat)
    cols2 = ["config", "program", "runs per run", "ns/run (median)", "min", "max", "BPF ns per iteration (all progs)"]
    rows2 = [[c["config"], c["prog"], f"{c['run_cnt']['median']:.0f}", f"{c['ns_per_run']['median']:.0f}",
              f"{c['ns_per_run']['min']:.0f}", f"{c['ns_per_run']['max']:.0f}",
              f"{c['bpf_ns_per_iteration_all_progs']['median']:.0f}"] for c in costs]
    report.console.print(report.table(f"run_time_ns / run_cnt from /proc/<pid>/fdinfo, median of {args.stats_repeat}",
                                      cols2, rows2))
    data["bpf_stats"] = costs
    data["bpf_markdown"] = report.markdown_table(cols2, rows2)

    if args.perf:
        prof = perf_profile(workload(args.n))
        report.console.print(prof)
        data["perf"] = prof
    path = report.write_json("cost", data)
    report.console.print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
