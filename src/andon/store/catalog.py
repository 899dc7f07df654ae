"""A data directory opened for queries: one DuckDB view per table over its Parquet segments.

Read-only: it never changes the directory, so it is safe to use while the agent writes
(segments appear and disappear whole, by rename and unlink; a query that meets a segment
merged away since the listing runs again on a new one: :func:`with_catalog`). A table with no segments is
an empty view with the table's columns, so queries on it return no rows, not an error.
Damaged files are left out with a warning (:attr:`Catalog.warnings`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from ..errors import AndonError
from . import segments as seg
from .schema import TABLES, TableSchema

log = logging.getLogger("andon.store")
T = TypeVar("T")

# DuckDB's words when a file of a query's list is gone: the running agent merged or deleted a
# segment between the Catalog's listing and the read. The first when it is gone before the
# query binds its files, the second when it goes between that and the read.
VANISHED = "No files found that match the pattern"
VANISHED_OPEN = ("Cannot open file", "No such file or directory")


def vanished(err: BaseException) -> bool:
    """Whether an error says a listed segment file is gone."""
    msg = str(err)
    return VANISHED in msg or all(w in msg for w in VANISHED_OPEN)


def with_catalog(data_dir: Path, fn: Callable[[Catalog], T], attempts: int = 3) -> T:
    """``fn(catalog)`` on a Catalog of ``data_dir``, closed after. A segment that the running
    agent merged away (or retention deleted) between the listing and the read makes the
    query fail (:func:`vanished`); then it runs again on a fresh listing, up to
    ``attempts`` times in all."""
    for attempt in range(attempts):
        catalog = None
        try:
            catalog = Catalog(data_dir)
            return fn(catalog)
        except (duckdb.Error, AndonError) as e:
            if not vanished(e) or attempt == attempts - 1:
                raise
            log.info("a segment went while reading %s (a merge): reading again", data_dir)
        finally:
            if catalog is not None:
                catalog.close()
    raise AssertionError("unreachable")


class Catalog:
    def __init__(self, data_dir: Path, tables: dict[str, TableSchema] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.tables = dict(tables or TABLES)
        self.warnings: list[str] = []
        self.con = duckdb.connect()
        self.files: dict[str, list[seg.Segment]] = {}
        for name in self.tables:
            self._open(name)

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s", msg)

    def _open(self, name: str) -> None:
        good, bad = seg.list_segments(self.data_dir / name)
        for p, why in bad:
            self._warn(f"skipping damaged segment {p}: {why}")
        good = self._readable(name, good)
        self.files[name] = good
        self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {self.source_sql(name)}')

    def _readable(self, name: str, good: list[seg.Segment]) -> list[seg.Segment]:
        """Leave out files DuckDB cannot read although their framing looked right."""
        if not good:
            return good
        try:
            self.con.execute(f"SELECT count(*) FROM parquet_metadata({seg.sql_file_list([s.path for s in good])})")
            return good
        except duckdb.Error:
            pass
        out = []
        for s in good:
            try:
                self.con.execute(f"SELECT count(*) FROM read_parquet({seg.sql_file_list([s.path])})").fetchone()
                out.append(s)
            except duckdb.Error as e:
                if vanished(e):
                    raise  # merged away since the listing, not damaged: with_catalog lists again
                self._warn(f"skipping damaged segment {s.path}: {str(e).splitlines()[0]}")
        return out

    def source_sql(self, name: str, since_ns: int | None = None, until_ns: int | None = None) -> str:
        """A SELECT of the table's rows; with a time range, only the segments that overlap it are read."""
        schema = self.tables[name]
        files = [s.path for s in self.files.get(name, ())
                 if (since_ns is None or s.tmax >= since_ns) and (until_ns is None or s.tmin <= until_ns)]
        if not files:
            typed = ", ".join(f'NULL::{c.sql_type} AS "{c.name}"' for c in schema.columns)
            return f"SELECT {typed} WHERE false"
        return seg.select_sql(self.con, schema, files)

    def rows_sql(self, name: str, since_ns: int | None = None, until_ns: int | None = None) -> str:
        """A SELECT of the table's rows with ``time_`` in [since_ns, until_ns) (None: unbounded),
        reading only the segments that overlap that range."""
        conds = []
        if since_ns is not None:
            conds.append(f'"time_" >= {int(since_ns)}')
        if until_ns is not None:
            conds.append(f'"time_" < {int(until_ns)}')
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return f"SELECT * FROM ({self.source_sql(name, since_ns, until_ns)}) AS src{where}"

    def row_count(self, name: str) -> int:
        return sum(s.rows for s in self.files.get(name, ()))

    def close(self) -> None:
        self.con.close()
