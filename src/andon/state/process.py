"""The process table: every process on the machine, seeded from /proc and kept true by events.

Processes are keyed by thread-group id (what users call the pid); threads share their
process's entry, and ``tid -> pid`` is kept for the threads that are not the leader. The
table serves Falco's ``proc.*``, ``thread.*`` and ``user.*`` fields and, through each
process's :class:`~andon.state.fd.FdTable`, the ``fd.*`` fields.

How events change it (``apply``):

- EXEC replaces the image: name (comm), exe (argv[0]), args, exepath, cwd, creds,
  namespaces, container; the pid, the parent and the fds stay, except close-on-exec fds.
  Other threads are gone (de_thread).
- FORK: a new thread joins its process; a new process starts as a copy of its parent
  (the fd table copy-on-write).
- EXIT: a thread leaves; on the last thread the process moves to a bounded "recently
  exited" list for ``exit_grace_ns`` so the exit event itself and stragglers still
  resolve. Its children are reparented as the kernel does (nearest child-subreaper
  ancestor, else the init of its pid namespace).
- syscalls: the fd table (see fd.py), setuid-family creds, chdir/fchdir cwd, setsid,
  prctl(PR_SET_CHILD_SUBREAPER).

The table is bounded (``max_processes``): when full, least recently seen processes without
children are evicted first, and every eviction is counted in ``stats``.

``snapshot()``/``restore()`` turn the table into JSON-able data and back, so a capture file
can carry the state at its start and be replayed offline with the same answers.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..events.schema import EventType, Event
from ..events.syscalls import BY_NAME
from . import container as _container
from .fd import (
    EBADF as _EBADF,
    O_CLOEXEC,
    O_DIRECTORY,
    O_TMPFILE_BIT,
    FdInfo,
    FdTable,
    FdTracker,
    fd_type_from_link,
    ipv4_str,
    ipv6_str,
    join,
    s32,
)

SNAPSHOT_VERSION = 1
LOGINUID_UNSET = 0xFFFFFFFF
PR_SET_CHILD_SUBREAPER = 36
UID_UNCHANGED = 0xFFFFFFFF
MAX_ANCESTORS = 128  # a parent chain longer than this is a loop in stale state

_SYSCALL = int(EventType.SYSCALL)
_EXEC = int(EventType.EXEC)
_FORK = int(EventType.FORK)
_EXIT = int(EventType.EXIT)


@dataclass(frozen=True)
class StateSettings:
    """Bounds and sources of the process table. Frozen: pass a new one to change it."""

    max_processes: int = 32768
    max_fds_per_process: int = 4096
    exit_grace_ns: int = 5_000_000_000  # how long an exited process still resolves
    max_exited: int = 4096  # bound on the recently-exited list
    proc_root: str | None = "/proc"  # None: never read /proc (offline replay)
    proc_fallback: bool = True  # load a pid we have never seen from /proc on its first event
    read_fd_flags: bool = True  # read /proc/<pid>/fdinfo when seeding (close-on-exec, O_DIRECTORY)
    max_cgroup_ids: int = 4096  # cgroup id -> container id memo


class Process:
    """One process (thread group). Attribute names follow Falco's fields where one exists."""

    __slots__ = (
        "pid",
        "ppid",
        "threads",
        "name",
        "exe",
        "exepath",
        "args",
        "cwd",
        "uid",
        "gid",
        "ruid",
        "rgid",
        "loginuid",
        "tty",
        "sid",
        "vpid",
        "pidns",
        "mntns",
        "netns",
        "cap_effective",
        "cap_permitted",
        "start_time",
        "exe_ctime",
        "exe_mtime",
        "exe_flags",
        "container",
        "runtime",
        "cgroup",
        "cgroup_id",
        "fds",
        "children",
        "subreaper",
        "kthread",
        "exit_ts",
        "exit_status",
        "last_seen",
        "proc_ts",
    )

    def __init__(self, pid: int, name: str = "", max_fds: int = 4096) -> None:
        self.pid = pid  # proc.pid (tgid)
        self.ppid = 0  # proc.ppid
        self.threads: set[int] | None = None  # tids other than pid
        self.name = name  # proc.name: task->comm
        self.exe = ""  # proc.exe: argv[0]
        self.exepath = ""  # proc.exepath
        self.args: tuple[str, ...] = ()  # proc.args (argv[1:])
        self.cwd = ""  # kernel form, no trailing '/'; Falco's proc.cwd is proc_cwd
        self.uid = 0  # user.uid: effective
        self.gid = 0  # group.gid: effective
        self.ruid = 0
        self.rgid = 0
        self.loginuid = LOGINUID_UNSET  # user.loginuid (raw u32)
        self.tty = 0  # proc.tty (new_encode_dev)
        self.sid = 0  # proc.sid
        self.vpid = 0  # proc.vpid: the pid inside its own pid namespace; 0 unknown
        self.pidns = 0
        self.mntns = 0
        self.netns = 0
        self.cap_effective = 0  # thread.cap_effective (bit mask)
        self.cap_permitted = 0
        self.start_time = 0  # ns since boot
        self.exe_ctime = 0  # proc.exe_ino.ctime, ns since epoch
        self.exe_mtime = 0
        self.exe_flags = 0  # EXE_* bits from events/schema.py
        self.container = ""  # full container id; "" is the host
        self.runtime = ""  # docker, podman, cri-o, containerd, ...
        self.cgroup = ""  # cgroup leaf (or path) the container id was read from
        self.cgroup_id = 0  # cgroup v2 id
        self.fds = FdTable(max_fds)
        self.children: set[int] | None = None
        self.subreaper = False
        self.kthread = False
        self.exit_ts = 0  # ns since epoch when the last thread exited; 0 alive
        self.exit_status = 0  # raw wait status
        self.last_seen = 0
        self.proc_ts = 0  # when /proc was read for it (ns since epoch); older events are in it

    # -- Falco's derived fields ------------------------------------------------------
    @property
    def cmdline(self) -> str:
        """proc.cmdline: name and args joined by spaces (libsinsp populate_cmdline)."""
        if not self.args:
            return self.name
        return self.name + " " + " ".join(self.args)

    @property
    def args_str(self) -> str:
        """proc.args as one string."""
        return " ".join(self.args)

    @property
    def exeline(self) -> str:
        """proc.exeline: exe and args."""
        return self.exe + " " + " ".join(self.args)

    @property
    def proc_cwd(self) -> str:
        """Falco's proc.cwd, which always ends with '/'."""
        if not self.cwd:
            return ""
        return self.cwd if self.cwd.endswith("/") else self.cwd + "/"

    @property
    def container_id(self) -> str:
        """container.id: 12 hex chars, or ``host``."""
        return self.container[:12] if self.container else _container.HOST

    @property
    def is_container(self) -> bool:
        return bool(self.container)

    @property
    def loginuid_value(self) -> int:
        """user.loginuid: -1 when unset."""
        return -1 if self.loginuid == LOGINUID_UNSET else self.loginuid

    @property
    def nthreads(self) -> int:
        return 1 + (len(self.threads) if self.threads else 0)

    @property
    def alive(self) -> bool:
        return self.exit_ts == 0

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, ppid={self.ppid}, name={self.name!r}, exe={self.exe!r})"

    # -- serialisation ----------------------------------------------------------------
    _SCALARS = (
        "pid", "ppid", "name", "exe", "exepath", "cwd", "uid", "gid", "ruid", "rgid", "loginuid", "tty",
        "sid", "vpid", "pidns", "mntns", "netns", "cap_effective", "cap_permitted", "start_time",
        "exe_ctime", "exe_mtime", "exe_flags", "container", "runtime", "cgroup", "cgroup_id",
        "subreaper", "kthread", "exit_ts", "exit_status", "last_seen", "proc_ts",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in Process._SCALARS}
        d["args"] = list(self.args)
        d["threads"] = sorted(self.threads) if self.threads else []
        d["fds"] = self.fds.to_list()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], max_fds: int = 4096) -> Process:
        p = cls(int(d["pid"]), max_fds=max_fds)
        for k in Process._SCALARS:
            if k in d:
                setattr(p, k, d[k])
        p.args = tuple(d.get("args", ()))
        th = d.get("threads") or []
        p.threads = set(th) if th else None
        p.fds = FdTable.from_list(d.get("fds") or [], max_fds)
        return p


_NR = {name: spec.nr for name, spec in BY_NAME.items()}


class ProcessTable:
    """Processes by pid, kept true by :meth:`apply`. See the module docstring."""

    def __init__(
        self,
        settings: StateSettings | None = None,
        *,
        boot_offset: int = 0,
        containers: _container.ContainerRegistry | None = None,
    ) -> None:
        self.settings = settings or StateSettings()
        self.boot_offset = boot_offset  # wall clock minus boot clock, ns (start_ts)
        self.containers = containers
        self.procs: dict[int, Process] = {}
        self.tids: dict[int, int] = {}  # non-leader tid -> pid
        self.exited: OrderedDict[int, Process] = OrderedDict()
        self.cgroup_containers: OrderedDict[int, str] = OrderedDict()
        self.stats: dict[str, int] = dict.fromkeys(
            ("seeded", "forks", "threads_created", "execs", "exits", "evicted", "exited_dropped",
             "proc_loaded", "synthesized", "stale_replaced", "fd_dropped", "reparented", "loops"),
            0,
        )  # fmt: skip
        self._fdt = FdTracker()
        self._handlers: dict[int, Callable[[Process, Event], None]] = dict(self._fdt.handlers)
        h = self._handlers
        for name in ("setuid", "setreuid", "setresuid"):
            h[_NR[name]] = self._on_setuid
        for name in ("setgid", "setregid", "setresgid"):
            h[_NR[name]] = self._on_setgid
        h[_NR["chdir"]] = self._on_chdir
        h[_NR["fchdir"]] = self._on_fchdir
        h[_NR["setsid"]] = self._on_setsid
        h[_NR["prctl"]] = self._on_prctl
        h[_NR["execve"]] = self._on_failed_exec  # success comes as EXEC
        h[_NR["execveat"]] = self._on_failed_exec
        self._nr_setuid = _NR["setuid"]
        self._nr_setgid = _NR["setgid"]

    # =================================================================================
    # lookups
    # =================================================================================
    def get(self, pid: int) -> Process | None:
        """The process with this pid (tgid), alive or recently exited."""
        p = self.procs.get(pid)
        if p is None:
            p = self.exited.get(pid)
        return p

    def thread(self, tid: int) -> Process | None:
        """The process a thread id belongs to."""
        return self.get(self.tids.get(tid, tid))

    def for_event(self, ev: Event) -> Process | None:
        """The process an event came from; loaded from /proc (or made from the event's
        header) the first time an unknown pid shows up."""
        p = self.procs.get(ev.pid)
        if p is None:
            p = self.exited.get(ev.pid) or self._missing(ev)
        return p

    def __len__(self) -> int:
        return len(self.procs)

    def __contains__(self, pid: object) -> bool:
        return pid in self.procs

    def __iter__(self) -> Iterator[Process]:
        return iter(list(self.procs.values()))

    def fd_info(self, pid: int, fd: int) -> FdInfo | None:
        """The fd ``fd`` of process ``pid`` (Falco's fd.* fields), or None."""
        p = self.get(pid)
        return p.fds.get(fd) if p is not None else None

    def parent(self, p: Process) -> Process | None:
        """The parent process, if it is known and older than the child (a younger one
        holding the pid is a reuse, not the parent)."""
        q = self.get(p.ppid) if p.ppid and p.ppid != p.pid else None
        if q is None or (q.start_time and p.start_time and q.start_time > p.start_time):
            return None
        return q

    def ancestors(self, p: Process) -> Iterator[Process]:
        """Parent, grandparent, ... (proc.aname[1], [2], ...). Stops on a loop."""
        seen = {p.pid}
        q = self.parent(p)
        n = 0
        while q is not None and n < MAX_ANCESTORS:
            if q.pid in seen:
                self.stats["loops"] += 1
                return
            seen.add(q.pid)
            yield q
            q = self.parent(q)
            n += 1

    def ancestor(self, p: Process, n: int) -> Process | None:
        """proc.aname[n] and friends: n=0 is the process itself, 1 its parent, ..."""
        if n <= 0:
            return p
        for i, q in enumerate(self.ancestors(p), 1):
            if i == n:
                return q
        return None

    def session_leader(self, p: Process) -> Process | None:
        """proc.sname's process: the one whose pid is the session id, else the eldest
        ancestor that still has the same session id (libsinsp's TYPE_SNAME)."""
        if not p.sid:
            return None
        q = self.get(p.sid)
        if q is not None and q.sid == p.sid:
            return q
        leader = p
        for a in self.ancestors(p):
            if a.sid != p.sid:
                break
            leader = a
        return leader

    def start_ts(self, p: Process) -> int:
        """proc.pid.ts: the process's start, ns since the epoch."""
        return p.start_time + self.boot_offset if p.start_time else 0

    def pidns_init(self, p: Process) -> Process | None:
        """The init (vpid 1) of the process's pid namespace, when known: container.start_ts
        as Falco's plugin reads it is this process's start."""
        if p.vpid == 1:
            return p
        for a in self.ancestors(p):
            if a.pidns == p.pidns and a.vpid == 1:
                return a
            if a.pidns != p.pidns:
                break
        return None

    # =================================================================================
    # events
    # =================================================================================
    def apply(self, ev: Event) -> None:
        """Update the table with one event. Cheap for the syscalls it does not track."""
        t = ev.type
        if t == _SYSCALL:
            h = self._handlers.get(ev.nr)
            if h is None:
                return
            p = self.procs.get(ev.pid)
            if p is None:
                p = self.exited.get(ev.pid) or self._missing(ev)
                if p is None:
                    return
            if ev.ts < p.proc_ts:
                return  # /proc was read after this event: what it did is already here
            p.last_seen = ev.ts
            h(p, ev)
        elif t == _EXEC:
            self._on_exec(ev)
        elif t == _FORK:
            self._on_fork(ev)
        elif t == _EXIT:
            self._on_exit(ev)

    def apply_close(self, pid: int, ts: int, fd: int, ret: int) -> bool:
        """``apply`` of a ``close`` given as its raw values, for callers that skip building
        the Event. False (nothing done) when the pid is not in the table: then the caller
        applies the full event, which may load or synthesize the process."""
        p = self.procs.get(pid)
        if p is None:
            return False
        if ts >= p.proc_ts:  # else /proc was read after this event (see apply)
            p.last_seen = ts
            if ret == 0 or ret == -_EBADF:  # as FdTracker._on_close
                p.fds.remove(fd)
        return True

    def apply_open(self, pid: int, ts: int, fd: int, dirfd: int, flags: int, path: str, fresh: bool = False) -> bool:
        """``apply`` of a path open (open, openat, openat2, creat) given as its raw values:
        ``fd`` the return value, ``dirfd``/``flags`` as :func:`~andon.state.fd.open_args`
        reads them. False (nothing done) when the pid is not in the table, or with ``fresh``
        when a successful open is older than the process's /proc read (the caller wants the
        entry this open makes, and it would not make one)."""
        p = self.procs.get(pid)
        if p is None:
            return False
        if ts < p.proc_ts:  # /proc was read after this event (see apply)
            return not (fresh and fd >= 0)
        p.last_seen = ts
        if fd >= 0:  # as FdTracker._open
            FdTracker.opened(p, fd, dirfd, flags, path)
        return True

    def apply_open_close(self, pid: int, ts_open: int, ts_close: int, fd: int, close_ret: int) -> bool:
        """``apply_open`` of a path open that returned ``fd`` (>= 0) and then ``apply_close``
        of ``fd``, for two consecutive records of one process: the entry is not built. False
        (nothing done) unless the pid is in the table, both events are newer than its /proc
        read and the close removes the entry (returned 0 or EBADF); then apply them one by one."""
        p = self.procs.get(pid)
        if p is None or ts_open < p.proc_ts or ts_close < p.proc_ts or not (close_ret == 0 or close_ret == -_EBADF):
            return False
        p.last_seen = ts_close
        p.fds.add_remove(fd)
        return True

    def apply_all(self, events: Any) -> None:
        apply = self.apply
        for ev in events:
            apply(ev)

    # -- process lifecycle ---------------------------------------------------------------
    def _on_fork(self, ev: Event) -> None:
        child_tid, child_pid, start = int(ev.args[0]), int(ev.args[1]), int(ev.args[2])
        parent = self.procs.get(ev.pid) or self.exited.get(ev.pid) or self._missing(ev)
        if parent is None:
            return
        parent.last_seen = ev.ts
        if child_pid == ev.pid:  # a new thread of this process
            if child_tid != child_pid:
                if parent.threads is None:
                    parent.threads = set()
                parent.threads.add(child_tid)
                self.tids[child_tid] = child_pid
            self.stats["threads_created"] += 1
            return
        self.stats["forks"] += 1
        self._expire(ev.ts)
        old = self.procs.get(child_pid)
        if old is not None:
            if old.proc_ts > ev.ts or (start and abs(old.start_time - start) <= _TICK_NS):
                return  # already known: read from /proc while the event was in flight
            self._drop(old)
            self.stats["stale_replaced"] += 1
        self.exited.pop(child_pid, None)  # pid reused: the old one is gone for good
        c = Process(child_pid, ev.comm or parent.name, self.settings.max_fds_per_process)
        for k in _INHERITED:
            setattr(c, k, getattr(parent, k))
        c.ppid = parent.pid
        c.start_time = start
        c.last_seen = ev.ts
        # same pid namespace as the parent unless CLONE_NEWPID, which we cannot see; on the
        # host (vpid == pid) the child's vpid is its pid
        c.vpid = child_pid if parent.vpid == parent.pid else 0
        c.fds = parent.fds.fork()
        if child_tid != child_pid:
            c.threads = {child_tid}
            self.tids[child_tid] = child_pid
        self._insert(c)
        if parent.children is None:
            parent.children = set()
        parent.children.add(child_pid)

    def _on_exec(self, ev: Event) -> None:
        x = ev.exec
        if x is None:
            return
        self.stats["execs"] += 1
        pid = ev.pid
        p = self.procs.get(pid)
        if p is None:
            self.exited.pop(pid, None)
            p = Process(pid, ev.comm, self.settings.max_fds_per_process)
            if self.settings.proc_root and self.settings.proc_fallback:
                # an exec of a process we never saw (its fork was not traced): the image is
                # the event's, the fds /proc's, and events older than that read are in them
                p.proc_ts = time.time_ns()
                self._load_fds(p)
            self._insert(p)
        elif ev.ts < p.proc_ts:
            return  # /proc was read after this exec
        else:
            if p.threads:  # de_thread: every other thread is gone
                for t in p.threads:
                    self.tids.pop(t, None)
                p.threads = None
            p.fds.exec()
        argv = x.argv
        p.name = ev.comm
        p.exe = argv[0] if argv else x.filename
        p.args = tuple(argv[1:])
        p.exepath = x.exepath or x.filename
        if x.cwd:
            p.cwd = x.cwd
        p.uid, p.gid, p.ruid, p.rgid = ev.uid, ev.gid, x.ruid, x.rgid
        p.loginuid = x.loginuid
        p.tty = x.tty
        p.sid = x.sid
        p.vpid = x.vpid
        p.pidns, p.mntns, p.netns = x.pidns, x.mntns, x.netns
        p.cap_effective, p.cap_permitted = x.cap_effective, x.cap_permitted
        if x.start_time:
            p.start_time = x.start_time
        p.exe_ctime, p.exe_mtime, p.exe_flags = x.exe_ctime, x.exe_mtime, x.exe_flags
        p.last_seen = ev.ts
        p.kthread = False
        if x.ppid and x.ppid != p.ppid:
            self._set_parent(p, x.ppid)
        self._set_container_from_exec(p, ev)

    def _on_failed_exec(self, p: Process, ev: Event) -> None:
        """A failed execve leaves the process as it was."""

    def _on_exit(self, ev: Event) -> None:
        pid, tid = ev.pid, ev.tid
        p = self.procs.get(pid)
        if p is None:
            return
        if tid != pid:
            self.tids.pop(tid, None)
            if p.threads:
                p.threads.discard(tid)
        if not ev.args[0] & 1:
            return  # other threads live on
        self.stats["exits"] += 1
        self._retire(p, ev.ts, ev.ret)
        self._expire(ev.ts)

    def _retire(self, p: Process, ts: int, status: int) -> None:
        """The last thread exited: out of the live table, into the grace list."""
        self._unlink(p)
        p.exit_ts = ts or 1
        p.exit_status = status
        self.exited[p.pid] = p
        self.exited.move_to_end(p.pid)
        while len(self.exited) > self.settings.max_exited:
            _, old = self.exited.popitem(last=False)
            old.fds.release()
            self.stats["exited_dropped"] += 1

    def _unlink(self, p: Process) -> None:
        """Remove a live process: its threads, its place among its parent's children, and
        hand its children to their new reaper as the kernel does."""
        self.procs.pop(p.pid, None)
        if p.threads:
            for t in p.threads:
                self.tids.pop(t, None)
        par = self.procs.get(p.ppid)
        if par is not None and par.children:
            par.children.discard(p.pid)
        if p.children:
            reaper = self._reaper(p)
            rpid = reaper.pid if reaper is not None else 0
            for c in p.children:
                ch = self.procs.get(c)
                if ch is not None and ch.ppid == p.pid:
                    ch.ppid = rpid
                    if reaper is not None:
                        if reaper.children is None:
                            reaper.children = set()
                        reaper.children.add(c)
                    self.stats["reparented"] += 1
            p.children = None

    def _reaper(self, p: Process) -> Process | None:
        """Who adopts p's children: the nearest live child-subreaper ancestor in p's pid
        namespace, else that namespace's init (kernel/exit.c find_new_reaper)."""
        for a in self.ancestors(p):
            if not a.alive:
                continue
            if a.subreaper:
                return a
            if a.vpid == 1 and (not p.pidns or a.pidns == p.pidns):
                return a
        init = self.procs.get(1)
        return init if init is not None and init is not p else None

    def _drop(self, p: Process) -> None:
        self._unlink(p)
        p.fds.release()

    def _expire(self, now: int) -> None:
        ex = self.exited
        grace = self.settings.exit_grace_ns
        while ex:
            pid, p = next(iter(ex.items()))
            if now - p.exit_ts <= grace:
                break
            ex.popitem(last=False)
            p.fds.release()

    def _insert(self, p: Process) -> None:
        if len(self.procs) >= self.settings.max_processes:
            self._evict()
        self.procs[p.pid] = p

    def _evict(self) -> None:
        """Make room: least recently seen childless processes first, then any."""
        cap = self.settings.max_processes
        n = max(1, cap // 64)
        leaves = [(q.last_seen, q.pid) for q in self.procs.values() if not q.children and q.pid != 1]
        victims = heapq.nsmallest(n, leaves)
        if len(victims) < n:
            rest = [(q.last_seen, q.pid) for q in self.procs.values() if q.children and q.pid != 1]
            victims += heapq.nsmallest(n - len(victims), rest)
        for _, pid in victims:
            q = self.procs.get(pid)
            if q is not None:
                self._drop(q)
                self.stats["evicted"] += 1

    def _set_parent(self, p: Process, ppid: int) -> None:
        old = self.procs.get(p.ppid)
        if old is not None and old.children:
            old.children.discard(p.pid)
        p.ppid = ppid
        new = self.procs.get(ppid)
        if new is not None:
            if new.children is None:
                new.children = set()
            new.children.add(p.pid)

    def _set_container_from_exec(self, p: Process, ev: Event) -> None:
        x = ev.exec
        assert x is not None
        m = _container.match_cgroup(x.cgroup) or _container.match_cgroup(x.cgroup2)
        cg = x.cgroup2 or x.cgroup
        if m is None and p.container and self.settings.proc_root:
            # a leaf that names no container under a container process: a nested cgroup
            # inside it, or the process left it; the full path says which
            text = _read(f"{self.settings.proc_root}/{p.pid}/cgroup")
            if text is not None:
                m = _container.match_proc_cgroup(text)
                if m is None:
                    p.container, p.runtime = "", ""
        if m is not None:
            p.container, p.runtime = m.id, m.runtime
            cg = x.cgroup if _container.match_cgroup(x.cgroup) else x.cgroup2
        p.cgroup = cg
        p.cgroup_id = ev.cgroup_id
        if ev.cgroup_id:
            memo = self.cgroup_containers
            memo[ev.cgroup_id] = p.container
            if len(memo) > self.settings.max_cgroup_ids:
                memo.popitem(last=False)
        if p.container and self.containers is not None:
            self.containers.get(p.container)  # start the runtime lookup now, off this path

    def _missing(self, ev: Event) -> Process | None:
        """An event from a pid we do not know: read it from /proc if we may, else make
        what the event header says."""
        pid = ev.pid
        if not pid:
            return None
        p = None
        s = self.settings
        if s.proc_root and s.proc_fallback:
            p = self.load_pid(pid)
            if p is not None:
                self.stats["proc_loaded"] += 1
        if p is None:
            p = Process(pid, ev.comm, s.max_fds_per_process)
            p.uid, p.gid = ev.uid, ev.gid
            p.cgroup_id = ev.cgroup_id
            p.container = self.cgroup_containers.get(ev.cgroup_id, "")
            self.stats["synthesized"] += 1
        if ev.tid and ev.tid != pid:
            if p.threads is None:
                p.threads = set()
            p.threads.add(ev.tid)
            self.tids[ev.tid] = pid
        p.last_seen = ev.ts
        self._insert(p)
        par = self.procs.get(p.ppid)
        if par is not None:
            if par.children is None:
                par.children = set()
            par.children.add(pid)
        return p

    # -- syscalls that change the process --------------------------------------------------
    def _on_setuid(self, p: Process, ev: Event) -> None:
        if ev.ret != 0:
            return
        a = ev.args
        if ev.nr == self._nr_setuid:
            if p.uid == 0:  # privileged setuid sets real, effective and saved ids
                p.ruid = a[0] & 0xFFFFFFFF
        elif (a[0] & 0xFFFFFFFF) != UID_UNCHANGED:
            p.ruid = a[0] & 0xFFFFFFFF
        p.uid = ev.uid  # the header carries the effective uid after the call

    def _on_setgid(self, p: Process, ev: Event) -> None:
        if ev.ret != 0:
            return
        a = ev.args
        if ev.nr == self._nr_setgid:
            if p.uid == 0:
                p.rgid = a[0] & 0xFFFFFFFF
        elif (a[0] & 0xFFFFFFFF) != UID_UNCHANGED:
            p.rgid = a[0] & 0xFFFFFFFF
        p.gid = ev.gid

    def _on_chdir(self, p: Process, ev: Event) -> None:
        if ev.ret == 0 and ev.strings:
            p.cwd = join(p.cwd or "/", ev.strings[0])

    def _on_fchdir(self, p: Process, ev: Event) -> None:
        if ev.ret != 0:
            return
        fi = p.fds.get(s32(ev.args[0]))
        if fi is not None and fi.name.startswith("/"):
            p.cwd = fi.name

    def _on_setsid(self, p: Process, ev: Event) -> None:
        if ev.ret >= 0:
            p.sid = ev.ret

    def _on_prctl(self, p: Process, ev: Event) -> None:
        if ev.ret >= 0 and (ev.args[0] & 0xFFFFFFFF) == PR_SET_CHILD_SUBREAPER:
            p.subreaper = bool(ev.args[1])

    # =================================================================================
    # /proc
    # =================================================================================
    def seed_from_proc(self) -> int:
        """Load every process under ``settings.proc_root``; returns how many."""
        root = self.settings.proc_root
        if not root:
            return 0
        socks = _SocketIndex(root)
        n = 0
        try:
            names = os.listdir(root)
        except OSError:
            return 0
        for name in names:
            if not name.isdigit():
                continue
            p = self.load_pid(int(name), socks)
            if p is None:
                continue
            if p.pid in self.procs:
                continue  # an event got here first; it is newer
            self._insert(p)
            n += 1
        for p in self.procs.values():
            par = self.procs.get(p.ppid)
            if par is not None and par is not p:
                if par.children is None:
                    par.children = set()
                par.children.add(p.pid)
        self.stats["seeded"] += n
        return n

    def load_pid(self, pid: int, socks: _SocketIndex | None = None) -> Process | None:
        """One process as /proc shows it now, or None if it is gone (or is a thread)."""
        root = self.settings.proc_root
        if not root:
            return None
        base = f"{root}/{pid}"
        t_read = time.time_ns()
        stat = _read(base + "/stat")
        if stat is None:
            return None
        p = Process(pid, max_fds=self.settings.max_fds_per_process)
        p.proc_ts = p.last_seen = t_read
        try:
            lp, rp = stat.index("("), stat.rindex(")")
            p.name = stat[lp + 1 : rp]
            f = stat[rp + 2 :].split()
            if f[0] in ("Z", "X"):
                return None  # exited, not yet reaped: its exit is (or was) an event, not a process
            # fields after comm, from field 3 (state): ppid=4, session=6, tty_nr=7, starttime=22
            p.ppid = int(f[1])
            p.sid = int(f[3])
            p.tty = int(f[4]) & 0xFFFFFFFF
            p.start_time = int(f[19]) * 1_000_000_000 // _CLK_TCK
            flags = int(f[6])
        except (ValueError, IndexError):
            return None
        p.kthread = bool(flags & 0x00200000)  # PF_KTHREAD
        status = _read(base + "/status") or ""
        tgid = pid
        for line in status.splitlines():
            key, _, val = line.partition(":")
            if key == "Uid":
                v = val.split()
                p.ruid, p.uid = int(v[0]), int(v[1])
            elif key == "Gid":
                v = val.split()
                p.rgid, p.gid = int(v[0]), int(v[1])
            elif key == "CapEff":
                p.cap_effective = int(val.strip(), 16)
            elif key == "CapPrm":
                p.cap_permitted = int(val.strip(), 16)
            elif key == "NSpid":
                p.vpid = int(val.split()[-1])
            elif key == "Tgid":
                tgid = int(val)
        if tgid != pid:
            return None  # a thread id; its process is loaded under its tgid
        raw = _read_bytes(base + "/cmdline") or b""
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")] if raw else []
        p.exe = argv[0] if argv else ("" if not p.kthread else p.name)
        p.args = tuple(argv[1:])
        p.exepath = _readlink(base + "/exe")
        if p.exepath.endswith(" (deleted)"):
            p.exepath = p.exepath[:-10]
        if p.exepath.startswith("/memfd:"):
            from ..events.schema import EXE_FROM_MEMFD

            p.exe_flags |= EXE_FROM_MEMFD
        p.cwd = _readlink(base + "/cwd")
        lu = _read(base + "/loginuid")
        if lu is not None:
            try:
                p.loginuid = int(lu.strip()) & 0xFFFFFFFF
            except ValueError:
                pass
        p.pidns = _ns_inode(base + "/ns/pid")
        p.mntns = _ns_inode(base + "/ns/mnt")
        p.netns = _ns_inode(base + "/ns/net")
        if not p.kthread:
            try:
                st = os.stat(base + "/exe")
                p.exe_ctime, p.exe_mtime = st.st_ctime_ns, st.st_mtime_ns
            except OSError:
                pass
        cg = _read(base + "/cgroup") or ""
        m = _container.match_proc_cgroup(cg)
        if m is not None:
            p.container, p.runtime = m.id, m.runtime
        p.cgroup = _cgroup_leaf(cg)
        try:
            tids = [int(t) for t in os.listdir(base + "/task") if t.isdigit() and int(t) != pid]
        except OSError:
            tids = []
        if tids:
            p.threads = set(tids)
            for t in tids:
                self.tids[t] = pid
        if not p.kthread:
            self._load_fds(p, socks)
        return p

    def _load_fds(self, p: Process, socks: _SocketIndex | None = None) -> None:
        root = self.settings.proc_root
        if not root:
            return
        base = f"{root}/{p.pid}"
        try:
            names = os.listdir(base + "/fd")
        except OSError:
            return
        read_flags = self.settings.read_fd_flags
        for n in names:
            try:
                fd = int(n)
            except ValueError:
                continue
            target = _readlink(f"{base}/fd/{n}")
            if not target:
                continue
            flags = 0
            if read_flags:
                info = _read(f"{base}/fdinfo/{n}")
                if info:
                    for line in info.splitlines():
                        if line.startswith("flags:"):
                            try:
                                flags = int(line.split()[1], 8)
                            except (IndexError, ValueError):
                                pass
                            break
            if target.startswith("socket:["):
                ino = int(target[8:-1])
                if socks is None:
                    socks = _SocketIndex(root)
                fi = socks.fdinfo(p.pid, fd, ino, p.netns)
                fi.flags = flags
            else:
                typ, name = fd_type_from_link(target)
                if typ == "file" and flags & O_DIRECTORY and not flags & O_TMPFILE_BIT:
                    typ = "directory"
                fi = FdInfo(fd, typ, name, name if typ in ("file", "directory") else "", flags)
                if typ == "pipe":
                    try:
                        fi.ino = int(target[6:-1])
                    except ValueError:
                        pass
            if p.fds.add(fi) is None:
                self.stats["fd_dropped"] += 1

    def sweep(self) -> int:
        """Drop live entries whose process is gone from /proc (exit events lost to ring
        overflow) or whose pid now belongs to a younger process. Returns how many; call it
        now and then from a slow path."""
        root = self.settings.proc_root
        if not root:
            return 0
        gone = []
        for p in list(self.procs.values()):
            stat = _read(f"{root}/{p.pid}/stat")
            if stat is None:
                gone.append(p)
                continue
            try:
                f = stat[stat.rindex(")") + 2 :].split()
                start = int(f[19]) * 1_000_000_000 // _CLK_TCK
            except (ValueError, IndexError):
                continue
            # /proc has clock-tick resolution; a different start beyond that is a new process
            if p.start_time and abs(start - p.start_time) > 2 * 1_000_000_000 // _CLK_TCK:
                gone.append(p)
        for p in gone:
            self._drop(p)
        self.stats["evicted"] += len(gone)
        return len(gone)

    # =================================================================================
    # snapshot / restore
    # =================================================================================
    def snapshot(self) -> dict[str, Any]:
        """The table as JSON-able data: what a capture file carries about its start."""
        snap: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "boot_offset": self.boot_offset,
            "processes": [p.to_dict() for p in self.procs.values()],
            "exited": [p.to_dict() for p in self.exited.values()],
            "cgroup_containers": [[k, v] for k, v in self.cgroup_containers.items()],
        }
        if self.containers is not None:
            snap["containers"] = self.containers.snapshot()
        return snap

    @classmethod
    def restore(
        cls,
        snap: dict[str, Any],
        settings: StateSettings | None = None,
        *,
        containers: _container.ContainerRegistry | None = None,
    ) -> ProcessTable:
        """A table holding a snapshot's state. Pass settings with ``proc_root=None`` to
        replay offline without ever looking at this machine's /proc."""
        from ..errors import CaptureError

        if not isinstance(snap, dict) or snap.get("version") != SNAPSHOT_VERSION:
            raise CaptureError(f"process snapshot version {snap.get('version') if isinstance(snap, dict) else '?'} "
                               f"is not {SNAPSHOT_VERSION}")
        t = cls(settings, boot_offset=int(snap.get("boot_offset", 0)), containers=containers)
        mf = t.settings.max_fds_per_process
        for d in snap.get("processes", []):
            p = Process.from_dict(d, mf)
            t.procs[p.pid] = p
            if p.threads:
                for tid in p.threads:
                    t.tids[tid] = p.pid
        for d in snap.get("exited", []):
            p = Process.from_dict(d, mf)
            t.exited[p.pid] = p
        for p in t.procs.values():
            par = t.procs.get(p.ppid)
            if par is not None and par is not p:
                if par.children is None:
                    par.children = set()
                par.children.add(p.pid)
        for k, v in snap.get("cgroup_containers", []):
            t.cgroup_containers[int(k)] = str(v)
        if containers is not None and snap.get("containers"):
            containers.restore(snap["containers"])
        return t


# what a forked child copies from its parent (besides what _on_fork sets itself)
_INHERITED = (
    "exe", "exepath", "args", "cwd", "uid", "gid", "ruid", "rgid", "loginuid", "tty", "sid",
    "pidns", "mntns", "netns", "cap_effective", "cap_permitted", "exe_ctime", "exe_mtime",
    "exe_flags", "container", "runtime", "cgroup", "cgroup_id", "kthread",
)  # fmt: skip

try:
    _CLK_TCK = os.sysconf("SC_CLK_TCK") or 100
except (ValueError, OSError):
    _CLK_TCK = 100
_TICK_NS = 2 * 1_000_000_000 // _CLK_TCK  # /proc start times have clock-tick resolution


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _ns_inode(path: str) -> int:
    """``net:[4026531840]`` -> 4026531840."""
    t = _readlink(path)
    i = t.find("[")
    if i < 0:
        return 0
    try:
        return int(t[i + 1 : -1])
    except ValueError:
        return 0


def _cgroup_leaf(text: str) -> str:
    """The path of the v2 line of /proc/<pid>/cgroup, else of the first line."""
    first = ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            return parts[2]
        if not first and parts[2] != "/":
            first = parts[2]
    return first


class _SocketIndex:
    """socket inode -> tuple, from /proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}, read once per
    network namespace (each namespace has its own tables)."""

    _TCP_LISTEN = "0A"

    def __init__(self, proc_root: str) -> None:
        self.root = proc_root
        self._by_ns: dict[int, dict[int, tuple[Any, ...]]] = {}

    def _load(self, pid: int, netns: int) -> dict[int, tuple[Any, ...]]:
        idx = self._by_ns.get(netns)
        if idx is not None:
            return idx
        idx = {}
        listening: set[tuple[str, int]] = set()
        rows: list[tuple[str, int, str, int, str, int, str, int]] = []
        for proto, fam in (("tcp", 4), ("tcp6", 6), ("udp", 4), ("udp6", 6)):
            text = _read(f"{self.root}/{pid}/net/{proto}") or ""
            l4 = proto[:3]
            for line in text.splitlines()[1:]:
                f = line.split()
                if len(f) < 10:
                    continue
                try:
                    la, lp = f[1].split(":")
                    ra, rp = f[2].split(":")
                    ino = int(f[9])
                except ValueError:
                    continue
                conv = ipv4_str if fam == 4 else ipv6_str
                lip, rip = conv(la), conv(ra)
                lport, rport = int(lp, 16), int(rp, 16)
                if l4 == "tcp" and f[3] == self._TCP_LISTEN:
                    listening.add((l4, lport))
                rows.append((l4, fam, lip, lport, rip, rport, f[3], ino))
        for l4, fam, lip, lport, rip, rport, st, ino in rows:
            idx[ino] = ("inet", l4, fam, lip, lport, rip, rport, st, (l4, lport) in listening)
        text = _read(f"{self.root}/{pid}/net/unix") or ""
        for line in text.splitlines()[1:]:
            f = line.split(None, 7)
            if len(f) < 7:
                continue
            try:
                ino = int(f[6])
            except ValueError:
                continue
            path = f[7].strip() if len(f) > 7 else ""
            try:
                listens = bool(int(f[3], 16) & 0x10000)  # __SO_ACCEPTCON
            except ValueError:
                listens = False
            idx[ino] = ("unix", path, listens)
        self._by_ns[netns] = idx
        return idx

    def fdinfo(self, pid: int, fd: int, ino: int, netns: int) -> FdInfo:
        row = self._load(pid, netns).get(ino)
        if row is None:
            return FdInfo(fd, "<NA>", "", "", ino=ino)  # netlink, packet, ...: not in these tables
        if row[0] == "unix":
            _, path, _listen = row
            return FdInfo(fd, "unix", path, "", ino=ino, role="server" if _listen else "")
        _, l4, fam, lip, lport, rip, rport, st, local_listens = row
        fi = FdInfo(fd, "ipv4" if fam == 4 else "ipv6", "", "", l4proto=l4, ino=ino)
        if l4 == "tcp" and st == self._TCP_LISTEN:
            fi.role, fi.listening = "server", True
            fi.sip, fi.sport = lip, lport
            fi.name = f"{lip}:{lport}"
            return fi
        if rport == 0:  # unconnected UDP: no peer, and no way to tell client from server
            fi.cip, fi.cport = lip, lport
            fi.name = f"{lip}:{lport}"
            return fi
        from .fd import set_inet_tuple

        # connected: the server side is the one whose port this namespace listens on
        role = "server" if local_listens else "client"
        set_inet_tuple(fi, 2 if fam == 4 else 10, lip, lport, rip, rport, role)
        fi.connected = True
        return fi


__all__ = ["Process", "ProcessTable", "StateSettings", "O_CLOEXEC"]
