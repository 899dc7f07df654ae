"""The tree a Falco condition parses into (libsinsp ``filter/ast.h``, simplified).

Every node is a frozen dataclass; ``pos`` is the offset in the text the node came from (for
nodes substituted from a macro, an offset into that macro's condition). ``pos`` is excluded
from equality so trees built by hand compare equal to parsed ones.

Boolean structure::

    And(children)  Or(children)  Not(child)
    Identifier(name)              a bare word: a macro reference, replaced by ``compiler.resolve``

Checks (the leaves)::

    Exists(left)                          ``proc.name exists``
    Compare(left, op, right, mod)         ``proc.name startswith anyof (a, b)``

``left`` is an operand: ``FieldRef(name, arg)`` (``evt.arg[0]``) or ``Transformer(name, args,
arg)`` (``tolower(proc.name)``, ``join("-", (fd.name, proc.name))``).

``right`` is one of:

* ``Value(text, quoted)``: a bare or quoted string, escapes already decoded. After ``in`` /
  ``intersects`` / ``pmatch`` or a modifier, a bare ``Value`` is a list name, see
  ``compiler.resolve``.
* ``ListValue(items)``: ``(a, 'b', c.d)``, items are ``Value`` nodes.
* ``FieldRef``: written ``val(field)``: compare against another field of the same event.
* ``Transformer``: ``tolower(fd.name)``, also a run-time value.

``op`` is one of :data:`OPERATORS` (``==`` is stored as ``=``); ``mod`` is ``None`` or one of
:data:`MODIFIERS` (``= oneof (...)``: exactly one item matches; ``anyof``: at least one;
``allof``: every item).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

#: Binary operators, as libsinsp spells them.
OPERATORS = (
    "=", "!=", "<", "<=", ">", ">=",
    "contains", "icontains", "bcontains", "startswith", "bstartswith", "endswith",
    "glob", "iglob", "regex", "in", "intersects", "pmatch",
)  # fmt: skip
LIST_OPERATORS = ("in", "intersects", "pmatch")
MODIFIERS = ("oneof", "anyof", "allof")
#: Transformers the parser knows; ``val`` is only allowed on the right-hand side.
TRANSFORMERS = ("tolower", "toupper", "b64", "basename", "len", "join", "concat", "getopt")


def _pos() -> int:
    return field(default=0, compare=False, kw_only=True)


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]
    pos: int = _pos()


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]
    pos: int = _pos()


@dataclass(frozen=True)
class Not:
    child: Node
    pos: int = _pos()


@dataclass(frozen=True)
class Identifier:
    """A bare word in boolean position: a macro reference."""

    name: str
    pos: int = _pos()


@dataclass(frozen=True)
class FieldRef:
    name: str
    arg: str | None = None
    pos: int = _pos()


@dataclass(frozen=True)
class Value:
    """A constant. ``quoted`` says whether it was written in quotes (quoted text is never a list name)."""

    text: str
    quoted: bool = False
    pos: int = _pos()


@dataclass(frozen=True)
class ListValue:
    items: tuple[Value, ...]
    pos: int = _pos()


@dataclass(frozen=True)
class TransformerList:
    """The parenthesised list argument of ``join``: fields, transformers, quoted strings, numbers."""

    items: tuple[Operand | Value, ...]
    pos: int = _pos()


@dataclass(frozen=True)
class Transformer:
    """``name(args...)[arg]``. Single-argument ones (``tolower(x)``) have one ``args`` entry."""

    name: str
    args: tuple[Operand | Value | TransformerList, ...]
    arg: str | None = None
    pos: int = _pos()


@dataclass(frozen=True)
class Exists:
    left: Operand
    pos: int = _pos()


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str
    right: Value | ListValue | FieldRef | Transformer
    mod: str | None = None
    pos: int = _pos()


Operand = Union[FieldRef, Transformer]
Node = Union[And, Or, Not, Identifier, Exists, Compare]


def walk(node: object):
    """Yield ``node`` and every node below it, depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, (And, Or)):
            stack.extend(reversed(n.children))
        elif isinstance(n, Not):
            stack.append(n.child)
        elif isinstance(n, Exists):
            stack.append(n.left)
        elif isinstance(n, Compare):
            stack.append(n.right)
            stack.append(n.left)
        elif isinstance(n, Transformer):
            stack.extend(reversed(n.args))
        elif isinstance(n, (TransformerList, ListValue)):
            stack.extend(reversed(n.items))


# -- printing ------------------------------------------------------------------------------
# ``to_text`` prints a tree back as a condition that parses to an equal tree (property-tested).


def quote(text: str) -> str:
    """``text`` as a double-quoted condition string, escaped the way the parser unescapes it."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            # libsinsp's lexer ends a string at a quote not preceded by a backslash, so an escaped
            # backslash right before the closing quote would hide it: spell that one in hex
            out.append("\\x5c" if i == len(text) - 1 else "\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _arg_text(arg: str | None) -> str:
    return "" if arg is None else "[" + quote(arg) + "]"


def to_text(node: object) -> str:
    if isinstance(node, And):
        return " and ".join(_bool_child(c, And) for c in node.children)
    if isinstance(node, Or):
        return " or ".join(_bool_child(c, Or) for c in node.children)
    if isinstance(node, Not):
        return "not (" + to_text(node.child) + ")"
    if isinstance(node, Identifier):
        return node.name
    if isinstance(node, FieldRef):
        return node.name + _arg_text(node.arg)
    if isinstance(node, Value):
        return quote(node.text) if node.quoted else node.text
    if isinstance(node, ListValue):
        return "(" + ", ".join(to_text(i) for i in node.items) + ")"
    if isinstance(node, TransformerList):
        return "(" + ", ".join(to_text(i) for i in node.items) + ")"
    if isinstance(node, Transformer):
        return node.name + "(" + ", ".join(to_text(a) for a in node.args) + ")" + _arg_text(node.arg)
    if isinstance(node, Exists):
        return to_text(node.left) + " exists"
    if isinstance(node, Compare):
        right = node.right
        rtext = "val(" + to_text(right) + ")" if isinstance(right, FieldRef) else to_text(right)
        op = node.op + (" " + node.mod if node.mod else "")
        return f"{to_text(node.left)} {op} {rtext}"
    raise TypeError(f"not a condition node: {node!r}")


def _bool_child(child: object, parent: type) -> str:
    text = to_text(child)
    # and binds tighter than or; parenthesise any nested boolean list to keep the shape
    return "(" + text + ")" if isinstance(child, (And, Or)) else text
