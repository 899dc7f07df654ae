"""The highest sustained open/close rate at which ``andon run`` with Falco's stable rules
loses no event.

For each rate (open+close pairs per second, two events each), ascending: start ``andon
run`` (stable rules, alerts as JSON to a pipe), wait until it is attached, run
``openclose_rate RATE SECONDS`` (paced openat + close of /etc/hostname, bench/workloads/),
stop the agent and read its closing line: events seen, lost (the kernel's ring-full drops),
alerts. The agent's CPU over the paced run is in % of one core. A rate counts as sustained
when the generator reached it (within 2%) and the agent lost nothing; the search stops
after the first rate that lost events (``--keep-going`` to try them all).

    .venv/bin/python bench/sustained.py                                  # default rates, 12 s each
    .venv/bin/python bench/sustained.py --rates 100000,150000 --seconds 15 --repeat 2
"""

from __future__ import annotations

import argparse
import sys

import report
import snapshot
import tracers
import workloads
from tracers import AgentTracer

sys.path.insert(0, str(snapshot.ROOT / "tests"))
from corpus import STABLE_RULES  # noqa: E402

COLUMNS = ["pairs/s asked", "events/s asked", "pairs/s reached", "seconds", "agent events", "lost", "alerts",
           "agent CPU", "other CPU", "verdict"]


def run_rate(rate: int, seconds: float) -> dict:
    tracers.wait_quiet()
    with AgentTracer([STABLE_RULES]) as tr:
        with tracers.ForeignWatch({tr.pid}) as watch:
            busy0, _ = tracers.cpu_busy_s()
            u0, s0 = tracers.cpu_split(tr.pid)
            res = workloads.run("openclose_rate", rate, seconds, timeout=seconds + 60)
            u1, s1 = tracers.cpu_split(tr.pid)
            busy1, _ = tracers.cpu_busy_s()
    agent_cpu = (u1 - u0) + (s1 - s0)
    el = res["elapsed_ns"] / 1e9
    return {
        "rate": rate,
        "seconds": el,
        "reached": res["rate"],
        "iterations": res["iterations"],
        "agent": tr.result,
        "agent_cpu_pct": 100 * agent_cpu / el,
        "other_cpu_pct": 100 * ((busy1 - busy0) - res["cpu_s"] - agent_cpu) / el,
        "foreign_tracing": sorted(watch.seen),
    }


def verdict(r: dict) -> str:
    if r["agent"]["lost"]:
        return "LOST"
    if r["reached"] < 0.98 * r["rate"]:
        return "rate not reached"
    return "0 lost"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50000,100000,125000,150000,175000,200000,250000",
                    help="open+close pairs per second, comma-separated (ascending)")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per rate; a rate is sustained only if all are")
    ap.add_argument("--keep-going", action="store_true", help="try every rate even after one lost events")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 300:
        ap.error("--seconds must be in [1, 300]")
    tracers.stop_on_signals()
    notes = tracers.check_prerequisites()
    if not args.no_build:
        workloads.build()
        snapshot.freeze()
    data: dict = {"kind": "sustained", "machine": report.machine(), "notes": notes, "code": snapshot.info(),
                  "seconds": args.seconds, "runs": []}
    rows, styles = [], []
    best = 0
    for rate in sorted(int(x) for x in args.rates.split(",")):
        ok = True
        for i in range(args.repeat):
            r = run_rate(rate, args.seconds)
            data["runs"].append(r)
            v = verdict(r)
            ok &= v == "0 lost"
            a = r["agent"]
            print(f"  {rate:>9,} pairs/s  reached {r['reached']:>9,.0f}  {a['events']:>10,} events  lost {a['lost']:>9,}"
                  f"  agent CPU {r['agent_cpu_pct']:4.0f}%  {v}", flush=True)
            rows.append([f"{rate:,}", f"{2 * rate:,}", f"{r['reached']:,.0f}", f"{r['seconds']:.1f}",
                         f"{a['events']:,}", f"{a['lost']:,}", str(a["alerts"]), f"{r['agent_cpu_pct']:.0f}%",
                         f"{r['other_cpu_pct']:.0f}%", v])
            styles.append(None if v == "0 lost" else "bold red")
        if ok:
            best = rate
        elif not args.keep_going:
            break
    data["sustained_pairs_per_s"] = best
    title = f"andon run (stable rules) under a paced open/close, {args.seconds:.0f} s per rate"
    report.console.print(report.table(title, COLUMNS, rows, styles))
    report.console.print(f"highest sustained rate with 0 lost: {best:,} open+close/s = {2 * best:,} events/s")
    data["markdown"] = report.markdown_table(COLUMNS, rows)
    out = report.write_json("sustained", data)
    report.console.print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
