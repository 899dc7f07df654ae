"""Per-process CPU, memory and I/O figures for Pixie's ``process_stats`` table, read from /proc.

Pixie samples ``/proc/<pid>/stat`` and ``/proc/<pid>/io`` for every process it knows;
andon does the same for every process on the host (a few hundred files, a few
milliseconds a sample). Columns and units are Pixie's
(``src/stirling/source_connectors/process_stats/process_stats_table.h``): CPU times in
nanoseconds, memory in bytes, I/O counters in bytes.

The parsers are pure (text in, dict out) so they are tested without root; a process that
exits between listing and reading, or a file we may not read, is skipped and counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_NS_PER_TICK = 1_000_000_000 // CLK_TCK


def parse_stat(text: str) -> dict[str, int] | None:
    """Fields of ``/proc/<pid>/stat`` that ``process_stats`` needs, or None if malformed.

    The command name (field 2) is in parentheses and may itself hold spaces and ')', so the
    fields after it are found from the *last* ')' (proc(5)).
    """
    end = text.rfind(")")
    if end < 0:
        return None
    start = text.find("(")
    rest = text[end + 1 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]
    if len(rest) < 22 or start < 0:
        return None
    try:
        pid = int(text[:start])
        return {
            "pid": pid,
            "comm": text[start + 1 : end],
            "ppid": int(rest[1]),
            "minor_faults": int(rest[7]),
            "major_faults": int(rest[9]),
            "cpu_utime_ns": int(rest[11]) * _NS_PER_TICK,
            "cpu_ktime_ns": int(rest[12]) * _NS_PER_TICK,
            "num_threads": int(rest[17]),
            "start_ticks": int(rest[19]),
            "vsize_bytes": int(rest[20]),
            "rss_bytes": int(rest[21]) * PAGE,
        }
    except ValueError:
        return None


def parse_io(text: str) -> dict[str, int]:
    """``/proc/<pid>/io``: rchar, wchar, read_bytes, write_bytes (missing keys are 0)."""
    out = {"rchar_bytes": 0, "wchar_bytes": 0, "read_bytes": 0, "write_bytes": 0}
    names = {"rchar": "rchar_bytes", "wchar": "wchar_bytes", "read_bytes": "read_bytes", "write_bytes": "write_bytes"}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        col = names.get(key.strip())
        if col:
            try:
                out[col] = int(value)
            except ValueError:
                pass
    return out


@dataclass
class ProcStatsSampler:
    """Reads every process under ``proc`` (default /proc); ``skipped`` counts the ones that vanished."""

    proc: str = "/proc"
    skipped: int = 0
    samples: int = 0
    _fail: dict[str, int] = field(default_factory=dict)

    def pids(self) -> Iterator[int]:
        for name in os.listdir(self.proc):
            if name.isdigit():
                yield int(name)

    def read(self, pid: int) -> dict[str, int] | None:
        base = f"{self.proc}/{pid}"
        try:
            with open(f"{base}/stat") as f:
                stat = parse_stat(f.read())
        except OSError:
            self.skipped += 1
            return None
        if stat is None:
            self.skipped += 1
            return None
        try:
            with open(f"{base}/io") as f:
                stat.update(parse_io(f.read()))
        except OSError:
            # kernel threads and processes that just exited have no readable io file
            stat.update(parse_io(""))
        return stat

    def sample(self, now_ns: int) -> list[dict[str, int]]:
        """One row per live process, stamped ``time_ = now_ns``."""
        rows = []
        for pid in self.pids():
            row = self.read(pid)
            if row is not None:
                row["time_"] = now_ns
                rows.append(row)
        self.samples += 1
        return rows
