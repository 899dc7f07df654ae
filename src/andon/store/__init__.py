"""Tables shaped like Pixie's, kept in memory briefly and on disk as Parquet segments.

:mod:`.schema` defines the tables; :class:`.store.Store` takes records and writes
segments with retention; :mod:`.control` lets ``andon query`` ask a running agent to
flush; :mod:`.catalog` opens a data directory for queries.
"""

from .schema import TABLES, TableSchema
from .settings import Retention, StoreSettings, parse_duration_ns, parse_size
from .store import Store, StoreError, StoreStats

__all__ = ["TABLES", "TableSchema", "Retention", "StoreSettings", "Store", "StoreError", "StoreStats",
           "parse_duration_ns", "parse_size"]
