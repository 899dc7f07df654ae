"""The store's settings: where it keeps data, how long, how much. Frozen; passed in.

In the agent's config (``andon.yaml``) they read::

    store:
      data_dir: /var/lib/andon
      flush_interval: 5s          # rows reach disk within this (queries ask for a flush first)
      max_buffer_rows: 10000      # ... or as soon as a table holds this many
      retention:
        max_age: 1h               # segments whose newest row is older are deleted
        max_bytes: 256MiB         # over all tables; oldest segments go first
        max_rows: 10000000        # per table; 0 = no limit

Durations take ``ns us ms s m h d`` (``1h30m`` works); sizes take ``B KB MB GB`` (powers of
1000) and ``KiB MiB GiB`` (powers of 1024).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

DEFAULT_DATA_DIR = Path("/var/lib/andon")

_DUR_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
              "d": 86400 * 10**9}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration_ns(text: str | int | float) -> int:
    """``"1h30m"`` -> nanoseconds. A bare number is seconds. Raises UsageError."""
    if isinstance(text, bool):
        raise UsageError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        return int(text * 10**9)
    s = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return int(float(s) * 10**9)
    pos, total = 0, 0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _DUR_UNITS[m.group(2)])
        pos = m.end()
    if pos != len(s) or not s:
        raise UsageError(f"not a duration: {text!r} (examples: 30s, 5m, 1h30m)")
    return total


def parse_size(text: str | int) -> int:
    """``"256MiB"`` -> bytes. A bare number is bytes. Raises UsageError."""
    if isinstance(text, bool):
        raise UsageError(f"not a size: {text!r}")
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS | {"": 1}:
        raise UsageError(f"not a size: {text!r} (examples: 512KiB, 256MiB, 1GB)")
    return int(float(m.group(1)) * (_SIZE_UNITS.get(m.group(2).lower(), 1)))


@dataclass(frozen=True)
class Retention:
    """How much the store keeps. 0 means no limit on that axis."""

    max_age_ns: int = 3600 * 10**9
    max_bytes: int = 256 * 2**20
    max_rows: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "Retention":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"max_age", "max_bytes", "max_rows"}
        if unknown:
            raise UsageError(f"store.retention: unknown key(s) {', '.join(sorted(unknown))}")
        out = cls()
        kw: dict[str, int] = {}
        if "max_age" in cfg:
            kw["max_age_ns"] = parse_duration_ns(cfg["max_age"])
        if "max_bytes" in cfg:
            kw["max_bytes"] = parse_size(cfg["max_bytes"])
        if "max_rows" in cfg:
            if not isinstance(cfg["max_rows"], int) or cfg["max_rows"] < 0:
                raise UsageError(f"store.retention.max_rows: not a count: {cfg['max_rows']!r}")
            kw["max_rows"] = cfg["max_rows"]
        return cls(**{**out.__dict__, **kw})


@dataclass(frozen=True)
class StoreSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    retention: Retention = field(default_factory=Retention)
    # every flush of a table costs ~6 ms of CPU whatever its size (a DuckDB COPY to a new
    # Parquet file): 1,000 rows a second flushed every second cost 14 µs a row, 5,000 rows
    # 6 µs (bench/store_write.py). Queries, `andon top` and `andon observe` ask for a flush
    # first, so a longer interval costs readers nothing; it bounds what a crash loses
    flush_interval_ns: int = 5 * 10**9
    # a table's buffer is flushed early when it holds this many rows: the bound on the rows
    # waiting in memory under heavy traffic (an nginx-1k HTTP row is 1.2 KB as a dict)
    max_buffer_rows: int = 10_000
    # small segments are merged into ones of up to this many rows ...
    compact_rows: int = 2_000_000
    # ... once at least this many small ones have piled up
    compact_min_files: int = 16
    # the control socket (flush on request); None: none
    control_socket: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "StoreSettings":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"data_dir", "retention", "flush_interval", "max_buffer_rows"}
        if unknown:
            raise UsageError(f"store: unknown key(s) {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {}
        if "data_dir" in cfg:
            kw["data_dir"] = Path(cfg["data_dir"])
        if "retention" in cfg:
            kw["retention"] = Retention.from_config(cfg["retention"])
        if "flush_interval" in cfg:
            kw["flush_interval_ns"] = parse_duration_ns(cfg["flush_interval"])
        if "max_buffer_rows" in cfg:
            n = cfg["max_buffer_rows"]
            if type(n) is not int or n < 1:
                raise UsageError(f"store.max_buffer_rows: not a positive count of rows: {n!r}")
            kw["max_buffer_rows"] = n
        return cls(**kw)
