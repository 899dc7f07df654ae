"""Queries over andon's tables: a PxL subset compiled to SQL, or SQL, both on DuckDB.

:mod:`.pxl` interprets scripts (parsed with :mod:`ast`, never executed by Python),
:mod:`.plan` turns DataFrames into SQL, :mod:`.functions` is the ``px`` module,
:mod:`.runner` picks what a script shows and runs it over a data directory.
"""

from .plan import QueryError
from .runner import Result, find_script, run_pxl, run_script, run_sql

__all__ = ["QueryError", "Result", "find_script", "run_pxl", "run_script", "run_sql"]
