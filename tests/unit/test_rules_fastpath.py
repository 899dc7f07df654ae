"""The agent's fast paths change nothing: same alerts and rule counts with them on and off,
and the prefilter never rules out an event that a rule matches.

Synthetic streams over Falco's stable rules: opens of sensitive, log, traversal and
ordinary paths (absolute, relative, not normalised, failed, every access mode), closes of
known and unknown processes, dups, connects, execs (records larger than a slot), symlinks,
and a seeded random stream of the same ingredients.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from andon.app.agent import Agent
from andon.app.config import AgentConfig
from andon.events.capture import CaptureHeader, CaptureReader, CaptureWriter
from andon.events.schema import EVENT_DTYPE, Event, EventType, ExecInfo, Sock, decode_batch, encode_record
from andon.events.syscalls import BY_NAME
from andon.rules.prefilter import PATH_NRS, clean_path

from corpus import STABLE_RULES as STABLE  # noqa: E402
pytestmark = pytest.mark.skipif(not STABLE.is_file(), reason=f"{STABLE} not present")

NR = {n: BY_NAME[n].nr for n in ("open", "openat", "openat2", "creat", "close", "dup2", "connect", "socket",
                                  "symlink", "fcntl")}
O_RDONLY, O_WRONLY, O_RDWR, O_TRUNC, O_CREAT, O_DIRECTORY = 0, 1, 2, 0o1000, 0o100, 0o200000
AT_FDCWD = (1 << 64) - 100
PATHS = ["/etc/shadow", "/etc/hostname", "/etc/sudoers", "/etc/pam.d/common-auth", "/etc/sudoers.d/x",
         "shadow", "../../etc/shadow", "/etc//shadow", "/etc/./shadow", "/tmp/../etc/shadow", "/etc/",
         "/var/log/syslog", "/var/log/auth.log", "/root/.ssh/id_rsa", "/home/u/../../etc/passwd",
         "/sys/fs/cgroup/release_agent", "/etc/pam.conf", "/usr/lib/x.so", "", "/dev/null", "/proc/self/status"]
COMMS = ["cat", "nginx", "sshd", "bash", "python3", "ab-openclose", ""]


class Collect:
    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []

    def emit(self, a) -> None:
        self.alerts.append((a.rule, a.output))

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 10**18

    def __call__(self) -> int:
        self.t += 1000
        return self.t


def sysc(ts, name, pid, comm, ret, args=(0,) * 6, strings=(), sock=None, uid=0):
    return Event(ts=ts, type=EventType.SYSCALL, nr=NR[name], pid=pid, tid=pid, uid=uid, gid=0, cgroup_id=1, ret=ret,
                 args=tuple(args), comm=comm, strings=tuple(strings), sock=sock)


def opener(ts, pid, comm, name, path, flags, ret):
    args = [AT_FDCWD, 0, flags, 0, 0, 0] if name in ("openat", "openat2") else [0, flags, 0, 0, 0, 0]
    return sysc(ts, name, pid, comm, ret, args, (path,))


def execve(ts, pid, comm, exe, argv, ppid=1):
    x = ExecInfo(0x1FFFFFFFFFF, 0x1FFFFFFFFFF, 0, 0, 0, ppid, 0, 0, 0xFFFFFFFF, 0, pid, pid, 1, 1, 1, 0,
                 exepath=exe, filename=exe, cwd="/root", argv=argv)
    return Event(ts=ts, type=EventType.EXEC, nr=59, pid=pid, tid=pid, uid=0, gid=0, cgroup_id=1, ret=0,
                 args=(0,) * 6, comm=comm, exec=x)


def scripted() -> list[Event]:
    c = Clock()
    evs: list[Event] = []
    pid = 100
    for comm in COMMS:
        pid += 1
        evs.append(execve(c(), pid, comm or "x", f"/usr/bin/{comm or 'x'}", [comm or "x", "-c", "cat /etc/shadow"]))
        fd = 3
        for path in PATHS:
            for name in ("open", "openat", "openat2", "creat"):
                for flags in (O_RDONLY, O_WRONLY, O_RDWR | O_TRUNC, O_WRONLY | O_CREAT | O_TRUNC, O_DIRECTORY):
                    for ret in (fd, -2, -13):
                        evs.append(opener(c(), pid, comm, name, path, flags, ret))
                        if ret >= 0:
                            evs.append(sysc(c(), "close", pid, comm, 0, [fd, 0, 0, 0, 0, 0]))
        # closes and fcntls of pids nobody has seen (the lean close falls back to the full path)
        evs.append(sysc(c(), "close", pid + 5000, comm, 0, [7, 0, 0, 0, 0, 0]))
        evs.append(sysc(c(), "close", pid, comm, -9, [99, 0, 0, 0, 0, 0]))
        evs.append(sysc(c(), "fcntl", pid + 6000, comm, 0, [3, 1, 0, 0, 0, 0]))
        s = Sock(2, 1, 6, 40000, 6443, "10.0.0.2", "10.0.0.1", False)
        evs.append(sysc(c(), "socket", pid, comm, 5, [2, 1, 6, 0, 0, 0]))
        evs.append(sysc(c(), "connect", pid, comm, 0, [5, 0, 0, 0, 0, 0], sock=s))
        evs.append(sysc(c(), "dup2", pid, comm, 0, [5, 0, 0, 0, 0, 0]))
        evs.append(sysc(c(), "symlink", pid, comm, 0, strings=("/etc/shadow", "/tmp/x")))
    return evs


def randomized(seed: int, n: int = 6000) -> list[Event]:
    rnd = random.Random(seed)
    c = Clock()
    evs: list[Event] = []
    for _ in range(n):
        pid = rnd.choice([200, 201, 202, 203, 9999])
        comm = rnd.choice(COMMS)
        k = rnd.random()
        if k < 0.5:
            name = rnd.choice(["open", "openat", "openat2", "creat"])
            flags = rnd.choice([O_RDONLY, O_WRONLY, O_RDWR, O_RDWR | O_TRUNC, O_WRONLY | O_TRUNC, O_DIRECTORY, 3])
            evs.append(opener(c(), pid, comm, name, rnd.choice(PATHS), flags, rnd.choice([3, 4, 5, -2, -13, 0])))
        elif k < 0.85:
            evs.append(sysc(c(), "close", pid, comm, rnd.choice([0, 0, -9, -4]), [rnd.randrange(8), 0, 0, 0, 0, 0]))
        elif k < 0.9:
            evs.append(execve(c(), pid, comm or "x", rnd.choice(["/bin/sh", "/usr/bin/find", "/dev/shm/x"]),
                              [comm or "x", "-c", rnd.choice(["id", "find / -name id_rsa", "rm -rf /data"])]))
        else:
            evs.append(sysc(c(), "dup2", pid, comm, rnd.choice([0, 1, 2, -9]), [rnd.randrange(8), 0, 0, 0, 0, 0]))
    return evs


def write(tmp_path: Path, evs: list[Event]) -> Path:
    p = tmp_path / "s.andoncap"
    with CaptureWriter(p, CaptureHeader(boot_offset=0, types=["all"])) as w:
        for e in evs:
            w.write_record(encode_record(e))
    return p


def replay(path: Path, fast: bool, matching: str = "all") -> tuple[list[tuple[str, str]], dict, int]:
    ch = Collect()
    cfg = AgentConfig(rules_files=(STABLE,), watch_config_files=False, rule_matching=matching)
    agent = Agent(cfg, ch, rules_paths=[STABLE], status=open("/dev/null", "w"))
    agent.fast_paths = fast
    s = agent.run_replay(path)
    counts = {k: (v.evaluated, v.matched, v.errors) for k, v in agent.engine.counts.items()}
    return ch.alerts, counts, s.events


@pytest.mark.parametrize("stream", ["scripted", "random1", "random2"])
@pytest.mark.parametrize("matching", ["all", "first"])
def test_fast_paths_raise_the_same_alerts(tmp_path: Path, stream: str, matching: str) -> None:
    evs = scripted() if stream == "scripted" else randomized(int(stream[-1]))
    path = write(tmp_path, evs)
    slow = replay(path, False, matching)
    fast = replay(path, True, matching)
    assert slow[2] == fast[2] == len(evs)
    assert fast[0] == slow[0]
    assert fast[1] == slow[1]
    if stream == "scripted":  # the stream does exercise the rules
        hit = {r for r, _ in slow[0]}
        assert {"Read sensitive file untrusted", "Directory traversal monitored file read",
                "Clear Log Activities"} <= hit, hit


def test_prefilter_never_rules_out_a_match(tmp_path: Path) -> None:
    """Every (event, rule) that matches, with every rule tried (rule_matching all), passes
    both stages of the prefilter for that rule."""
    evs = scripted() + randomized(3, 3000)
    path = write(tmp_path, evs)
    cfg = AgentConfig(rules_files=(STABLE,), watch_config_files=False, rule_matching="all")
    agent = Agent(cfg, Collect(), rules_paths=[STABLE], status=open("/dev/null", "w"))
    engine = agent.engine
    pf = engine.prefilter()
    pos = {r.name: i for i, r in enumerate(pf.rules)}
    from andon.app.enrich import Tracker

    tracker = Tracker(offline=True)
    checked = 0
    with CaptureReader(path) as rd:
        for ev in rd.events():
            rec = np.frombuffer(encode_record(ev)[:248].ljust(248, b"\0"), dtype=EVENT_DTYPE)
            raw = pf.raw(rec)[:, 0]
            # path stage inputs as _handle_batch sees them: before the event is applied
            p = tracker.table.procs.get(ev.pid)
            path_ok = (ev.type == EventType.SYSCALL and ev.nr in PATH_NRS and ev.strings
                       and clean_path(ev.strings[0]) and (ev.ret < 0 or (p is not None and ev.ts >= p.proc_ts)))
            ctx = tracker(ev)
            for r in engine.rules_for(ev.name):
                if r.filter(ev, ctx):
                    i = pos[r.name]
                    assert raw[i], (r.name, ev)
                    pred = pf._path[i]
                    if path_ok and pred is not None:
                        assert pred(ev.strings[0]), (r.name, ev)
                    checked += 1
    assert checked > 50


def test_prefilter_rules_out_the_ordinary(tmp_path: Path) -> None:
    """It is not vacuous: a read of /etc/hostname and a write of /tmp/x are ruled out for
    every openat rule, a read of /etc/shadow is not."""
    cfg = AgentConfig(rules_files=(STABLE,), watch_config_files=False)
    agent = Agent(cfg, Collect(), rules_paths=[STABLE], status=open("/dev/null", "w"))
    pf = agent.engine.prefilter()
    entries = pf.by_type["openat"]

    def may(path: str, flags: int, ret: int) -> bool:
        ev = opener(10**18, 1, "cat", "openat", path, flags, ret)
        rec = np.frombuffer(encode_record(ev), dtype=EVENT_DTYPE)
        raw = pf.raw(rec)[:, 0]
        return any(raw[i] and (p is None or p(path)) for i, p in entries)

    assert not may("/etc/hostname", O_RDONLY, 3)
    assert not may("/tmp/x", O_RDONLY, 3)
    assert may("/etc/shadow", O_RDONLY, 3)
    assert may("/etc/../etc/hostname", O_RDONLY, 3) or not clean_path("/etc/../etc/hostname")


def test_batches_decode_as_records(tmp_path: Path) -> None:
    """CaptureReader.batches + decode_batch give the events decode_record gives."""
    evs = scripted()[:3000]
    path = write(tmp_path, evs)
    with CaptureReader(path) as r:
        one = list(r.events())
    got: list[Event] = []
    with CaptureReader(path) as r:
        from andon.events.schema import decode_record

        for arr, big in r.batches(chunk=4096):
            got.extend(decode_batch(arr, 0) if arr is not None else [decode_record(big, 0)])
    assert got == one and len(got) == len(evs)


def _state_stream() -> tuple[list[Event], dict]:
    """Opens the lean path must decline or get exactly right: relative to the cwd and to a
    dirfd (an alert only the resolved name shows), by a pid nobody has seen, and older than
    a /proc read (the snapshot's pid 300 was read at ``late``)."""
    from andon.app.enrich import Tracker

    c = Clock()
    t0 = c.t
    late = t0 + 50_000
    seed = Tracker(offline=True)
    seed.table.apply(execve(c(), 300, "cat", "/usr/bin/cat", ["cat"]))
    seed.table.apply(execve(c(), 301, "cat", "/usr/bin/cat", ["cat"]))
    seed.table.apply(opener(c(), 301, "cat", "openat", "/etc", O_DIRECTORY, 9))
    seed.table.get(300).proc_ts = late
    seed.table.apply(execve(c(), 302, "sh", "/bin/sh", ["sh"]))
    seed.table.get(302).container = "c0ffee" * 10 + "abcd"  # a container process, next to host ones
    snap = seed.snapshot()
    evs: list[Event] = []
    # the process stage: rules gated on the `container` macro fire for 302 only
    for pid in (301, 302, 9998):
        tcp = Sock(2, 1, 6, 40000, 443, "10.0.0.2", "10.0.0.1", False)
        evs.append(sysc(c(), "socket", pid, "sh", 5, [2, 1, 6, 0, 0, 0]))
        evs.append(sysc(c(), "connect", pid, "sh", 0, [5, 0, 0, 0, 0, 0], sock=tcp))
        for std in (0, 1, 2, 7):
            evs.append(sysc(c(), "dup2", pid, "sh", std, [5, std, 0, 0, 0, 0]))
        evs.append(sysc(c(), "socket", pid, "sh", 6, [17, 3, 768, 0, 0, 0]))  # AF_PACKET, SOCK_RAW
    for pid in (300, 301, 9999):
        for name in ("open", "openat", "openat2", "creat"):
            for path in ("/etc/shadow", "/etc/hostname", "shadow", "../etc/shadow", "/tmp/x", "/etc//shadow"):
                for flags in (O_RDONLY, O_WRONLY | O_TRUNC, O_DIRECTORY):
                    for ret in (3, -13):
                        evs.append(opener(c(), pid, "cat", name, path, flags, ret))
                        if ret >= 0:
                            evs.append(sysc(c(), "close", pid, "cat", 0, [3, 0, 0, 0, 0, 0]))
        # relative to the dirfd of /etc: fd.name /etc/shadow, the rule fires
        evs.append(sysc(c(), "openat", pid, "cat", 4, [9, 0, O_RDONLY, 0, 0, 0], ("shadow",)))
        evs.append(sysc(c(), "openat", pid, "cat", 5, [9, 0, O_RDONLY, 0, 0, 0], ("hostname",)))
    assert any(e.ts < late for e in evs if e.pid == 300) and any(e.ts > late for e in evs if e.pid == 300)
    return evs, snap


@pytest.mark.parametrize("batch", [7, 4096])
def test_fast_paths_leave_the_same_state(batch: int) -> None:
    """_handle_batch with and without the fast paths: same alerts, rule counts, evt.num and
    process and fd tables, batch by batch."""
    from andon.app.enrich import Tracker
    from andon.app.stream import Counts

    evs, snap = _state_stream()
    recs = np.frombuffer(b"".join(encode_record(e) for e in evs), dtype=EVENT_DTYPE)
    out = []
    for fast in (False, True):
        ch = Collect()
        cfg = AgentConfig(rules_files=(STABLE,), watch_config_files=False, rule_matching="all")
        agent = Agent(cfg, ch, rules_paths=[STABLE], status=open("/dev/null", "w"))
        agent.fast_paths = fast
        tracker = Tracker(offline=True, snapshot=snap)
        counts = Counts()
        for i in range(0, len(recs), batch):
            assert not agent._handle_batch(recs[i : i + batch], tracker, 0, counts, None)
        rule_counts = {k: (v.evaluated, v.matched) for k, v in agent.engine.counts.items()}
        out.append((ch.alerts, rule_counts, tracker.nevents, counts.seen, tracker.snapshot()))
    slow, fast_ = out
    assert fast_[0] == slow[0]
    assert fast_[1] == slow[1]
    assert fast_[2] == slow[2] == fast_[3] == len(evs)
    assert fast_[4] == slow[4]
    # the stream exercises what it is for: the dirfd-relative read of shadow alerts for every
    # pid, and the stale pid's reads before its /proc read are evaluated too
    outputs = [o for r, o in slow[0] if r == "Read sensitive file untrusted"]
    assert sum("file=/etc/shadow" in o for o in outputs) >= 3 * 4, outputs[:3]
    by_rule: dict[str, int] = {}
    for r, _o in slow[0]:
        by_rule[r] = by_rule.get(r, 0) + 1
    assert by_rule.get("Redirect STDOUT/STDIN to Network Connection in Container") == 3, by_rule  # 302's 0, 1, 2
    assert by_rule.get("Packet socket created in container") == 1, by_rule
