"""Parquet segments on disk: one directory per table, one file per flush (or merge).

A segment's name says what it holds, so listing a directory is enough to plan retention,
compaction and time-range pruning without opening a file::

    DATA_DIR/http_events/0000000041-0000000057_<tmin>_<tmax>_<rows>.parquet

``lo-hi`` are the flush sequence numbers it covers (a merged segment covers several);
``tmin``/``tmax`` the smallest and largest ``time_`` in ns; ``rows`` its row count.
Files are written to ``.<name>.tmp`` and renamed into place, so a reader sees whole
files or none. A merge renames the merged file in before deleting its inputs; if the
agent dies between the two, the inputs are recognised on the next open as covered by
the merged range and removed, so no row is counted twice.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .schema import ZERO, Column, TableSchema

log = logging.getLogger("andon.store")

_NAME_RE = re.compile(r"^(\d+)-(\d+)_(-?\d+)_(-?\d+)_(\d+)\.parquet$")
_MAGIC = b"PAR1"


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    lo: int
    hi: int
    tmin: int
    tmax: int
    rows: int
    size: int

    @property
    def table(self) -> str:
        return self.path.parent.name


def segment_name(lo: int, hi: int, tmin: int, tmax: int, rows: int) -> str:
    return f"{lo:010d}-{hi:010d}_{tmin}_{tmax}_{rows}.parquet"


def looks_like_parquet(path: Path) -> str | None:
    """None if the file has Parquet's framing (magic at both ends, a footer that fits), else why not.

    Cheap (two small reads): catches truncated and overwritten files; a file damaged
    inside its pages is caught when DuckDB reads it (see catalog).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 12:
                return f"too short ({size} bytes)"
            head = f.read(4)
            f.seek(size - 8)
            tail = f.read(8)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if head != _MAGIC or tail[4:] != _MAGIC:
        return "not a Parquet file (magic bytes missing)"
    footer = int.from_bytes(tail[:4], "little")
    if footer <= 0 or footer > size - 12:
        return f"footer length {footer} does not fit in {size} bytes"
    return None


def list_segments(table_dir: Path, *, validate: bool = True) -> tuple[list[Segment], list[tuple[Path, str]]]:
    """(good segments sorted by ``lo``, [(bad file, why)]). Segments covered by a merged one are dropped."""
    good: list[Segment] = []
    bad: list[tuple[Path, str]] = []
    try:
        entries = list(os.scandir(table_dir))
    except FileNotFoundError:
        return [], []
    for e in entries:
        m = _NAME_RE.match(e.name)
        if not m:
            if e.name.endswith(".parquet"):
                bad.append((Path(e.path), "name is not a segment name"))
            continue
        p = Path(e.path)
        if validate:
            why = looks_like_parquet(p)
            if why:
                bad.append((p, why))
                continue
        try:
            size = e.stat().st_size
        except FileNotFoundError:  # deleted under us by the agent's retention
            continue
        lo, hi, tmin, tmax, rows = (int(x) for x in m.groups())
        good.append(Segment(p, lo, hi, tmin, tmax, rows, size))
    good.sort(key=lambda s: (s.lo, -s.hi))
    out: list[Segment] = []
    for s in good:
        if out and s.hi <= out[-1].hi:  # inside a merged segment's range: a leftover input
            continue
        out.append(s)
    return out, bad


def covered_leftovers(table_dir: Path) -> list[Path]:
    """Segments whose range a merged segment already covers (left by a merge cut short)."""
    kept, _ = list_segments(table_dir, validate=False)
    keep = {s.path for s in kept}
    out = []
    for e in os.scandir(table_dir) if table_dir.is_dir() else []:
        if _NAME_RE.match(e.name) and Path(e.path) not in keep:
            out.append(Path(e.path))
    return out


# the most a Parquet row group holds before it is written out. DuckDB's default is 122,880
# rows whatever their size: with 1 KB bodies that is ~120 MB held per row group being built
ROW_GROUP_BYTES = "8MB"


def write_atomic(con, select_sql: str, final: Path) -> int:
    """COPY the query's rows to ``final`` via a temporary name and rename. Returns the file's size."""
    tmp = final.with_name(f".{final.name}.tmp")
    con.execute(f"COPY ({select_sql}) TO '{_sql_path(tmp)}' "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE_BYTES '{ROW_GROUP_BYTES}')")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    return final.stat().st_size


def remove_stale_tmp(table_dir: Path) -> int:
    n = 0
    for e in os.scandir(table_dir) if table_dir.is_dir() else []:
        if e.name.startswith(".") and e.name.endswith(".tmp"):
            try:
                os.unlink(e.path)
                n += 1
            except OSError:
                pass
    return n


def _sql_path(p: Path) -> str:
    return str(p).replace("'", "''")


def sql_file_list(paths: list[Path]) -> str:
    return "[" + ", ".join(f"'{_sql_path(p)}'" for p in paths) + "]"


def _zero_sql(col: Column) -> str:
    """The column type's zero as a typed SQL literal ('' / 0 / 0.0 / false)."""
    z = ZERO[col.type]
    lit = "''" if isinstance(z, str) else ("false" if z is False else repr(z))
    return f"CAST({lit} AS {col.sql_type})"


def select_sql(con, schema: TableSchema, paths: list[Path]) -> str:
    """A SELECT of ``schema``'s columns, in its order, over these segments, matched by name.

    Segments written before a column was added to the table lack it: there it is the type's
    zero, as a missing value is when a row is stored (no NULLs reach a query), instead of a
    query that fails because no file has the column, or NULLs where some lack it."""
    files = sql_file_list(paths)
    have: dict[str, set[str]] = {}
    for fname, col in con.execute(f"SELECT file_name, name FROM parquet_schema({files})").fetchall():
        have.setdefault(col, set()).add(fname)
    nfiles = len({f for fs in have.values() for f in fs})
    parts = []
    for c in schema.columns:
        n = len(have.get(c.name, ()))
        if n == nfiles:
            parts.append(f'"{c.name}"')
        elif n == 0:
            parts.append(f'{_zero_sql(c)} AS "{c.name}"')
        else:
            parts.append(f'COALESCE("{c.name}", {_zero_sql(c)}) AS "{c.name}"')
    return f"SELECT {', '.join(parts)} FROM read_parquet({files}, union_by_name=true)"
