"""Pixie's semantic types: what a number means (a duration, a byte count, a rate), so a
table shows ``5.07 ms`` and ``4 /s`` where the value is 5068120 and 4e-09.

A column of a table has its semantic type from the schema (``latency`` is a duration in
ns, ``resp_body_size`` bytes, ...). Expressions derive theirs with Pixie's inference
rules (Carnot's UDF ``SemanticInferenceRules``):

- ``+``, ``-`` and ``px.abs`` keep the type when both sides have the same one (bytes,
  durations, rates);
- ``/``: a plain number over a duration is a rate per ns (``count / window_ns``), bytes
  over a duration a byte rate per ns; anything else is plain;
- ``*`` and most functions give a plain number; ``px.DurationNanos``, ``px.Bytes`` and
  ``px.Percent`` say what their argument is;
- ``mean``, ``sum``, ``min``, ``max`` and ``any`` keep their column's type, ``count`` is
  plain, ``quantiles`` of durations are duration quantiles (``pluck_float64`` of those is
  a duration again).

Only the table output uses them; ``-o json`` and ``-o csv`` keep the raw values, as
``px run -o json`` does.
"""

from __future__ import annotations

import json
import math
from typing import Any

NONE = ""
DURATION_NS = "ST_DURATION_NS"
BYTES = "ST_BYTES"
PERCENT = "ST_PERCENT"
THROUGHPUT_PER_NS = "ST_THROUGHPUT_PER_NS"
THROUGHPUT_BYTES_PER_NS = "ST_THROUGHPUT_BYTES_PER_NS"
HTTP_RESP_STATUS = "ST_HTTP_RESP_STATUS"
DURATION_NS_QUANTILES = "ST_DURATION_NS_QUANTILES"
QUANTILES = "ST_QUANTILES"

_ADDITIVE = frozenset({DURATION_NS, BYTES, THROUGHPUT_PER_NS, THROUGHPUT_BYTES_PER_NS})
_KEPT_BY_AGG = frozenset({DURATION_NS, BYTES, THROUGHPUT_PER_NS, THROUGHPUT_BYTES_PER_NS, PERCENT})


class SemInt(int):
    """A plain int that remembers its semantic type (``px.DurationNanos(10 * ns_per_s)``).
    Arithmetic on it gives a plain int, as in Pixie, where only the call says what it is."""

    sem: str

    def __new__(cls, v: int, sem: str) -> "SemInt":
        o = super().__new__(cls, v)
        o.sem = sem
        return o


class SemFloat(float):
    sem: str

    def __new__(cls, v: float, sem: str) -> "SemFloat":
        o = super().__new__(cls, v)
        o.sem = sem
        return o


def tag(v: int | float, sem: str) -> int | float:
    """A Python number carrying ``sem``."""
    return SemInt(v, sem) if isinstance(v, int) else SemFloat(v, sem)


def of(v: Any) -> str:
    """The semantic type of an expression or a value ('' for plain ones)."""
    return getattr(v, "sem", NONE) or NONE


def binop(sym: str, a: str, b: str) -> str:
    if sym in ("+", "-"):
        return a if a == b and a in _ADDITIVE else NONE
    if sym == "/":
        if b == DURATION_NS:
            if a == NONE:
                return THROUGHPUT_PER_NS
            if a == BYTES:
                return THROUGHPUT_BYTES_PER_NS
        return NONE
    return NONE


def aggregate(fn: str, sem: str) -> str:
    if fn == "quantiles":
        return DURATION_NS_QUANTILES if sem == DURATION_NS else QUANTILES
    if fn in ("mean", "sum", "min", "max", "any"):
        return sem if sem in _KEPT_BY_AGG else NONE
    return NONE


def absolute(sem: str) -> str:
    return sem if sem in _KEPT_BY_AGG else NONE


def pluck(sem: str) -> str:
    return DURATION_NS if sem == DURATION_NS_QUANTILES else NONE


# ---- showing them -------------------------------------------------------------------------

def _sig(v: float) -> str:
    """Three significant digits, no exponent for the ranges a unit leaves (1 to 999)."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _scaled(v: float, base: float, units: tuple[str, ...]) -> str:
    sign = "-" if v < 0 else ""
    v = abs(v)
    i = 0
    while v >= base and i < len(units) - 1:
        v /= base
        i += 1
    return f"{sign}{_sig(v)} {units[i]}"


def duration(ns: float) -> str:
    return _scaled(ns, 1000.0, ("ns", "µs", "ms", "s"))


def size(n: float) -> str:
    return _scaled(n, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB"))


def rate(per_ns: float) -> str:
    """A rate per ns, shown per second."""
    per_s = per_ns * 1e9
    if per_s and abs(per_s) < 0.01:
        return f"{per_s:.2g} /s"
    return f"{_sig(per_s) if abs(per_s) < 1000 else f'{per_s:,.0f}'} /s"


def show(sem: str, v: Any) -> str | None:
    """``v`` as a person reads it, or None when ``sem`` says nothing about this value."""
    if v is None or isinstance(v, bool):
        return None
    if sem == DURATION_NS_QUANTILES or sem == QUANTILES:
        try:
            d = json.loads(v) if isinstance(v, str) else None
        except ValueError:
            return None
        if not isinstance(d, dict):
            return None
        one = duration if sem == DURATION_NS_QUANTILES else (lambda x: f"{x:.6g}")
        parts = [f"{k}: {one(x)}" for k, x in d.items() if isinstance(x, (int, float)) and not isinstance(x, bool)]
        return ", ".join(parts)
    if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if sem == DURATION_NS:
        return duration(v)
    if sem == BYTES:
        return size(v)
    if sem == THROUGHPUT_PER_NS:
        return rate(v)
    if sem == THROUGHPUT_BYTES_PER_NS:
        return size(v * 1e9) + "/s"
    if sem == PERCENT:
        return f"{v * 100:.2f} %"
    return None


def style(sem: str, name: str, v: Any) -> str:
    """A rich style for the cell: HTTP status and latency colours as ``px run`` gives them
    (2xx green, 4xx/5xx red; a latency over 200 ms yellow, over 400 ms red)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return ""
    if sem == HTTP_RESP_STATUS:
        return "green" if 200 <= v < 300 else "red" if v >= 400 else ""
    if sem == DURATION_NS and name.lower().startswith("latency"):
        return "red" if v > 400e6 else "yellow" if v > 200e6 else "green"
    return ""
