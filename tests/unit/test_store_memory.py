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
