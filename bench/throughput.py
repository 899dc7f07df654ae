"""Sustained event rate into Python: how many events a second andon delivers, at what CPU and memory.

``syscall_rate RATE SECONDS`` issues close(-1) at a paced rate (bench/workloads/); andon
traces close and a consumer process (bench/consumer.py) counts every record. For each
case we report the rate the generator reached (the VM may not reach the target: the
generator's own rate is what it managed *with* tracing on), events delivered into Python
and their rate, the kernel's drop counter, the consumer's CPU over the run (utime+stime
from /proc/<pid>/stat), and its memory: VmRSS with the sensor loaded and no load, the
highest VmRSS sampled during the run, and VmHWM; then the part of VmRSS that is the ring
buffer's mapping (kernel memory mapped twice, see tracers.mem_kb) and RssAnon, the
consumer's own heap, idle and at its peak under load.

    .venv/bin/python bench/throughput.py                   # raw at 1M/s, 500k/s, flat out; decode at 100k/s,
                                                           # 250k/s; 10 s each
    .venv/bin/python bench/throughput.py --seconds 30 --rates 1000000
"""

from __future__ import annotations

import argparse
import sys
import time

import report
import snapshot
import tracers
import workloads
from tracers import AndonTracer, RssSampler


FLAT_OUT = 1_000_000_000  # a target no machine reaches: the generator runs flat out


def generator_capacity(seconds: float = 3.0) -> dict[str, float]:
    """The generator flat out with no tracing: the ceiling of this machine."""
    return workloads.run("syscall_rate", FLAT_OUT, seconds)


def one_case(mode: str, rate: int, seconds: float, idle_s: float = 2.0, log=print) -> dict:
    comm = workloads.comm("syscall_rate")
    with AndonTracer("close", mode, comm) as tr:
        pid = tr.pid
        c0 = tracers.cpu_seconds(pid)
        time.sleep(idle_s)  # sensor loaded, nothing of ours running
        idle_cpu = tracers.cpu_seconds(pid) - c0
        idle_mem = tracers.mem_kb(pid)
        cpu0 = tracers.cpu_seconds(pid)
        with RssSampler(pid) as rss:
            gen = workloads.run("syscall_rate", rate, seconds, timeout=seconds + 120)
        cpu1 = tracers.cpu_seconds(pid)
        load_mem = tracers.mem_kb(pid)
    res = tr.result
    elapsed_s = gen["elapsed_ns"] / 1e9
    delivered = res["target_by_type"].get("close", 0)
    span = res["target_last_t"] - res["target_first_t"]
    out = {
        "mode": mode,
        "target_rate": rate,
        "seconds": seconds,
        "issued": int(gen["issued"]),
        "generator_rate": gen["rate"],
        "delivered": delivered,
        "delivered_rate": delivered / span if span > 0 else 0.0,
        "delivered_fraction": delivered / gen["issued"] if gen["issued"] else 0.0,
        "kernel": res["kernel"],
        "records_read": res["records_read"],
        "consumer_cpu_pct": 100 * (cpu1 - cpu0) / elapsed_s,
        "consumer_idle_cpu_pct": 100 * idle_cpu / idle_s,
        "rss_idle_kb": idle_mem.get("VmRSS", 0),
        "rss_load_peak_kb": max(rss.peak_kb, load_mem.get("VmRSS", 0)),
        "hwm_kb": res.get("VmHWM", load_mem.get("VmHWM", 0)),
        "ring_map_kb": idle_mem.get("ring_map", 0),
        "anon_idle_kb": idle_mem.get("RssAnon", 0),
        "anon_load_peak_kb": max(rss.peak["RssAnon"], load_mem.get("RssAnon", 0)),
        "drain_s": res["drain_s"],
        "wakeups": res["sleeps"] - res["timeouts"],
        "batches": res.get("batches", 0),
    }
    log(f"  {mode} {rate:>9}/s: generator {gen['rate']:>9.0f}/s, delivered {delivered} "
        f"({out['delivered_rate']:.0f}/s), drops {res['kernel']['drops']}, CPU {out['consumer_cpu_pct']:.0f}%")
    return out


COLUMNS = ["consumer", "target/s", "reached/s", "delivered", "delivered/s", "deliv/issued", "kernel drops",
           "consumer CPU", "RSS idle", "RSS peak", "VmHWM", "ring map", "anon idle", "anon peak"]


def rows(cases: list[dict]) -> tuple[list[list[str]], list[str | None]]:
    out, styles = [], []
    for c in cases:
        drops = c["kernel"]["drops"]
        target = "flat out" if c["target_rate"] >= FLAT_OUT else f"{c['target_rate']:,}"
        out.append([c["mode"], target, f"{c['generator_rate']:,.0f}", f"{c['delivered']:,}",
                    f"{c['delivered_rate']:,.0f}", f"{100 * c['delivered_fraction']:.2f}%", f"{drops:,}",
                    f"{c['consumer_cpu_pct']:.0f}%", f"{c['rss_idle_kb'] / 1024:.1f} MiB",
                    f"{c['rss_load_peak_kb'] / 1024:.1f} MiB", f"{c['hwm_kb'] / 1024:.1f} MiB",
                    f"{c['ring_map_kb'] / 1024:.1f} MiB", f"{c['anon_idle_kb'] / 1024:.1f} MiB",
                    f"{c['anon_load_peak_kb'] / 1024:.1f} MiB"])
        styles.append("bold red" if drops else None)
    return out, styles


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default=f"1000000,500000,{FLAT_OUT}",
                    help=f"raw-consumer target rates, comma-separated ({FLAT_OUT}: flat out)")
    ap.add_argument("--decode-rates", default="100000,250000",
                    help="decoding-consumer target rates (the per-event Python path), comma-separated; '' for none")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-build", action="store_true", help="use the workloads and the code snapshot already in build/bench")
    args = ap.parse_args(argv)
    tracers.stop_on_signals()
    notes = tracers.check_prerequisites()
    if not args.no_build:
        workloads.build()
        snapshot.freeze()
    code = snapshot.info()
    data: dict = {"kind": "throughput", "machine": report.machine(), "notes": notes, "code": code, "seconds": args.seconds}
    cap = generator_capacity()
    data["generator_capacity_untraced"] = cap
    report.console.print(f"[bold]throughput[/]: close(-1) generator flat out, untraced: {cap['rate']:,.0f}/s")
    todo = [("raw", int(r)) for r in args.rates.split(",") if r]
    todo += [("decode", int(r)) for r in args.decode_rates.split(",") if r]
    cases = [one_case(mode, rate, args.seconds) for mode, rate in todo]
    data["cases"] = cases
    rs, styles = rows(cases)
    report.console.print(report.table(f"close(-1) at a paced rate for {args.seconds:.0f} s, andon tracing close",
                                      COLUMNS, rs, styles))
    data["markdown"] = report.markdown_table(COLUMNS, rs)
    warnings = []
    for c in cases:
        if c["kernel"]["drops"]:
            warnings.append(f"!!! {c['mode']} at {c['target_rate']:,}/s: the kernel dropped {c['kernel']['drops']:,} "
                            f"events (ring full: the consumer fell behind)")
        if c["target_rate"] < FLAT_OUT and c["generator_rate"] < 0.98 * c["target_rate"]:
            warnings.append(f"note: {c['mode']} at {c['target_rate']:,}/s: the generator reached only "
                            f"{c['generator_rate']:,.0f}/s with tracing on")
    for m in warnings:
        report.console.print(f"[bold red]{m}[/]" if m.startswith("!!!") else m)
    data["warnings"] = warnings
    path = report.write_json("throughput", data)
    report.console.print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
