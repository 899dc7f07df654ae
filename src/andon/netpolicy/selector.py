"""``EndpointSelector``: Kubernetes' LabelSelector with Cilium's label sources.

Keys may carry a source: ``k8s:app`` matches only ``k8s`` labels, ``app`` and ``any:app``
match a label ``app`` from any source, ``reserved:host`` matches the host identity. An empty
selector (no ``matchLabels``, no ``matchExpressions``) selects every endpoint; a selector
holding ``reserved:all`` matches everything (Cilium ``EndpointSelector.Matches``).
Operators follow Kubernetes: ``In`` and ``Exists`` need the key, ``NotIn`` and
``DoesNotExist`` also match when the key is absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .labels import SOURCE_ANY, SOURCE_RESERVED, LabelSet, PolicyError, split_key

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_OP_BY_LOWER = {op.lower(): op for op in OPERATORS}


def canonical_operator(text: str) -> str | None:
    """``In`` for ``In``/``in``/``IN``; None when it is no operator at all."""
    return _OP_BY_LOWER.get(str(text).lower())


@dataclass(frozen=True)
class Requirement:
    source: str
    key: str
    operator: str  # one of OPERATORS
    values: frozenset[str] = frozenset()

    def _values_of(self, labels: LabelSet) -> list[str]:
        return [l.value for l in labels if l.key == self.key and (self.source == SOURCE_ANY or l.source == self.source)]

    def matches(self, labels: LabelSet) -> bool:
        found = self._values_of(labels)
        if self.operator == "In":
            return any(v in self.values for v in found)
        if self.operator == "NotIn":
            return not any(v in self.values for v in found)
        if self.operator == "Exists":
            return bool(found)
        return not found  # DoesNotExist

    def __str__(self) -> str:
        key = f"{self.source}:{self.key}"
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{'!' if self.operator == 'DoesNotExist' else ''}{key}"
        op = "in" if self.operator == "In" else "notin"
        return f"{key} {op} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class EndpointSelector:
    """``requirements`` hold both forms: ``matchLabels: {k: v}`` is ``k In (v)``."""

    requirements: tuple[Requirement, ...] = ()
    line: int = 0  # where it was written, for problems about it (0: built in code)
    col: int = 0

    @classmethod
    def build(
        cls,
        match_labels: Mapping[str, Any] | None = None,
        match_expressions: Iterable[Mapping[str, Any]] | None = None,
        line: int = 0,
        col: int = 0,
    ) -> EndpointSelector:
        reqs: list[Requirement] = []
        for k, v in (match_labels or {}).items():
            source, key = split_key(str(k), SOURCE_ANY)
            reqs.append(Requirement(source, key, "In", frozenset({"" if v is None else str(v)})))
        for e in match_expressions or ():
            op = canonical_operator(e.get("operator", ""))
            if op is None:
                raise PolicyError(f"selector operator {e.get('operator')!r} is not one of {', '.join(OPERATORS)}")
            source, key = split_key(str(e.get("key", "")), SOURCE_ANY)
            if not key:
                raise PolicyError("a matchExpressions entry needs a key")
            values = frozenset(str(x) for x in (e.get("values") or ()))
            if op in ("In", "NotIn") and not values:
                raise PolicyError(f"operator {op} needs values (key {key!r})")
            if op in ("Exists", "DoesNotExist") and values:
                raise PolicyError(f"operator {op} takes no values (key {key!r})")
            reqs.append(Requirement(source, key, op, values))
        return cls(tuple(reqs), line, col)

    @property
    def is_wildcard(self) -> bool:
        return not self.requirements

    @property
    def selects_all(self) -> bool:
        """Holds ``reserved:all``: matches every identity, reserved ones included."""
        return any(r.source == SOURCE_RESERVED and r.key == "all" and r.operator == "In" for r in self.requirements)

    @property
    def names_reserved(self) -> bool:
        """Asks for a reserved label (``reserved:host``): may select reserved identities."""
        return any(r.source == SOURCE_RESERVED for r in self.requirements)

    def matches(self, labels: LabelSet) -> bool:
        if self.selects_all:
            return True
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return "{" + ", ".join(sorted(str(r) for r in self.requirements)) + "}" if self.requirements else "{} (all endpoints)"


WILDCARD = EndpointSelector()
