"""Condition tree -> a fast ``Filter(ev, ctx) -> bool``, with Falco's semantics.

Two steps, as in Falco's rule loader:

``resolve(node, macros, lists)``
    Replaces macro references by the macros' trees (``UndefinedMacroError`` for an unknown
    name, ``MacroCycleError`` for a loop) and expands list names. Falco expands lists by
    *text substitution* before parsing (``rule_loader_compiler.cpp: resolve_list``): a list's
    name bounded by blanks, ``(``, ``)``, ``,`` or ``=`` becomes its items. On the tree that means:

    * a bare item of a ``(...)`` list that names a list becomes that list's items, recursively
      (lists may hold lists); quoted items are never list names (Falco's delimiters exclude quotes);
    * a bare list name right after ``in`` / ``intersects`` / ``pmatch`` or a modifier
      (``in my_list``) becomes the list. (Falco's text substitution only gets this right for a
      one-item list and fails to parse otherwise; we accept any length.)
    * a bare value elsewhere (``proc.name = my_list``) is replaced by the list's single item,
      as the substitution would; a list of any other length there is an error, as in Falco.

    An item that is itself quoted text (``'"/usr/bin/x y"'`` in YAML) is unquoted, as the
    parser would do after substitution.

``compile_filter(node, fields=FIELDS, all_types=None) -> Filter``
    Builds nested closures: no tree walking per event, ``and``/``or`` short-circuit, constants
    converted to the field's type once (``RuleError`` naming field and value when they do
    not convert), regexes and globs compiled once, ``in`` lists as frozensets.

Semantics, from libsinsp (``sinsp_filtercheck.cpp``, ``filter_compare.cpp``):

* A field without a value (``None``, Falco's ``<NA>``) makes *every* check false, including
  ``!=`` and ``exists``: ``not proc.name = x`` is therefore true on ``<NA>``.
* A ``Multi`` value (``fd.ip``: both ends of a socket) matches when any element matches,
  except ``!=``, which needs every element to differ (``sinsp_filter_check_fd::compare_ip``).
  An empty ``Multi`` is ``<NA>``.
* Operators allowed per type follow ``flt_is_comparable``: strings take everything but
  ``bcontains``/``bstartswith``; byte buffers take ``= != contains startswith endswith in
  intersects bcontains bstartswith``; numbers take ``= != < <= > >= in intersects``; bools
  and IPs take ``= != in intersects``.
* Numbers are decimal only (``sscanf("%d")``); negative values wrap for unsigned types;
  ``PORT`` also takes service names (``ssh``); bools are ``true``/``false``; ``IPNET`` values
  must be CIDRs, ``IPADDR`` values plain addresses (libsinsp rejects a CIDR there).
* ``glob``/``iglob`` are ``fnmatch(3)`` without flags (``*`` crosses ``/``); ``regex`` is a
  full match (RE2 ``ANCHOR_BOTH``); ``pmatch`` is a path-prefix match on whole ``/``
  components, a component may hold glob characters; ``icontains``/``iglob`` fold ASCII case.
* ``bcontains``/``bstartswith`` take hex (``48545450``); ``contains`` on a byte buffer takes text.
* ``oneof``/``anyof``/``allof``: exactly one / at least one / every item matches; an empty
  list never matches.
* Transformers apply to a present value only: ``tolower``/``toupper`` (ASCII), ``b64``
  (decodes; undecodable input is ``<NA>``), ``basename``, ``len`` (string length, or the
  number of values of a ``Multi``), ``join(sep, (...))`` and ``concat(...)`` (``<NA>`` if
  any part is). ``val(field)`` compares against another field of the same event; both
  must have the same type, and it is not allowed with ``pmatch``, ``regex`` or IPNET fields.

``Filter.evttypes`` follows libsinsp's event-code resolver (``filter/ppm_codes.cpp``): a leaf
``evt.type = X`` / ``in (...)`` / ``!=`` gives its set, ``and`` intersects, ``or`` unions,
``not`` is pushed down to the leaves (De Morgan) and complements only leaves on ``evt.type``;
any other check matches every type. ``evt.num = 0`` and friends are decided statically as in
libsinsp. The result is ``None`` when it is every type in ``all_types``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import operator
import re
import socket
from functools import lru_cache
from typing import Any, Callable, Iterable

from andon.errors import MacroCycleError, RuleError, RuleSyntaxError, UndefinedMacroError
from andon.rules import ast
from andon.rules.parser import unescape
from andon.rules.types import FieldType, Multi

__all__ = ["Filter", "compile_filter", "resolve", "default_event_types"]

Getter = Callable[[Any, Any], Any]
Pred = Callable[[Any], bool]


# == resolve =====================================================================================


def resolve(node: ast.Node, macros: dict[str, ast.Node], lists: dict[str, list[str]]) -> ast.Node:
    """Expand macros and lists (see the module docstring). Returns a new tree."""
    return _Resolver(macros, lists).node(node, ())


class _Resolver:
    def __init__(self, macros: dict[str, ast.Node], lists: dict[str, list[str]]) -> None:
        self.macros = macros
        self.lists = lists

    def node(self, n: Any, path: tuple[str, ...]) -> Any:
        if isinstance(n, ast.And):
            return ast.And(tuple(self.node(c, path) for c in n.children), pos=n.pos)
        if isinstance(n, ast.Or):
            return ast.Or(tuple(self.node(c, path) for c in n.children), pos=n.pos)
        if isinstance(n, ast.Not):
            return ast.Not(self.node(n.child, path), pos=n.pos)
        if isinstance(n, ast.Identifier):
            name = n.name
            if name not in self.macros or self.macros[name] is None:
                raise UndefinedMacroError(f"undefined macro '{name}' used in the condition", n.pos)
            if name in path:
                loop = " -> ".join(path[path.index(name) :] + (name,))
                raise MacroCycleError(f"reference loop in macro '{name}': {loop}", n.pos)
            return self.node(self.macros[name], path + (name,))
        if isinstance(n, ast.Compare):
            return ast.Compare(n.left, n.op, self.right(n), n.mod, pos=n.pos)
        return n  # Exists

    def right(self, n: ast.Compare) -> Any:
        r = n.right
        listy = n.op in ast.LIST_OPERATORS or n.mod is not None
        if isinstance(r, ast.ListValue):
            return ast.ListValue(self.items(r.items), pos=r.pos)
        if isinstance(r, ast.Value) and not r.quoted and r.text in self.lists:
            items = self.items((r,))
            if listy:
                return ast.ListValue(items, pos=r.pos)
            if len(items) == 1:
                return ast.Value(items[0].text, items[0].quoted, pos=r.pos)
            raise RuleError(
                f"list '{r.text}' has {len(items)} items and cannot be the value of '{n.op}'; "
                f"use 'in ({r.text})' or a single value",
                r.pos,
            )
        return r

    def items(self, items: Iterable[ast.Value], seen: tuple[str, ...] = ()) -> tuple[ast.Value, ...]:
        out: list[ast.Value] = []
        for v in items:
            if v.quoted or v.text not in self.lists or v.text in seen:
                out.append(v)
                continue
            sub = tuple(_list_item(text, v.pos) for text in self.lists[v.text])
            out.extend(self.items(sub, seen + (v.text,)))
        return tuple(out)


def _list_item(text: Any, pos: int) -> ast.Value:
    """A list item from YAML: quoted text is unquoted, as Falco's parser would after substitution."""
    if not isinstance(text, str):  # YAML numbers and booleans: the text Falco would have read
        text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    if len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]:
        try:
            return ast.Value(unescape(text), True, pos=pos)
        except RuleSyntaxError:
            pass
    return ast.Value(text, False, pos=pos)


# == Filter =====================================================================================


class Filter:
    """A compiled condition: ``Filter(ev, ctx) -> bool``.

    ``evttypes``: frozenset of event type names the condition can match, or ``None`` for all.
    ``fields``: names of the fields it reads. ``node``: the (resolved) tree it came from.
    """

    __slots__ = ("_fn", "evttypes", "fields", "node")

    def __init__(self, fn: Callable[[Any, Any], bool], evttypes: frozenset[str] | None,
                 fields: frozenset[str], node: ast.Node) -> None:  # fmt: skip
        self._fn = fn
        self.evttypes = evttypes
        self.fields = fields
        self.node = node

    def __call__(self, ev: Any, ctx: Any) -> bool:
        return self._fn(ev, ctx)

    def __repr__(self) -> str:
        return f"Filter({ast.to_text(self.node)!r})"


def default_event_types() -> frozenset[str]:
    """Every event type andon produces: its syscalls plus execve, clone and procexit."""
    from andon.events.syscalls import SPECS

    return frozenset(s.name for s in SPECS) | {"execve", "clone", "procexit"}


def compile_filter(node: ast.Node, fields: Any = None, all_types: Iterable[str] | None = None) -> Filter:
    """Compile a resolved tree. ``fields`` has ``lookup(name, arg) -> Extractor`` (default: FIELDS)."""
    if fields is None:
        from andon.rules.fields import FIELDS  # lazily: fields imports heavier state

        fields = FIELDS
    universe = frozenset(all_types) if all_types is not None else default_event_types()
    c = _Compiler(fields)
    fn = c.node(node)
    types = _evttypes(node, False, universe)
    return Filter(fn, None if types >= universe else types, frozenset(c.names), node)


# == evttypes ====================================================================================


def _evttypes(n: Any, neg: bool, universe: frozenset[str]) -> frozenset[str]:
    if isinstance(n, ast.And):
        sets = [_evttypes(c, neg, universe) for c in n.children]
        return frozenset().union(*sets) if neg else universe.intersection(*sets)
    if isinstance(n, ast.Or):
        sets = [_evttypes(c, neg, universe) for c in n.children]
        return universe.intersection(*sets) if neg else frozenset().union(*sets)
    if isinstance(n, ast.Not):
        return _evttypes(n.child, not neg, universe)
    if isinstance(n, ast.Exists):
        if _is_evttype_operand(n.left):
            return frozenset() if neg else universe
        return universe
    if isinstance(n, ast.Compare):
        inv = _evt_num_invariant(n)
        if inv is not None:
            s = universe if inv else frozenset()
            return universe - s if neg else s
        if n.op in ("=", "!=", "in") and n.mod is None and _is_evttype_operand(n.left):
            r = n.right
            if isinstance(r, ast.Value):
                s = frozenset({r.text}) & universe
            elif isinstance(r, ast.ListValue):
                s = frozenset(i.text for i in r.items) & universe
            else:
                raise RuleError("evt.type cannot be compared with another field or a transformer "
                                "(Falco's event type index does not support it)", n.pos)  # fmt: skip
            if neg:
                s = universe - s
            if n.op == "!=":
                s = universe - s
            return s
        return universe
    return universe  # an unresolved identifier


def _is_evttype_operand(op: Any) -> bool:
    """True for a bare evt.type / syscall.type; a transformer around one is an error, as in libsinsp."""
    if isinstance(op, ast.FieldRef):
        return op.name in ("evt.type", "syscall.type") and op.arg is None
    if isinstance(op, ast.Transformer):
        for a in ast.walk(op):
            if isinstance(a, ast.FieldRef) and a.name in ("evt.type", "syscall.type") and a.arg is None:
                raise RuleError("evt.type cannot be used inside a transformer "
                                "(Falco's event type index does not support it)", op.pos)  # fmt: skip
    return False


def _evt_num_invariant(n: ast.Compare) -> bool | None:
    """evt.num starts at 1: True = always true, False = never, None = undecided (libsinsp ppm_codes)."""
    left = n.left
    if not (isinstance(left, ast.FieldRef) and left.name == "evt.num" and left.arg is None) or n.mod:
        return None
    if n.op == "in":
        if not isinstance(n.right, ast.ListValue):
            return None
        if all(_parse_u64(i.text) == 0 for i in n.right.items):
            return False
        return None
    if not isinstance(n.right, ast.Value):
        return None
    v = _parse_u64(n.right.text)
    if v is None:
        return None
    table = {"=": (v == 0, False), "!=": (v == 0, True), "<": (v <= 1, False),
             "<=": (v == 0, False), ">": (v == 0, True), ">=": (v <= 1, True)}  # fmt: skip
    if n.op in table and table[n.op][0]:
        return table[n.op][1]
    return None


_RE_DEC = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _parse_int(text: str) -> int | None:
    """sscanf("%d%c") == 1: optional leading blanks, sign, digits, and nothing after."""
    m = _RE_DEC.fullmatch(text)
    return int(m.group(1)) if m else None


def _parse_u64(text: str) -> int | None:
    v = _parse_int(text)
    return None if v is None else v % (1 << 64)


# == compile ======================================================================================

_NUMERIC_OPS = frozenset({"=", "!=", "<", "<=", ">", ">=", "in", "intersects"})
_EQ_OPS = frozenset({"=", "!=", "in", "intersects"})
_STRING_OPS = frozenset({"=", "!=", "<", "<=", ">", ">=", "contains", "icontains", "startswith", "endswith",
                         "glob", "iglob", "regex", "in", "intersects", "pmatch"})  # fmt: skip
_BYTES_OPS = frozenset({"=", "!=", "contains", "startswith", "endswith", "in", "intersects",
                        "bcontains", "bstartswith"})  # fmt: skip
_IP_TYPES = (FieldType.IPADDR, FieldType.IPNET)

_UNSIGNED_BITS = {FieldType.UINT64: 64, FieldType.ABSTIME: 64, FieldType.RELTIME: 64,
                  FieldType.UINT32: 32, FieldType.UINT16: 16}  # fmt: skip
_SIGNED_BITS = {FieldType.INT64: 64, FieldType.INT32: 32}


def _allowed_ops(t: FieldType) -> frozenset[str]:
    if t is FieldType.CHARBUF:
        return _STRING_OPS
    if t is FieldType.BYTEBUF:
        return _BYTES_OPS
    if t is FieldType.BOOL or t in _IP_TYPES:
        return _EQ_OPS
    return _NUMERIC_OPS


def _kind(t: FieldType) -> str:
    if t is FieldType.CHARBUF:
        return "string"
    if t is FieldType.BYTEBUF:
        return "byte buffer"
    if t in _IP_TYPES:
        return "IP address and network"
    if t is FieldType.BOOL:
        return "boolean"
    return "numeric"


_CMP = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _ascii_lower(s: str) -> str:
    return s.lower() if s.isascii() else s.translate(_LOWER)


def _ascii_upper(s: str) -> str:
    return s.upper() if s.isascii() else s.translate(_UPPER)


@lru_cache(maxsize=4096)
def _ip(v: Any) -> Any:
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


def _norm_ip(v: Any) -> Any:
    if v is None:
        return None
    if v.__class__ is Multi:
        return Multi(x if isinstance(x, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else _ip(x) for x in v)
    if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return v
    return _ip(v)


def _to_text(v: Any) -> str:
    if v.__class__ is str:
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


class _Compiler:
    def __init__(self, fields: Any) -> None:
        self.fields = fields
        self.names: set[str] = set()

    # -- boolean structure ------------------------------------------------------------------

    def node(self, n: Any) -> Callable[[Any, Any], bool]:
        if isinstance(n, ast.And):
            return _all([self.node(c) for c in n.children])
        if isinstance(n, ast.Or):
            return _any([self.node(c) for c in n.children])
        if isinstance(n, ast.Not):
            f = self.node(n.child)
            return lambda ev, ctx: not f(ev, ctx)
        if isinstance(n, ast.Exists):
            get, _t, _label = self.operand(n.left)

            def exists(ev: Any, ctx: Any) -> bool:
                v = get(ev, ctx)
                return v is not None and (v.__class__ is not Multi or len(v) > 0)

            return exists
        if isinstance(n, ast.Compare):
            return self.compare(n)
        if isinstance(n, ast.Identifier):
            raise UndefinedMacroError(f"undefined macro '{n.name}' used in the condition", n.pos)
        raise TypeError(f"not a condition node: {n!r}")

    # -- operands ----------------------------------------------------------------------------

    def operand(self, n: Any) -> tuple[Getter, FieldType, str]:
        """(getter, type, label) for a field or transformer."""
        if isinstance(n, ast.FieldRef):
            try:
                ext = self.fields.lookup(n.name, n.arg)
            except RuleError as e:
                if e.pos is None:
                    e.pos = n.pos
                raise
            self.names.add(n.name)
            label = n.name if n.arg is None else f"{n.name}[{n.arg}]"
            t = ext.type
            fn = getattr(ext, "fn", ext)  # the plain function: no Extractor.__call__ per evaluation
            if t in _IP_TYPES:
                return (lambda ev, ctx: _norm_ip(fn(ev, ctx))), t, label
            return fn, t, label
        if isinstance(n, ast.Transformer):
            return self.transformer(n)
        raise RuleError(f"expected a field or a transformer, found {ast.to_text(n)!r}", getattr(n, "pos", None))

    def transformer(self, n: ast.Transformer) -> tuple[Getter, FieldType, str]:
        name = n.name
        if name in ("join", "concat"):
            return self.multivalue(n)
        if name == "getopt":
            raise RuleError("the getopt() transformer is not supported by andon", n.pos)
        if n.arg is not None:
            raise RuleError(f"transformer '{name}' does not take a field argument", n.pos)
        if len(n.args) != 1 or not isinstance(n.args[0], (ast.FieldRef, ast.Transformer)):
            raise RuleError(f"transformer '{name}' takes exactly one field or transformer", n.pos)
        inner, t, label = self.operand(n.args[0])
        label = f"{name}({label})"
        ok = {
            "tolower": (FieldType.CHARBUF,),
            "toupper": (FieldType.CHARBUF,),
            "basename": (FieldType.CHARBUF,),
            "b64": (FieldType.CHARBUF, FieldType.BYTEBUF),
            "len": (FieldType.CHARBUF, FieldType.BYTEBUF),
        }[name]
        if t not in ok:
            raise RuleError(f"transformer '{name}' does not apply to {t.value} values ({label})", n.pos)
        if name == "len":

            def length(ev: Any, ctx: Any) -> Any:
                v = inner(ev, ctx)
                if v is None:
                    return None
                if v.__class__ is Multi:
                    return len(v)
                if v.__class__ is str:
                    i = v.find("\0")  # strnlen
                    return len(v) if i < 0 else i
                return len(v)

            return length, FieldType.UINT64, label
        f: Callable[[Any], Any] = {
            "tolower": _ascii_lower,
            "toupper": _ascii_upper,
            "basename": lambda s: s[s.rfind("/") + 1 :],
            "b64": _b64_text if t is FieldType.CHARBUF else _b64_bytes,
        }[name]

        def transform(ev: Any, ctx: Any) -> Any:
            v = inner(ev, ctx)
            if v is None:
                return None
            if v.__class__ is Multi:
                out = [f(x) for x in v]
                return None if None in out else Multi(out)
            return f(v)

        return transform, t, label

    def multivalue(self, n: ast.Transformer) -> tuple[Getter, FieldType, str]:
        if n.arg is not None:
            raise RuleError(f"transformer '{n.name}' does not take a field argument", n.pos)
        if n.name == "join":
            if len(n.args) != 2 or not isinstance(n.args[1], ast.TransformerList):
                raise RuleError("join() takes a separator and a list: join(\"-\", (fd.name, proc.name))", n.pos)
            sep = self.part(n.args[0])
            parts = [self.part(a) for a in n.args[1].items]

            def join(ev: Any, ctx: Any) -> Any:
                s = sep(ev, ctx)
                if s is None:
                    return None
                out: list[str] = []
                for p in parts:
                    v = p(ev, ctx)
                    if v is None:
                        return None
                    if v.__class__ is Multi:
                        out.extend(_to_text(x) for x in v)
                    else:
                        out.append(_to_text(v))
                return _to_text(s).join(out)

            return join, FieldType.CHARBUF, "join(...)"
        if len(n.args) < 2 or any(isinstance(a, ast.TransformerList) for a in n.args):
            raise RuleError("concat() takes at least two strings or string fields", n.pos)
        parts = [self.part(a, strings_only=True) for a in n.args]

        def concat(ev: Any, ctx: Any) -> Any:
            out = []
            for p in parts:
                v = p(ev, ctx)
                if v is None or (v.__class__ is Multi and not v):
                    return None
                out.append(_to_text(v[0] if v.__class__ is Multi else v))
            return "".join(out)

        return concat, FieldType.CHARBUF, "concat(...)"

    def part(self, a: Any, strings_only: bool = False) -> Getter:
        if isinstance(a, ast.Value):
            text = a.text
            return lambda ev, ctx: text
        if isinstance(a, ast.TransformerList):
            raise RuleError("a '(...)' list is not allowed here", a.pos)
        get, t, label = self.operand(a)
        if strings_only and t is not FieldType.CHARBUF:
            raise RuleError(f"concat() arguments must be strings; {label} is {t.value}", a.pos)
        return get

    # -- checks -------------------------------------------------------------------------------

    def compare(self, n: ast.Compare) -> Callable[[Any, Any], bool]:
        get, t, label = self.operand(n.left)
        op, mod = n.op, n.mod
        if op not in _allowed_ops(t):
            raise RuleError(f"operator '{op}' is not supported for {_kind(t)} fields ({label})", n.pos)
        right = n.right
        if isinstance(right, (ast.FieldRef, ast.Transformer)):
            return self.compare_fields(n, get, t, label)
        if mod is not None:
            texts = [i.text for i in right.items] if isinstance(right, ast.ListValue) else [right.text]
            if t in _IP_TYPES and op != "!=":
                op = "="  # libsinsp: network types only compare for equality under a modifier
            preds = [_scalar_pred(op, self.convert(x, t, op, label, right.pos), t) for x in texts]
            return _check(get, _modifier_pred(mod, preds), False)
        if isinstance(right, ast.ListValue):
            if op not in ast.LIST_OPERATORS:
                raise RuleError(f"a '(...)' list is only allowed after in, intersects or pmatch, not '{op}'", right.pos)
            texts = [i.text for i in right.items]
        else:
            texts = [right.text]
        if op in ("in", "intersects"):
            values = [self.convert(x, t, op, label, right.pos) for x in texts]
            if t is FieldType.IPNET:
                nets = tuple(values)
                pred: Pred = lambda v: any(v in net for net in nets)  # noqa: E731
            else:
                members = frozenset(values)
                pred = members.__contains__
            return _check(get, pred, False)
        if op == "pmatch":
            return _check(get, _PathPrefix(texts).match, False)
        value = self.convert(texts[0], t, op, label, right.pos)
        if op == "!=":
            return _check(get, _scalar_pred("=", value, t), True)
        return _check(get, _scalar_pred(op, value, t), False)

    def compare_fields(self, n: ast.Compare, get: Getter, t: FieldType, label: str) -> Callable[[Any, Any], bool]:
        op = n.op
        if op in ("pmatch", "regex"):
            raise RuleError(f"operator '{op}' does not take a field on the right-hand side", n.right.pos)
        if t is FieldType.IPNET:
            raise RuleError(f"{label} is an IP network field and cannot be compared with another field", n.pos)
        rget, rt, rlabel = self.operand(n.right)
        if rt is not t:
            raise RuleError(f"{label} is {t.value} but {rlabel} is {rt.value}: "
                            "both sides of a field comparison need the same type", n.pos)  # fmt: skip
        negate = op == "!="
        base = "=" if op in ("!=", "in", "intersects") else op
        fn = _runtime_binop(base, t)

        def check(ev: Any, ctx: Any) -> bool:
            v = get(ev, ctx)
            if v is None:
                return False
            r = rget(ev, ctx)
            if r is None:
                return False
            if r.__class__ is Multi:
                if not r:
                    return False
                if op in ("in", "intersects"):
                    pred: Pred = lambda x: any(fn(x, y) for y in r)  # noqa: E731
                else:
                    r0 = r[0]  # libsinsp compares with the first value
                    pred = lambda x: fn(x, r0)  # noqa: E731
            else:
                pred = lambda x: fn(x, r)  # noqa: E731
            if v.__class__ is Multi:
                if not v:
                    return False
                hit = any(map(pred, v))
            else:
                hit = pred(v)
            return not hit if negate else hit

        return check

    # -- constants -----------------------------------------------------------------------------

    def convert(self, text: str, t: FieldType, op: str, label: str, pos: int) -> Any:
        """A right-hand constant as the value the operator compares with."""

        def bad(why: str) -> RuleError:
            return RuleError(f"invalid value {text!r} for {label} ({t.value}): {why}", pos)

        if "\0" in text:
            raise bad("a value cannot contain a NUL byte")
        if op in ("bcontains", "bstartswith"):
            if len(text) % 2 or not re.fullmatch(r"[0-9a-fA-F]*", text):
                raise bad(f"'{op}' takes hex bytes such as 48545450")
            return binascii.unhexlify(text)
        if t is FieldType.CHARBUF:
            if op == "regex":
                try:
                    return re.compile(text)
                except re.error as e:
                    raise bad(f"invalid regex pattern: {e}") from None
            if op in ("glob", "iglob"):
                return _glob_regex(text, op == "iglob")
            return text
        if t is FieldType.BYTEBUF:
            return text.encode("utf-8")
        if t is FieldType.BOOL:
            if text == "true":
                return True
            if text == "false":
                return False
            raise bad("expected true or false")
        if t is FieldType.IPADDR:
            try:
                return ipaddress.IPv4Address(text) if "." in text else ipaddress.IPv6Address(text)
            except ValueError:
                hint = "; use a network field such as fd.snet for CIDR ranges" if "/" in text else ""
                raise bad("not an IP address" + hint) from None
        if t is FieldType.IPNET:
            if "/" not in text:
                raise bad("expected a network such as 10.0.0.0/8")
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError as e:
                raise bad(str(e)) from None
            if ("." in text) != (net.version == 4):
                raise bad("not an IP network")
            return net
        if t is FieldType.PORT:
            if text == "":
                return 0
            if text.isdigit() and text.isascii():
                return int(text) & 0xFFFF
            try:
                return socket.getservbyname(text)
            except OSError:
                raise bad("not a port number or a known service name") from None
        v = _parse_int(text)
        if v is None:
            raise bad("expected a decimal integer")
        if t in _UNSIGNED_BITS:
            return v % (1 << _UNSIGNED_BITS[t])
        if t in _SIGNED_BITS:
            bits = _SIGNED_BITS[t]
            v %= 1 << bits
            return v - (1 << bits) if v >= 1 << (bits - 1) else v
        if t is FieldType.DOUBLE:
            return float(v)
        return v


def _b64_bytes(v: bytes) -> bytes | None:
    data = bytes(v).rstrip(b"\0")
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64_text(v: str) -> str | None:
    out = _b64_bytes(v.encode("utf-8", "surrogateescape"))
    return None if out is None else out.decode("utf-8", "surrogateescape")


def _all(fns: list[Callable[[Any, Any], bool]]) -> Callable[[Any, Any], bool]:
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns
        return lambda ev, ctx: a(ev, ctx) and b(ev, ctx)
    if len(fns) == 3:
        a, b, c = fns
        return lambda ev, ctx: a(ev, ctx) and b(ev, ctx) and c(ev, ctx)
    fs = tuple(fns)

    def all_(ev: Any, ctx: Any) -> bool:
        for f in fs:
            if not f(ev, ctx):
                return False
        return True

    return all_


def _any(fns: list[Callable[[Any, Any], bool]]) -> Callable[[Any, Any], bool]:
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns
        return lambda ev, ctx: a(ev, ctx) or b(ev, ctx)
    if len(fns) == 3:
        a, b, c = fns
        return lambda ev, ctx: a(ev, ctx) or b(ev, ctx) or c(ev, ctx)
    fs = tuple(fns)

    def any_(ev: Any, ctx: Any) -> bool:
        for f in fs:
            if f(ev, ctx):
                return True
        return False

    return any_


def _check(get: Getter, pred: Pred, negate: bool) -> Callable[[Any, Any], bool]:
    """<NA> is false; a Multi matches if any element does (``negate``: if none does)."""
    if negate:

        def check_not(ev: Any, ctx: Any) -> bool:
            v = get(ev, ctx)
            if v is None:
                return False
            if v.__class__ is Multi:
                return len(v) > 0 and not any(map(pred, v))
            return not pred(v)

        return check_not

    def check(ev: Any, ctx: Any) -> bool:
        v = get(ev, ctx)
        if v is None:
            return False
        if v.__class__ is Multi:
            return any(map(pred, v))
        return pred(v)

    return check


def _scalar_pred(op: str, c: Any, t: FieldType) -> Pred:
    """A predicate on one extracted value against the converted constant ``c``."""
    if t is FieldType.IPNET:
        if op == "!=":
            return lambda v: v not in c
        return lambda v: v in c  # '=' (and 'in' per item)
    if op in _CMP:
        f = _CMP[op]
        return lambda v: f(v, c)
    if op in ("contains", "bcontains"):
        return lambda v: c in v
    if op == "icontains":
        lc = _ascii_lower(c)
        return lambda v: lc in _ascii_lower(v)
    if op in ("startswith", "bstartswith"):
        return lambda v: v.startswith(c)
    if op == "endswith":
        return lambda v: v.endswith(c)
    if op in ("glob", "iglob", "regex"):
        m = c.fullmatch
        return lambda v: m(v) is not None
    raise AssertionError(op)


def _modifier_pred(mod: str, preds: list[Pred]) -> Pred:
    ps = tuple(preds)
    if not ps:
        return lambda v: False
    if mod == "anyof":
        return lambda v: any(p(v) for p in ps)
    if mod == "allof":
        return lambda v: all(p(v) for p in ps)

    def one(v: Any) -> bool:
        n = 0
        for p in ps:
            if p(v):
                n += 1
                if n > 1:
                    return False
        return n == 1

    return one


def _runtime_binop(op: str, t: FieldType) -> Callable[[Any, Any], bool]:
    """``op(left, right)`` when the right-hand side is another field's value."""
    if op in _CMP:
        return _CMP[op]
    if op in ("contains", "bcontains"):
        return lambda v, r: r in v
    if op == "icontains":
        return lambda v, r: _ascii_lower(r) in _ascii_lower(v)
    if op in ("startswith", "bstartswith"):
        return lambda v, r: v.startswith(r)
    if op == "endswith":
        return lambda v, r: v.endswith(r)
    if op in ("glob", "iglob"):
        return lambda v, r: _glob_regex(r, op == "iglob").fullmatch(v) is not None
    raise AssertionError(op)


# -- glob and pmatch ----------------------------------------------------------------------------

_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "xdigit": "0-9A-Fa-f", "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e",
}  # fmt: skip


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str, fold: bool) -> re.Pattern[str]:
    """fnmatch(3) with no flags as a regex: ``*`` and ``?`` match '/', ``[!x]``/``[^x]``, ``\\`` escapes."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            negate = j < n and pattern[j] in "!^"
            if negate:
                j += 1
            parts = []
            first = True
            while j < n and (pattern[j] != "]" or first):
                first = False
                if pattern.startswith("[:", j):
                    k = pattern.find(":]", j + 2)
                    if k > 0 and pattern[j + 2 : k] in _CLASSES:
                        parts.append(_CLASSES[pattern[j + 2 : k]])
                        j = k + 2
                        continue
                if pattern[j] == "\\" and j + 1 < n:
                    j += 1
                if j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    lo, hi = pattern[j], pattern[j + 2]
                    if lo <= hi:
                        parts.append(re.escape(lo) + "-" + re.escape(hi))
                    j += 3
                    continue
                parts.append(re.escape(pattern[j]))
                j += 1
            if j >= n:  # no closing ']': the '[' is literal
                out.append(re.escape("["))
                continue
            out.append("[" + ("^" if negate else "") + "".join(parts) + "]" if parts else ("(?!)" if not negate else "."))
            i = j + 1
        else:
            out.append(re.escape(c))
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if fold else 0)
    return re.compile("".join(out), flags)


_GLOB_CHARS = re.compile(r"[?*\[]")


class _PathPrefix:
    """libsinsp ``path_prefix_search``: a path matches when its '/'-components start with a pattern's."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[tuple[str, ...]] = set()
        self.globbed: list[tuple[Any, ...]] = []
        for p in patterns:
            comps = tuple(c for c in p.split("/") if c)
            if any(_GLOB_CHARS.search(c) for c in comps):
                self.globbed.append(tuple(_glob_regex(c, False) if _GLOB_CHARS.search(c) else c for c in comps))
            else:
                self.exact.add(comps)
        self.lengths = sorted({len(c) for c in self.exact})

    def match(self, path: str) -> bool:
        comps = tuple(c for c in path.split("/") if c)
        exact = self.exact
        for k in self.lengths:
            if k > len(comps):
                break
            if comps[:k] in exact:
                return True
        for pat in self.globbed:
            if len(pat) <= len(comps) and all(
                (p == c) if p.__class__ is str else (p.fullmatch(c) is not None) for p, c in zip(pat, comps)
            ):
                return True
        return False
