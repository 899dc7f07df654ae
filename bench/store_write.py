"""CPU cost of the agent's table store over minutes of traffic: flushes, retention and merges.

The store thread flushes every table's buffered rows to a Parquet segment each
``flush_interval``, or as soon as a table holds ``max_buffer_rows``, and every
``max(5 * flush_interval, 5 s)`` applies retention and merges runs of small segments
(``Store._loop``). A replay here does the same (``store_policy.Replay``), with the store's default
settings of the code under test, on simulated time and as fast as it can: ``--rate`` HTTP rows a second (as
nginx-1k's server side makes them: 1 KB responses, a 30-byte body prefix), appended in
batches of 500 as the observing thread does, for ``--seconds`` simulated seconds. Rows are
built outside the clock; only the store is timed (process_time, DuckDB's thread included).

Prints µs of CPU per row for the flushes, for the maintenance (merges) and in all, the
flushes and segments merged, the segments and bytes on disk at the end. ``--baseline REV``
runs each replay on the ``src/andon`` of that git revision too (``git archive``), old and new
interleaved in fresh processes, and prints new/old.

    .venv/bin/python bench/store_write.py [--rate 5000] [--seconds 600] [--repeat 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import snapshot  # bench/snapshot.py, beside this script
import store_policy  # bench/store_policy.py

T0 = 1_700_000_000 * 10**9


def _rows(rate: int, rnd: random.Random) -> list[dict]:
    """One simulated second's rows, from T0."""
    return [{
        "time_": T0 + i * (10**9 // rate), "upid": "00000001-0000-0a1b-0000-000000012345",
        "remote_addr": "127.0.0.1", "remote_port": 40000 + i % 64, "local_addr": "127.0.0.1", "local_port": 8080,
        "trace_role": 2, "encrypted": False, "major_version": 1, "minor_version": 1, "content_type": 0,
        "req_headers": '{"Host":"127.0.0.1:8080","User-Agent":"wrk"}', "req_method": "GET",
        "req_path": f"/size/{1024 + i % 8}", "req_body": "", "req_body_size": 0,
        "resp_headers": '{"Content-Length":"1024","Content-Type":"application/octet-stream","Server":"nginx/1.22.1"}',
        "resp_status": 200, "resp_message": "OK", "resp_body": "x" * 30, "resp_body_size": 1024,
        "latency": rnd.randint(20_000, 200_000), "pid": 1234, "comm": "nginx", "container_id": "",
        "container_name": "host",
    } for i in range(rate)]


def replay(rate: int, seconds: int) -> dict:
    from andon.store.settings import StoreSettings
    from andon.store.store import Store

    rnd = random.Random(1)
    # one second's rows, reused with shifted times: building millions of dicts up front
    # would take more memory than the store ever holds
    proto = _rows(rate, rnd)
    batch = 500
    with tempfile.TemporaryDirectory(prefix="andon-store-bench-") as d:
        st = Store(StoreSettings(data_dir=Path(d), control_socket=False))
        rp = store_policy.Replay(st, t0=T0)
        for s in range(seconds):
            shift = s * 10**9
            rows = [dict(r, time_=r["time_"] + shift) for r in proto]
            for i in range(0, rate, batch):
                rp.append("http_events", rows[i : i + batch], now=shift + min(i + batch, rate) * 10**9 // rate)
        on_disk = sum(p.stat().st_size for p in Path(d).rglob("*.parquet"))
        segments = len(st.segments("http_events"))
        merged = st.stats.segments_merged
        st.close()
    flush_s, maint_s, flushes = rp.flush_s, rp.maint_s, rp.flushes
    n = rate * seconds
    return {"rows": n, "flush_us": flush_s / n * 1e6, "maint_us": maint_s / n * 1e6,
            "total_us": (flush_s + maint_s) / n * 1e6, "flushes": flushes, "merged": merged, "segments": segments,
            "mb": on_disk / 1e6}


def _worker(src: str, rate: int, seconds: int) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--rate", str(rate),
                          "--seconds", str(seconds)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=5000, help="rows per simulated second")
    ap.add_argument("--seconds", type=int, default=600, help="simulated seconds")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", metavar="REV", help="also run on src/andon of this git revision")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(replay(a.rate, a.seconds)))
        return 0
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    srcs = {"new": os.path.join(repo, "src")}
    with tempfile.TemporaryDirectory(prefix="andon-baseline-") as tmp:
        if a.baseline:
            srcs = {"old": snapshot.source_at(a.baseline, tmp), **srcs}
        runs: dict[str, list[dict]] = {k: [] for k in srcs}
        for i in range(a.repeat):
            for k, src in srcs.items():  # interleaved: old, new, old, new...
                runs[k].append(_worker(src, a.rate, a.seconds))
                print(f"run {i + 1}/{a.repeat} {k}: {runs[k][-1]['total_us']:.2f} µs/row", file=sys.stderr, flush=True)
    print(f"store: {a.rate:,} http_events rows/s for {a.seconds} simulated s ({a.rate * a.seconds:,} rows), "
          f"µs of CPU per row, median of {a.repeat}" + (f"; old = {a.baseline}" if a.baseline else ""))
    print(f"{'code':<5} {'flush':>7} {'merges':>7} {'total':>7} {'flushes':>8} {'merged':>7} {'segments':>9} {'MB':>6}")
    med = {}
    for k, rs in runs.items():
        m = {f: statistics.median(r[f] for r in rs) for f in ("flush_us", "maint_us", "total_us", "mb")}
        med[k] = m
        print(f"{k:<5} {m['flush_us']:>7.2f} {m['maint_us']:>7.2f} {m['total_us']:>7.2f} {rs[0]['flushes']:>8} {rs[0]['merged']:>7} "
              f"{rs[0]['segments']:>9} {m['mb']:>6.1f}")
    if "old" in runs:
        ratios = sorted(n["total_us"] / o["total_us"] for o, n in zip(runs["old"], runs["new"]))
        print(f"new/old total: {statistics.median(ratios):.3f} (runs {ratios[0]:.2f}-{ratios[-1]:.2f}); "
              f"merges new/old {med['new']['maint_us'] / med['old']['maint_us']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
