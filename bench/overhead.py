"""What tracing costs the traced: workload time under each tracer, as a ratio to no tracing.

Three workloads: ``openclose N`` (openat + close of /etc/hostname), ``execloop N`` (fork +
execve /bin/true + wait), both in bench/workloads/, and ``build N`` (``make -B -j2`` of a
generated C project of N files). Each runs under (the build under baseline, sensor-stable
and agent-stable only):

    baseline       no tracing
    andon-raw      andon's sensor, every event streamed into a Python process that
                   counts numpy batches from LiveSource.read_raw
    andon-decode   the same, decoding every record into an Event (LiveSource.read)
    bpftrace       bpftrace counting the same events in a kernel map, nothing streamed
    opensnoop /    libbpf-tools, every event printed (to /dev/null)
    execsnoop
    sensor-stable  andon's sensor with the event types ``andon run`` selects for Falco's
                   stable rules, every record into Python as numpy batches
    agent-stable   ``andon run`` with the stable rules: sensor, state, rules, alerts

Configurations are interleaved (repetition r runs them in an order rotated by r) so slow
drift on the machine spreads over all of them; the ratio is the configuration's median
over the baseline's median from the same run. Every tracer is attached before the
workload starts (tracers.py checks it in the kernel) and stopped after.

    .venv/bin/python bench/overhead.py                 # both workloads, 5 repetitions
    .venv/bin/python bench/overhead.py --only openclose --repeat 9
    .venv/bin/python bench/overhead.py --only build --repeat 5 --build-files 48
    .venv/bin/python bench/overhead.py --only execloop --configs andon-raw,sensor-stable,agent-stable
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import report
import snapshot
import tracers
import workloads
from tracers import AgentTracer, AndonTracer, BpftraceTracer, SnoopTracer, Tracer

# `andon run` with Falco's stable rules: the whole agent, next to the sensor alone
sys.path.insert(0, str(snapshot.ROOT / "tests"))
from corpus import STABLE_RULES  # noqa: E402


def stable_types() -> str:
    """The event types ``andon run`` switches on for the stable rules (``Agent.kernel_types``),
    so the sensor-only configuration ``sensor-stable`` selects exactly what the agent does."""
    sys.path.insert(0, str(snapshot.ROOT / "src"))
    import os

    from andon.app.agent import Agent
    from andon.app.config import AgentConfig

    cfg = AgentConfig(rules_files=(STABLE_RULES,), watch_config_files=False)
    agent = Agent(cfg, None, rules_paths=[STABLE_RULES], status=open(os.devnull, "w"))
    return ",".join(sorted(agent.kernel_types()))


_AGENT_TPS = {"sys_exit", "sched_process_exec"}


def sensor_stable(comm: str) -> Config:
    return Config("sensor-stable", lambda: AndonTracer(stable_types(), "raw", comm, expect=_AGENT_TPS),
                  "andon's sensor with the agent's event selection, every record into Python, no state or rules")


def agent_stable() -> Config:
    return Config("agent-stable", lambda: AgentTracer([STABLE_RULES]),
                  "andon run, Falco's stable rules, state + rules on every event")


@dataclass
class Config:
    name: str
    make: Callable[[], Tracer] | None  # None: no tracing
    note: str = ""
    expected: dict[str, int] | None = None  # andon events this config must deliver; None: the workload's


@dataclass
class Workload:
    name: str
    args: list
    comm: str  # the process name the traced events carry
    expected: dict[str, int]  # andon events the workload must cause, by event type
    configs: list[Config] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return self.args[0]


def openclose(n: int) -> Workload:
    w = Workload("openclose", [n], workloads.comm("openclose"), {"openat": n, "close": n})
    w.configs = [
        Config("baseline", None),
        Config("andon-raw", lambda: AndonTracer("openat,close", "raw", w.comm)),
        Config("andon-decode", lambda: AndonTracer("openat,close", "decode", w.comm)),
        Config("bpftrace", lambda: BpftraceTracer(["tracepoint:syscalls:sys_enter_openat",
                                                   "tracepoint:syscalls:sys_enter_close"]),
               "counts openat+close in a kernel map"),
        Config("opensnoop", lambda: SnoopTracer("/usr/sbin/opensnoop", {"sys_enter_openat", "sys_exit_openat"}),
               "traces openat only (not close)"),
        sensor_stable(w.comm),
        agent_stable(),
    ]
    return w


def execloop(n: int) -> Workload:
    exec_tps = {"sched_process_exec", "sys_exit"}
    w = Workload("execloop", [n, str(workloads.TRUE)], workloads.comm("true"), {"execve": n})
    w.configs = [
        Config("baseline", None),
        Config("andon-raw", lambda: AndonTracer("execve", "raw", w.comm, expect=exec_tps)),
        Config("andon-decode", lambda: AndonTracer("execve", "decode", w.comm, expect=exec_tps)),
        Config("bpftrace", lambda: BpftraceTracer(["tracepoint:sched:sched_process_exec"]),
               "counts sched_process_exec in a kernel map"),
        Config("execsnoop", lambda: SnoopTracer("/usr/sbin/execsnoop", {"sys_enter_execve", "sys_exit_execve"})),
        sensor_stable(w.comm),
        agent_stable(),
    ]
    return w


def build(files: int) -> Workload:
    """``make -B -j2`` of a generated C project (workloads.build_project): make, gcc, cc1,
    as and ld, each exec'd per unit, opening headers by the hundred. No fixed event count:
    the andon rows report what the kernel sent and dropped."""
    w = Workload("build", [files], "cc1", {})
    w.configs = [
        Config("baseline", None),
        sensor_stable(""),
        agent_stable(),
    ]
    return w


def run_once(w: Workload, cfg: Config, bpf_stats: bool = False) -> dict:
    """One workload run under one configuration: timings, what the tracer saw, its CPU,
    and what else happened on the machine meanwhile (other tracing, other CPU use)."""
    tracers.wait_quiet()
    if cfg.make is None:
        time.sleep(0.3)  # same pause as a tracer's settle time, so the baseline starts alike
        with tracers.ForeignWatch(set()) as watch:
            busy0, steal0 = tracers.cpu_busy_s()
            self0 = time.process_time()
            res = workloads.run(w.name, *w.args)
            busy1, steal1 = tracers.cpu_busy_s()
            self1 = time.process_time()
        return {"elapsed_ns": res["elapsed_ns"], "iterations": res["iterations"], "workload_cpu_s": res["cpu_s"],
                "other_cpu_s": (busy1 - busy0) - res["cpu_s"] - (self1 - self0), "steal_s": steal1 - steal0,
                "foreign_tracing": sorted(watch.seen)}
    with cfg.make() as tr:
        with tracers.ForeignWatch({tr.pid}) as watch:
            names = tracers.bpf_prog_names() if bpf_stats else {}
            progs0 = tracers.bpf_prog_stats(tr.pid) if bpf_stats else {}
            busy0, steal0 = tracers.cpu_busy_s()
            self0 = time.process_time()
            u0, s0 = tracers.cpu_split(tr.pid)
            res = workloads.run(w.name, *w.args)
            u1, s1 = tracers.cpu_split(tr.pid)
            cpu0, cpu1 = u0 + s0, u1 + s1
            busy1, steal1 = tracers.cpu_busy_s()
            self1 = time.process_time()
            progs1 = tracers.bpf_prog_stats(tr.pid) if bpf_stats else {}
        attached = tr.attached
    out = {
        "elapsed_ns": res["elapsed_ns"],
        "iterations": res["iterations"],
        "workload_cpu_s": res["cpu_s"],
        "tracer_cpu_s": cpu1 - cpu0,
        "tracer_user_s": u1 - u0,
        "tracer_sys_s": s1 - s0,
        # the whole machine's busy time less ours: other sessions, kernel threads, the watch
        "other_cpu_s": (busy1 - busy0) - res["cpu_s"] - (cpu1 - cpu0) - (self1 - self0),
        "steal_s": steal1 - steal0,
        "foreign_tracing": sorted(watch.seen),
        "attached": attached,
        "tracer": tr.result,
    }
    if bpf_stats:
        out["bpf"] = {pid: {"name": names.get(pid, "?"),
                            **{k: progs1[pid][k] - progs0.get(pid, {}).get(k, 0) for k in ("run_time_ns", "run_cnt")}}
                      for pid in progs1}
    return out


# A run is re-done when other tracing was attached during it or other processes used more
# than this share of one CPU: both slow the workload for reasons that are not the tracer's.
OTHER_CPU_MAX = 0.15
ATTEMPTS = 4


def clean(run: dict) -> bool:
    return not run["foreign_tracing"] and run["other_cpu_s"] <= OTHER_CPU_MAX * run["elapsed_ns"] / 1e9


def measure(w: Workload, repeat: int, log: Callable[[str], None] = print, attempts: int = ATTEMPTS) -> dict[str, list[dict]]:
    """Interleaved repetitions of every configuration; returns config name -> list of runs."""
    workloads.run(w.name, *w.args)  # warm-up, untimed: page cache, CPU frequency, dentry cache
    runs: dict[str, list[dict]] = {c.name: [] for c in w.configs}
    k = len(w.configs)
    for r in range(repeat):
        order = [w.configs[(r + i) % k] for i in range(k)]
        for cfg in order:
            for attempt in range(1, attempts + 1):
                run = run_once(w, cfg)
                run["attempt"] = attempt
                dirty = "" if clean(run) else (
                    f"  [busy machine: other CPU {run['other_cpu_s']:.2f} s"
                    + (f", other tracing {run['foreign_tracing'][:2]}" if run["foreign_tracing"] else "") + "]")
                log(f"  {w.name} rep {r + 1}/{repeat} {cfg.name:<18} {run['elapsed_ns'] / 1e6:9.1f} ms"
                    + andon_line(w, run) + dirty)
                if not dirty:
                    break
                if attempt < attempts:
                    time.sleep(2.0)
            runs[cfg.name].append(run)  # the last attempt, clean or not (flagged in the JSON)
    return runs


def andon_line(w: Workload, run: dict) -> str:
    t = run.get("tracer", {})
    if "kernel" not in t:
        if "lost" in t:  # andon run's closing line
            return f"  agent events {t['events']}  lost {t['lost']}  alerts {t['alerts']}" + (
                "  <-- LOST" if t["lost"] else "")
        return ""
    if t["mode"] not in ("raw", "decode"):
        return f"  kernel events {t['kernel']['events']}  drops {t['kernel']['drops']}"
    got = sum(t["target_by_type"].get(k, 0) for k in w.expected)
    exp = sum(w.expected.values())
    drops = t["kernel"]["drops"]
    return f"  events {got}/{exp}  drops {drops}" + ("  <-- DROPS" if drops else "")


def summarize(w: Workload, runs: dict[str, list[dict]]) -> dict:
    base = report.summary([r["elapsed_ns"] for r in runs["baseline"]])
    base_cpu = report.summary([r["workload_cpu_s"] for r in runs["baseline"]])
    out = {}
    for cfg in w.configs:
        rs = runs[cfg.name]
        s = report.summary([r["elapsed_ns"] for r in rs])
        row: dict = {
            "elapsed_ns": s,
            "ratio": s["median"] / base["median"],
            # the workload's own CPU time (wait4: user + system, children included), where
            # the BPF programs run: less sensitive than elapsed time to other load on the
            # machine, and blind to the tracer's own CPU (the "tracer CPU" column)
            "cpu_ratio": report.summary([r["workload_cpu_s"] for r in rs])["median"] / base_cpu["median"],
            "ns_per_iteration": s["median"] / w.iterations,
            "added_ns_per_iteration": (s["median"] - base["median"]) / w.iterations,
            "note": cfg.note,
            "reruns": sum(r["attempt"] - 1 for r in rs),
            "unclean_runs": sum(not clean(r) for r in rs),
            "other_cpu_pct": report.summary([100 * r["other_cpu_s"] / (r["elapsed_ns"] / 1e9) for r in rs]),
        }
        if cfg.make is not None:
            row["tracer_cpu_pct"] = report.summary([100 * r["tracer_cpu_s"] / (r["elapsed_ns"] / 1e9) for r in rs])
        if cfg.name.startswith(("andon", "sensor")):
            expected = w.expected if cfg.expected is None else cfg.expected
            exp = sum(expected.values())
            # consumers that do not read records (analysis modes) are judged by the kernel's count
            got = [sum(r["tracer"]["target_by_type"].get(k, 0) for k in expected)
                   if r["tracer"]["mode"] in ("raw", "decode") else min(exp, r["tracer"]["kernel"]["events"])
                   for r in rs]
            row["events_expected_per_run"] = exp
            row["events_received"] = report.summary(got)
            row["kernel_drops_total"] = sum(r["tracer"]["kernel"]["drops"] for r in rs)
            row["kernel_events_total"] = sum(r["tracer"]["kernel"]["events"] for r in rs)
            row["kernel_events"] = report.summary([r["tracer"]["kernel"]["events"] for r in rs])
            row["records_read_total"] = sum(r["tracer"]["records_read"] for r in rs)
            row["drain_s"] = report.summary([r["tracer"]["drain_s"] for r in rs])
            # wake-ups the consumer got while the workload ran (waits on an empty ring that
            # ended before their timeout)
            row["wakeups"] = report.summary([r["tracer"]["sleeps"] - r["tracer"]["timeouts"] for r in rs])
        elif cfg.name.startswith("agent"):
            row["agent_events"] = report.summary([r["tracer"]["events"] for r in rs])
            row["agent_lost_total"] = sum(r["tracer"]["lost"] for r in rs)
            row["agent_alerts"] = report.summary([r["tracer"]["alerts"] for r in rs])
        elif cfg.name.startswith("bpftrace"):
            row["counted"] = report.summary([sum(r["tracer"]["counts"].values()) for r in rs])
        elif "snoop" in cfg.name:
            row["lost_total"] = sum(r["tracer"]["lost"] for r in rs)
        out[cfg.name] = row
    return out


COLUMNS = ["config", "median ms", "min ms", "max ms", "ratio", "CPU ratio", "+ns/iter", "tracer CPU",
           "events (recv/expected)", "kernel drops", "re-runs", "note"]


def rows(w: Workload, summ: dict) -> tuple[list[list[str]], list[str | None]]:
    out, styles = [], []
    for name, r in summ.items():
        e = r["elapsed_ns"]
        events, drops, note = "", "", r.get("note", "")
        style = None
        if "events_received" in r:
            exp = r["events_expected_per_run"]
            lo = int(r["events_received"]["min"])
            events = f"{lo}/{exp}" if lo == r["events_received"]["max"] else f"{lo}..{int(r['events_received']['max'])}/{exp}"
            if not exp:  # no fixed count (build): what the kernel sent
                events = f"{int(r['kernel_events']['median'])} sent"
            drops = str(r["kernel_drops_total"])
            if r["kernel_drops_total"] or lo < exp:
                style = "bold red"
                note = (note + "; " if note else "") + "EVENTS LOST"
        elif "counted" in r:
            events = f"{int(r['counted']['median'])} counted"
        elif "agent_events" in r:
            events = f"{int(r['agent_events']['median'])} seen, {int(r['agent_alerts']['median'])} alerts"
            drops = str(r["agent_lost_total"])
            if r["agent_lost_total"]:
                style = "bold red"
                note = (note + "; " if note else "") + "EVENTS LOST"
        elif "lost_total" in r:
            drops = f"{r['lost_total']} lost"
            if r["lost_total"]:
                style = "yellow"
        cpu = f"{r['tracer_cpu_pct']['median']:.0f}%" if "tracer_cpu_pct" in r else ""
        out.append([name, f"{e['median'] / 1e6:.1f}", f"{e['min'] / 1e6:.1f}", f"{e['max'] / 1e6:.1f}",
                    report.fmt_ratio(r["ratio"]), report.fmt_ratio(r["cpu_ratio"]),
                    f"{r['added_ns_per_iteration']:.0f}" if name != "baseline" else "",
                    cpu, events, drops, str(r["reruns"]), note])
        styles.append(style)
    return out, styles


def loud_warnings(w: Workload, summ: dict) -> list[str]:
    msgs = []
    for name, r in summ.items():
        if r["unclean_runs"]:
            msgs.append(f"!!! {w.name}/{name}: {r['unclean_runs']} run(s) overlapped other tracing or other CPU load "
                        f"even after the attempts allowed; see foreign_tracing / other_cpu_s in the JSON.")
        if r.get("agent_lost_total"):
            msgs.append(f"!!! {w.name}/{name}: andon run lost {r['agent_lost_total']} events in the kernel (ring full).")
        if r.get("kernel_drops_total"):
            msgs.append(f"!!! {w.name}/{name}: the kernel dropped {r['kernel_drops_total']} andon events "
                        f"(ring full: the Python consumer fell behind). These numbers are NOT lossless.")
        if "events_received" in r and r["events_received"]["min"] < r["events_expected_per_run"]:
            msgs.append(f"!!! {w.name}/{name}: received {int(r['events_received']['min'])} of "
                        f"{r['events_expected_per_run']} expected events in the worst run.")
    return msgs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--openclose-n", type=int, default=1_000_000)
    ap.add_argument("--execloop-n", type=int, default=2000)
    ap.add_argument("--build-files", type=int, default=48, help="C files in the build workload's project")
    ap.add_argument("--only", choices=("openclose", "execloop", "build"))
    ap.add_argument("--attempts", type=int, default=ATTEMPTS,
                    help=f"runs of one configuration when the machine was busy (default {ATTEMPTS}); "
                         "1 on a machine that is busy all the time: every run is kept and flagged")
    ap.add_argument("--configs", help="only these configurations, comma-separated (baseline is always run)")
    ap.add_argument("--no-build", action="store_true", help="use the workloads and the code snapshot already in build/bench")
    args = ap.parse_args(argv)
    tracers.stop_on_signals()
    notes = tracers.check_prerequisites()
    if not args.no_build:
        workloads.build()
        snapshot.freeze()
    code = snapshot.info()
    data: dict = {"kind": "overhead", "machine": report.machine(), "notes": notes, "code": code, "repeat": args.repeat,
                  "workloads": {}}
    todo = [openclose(args.openclose_n), execloop(args.execloop_n), build(args.build_files)]
    if args.only:
        todo = [w for w in todo if w.name == args.only]
    if args.configs:
        want = {"baseline", *args.configs.split(",")}
        for w in todo:
            w.configs = [c for c in w.configs if c.name in want]
    warnings = []
    for w in todo:
        report.console.print(f"[bold]{w.name} {w.iterations}[/] x {args.repeat}, interleaved")
        runs = measure(w, args.repeat, attempts=max(1, args.attempts))
        summ = summarize(w, runs)
        data["workloads"][w.name] = {"args": w.args, "expected": w.expected, "summary": summ, "runs": runs}
        rs, styles = rows(w, summ)
        title = f"{w.name} {w.iterations}: median of {args.repeat}, ratio = median / baseline median"
        report.console.print(report.table(title, COLUMNS, rs, styles))
        data["workloads"][w.name]["markdown"] = report.markdown_table(COLUMNS, rs)
        warnings += loud_warnings(w, summ)
    for m in warnings:
        report.console.print(f"[bold red]{m}[/]")
    data["warnings"] = warnings
    path = report.write_json("overhead", data)
    report.console.print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
