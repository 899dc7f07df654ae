"""The store does not keep the memory of a big flush: DuckDB's allocator holds on to what its
largest write used until its connection closes, so after a flush of FRESH_CONNECTION_ROWS
rows or more the store takes a new connection. Without that, writing 150k rows left the
process ~80-110 MB bigger for good (measured: RssAnon 30 MB before, 110-150 MB after each
flush; with it, 31-35 MB)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from andon.store.settings import StoreSettings
from andon.store.store import FRESH_CONNECTION_ROWS, Store


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def redis_rows(n: int) -> list[dict]:
    common = {"upid": "1:2:3", "remote_addr": "127.0.0.1", "remote_port": 40000, "local_addr": "127.0.0.1",
              "local_port": 6379, "trace_role": 2, "encrypted": False, "pid": 1234, "comm": "redis-server",
              "container_id": "", "container_name": ""}
    now = time.time_ns()
    out = []
    for i in range(n):
        r = {"time_": now + i, "req_cmd": "SET",
             "req_args": '{"key":"bench:%d","value":"0123456789abcdef0123456789abcdef"}' % i,
             "resp": "OK", "latency": 1000 + i}
        r.update(common)
        out.append(r)
    return out


def test_big_flushes_do_not_stay_in_memory(tmp_path: Path) -> None:
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        st.append("redis_events", redis_rows(1000))
        st.flush()  # DuckDB's first query and the imports' one-time memory, before the baseline
        gc.collect()
        before = rss_anon_mb()
        after = []
        for _ in range(3):
            st.append("redis_events", redis_rows(150_000))
            assert st.flush() == 150_000
            gc.collect()
            after.append(rss_anon_mb())
        # 150k rows are ~100 MB as dicts; what stays after their flush must be far less
        assert max(after) - before < 40, f"RssAnon {before:.0f} MB before, {after} MB after each 150k-row flush"
        assert st.stats.rows_written == 451_000
        assert st.stats.connections_renewed == 3
    # every row was written, readable after the connection changed
    import duckdb

    n = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/redis_events/*.parquet')").fetchone()
    assert n == (451_000,)


def test_small_flushes_keep_the_connection(tmp_path: Path) -> None:
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        con = st._con
        for _ in range(3):
            st.append("redis_events", redis_rows(FRESH_CONNECTION_ROWS // 10))
            st.flush()
        assert st._con is con  # a new connection costs ~30 ms: not for the steady trickle
        assert st.stats.connections_renewed == 0
        st.append("redis_events", redis_rows(FRESH_CONNECTION_ROWS))
        st.flush()
        assert st._con is not con
        assert st.stats.connections_renewed == 1


def http_rows(n: int, first: int) -> list[dict]:
    """nginx-1k's rows: a 1 KB response body prefix each, as the agent keeps it."""
    now = time.time_ns()
    body = "x" * 1000
    return [{"time_": now + i, "upid": "1:2:3", "remote_addr": "127.0.0.1", "remote_port": 40000 + i % 1000,
             "local_addr": "127.0.0.1", "local_port": 8080, "trace_role": 2, "encrypted": False, "pid": 1,
             "comm": "nginx", "container_id": "", "container_name": "", "major_version": 1, "minor_version": 1,
             "content_type": 0, "req_headers": '{"Host":"127.0.0.1"}', "req_method": "GET",
             "req_path": "/size/1024", "req_body": "", "req_body_size": 0,
             "resp_headers": '{"Content-Length":"1024","Server":"nginx"}', "resp_status": 200,
             "resp_message": "OK", "resp_body": body + str(first + i), "resp_body_size": 1024, "latency": 1000 + i}
            for i in range(n)]


def vm_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


def test_a_merge_of_wide_rows_does_not_balloon(tmp_path: Path) -> None:
    """Compaction merged 16 one-second segments of nginx-1k rows (320k rows, ~330 MB of body
    text) with DuckDB's defaults: a thread per core, each building 122,880-row row groups.
    The process peaked ~830 MB above where it started (measured: 257 -> 1084 MB); with one
    thread and row groups capped at 8 MB, ~40 MB (138 -> 175 MB)."""
    with Store(StoreSettings(data_dir=tmp_path, control_socket=False)) as st:
        for k in range(16):
            st.append("http_events", http_rows(20_000, k * 20_000))
            assert st.flush() == 20_000
        gc.collect()
        before = vm_kb("VmRSS") / 1024
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        assert st.compact() == 1
        peak = vm_kb("VmHWM") / 1024
        assert peak - before < 120, f"VmRSS {before:.0f} MB before the merge, peak {peak:.0f} MB during it"
        (merged,) = st.segments("http_events")
        assert merged.rows == 320_000
    import duckdb

    got = duckdb.connect().execute(
        f"SELECT count(*), count(DISTINCT resp_body), max(length(resp_body)) "
        f"FROM read_parquet('{tmp_path}/http_events/*.parquet')").fetchone()
    assert got == (320_000, 320_000, 1006)
