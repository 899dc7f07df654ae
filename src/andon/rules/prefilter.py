"""Which raw records no rule can match, decided before an Event is built.

For every rule two *necessary* conditions are derived from its resolved condition tree:

``raw``
    a numpy mask over a batch of records (``EVENT_DTYPE``), from the leaves that the record
    header decides exactly: ``evt.type``, ``evt.is_open_read``/``evt.is_open_write`` (the
    open flags argument), ``fd.num`` of the open calls (the return value), ``evt.failed``,
    ``evt.res`` / ``evt.rawres`` (the return value).
``path``
    a predicate on the path of an ``open``/``openat``/``openat2``/``creat``, from the leaves
    on ``fd.name``, ``fd.nameraw`` and ``fd.directory``. It is used only where those fields
    *are* the path: an absolute path that ``normalize`` leaves alone, and for a successful
    open the process known and the event newer than its /proc read (so the table entry is
    the one this event makes; see :func:`path_applies`).

``proc``
    a predicate on the event's process, from the leaves ``container.id != host`` (Falco's
    ``container`` macro) and ``container.id = host``: a function of whether the process is
    in a container. It is used for syscall events of a process already in the table (a
    syscall never moves its process in or out of a container; an exec may).

Every other leaf, and every ``not``, counts as "may be true", so each condition is implied
by the rule's: where it is false the rule cannot match, and the event only has to be
applied to the state tables. ``and``/``or`` keep their meaning. The leaves themselves are
compiled by :func:`andon.rules.compiler.compile_filter`, so operators, constants and
``<NA>`` behave exactly as in the rule.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from ..events.schema import EventType
from ..events.syscalls import BY_NAME
from . import ast
from .types import FieldType

_SYSCALL, _EXEC, _FORK = int(EventType.SYSCALL), int(EventType.EXEC), int(EventType.FORK)
_KIND_TYPES = {"execve": _EXEC, "clone": _FORK, "procexit": int(EventType.EXIT)}

_NR = {n: BY_NAME[n].nr for n in ("open", "openat", "openat2", "creat", "open_by_handle_at")}


def _nr_table(nrs: Any) -> np.ndarray:
    """A lookup table over every u16 nr: ``table[recs["nr"]]`` is a set test without
    np.isin's per-call cost (batches can be small)."""
    t = np.zeros(1 << 16, dtype=bool)
    t[np.asarray(list(nrs), dtype=np.int64)] = True
    return t


# open flags in args[2] (openat, openat2, open_by_handle_at) or args[1] (open): fields._open_flags
_FLAGS_ARG2 = _nr_table([_NR["openat"], _NR["openat2"], _NR["open_by_handle_at"]])
# the calls whose path is fd.name (fields._fdname_from_event, FdTracker._open)
PATH_NRS = frozenset({_NR["open"], _NR["openat"], _NR["openat2"], _NR["creat"]})

_CMP = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

Mask = Callable[[np.ndarray], Any]  # recs -> bool array, or True for "every record"
PathPred = Callable[[str], bool]


def _int(text: str) -> int | None:
    from .compiler import _parse_int

    return _parse_int(text)


def _values(n: ast.Compare) -> list[str] | None:
    if n.mod is not None:
        return None
    if isinstance(n.right, ast.ListValue):
        return [i.text for i in n.right.items]
    if isinstance(n.right, ast.Value):
        return [n.right.text]
    return None


def _num_leaf(n: ast.Compare, value: Callable[[np.ndarray], tuple[Any, Any]]) -> Mask | None:
    """A numeric leaf: ``value(recs) -> (defined, v)``; false where not defined."""
    texts = _values(n)
    if texts is None:
        return None
    nums = [_int(t) for t in texts]
    if any(x is None for x in nums):
        return None
    if n.op in ("in", "intersects") or (n.op == "=" and len(nums) == 1):
        arr = np.array(nums, dtype=np.int64)

        def m(recs: np.ndarray) -> Any:
            ok, v = value(recs)
            return ok & np.isin(v, arr)

        return m
    if n.op in _CMP and len(nums) == 1:
        f, c = _CMP[n.op], nums[0]
        return lambda recs: (lambda ok_v: ok_v[0] & f(ok_v[1], c))(value(recs))
    return None


def _open_flags(recs: np.ndarray) -> tuple[Any, Any]:
    typ, nr = recs["type"], recs["nr"]
    sysc = typ == _SYSCALL
    a2 = sysc & _FLAGS_ARG2[nr]
    a1 = sysc & (nr == _NR["open"])
    args = recs["args"]
    flags = np.where(a2, args[:, 2], args[:, 1]) & 0xFFFFFFFF
    return a2 | a1, flags


def _rawres(recs: np.ndarray) -> tuple[Any, Any]:
    typ = recs["type"]
    return (typ == _SYSCALL) | (typ == _EXEC), recs["ret"]


def _res_leaf(cond: Callable[[Any], Any]) -> Mask:
    """A leaf on evt.rawres / evt.res / evt.failed: decided from ``ret`` for syscalls and
    execve; procexit has none (false); clone's is its args[0], not decided here (true)."""

    def m(recs: np.ndarray) -> Any:
        ok, v = _rawres(recs)
        return (ok & cond(v)) | (recs["type"] == _FORK)

    return m


_OPEN_NEW = _nr_table(_NR[n] for n in ("open", "openat", "openat2", "creat", "open_by_handle_at"))


def _fd_num_open(recs: np.ndarray) -> tuple[Any, Any]:
    """fd.num where the record is an open call (fields._event_fd_num, kind "new")."""
    ok = (recs["type"] == _SYSCALL) & _OPEN_NEW[recs["nr"]]
    ret = recs["ret"]
    return ok, np.where(ret >= 0, ret, -1)


def _type_mask(names: list[str]) -> Mask:
    nrs = _nr_table(BY_NAME[t].nr for t in names if t in BY_NAME)
    kinds = np.zeros(1 << 16, dtype=bool)
    for t in names:
        if t in _KIND_TYPES:
            kinds[_KIND_TYPES[t]] = True

    def m(recs: np.ndarray) -> Any:
        typ = recs["type"]
        return ((typ == _SYSCALL) & nrs[recs["nr"]]) | kinds[typ]

    return m


def raw_leaf(n: Any) -> Mask | None:
    """The exact mask of one leaf from the record header, or None (not decided there)."""
    if not isinstance(n, ast.Compare) or not isinstance(n.left, ast.FieldRef) or n.left.arg is not None:
        return None
    name, op = n.left.name, n.op
    texts = _values(n)
    if texts is None:
        return None
    if name in ("evt.type", "syscall.type") and op in ("=", "in"):
        return _type_mask(texts)
    if name in ("evt.is_open_read", "evt.is_open_write") and op == "=" and texts == ["true"]:
        read = name == "evt.is_open_read"

        def m(recs: np.ndarray) -> Any:
            ok, flags = _open_flags(recs)
            acc = flags & 3
            return ok & ((acc != 1) if read else ((acc == 1) | (acc == 2)))

        return m
    if name == "evt.failed" and op == "=" and texts == ["true"]:
        return _res_leaf(lambda v: v < 0)
    if name == "evt.res" and op == "startswith" and len(texts) == 1 and texts[0].startswith("E"):
        return _res_leaf(lambda v: v < 0)  # an errno name; success is "SUCCESS"
    if name == "evt.res" and op == "=" and texts == ["SUCCESS"]:
        return _res_leaf(lambda v: v >= 0)
    if name == "evt.rawres":
        leaf = _num_leaf(n, _rawres)
        if leaf is None:
            return None
        return lambda recs: leaf(recs) | (recs["type"] == _FORK)
    if name == "fd.num":
        leaf = _num_leaf(n, _fd_num_open)
        if leaf is None:
            return None

        def m(recs: np.ndarray) -> Any:  # other calls' fd.num is not decided here
            ok, _ = _fd_num_open(recs)
            return ~ok | leaf(recs)

        return m
    return None


class _SharedLeaf:
    """One leaf's mask, shared by every rule that has the leaf (macros repeat them: 41 leaves
    of the stable rules are 17 distinct ones), computed once per ``Prefilter.raw`` call."""

    __slots__ = ("fn", "recs", "out")

    def __init__(self, fn: Mask) -> None:
        self.fn = fn
        self.recs: Any = None
        self.out: Any = None

    def __call__(self, recs: np.ndarray) -> Any:
        if recs is not self.recs:
            self.out = self.fn(recs)
            self.recs = recs
        return self.out

    def forget(self) -> None:
        self.recs = self.out = None


def raw_condition(n: Any, leaves: dict[Any, _SharedLeaf] | None = None) -> Mask:
    """A necessary condition of the tree ``n`` on raw records (True: every record).
    ``leaves`` (node -> mask) shares equal leaves between the trees built with it."""
    if isinstance(n, (ast.And, ast.Or)):
        parts = [raw_condition(c, leaves) for c in n.children]
        if isinstance(n, ast.And):
            parts = [p for p in parts if p is not True]
            if not parts:
                return True

            def all_(recs: np.ndarray) -> Any:
                m = parts[0](recs)
                for p in parts[1:]:
                    m = m & p(recs)
                return m

            return all_
        if any(p is True for p in parts):
            return True

        def any_(recs: np.ndarray) -> Any:
            m = parts[0](recs)
            for p in parts[1:]:
                m = m | p(recs)
            return m

        return any_
    if leaves is not None and n in leaves:
        return leaves[n]
    leaf = raw_leaf(n)
    if leaf is None:
        return True
    if leaves is None:
        return leaf
    shared = leaves[n] = _SharedLeaf(leaf)
    return shared


# -- paths ------------------------------------------------------------------------------------


def _dirname(s: str) -> str:
    """fd.directory of a file named ``s`` (fields._fd_directory)."""
    pos = s.rfind("/")
    if pos > 0:
        return s[:pos] if pos < len(s) - 1 else s
    return "/"


class _PathExtractor:
    __slots__ = ("type", "fn")

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.type = FieldType.CHARBUF
        self.fn = fn


class _PathFields:
    """A field registry where fd.name and fd.nameraw are the path (``ev`` is the path) and
    fd.directory is its directory (``as_dir``: the path itself, for an O_DIRECTORY open)."""

    def __init__(self, as_dir: bool) -> None:
        self.as_dir = as_dir

    def lookup(self, name: str, arg: str | None) -> Any:
        if name in ("fd.name", "fd.nameraw") and arg is None:
            return _PathExtractor(lambda p, ctx: p)
        if name == "fd.directory" and arg is None:
            return _PathExtractor((lambda p, ctx: p) if self.as_dir else (lambda p, ctx: _dirname(p)))
        raise KeyError(name)


_PATH_FIELDS = ("fd.name", "fd.nameraw", "fd.directory")


def path_leaf(n: Any) -> PathPred | None:
    if not isinstance(n, ast.Compare) or not isinstance(n.left, ast.FieldRef):
        return None
    if n.left.name not in _PATH_FIELDS or n.left.arg is not None or not isinstance(n.right, (ast.Value, ast.ListValue)):
        return None
    from .compiler import compile_filter

    try:
        as_file = compile_filter(n, fields=_PathFields(False))
        as_dir = compile_filter(n, fields=_PathFields(True))
    except Exception:  # noqa: BLE001 - a leaf we cannot mirror is "may be true"
        return None
    if n.left.name == "fd.directory":
        return lambda p: as_file(p, None) or as_dir(p, None)
    return lambda p: as_file(p, None)


def path_condition(n: Any) -> PathPred | None:
    """A necessary condition of ``n`` on an open's path (None: every path)."""
    if isinstance(n, (ast.And, ast.Or)):
        parts = [path_condition(c) for c in n.children]
        if isinstance(n, ast.And):
            ps = tuple(p for p in parts if p is not None)
            if not ps:
                return None
            return lambda path: all(p(path) for p in ps)
        if any(p is None for p in parts):
            return None
        ps = tuple(parts)  # type: ignore[arg-type]
        return lambda path: any(p(path) for p in ps)  # type: ignore[misc]
    return path_leaf(n)


# -- the process ---------------------------------------------------------------------------

ProcPred = Callable[[bool], bool]  # in a container? -> may be true


def proc_leaf(n: Any) -> ProcPred | None:
    """``container.id != host`` / ``container.id = host`` as a function of "in a container"
    (fields._container_id: "host" exactly when the process has no container)."""
    if not isinstance(n, ast.Compare) or not isinstance(n.left, ast.FieldRef) or n.left.arg is not None:
        return None
    if n.left.name != "container.id" or n.mod is not None or not isinstance(n.right, ast.Value):
        return None
    if n.right.text != "host":
        return None
    if n.op == "!=":
        return lambda in_container: in_container
    if n.op == "=":
        return lambda in_container: not in_container
    return None


def proc_condition(n: Any) -> ProcPred | None:
    """A necessary condition of ``n`` on the event's process (None: every process)."""
    if isinstance(n, (ast.And, ast.Or)):
        parts = [proc_condition(c) for c in n.children]
        if isinstance(n, ast.And):
            ps = tuple(p for p in parts if p is not None)
            if not ps:
                return None
            return lambda c: all(p(c) for p in ps)
        if any(p is None for p in parts):
            return None
        ps = tuple(parts)  # type: ignore[arg-type]
        return lambda c: any(p(c) for p in ps)  # type: ignore[misc]
    return proc_leaf(n)


def clean_path(path: str) -> bool:
    """True when fd.name of an open of ``path`` is ``path`` itself (fd.normalize keeps it)."""
    return path[:1] == "/" and "//" not in path and "/." not in path and not path.endswith("/")


class Prefilter:
    """The necessary conditions of a list of rules (an engine's), by event type."""

    def __init__(self, rules: list[Any], index: dict[str, tuple[Any, ...]]) -> None:
        self.rules = list(rules)
        pos = {id(r): i for i, r in enumerate(self.rules)}
        self._leaves: dict[Any, _SharedLeaf] = {}
        self._raw = [raw_condition(r.filter.node, self._leaves) for r in self.rules]
        self._path = [path_condition(r.filter.node) for r in self.rules]
        self._proc = [proc_condition(r.filter.node) for r in self.rules]
        self.has_proc = any(p is not None for p in self._proc)
        # per event type: (rule position, path predicate or None) in engine order
        self.by_type = {t: tuple((pos[id(r)], self._path[pos[id(r)]]) for r in rs) for t, rs in index.items()}
        # per event type: the rows of ``raw``'s answer that ``header_bits`` packs, in order
        self._rows = {t: np.array([r for r, _ in entries], dtype=np.intp) for t, entries in self.by_type.items()}
        # (type, path, header-stage bits of its rules) -> may match (``path_may``)
        self.path_cache: dict[tuple[str, str, int], bool] = {}
        self._out_cache: dict[tuple[str, str, int], bool] = {}  # path_rules_out
        self._proc_cache: dict[tuple[str, int, bool], int] = {}  # proc_bits

    def raw(self, recs: np.ndarray) -> np.ndarray:
        """(rules, records) bool array: rule i may match record j as far as the header says."""
        n = len(recs)
        out = np.ones((len(self.rules), n), dtype=bool)
        try:
            for i, m in enumerate(self._raw):
                if m is not True:
                    out[i] = m(recs)
        finally:
            for leaf in self._leaves.values():  # shared within this call only
                leaf.forget()
        return out

    def header_bits(self, evtype: str, may: np.ndarray, cols: np.ndarray) -> list[int]:
        """For the records ``cols`` of a ``raw`` answer ``may``: which of ``evtype``'s rules
        passed the header stage, bit j for the j-th entry of ``by_type[evtype]`` (the
        ``bits`` of :meth:`path_may`). ``evtype`` must be in ``by_type``."""
        rows = self._rows[evtype]
        sub = may[rows][:, cols]
        out: list[int] | None = None
        for c in range(0, len(rows), _WORD):  # 62 rules per int64 word, for any number of rules
            part = sub[c : c + _WORD].astype(np.int64)
            vals = (np.left_shift(1, np.arange(len(part), dtype=np.int64)) @ part).tolist()
            out = vals if out is None else [a | (b << c) for a, b in zip(out, vals)]
        return out if out is not None else [0] * len(cols)

    def path_rules_out(self, evtype: str, path: str, bits: int) -> bool:
        """True when the path stage rules out every rule of ``evtype`` for an open of
        ``path``: the path is fd.name (:func:`clean_path`) and :meth:`path_may` says no.
        The same pure function of its arguments, cached."""
        key = (evtype, path, bits)
        out = self._out_cache.get(key)
        if out is None:
            out = clean_path(path) and not self.path_may(evtype, path, bits)
            if len(self._out_cache) >= 1 << 16:
                self._out_cache.clear()
            self._out_cache[key] = out
        return out

    def path_may(self, evtype: str, path: str, bits: int) -> bool:
        """The path stage: may a rule of ``evtype`` whose header stage passed (``bits``, see
        :meth:`header_bits`) match an open of ``path``? Only where the path is fd.name (see
        :func:`clean_path` and the module docstring). A pure function of its arguments,
        cached."""
        key = (evtype, path, bits)
        hit = self.path_cache.get(key)
        if hit is None:
            entries = self.by_type.get(evtype)
            if entries is None:
                return True
            hit = any((bits >> j) & 1 and (pred is None or pred(path)) for j, (_r, pred) in enumerate(entries))
            if len(self.path_cache) >= 1 << 16:
                self.path_cache.clear()
            self.path_cache[key] = hit
        return hit

    def proc_bits(self, evtype: str, bits: int, in_container: bool) -> int:
        """``bits`` (see :meth:`header_bits`) less the rules of ``evtype`` whose process stage
        is false for a process in a container (``in_container``) or on the host. Cached."""
        key = (evtype, bits, in_container)
        out = self._proc_cache.get(key)
        if out is None:
            out = bits
            for j, (r, _pred) in enumerate(self.by_type.get(evtype, ())):
                pred = self._proc[r]
                if (bits >> j) & 1 and pred is not None and not pred(in_container):
                    out &= ~(1 << j)
            if len(self._proc_cache) >= 1 << 16:
                self._proc_cache.clear()
            self._proc_cache[key] = out
        return out


_WORD = 62
