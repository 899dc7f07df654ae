"""Store ingest rate and query latency over one hour of http_events.

    .venv/bin/python bench/query.py [--rate 1000] [--minutes 60] [--repeat 3] [--dir DIR]

1. Ingest: ``rate * minutes * 60`` synthetic HTTP records (a few services, paths and
   status codes, log-normal latencies) go to the store in batches of 500, flushed and
   merged on their own timestamps by the store thread's policy and default settings
   (``store_policy.Replay``), so the segments left are those an agent leaves after the
   hour. Prints rows per CPU second of the store's own work (building the dicts is not
   counted) and the segment files.
2. Queries over the whole hour (and ``px/http_data`` over its last 5 minutes, Pixie's
   default window), PxL and the same query in SQL, each run ``--repeat`` times; prints
   the median wall and CPU milliseconds and the ratio PxL/SQL (the SQL run is the
   baseline, measured in the same run, on the same connection).
3. The same PxL over the same rows merged into one segment file, the layout's baseline:
   prints its CPU and the ratio of the agent's layout to it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from andon.query.runner import run_pxl, run_script, run_sql  # noqa: E402
from andon.store import Retention, Store, StoreSettings  # noqa: E402
from andon.store.catalog import Catalog  # noqa: E402

import store_policy  # noqa: E402  (bench/store_policy.py, beside this script)

S = 10**9


def records(rng, t0: int, n: int, span_ns: int):
    svcs = ["web", "api", "cart", "auth", ""]
    comms = ["nginx", "python3", "node", "java", "curl"]
    paths = ["/", "/api/items", "/api/cart", "/login", "/healthz", "/static/app.js"]
    t = np.sort(rng.integers(0, span_ns, n)) + t0
    lat = (rng.lognormal(14.0, 1.0, n)).astype(np.int64)
    sv = rng.integers(0, len(svcs), n)
    pa = rng.integers(0, len(paths), n)
    st = np.where(rng.random(n) < 0.03, 500, np.where(rng.random(n) < 0.05, 404, 200))
    size = rng.integers(0, 20000, n)
    out = []
    for i in range(n):
        s = int(sv[i])
        out.append({"time_": int(t[i]), "upid": f"0:{1000 + s}:4242", "remote_addr": f"10.0.{s}.{i % 200}",
                    "remote_port": 30000 + i % 20000, "local_addr": "10.0.0.1", "local_port": 8080,
                    "trace_role": 2, "encrypted": False, "major_version": 1, "minor_version": 1,
                    "req_headers": '{"Host":"svc"}', "req_method": "GET" if i % 5 else "POST",
                    "req_path": paths[int(pa[i])], "req_body": "", "req_body_size": 0,
                    "resp_headers": '{"Content-Type":"text/html"}', "resp_status": int(st[i]),
                    "resp_message": "OK", "resp_body": "", "resp_body_size": int(size[i]),
                    "latency": int(lat[i]), "pid": 1000 + s, "comm": comms[s], "container_name": svcs[s],
                    "container_id": f"c{s}" if svcs[s] else ""})
    return out


def ingest(data_dir: Path, rate: int, minutes: int) -> tuple[int, float, float]:
    rng = np.random.default_rng(7)
    now = time.time_ns()
    t0 = now - minutes * 60 * S
    st = Store(StoreSettings(data_dir=data_dir, control_socket=False,
                             retention=Retention(max_age_ns=2 * 3600 * S, max_bytes=4 * 2**30)), clock=lambda: now)
    rp = store_policy.Replay(st, t0=t0)
    rows = 0
    chunk_s = 60  # build a minute of records at a time, hand them over in batches of 500 as the agent does
    batch = 500
    for m in range(minutes):
        recs = records(rng, t0 + m * 60 * S, rate * chunk_s, 60 * S)
        for i in range(0, len(recs), batch):
            part = recs[i : i + batch]
            rp.append("http_events", part, now=part[-1]["time_"] - t0)
            rows += len(part)
    rp.close()
    cpu = rp.flush_s + rp.maint_s
    st.close()
    size = sum(s.size for s in Store(StoreSettings(data_dir=data_dir, control_socket=False)).segments("http_events"))
    return rows, cpu, size


SERVICE_LET_PXL = """
import px
df = px.DataFrame(table='http_events', start_time='-2h')
df.timestamp = px.bin(df.time_, px.DurationNanos(10 * 1000 * 1000 * 1000))
df.service = df.ctx['service']
df.failure = df.resp_status >= 400
s = df.groupby(['service', 'timestamp']).agg(latency_quantiles=('latency', px.quantiles),
    error_rate=('failure', px.mean), throughput_total=('latency', px.count), bytes_total=('resp_body_size', px.sum))
s.latency_p50 = px.pluck_float64(s.latency_quantiles, 'p50')
s.latency_p99 = px.pluck_float64(s.latency_quantiles, 'p99')
px.display(s.drop('latency_quantiles'), 'let')
"""


def let_sql(since: int) -> str:
    return f"""SELECT CASE WHEN container_name <> '' THEN container_name ELSE comm END AS service,
       time_ - time_ % 10000000000 AS timestamp,
       avg(CASE WHEN resp_status >= 400 THEN 1.0 ELSE 0.0 END) AS error_rate, count(*) AS throughput_total,
       sum(resp_body_size) AS bytes_total, quantile_cont(latency, 0.5) AS latency_p50,
       quantile_cont(latency, 0.99) AS latency_p99
FROM http_events WHERE time_ >= {since} GROUP BY ALL ORDER BY 1, 2"""


def http_data_sql(since: int) -> str:
    return f"""SELECT time_, CASE WHEN trace_role = 2 THEN remote_addr ELSE
       (CASE WHEN container_name <> '' THEN container_name ELSE comm END) END AS source,
       CASE WHEN trace_role = 2 THEN (CASE WHEN container_name <> '' THEN container_name ELSE comm END)
       ELSE remote_addr END AS destination, latency, major_version, req_path, req_method, req_headers, req_body,
       req_body_size, resp_status, resp_message, resp_headers, resp_body, resp_body_size
FROM http_events WHERE time_ >= {since} LIMIT 1000"""


def one_file(src: Path, dst: Path) -> None:
    """The same rows as ``src`` in a single segment: the baseline layout for the queries."""
    shutil.rmtree(dst, ignore_errors=True)  # left by an earlier run with the same --dir
    shutil.copytree(src, dst)
    st = Store(StoreSettings(data_dir=dst, control_socket=False))
    segs = st.segments("http_events")
    if len(segs) > 1 and not st._merge(st.tables["http_events"], segs):
        raise SystemExit(f"could not merge {len(segs)} segments into one in {dst}")
    st.close()


def timed(fn, repeat: int) -> tuple[float, float, int]:
    walls, cpus, n = [], [], 0
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        n = sum(len(r.rows) for r in res)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000, help="requests per second")
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="keep the data here (default: a temporary directory)")
    a = ap.parse_args()
    tmp = None
    if a.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="andon-bench-query-")
        a.dir = Path(tmp.name)
    rows, cpu, size = ingest(a.dir, a.rate, a.minutes)
    print(f"ingest: {rows} rows ({a.rate}/s for {a.minutes} min), store CPU {cpu:.1f} s -> "
          f"{rows / cpu:,.0f} rows per CPU second; on disk {size / 2**20:.1f} MiB "
          f"({size / rows:.1f} B/row)")
    one_file(a.dir, a.dir.with_name(a.dir.name + "-onefile"))
    cat, cat1 = Catalog(a.dir), Catalog(a.dir.with_name(a.dir.name + "-onefile"))
    print(f"segments: {len(cat.files['http_events'])} files as the agent leaves them; "
          f"baseline: the same rows in {len(cat1.files['http_events'])} file")
    since = time.time_ns() - 2 * 3600 * S

    def cases(c):
        return [
            ("service LET (10 s windows, quantiles)", lambda: run_pxl(SERVICE_LET_PXL, c),
             lambda: run_sql(let_sql(since), c)),
            ("px/http_data (head 1000)", lambda: run_script("px/http_data", c, args={"start_time": "-2h"}),
             lambda: run_sql(http_data_sql(since), c)),
            ("px/service_stats (5 widgets)", lambda: run_script("px/service_stats", c, args={"start_time": "-2h"}),
             None),
            # Pixie's default window: the pod lookups read these 5 minutes too, not the hour
            ("px/http_data, last 5 min (head 1000)", lambda: run_script("px/http_data", c, args={"start_time": "-5m"}),
             lambda: run_sql(http_data_sql(time.time_ns() - 300 * S), c)),
        ]
    print(f"{'query':38} {'PxL ms':>8} {'cpu ms':>8} {'SQL ms':>8} {'cpu ms':>8} {'PxL/SQL':>8} "
          f"{'1-file cpu ms':>14} {'files/1-file':>13} rows")
    for (name, p, s), (_, p1, _) in zip(cases(cat), cases(cat1)):
        pw, pc, pn = timed(p, a.repeat)
        _, pc1, pn1 = timed(p1, a.repeat)
        if pn1 != pn:
            raise SystemExit(f"{name}: {pn} rows over the agent's segments but {pn1} over one file")
        if s is not None:
            sw, sc, sn = timed(s, a.repeat)
            sql = f"{sw:8.1f} {sc:8.1f} {pw / sw:8.2f}"
            rows_col = f"{pn}/{sn}"
        else:
            sql, rows_col = f"{'':>8} {'':>8} {'':>8}", f"{pn}"
        print(f"{name:38} {pw:8.1f} {pc:8.1f} {sql} {pc1:14.1f} {pc / pc1:13.2f} {rows_col}")
    cat.close()
    cat1.close()
    shutil.rmtree(a.dir.with_name(a.dir.name + "-onefile"))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
