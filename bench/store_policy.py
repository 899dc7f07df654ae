"""The store thread's write policy (``Store._loop``), replayed on simulated time.

The agent's store thread flushes every table's buffered rows each ``flush_interval``, or as
soon as one table holds ``max_buffer_rows``, and every ``max(5 * flush_interval, 5 s)``
applies retention and merges runs of small segments. A bench that wants the segments the
agent really leaves behind, and what they cost, feeds its rows through :class:`Replay`,
which does the same with the store's own settings, and times the store's work only.
"""

from __future__ import annotations

import time


class Replay:
    """Append rows to ``store`` at simulated times, flushing and merging as the agent would.

    ``t0`` is the simulated clock's origin in ns (what retention compares row times with);
    ``now`` passed to :meth:`append` counts from it.
    """

    def __init__(self, store, t0: int = 0) -> None:
        self.store = store
        self.t0 = t0
        self.interval = store.settings.flush_interval_ns
        self.bound = store.settings.max_buffer_rows
        self.maint_every = max(self.interval * 5, 5 * 10**9)
        self.flush_s = 0.0  # CPU seconds in flushes
        self.maint_s = 0.0  # CPU seconds in retention and merges
        self.flushes = 0
        self._buffered = 0
        self._last_flush = 0
        self._last_maint = 0

    def append(self, table: str, rows: list[dict], now: int) -> None:
        self.store.append(table, rows)  # a list extend: not timed
        self._buffered += len(rows)
        if self._buffered >= self.bound or now - self._last_flush >= self.interval:
            a = time.process_time()
            self.store.flush()
            b = time.process_time()
            self.flush_s += b - a
            self.flushes += 1
            self._buffered, self._last_flush = 0, now
            if now - self._last_maint >= self.maint_every:
                self._last_maint = now
                self.store.enforce_retention(now_ns=self.t0 + now)
                self.store.compact()
                self.maint_s += time.process_time() - b

    def close(self) -> None:
        """Flush what is left, as ``Store.close`` does (no merge)."""
        a = time.process_time()
        self.store.flush()
        self.flush_s += time.process_time() - a
