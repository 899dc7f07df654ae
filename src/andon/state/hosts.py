"""Names of IP addresses, as this host resolves them without asking the network.

Falco's ``fd.sip.name = kubernetes.default.svc`` resolves the rule's name and compares the
server address with the result. andon answers the same question from ``/etc/hosts``
(re-read when it changes, at most once a second): an address maps to every name the
file gives it, so ``fd.sip.name in (a, b)`` holds when any of them is listed. andon never
sends a DNS query of its own; names learnt from DNS traffic can be added with ``learn``.
"""

from __future__ import annotations

import os
import time

from ..rules.types import Multi


class HostNames:
    """``get(ip) -> Multi of names | None``, backed by a hosts file."""

    def __init__(self, path: str = "/etc/hosts", recheck_s: float = 1.0) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._mtime: int | None = None
        self._checked = 0.0
        self._file: dict[str, Multi] = {}
        self._learnt: dict[str, Multi] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck_s and self._mtime is not None:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            self._mtime, self._file = -1, {}
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        self._file = parse_hosts(_read(self.path))

    def get(self, ip: str) -> Multi | None:
        self._refresh()
        return self._file.get(ip) or self._learnt.get(ip)

    def __bool__(self) -> bool:
        return True

    def learn(self, ip: str, name: str) -> None:
        names = self._learnt.get(ip, Multi())
        if name not in names:
            self._learnt[ip] = Multi((*names, name))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return ""


def parse_hosts(text: str) -> dict[str, Multi]:
    """``/etc/hosts`` lines (``ADDRESS NAME [ALIAS...]  # comment``) -> address -> names."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        ip, names = words[0], words[1:]
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        have = out.setdefault(ip, [])
        have += [n for n in names if n not in have]
    return {ip: Multi(names) for ip, names in out.items()}
