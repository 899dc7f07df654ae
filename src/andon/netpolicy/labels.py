"""Labels with a source, as Cilium writes them: ``source:key=value``.

A label's source says where it came from (``k8s``, ``container``, ``reserved``, ...). In a
selector the source ``any`` matches a label of that key from every source, and a selector key
written without a source means ``any:`` (Cilium ``pkg/labels``: ``GetExtendedKeyFrom``).
Endpoint labels written without a source are ``k8s:`` here: andon's endpoints stand in for pods.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import PolicyError  # noqa: F401 (re-exported)

# PolicyError lives in the errors tree; netpolicy modules import it from here too

SOURCE_ANY = "any"
SOURCE_K8S = "k8s"
SOURCE_RESERVED = "reserved"
SOURCE_CIDR = "cidr"
SOURCE_CONTAINER = "container"
DEFAULT_SOURCE = SOURCE_K8S

# a source is a short word; "io.kubernetes.pod.namespace" or "example.com/x" before a ':' is a key
_SOURCE_RE = re.compile(r"[a-z][a-z0-9-]*\Z")


def split_key(text: str, default_source: str) -> tuple[str, str]:
    """``"k8s:app"`` -> ``("k8s", "app")``; ``"app"`` -> ``(default_source, "app")``."""
    head, sep, rest = text.partition(":")
    if sep and rest and _SOURCE_RE.match(head):
        return head, rest
    return default_source, text


@dataclass(frozen=True, order=True)
class Label:
    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str, default_source: str = DEFAULT_SOURCE) -> Label:
        """``k8s:app=web``, ``app=web`` (default source), ``reserved:host`` (empty value)."""
        if not isinstance(text, str) or not text.strip():
            raise PolicyError(f"a label is 'source:key=value' or 'key=value', not {text!r}")
        kpart, _, value = text.strip().partition("=")
        source, key = split_key(kpart, default_source)
        if not key:
            raise PolicyError(f"label {text!r} has no key")
        return cls(source, key, value)

    def __str__(self) -> str:
        return f"{self.source}:{self.key}" + (f"={self.value}" if self.value else "")


LabelSet = frozenset[Label]


def labels_from(items: Iterable[str] | Mapping[str, str] | Iterable[Label], default_source: str = DEFAULT_SOURCE) -> LabelSet:
    """A label set from ``["k8s:app=web", ...]``, ``{"app": "web"}`` or ``Label`` objects."""
    out: set[Label] = set()
    if isinstance(items, Mapping):
        for k, v in items.items():
            source, key = split_key(str(k), default_source)
            out.add(Label(source, key, "" if v is None else str(v)))
        return frozenset(out)
    if isinstance(items, str):
        raise PolicyError("labels are a list or a mapping, not one string")
    for it in items:
        out.add(it if isinstance(it, Label) else Label.parse(it, default_source))
    return frozenset(out)


def format_labels(labels: Iterable[Label]) -> list[str]:
    """Sorted ``source:key=value`` strings: the canonical text of a label set."""
    return sorted(str(lbl) for lbl in labels)


def reserved(name: str) -> LabelSet:
    return frozenset({Label(SOURCE_RESERVED, name, "")})
