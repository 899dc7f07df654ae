"""Rule outputs: Falco's output strings, priorities and alerts, byte for byte.

The facts this module relies on (Falco 0.44, falcosecurity/libs at the same time):

Output strings (libs ``userspace/libsinsp/eventformatter.cpp``)
    ``%field`` and ``%field[arg]`` insert a field; the name is the *longest prefix that is a
    known field* (``%proc.namefoo`` is ``proc.name`` then the text ``foo``). ``%NNfield``
    pads or cuts the value to exactly NN characters. A missing value prints ``<NA>``
    (Falco always prefixes the rule's output with ``*``, "allow missing values"; a ``*``
    the rule itself starts with is dropped). There is no ``%%`` escape: a ``%`` that does not
    start a field, or ends the string, makes the output invalid, and we reject it too.
    ``%(field)`` is *not* Falco syntax; andon accepts it (the contract in
    :mod:`andon.rules` promises it) so a field can be followed directly by letters.
    Field transformers (``%toupper(proc.name)``) are not supported yet.

The text line (``userspace/engine/formats.cpp``, ``format_event``)
    ``"%evt.time: " + Priority + " " + message``; ``evt.time`` is ``HH:MM:SS.nnnnnnnnn`` in
    local time (libs ``ts_to_string``: the zone offset *now*, not at the event), or with
    ``time_format_iso_8601`` libs' ``ts_to_iso_8601``, ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+0000``.
    Since Falco 0.44 the whole line goes through the JSON string encoder (quotes stripped):
    control characters are escaped (``\\n``), as are ``"`` and ``\\``, and invalid UTF-8
    becomes U+FFFD.

The JSON alert (same function)
    Keys ``time rule priority source hostname`` always, ``output`` (the whole text line,
    unescaped), ``tags`` (a set: sorted, unique), ``message`` (the rule's output alone; off
    by default) and ``output_fields`` by options; nlohmann's default object is a sorted map,
    so keys come out sorted, compact, UTF-8. ``time`` is UTC ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``.
    ``output_fields`` holds every field of the output as written (``proc.aname[2]``) with
    its typed value, ``null`` when missing, *plus* the time field of the prefix:
    ``"evt.time": <ns>`` (``"evt.time.iso8601": <ns>`` in ISO mode), which is why Falco's
    ``output_fields`` is never empty (Falcosidekick rejects an alert whose is).

Priorities (``userspace/engine/falco_common.cpp``)
    Emergency, Alert, Critical, Error, Warning, Notice, Informational, Debug, numbered 0..7
    like syslog severities (smaller is more severe); parsed case-insensitively, ``info``
    accepted for Informational; printed as those names.

Internal messages (``userspace/falco/falco_outputs.cpp``, ``handle_msg``)
    Falco's own notices (ours: rate-limit summaries) have source ``internal``, no tags; the
    text is ``time: Priority msg (k=v k=v)`` with JSON-encoded values, the JSON ``output``
    is ``msg`` alone.
"""

from __future__ import annotations

import enum
import json
import re
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FieldArgError, RuleError, RuleSyntaxError, UnknownFieldError

NA = "<NA>"
INTERNAL_SOURCE = "internal"

_PRIORITY_NAMES = ("Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug")


class Priority(enum.IntEnum):
    """Falco's eight priorities, numbered like syslog severities: smaller is more severe.

    ``Priority.WARNING.display`` is ``"Warning"`` (what alerts print);
    ``p.at_least(Priority.WARNING)`` is true for Warning, Error, ... Emergency.
    """

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7

    @property
    def display(self) -> str:
        return _PRIORITY_NAMES[self.value]

    label = display  # the loader's name for it

    def at_least(self, threshold: Priority) -> bool:
        """True when this priority is as severe as ``threshold`` or more."""
        return self.value <= threshold.value

    @classmethod
    def parse(cls, text: str | Priority) -> Priority:
        """``"warning"``, ``"WARNING"``, ``"Info"``... -> Priority; RuleError if none matches."""
        if isinstance(text, Priority):
            return text
        p = _PRIORITY_BY_NAME.get(str(text).strip().lower())
        if p is None:
            raise RuleError(
                f"unknown priority {text!r}; one of: " + ", ".join(n.lower() for n in _PRIORITY_NAMES) + " (or info)"
            )
        return p

    def __str__(self) -> str:
        return self.display


_PRIORITY_BY_NAME = {n.lower(): Priority(i) for i, n in enumerate(_PRIORITY_NAMES)}
_PRIORITY_BY_NAME["info"] = Priority.INFORMATIONAL


# -- output strings ---------------------------------------------------------------------------

# libs parser.cpp RGX_FIELDNAME and RGX_FIELDARGBARESTR
_FIELD_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+")
_FIELD_ARG_BARE = re.compile(r"""[^\]\["'\s]+""")
_DIGITS = re.compile(r"[0-9]+")
_TRANSFORMERS = ("tolower(", "toupper(", "b64(", "basename(", "len(", "join(", "concat(", "getopt(", "val(")


@dataclass(frozen=True, slots=True)
class FieldRef:
    """One ``%field`` of an output string."""

    key: str  # as written, without the width: "proc.aname[2]" (the output_fields key)
    name: str
    arg: str | None
    pos: int  # offset of the '%' in the text
    width: int  # %NNfield: pad/cut to NN characters; 0 = as is
    extractor: Any


def _registry(fields: Any) -> Any:
    if fields is None:
        from .fields import FIELDS  # lazy: fields.py is written beside this module

        return FIELDS
    return fields


def _renderers(fields: Any) -> tuple[Callable[[Any, Any], str], Callable[[Any, Any], Any]]:
    """``render`` and ``json_value``: the registry's own if it has them, else fields.py's."""
    render = getattr(fields, "render", None)
    jv = getattr(fields, "json_value", None)
    if render is None or jv is None:
        from . import fields as _fields

        render = render or _fields.render
        jv = jv or _fields.json_value
    return render, jv


class OutputFormat:
    """A parsed output string. ``format(ev, ctx) -> (text, output_fields)``.

    Build with :meth:`parse`. ``text`` is the rule's message (no time or priority prefix);
    ``output_fields`` maps each field as written to its JSON value (``None`` if missing).
    """

    __slots__ = ("text", "refs", "_parts", "_hidden", "_render", "_json", "errors")

    def __init__(
        self, text: str, parts: list[str | FieldRef], render: Any, json_value: Any, hidden: tuple = ()
    ) -> None:
        self.text = text
        self._parts = tuple(parts)
        self._hidden: tuple[FieldRef, ...] = tuple(hidden)  # append_output extra_fields: JSON only
        self.refs: tuple[FieldRef, ...] = tuple(p for p in parts if isinstance(p, FieldRef))
        self._render = render
        self._json = json_value
        self.errors = 0  # extractor exceptions seen while formatting (printed as <NA>)

    @property
    def fields(self) -> tuple[str, ...]:
        """The output_fields keys, in order of first appearance."""
        return tuple(dict.fromkeys([*(r.key for r in self.refs), *(r.key for r in self._hidden)]))

    @classmethod
    def parse(cls, text: str, fields: Any = None, extra_fields: Any = ()) -> OutputFormat:
        """Parse a rule's ``output``. Every problem is collected; the first is raised.

        The exception's ``problems`` attribute lists them all (RuleError with ``pos``, the
        offset in ``text``), so a loader can report each at its own column.
        """
        reg = _registry(fields)
        parts, problems = _tokenize(text, reg)
        if problems:
            first = problems[0]
            msg = first.message
            if len(problems) > 1:
                msg += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''} in this output)"
            err = type(first)(msg, first.pos)
            err.problems = problems  # type: ignore[attr-defined]
            raise err
        hidden = []
        for name in extra_fields:
            xparts, xproblems = _tokenize("%" + name, reg)
            if xproblems or len(xparts) != 1 or isinstance(xparts[0], str):
                raise RuleError(f"append_output extra_fields: {name!r} is not a field andon knows")
            hidden.append(xparts[0])
        render, jv = _renderers(reg)
        return cls(text, parts, render, jv, tuple(hidden))

    def format(self, ev: Any, ctx: Any) -> tuple[str, dict[str, Any]]:
        out: list[str] = []
        values: dict[str, Any] = {}
        render = self._render
        for p in self._parts:
            if p.__class__ is str:
                out.append(p)  # type: ignore[arg-type]
                continue
            ref: FieldRef = p  # type: ignore[assignment]
            ex = ref.extractor
            try:
                v = ex(ev, ctx)
            except Exception:  # an extractor bug must not lose the alert: print <NA>, count it
                self.errors += 1
                v = None
            if v is None or (isinstance(v, tuple) and not v):  # an empty Multi is <NA> too
                s = NA
                values[ref.key] = None
            else:
                s = render(v, ex.type)
                values[ref.key] = self._json(v, ex.type)
            if ref.width:
                s = s[: ref.width].ljust(ref.width)
            out.append(s)
        for ref in self._hidden:
            try:
                v = ref.extractor(ev, ctx)
            except Exception:
                self.errors += 1
                v = None
            empty = v is None or (isinstance(v, tuple) and not v)
            values.setdefault(ref.key, None if empty else self._json(v, ref.extractor.type))
        return "".join(out), values

    def __repr__(self) -> str:
        return f"OutputFormat({self.text!r})"


def _tokenize(text: str, reg: Any) -> tuple[list[str | FieldRef], list[RuleError]]:
    parts: list[str | FieldRef] = []
    problems: list[RuleError] = []
    start = 1 if text.startswith("*") else 0  # Falco's "allow missing values" marker
    n = len(text)
    lit_start = start
    i = start
    while i < n:
        if text[i] != "%":
            i += 1
            continue
        if lit_start < i:
            parts.append(text[lit_start:i])
        pct = i
        j = i + 1
        if j >= n:
            problems.append(RuleSyntaxError("an output cannot end with a '%' (Falco has no %% escape)", pct))
            lit_start = i = n
            break
        width = 0
        m = _DIGITS.match(text, j)
        if m:
            width = int(m.group())
            j = m.end()
            if j >= n:
                problems.append(RuleSyntaxError("an output cannot end with a field width", pct))
                lit_start = i = n
                break
        ref, end, err = _field_at(text, j, pct, width, reg)
        if err is not None:
            problems.append(err)
            # skip the bad token so later fields are still checked
            m = _FIELD_NAME.match(text, j)
            end = m.end() if m else j + (1 if text[j] == "%" else 0)
            if end < n and text[end] == "[":
                close = text.find("]", end)
                end = close + 1 if close >= 0 else end
        else:
            parts.append(ref)  # type: ignore[arg-type]
        lit_start = i = end
    if lit_start < n:
        parts.append(text[lit_start:])
    # merge adjacent literals (cheaper formatting)
    merged: list[str | FieldRef] = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + p  # type: ignore[operator]
        else:
            merged.append(p)
    return merged, problems


def _field_at(text: str, j: int, pct: int, width: int, reg: Any) -> tuple[FieldRef | None, int, RuleError | None]:
    """The field starting at ``text[j]``: (ref, end offset, None) or (None, j, error)."""
    if text[j] == "(":  # andon's %(field) / %(field[arg])
        close = text.find(")", j)
        if close < 0:
            return None, j, RuleSyntaxError("'%(' without a closing ')'", pct)
        inner = text[j + 1 : close]
        m = _FIELD_NAME.fullmatch(inner.split("[", 1)[0])
        if not m:
            return None, j, RuleSyntaxError(f"'%({inner})': expected a field name inside the parentheses", pct)
        name = m.group()
        arg = None
        rest = inner[len(name) :]
        if rest:
            arg, k, err = _arg_at(rest, 0, pct)
            if err is not None:
                return None, j, err
            if k != len(rest):
                return None, j, RuleSyntaxError(f"'%({inner})': unexpected {rest[k:]!r} after the field", pct)
        try:
            ex = reg.lookup(name, arg)
        except (UnknownFieldError, FieldArgError) as e:
            return None, j, type(e)(f"output field %({inner}): {e.message}", pct)
        key = name if arg is None else f"{name}[{arg}]"
        return FieldRef(key, name, arg, pct, width, ex), close + 1, None

    if text[j] == "%":
        return None, j, RuleSyntaxError("'%%' is not an escape in Falco outputs: write a single '%' before a field", pct)
    if text.startswith(_TRANSFORMERS, j):
        t = text[j : text.index("(", j)]
        return None, j, RuleSyntaxError(f"field transformer {t}() in outputs is not supported by andon yet", pct)
    m = _FIELD_NAME.match(text, j)
    if not m:
        return None, j, RuleSyntaxError(f"'%' must start a field (found {text[j:j + 12]!r})", pct)
    full = m.group()
    # the name with its [arg] first; then, like libs, shorter and shorter prefixes that are
    # still field names, each without an argument (the rest is literal text)
    arg = None
    end = m.end()
    first_err: RuleError | None = None
    if end < len(text) and text[end] == "[":
        arg, k, err = _arg_at(text, end, pct)
        if err is not None:
            return None, j, err
        try:
            ex = reg.lookup(full, arg)
            return FieldRef(f"{full}[{arg}]", full, arg, pct, width, ex), k, None
        except UnknownFieldError as e:
            first_err = e
        except FieldArgError as e:
            return None, j, FieldArgError(f"output field %{full}[{arg}]: {e.message}", pct)
    for cut in _prefixes(full):
        try:
            ex = reg.lookup(cut, None)
        except UnknownFieldError as e:
            first_err = first_err or e
            continue
        except FieldArgError as e:
            if cut == full:  # the whole name is a field that needs an argument
                return None, j, FieldArgError(f"output field %{full}: {e.message}", pct)
            first_err = first_err or e
            continue
        return FieldRef(cut, cut, None, pct, width, ex), j + len(cut), None
    msg = first_err.message if first_err is not None else f"unknown field {full!r}"
    return None, j, UnknownFieldError(f"output field %{full}: {msg}", pct)


def _prefixes(name: str) -> Iterable[str]:
    """``name`` and its shorter prefixes that still look like a field name, longest first."""
    for k in range(len(name), 0, -1):
        cand = name[:k]
        if _FIELD_NAME.fullmatch(cand):
            yield cand


def _arg_at(text: str, k: int, pct: int) -> tuple[str | None, int, RuleError | None]:
    """``[arg]`` at ``text[k]``: a bare string or a quoted one. -> (arg, end, error)."""
    assert text[k] == "["
    k += 1
    if k < len(text) and text[k] in "'\"":
        q = text[k]
        close = text.find(q, k + 1)
        if close < 0:
            return None, k, RuleSyntaxError("unterminated quoted field argument", pct)
        arg = text[k + 1 : close]
        k = close + 1
    else:
        m = _FIELD_ARG_BARE.match(text, k)
        if not m:
            return None, k, RuleSyntaxError("expected a field argument inside '[...]'", pct)
        arg = m.group()
        k = m.end()
    if k >= len(text) or text[k] != "]":
        return None, k, RuleSyntaxError("expected a ']' after the field argument", pct)
    return arg, k + 1, None


# -- time strings -----------------------------------------------------------------------------


def time_text(ns: int) -> str:
    """``evt.time``: ``HH:MM:SS.nnnnnnnnn`` in local time, offset as of now (as libs does)."""
    sec, frac = divmod(ns, 1_000_000_000)
    s = (sec + _time.localtime().tm_gmtoff) % 86400
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}.{frac:09d}"


def time_iso8601(ns: int) -> str:
    """``evt.time.iso8601``: ``2024-01-02T03:04:05.123456789+0000`` (UTC)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec)) + f".{frac:09d}+0000"


def time_json(ns: int) -> str:
    """The JSON alert's ``time``: ``2024-01-02T03:04:05.123456789Z``."""
    sec, frac = divmod(ns, 1_000_000_000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec)) + f".{frac:09d}Z"


# -- alerts -----------------------------------------------------------------------------------


def _json_text(s: str) -> str:
    """Falco 0.44's plain-text encoding: a JSON string's content, without the quotes."""
    return _clean(json.dumps(s, ensure_ascii=False)[1:-1])


def dump_json(obj: Any) -> str:
    """Serialize like nlohmann ``dump(-1)``: compact, sorted keys, UTF-8, bad bytes -> U+FFFD."""
    return _clean(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True))


def _clean(s: str) -> str:
    """Undecodable bytes (carried as surrogates by ``surrogateescape``) -> U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # other lone surrogates
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@dataclass(slots=True)
class Alert:
    """One alert. ``time`` is ns since the epoch (the event's); ``output`` the rule's message."""

    time: int
    rule: str
    priority: Priority
    source: str
    hostname: str
    output: str
    output_fields: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    internal: bool = False  # a notice from andon itself (Falco's handle_msg), not a rule's alert

    def prefix(self, iso8601: bool = False) -> str:
        t = time_iso8601(self.time) if iso8601 else time_text(self.time)
        return f"{t}: {self.priority.display}"

    def text_line(self, iso8601: bool = False) -> str:
        """Falco's text output: ``22:35:56.123456789: Warning Sensitive file opened ...``."""
        if self.internal:
            t = time_iso8601(self.time) if iso8601 else time_text(self.time)
            kv = " ".join(f"{k}={dump_json(v)}" for k, v in self.output_fields.items())
            return f"{t}: {self.priority.display} {self.output} ({kv})"
        return _json_text(f"{self.prefix(iso8601)} {self.output}")

    def to_json(
        self,
        *,
        iso8601: bool = False,
        include_output: bool = True,
        include_tags: bool = True,
        include_message: bool = False,
        include_output_fields: bool = True,
    ) -> dict[str, Any]:
        """Falco's JSON alert as a dict; the ``json_include_*`` options are keyword arguments."""
        d: dict[str, Any] = {
            "hostname": self.hostname,
            "priority": self.priority.display,
            "rule": self.rule,
            "source": self.source,
            "time": time_json(self.time),
        }
        if self.internal:  # handle_msg: every key, output is the message alone, no tags
            d["output"] = self.output
            d["output_fields"] = dict(self.output_fields)
            return d
        if include_output:
            d["output"] = f"{self.prefix(iso8601)} {self.output}"
        if include_tags:
            d["tags"] = sorted(set(self.tags))
        if include_message:
            d["message"] = self.output
        if include_output_fields:
            of = dict(self.output_fields)
            of["evt.time.iso8601" if iso8601 else "evt.time"] = self.time
            d["output_fields"] = of
        return d

    def to_json_line(self, **options: bool) -> str:
        """:meth:`to_json` serialized as Falco does (one line, sorted keys, compact)."""
        return dump_json(self.to_json(**options))


def make_alert(rule: Any, ev: Any, ctx: Any, hostname: str, fmt: OutputFormat | None = None) -> Alert:
    """The alert ``rule`` raises for ``ev``. Uses ``fmt`` if given (the engine's, with
    ``append_output`` applied), else ``rule.output_fmt`` (parsed once by the loader)."""
    if fmt is None:
        fmt = getattr(rule, "output_fmt", None)
    if fmt is None:
        fmt = OutputFormat.parse(rule.output)
    text, values = fmt.format(ev, ctx)
    pr = rule.priority
    if pr.__class__ is not Priority:  # another IntEnum with Falco's numbers (the loader's), or a name
        pr = Priority(int(pr)) if isinstance(pr, int) else Priority.parse(pr)
    return Alert(
        time=ev.ts,
        rule=rule.name,
        priority=pr,
        source=getattr(rule, "source", None) or "syscall",
        hostname=hostname,
        output=text,
        output_fields=values,
        tags=tuple(getattr(rule, "tags", ()) or ()),
    )


def internal_alert(time_ns: int, priority: Priority, rule: str, msg: str, fields: dict[str, Any], hostname: str) -> Alert:
    """A notice from andon itself, shaped like Falco's internal messages (source ``internal``)."""
    return Alert(time_ns, rule, priority, INTERNAL_SOURCE, hostname, msg, dict(fields), (), internal=True)


__all__ = [
    "NA",
    "INTERNAL_SOURCE",
    "Alert",
    "FieldRef",
    "OutputFormat",
    "Priority",
    "dump_json",
    "internal_alert",
    "make_alert",
    "time_iso8601",
    "time_json",
    "time_text",
]
