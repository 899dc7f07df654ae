"""The agent's table store: rows in memory for a moment, then Parquet segments on disk.

    records (dicts keyed by Pixie column names)
      -> Store.append(table, records)        list.extend under a lock: cheap on the hot path
      -> Store.flush()                       every flush_interval (and on request):
                                             columns built once per batch, DuckDB COPY to Parquet
      -> Store.enforce_retention()           whole segments deleted by age, rows and bytes
      -> DATA_DIR/<table>/*.parquet          what ``andon query`` reads, agent running or not

A new Store over the same directory carries on from the segments it finds (sequence
numbers continue), so data survives a restart. Damaged segment files are reported once
and skipped; they never stop the store. Every row refused or lost is counted in
:attr:`Store.stats`.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ..errors import AndonError
from . import segments as seg
from .schema import ALIASES, BOOLEAN, FLOAT64, INT64, STRING, TABLES, TIME64NS, UINT128, ZERO, TableSchema
from .settings import StoreSettings

log = logging.getLogger("andon.store")

# a flush or merge of at least this many rows is followed by a new DuckDB connection (see
# Store._fresh_connection): what DuckDB then keeps is bounded by a write of this size
FRESH_CONNECTION_ROWS = 50_000


def _connect() -> duckdb.DuckDBPyConnection:
    """The store's own DuckDB connection: one thread. With DuckDB's default (a thread per
    core) a merge compressed on every core at once, taking them from the traced servers, and
    each thread buffered its own row group: merging 320k HTTP rows with 1 KB bodies peaked at
    ~1 GB (tests/unit/test_store_memory.py). Queries use their own connections, all cores."""
    return duckdb.connect(config={"threads": 1})


class StoreError(AndonError, OSError):
    """The data directory cannot be used (not creatable, not writable)."""


@dataclass
class StoreStats:
    rows_in: int = 0  # records appended
    rows_written: int = 0  # rows now in segments
    rows_unknown_table: int = 0  # appended to a table name the store does not have
    values_coerced: int = 0  # a value of the wrong type replaced by the column's zero
    rows_dropped_write: int = 0  # a flush failed (disk full...): these rows are lost
    segments_written: int = 0
    segments_merged: int = 0
    segments_deleted: int = 0
    bad_segments: int = 0  # files in the data dir that are not readable segments
    flushes: int = 0
    connections_renewed: int = 0  # DuckDB connections replaced after a big write
    per_table: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Buffer:
    __slots__ = ("rows", "lock")

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.lock = threading.Lock()


class Store:
    def __init__(self, settings: StoreSettings, *, clock: Callable[[], int] = time.time_ns,
                 tables: dict[str, TableSchema] | None = None) -> None:
        self.settings = settings
        self.tables = dict(tables or TABLES)
        self.clock = clock
        self.stats = StoreStats()
        self.data_dir = Path(settings.data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for t in self.tables:
                (self.data_dir / t).mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot use data directory {self.data_dir}: {e.strerror}") from e
        if not os.access(self.data_dir, os.W_OK):
            raise StoreError(f"data directory {self.data_dir} is not writable")
        self._buffers = {t: _Buffer() for t in self.tables}
        self._con = _connect()
        self._disk_lock = threading.Lock()  # one flush/merge/retention at a time
        self._reported_bad: set[Path] = set()
        self._seq = 0
        for t in self.tables:
            d = self.data_dir / t
            seg.remove_stale_tmp(d)
            for p in seg.covered_leftovers(d):
                log.info("removing %s: a merged segment already holds its rows", p)
                p.unlink(missing_ok=True)
            good, _ = self._segments(t)
            if good:
                self._seq = max(self._seq, max(s.hi for s in good) + 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._control = None

    # ---- hot path -------------------------------------------------------------------

    def append(self, table: str, records: Iterable[dict]) -> None:
        """Take a batch of records for ``table``. Never raises on bad records; counts them."""
        buf = self._buffers.get(table)
        if buf is None:
            n = len(records) if hasattr(records, "__len__") else sum(1 for _ in records)
            self.stats.rows_unknown_table += n
            return
        with buf.lock:
            before = len(buf.rows)
            buf.rows.extend(records)
            n = len(buf.rows) - before
            full = len(buf.rows) >= self.settings.max_buffer_rows
        self.stats.rows_in += n
        if full and self._thread is not None:
            self._wake.set()

    # ---- flushing -------------------------------------------------------------------

    def flush(self, full_only: bool = False) -> int:
        """Write every buffered row to new segments (``full_only``: only the tables that hold
        ``max_buffer_rows`` or more, the rest waits for the interval). Returns how many rows
        were written."""
        total = 0
        bound = self.settings.max_buffer_rows if full_only else 0
        with self._disk_lock:
            for name, buf in self._buffers.items():
                with buf.lock:
                    if not buf.rows or len(buf.rows) < bound:
                        continue
                    rows, buf.rows = buf.rows, []
                total += self._write(self.tables[name], rows)
            self.stats.flushes += 1
            if total >= FRESH_CONNECTION_ROWS:
                self._fresh_connection()
        return total

    def _fresh_connection(self) -> None:
        """Replace the DuckDB connection (caller holds the disk lock). DuckDB keeps the memory
        of its largest write in its allocator's caches until the connection closes, although
        its buffer manager reports none in use: a flush of 150k rows left the agent ~100 MB
        bigger for good. A new in-memory connection costs ~30 ms, so only after big writes."""
        self._con.close()
        self._con = _connect()
        self.stats.connections_renewed += 1

    def _columns(self, schema: TableSchema, rows: list[dict]) -> dict[str, np.ndarray]:
        names = schema.names
        if not any(a in rows[0] for a in ALIASES):
            # the usual batch: every row has every column. One C call per row takes a row's
            # values in column order, zip turns rows into columns; a row short of one falls
            # back to the column by column way below
            try:
                columns = list(zip(*map(operator.itemgetter(*names), rows))) if len(names) > 1 else None
            except KeyError:
                columns = None
            if columns is not None:
                return {col.name: self._array(col.type, vals, ZERO[col.type])
                        for col, vals in zip(schema.columns, columns)}
        out: dict[str, np.ndarray] = {}
        for col in schema.columns:
            c, z = col.name, ZERO[col.type]
            alias = next((a for a, target in ALIASES.items() if target == c), None)
            if alias is None:
                vals = [r.get(c, z) for r in rows]
            else:
                vals = [r[c] if c in r else r.get(alias, z) for r in rows]
            out[c] = self._array(col.type, vals, z)
        return out

    def _array(self, typ: str, vals: list, zero: Any) -> np.ndarray:
        if typ in (INT64, TIME64NS):
            try:
                return np.array(vals, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                return np.array([self._coerce(v, int, zero) for v in vals], dtype=np.int64)
        if typ == FLOAT64:
            try:
                return np.array(vals, dtype=np.float64)
            except (TypeError, ValueError):
                return np.array([self._coerce(v, float, zero) for v in vals], dtype=np.float64)
        if typ == BOOLEAN:
            return np.array([bool(v) if v is not None else False for v in vals], dtype=bool)
        # STRING / UINT128: str, or bytes decoded leniently (bodies are often not UTF-8)
        if set(map(type, vals)) != {str}:
            vals = [self._text(v) for v in vals]
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        return arr

    def _coerce(self, v: Any, kind: type, zero: Any) -> Any:
        if v is None:
            return zero
        try:
            out = kind(v)
            if kind is int and not (-(2**63) <= out < 2**63):
                raise OverflowError
            return out
        except (TypeError, ValueError, OverflowError):
            self.stats.values_coerced += 1
            return zero

    def _text(self, v: Any) -> str:
        if type(v) is str:
            return v
        if v is None:
            return ""
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v).decode("utf-8", "backslashreplace")
        if isinstance(v, (int, float, bool)):
            return str(v)
        self.stats.values_coerced += 1
        return str(v)

    def _write(self, schema: TableSchema, rows: list[dict]) -> int:
        try:
            cols = self._columns(schema, rows)
            times = cols["time_"]
            tmin, tmax = int(times.min()), int(times.max())
            seq = self._seq
            self._seq += 1
            final = self.data_dir / schema.name / seg.segment_name(seq, seq, tmin, tmax, len(rows))
            self._con.register("_buf", cols)
            try:
                sel = ", ".join(f'"{c.name}"::{c.sql_type} AS "{c.name}"' for c in schema.columns)
                seg.write_atomic(self._con, f"SELECT {sel} FROM _buf", final)
            finally:
                self._con.unregister("_buf")
        except (OSError, duckdb.Error) as e:
            self.stats.rows_dropped_write += len(rows)
            log.error("%s: could not write %d rows: %s", schema.name, len(rows), e)
            return 0
        self.stats.rows_written += len(rows)
        self.stats.segments_written += 1
        self.stats.per_table[schema.name] = self.stats.per_table.get(schema.name, 0) + len(rows)
        return len(rows)

    # ---- segments, retention, compaction --------------------------------------------

    def _segments(self, table: str) -> tuple[list[seg.Segment], list[tuple[Path, str]]]:
        good, bad = seg.list_segments(self.data_dir / table)
        for p, why in bad:
            if p not in self._reported_bad:
                self._reported_bad.add(p)
                self.stats.bad_segments += 1
                log.warning("skipping damaged segment %s: %s", p, why)
        return good, bad

    def segments(self, table: str) -> list[seg.Segment]:
        return self._segments(table)[0]

    def enforce_retention(self, now_ns: int | None = None) -> int:
        """Delete whole segments beyond the retention limits. Returns how many were deleted."""
        r = self.settings.retention
        now = self.clock() if now_ns is None else now_ns
        doomed: list[Path] = []
        with self._disk_lock:
            live: list[seg.Segment] = []
            for t in self.tables:
                good, bad = self._segments(t)
                if r.max_age_ns:
                    cutoff = now - r.max_age_ns
                    for p, _ in bad:  # damaged files age out by mtime
                        try:
                            if p.stat().st_mtime_ns < cutoff:
                                doomed.append(p)
                        except FileNotFoundError:
                            pass
                    old = [s for s in good if s.tmax < cutoff]
                    doomed += [s.path for s in old]
                    good = [s for s in good if s.tmax >= cutoff]
                if r.max_rows:
                    kept = 0
                    for s in sorted(good, key=lambda s: s.hi, reverse=True):
                        if kept + s.rows > r.max_rows:
                            doomed.append(s.path)
                        else:
                            kept += s.rows
                            live.append(s)
                else:
                    live += good
            if r.max_bytes:
                total = sum(s.size for s in live)
                for s in sorted(live, key=lambda s: (s.tmax, s.hi)):
                    if total <= r.max_bytes:
                        break
                    doomed.append(s.path)
                    total -= s.size
            for p in doomed:
                try:
                    p.unlink()
                    self.stats.segments_deleted += 1
                except FileNotFoundError:
                    pass
        return len(doomed)

    def compact(self) -> int:
        """Merge runs of small adjacent segments so a table has few files. Returns merges done.

        A run holds flushed segments only, or merged ones only: a merged segment joining the
        next flushed ones would be rewritten at every merge until it stopped being small (at
        5,000 rows/s that rewrote each row ~4 times more, and cost as much CPU as the
        flushes). So flushes are merged in runs of ``compact_min_files``, and those merges
        again once as many of them have piled up within the span a run may cover (a tenth of
        the retention age): at 1,000 rows/s and the default hour, they never do."""
        s = self.settings
        merges = merged_rows = 0
        max_span = max(s.retention.max_age_ns // 10, 10**9) if s.retention.max_age_ns else 600 * 10**9
        max_bytes = s.retention.max_bytes // 8 if s.retention.max_bytes else 64 * 2**20
        with self._disk_lock:
            for t, schema in self.tables.items():
                good, _ = self._segments(t)
                run: list[seg.Segment] = []
                runs: list[list[seg.Segment]] = []
                for sg in good:
                    small = sg.rows < s.compact_rows // 4
                    fits = (run and (run[-1].lo < run[-1].hi) == (sg.lo < sg.hi)
                            and sum(x.rows for x in run) + sg.rows <= s.compact_rows
                            and sum(x.size for x in run) + sg.size <= max_bytes
                            and max(sg.tmax, run[-1].tmax) - min(x.tmin for x in run) <= max_span)
                    if small and (not run or fits):
                        run.append(sg)
                        continue
                    if len(run) >= s.compact_min_files:
                        runs.append(run)
                    run = [sg] if small else []
                # the newest run stays open until it is full enough to be worth a merge
                if len(run) >= s.compact_min_files:
                    runs.append(run)
                for run in runs:
                    if self._merge(schema, run):
                        merges += 1
                        merged_rows += sum(x.rows for x in run)
            if merged_rows >= FRESH_CONNECTION_ROWS:
                self._fresh_connection()
        return merges

    def _merge(self, schema: TableSchema, run: list[seg.Segment]) -> bool:
        rows = sum(x.rows for x in run)
        name = seg.segment_name(run[0].lo, run[-1].hi, min(x.tmin for x in run), max(x.tmax for x in run), rows)
        final = self.data_dir / schema.name / name
        try:
            seg.write_atomic(self._con, seg.select_sql(self._con, schema, [x.path for x in run]), final)
        except (OSError, duckdb.Error) as e:
            log.warning("%s: merge of %d segments failed, kept as they are: %s", schema.name, len(run), e)
            return False
        for x in run:
            x.path.unlink(missing_ok=True)
        self.stats.segments_merged += len(run)
        return True

    # ---- background work ------------------------------------------------------------

    def start(self) -> None:
        """Flush, compact and apply retention in a thread; serve the control socket."""
        if self._thread is not None:
            return
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="andon-store", daemon=True)
        self._thread.start()
        if self.settings.control_socket:
            from .control import ControlServer

            self._control = ControlServer(self)
            self._control.start()

    def _loop(self) -> None:
        interval = self.settings.flush_interval_ns / 1e9
        last_maint = 0.0
        last_flush = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, last_flush + interval - time.monotonic()))
            self._wake.clear()
            try:
                if time.monotonic() - last_flush < interval:
                    # woken early by a table that reached its bound: that one alone, so a
                    # busy table does not cut every other table into small segments
                    self.flush(full_only=True)
                    continue
                last_flush = time.monotonic()
                self.flush()
                if time.monotonic() - last_maint >= max(interval * 5, 5.0):
                    last_maint = time.monotonic()
                    self.enforce_retention()
                    self.compact()
            except Exception:  # the store thread must not die: log and go on
                log.exception("store maintenance failed")

    def close(self) -> None:
        """Stop the thread and the socket, flush what is buffered."""
        self._stop.set()
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._control is not None:
            self._control.close()
            self._control = None
        self.flush()
        self._con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
