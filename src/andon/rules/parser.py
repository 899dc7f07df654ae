"""Falco condition text -> :mod:`andon.rules.ast` tree.

A recursive-descent parser that follows libsinsp's (``userspace/libsinsp/filter/parser.cpp``)
function by function, so it accepts and rejects exactly what Falco does, including the odd
corners the corpus tests pin down:

* ``and`` / ``or`` must be followed by a blank or ``(`` (``a andb`` is an error), but need no
  blank before them (``(a)and(b)``); ``not`` needs a blank or ``(`` (``notb`` is a macro name).
* word operators (``contains``, ``glob``...) and modifiers (``oneof``...) need a blank after
  them; symbol operators (``=``, ``<=``) and ``exists``/``in``/``intersects``/``pmatch`` do not
  (``x.y existsand m`` parses).
* numeric operators (``<`` ``<=`` ``>`` ``>=``) take a number (``-1.5e+3``, ``0x1F``);
  ``=``-like and word operators take a bare string (no blanks, quotes, ``(),=``) or a quoted one.
* list items are plain strings (bare or quoted); a bare word after ``in`` is a list name.
* transformers are recognised only as ``name(`` with no blank before ``(``.

Blanks are space, tab, newline, carriage return and backspace, as in libsinsp.
Errors raise :class:`~andon.errors.RuleSyntaxError` with the offset where parsing stopped.
"""

from __future__ import annotations

import re

from andon.errors import RuleSyntaxError
from andon.rules import ast

__all__ = ["parse_condition", "parse_operand", "unescape"]

# libsinsp's regexes (POSIX classes spelled out; [[:space:]] is " \t\n\v\f\r")
_RE_NOT_BLANK = re.compile(r"not[ \t\n\v\f\r]+")
_RE_IDENTIFIER = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
_RE_FIELD_NAME = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*(?:\.[a-zA-Z]+[a-zA-Z0-9_]*)+")
_RE_FIELD_ARG_BARE = re.compile(r"[^\]\[\"' \t\n\v\f\r]+")
_RE_HEX_NUM = re.compile(r"0[xX][0-9a-fA-F]+")
_RE_NUM = re.compile(r"[+\-]?[0-9]+\.?[0-9]*(?:[eE][+\-][0-9]+)?")
_RE_BARE_STR = re.compile(r"[^()\"' \t\n\v\f\r=,]+")

_BLANKS = " \t\b\r\n"
_NUM_OPS = ("<=", "<", ">=", ">")
# a trailing space means "needs a blank after it", as in libsinsp's tables
_STR_OPS = (
    "==", "=", "!=", "glob ", "iglob ", "contains ", "icontains ", "bcontains ",
    "startswith ", "bstartswith ", "endswith ", "regex ",
)  # fmt: skip
_MODIFIER_OPS = ("oneof ", "anyof ", "allof ")
_LIST_OPS = ("intersects", "in", "pmatch")
_TRANSFORMERS = tuple(t + "(" for t in ast.TRANSFORMERS)

#: Falco's rule loader raises libsinsp's default recursion cap (100) to 1000.
MAX_DEPTH = 1000


def parse_condition(text: str, *, max_depth: int = MAX_DEPTH) -> ast.Node:
    """Parse a whole condition. Raises :class:`RuleSyntaxError` (``.pos`` = offset)."""
    p = _Parser(text, max_depth)
    try:
        if not text:
            raise RuleSyntaxError("the condition is empty", 0)
        node = p.parse_or()
        if p.i != len(text):
            raise p.error(f"unexpected {p.found()} after {_show(p.last)}, expected 'and', 'or' or the end")
        return node
    except RecursionError:
        raise RuleSyntaxError("the condition nests too deeply", p.i) from None


def parse_operand(text: str) -> ast.FieldRef | ast.Transformer:
    """Parse a lone field or transformer expression (``proc.name``, ``tolower(fd.name)``)."""
    p = _Parser(text, MAX_DEPTH)
    p.blank()
    pos = p.i
    if p.lex_re(_RE_FIELD_NAME):
        node: ast.FieldRef | ast.Transformer = p.field_remainder(p.last, pos)
    elif p.lex_any(_TRANSFORMERS):
        p.blank()
        node = p.transformer_remainder(p.last[:-1], pos)
    else:
        raise p.error("expected a field or a transformer")
    p.blank()
    if p.i != len(text):
        raise p.error(f"unexpected text after {_show(p.last)}")
    return node


def _show(token: str) -> str:
    return repr(token.strip()) if token.strip() else "the start"


def unescape(quoted: str, pos: int = 0) -> str:
    """Decode a quoted token including its quotes (libsinsp ``unescape_str``)."""
    out = []
    delim = quoted[0]
    i, end = 1, len(quoted) - 1
    while i < end:
        c = quoted[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        i += 1
        c = quoted[i] if i < end else ""
        simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", " ": "\\", "\\": "\\", "/": "/"}
        if c in simple and c:
            out.append(simple[c])
        elif c in "\"'" and c:
            if c != delim:
                other = "'" if delim == '"' else '"'
                raise RuleSyntaxError(f"invalid \\{c} escape in a {other}...{other}-quoted string; "
                                      f"write {c} without a backslash", pos + i - 1)  # fmt: skip
            out.append(c)
        elif c == "x":
            hexd = quoted[i + 1 : i + 3]
            if i + 2 >= end:
                raise RuleSyntaxError("truncated \\x escape: expected two hex digits", pos + i - 1)
            if not re.fullmatch(r"[0-9a-fA-F]{2}", hexd):
                raise RuleSyntaxError(f"invalid \\x escape: {hexd!r} is not two hex digits", pos + i - 1)
            out.append(chr(int(hexd, 16)))
            i += 2
        else:
            raise RuleSyntaxError(f"unsupported escape sequence '\\{c}'", pos + i - 1)
        i += 1
    return "".join(out)


class _Parser:
    __slots__ = ("s", "i", "last", "depth", "max_depth", "glued")

    def __init__(self, text: str, max_depth: int) -> None:
        self.s = text
        self.i = 0
        self.last = ""
        self.depth = 0
        self.max_depth = max_depth
        # (offset, op, word) when 'in'/'intersects'/'pmatch' ran straight into a word: libsinsp
        # reads 'x.y invalid' as 'x.y in valid', so later errors get a hint about it
        self.glued: tuple[int, str, str] | None = None

    # -- errors and depth --------------------------------------------------------------

    def error(self, message: str, pos: int | None = None) -> RuleSyntaxError:
        if self.glued is not None:
            at, op, word = self.glued
            message += (f" (at offset {at} '{op}{word}' was read as the operator '{op}' followed by "
                        f"the list name '{word}'; is an operator misspelled?)")  # fmt: skip
        return RuleSyntaxError(message, self.i if pos is None else pos)

    def _after_keyword(self, kw: str) -> str:
        if self.i == len(self.s):
            return f"expected a condition after '{kw}', found the end of the condition"
        return f"expected a blank or '(' after '{kw}', found {self.found()}"

    def enter(self) -> None:
        self.depth += 1
        if self.depth >= self.max_depth:
            raise self.error(f"the condition nests deeper than {self.max_depth} levels")

    def found(self) -> str:
        """What is at the cursor, for error messages."""
        rest = self.s[self.i :]
        if not rest:
            return "the end of the condition"
        m = re.match(r"[^ \t\n\r\b]{1,20}", rest)
        return repr(m.group(0)) if m else repr(rest[0])

    # -- lexing ------------------------------------------------------------------------

    def blank(self) -> bool:
        s, i, n = self.s, self.i, len(self.s)
        start = i
        while i < n and s[i] in _BLANKS:
            i += 1
        self.i = i
        return i != start

    def lex_str(self, token: str) -> bool:
        if self.s.startswith(token, self.i):
            self.last = token
            self.i += len(token)
            return True
        return False

    def lex_any(self, tokens: tuple[str, ...]) -> bool:
        return any(self.lex_str(t) for t in tokens)

    def lex_re(self, rgx: re.Pattern[str]) -> bool:
        m = rgx.match(self.s, self.i)
        if m is None:
            return False
        self.last = m.group(0)
        self.i = m.end()
        return True

    def lex_operator(self, ops: tuple[str, ...]) -> bool:
        for op in ops:
            if not op.endswith(" "):
                if self.lex_str(op):
                    return True
                continue
            # the operator needs a blank after it: backtrack if there is none
            save_i, save_last = self.i, self.last
            if self.lex_str(op[:-1]):
                if self.blank():
                    return True
                self.i, self.last = save_i, save_last
        return False

    def lex_quoted(self) -> str | None:
        """A quoted string: returns the decoded text, or None (cursor unchanged) if none is here."""
        s, start = self.s, self.i
        if start >= len(s) or s[start] not in "'\"":
            return None
        delim = s[start]
        prev = "\\"  # so the opening quote does not close the string
        i = start
        while i < len(s):
            c = s[i]
            if c == delim and prev != "\\":
                token = s[start : i + 1]
                text = unescape(token, start)
                self.i = i + 1
                self.last = token
                return text
            prev = c
            i += 1
        return None

    def lex_number(self) -> bool:
        return self.lex_re(_RE_HEX_NUM) or self.lex_re(_RE_NUM)

    # -- grammar (one method per libsinsp parser method) ---------------------------------

    def parse_or(self) -> ast.Node:
        self.enter()
        self.blank()
        pos = self.i
        children = [self.parse_and()]
        self.blank()
        while self.lex_str("or"):
            if not self.blank():
                if self.lex_str("("):
                    child = self.embedded_remainder()
                else:
                    raise self.error(self._after_keyword("or"))
            else:
                child = self.parse_and()
            children.append(child)
            self.blank()
        self.depth -= 1
        return ast.Or(tuple(children), pos=pos) if len(children) > 1 else children[0]

    def parse_and(self) -> ast.Node:
        self.enter()
        self.blank()
        pos = self.i
        children = [self.parse_not()]
        self.blank()
        while self.lex_str("and"):
            if not self.blank():
                if self.lex_str("("):
                    child = self.embedded_remainder()
                else:
                    raise self.error(self._after_keyword("and"))
            else:
                child = self.parse_not()
            children.append(child)
            self.blank()
        self.depth -= 1
        return ast.And(tuple(children), pos=pos) if len(children) > 1 else children[0]

    def parse_not(self) -> ast.Node:
        self.enter()
        self.blank()
        pos = self.i
        negate = False
        while self.lex_re(_RE_NOT_BLANK):
            negate = not negate
        if self.lex_str("not("):
            negate = not negate
            child = self.embedded_remainder()
        else:
            child = self.parse_check()
        self.depth -= 1
        return ast.Not(child, pos=pos) if negate else child

    def embedded_remainder(self) -> ast.Node:
        """The rest of ``( expr )`` after the opening parenthesis."""
        self.enter()
        self.blank()
        child = self.parse_or()
        self.blank()
        if not self.lex_str(")"):
            raise self.error(f"expected ')' or a boolean operator, found {self.found()}")
        self.depth -= 1
        return child

    def parse_check(self) -> ast.Node:
        self.enter()
        self.blank()
        pos = self.i
        if self.lex_str("("):
            node = self.embedded_remainder()
        elif self.lex_re(_RE_FIELD_NAME):
            left = self.field_remainder(self.last, pos)
            node = self.condition(left, pos)
        elif self.lex_any(_TRANSFORMERS):
            self.blank()
            left = self.transformer_remainder(self.last[:-1], pos)
            node = self.condition(left, pos)
        elif self.lex_re(_RE_IDENTIFIER):
            node = ast.Identifier(self.last, pos=pos)
        else:
            raise self.error(f"expected '(', a field check or a macro name, found {self.found()}")
        self.depth -= 1
        return node

    def field_remainder(self, name: str, pos: int) -> ast.FieldRef:
        return ast.FieldRef(name, self.optional_field_arg(), pos=pos)

    def optional_field_arg(self) -> str | None:
        if not self.lex_str("["):
            return None
        arg = self.lex_quoted()
        if arg is None:
            if not self.lex_re(_RE_FIELD_ARG_BARE):
                raise self.error("expected a field argument inside '[...]': a quoted string or "
                                 "a word without blanks, quotes or brackets")  # fmt: skip
            arg = self.last
        if not self.lex_str("]"):
            raise self.error(f"expected ']' to close the field argument, found {self.found()}")
        return arg

    def transformer_remainder(self, name: str, pos: int) -> ast.Transformer:
        """``tolower(`` has been read: arguments, ``)`` and an optional ``[arg]``."""
        self.enter()
        self.blank()
        args = []
        while True:
            args.append(self.transformer_arg(self.i))
            self.blank()
            if not self.lex_str(","):
                break
        self.blank()
        if not self.lex_str(")"):
            raise self.error(f"expected ')' to close '{name}(', found {self.found()}")
        node = ast.Transformer(name, tuple(args), self.optional_field_arg(), pos=pos)
        self.depth -= 1
        return node

    def transformer_arg(self, pos: int) -> ast.FieldRef | ast.Transformer | ast.Value | ast.TransformerList:
        self.enter()
        self.blank()
        pos = self.i
        node: ast.FieldRef | ast.Transformer | ast.Value | ast.TransformerList
        if self.lex_number():
            node = ast.Value(self.last, pos=pos)
        elif (text := self.lex_quoted()) is not None:
            node = ast.Value(text, True, pos=pos)
        elif self.lex_str("("):
            node = self.transformer_list(pos)
        elif self.lex_any(_TRANSFORMERS):
            node = self.transformer_remainder(self.last[:-1], pos)
        elif self.lex_re(_RE_FIELD_NAME):
            node = self.field_remainder(self.last, pos)
        else:
            raise self.error("expected a transformer argument: a field, a transformer, "
                             f"a quoted string, a number or a '(...)' list; found {self.found()}")  # fmt: skip
        self.depth -= 1
        return node

    def transformer_list(self, pos: int) -> ast.TransformerList:
        """``(`` has been read (join's second argument)."""
        self.blank()
        items: list[ast.FieldRef | ast.Transformer | ast.Value] = []
        if self.lex_str(")"):
            return ast.TransformerList((), pos=pos)
        items.append(self.transformer_list_arg())
        self.blank()
        while self.lex_str(","):
            self.blank()
            items.append(self.transformer_list_arg())
            self.blank()
        if not self.lex_str(")"):
            raise self.error(f"expected ',' or ')' in the list, found {self.found()}")
        return ast.TransformerList(tuple(items), pos=pos)

    def transformer_list_arg(self) -> ast.FieldRef | ast.Transformer | ast.Value:
        pos = self.i
        if self.lex_re(_RE_FIELD_NAME):
            return self.field_remainder(self.last, pos)
        if self.lex_any(_TRANSFORMERS):
            self.blank()
            return self.transformer_remainder(self.last[:-1], pos)
        if (text := self.lex_quoted()) is not None:
            return ast.Value(text, True, pos=pos)
        if self.lex_number():
            return ast.Value(self.last, pos=pos)
        raise self.error("expected a list item: a field, a transformer, a quoted string or a "
                         f"number; found {self.found()}")  # fmt: skip

    def condition(self, left: ast.FieldRef | ast.Transformer, pos: int) -> ast.Node:
        self.enter()
        self.blank()
        if self.lex_str("exists"):
            self.depth -= 1
            return ast.Exists(left, pos=pos)
        self.blank()
        mod = None
        if self.lex_operator(_NUM_OPS):
            op = self.last
            right = self.num_value_or_transformer(op)
        elif self.lex_operator(_STR_OPS):
            op = self.last
            # word operators already ate their blank; '=' and friends need one before a modifier
            had_blank = op[0].isalpha() or self.blank()
            save_i, save_last = self.i, self.last
            if had_blank and self.lex_operator(_MODIFIER_OPS) and self.list_value_follows() \
                    and not self.bool_keyword_follows():  # fmt: skip
                mod = self.last
                right = self.list_value(f"{op} {mod}")
            else:
                self.i, self.last = save_i, save_last
                right = self.str_value_or_transformer(op)
        elif self.lex_operator(_LIST_OPS):
            op = self.last
            m = _RE_IDENTIFIER.match(self.s, self.i)
            if m is not None:
                self.glued = (self.i - len(op), op, m.group(0))
            right = self.list_value_or_transformer(op)
        else:
            raise self.error(
                f"expected an operator after {_show(self.last)}: one of 'exists', "
                + ", ".join(repr(o) for o in ast.OPERATORS if o != "=")
                + f", '=' or '=='; found {self.found()}"
            )
        self.depth -= 1
        return ast.Compare(left, "=" if op == "==" else op, right, mod, pos=pos)

    def num_value_or_transformer(self, op: str) -> ast.Value | ast.FieldRef | ast.Transformer:
        self.enter()
        self.blank()
        pos = self.i
        res = self.try_transformer_or_val()
        if res is None:
            if not self.lex_number():
                raise self.error(f"expected a number or val(field) after '{op}', found {self.found()}")
            res = ast.Value(self.last, pos=pos)
        self.depth -= 1
        return res

    def str_value_or_transformer(self, op: str) -> ast.Value | ast.FieldRef | ast.Transformer:
        self.enter()
        self.blank()
        pos = self.i
        res = self.try_transformer_or_val()
        if res is None:
            res = self.str_value(op)
            if res is None:
                raise self.error(f"expected a value after '{op.strip()}': a word, a quoted string, "
                                 f"val(field) or a transformer; found {self.found()}")  # fmt: skip
            res = ast.Value(res[0], res[1], pos=pos)
        self.depth -= 1
        return res

    def str_value(self, op: str) -> tuple[str, bool] | None:
        self.enter()
        self.blank()
        text = self.lex_quoted()
        self.depth -= 1
        if text is not None:
            return text, True
        if self.lex_re(_RE_BARE_STR):
            return self.last, False
        return None

    def try_list(self, op: str) -> ast.ListValue | None:
        pos = self.i
        if not self.lex_str("("):
            return None
        items = []
        self.blank()
        ipos = self.i
        depth = self.depth
        try:
            first = self.str_value(op)
        except RuleSyntaxError:  # libsinsp: a bad first item means "empty list", then wants ')'
            first = None
            self.depth = depth
        if first is not None:
            items.append(ast.Value(first[0], first[1], pos=ipos))
            self.blank()
            while self.lex_str(","):
                self.blank()
                ipos = self.i
                item = self.str_value(op)
                if item is None:
                    raise self.error(f"expected a list item after ',', found {self.found()}")
                items.append(ast.Value(item[0], item[1], pos=ipos))
                self.blank()
        if not self.lex_str(")"):
            raise self.error(f"expected ',' or ')' in the list after '{op.strip()}', found {self.found()}")
        return ast.ListValue(tuple(items), pos=pos)

    def list_value(self, op: str) -> ast.ListValue | ast.Value:
        self.enter()
        self.blank()
        pos = self.i
        res: ast.ListValue | ast.Value | None = self.try_list(op)
        if res is None:
            if not self.lex_re(_RE_IDENTIFIER):
                raise self.error(f"expected a '(...)' list or a list name after '{op}', found {self.found()}")
            res = ast.Value(self.last, pos=pos)
        self.depth -= 1
        return res

    def list_value_or_transformer(self, op: str) -> ast.ListValue | ast.Value | ast.FieldRef | ast.Transformer:
        self.enter()
        self.blank()
        pos = self.i
        res: ast.ListValue | ast.Value | ast.FieldRef | ast.Transformer | None = self.try_list(op)
        if res is None:
            res = self.try_transformer_or_val()
        if res is None:
            if not self.lex_re(_RE_IDENTIFIER):
                raise self.error(f"expected a '(...)' list, a list name or val(field) after '{op}', "
                                 f"found {self.found()}")  # fmt: skip
            res = ast.Value(self.last, pos=pos)
        self.depth -= 1
        return res

    def try_transformer_or_val(self) -> ast.FieldRef | ast.Transformer | None:
        self.enter()
        self.blank()
        pos = self.i
        res: ast.FieldRef | ast.Transformer | None = None
        if self.lex_str("val("):
            self.blank()
            fpos = self.i
            if not self.lex_re(_RE_FIELD_NAME):
                raise self.error(f"expected a field name inside 'val(', found {self.found()}")
            res = self.field_remainder(self.last, fpos)
            self.blank()
            if not self.lex_str(")"):
                raise self.error(f"expected ')' to close 'val(', found {self.found()}")
            if self.s.startswith("[", self.i):
                raise self.error("val() does not take a field argument; write val(field[arg])")
        elif self.lex_any(_TRANSFORMERS):
            self.blank()
            res = self.transformer_remainder(self.last[:-1], pos)
        self.depth -= 1
        return res

    def list_value_follows(self) -> bool:
        return self.s.startswith("(", self.i) or _RE_IDENTIFIER.match(self.s, self.i) is not None

    def bool_keyword_follows(self) -> bool:
        s, i = self.s, self.i
        for kw in ("and", "or", "not"):
            if s.startswith(kw, i):
                j = i + len(kw)
                if j == len(s) or not s[j].isalnum():
                    return True
        return False
