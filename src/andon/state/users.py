"""uid -> user name and gid -> group name, as Falco's ``user.name`` and ``group.name``.

Names come from the host's ``/etc/passwd`` and ``/etc/group``, parsed once and re-read
when the file changes (checked at most every ``recheck`` seconds, so a lookup is a dict
hit). A process in a container sees its own image's files: ``name(uid, root=...)`` reads
``<root>/etc/passwd`` with ``root`` = ``/proc/<pid>/root`` of a process in that container,
cached per container id. An id nobody names is shown as Falco shows it: ``<NA>``.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

NA = "<NA>"
LOGINUID_UNSET = 0xFFFFFFFF


def parse_id_file(text: str) -> dict[int, str]:
    """``name:x:id:...`` lines -> {id: name}; the first name of an id wins, as getpwuid."""
    return {i: row[0] for i, row in parse_id_rows(text).items()}


def parse_id_rows(text: str) -> dict[int, list[str]]:
    """``name:x:id:...`` lines -> {id: fields}; the first line of an id wins, as getpwuid."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 3:
            continue
        try:
            i = int(parts[2])
        except ValueError:
            continue
        out.setdefault(i, parts)
    return out


class _IdFile:
    """One passwd/group file: parsed content, re-read when its mtime or size changes."""

    __slots__ = ("path", "recheck", "names", "rows", "_sig", "_checked")

    def __init__(self, path: str, recheck: float) -> None:
        self.path = path
        self.recheck = recheck
        self.names: dict[int, str] = {}
        self.rows: dict[int, list[str]] = {}  # id -> every field of its line (home, shell...)
        self._sig: tuple[int, int] | None = None
        self._checked = -1e18

    def lookup(self, i: int) -> str | None:
        now = time.monotonic()
        if now - self._checked >= self.recheck:
            self._checked = now
            self._refresh()
        return self.names.get(i)

    def row(self, i: int) -> list[str] | None:
        """The whole ``passwd``/``group`` line of an id, split on ':'."""
        if self.lookup(i) is None:
            return None
        return self.rows.get(i)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return  # keep what we had: a container's last process may just have exited
        sig = (st.st_mtime_ns, st.st_size)
        if sig == self._sig:
            return
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
            self.names = parse_id_file(text)
            self.rows = parse_id_rows(text)
            self._sig = sig
        except OSError:
            pass


class UserDb:
    """User and group names for uids and gids, host-wide or per container root.

    ``etc`` is the host's /etc (a test points it elsewhere). ``max_roots`` bounds how many
    container roots are kept.
    """

    def __init__(self, etc: str = "/etc", recheck: float = 5.0, max_roots: int = 256) -> None:
        self.etc = etc
        self.recheck = recheck
        self.max_roots = max_roots
        self._host = (_IdFile(os.path.join(etc, "passwd"), recheck), _IdFile(os.path.join(etc, "group"), recheck))
        self._roots: OrderedDict[str, tuple[_IdFile, _IdFile]] = OrderedDict()

    def _files(self, root: str | None, key: str | None) -> tuple[_IdFile, _IdFile]:
        if not root:
            return self._host
        k = key or root
        f = self._roots.get(k)
        if f is None:
            f = (
                _IdFile(os.path.join(root, "etc/passwd"), self.recheck),
                _IdFile(os.path.join(root, "etc/group"), self.recheck),
            )
            self._roots[k] = f
            while len(self._roots) > self.max_roots:
                self._roots.popitem(last=False)
        else:
            self._roots.move_to_end(k)
            if key is not None and not f[0].path.startswith(root + "/"):
                # same container, seen through another of its processes
                f[0].path = os.path.join(root, "etc/passwd")
                f[1].path = os.path.join(root, "etc/group")
        return f

    def user_name(self, uid: int, root: str | None = None, key: str | None = None) -> str:
        """``user.name`` of ``uid``. ``root``: the filesystem root the process sees (e.g.
        ``/proc/<pid>/root``), cached under ``key`` (its container id) when given."""
        return self._files(root, key)[0].lookup(uid) or NA

    def user_entry(self, uid: int, root: str | None = None, key: str | None = None) -> tuple[str, str, str] | None:
        """(name, home directory, shell) of ``uid`` from passwd, or None when no line names it
        (Falco's ``user.homedir`` and ``user.shell``)."""
        row = self._files(root, key)[0].row(uid)
        if row is None:
            return None
        return row[0], row[5] if len(row) > 5 else "", row[6] if len(row) > 6 else ""

    def group_name(self, gid: int, root: str | None = None, key: str | None = None) -> str:
        """``group.name`` of ``gid``."""
        return self._files(root, key)[1].lookup(gid) or NA

    def login_name(self, loginuid: int, root: str | None = None, key: str | None = None) -> str:
        """``user.loginname``: the name of the audit uid; ``<NA>`` when unset (-1)."""
        if loginuid < 0 or loginuid == LOGINUID_UNSET:
            return NA
        return self.user_name(loginuid, root, key)

    def for_process(self, proc: object, proc_root: str = "/proc") -> tuple[str | None, str | None]:
        """The (root, key) to pass for a process: its container's root, or the host's."""
        cid = getattr(proc, "container", "")
        if not cid:
            return None, None
        return f"{proc_root}/{getattr(proc, 'pid')}/root", cid


def loginuid_value(raw: int) -> int:
    """Falco's ``user.loginuid``: the audit uid, -1 when unset (UINT32_MAX)."""
    return -1 if raw == LOGINUID_UNSET or raw < 0 else raw
