"""Falco rules files in, a :class:`RuleSet` out, with every problem found on the way.

``load_rules([(filename, text), ...])`` reads the files in order with Falco's semantics
(falcosecurity/falco ``userspace/engine/rule_loader_reader.cpp``, ``rule_loader_collector.cpp``,
``rule_loader_compiler.cpp`` at tag 0.42.0):

* items: ``rule``, ``macro``, ``list``, ``required_engine_version``, ``required_plugin_versions``;
  anything else is a ``LOAD_UNKNOWN_ITEM`` warning, an unknown key a ``LOAD_UNKNOWN_KEY`` warning.
* a later definition of a name replaces the earlier one in place (it keeps its position);
  ``override: {key: append|replace}`` and the deprecated ``append: true`` change an earlier
  one, and changing something never defined is an error.
* lists may hold other lists defined before them; a macro sees the macros defined before it
  (its latest definition or append), a rule sees them all.
* exceptions become ``(condition) and not (...)`` built as text exactly as Falco builds it.

Unlike Falco, which stops a file at its first error, the loader keeps going: an item with a
problem is dropped, everything else is still checked, and items that only fail because
something they use is broken are not reported twice. Each problem carries Falco's code, the
``file:line:col`` (1-based) of the exact spot, the source line and a hint.

Condition and output compilation go through :class:`_Backend`, the one place that calls
``parser``, ``compiler``, ``fields`` and ``outputs``.
"""

from __future__ import annotations

import bisect
import enum
import inspect
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import (
    FieldArgError,
    MacroCycleError,
    RuleError,
    RuleSyntaxError,
    UndefinedMacroError,
    UnknownFieldError,
)
from .outputs import Priority

#: The Falco engine version andon implements: Falco 0.42's (``falco_engine_version.h`` at tag
#: 0.42.0 says 0.57.0; falcosecurity/rules 5.x asks for exactly that).
ENGINE_VERSION = (0, 57, 0)
SYSCALL_SOURCE = "syscall"

#: Plugins whose fields andon implements itself: requiring them is fine.
BUILTIN_PLUGINS = {"container": "container.*"}

# Falco's error and warning codes (falco_load_result.cpp), with their short descriptions.
ERROR_CODES = {
    "LOAD_ERR_FILE_READ": "File read error",
    "LOAD_ERR_YAML_PARSE": "YAML parse error",
    "LOAD_ERR_YAML_VALIDATE": "Error validating internal structure of YAML file",
    "LOAD_ERR_COMPILE_CONDITION": "Error compiling condition",
    "LOAD_ERR_COMPILE_OUTPUT": "Error compiling output",
    "LOAD_ERR_VALIDATE": "Error validating rule/macro/list/exception objects",
    "LOAD_ERR_EXTENSION": "Error in extension item",
}
WARNING_CODES = {
    "LOAD_UNKNOWN_SOURCE": "Unknown event source",
    "LOAD_UNSAFE_NA_CHECK": "Unsafe <NA> comparison in condition",
    "LOAD_NO_EVTTYPE": "Condition has no event-type restriction",
    "LOAD_UNKNOWN_FILTER": "Unknown field or event-type in condition or output",
    "LOAD_UNUSED_MACRO": "Unused macro",
    "LOAD_UNUSED_LIST": "Unused list",
    "LOAD_UNKNOWN_ITEM": "Unknown rules file item",
    "LOAD_DEPRECATED_ITEM": "Used deprecated item",
    "LOAD_WARNING_EXTENSION": "Warning in extension item",
    "LOAD_APPEND_NO_VALUES": "Overriding/appending with no values",
    "LOAD_EXCEPTION_NAME_NOT_UNIQUE": "Multiple exceptions defined with the same name",
    "LOAD_INVALID_MACRO_NAME": "Invalid macro name",
    "LOAD_INVALID_LIST_NAME": "Invalid list name",
    "LOAD_COMPILE_CONDITION": "Warning in rule condition",
    "LOAD_UNKNOWN_KEY": "Unknown key in item definition",
    # andon's own: Falco loads plugins, andon has none
    "LOAD_PLUGIN_NOT_USED": "Plugin requirement ignored (andon has no plugins)",
}

# rule_loading_messages.h
WARNING_APPEND = (
    "'append' key is deprecated. Add an 'append' entry (e.g. 'condition: append') under 'override' instead."
)
WARNING_ENABLED = (
    "The standalone 'enabled' key usage is deprecated. The correct approach requires also a "
    "'replace' entry under the 'override' key (i.e. 'enabled: replace')."
)
ERROR_OVERRIDE_APPEND = (
    "Keys 'override' and 'append: true' cannot be used together. Add an 'append' entry "
    "(e.g. 'condition: append') under 'override' instead."
)
ERROR_NO_PREVIOUS_MACRO = "Macro uses 'append' or 'override.condition: append' but no macro by that name already exists"
ERROR_NO_PREVIOUS_LIST = "List uses 'append' or 'override.items: append' but no list by that name already exists"
ERROR_NO_PREVIOUS_RULE_APPEND = "Rule uses 'append' or 'override.<key>: append' but no rule by that name already exists"
ERROR_NO_PREVIOUS_RULE_REPLACE = (
    "An 'override.<key>: replace' to a rule was requested but no rule by that name already exists"
)

# The keys each item may have (Falco master's warn_unknown_keys sets).
RULE_KEYS = frozenset(
    {
        "rule", "condition", "output", "desc", "priority", "source", "enabled", "capture",
        "capture_duration", "warn_evttypes", "skip-if-unknown-filter", "tags", "exceptions",
        "override", "append",
    }
)  # fmt: skip
MACRO_KEYS = frozenset({"macro", "condition", "append", "override"})
LIST_KEYS = frozenset({"list", "items", "append", "override"})
EXCEPTION_KEYS = frozenset({"name", "fields", "comps", "values"})
RULE_APPENDABLE = ("condition", "output", "desc", "tags", "exceptions")
RULE_REPLACEABLE = (
    "condition", "output", "desc", "priority", "capture", "capture_duration", "tags", "exceptions",
    "enabled", "warn_evttypes", "skip-if-unknown-filter",
)  # fmt: skip

# libsinsp's filter grammar (parser.h), used by Falco to check macro and list names
RGX_IDENTIFIER = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
RGX_BARESTR = re.compile(r"[^()\"'\s=,]+")
# libsinsp parser::supported_operators(); the list ones (supported_operators(true)) separately
OPERATORS = frozenset(
    {
        "=", "==", "!=", "<=", ">=", "<", ">", "contains", "bcontains", "icontains", "startswith",
        "bstartswith", "endswith", "glob", "iglob", "regex", "in", "intersects", "pmatch", "exists",
    }
)  # fmt: skip
LIST_OPERATORS = frozenset({"in", "intersects", "pmatch"})

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"


def _parse_priority(text: str) -> Priority | None:
    """Falco's ``parse_priority`` (case-insensitive, ``info`` for Informational), or None."""
    try:
        return Priority.parse(text)
    except RuleError:
        return None


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Problem:
    """One error or warning, located in its file (``line``/``col`` 1-based, 0 when unknown)."""

    code: str
    message: str
    file: str
    line: int = 0
    col: int = 0
    snippet: str = ""
    hint: str = ""
    item: str = ""
    severity: str = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col}"
        return self.file

    def render(self) -> str:
        """Compiler style: ``file:line:col: error CODE: message``, the line, a caret, the hint."""
        head = f"{self.location}: {self.severity} {self.code}: {self.message}"
        if self.item:
            head += f" [{self.item}]"
        lines = [head]
        if self.snippet:
            lines.append("    " + self.snippet)
            if self.col:
                pad = "".join(c if c == "\t" else " " for c in self.snippet[: self.col - 1])
                lines.append("    " + pad + "^")
        if self.hint:
            lines.append(f"    hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        desc = ERROR_CODES.get(self.code) or WARNING_CODES.get(self.code, "")
        return {
            "severity": self.severity,
            "code": self.code,
            "codedesc": desc,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "item": self.item,
            "snippet": self.snippet,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class RuleException:
    """One rule exception as written: ``fields`` is a tuple or a single field name."""

    name: str
    fields: tuple[str, ...] | str
    comps: tuple[str, ...] | str
    values: tuple[Any, ...]


@dataclass
class Rule:
    name: str
    desc: str
    condition: str  # as written (appends joined); the exceptions are in ``exceptions``
    output: str
    priority: Priority
    tags: tuple[str, ...]
    enabled: bool
    source: str
    filter: Any  # compiler.Filter; None for rules of a source andon does not run
    output_fmt: Any  # outputs.OutputFormat; None likewise
    file: str
    line: int
    exceptions: tuple[RuleException, ...] = ()
    full_condition: str = ""  # the text compiled: condition plus exceptions
    skip_if_unknown_filter: bool = False
    warn_evttypes: bool = True
    capture: bool = False
    capture_duration: int = 0

    @property
    def evttypes(self) -> frozenset[str] | None:
        """The event types the rule can match; ``None`` means every type."""
        return None if self.filter is None else self.filter.evttypes


@dataclass
class Macro:
    name: str
    condition: str
    node: Any  # the resolved ast.Node
    used: bool
    file: str
    line: int


@dataclass
class RuleList:
    name: str
    items: tuple[str, ...]  # with lists it refers to expanded
    used: bool
    file: str
    line: int


@dataclass
class RuleSet:
    rules: list[Rule]
    macros: dict[str, Macro]
    lists: dict[str, RuleList]
    required_engine_version: str | None = None
    required_plugins: list[tuple[str, str]] = field(default_factory=list)

    def evttypes(self) -> frozenset[str] | None:
        """Event types the enabled syscall rules need; ``None`` when one of them needs every type."""
        out: set[str] = set()
        for r in self.rules:
            if not r.enabled or r.source != SYSCALL_SOURCE or r.filter is None:
                continue
            t = r.filter.evttypes
            if t is None:
                return None
            out |= t
        return frozenset(out)


@dataclass
class LoadResult:
    errors: list[Problem]
    warnings: list[Problem]
    ruleset: RuleSet | None
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # rules/macros/lists defined

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def problems(self) -> list[Problem]:
        """Errors and warnings in file and line order."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self.errors + self.warnings, key=lambda p: (order.get(p.file, 1 << 30), p.line, p.col))

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c.get('rules', 0)} rules, {c.get('macros', 0)} macros, {c.get('lists', 0)} lists loaded; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )

    def render(self, warnings: bool = True) -> str:
        """Every problem as a compiler would print it, then the summary line."""
        out = [p.render() for p in self.problems if warnings or p.is_error]
        out.append(self.summary())
        return "\n".join(out)


    def to_json(self) -> dict[str, Any]:
        return {
            "successful": self.ok,
            "files": list(self.files),
            "counts": dict(self.counts),
            "errors": [p.to_dict() for p in self.problems if p.is_error],
            "warnings": [p.to_dict() for p in self.problems if not p.is_error],
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# positions: every YAML node knows its file; condition offsets map back into the file


class SourceText:
    """A file's text with line starts: offsets to (line, col), and a line's text for snippets."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def linecol(self, index: int) -> tuple[int, int]:
        index = max(0, min(index, len(self.text)))
        ln = bisect.bisect_right(self._starts, index) - 1
        return ln + 1, index - self._starts[ln] + 1

    def line_text(self, line: int) -> str:
        if not 1 <= line <= len(self._starts):
            return ""
        start = self._starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start : end if end >= 0 else len(self.text)].rstrip("\r")


@dataclass(frozen=True)
class _Loc:
    src: SourceText
    index: int

    @classmethod
    def of(cls, src: SourceText, node: Node) -> _Loc:
        return cls(src, node.start_mark.index)


def _scalar_offsets(src: SourceText, node: ScalarNode, upto: int) -> int:
    """The index in the file of character ``upto`` of a scalar's value.

    The value was made from the source by dropping indentation, folding line breaks and
    undoing escapes; walk both side by side, matching each non-blank character of the value
    with its next occurrence in the source (blanks map to where the walk stands).
    """
    text, value = src.text, node.value
    start, end = node.start_mark.index, node.end_mark.index
    if node.style in ("|", ">"):
        nl = text.find("\n", start, end)
        start = nl + 1 if nl >= 0 else start
    elif node.style in ('"', "'"):
        start += 1
    j = start
    last = start
    for i, ch in enumerate(value):
        if ch.isspace():
            k = j
        else:
            k = text.find(ch, j, end)
            if k < 0:
                k = j
            j = k + 1
            last = j
        if i == upto:
            return k
    return last if upto >= len(value) else j


@dataclass
class _Piece:
    """A stretch ``[start, end)`` of a composed text and where it came from."""

    start: int
    end: int
    src: SourceText
    node: Node | None  # a ScalarNode whose value holds this stretch at ``voff``, or None
    index: int  # the file index to use when node is None
    voff: int = 0


class _Text:
    """A condition or output text made of pieces from one or more YAML scalars."""

    def __init__(self) -> None:
        self.text = ""
        self.pieces: list[_Piece] = []

    @classmethod
    def of(cls, src: SourceText, node: ScalarNode) -> _Text:
        t = cls()
        t.add(node.value, src, node)
        return t

    def add(self, s: str, src: SourceText, node: Node | None = None, index: int | None = None, voff: int = 0) -> None:
        start = len(self.text)
        self.text += s
        if node is not None or index is not None:
            idx = index if index is not None else node.start_mark.index  # type: ignore[union-attr]
            self.pieces.append(_Piece(start, len(self.text), src, node, idx, voff))

    def add_text(self, other: _Text) -> None:
        base = len(self.text)
        self.text += other.text
        for p in other.pieces:
            self.pieces.append(_Piece(p.start + base, p.end + base, p.src, p.node, p.index, p.voff))

    def copy(self) -> _Text:
        t = _Text()
        t.add_text(self)
        return t

    def locate(self, pos: int | None) -> _Loc | None:
        if not self.pieces:
            return None
        pos = 0 if pos is None else max(0, pos)
        best = None
        for p in self.pieces:
            if p.start <= pos < p.end or (pos == p.end and p is self.pieces[-1]):
                best = p
                break
            if p.start <= pos:
                best = p
        if best is None:
            best = self.pieces[0]
        n = best.node
        if isinstance(n, ScalarNode) and n.value[best.voff : best.voff + best.end - best.start] == self.text[best.start : best.end]:
            return _Loc(best.src, _scalar_offsets(best.src, n, min(pos, best.end) - best.start + best.voff))
        return _Loc(best.src, best.index)


# ---------------------------------------------------------------------------------------------
# internal item records (Falco's *_info)


class _Fail(Exception):
    def __init__(self, code: str, message: str, loc: _Loc | None, hint: str = "", item: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.loc, self.hint, self.item = code, message, loc, hint, item


class _Broken(Exception):
    """Something this item uses already has a reported error: skip it without a second report."""


@dataclass
class _Entry:  # rule_exception_info::entry
    is_list: bool = False
    item: str = ""
    items: list[_Entry] = field(default_factory=list)
    valid: bool = False
    loc: _Loc | None = None

    def plain(self) -> Any:
        return tuple(e.plain() for e in self.items) if self.is_list else self.item


@dataclass
class _ExInfo:
    name: str
    loc: _Loc
    fields: _Entry = field(default_factory=_Entry)
    comps: _Entry = field(default_factory=_Entry)
    values: list[_Entry] = field(default_factory=list)


@dataclass
class _ListInfo:
    name: str
    items: list[str]
    loc: _Loc
    index: int = 0
    visibility: int = 0


@dataclass
class _MacroInfo:
    name: str
    cond: _Text
    loc: _Loc
    index: int = 0
    visibility: int = 0


@dataclass
class _RuleInfo:
    name: str
    loc: _Loc
    cond: _Text = field(default_factory=_Text)
    output: _Text = field(default_factory=_Text)
    desc: str = ""
    priority: Priority = Priority.DEBUG
    tags: set[str] = field(default_factory=set)
    enabled: bool = True
    source: str = SYSCALL_SOURCE
    exceptions: list[_ExInfo] = field(default_factory=list)
    exceptions_loc: _Loc | None = None
    skip_if_unknown_filter: bool = False
    warn_evttypes: bool = True
    capture: bool = False
    capture_duration: int = 0
    unknown_source: bool = False
    index: int = 0
    visibility: int = 0


@dataclass
class _Update:  # rule_update_info: only what was given
    name: str
    loc: _Loc
    source: str = ""
    values: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the compile back end: the only place that calls parser, compiler, fields and outputs


class _Backend:
    def __init__(self, fields: Any = None) -> None:
        from . import compiler, parser  # noqa: F401  (ImportError: the caller reports it)

        self.parser = parser
        self.compiler = compiler
        self.fields = fields
        if fields is None:
            try:
                from .fields import FIELDS

                self.fields = FIELDS
            except ImportError:
                self.fields = None
        try:
            from .outputs import OutputFormat

            self.output_format = OutputFormat
        except ImportError:
            self.output_format = None
        self._parse_takes_fields = False
        if self.output_format is not None:
            try:
                self._parse_takes_fields = "fields" in inspect.signature(self.output_format.parse).parameters
            except (TypeError, ValueError):
                pass

    def parse(self, text: str) -> Any:
        return self.parser.parse_condition(text)

    def resolve(self, node: Any, macros: Mapping[str, Any], lists: Mapping[str, list[str]]) -> Any:
        return self.compiler.resolve(node, macros, lists)

    def compile(self, node: Any) -> Any:
        if self.fields is None:
            return self.compiler.compile_filter(node)
        return self.compiler.compile_filter(node, self.fields)

    def output(self, text: str) -> Any:
        if self.output_format is None:
            return None
        if self._parse_takes_fields and self.fields is not None:
            return self.output_format.parse(text, fields=self.fields)
        return self.output_format.parse(text)

    def check_field(self, name: str) -> None:
        """Raise UnknownFieldError/FieldArgError if ``name`` (``proc.aname[2]``) is no field."""
        if self.fields is None:
            return
        m = re.fullmatch(r"([^\[\s]+)(?:\[(.*)\])?", name.strip())
        if not m:
            raise UnknownFieldError(f"'{name}' is not a supported filter field")
        self.fields.lookup(m.group(1), m.group(2))


def _backend(fields: Any) -> tuple[_Backend | None, str]:
    try:
        return _Backend(fields), ""
    except ImportError as e:
        return None, f"the condition compiler is not available: {e}"


# ---------------------------------------------------------------------------------------------
# the loader


def _quote_item(e: str) -> str:
    # rule_loader_compiler.cpp quote_item: only items with a space, not already quoted
    if " " in e and not e.startswith(('"', "'")):
        return '"' + e + '"'
    return e


def _paren_item(e: str) -> str:
    return e if e.startswith("(") else "(" + e + ")"


def _parse_semver(text: str) -> tuple[int, int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\.(\d+)\s*", str(text))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _semver_str(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def _quoted_token(message: str) -> str | None:
    m = re.search(r"'([^']+)'|\"([^\"]+)\"", message)
    return (m.group(1) or m.group(2)) if m else None


class _Loader:
    def __init__(self, fields: Any, min_priority: Priority | None) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.min_priority = min_priority
        self.fields_arg = fields
        self.index = 0
        self.lists: dict[str, _ListInfo] = {}
        self.macros: dict[str, _MacroInfo] = {}
        self.rules: dict[str, _RuleInfo] = {}
        self.broken: dict[str, set[str]] = {"list": set(), "macro": set(), "rule": set()}
        self.required_engine: tuple[int, int, int] | None = None
        self.required_plugins: list[tuple[str, str]] = []
        self.files: list[str] = []

    # -- reporting ---------------------------------------------------------------------------

    def _problem(self, severity: str, code: str, message: str, loc: _Loc | None, hint: str, item: str, file: str) -> None:
        line = col = 0
        snippet = ""
        if loc is not None:
            file = loc.src.name
            line, col = loc.src.linecol(loc.index)
            snippet = loc.src.line_text(line)
        p = Problem(code, message, file, line, col, snippet, hint, item, severity)
        (self.errors if severity == "error" else self.warnings).append(p)

    def error(self, code: str, message: str, loc: _Loc | None, hint: str = "", item: str = "", file: str = "") -> None:
        self._problem("error", code, message, loc, hint, item, file)

    def warn(self, code: str, message: str, loc: _Loc | None, hint: str = "", item: str = "", file: str = "") -> None:
        self._problem("warning", code, message, loc, hint, item, file)

    # -- reading -----------------------------------------------------------------------------

    def read(self, name: str, text: str) -> None:
        self.files.append(name)
        src = SourceText(name, text)
        try:
            docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            loc = _Loc(src, mark.index) if mark is not None else None
            msg = " ".join(x for x in (e.context, e.problem) if x) or str(e)
            self.error("LOAD_ERR_YAML_PARSE", msg, loc, "the file is not valid YAML; nothing in it was loaded", file=name)
            return
        except yaml.YAMLError as e:
            pos = getattr(e, "position", None)
            loc = _Loc(src, pos) if isinstance(pos, int) else None
            self.error("LOAD_ERR_YAML_PARSE", str(e).splitlines()[0] if str(e) else "YAML error", loc, file=name)
            return
        for doc in docs:
            if doc is None or (isinstance(doc, ScalarNode) and doc.tag == _NULL_TAG):
                continue
            if not isinstance(doc, SequenceNode):
                msg = "Rules content is not yaml array of objects" if isinstance(doc, MappingNode) else "Rules content is not yaml"
                self.error(
                    "LOAD_ERR_YAML_VALIDATE", msg, _Loc.of(src, doc),
                    "a rules file is a YAML list: every item starts with '- rule:', '- macro:' or '- list:'",
                )  # fmt: skip
                continue
            for item in doc.value:
                if isinstance(item, ScalarNode) and item.tag == _NULL_TAG:
                    continue
                try:
                    self.read_item(src, item)
                except _Fail as f:
                    self.error(f.code, f.message, f.loc, f.hint, item=self._item_label(item))
                    self._mark_broken(item)
                except _Broken:
                    self._mark_broken(item)

    def _item_label(self, item: Node) -> str:
        if isinstance(item, MappingNode):
            for k, v in item.value:
                if isinstance(k, ScalarNode) and k.value in ("rule", "macro", "list") and isinstance(v, ScalarNode):
                    return f"{k.value} '{v.value}'"
        return ""

    def _mark_broken(self, item: Node) -> None:
        if isinstance(item, MappingNode):
            for k, v in item.value:
                if isinstance(k, ScalarNode) and k.value in self.broken and isinstance(v, ScalarNode):
                    self.broken[k.value].add(v.value)

    # -- value decoding (rule_loader_reader.cpp decode_val & co) -------------------------------

    @staticmethod
    def _mapping(src: SourceText, node: Node, what: str) -> dict[str, tuple[ScalarNode, Node]]:
        if not isinstance(node, MappingNode):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", what, _Loc.of(src, node))
        out: dict[str, tuple[ScalarNode, Node]] = {}
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                raise _Fail("LOAD_ERR_YAML_VALIDATE", "Keys must be scalars", _Loc.of(src, k))
            out[k.value] = (k, v)
        return out

    @staticmethod
    def _str(src: SourceText, m: dict, key: str, item: Node, *, optional: bool = False, empty_ok: bool = False) -> str | None:
        if key not in m:
            if optional:
                return None
            raise _Fail(
                "LOAD_ERR_YAML_VALIDATE", f"Item has no mapping for key '{key}'", _Loc.of(src, item),
                f"add '{key}:' to this item",
            )  # fmt: skip
        k, v = m[key]
        if isinstance(v, ScalarNode) and v.tag == _NULL_TAG and v.style is None:
            if empty_ok:
                return ""
            raise _Fail("LOAD_ERR_YAML_VALIDATE", f"Mapping for key '{key}' is empty", _Loc.of(src, k))
        if not isinstance(v, ScalarNode):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", "Value is not a scalar value", _Loc.of(src, v), f"'{key}' takes a single value")
        if v.value == "":
            if empty_ok:
                return ""
            raise _Fail("LOAD_ERR_YAML_VALIDATE", "Value must be non-empty", _Loc.of(src, v))
        return v.value

    def _bool(self, src: SourceText, m: dict, key: str, item: Node, *, optional: bool = True) -> bool | None:
        s = self._str(src, m, key, item, optional=optional)
        if s is None:
            return None
        v = m[key][1]
        # yaml-cpp's bool conversion: true/false, yes/no, on/off, y/n in lower, Upper or UPPER case
        low = s.lower()
        if v.style is None and s in (low, low.capitalize(), low.upper()):
            if low in ("true", "yes", "on", "y"):
                return True
            if low in ("false", "no", "off", "n"):
                return False
        raise _Fail("LOAD_ERR_YAML_VALIDATE", "Can't decode YAML scalar value", _Loc.of(src, v), f"'{key}' is true or false")

    def _int(self, src: SourceText, m: dict, key: str, item: Node) -> int | None:
        s = self._str(src, m, key, item, optional=True)
        if s is None:
            return None
        try:
            return int(s, 0)
        except ValueError:
            raise _Fail("LOAD_ERR_YAML_VALIDATE", "Can't decode YAML scalar value", _Loc.of(src, m[key][1])) from None

    def _seq_of_str(self, src: SourceText, m: dict, key: str, item: Node, *, optional: bool) -> list[str] | None:
        if key not in m:
            if optional:
                return None
            raise _Fail("LOAD_ERR_YAML_VALIDATE", f"Item has no mapping for key '{key}'", _Loc.of(src, item), f"add '{key}: [...]'")
        k, v = m[key]
        if not isinstance(v, SequenceNode):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", "Value is not a sequence", _Loc.of(src, v), f"'{key}' is a list: [a, b]")
        out = []
        for e in v.value:
            if not isinstance(e, ScalarNode):
                raise _Fail("LOAD_ERR_YAML_VALIDATE", "sequence value is not scalar", _Loc.of(src, e))
            out.append(e.value)
        return out

    def _warn_unknown_keys(self, src: SourceText, m: dict, known: frozenset[str], label: str) -> None:
        import difflib

        for key, (k, _v) in m.items():
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                self.warn(
                    "LOAD_UNKNOWN_KEY", f"Unknown key '{key}'. The key will be ignored.", _Loc.of(src, k),
                    f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}", label,
                )  # fmt: skip

    def _overrides(self, src: SourceText, m: dict, appendable: tuple[str, ...] | frozenset[str], replaceable: tuple[str, ...] | frozenset[str]) -> tuple[set[str], set[str]]:
        if "override" not in m:
            return set(), set()
        k, v = m["override"]
        ov = self._mapping(src, v, "'override' must be a mapping of key: append|replace")
        app, rep = set(), set()
        for key, (kn, vn) in ov.items():
            op = vn.value if isinstance(vn, ScalarNode) else ""
            if op == "append":
                if key not in appendable:
                    raise _Fail("LOAD_ERR_YAML_VALIDATE", f"Key '{key}' cannot be appended to, use 'replace' instead", _Loc.of(src, kn))
                app.add(key)
            elif op == "replace":
                if key not in replaceable:
                    raise _Fail("LOAD_ERR_YAML_VALIDATE", f"Key '{key}' cannot be replaced", _Loc.of(src, kn))
                rep.add(key)
            else:
                allowed = [x for x, ok in (("append", key in appendable), ("replace", key in replaceable)) if ok]
                raise _Fail(
                    "LOAD_ERR_YAML_VALIDATE",
                    f"Invalid override operation for key '{key}': '{op}'. Allowed values are: {' '.join(allowed)}",
                    _Loc.of(src, vn),
                )
        return app, rep

    # -- items ---------------------------------------------------------------------------------

    def read_item(self, src: SourceText, item: Node) -> None:
        m = self._mapping(src, item, "Unexpected element type. Each element should be a yaml associative array.")
        if "required_engine_version" in m:
            self._engine_version(src, m, item)
        elif "required_plugin_versions" in m:
            self._plugin_versions(src, m, item)
        elif "list" in m:
            self._list(src, m, item)
        elif "macro" in m:
            self._macro(src, m, item)
        elif "rule" in m:
            self._rule(src, m, item)
        else:
            self.warn(
                "LOAD_UNKNOWN_ITEM", "Unknown top level item", _Loc.of(src, item),
                "items are rule, macro, list, required_engine_version or required_plugin_versions; this one is ignored",
            )  # fmt: skip

    def _engine_version(self, src: SourceText, m: dict, item: Node) -> None:
        self._warn_unknown_keys(src, m, frozenset({"required_engine_version"}), "required_engine_version")
        s = self._str(src, m, "required_engine_version", item)
        vnode = m["required_engine_version"][1]
        loc = _Loc.of(src, vnode)
        if re.fullmatch(r"\d+", s.strip()):  # an old integer version N means 0.N.0
            ver = (0, int(s), 0)
        else:
            ver = _parse_semver(s)
            if ver is None:
                raise _Fail(
                    "LOAD_ERR_YAML_VALIDATE",
                    f"Unable to parse engine version '{s}' as a semver string. Expected \"x.y.z\" semver format.",
                    loc,
                )
        # sinsp_version::compatible_with: same major, ours at least as new
        if not (ver[0] == ENGINE_VERSION[0] and ver[1:] <= ENGINE_VERSION[1:]):
            raise _Fail(
                "LOAD_ERR_VALIDATE",
                f"Rules require engine version {_semver_str(ver)}, but engine version is {_semver_str(ENGINE_VERSION)}",
                loc,
                "these rules are for a newer Falco than andon implements (Falco 0.42); use a rules release made for it",
            )
        if self.required_engine is None or self.required_engine < ver:
            self.required_engine = ver

    def _plugin_versions(self, src: SourceText, m: dict, item: Node) -> None:
        self._warn_unknown_keys(src, m, frozenset({"required_plugin_versions"}), "required_plugin_versions")
        _k, seq = m["required_plugin_versions"]
        if not isinstance(seq, SequenceNode):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", "Value of required_plugin_versions must be a sequence", _Loc.of(src, seq))
        for plugin in seq.value:
            pm = self._mapping(src, plugin, "Plugin version must be a mapping")
            reqs = [(self._str(src, pm, "name", plugin), self._str(src, pm, "version", plugin), plugin)]
            if "alternatives" in pm:
                alts = pm["alternatives"][1]
                if not isinstance(alts, SequenceNode):
                    raise _Fail("LOAD_ERR_YAML_VALIDATE", "Value of plugin version alternatives must be a sequence", _Loc.of(src, alts))
                for a in alts.value:
                    am = self._mapping(src, a, "Plugin version alternative must be a mapping")
                    reqs.append((self._str(src, am, "name", a), self._str(src, am, "version", a), a))
            seen: set[str] = set()
            for name, version, node in reqs:
                if _parse_semver(version) is None:
                    raise _Fail("LOAD_ERR_VALIDATE", f"Invalid required version '{version}' for plugin '{name}'", _Loc.of(src, node))
                if name in seen:
                    raise _Fail("LOAD_ERR_VALIDATE", f"Defined multiple alternative version requirements for plugin '{name}'", _Loc.of(src, node))
                seen.add(name)
            names = [r[0] for r in reqs]
            self.required_plugins.extend((r[0], r[1]) for r in reqs)
            builtin = [n for n in names if n in BUILTIN_PLUGINS]
            if builtin:
                msg = (
                    f"plugin '{builtin[0]}' {reqs[0][1]} is not loaded: andon has no plugins, and implements "
                    f"the {BUILTIN_PLUGINS[builtin[0]]} fields it provides itself"
                )
                hint = "nothing to do: rules using those fields work"
            else:
                msg = f"plugin '{names[0]}' {reqs[0][1]} is not loaded: andon has no plugins"
                hint = "rules that use this plugin's fields or event source will not load or run"
            self.warn("LOAD_PLUGIN_NOT_USED", msg, _Loc.of(src, plugin), hint, "required_plugin_versions")

    def _define(self, table: dict, info: Any) -> None:
        # collector.cpp define_info: a redefinition takes the old one's place in the order
        prev = table.get(info.name)
        info.index = prev.index if prev is not None else self.index
        info.visibility = self.index
        self.index += 1
        table[info.name] = info

    def _list(self, src: SourceText, m: dict, item: Node) -> None:
        name = self._str(src, m, "list", item)
        label = f"list '{name}'"
        loc = _Loc.of(src, item)
        if not RGX_BARESTR.fullmatch(name):
            self.warn(
                "LOAD_INVALID_LIST_NAME",
                f"List has an invalid name. List names should match a regular expression: {RGX_BARESTR.pattern}",
                loc, item=label,
            )  # fmt: skip
        self._warn_unknown_keys(src, m, LIST_KEYS, label)
        items = self._seq_of_str(src, m, "items", item, optional=False)
        append = bool(self._bool(src, m, "append", item))
        if append:
            self.warn("LOAD_DEPRECATED_ITEM", WARNING_APPEND, loc, item=label)
        app, rep = self._overrides(src, m, ("items",), ("items",))
        if append and (app or rep):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", ERROR_OVERRIDE_APPEND, loc)
        if append or "items" in app:
            prev = self.lists.get(name)
            if prev is None:
                if name in self.broken["list"]:
                    raise _Broken
                raise _Fail("LOAD_ERR_VALIDATE", ERROR_NO_PREVIOUS_LIST, loc, "define the list first (an earlier file or item), or drop the append")
            prev.items.extend(items)
            prev.visibility = self.index
            self.index += 1
        else:
            self._define(self.lists, _ListInfo(name, items, loc))

    def _macro(self, src: SourceText, m: dict, item: Node) -> None:
        name = self._str(src, m, "macro", item)
        label = f"macro '{name}'"
        loc = _Loc.of(src, item)
        if not RGX_IDENTIFIER.fullmatch(name):
            self.warn(
                "LOAD_INVALID_MACRO_NAME",
                f"Macro has an invalid name. Macro names should match a regular expression: {RGX_IDENTIFIER.pattern}",
                loc, item=label,
            )  # fmt: skip
        self._warn_unknown_keys(src, m, MACRO_KEYS, label)
        self._str(src, m, "condition", item)
        cond = _Text.of(src, m["condition"][1])
        append = bool(self._bool(src, m, "append", item))
        if append:
            self.warn("LOAD_DEPRECATED_ITEM", WARNING_APPEND, loc, item=label)
        app, rep = self._overrides(src, m, ("condition",), ("condition",))
        if append and (app or rep):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", ERROR_OVERRIDE_APPEND, loc)
        if append or "condition" in app:
            prev = self.macros.get(name)
            if prev is None:
                if name in self.broken["macro"]:
                    raise _Broken
                raise _Fail("LOAD_ERR_VALIDATE", ERROR_NO_PREVIOUS_MACRO, loc, "define the macro first (an earlier file or item), or drop the append")
            prev.cond.add(" ", src)
            prev.cond.add_text(cond)
            prev.visibility = self.index
            self.index += 1
        else:
            self._define(self.macros, _MacroInfo(name, cond, loc))

    def _exceptions(self, src: SourceText, m: dict, item: Node, append: bool, label: str) -> list[_ExInfo]:
        if "exceptions" not in m:
            return []
        _k, exs = m["exceptions"]
        if isinstance(exs, ScalarNode) and exs.tag == _NULL_TAG:
            return []
        if not isinstance(exs, SequenceNode):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", "Rule exceptions must be a sequence", _Loc.of(src, exs))
        out: list[_ExInfo] = []
        for ex in exs.value:
            em = self._mapping(src, ex, "Rule exception must be a mapping")
            name = self._str(src, em, "name", ex)
            exloc = _Loc.of(src, ex)
            self._warn_unknown_keys(src, em, EXCEPTION_KEYS, label)
            if any(o.name == name for o in out):
                self.warn(
                    "LOAD_EXCEPTION_NAME_NOT_UNIQUE", f"Multiple definitions of exception '{name}' in the same rule",
                    exloc, item=label,
                )  # fmt: skip
            info = _ExInfo(name, exloc)
            if "fields" in em:
                info.fields = self._entry(src, em["fields"][1])
            elif not append:
                raise _Fail("LOAD_ERR_YAML_VALIDATE", "Item has no mapping for key 'fields'", exloc, "an exception needs 'fields:'")
            if "comps" in em:
                info.comps = self._entry(src, em["comps"][1])
            if "values" in em:
                vals = em["values"][1]
                if isinstance(vals, ScalarNode) and vals.tag == _NULL_TAG:
                    vals = SequenceNode("tag:yaml.org,2002:seq", [], vals.start_mark, vals.end_mark)
                if not isinstance(vals, SequenceNode):
                    raise _Fail("LOAD_ERR_YAML_VALIDATE", "Rule exception values must be a sequence", _Loc.of(src, vals))
                info.values = [self._entry(src, v) for v in vals.value]
            elif append:
                self.warn("LOAD_APPEND_NO_VALUES", "Overriding/appending exception with no values", exloc, item=label)
            out.append(info)
        return out

    def _entry(self, src: SourceText, v: Node) -> _Entry:
        loc = _Loc.of(src, v)
        if isinstance(v, ScalarNode):
            if v.value == "" or (v.tag == _NULL_TAG and v.style is None):
                raise _Fail("LOAD_ERR_YAML_VALIDATE", "Value must be non-empty", loc)
            return _Entry(False, v.value, [], True, loc)
        if isinstance(v, SequenceNode):
            return _Entry(True, "", [self._entry(src, e) for e in v.value], True, loc)
        raise _Fail("LOAD_ERR_YAML_VALIDATE", "Exception fields, comps and values are strings or lists", loc)

    def _priority(self, src: SourceText, m: dict, item: Node) -> Priority:
        s = self._str(src, m, "priority", item)
        p = _parse_priority(s)
        if p is None:
            raise _Fail(
                "LOAD_ERR_YAML_VALIDATE", "Invalid priority", _Loc.of(src, m["priority"][1]),
                "one of " + ", ".join(x.label for x in Priority) + " (any case; INFO for Informational)",
            )  # fmt: skip
        return p

    def _rule(self, src: SourceText, m: dict, item: Node) -> None:
        name = self._str(src, m, "rule", item)
        label = f"rule '{name}'"
        loc = _Loc.of(src, item)
        self._warn_unknown_keys(src, m, RULE_KEYS, label)
        source = self._str(src, m, "source", item, optional=True, empty_ok=True) or ""
        has_append = bool(self._bool(src, m, "append", item))
        if has_append:
            self.warn("LOAD_DEPRECATED_ITEM", WARNING_APPEND, loc, item=label)
        app, rep = self._overrides(src, m, RULE_APPENDABLE, RULE_REPLACEABLE)
        if has_append and (app or rep):
            raise _Fail("LOAD_ERR_YAML_VALIDATE", ERROR_OVERRIDE_APPEND, loc)
        if app or rep:
            expected = {k for k in (*RULE_APPENDABLE, *RULE_REPLACEABLE) if k in m}
            updates = []
            for kind, keys in (("append", app), ("replace", rep)):
                if not keys:
                    continue
                u = _Update(name, loc)
                for key in sorted(keys):
                    if key not in expected:
                        raise _Fail(
                            "LOAD_ERR_YAML_VALIDATE",
                            f"An {kind} override for '{key}' was specified but '{key}' is not defined",
                            _Loc.of(src, self._mapping(src, m["override"][1], "")[key][0]),
                            f"add '{key}:' with the value to {kind}",
                        )
                    expected.discard(key)
                    if key == "condition":
                        u.source = source
                    u.values[key] = self._update_value(src, m, item, key, kind == "append", label)
                updates.append((kind, u))
            for key in sorted(expected):
                raise _Fail(
                    "LOAD_ERR_YAML_VALIDATE",
                    f"Unexpected key '{key}': no corresponding entry under 'override' is defined.",
                    _Loc.of(src, m[key][0]),
                    f"add '{key}: append' or '{key}: replace' under 'override'",
                )
            for kind, u in updates:
                (self._append_rule if kind == "append" else self._replace_rule)(u)
        elif has_append:
            u = _Update(name, loc, source)
            if "condition" in m:
                u.values["condition"] = self._update_value(src, m, item, "condition", True, label)
            if "exceptions" in m:
                u.values["exceptions"] = self._update_value(src, m, item, "exceptions", True, label)
            self._append_rule(u)
        elif not any(k in m for k in ("condition", "output", "desc", "priority")):
            # `- rule: X / enabled: false`: switch an earlier rule on or off
            enabled = self._bool(src, m, "enabled", item, optional=False)
            self.warn("LOAD_DEPRECATED_ITEM", WARNING_ENABLED, loc, item=label)
            prev = self.rules.get(name)
            if prev is None:
                if name in self.broken["rule"]:
                    raise _Broken
                raise _Fail("LOAD_ERR_VALIDATE", "Rule has 'enabled' key but no rule by that name already exists", loc)
            prev.enabled = bool(enabled)
        else:
            r = _RuleInfo(name, loc)
            problems: list[_Fail] = []
            # all of these are required; report every missing one, not just the first
            for key in ("condition", "output", "desc", "priority"):
                try:
                    self._str(src, m, key, item)
                except _Fail as f:
                    problems.append(f)
            if problems:
                for f in problems[:-1]:
                    self.error(f.code, f.message, f.loc, f.hint, item=label)
                raise problems[-1]
            r.cond = _Text.of(src, m["condition"][1])
            onode = m["output"][1]
            r.output = _Text()
            out = onode.value.strip()  # Falco trims the output
            r.output.add(out, src, onode, voff=len(onode.value) - len(onode.value.lstrip()))
            r.desc = m["desc"][1].value
            try:
                r.priority = self._priority(src, m, item)
            except _Fail as f:
                # reported now; the rule is still compiled so its condition and output
                # problems show in the same run (the load has failed either way)
                self.error(f.code, f.message, f.loc, f.hint, item=label)
                r.priority = Priority.DEBUG
            r.source = self._str(src, m, "source", item, optional=True) or SYSCALL_SOURCE
            for key, attr in (
                ("enabled", "enabled"),
                ("capture", "capture"),
                ("warn_evttypes", "warn_evttypes"),
                ("skip-if-unknown-filter", "skip_if_unknown_filter"),
            ):
                v = self._bool(src, m, key, item)
                if v is not None:
                    setattr(r, attr, v)
            r.capture_duration = self._int(src, m, "capture_duration", item) or 0
            r.tags = set(self._seq_of_str(src, m, "tags", item, optional=True) or [])
            r.exceptions = self._exceptions(src, m, item, False, label)
            if "exceptions" in m:
                r.exceptions_loc = _Loc.of(src, m["exceptions"][0])
            self._define_rule(r, label)

    def _update_value(self, src: SourceText, m: dict, item: Node, key: str, append: bool, label: str) -> Any:
        if key in ("condition", "output"):
            self._str(src, m, key, item)
            node = m[key][1]
            return _Text.of(src, node)
        if key == "desc":
            return self._str(src, m, key, item)
        if key == "tags":
            return set(self._seq_of_str(src, m, key, item, optional=False) or [])
        if key == "exceptions":
            return (self._exceptions(src, m, item, append, label), _Loc.of(src, m[key][0]))
        if key == "priority":
            return self._priority(src, m, item)
        if key == "capture_duration":
            return self._int(src, m, key, item)
        return self._bool(src, m, key, item, optional=False)  # enabled, capture, warn_evttypes, skip-if-...

    def _find_prev_rule(self, name: str, source: str, loc: _Loc) -> _RuleInfo | None:
        prev = self.rules.get(name)
        if prev is not None and prev.source and source and prev.source != source:
            raise _Fail("LOAD_ERR_VALIDATE", "Rule has been re-defined with a different source", loc)
        return prev

    def _define_rule(self, r: _RuleInfo, label: str) -> None:
        self._find_prev_rule(r.name, r.source, r.loc)
        if r.source != SYSCALL_SOURCE:
            r.unknown_source = True
            self.warn(
                "LOAD_UNKNOWN_SOURCE", f"Unknown source {r.source}, skipping", r.loc,
                f"andon runs rules of source '{SYSCALL_SOURCE}' only; this one is kept but never evaluated", label,
            )  # fmt: skip
        for ex in r.exceptions:
            if not ex.fields.valid:
                raise _Fail("LOAD_ERR_VALIDATE", "Rule exception item must have fields property with a list of fields", ex.loc)
            self._validate_exception(ex)
        self.broken["rule"].discard(r.name)
        self._define(self.rules, r)

    @staticmethod
    def _validate_exception(ex: _ExInfo) -> None:
        # collector.cpp validate_exception_info (the field names are checked at compile time)
        if ex.fields.is_list:
            if not ex.comps.valid:
                ex.comps = _Entry(True, "", [_Entry(False, "=", [], True) for _ in ex.fields.items], True, ex.loc)
            if len(ex.fields.items) != len(ex.comps.items):
                raise _Fail("LOAD_ERR_VALIDATE", "Fields and comps lists must have equal length", ex.loc)
            for c in ex.comps.items:
                if c.item not in OPERATORS:
                    raise _Fail(
                        "LOAD_ERR_VALIDATE", f"'{c.item}' is not a supported comparison operator", c.loc or ex.loc,
                        "one of " + ", ".join(sorted(OPERATORS)),
                    )  # fmt: skip
        else:
            if not ex.comps.valid:
                ex.comps = _Entry(False, "in", [], True, ex.loc)
            if ex.comps.is_list:
                raise _Fail("LOAD_ERR_VALIDATE", "Fields and comps must both be strings", ex.loc)
            if ex.comps.item not in LIST_OPERATORS:
                raise _Fail(
                    "LOAD_ERR_VALIDATE", "When fields is a single value, comps must be one of (in, pmatch, intersects)",
                    ex.comps.loc or ex.loc,
                )  # fmt: skip

    def _rule_for_update(self, u: _Update, missing: str) -> _RuleInfo:
        prev = self._find_prev_rule(u.name, u.source, u.loc)
        if prev is None:
            if u.name in self.broken["rule"]:
                raise _Broken
            raise _Fail("LOAD_ERR_VALIDATE", missing, u.loc, "define the rule first (an earlier file or item)")
        return prev

    def _append_rule(self, u: _Update) -> None:
        prev = self._rule_for_update(u, ERROR_NO_PREVIOUS_RULE_APPEND)
        if not u.values:
            raise _Fail("LOAD_ERR_VALIDATE", "Appended rule must have exceptions or condition property", u.loc)
        v = u.values
        for key in ("condition", "output"):
            if key in v and v[key].text:
                t: _Text = getattr(prev, "cond" if key == "condition" else "output")
                t.add(" ", v[key].pieces[0].src)
                t.add_text(v[key])
        if v.get("desc"):
            prev.desc += " " + v["desc"]
        if "tags" in v:
            prev.tags |= v["tags"]
        if "exceptions" in v:
            exs, _loc = v["exceptions"]
            for ex in exs:
                old = next((e for e in prev.exceptions if e.name == ex.name), None)
                if old is None:
                    if not ex.fields.valid:
                        raise _Fail("LOAD_ERR_VALIDATE", "Rule exception must have fields property with a list of fields", ex.loc)
                    if not ex.values:
                        raise _Fail("LOAD_ERR_VALIDATE", "Rule exception must have values property with a list of values", ex.loc)
                    self._validate_exception(ex)
                    prev.exceptions.append(ex)
                else:
                    if ex.fields.valid:
                        raise _Fail("LOAD_ERR_VALIDATE", "Can not append exception fields to existing exception, only values", ex.loc)
                    if ex.comps.valid:
                        raise _Fail("LOAD_ERR_VALIDATE", "Can not append exception comps to existing exception, only values", ex.loc)
                    old.values.extend(ex.values)
            if prev.exceptions_loc is None:
                prev.exceptions_loc = _loc
        prev.visibility = self.index
        self.index += 1

    def _replace_rule(self, u: _Update) -> None:
        prev = self._rule_for_update(u, ERROR_NO_PREVIOUS_RULE_REPLACE)
        if not u.values:
            raise _Fail("LOAD_ERR_VALIDATE", "The rule must have at least one field that can be replaced", u.loc)
        for key, val in u.values.items():
            if key == "condition":
                prev.cond = val
            elif key == "output":
                prev.output = val
            elif key == "exceptions":
                exs, loc = val
                for ex in exs:
                    if not ex.fields.valid:
                        raise _Fail("LOAD_ERR_VALIDATE", "Rule exception item must have fields property with a list of fields", ex.loc)
                    self._validate_exception(ex)
                prev.exceptions = exs
                prev.exceptions_loc = loc
            else:
                setattr(prev, key.replace("-", "_"), val)
        prev.visibility = self.index
        self.index += 1

    # -- compiling (rule_loader_compiler.cpp) ------------------------------------------------

    def compile(self) -> RuleSet | None:
        backend, why = _backend(self.fields_arg)
        counts_only = backend is None
        lists = self._compile_lists()
        if counts_only:
            if self.rules or self.macros:
                self.error("LOAD_ERR_COMPILE_CONDITION", why, None, "andon.rules.parser and andon.rules.compiler are needed", file=self.files[0] if self.files else "")
            return None
        self.backend = backend
        view = _ListView(lists)
        macros = self._compile_macros(view)
        rules = self._compile_rules(view, macros)
        used_macros = macros.used
        if self.errors:
            # a rule or macro that failed may have used them: "unused" would be a false lead
            return None
        for name, info in self.macros.items():
            if name not in used_macros and name not in self.broken["macro"]:
                self.warn("LOAD_UNUSED_MACRO", "Macro not referred to by any other rule/macro", info.loc, item=f"macro '{name}'")
        for name, info in self.lists.items():
            if name not in view.used and name not in self._lists_used_by_lists:
                self.warn("LOAD_UNUSED_LIST", "List not referred to by any other rule/macro", info.loc, item=f"list '{name}'")
        if self.errors:
            return None
        return RuleSet(
            rules=rules,
            macros={
                n: Macro(n, i.cond.text, macros.done.get(n), n in used_macros, i.loc.src.name, i.loc.src.linecol(i.loc.index)[0])
                for n, i in sorted(self.macros.items(), key=lambda kv: kv[1].index)
            },
            lists={
                n: RuleList(n, tuple(lists[n]), n in view.used or n in self._lists_used_by_lists, i.loc.src.name, i.loc.src.linecol(i.loc.index)[0])
                for n, i in sorted(self.lists.items(), key=lambda kv: kv[1].index)
            },
            required_engine_version=_semver_str(self.required_engine) if self.required_engine else None,
            required_plugins=list(self.required_plugins),
        )

    def _compile_lists(self) -> dict[str, list[str]]:
        # a list item naming a list defined before it is replaced by that list's items
        self._lists_used_by_lists: set[str] = set()
        out: dict[str, list[str]] = {}
        infos = sorted(self.lists.values(), key=lambda i: i.index)

        def expand(info: _ListInfo, depth: int = 0) -> list[str]:
            if info.name in out:
                return out[info.name]
            items: list[str] = []
            for it in info.items:
                ref = self.lists.get(it)
                if ref is not None and ref.index < info.visibility and ref is not info and depth < 64:
                    self._lists_used_by_lists.add(ref.name)
                    items.extend(expand(ref, depth + 1))
                else:
                    items.append(it)
            out[info.name] = items
            return items

        for info in infos:
            expand(info)
        return out

    def _parse(self, text: _Text, item: str) -> Any:
        try:
            return self.backend.parse(text.text)
        except RuleError as e:
            self.error(
                "LOAD_ERR_COMPILE_CONDITION", e.message, text.locate(e.pos), _syntax_hint(e), item,
            )  # fmt: skip
            raise _Broken from None

    def _compile_macros(self, lists: _ListView) -> _MacroView:
        view = _MacroView(self, lists)
        for info in sorted(self.macros.values(), key=lambda i: i.index):
            try:
                view.resolved(info.name)
            except _Broken:
                pass
        return view

    def _locate_error(self, e: RuleError, text: _Text, used: set[str]) -> tuple[_Loc | None, str]:
        """Where a compile error is: in the rule's text, or in a macro it uses (AST positions are
        offsets into the text each node came from, and macro trees are spliced in)."""
        token = _quoted_token(e.message)
        pos = e.pos
        if token is None or pos is None:
            return text.locate(pos), ""
        if text.text[pos : pos + len(token)] == token:
            return text.locate(pos), ""
        for name in sorted(used, key=lambda n: self.macros[n].index if n in self.macros else 0):
            info = self.macros.get(name)
            if info is not None and info.cond.text[pos : pos + len(token)] == token:
                return info.cond.locate(pos), name
        return text.locate(pos), ""

    def _compile_rules(self, lists: _ListView, macros: _MacroView) -> list[Rule]:
        out: list[Rule] = []
        for r in sorted(self.rules.values(), key=lambda i: i.index):
            label = f"rule '{r.name}'"
            try:
                rule = self._compile_rule(r, label, lists, macros)
            except _Broken:
                continue
            except _Fail as f:
                self.error(f.code, f.message, f.loc, f.hint, f.item or label)
                continue
            except Exception as e:  # a bug in andon must not hide the other problems
                self.error(
                    "LOAD_ERR_COMPILE_CONDITION", f"internal error: {type(e).__name__}: {e}", r.cond.locate(0),
                    "this is a bug in andon; please report it with this rule", label,
                )  # fmt: skip
                continue
            if rule is not None:
                out.append(rule)
        return out

    def _condition_with_exceptions(self, r: _RuleInfo) -> _Text:
        # rule_loader_compiler.cpp build_rule_exception_infos, text for text
        text = _Text()
        text.add("(", r.cond.pieces[0].src if r.cond.pieces else r.loc.src, None, r.cond.pieces[0].index if r.cond.pieces else r.loc.index)
        text.add_text(r.cond)
        text.add(")", r.loc.src)
        for ex in r.exceptions:
            if not ex.fields.is_list:
                parts = []
                for val in ex.values:
                    if val.is_list:
                        raise _Fail("LOAD_ERR_VALIDATE", "Expected values array to contain a list of strings", val.loc or ex.loc)
                    parts.append(_quote_item(val.item))
                icond = f"({ex.fields.item} {ex.comps.item} ({', '.join(parts)}))" if parts else ""
            else:
                alts = []
                for values in ex.values:
                    if not values.is_list or len(values.items) != len(ex.fields.items):
                        raise _Fail(
                            "LOAD_ERR_VALIDATE", "Fields and values lists must have equal length", values.loc or ex.loc,
                            f"this exception has {len(ex.fields.items)} fields: "
                            + ", ".join(f.item for f in ex.fields.items),
                        )  # fmt: skip
                    terms = []
                    for f, c, v in zip(ex.fields.items, ex.comps.items, values.items):
                        if v.is_list:
                            istr = "(" + ", ".join(_quote_item(x.item) for x in v.items) + ")"
                        elif c.item in LIST_OPERATORS:
                            istr = _paren_item(v.item)
                        else:
                            istr = _quote_item(v.item)
                        terms.append(f" {f.item} {c.item} {istr}")
                    alts.append("(" + " and ".join(terms) + ")")
                icond = "(" + " or ".join(alts) + ")" if alts else ""
            if icond:
                text.add(" and not " + icond, ex.loc.src, None, (ex.loc.index))
        return text

    def _check_exception_fields(self, r: _RuleInfo) -> None:
        for ex in r.exceptions:
            names = [f.item for f in ex.fields.items] if ex.fields.is_list else [ex.fields.item]
            for n in names:
                try:
                    self.backend.check_field(n)
                except (UnknownFieldError, FieldArgError):
                    if r.skip_if_unknown_filter:
                        self.warn("LOAD_UNKNOWN_FILTER", f"'{n}' is not a supported filter field", ex.fields.loc or ex.loc, item=f"rule '{r.name}'")
                        raise _Broken from None
                    raise _Fail(
                        "LOAD_ERR_VALIDATE", f"'{n}' is not a supported filter field", ex.fields.loc or ex.loc,
                        "run `andon rules fields` for the fields andon knows",
                    ) from None  # fmt: skip

    def _compile_rule(self, r: _RuleInfo, label: str, lists: _ListView, macros: _MacroView) -> Rule | None:
        exceptions = tuple(
            RuleException(
                ex.name,
                ex.fields.plain(),
                ex.comps.plain(),
                tuple(v.plain() for v in ex.values),
            )
            for ex in r.exceptions
        )
        file, line = r.loc.src.name, r.loc.src.linecol(r.loc.index)[0]
        tags = tuple(sorted(r.tags))
        enabled = r.enabled and (self.min_priority is None or r.priority <= self.min_priority)
        if r.unknown_source:
            return Rule(
                r.name, r.desc, r.cond.text, r.output.text, r.priority, tags, enabled, r.source, None, None,
                file, line, exceptions, "", r.skip_if_unknown_filter, r.warn_evttypes, r.capture, r.capture_duration,
            )  # fmt: skip
        # the output first, as Falco does; its problems do not stop the condition's
        output = r.output.text
        if "%container.info" in output:
            self.warn(
                "LOAD_DEPRECATED_ITEM",
                "%container.info is deprecated and no more useful, and will be dropped by Falco 1.0.0.",
                r.output.locate(output.find("%container.info")), "drop it: container fields are added by andon", label,
            )  # fmt: skip
            output = output.replace("%container.info", "")
        try:
            fmt = self.backend.output(output)
        except RuleError as e:
            problems = getattr(e, "problems", None) or [e]  # OutputFormat.parse collects them all
            unknown = all(isinstance(p, (UnknownFieldError, FieldArgError)) for p in problems)
            if unknown and r.skip_if_unknown_filter:
                self.warn("LOAD_UNKNOWN_FILTER", e.message, r.output.locate(e.pos), "the rule is skipped (skip-if-unknown-filter)", label)
                return None
            for p in problems:
                hint = "run `andon rules fields` for the fields andon knows" if isinstance(p, (UnknownFieldError, FieldArgError)) else ""
                self.error("LOAD_ERR_COMPILE_OUTPUT", p.message, r.output.locate(p.pos), hint, label)
            fmt = None  # reported; the condition is still checked so its problems show too
        output_ok = fmt is not None or self.backend.output_format is None
        self._check_exception_fields(r)
        text = self._condition_with_exceptions(r)
        ast = self._parse(text, label)
        used: set[str] = set()
        rview = macros.for_rule(used)
        try:
            node = self.backend.resolve(ast, rview, lists)
        except UndefinedMacroError as e:
            raise _Fail("LOAD_ERR_VALIDATE", e.message, text.locate(e.pos), _undefined_hint(e, self), label) from None
        except MacroCycleError as e:
            raise _Fail("LOAD_ERR_VALIDATE", e.message, text.locate(e.pos), "", label) from None
        except RuleError as e:  # e.g. a many-item list as the value of '='
            raise _Fail("LOAD_ERR_COMPILE_CONDITION", e.message, text.locate(e.pos), "", label) from None
        try:
            flt = self.backend.compile(node)
        except (UnknownFieldError, FieldArgError) as e:
            loc, in_macro = self._locate_error(e, text, used)
            msg = e.message + (f" (in macro '{in_macro}')" if in_macro else "")
            if r.skip_if_unknown_filter and isinstance(e, UnknownFieldError):
                self.warn("LOAD_UNKNOWN_FILTER", msg, loc, "the rule is skipped (skip-if-unknown-filter)", label)
                return None
            raise _Fail("LOAD_ERR_COMPILE_CONDITION", msg, loc, "run `andon rules fields` for the fields andon knows", label) from None
        except RuleError as e:
            loc, in_macro = self._locate_error(e, text, used)
            msg = e.message + (f" (in macro '{in_macro}')" if in_macro else "")
            raise _Fail("LOAD_ERR_COMPILE_CONDITION", msg, loc, "", label) from None
        if not output_ok:
            raise _Broken
        if r.warn_evttypes and getattr(flt, "evttypes", None) is None:
            self.warn(
                "LOAD_NO_EVTTYPE", "Rule matches too many evt.type values. This has a significant performance penalty.",
                r.loc, "add evt.type = ... (or a macro that pins it) to the condition", label,
            )  # fmt: skip
        return Rule(
            r.name, r.desc, r.cond.text, r.output.text, r.priority, tags, enabled, r.source, flt, fmt,
            file, line, exceptions, text.text, r.skip_if_unknown_filter, r.warn_evttypes, r.capture, r.capture_duration,
        )  # fmt: skip


def _syntax_hint(e: RuleError) -> str:
    if isinstance(e, RuleSyntaxError):
        return "check parentheses, quotes and operators near the caret"
    return ""


def _undefined_hint(e: RuleError, loader: _Loader) -> str:
    import difflib

    token = _quoted_token(e.message)
    if token:
        close = difflib.get_close_matches(token, list(loader.macros), n=1)
        if close:
            return f"did you mean macro '{close[0]}'?"
    return "define it with '- macro: NAME' before use, or check the spelling of the field"


class _ListView(Mapping):
    """The lists as ``compiler.resolve`` sees them; remembers which were looked up."""

    def __init__(self, lists: dict[str, list[str]]) -> None:
        self._lists = lists
        self.used: set[str] = set()

    def __getitem__(self, name: str) -> list[str]:
        v = self._lists[name]
        self.used.add(name)
        return v

    def __contains__(self, name: object) -> bool:
        return name in self._lists

    def __iter__(self) -> Iterator[str]:
        return iter(self._lists)

    def __len__(self) -> int:
        return len(self._lists)


class _MacroView(Mapping):
    """Resolved macro trees, made on first use.

    A macro sees the macros defined before its latest definition or append (Falco's
    visibility); a rule sees them all. Looking a macro up marks it used; a macro that failed
    makes whoever uses it fail silently (its own error is already reported).
    """

    def __init__(self, loader: _Loader, lists: _ListView, visibility: int | None = None, used: set[str] | None = None, root: _MacroView | None = None) -> None:
        self.loader = loader
        self.lists = lists
        self.visibility = visibility
        self.root = root or self
        self._used_here = used
        if root is None:
            self.done: dict[str, Any] = {}
            self.failed: set[str] = set()
            self.active: list[str] = []
            self.used: set[str] = set()

    def for_rule(self, used: set[str]) -> _MacroView:
        return _MacroView(self.loader, self.lists, None, used, self.root)

    def _visible(self, name: object) -> bool:
        info = self.loader.macros.get(name)  # type: ignore[arg-type]
        return info is not None and (self.visibility is None or info.index < self.visibility)

    def __contains__(self, name: object) -> bool:
        return self._visible(name)

    def __getitem__(self, name: str) -> Any:
        if not self._visible(name):
            raise KeyError(name)
        root = self.root
        root.used.add(name)
        if self._used_here is not None:
            self._used_here.add(name)
        return root.resolved(name, self._used_here)

    def __iter__(self) -> Iterator[str]:
        return (n for n in self.loader.macros if self._visible(n))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def resolved(self, name: str, used: set[str] | None = None) -> Any:
        root = self.root
        if name in root.done:
            if used is not None:
                used |= root._closure.get(name, set())
            return root.done[name]
        if name in root.failed:
            raise _Broken
        info = self.loader.macros[name]
        label = f"macro '{name}'"
        if name in root.active:
            cycle = root.active[root.active.index(name) :] + [name]
            raise MacroCycleError("Macros refer to each other in a loop: " + " -> ".join(cycle))
        root.active.append(name)
        mine: set[str] = set()
        try:
            try:
                ast = self.loader._parse(info.cond, label)
            except _Broken:
                root.failed.add(name)
                raise
            view = _MacroView(self.loader, self.lists, info.visibility, mine, root)
            try:
                node = self.loader.backend.resolve(ast, view, self.lists)
            except _Broken:
                root.failed.add(name)
                raise
            except (UndefinedMacroError, MacroCycleError) as e:
                root.failed.add(name)
                hint = _undefined_hint(e, self.loader) if isinstance(e, UndefinedMacroError) else ""
                if isinstance(e, UndefinedMacroError) and e.message:
                    token = _quoted_token(e.message)
                    later = self.loader.macros.get(token or "")
                    if later is not None and later.index >= info.visibility:
                        hint = f"macro '{token}' is defined later in the file; a macro can only use macros defined before it"
                self.loader.error("LOAD_ERR_VALIDATE", e.message, info.cond.locate(e.pos), hint, label)
                raise _Broken from None
            except RuleError as e:
                root.failed.add(name)
                self.loader.error("LOAD_ERR_COMPILE_CONDITION", e.message, info.cond.locate(e.pos), "", label)
                raise _Broken from None
        finally:
            root.active.pop()
        if not hasattr(root, "_closure"):
            root._closure = {}
        root._closure[name] = set(mine)
        for m in mine:
            root._closure[name] |= root._closure.get(m, set())
        root.done[name] = node
        if used is not None:
            used |= root._closure[name]
        return node


def load_rules(
    sources: list[tuple[str, str]],
    *,
    fields: Any = None,
    min_priority: Priority | str | None = None,
) -> LoadResult:
    """Load rules files (``(filename, text)`` pairs, in order) with Falco's semantics.

    ``fields`` is the field registry to compile against (default ``fields.FIELDS``).
    ``min_priority``: rules less severe than this are loaded but not enabled (Falco's
    ``priority`` setting). Never raises for bad content: every problem is in the result.
    """
    if isinstance(min_priority, str):
        p = _parse_priority(min_priority)
        if p is None:
            from ..errors import UsageError

            raise UsageError(f"unknown priority {min_priority!r}")
        min_priority = p
    ld = _Loader(fields, min_priority)
    for name, text in sources:
        ld.read(name, text)
    ruleset = ld.compile()
    counts = {
        "rules": len(ruleset.rules) if ruleset else len(ld.rules),
        "macros": len(ld.macros),
        "lists": len(ld.lists),
    }
    return LoadResult(ld.errors, ld.warnings, ruleset if not ld.errors else None, ld.files, counts)


def load_files(paths: list[str], **kw: Any) -> LoadResult:
    """Read files from disk and load them; a file that cannot be read is a LOAD_ERR_FILE_READ."""
    sources: list[tuple[str, str]] = []
    unread: list[Problem] = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                sources.append((p, f.read()))
        except (OSError, UnicodeDecodeError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            unread.append(Problem("LOAD_ERR_FILE_READ", f"cannot read the file: {msg}", p, hint="check the path and its permissions"))
    res = load_rules(sources, **kw)
    if unread:
        res.errors[:0] = unread
        res.files[:0] = [u.file for u in unread]
        res.ruleset = None
    return res
