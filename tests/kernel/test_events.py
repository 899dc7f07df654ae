"""Every event type the sensor produces, triggered for real and decoded from the ring.

Each test is a TRIGGER block (a child process makes the call; the agent's own pid is
filtered out in the kernel) and an ASSERT block on the decoded fields, in the manner of
falcosecurity/libs test/drivers/test_suites/syscall_exit_suite/connect_x.cpp. The values
asserted are the ones the child printed or the test set up, so a wrong offset, a wrong
argument index or a swapped tuple side fails the test.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.live import cgroup_v1_subsys
from andon.events.nr_x86_64 import SYSCALL_NUMBERS as NR
from andon.events.schema import (
    F_IA32,
    AF_INET,
    AF_INET6,
    AF_UNIX,
    EXE_FROM_MEMFD,
    EXE_LOWER_LAYER,
    EXE_UPPER_LAYER,
    EXE_WRITABLE,
    Event,
    EventType,
)

AT_FDCWD = -100
U32 = 0xFFFFFFFF
SOCK_STREAM, SOCK_DGRAM = 1, 2
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SOCK_TYPE_MASK = 0xF  # type argument less SOCK_CLOEXEC / SOCK_NONBLOCK
OVERLAYFS_SUPER_MAGIC = 0x794C7630


def calls(events: list[Event], name: str) -> list[Event]:
    """The syscall events for ``name``, in ring order."""
    return [e for e in events if e.type == EventType.SYSCALL and e.nr == NR[name]]


def one(events: list[Event], name: str, **where: object) -> Event:
    """The single syscall event ``name`` whose attributes equal ``where``
    (``strings=(...)``, ``ret=...``; ``argN=v`` compares ``args[N]``)."""

    def ok(e: Event) -> bool:
        for k, v in where.items():
            got = e.args[int(k[3:])] if k.startswith("arg") else getattr(e, k)
            if got != v:
                return False
        return True

    found = [e for e in calls(events, name) if ok(e)]
    assert len(found) == 1, f"{len(found)} {name} events with {where}; all {name}: {calls(events, name)}"
    return found[0]


def low32(v: int) -> int:
    return v & U32


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path sits under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="andon-kt-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# == process lifecycle =========================================================================


def _proc_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def _cgroup_leaves(pid: int) -> tuple[str, str]:
    """(leaf on the v1 hierarchy the sensor reports, leaf on the v2 hierarchy), as
    /proc/<pid>/cgroup shows them; the root cgroup's kernfs name is empty."""
    names = [line.split()[0] for line in Path("/proc/cgroups").read_text().splitlines()[1:]]
    idx = cgroup_v1_subsys()
    v1name = names[idx] if idx < len(names) else None
    v1 = v2 = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        leaf = path.rsplit("/", 1)[-1]
        if ctrls == "":
            v2 = leaf
        elif v1name and v1name in ctrls.split(","):
            v1 = leaf
    return v1, v2


def test_exec_reports_image_argv_and_process_facts(sensor, collect, tmp_path):
    src = sensor(["execve"])
    cwd = os.path.realpath(tmp_path)
    argv = ["/bin/sh", "-c", "read line", "andon-exec", "two words", ""]

    # TRIGGER: exec a known binary in its own session (so no controlling tty), in a known
    # directory; it stays blocked in `read` while we look at its /proc entries
    before = time.monotonic_ns()
    p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, start_new_session=True)
    after = time.monotonic_ns()
    try:
        evs = collect(src, p.pid, until=lambda e: e.type == EventType.EXEC)
        ns = {n: os.stat(f"/proc/{p.pid}/ns/{n}").st_ino for n in ("pid", "mnt", "net")}
        cap_eff = int(_proc_field(p.pid, "CapEff"), 16)
        cap_prm = int(_proc_field(p.pid, "CapPrm"), 16)
        loginuid = int(Path(f"/proc/{p.pid}/loginuid").read_text())
        cg1, cg2 = _cgroup_leaves(p.pid)
    finally:
        p.communicate(b"\n", timeout=5)
    exe = os.path.realpath("/bin/sh")
    st = os.stat(exe)
    fs_magic = int(subprocess.run(["stat", "-f", "-c", "%t", exe], capture_output=True, text=True).stdout, 16)

    # ASSERT
    ev = evs[-1]
    x = ev.exec
    assert x is not None
    assert (ev.pid, ev.tid, ev.args[0]) == (p.pid, p.pid, p.pid)  # args[0]: the pid that called exec
    assert ev.comm == "sh"
    assert (ev.uid, ev.gid, x.ruid, x.rgid) == (0, 0, 0, 0)
    assert x.exepath == exe
    assert x.filename == "/bin/sh"
    assert x.argv == argv
    assert x.cwd == cwd
    assert x.ppid == os.getpid()
    assert x.loginuid == loginuid
    assert x.tty == 0
    assert x.sid == p.pid and x.vpid == p.pid
    assert (x.pidns, x.mntns, x.netns) == (ns["pid"], ns["mnt"], ns["net"])
    # root's exec gets every capability of the bounding set: the full mask of the running
    # kernel, less whatever a container runtime dropped from the bounding set
    assert x.cap_effective == cap_eff and x.cap_permitted == cap_prm
    full = (1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1
    assert cap_eff == int(_proc_field(os.getpid(), "CapBnd"), 16) & full
    assert before <= x.start_time <= after
    assert x.exe_mtime == st.st_mtime_ns and x.exe_ctime == st.st_ctime_ns
    assert x.exe_flags & EXE_WRITABLE  # euid 0 can write anything
    assert not x.exe_flags & EXE_FROM_MEMFD
    layer = x.exe_flags & (EXE_UPPER_LAYER | EXE_LOWER_LAYER)
    assert (layer != 0) == (fs_magic == OVERLAYFS_SUPER_MAGIC) and layer != EXE_UPPER_LAYER | EXE_LOWER_LAYER
    assert (x.cgroup, x.cgroup2) == (cg1, cg2)


def _exec_from_memfd(run_py) -> tuple[int, int]:
    # copy /bin/true into a memfd and fexecve it (glibc: execveat(fd, "", AT_EMPTY_PATH))
    ch = run_py(
        "fd = os.memfd_create('andon-memfd-exe', 0)\n"
        "data = open('/bin/true', 'rb').read()\n"
        "while data: data = data[os.write(fd, data):]\n"
        "out(fd)\n"
        "os.execve(fd, ['andon-memfd', 'arg1'], {})\n"
    )
    return ch.pid, ch.values()[0]


def test_exec_from_memfd_is_flagged(sensor, collect, run_py):
    src = sensor(["execve"])

    # TRIGGER
    pid, fd = _exec_from_memfd(run_py)

    # ASSERT
    execs = [e for e in collect(src, pid) if e.type == EventType.EXEC]
    assert len(execs) == 2  # the Python child itself, then the memfd image
    assert not execs[0].exec.exe_flags & EXE_FROM_MEMFD
    x = execs[1].exec
    assert x.exe_flags & EXE_FROM_MEMFD
    assert x.filename == f"/dev/fd/{fd}"  # what the kernel names an AT_EMPTY_PATH exec
    assert x.argv == ["andon-memfd", "arg1"]


def test_exec_from_memfd_exepath_names_the_memfd(sensor, collect, run_py):
    src = sensor(["execve"])

    # TRIGGER
    pid, _ = _exec_from_memfd(run_py)

    # ASSERT: d_path() shows "/memfd:andon-memfd-exe (deleted)"; Falco "memfd:andon-memfd-exe"
    x = [e for e in collect(src, pid) if e.type == EventType.EXEC][-1].exec
    assert "memfd:andon-memfd-exe" in x.exepath


def test_failed_exec_is_a_syscall_event(sensor, collect, run_py):
    src = sensor(["execve", "execveat"])
    missing = "/nonexistent/andon-no-such-binary"

    # TRIGGER
    ch = run_py(
        f"try:\n    os.execv({missing!r}, ['x'])\nexcept FileNotFoundError:\n    pass\n"
        f"out(sc('execveat', AT_FDCWD, {missing + '-2'!r}, 0, 0, 0))\n"
    )

    # ASSERT: sched_process_exec never fires for a failed exec; sys_exit reports it
    evs = collect(src, ch.pid)
    ev = one(evs, "execve", strings=(missing,))
    assert ev.ret == -errno.ENOENT
    ev2 = one(evs, "execveat", strings=(missing + "-2",))
    assert ev2.ret == -errno.ENOENT == ch.values()[0]
    assert low32(ev2.args[0]) == low32(AT_FDCWD)
    assert not [e for e in evs if e.type == EventType.EXEC and missing in e.exec.filename]


def test_fork_thread_and_their_exits(sensor, collect, run_py):
    src = sensor(["clone", "procexit"])

    # TRIGGER: a child forks (the grandchild exits 7) and starts one thread
    ch = run_py(
        "import threading\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    os._exit(7)\n"
        "os.waitpid(pid, 0)\n"
        "tids = []\n"
        "t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))\n"
        "t.start(); t.join()\n"
        "out(pid, tids[0])\n"
    )
    gc, tid = ch.values()

    # ASSERT
    evs = collect(src, lambda e: e.pid in (ch.pid, gc))
    forks = [e for e in evs if e.type == EventType.FORK and e.pid == ch.pid]
    assert [(e.args[0], e.args[1]) for e in forks] == [(gc, gc), (tid, ch.pid)]  # (child tid, child tgid)
    assert all(e.tid == ch.pid for e in forks)  # both made by the main thread
    exits = [e for e in evs if e.type == EventType.EXIT]
    gc_exit = [e for e in exits if e.pid == gc]
    assert len(gc_exit) == 1
    assert gc_exit[0].ret >> 8 == 7 and gc_exit[0].ret & 0x7F == 0
    assert gc_exit[0].args[0] == 1 and gc_exit[0].args[1] == ch.pid  # last thread; parent
    t_exit = [e for e in exits if e.tid == tid]
    assert len(t_exit) == 1 and t_exit[0].pid == ch.pid
    assert t_exit[0].args[0] == 0  # the main thread still lives
    main_exit = [e for e in exits if e.tid == ch.pid]
    assert len(main_exit) == 1 and main_exit[0].args[0] == 1


def test_exit_code(sensor, collect, run_py):
    src = sensor(["procexit"])

    # TRIGGER
    ch = run_py("sys.exit(3)", check=False)
    assert ch.returncode == 3

    # ASSERT: the wait status, as waitpid() would see it
    exits = [e for e in collect(src, ch.pid) if e.type == EventType.EXIT]
    assert len(exits) == 1
    ev = exits[0]
    assert ev.ret >> 8 == 3 and ev.ret & 0x7F == 0
    assert ev.args[0] == 1 and ev.args[1] == os.getpid()
    assert ev.tid == ch.pid


def test_killed_by_signal(sensor, collect, run_py):
    src = sensor(["procexit"])

    # TRIGGER
    ch = run_py("os.kill(os.getpid(), 9)", check=False)
    assert ch.returncode == -9

    # ASSERT
    exits = [e for e in collect(src, ch.pid) if e.type == EventType.EXIT]
    assert len(exits) == 1
    assert exits[0].ret & 0x7F == 9 and exits[0].ret == 9  # no exit code, no core dump bit


# == files =====================================================================================


def test_open_creates_file(sensor, collect, run_py, tmp_path):
    src = sensor(["open"])
    path = str(tmp_path / "created")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    # TRIGGER: open(2) itself, not glibc's openat
    ch = run_py(f"out(sc('open', {path!r}, {flags}, 0o640))")
    (fd,) = ch.values()
    assert fd >= 3 and stat.S_IMODE(os.stat(path).st_mode) == 0o640

    # ASSERT
    ev = one(collect(src, ch.pid), "open", strings=(path,))
    assert ev.ret == fd
    assert ev.args[1] == flags and ev.args[2] == 0o640


def test_openat_relative_to_dirfd(sensor, collect, run_py, tmp_path):
    src = sensor(["openat"])
    (tmp_path / "existing").write_text("x")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW

    # TRIGGER
    ch = run_py(
        f"d = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        f"out(d, sc('openat', d, 'existing', {flags}, 0))\n"
    )
    dirfd, fd = ch.values()

    # ASSERT
    ev = one(collect(src, ch.pid), "openat", strings=("existing",))
    assert ev.ret == fd and fd >= 3
    assert ev.args[0] == dirfd and ev.args[2] == flags


def test_openat2_flags_mode_resolve_come_from_open_how(sensor, collect, run_py, tmp_path):
    src = sensor(["openat2"])
    path = str(tmp_path / "via-openat2")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    RESOLVE_NO_SYMLINKS = 0x04

    # TRIGGER: struct open_how { u64 flags, mode, resolve }  (openat2 needs 5.6)
    ch = run_py(
        f"how = ctypes.create_string_buffer(struct.pack('<QQQ', {flags}, 0o600, {RESOLVE_NO_SYMLINKS}), 24)\n"
        f"out(sc('openat2', AT_FDCWD, {path!r}, how, 24))\n"
    )
    (fd,) = ch.values()
    if fd == -errno.ENOSYS:
        pytest.skip("openat2 is not available (needs Linux 5.6)")

    # ASSERT: args[2..4] are replaced by the struct's fields
    ev = one(collect(src, ch.pid), "openat2", strings=(path,))
    assert ev.ret == fd and fd >= 3
    assert low32(ev.args[0]) == low32(AT_FDCWD)
    assert (ev.args[2], ev.args[3], ev.args[4]) == (flags, 0o600, RESOLVE_NO_SYMLINKS)


def test_open_missing_file_is_enoent(sensor, collect, run_py, tmp_path):
    src = sensor(["openat"])
    path = str(tmp_path / "no" / "such" / "file")

    # TRIGGER
    ch = run_py(f"out(sc('openat', AT_FDCWD, {path!r}, os.O_RDONLY, 0))")

    # ASSERT
    ev = one(collect(src, ch.pid), "openat", strings=(path,))
    assert ev.ret == -errno.ENOENT == ch.values()[0]


def test_open_denied_to_unprivileged_user(sensor, collect, run_py, world_dir):
    src = sensor(["openat"])
    secret, public = world_dir / "secret", world_dir / "public"
    secret.write_text("s")
    secret.chmod(0o600)
    public.write_text("p")
    public.chmod(0o644)

    # TRIGGER: drop to nobody, then open a root-only file and a world-readable one
    ch = run_py(
        "os.setgid(65534); os.setuid(65534)\n"
        f"out(sc('openat', AT_FDCWD, {str(secret)!r}, os.O_RDONLY, 0))\n"
        f"out(sc('openat', AT_FDCWD, {str(public)!r}, os.O_RDONLY, 0))\n"
    )
    denied, fd = ch.values()

    # ASSERT: the header's uid/gid are the effective ids at the time of the call
    evs = collect(src, ch.pid)
    ev = one(evs, "openat", strings=(str(secret),))
    assert ev.ret == -errno.EACCES == denied
    assert (ev.uid, ev.gid) == (65534, 65534)
    ok = one(evs, "openat", strings=(str(public),))
    assert ok.ret == fd and fd >= 3


def test_rename_and_renameat2(sensor, collect, run_py, tmp_path):
    src = sensor(["rename", "renameat", "renameat2"])
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    Path(a).write_text("a")
    Path(d).write_text("d")
    RENAME_NOREPLACE = 1

    # TRIGGER
    ch = run_py(
        f"out(sc('rename', {a!r}, {b!r}))\n"
        f"out(sc('renameat2', AT_FDCWD, {b!r}, AT_FDCWD, {c!r}, {RENAME_NOREPLACE}))\n"
        f"out(sc('renameat2', AT_FDCWD, {c!r}, AT_FDCWD, {d!r}, {RENAME_NOREPLACE}))\n"
    )
    assert ch.values() == [0, 0, -errno.EEXIST]

    # ASSERT: both paths, in order
    evs = collect(src, ch.pid)
    assert one(evs, "rename", strings=(a, b)).ret == 0
    ev = one(evs, "renameat2", strings=(b, c))
    assert ev.ret == 0 and ev.args[4] == RENAME_NOREPLACE
    assert low32(ev.args[0]) == low32(ev.args[2]) == low32(AT_FDCWD)
    assert one(evs, "renameat2", strings=(c, d)).ret == -errno.EEXIST


def test_unlink_and_unlinkat(sensor, collect, run_py, tmp_path):
    src = sensor(["unlink", "unlinkat"])
    f, d = str(tmp_path / "file"), str(tmp_path / "dir")
    Path(f).write_text("x")
    os.mkdir(d)
    AT_REMOVEDIR = 0x200

    # TRIGGER
    ch = run_py(
        f"out(sc('unlink', {f!r}))\n"
        f"out(sc('unlinkat', AT_FDCWD, {d!r}, {AT_REMOVEDIR}))\n"
        f"out(sc('unlink', {f!r}))\n"
    )
    assert ch.values() == [0, 0, -errno.ENOENT]

    # ASSERT
    evs = collect(src, ch.pid)
    assert [e.ret for e in calls(evs, "unlink") if e.strings == (f,)] == [0, -errno.ENOENT]
    ev = one(evs, "unlinkat", strings=(d,))
    assert ev.ret == 0 and ev.args[2] == AT_REMOVEDIR


def test_link_and_linkat(sensor, collect, run_py, tmp_path):
    src = sensor(["link", "linkat"])
    f, l1, l2 = (str(tmp_path / n) for n in ("file", "hard1", "hard2"))
    Path(f).write_text("x")
    AT_SYMLINK_FOLLOW = 0x400

    # TRIGGER
    ch = run_py(
        f"out(sc('link', {f!r}, {l1!r}))\n"
        f"out(sc('linkat', AT_FDCWD, {f!r}, AT_FDCWD, {l2!r}, {AT_SYMLINK_FOLLOW}))\n"
    )
    assert ch.values() == [0, 0] and os.stat(f).st_nlink == 3

    # ASSERT: oldpath then newpath
    evs = collect(src, ch.pid)
    assert one(evs, "link", strings=(f, l1)).ret == 0
    ev = one(evs, "linkat", strings=(f, l2))
    assert ev.ret == 0 and ev.args[4] == AT_SYMLINK_FOLLOW


def test_symlink_and_symlinkat(sensor, collect, run_py, tmp_path):
    src = sensor(["symlink", "symlinkat"])
    l1, l2 = str(tmp_path / "sym1"), str(tmp_path / "sym2")

    # TRIGGER: targets need not exist
    ch = run_py(
        f"out(sc('symlink', '../relative/target', {l1!r}))\n"
        f"out(sc('symlinkat', '/absolute/target', AT_FDCWD, {l2!r}))\n"
    )
    assert ch.values() == [0, 0] and os.readlink(l2) == "/absolute/target"

    # ASSERT: target then linkpath (symlinkat: args 0 and 2)
    evs = collect(src, ch.pid)
    assert one(evs, "symlink", strings=("../relative/target", l1)).ret == 0
    ev = one(evs, "symlinkat", strings=("/absolute/target", l2))
    assert ev.ret == 0 and low32(ev.args[1]) == low32(AT_FDCWD)


def test_mkdir_mkdirat_rmdir(sensor, collect, run_py, tmp_path):
    src = sensor(["mkdir", "mkdirat", "rmdir"])
    d1 = str(tmp_path / "d1")

    # TRIGGER
    ch = run_py(
        f"out(sc('mkdir', {d1!r}, 0o751))\n"
        f"out(sc('mkdir', {d1!r}, 0o700))\n"
        f"d = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "out(d, sc('mkdirat', d, 'sub', 0o705))\n"
        f"out(sc('rmdir', {d1!r}))\n"
        f"out(sc('rmdir', {d1!r}))\n"
    )
    mk, mk_again, dirfd, mkat, rm, rm_again = ch.values()
    assert (mk, mk_again, mkat, rm, rm_again) == (0, -errno.EEXIST, 0, 0, -errno.ENOENT)

    # ASSERT
    evs = collect(src, ch.pid)
    assert [(e.ret, e.args[1]) for e in calls(evs, "mkdir") if e.strings == (d1,)] == [
        (0, 0o751),
        (-errno.EEXIST, 0o700),
    ]
    ev = one(evs, "mkdirat", strings=("sub",))
    assert ev.ret == 0 and ev.args[0] == dirfd and ev.args[2] == 0o705
    assert [e.ret for e in calls(evs, "rmdir") if e.strings == (d1,)] == [0, -errno.ENOENT]


def test_chmod_and_fchmodat(sensor, collect, run_py, tmp_path):
    src = sensor(["chmod", "fchmodat"])
    f = str(tmp_path / "file")
    Path(f).write_text("x")

    # TRIGGER
    ch = run_py(f"out(sc('chmod', {f!r}, 0o604))\nout(sc('fchmodat', AT_FDCWD, {f!r}, 0o640))\n")
    assert ch.values() == [0, 0] and stat.S_IMODE(os.stat(f).st_mode) == 0o640

    # ASSERT
    evs = collect(src, ch.pid)
    ev = one(evs, "chmod", strings=(f,))
    assert ev.ret == 0 and ev.args[1] == 0o604
    ev = one(evs, "fchmodat", strings=(f,))
    assert ev.ret == 0 and ev.args[2] == 0o640 and low32(ev.args[0]) == low32(AT_FDCWD)


def test_chown_and_fchownat(sensor, collect, run_py, tmp_path):
    src = sensor(["chown", "fchownat"])
    f, link = str(tmp_path / "file"), str(tmp_path / "link")
    Path(f).write_text("x")
    os.symlink(f, link)
    AT_SYMLINK_NOFOLLOW = 0x100

    # TRIGGER
    ch = run_py(
        f"out(sc('chown', {f!r}, 1234, 5678))\n"
        f"out(sc('fchownat', AT_FDCWD, {link!r}, 4321, 8765, {AT_SYMLINK_NOFOLLOW}))\n"
    )
    assert ch.values() == [0, 0]
    assert (os.stat(f).st_uid, os.lstat(link).st_gid) == (1234, 8765)

    # ASSERT
    evs = collect(src, ch.pid)
    ev = one(evs, "chown", strings=(f,))
    assert ev.ret == 0 and (ev.args[1], ev.args[2]) == (1234, 5678)
    ev = one(evs, "fchownat", strings=(link,))
    assert ev.ret == 0 and (ev.args[2], ev.args[3], ev.args[4]) == (4321, 8765, AT_SYMLINK_NOFOLLOW)


def test_chdir_and_fchdir(sensor, collect, run_py, tmp_path):
    src = sensor(["chdir", "fchdir"])
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir()
    d2.mkdir()
    missing = str(tmp_path / "missing")

    # TRIGGER
    ch = run_py(
        f"out(sc('chdir', {str(d1)!r}))\n"
        f"out(sc('chdir', {missing!r}))\n"
        f"fd = os.open({str(d2)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "out(fd, sc('fchdir', fd), int(os.getcwd() == " + repr(str(d2)) + "))\n"
    )
    ok, bad, fd, fch, moved = ch.values()
    assert (ok, bad, fch, moved) == (0, -errno.ENOENT, 0, 1)

    # ASSERT
    evs = collect(src, ch.pid)
    assert one(evs, "chdir", strings=(str(d1),)).ret == 0
    assert one(evs, "chdir", strings=(missing,)).ret == -errno.ENOENT
    ev = one(evs, "fchdir", arg0=fd)
    assert ev.ret == 0 and ev.strings == ()


# == fd table ==================================================================================


def test_close_dup_dup2_dup3_fcntl(sensor, collect, run_py):
    src = sensor(["close", "dup", "dup2", "dup3", "fcntl"])
    F_DUPFD = 0

    # TRIGGER
    ch = run_py(
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "d1 = sc('dup', fd)\n"
        "d2 = sc('dup2', fd, 100)\n"
        "d3 = sc('dup3', fd, 101, os.O_CLOEXEC)\n"
        f"d4 = sc('fcntl', fd, {F_DUPFD}, 200)\n"
        "c1 = sc('close', d1)\n"
        "c2 = sc('close', d1)\n"
        "out(fd, d1, d2, d3, d4, c1, c2)\n"
    )
    fd, d1, d2, d3, d4, c1, c2 = ch.values()
    assert (d2, d3, d4, c1, c2) == (100, 101, 200, 0, -errno.EBADF)

    # ASSERT
    evs = collect(src, ch.pid)
    dup = one(evs, "dup", arg0=fd)
    assert dup.ret == d1
    assert one(evs, "dup2", arg0=fd, arg1=100).ret == 100
    assert one(evs, "dup3", arg0=fd, arg1=101).args[2] == os.O_CLOEXEC
    assert one(evs, "fcntl", arg0=fd, arg1=F_DUPFD).ret == 200 and one(evs, "fcntl", arg0=fd, arg1=F_DUPFD).args[2] == 200
    after_dup = evs[evs.index(dup) :]
    assert [e.ret for e in calls(after_dup, "close") if e.args[0] == d1][:2] == [0, -errno.EBADF]


def test_pipe_pipe2_socketpair_report_both_fds(sensor, collect, run_py):
    src = sensor(["pipe", "pipe2", "socketpair"])
    flags = os.O_CLOEXEC | os.O_NONBLOCK

    # TRIGGER: the child prints the fds the kernel gave it
    ch = run_py(
        f"r, w = os.pipe2({flags})\n"
        "fds = (ctypes.c_int * 2)()\n"
        "rc = sc('pipe', fds)\n"
        "a, b = socket.socketpair()\n"
        "out(r, w, rc, fds[0], fds[1], a.fileno(), b.fileno())\n"
    )
    r, w, rc, p0, p1, s0, s1 = ch.values()
    assert rc == 0 and len({r, w, p0, p1, s0, s1}) == 6

    # ASSERT: the int[2] out-argument lands in args[4], args[5]
    evs = collect(src, ch.pid)
    ev = one(evs, "pipe2", arg4=r)
    assert (ev.ret, ev.args[5], ev.args[1]) == (0, w, flags)
    ev = one(evs, "pipe", arg4=p0)
    assert (ev.ret, ev.args[5]) == (0, p1)
    ev = one(evs, "socketpair", arg4=s0)
    assert (ev.ret, ev.args[5]) == (0, s1)
    assert ev.args[0] == AF_UNIX and ev.args[1] & SOCK_TYPE_MASK == SOCK_STREAM


# == network ===================================================================================


def test_socket_reports_fd_args_and_kernel_socket(sensor, collect, run_py):
    src = sensor(["socket"])

    # TRIGGER
    ch = run_py(
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)\n"
        "t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 0)\n"
        "out(u.fileno(), t.fileno())\n"
    )
    ufd, tfd = ch.values()

    # ASSERT
    evs = collect(src, ch.pid)
    u = one(evs, "socket", ret=ufd)
    assert (u.args[0], u.args[1] & SOCK_TYPE_MASK, u.args[2]) == (AF_INET, SOCK_DGRAM, IPPROTO_UDP)
    assert (u.sock.family, u.sock.type, u.sock.proto, u.sock.from_arg) == (AF_INET, SOCK_DGRAM, IPPROTO_UDP, False)
    assert u.sock.l4proto == "udp"
    t = one(evs, "socket", ret=tfd)
    assert (t.args[0], t.args[1] & SOCK_TYPE_MASK, t.args[2]) == (AF_INET6, SOCK_STREAM, 0)
    # protocol 0 in the argument; the kernel socket says what it chose
    assert (t.sock.family, t.sock.type, t.sock.proto) == (AF_INET6, SOCK_STREAM, IPPROTO_TCP)


@pytest.fixture
def tcp_listener(request) -> Iterator[socket.socket]:
    family, host = request.param if hasattr(request, "param") else (socket.AF_INET, "127.0.0.1")
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
    except OSError as e:
        s.close()
        pytest.skip(f"cannot bind {host}: {e}")
    s.listen(8)
    yield s
    s.close()


@pytest.mark.parametrize(
    "tcp_listener", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], indirect=True, ids=["ipv4", "ipv6"]
)
def test_connect_tcp_loopback_tuple(sensor, collect, run_py, tcp_listener):
    src = sensor(["connect"])
    family = tcp_listener.family
    host, port = tcp_listener.getsockname()[:2]

    # TRIGGER
    ch = run_py(
        f"s = socket.socket({int(family)}, socket.SOCK_STREAM)\n"
        f"s.connect(({host!r}, {port}))\n"
        "out(s.fileno(), s.getsockname()[1])\n"
    )
    fd, sport = ch.values()

    # ASSERT: the local side from the kernel socket, the remote one from the argument
    ev = one(collect(src, ch.pid), "connect", arg0=fd)
    assert ev.ret == 0
    t = ev.sock
    assert (t.family, t.type, t.proto, t.l4proto) == (family, SOCK_STREAM, IPPROTO_TCP, "tcp")
    assert (t.saddr, t.sport) == (host, sport)
    assert (t.daddr, t.dport) == (host, port)
    assert t.from_arg is True


def test_connect_unix_path_and_abstract(sensor, collect, run_py):
    src = sensor(["connect"])
    d = tempfile.mkdtemp(prefix="andon-u-")  # short: sun_path holds 108 bytes
    path = os.path.join(d, "srv.sock")
    abstract = f"andon-abstract-{os.getpid()}"
    servers = []
    try:
        for addr in (path, "\0" + abstract):
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(addr)
            srv.listen(4)
            servers.append(srv)

        # TRIGGER
        ch = run_py(
            f"a = socket.socket(socket.AF_UNIX); a.connect({path!r})\n"
            f"b = socket.socket(socket.AF_UNIX); b.connect({chr(0) + abstract!r})\n"
            "out(a.fileno(), b.fileno())\n"
        )
    finally:
        for srv in servers:
            srv.close()
        shutil.rmtree(d, ignore_errors=True)
    afd, bfd = ch.values()

    # ASSERT: the name exactly as passed (the abstract one is not NUL-terminated in the
    # caller's sockaddr: nothing past addrlen may leak in)
    evs = collect(src, ch.pid)
    a = one(evs, "connect", arg0=afd)
    assert a.ret == 0 and a.args[2] == 2 + len(path) + 1  # Python counts the NUL
    assert (a.sock.family, a.sock.type, a.sock.path, a.sock.from_arg) == (AF_UNIX, SOCK_STREAM, path, True)
    assert a.strings == ()
    b = one(evs, "connect", arg0=bfd)
    assert b.ret == 0 and b.args[2] == 3 + len(abstract)
    assert (b.sock.family, b.sock.path) == (AF_UNIX, "@" + abstract)
    assert b.strings == ()


def test_accept4_reports_the_accepted_connection(sensor, collect, spawn_py):
    src = sensor(["accept4", "accept"])

    # TRIGGER: the child is the server; we connect to it
    ch = spawn_py(
        "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n"
        "out(l.fileno(), l.getsockname()[1])\n"
        "c, peer = l.accept()\n"
        "out(c.fileno(), peer[1])\n"
    )
    lfd, port = map(int, ch.readline().split())
    client = socket.create_connection(("127.0.0.1", port))
    cport = client.getsockname()[1]
    cfd, peer_port = map(int, ch.readline().split())
    ch.finish()
    client.close()
    assert peer_port == cport

    # ASSERT: Python accepts with accept4(SOCK_CLOEXEC); the tuple is the new socket's
    ev = one(collect(src, ch.pid), "accept4", arg0=lfd)
    assert ev.ret == cfd
    t = ev.sock
    assert (t.family, t.type, t.proto) == (AF_INET, SOCK_STREAM, IPPROTO_TCP)
    assert (t.saddr, t.sport, t.daddr, t.dport) == ("127.0.0.1", port, "127.0.0.1", cport)
    assert t.from_arg is False


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bind_and_listen(sensor, collect, run_py):
    src = sensor(["bind", "listen"])
    port = _free_port(socket.SOCK_STREAM)

    # TRIGGER: a fixed port, then port 0 (the kernel picks one)
    ch = run_py(
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(7)\n"
        "z = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); z.bind(('127.0.0.1', 0))\n"
        "out(s.fileno(), s.getsockname()[1], z.fileno(), z.getsockname()[1])\n"
    )
    fd, bound, zfd, zport = ch.values()
    assert bound == port and zport != 0

    # ASSERT: bind's local side is what the kernel socket holds after the call (for port 0
    # the port it chose, which the argument does not know); the peer side stays empty
    evs = collect(src, ch.pid)
    b = one(evs, "bind", arg0=fd)
    assert b.ret == 0 and b.args[2] == 16
    assert (b.sock.family, b.sock.proto, b.sock.saddr, b.sock.sport) == (AF_INET, IPPROTO_TCP, "127.0.0.1", port)
    assert (b.sock.daddr, b.sock.dport) == ("0.0.0.0", 0)
    z = one(evs, "bind", arg0=zfd)
    assert (z.sock.proto, z.sock.saddr, z.sock.sport, z.sock.dport) == (IPPROTO_UDP, "127.0.0.1", zport, 0)
    ls = one(evs, "listen", arg0=fd)
    assert ls.ret == 0 and ls.args[1] == 7
    assert (ls.sock.saddr, ls.sock.sport, ls.sock.dport, ls.sock.from_arg) == ("127.0.0.1", port, 0, False)


def test_bind_unix_path_comes_from_argument(sensor, collect, run_py):
    src = sensor(["bind"])
    d = tempfile.mkdtemp(prefix="andon-u-")
    path = os.path.join(d, "bound.sock")

    # TRIGGER
    try:
        ch = run_py(f"s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind({path!r}); out(s.fileno())")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    (fd,) = ch.values()

    # ASSERT
    ev = one(collect(src, ch.pid), "bind", arg0=fd)
    assert ev.ret == 0
    assert (ev.sock.family, ev.sock.type, ev.sock.path, ev.sock.from_arg) == (AF_UNIX, SOCK_DGRAM, path, True)


@pytest.fixture
def udp_sink() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


def test_sendto_unconnected_udp_takes_peer_from_argument(sensor, collect, run_py, udp_sink):
    src = sensor(["sendto"])
    port = udp_sink.getsockname()[1]

    # TRIGGER: one datagram with an explicit destination, one on a connected socket
    ch = run_py(
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"n = u.sendto(b'hello', ('127.0.0.1', {port}))\n"
        f"c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.connect(('127.0.0.1', {port}))\n"
        "m = c.send(b'x')\n"
        "out(u.fileno(), n, u.getsockname()[1], c.fileno(), m, c.getsockname()[1])\n"
    )
    ufd, n, uport, cfd, m, cport = ch.values()
    data, (_, src_port) = udp_sink.recvfrom(100)
    assert (data, src_port, n) == (b"hello", uport, 5)

    # ASSERT
    evs = collect(src, ch.pid)
    ev = one(evs, "sendto", arg0=ufd)
    assert ev.ret == 5 and ev.args[2] == 5
    t = ev.sock
    assert (t.family, t.type, t.proto) == (AF_INET, SOCK_DGRAM, IPPROTO_UDP)
    assert (t.from_arg, t.daddr, t.dport) == (True, "127.0.0.1", port)
    assert (t.saddr, t.sport) == ("0.0.0.0", uport)  # autobound: any address, a real port
    ev = one(evs, "sendto", arg0=cfd)
    assert ev.ret == m == 1 and ev.args[4] == 0  # no sockaddr argument
    t = ev.sock
    assert (t.from_arg, t.saddr, t.sport, t.daddr, t.dport) == (False, "127.0.0.1", cport, "127.0.0.1", port)


def test_sendmsg_with_msg_name(sensor, collect, run_py, udp_sink):
    src = sensor(["sendmsg"])
    port = udp_sink.getsockname()[1]

    # TRIGGER
    ch = run_py(
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"n = u.sendmsg([b'ab', b'cd'], [], 0, ('127.0.0.1', {port}))\n"
        "out(u.fileno(), n, u.getsockname()[1])\n"
    )
    fd, n, uport = ch.values()
    assert udp_sink.recvfrom(100) == (b"abcd", ("127.0.0.1", uport))

    # ASSERT
    ev = one(collect(src, ch.pid), "sendmsg", arg0=fd)
    assert ev.ret == n == 4
    t = ev.sock
    assert (t.family, t.proto, t.from_arg, t.daddr, t.dport, t.sport) == (
        AF_INET,
        IPPROTO_UDP,
        True,
        "127.0.0.1",
        port,
        uport,
    )


# == privileges and process control ============================================================


def test_ptrace_request_and_pid(sensor, collect, run_py):
    src = sensor(["ptrace"])
    PTRACE_TRACEME, PTRACE_GETREGS = 0, 12

    # TRIGGER
    ch = run_py(
        f"out(sc('ptrace', {PTRACE_TRACEME}, 0, 0, 0))\n"
        f"out(sc('ptrace', {PTRACE_GETREGS}, 999999, 0, 0))\n"
    )
    assert ch.values() == [0, -errno.ESRCH]

    # ASSERT
    evs = collect(src, ch.pid)
    assert one(evs, "ptrace", arg0=PTRACE_TRACEME).ret == 0
    ev = one(evs, "ptrace", arg0=PTRACE_GETREGS)
    assert ev.args[1] == 999999 and ev.ret == -errno.ESRCH


def test_setresuid_and_setuid(sensor, collect, run_py):
    src = sensor(["setuid", "setresuid"])

    # TRIGGER: raw syscalls (glibc would broadcast to every thread; one thread is enough)
    ch = run_py(
        "out(sc('setresuid', 1001, 1002, 0))\n"  # euid 1002, saved 0
        "out(sc('setuid', 0))\n"  # back to euid 0 through the saved uid
        "out(sc('setuid', 4242))\n"  # as root: all three ids
        "out(sc('setuid', 0))\n"  # now refused
    )
    assert ch.values() == [0, 0, 0, -errno.EPERM]

    # ASSERT: args, and the header's uid is the effective uid after the call
    evs = collect(src, ch.pid)
    ev = one(evs, "setresuid")
    assert (ev.args[0], ev.args[1], ev.args[2], ev.ret, ev.uid) == (1001, 1002, 0, 0, 1002)
    assert [(e.args[0], e.ret, e.uid) for e in calls(evs, "setuid")] == [
        (0, 0, 0),
        (4242, 0, 4242),
        (0, -errno.EPERM, 4242),
    ]


def test_unshare_flags(sensor, collect, run_py):
    src = sensor(["unshare"])
    CLONE_NEWUTS, CSIGNAL_BIT = 0x04000000, 0x1

    # TRIGGER
    ch = run_py(f"out(sc('unshare', {CLONE_NEWUTS}))\nout(sc('unshare', {CSIGNAL_BIT}))\n")
    assert ch.values() == [0, -errno.EINVAL]

    # ASSERT
    evs = collect(src, ch.pid)
    assert one(evs, "unshare", arg0=CLONE_NEWUTS).ret == 0
    assert one(evs, "unshare", arg0=CSIGNAL_BIT).ret == -errno.EINVAL


def test_kill_pid_and_signal(sensor, collect, run_py):
    src = sensor(["kill"])

    # TRIGGER
    ch = run_py("out(os.getpid(), sc('kill', os.getpid(), 0), sc('kill', 999999, 15))")
    pid, r0, r1 = ch.values()
    assert (pid, r0, r1) == (ch.pid, 0, -errno.ESRCH)

    # ASSERT
    evs = collect(src, ch.pid)
    ev = one(evs, "kill", arg0=ch.pid)
    assert ev.args[1] == 0 and ev.ret == 0
    ev = one(evs, "kill", arg0=999999)
    assert ev.args[1] == 15 and ev.ret == -errno.ESRCH


def test_init_module_and_finit_module(sensor, collect, run_py):
    src = sensor(["init_module", "finit_module"])

    # TRIGGER: calls that cannot load anything (a bad fd; 16 bytes that are no ELF image)
    ch = run_py(
        "out(sc('finit_module', -1, 'andon_test=1', 0))\n"
        "img = ctypes.create_string_buffer(16)\n"
        "out(sc('init_module', img, 16, 'andon_test=2'))\n"
    )
    fret, iret = ch.values()
    assert fret < 0 and iret < 0

    # ASSERT: the module parameters string (uargs) is copied for both
    evs = collect(src, ch.pid)
    ev = one(evs, "finit_module", strings=("andon_test=1",))
    assert ev.ret == fret and low32(ev.args[0]) == U32 and ev.args[2] == 0
    ev = one(evs, "init_module", strings=("andon_test=2",))
    assert ev.ret == iret and ev.args[1] == 16


# == long strings ==============================================================================


def _long_name(n: int, seed: str) -> str:
    """n characters that differ along their length, so a cut or a shifted copy shows."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return seed + "".join(alphabet[(i * 7 + i // 36) % 36] for i in range(n - len(seed)))


def _long_path(n: int, seed: str) -> str:
    """An absolute path of n bytes made of components no longer than NAME_MAX (255)."""
    name = _long_name(n - 1, seed)
    return "/" + "/".join(name[i : i + 200] for i in range(0, len(name), 200))[: n - 1]


def test_paths_longer_than_one_slot_arrive_whole(sensor, collect, run_py, tmp_path):
    src = sensor(["openat", "rename"])
    a = str(tmp_path / _long_name(240, "a-"))
    b = str(tmp_path / _long_name(250, "b-"))
    assert len(a) > 136 and len(b) > 136  # more than the 136 data bytes of one slot

    # TRIGGER
    ch = run_py(
        f"fd = sc('openat', AT_FDCWD, {a!r}, os.O_CREAT | os.O_WRONLY, 0o600)\n"
        f"out(fd, sc('rename', {a!r}, {b!r}))\n"
    )
    fd, rc = ch.values()
    assert fd >= 3 and rc == 0

    # ASSERT: a multi-slot record, strings intact, not flagged truncated
    evs = collect(src, ch.pid)
    ev = one(evs, "openat", strings=(a,))
    assert ev.ret == fd and not ev.truncated
    ev = one(evs, "rename", strings=(a, b))
    assert ev.ret == 0 and not ev.truncated


def test_path_beyond_path_max_is_truncated_and_counted(sensor, collect, run_py):
    src = sensor(["openat"])
    path = "/" + _long_name(5000, "andon-long-")
    before = src.stats()["truncated"]

    # TRIGGER
    ch = run_py(f"out(sc('openat', AT_FDCWD, {path!r}, os.O_RDONLY, 0))")
    assert ch.values() == [-errno.ENAMETOOLONG]

    # ASSERT: the first PATH_MAX bytes (one more than any legal path), the flag, and the counter
    evs = [e for e in calls(collect(src, ch.pid), "openat") if e.strings and e.strings[0].startswith("/andon-long-")]
    assert len(evs) == 1
    ev = evs[0]
    assert ev.ret == -errno.ENAMETOOLONG
    assert ev.truncated
    assert ev.strings == (path[:4096],)
    assert src.stats()["truncated"] >= before + 1


def test_longest_legal_path_is_not_flagged_truncated(sensor, collect, run_py):
    src = sensor(["openat"])
    path = _long_path(4094, "andon-max-")  # 4094 bytes + NUL: below PATH_MAX

    # TRIGGER
    ch = run_py(f"out(sc('openat', AT_FDCWD, {path!r}, os.O_RDONLY, 0))")

    # ASSERT
    ev = one(collect(src, ch.pid), "openat", strings=(path,))
    assert ev.ret == ch.values()[0] == -errno.ENOENT  # a legal path that does not exist
    assert not ev.truncated


def test_path_of_exactly_path_max_minus_one_is_not_flagged_truncated(sensor, collect, run_py):
    src = sensor(["openat"])
    path = _long_path(4095, "andon-max-")  # 4095 bytes + NUL == PATH_MAX: the longest legal path

    # TRIGGER
    ch = run_py(f"out(sc('openat', AT_FDCWD, {path!r}, os.O_RDONLY, 0))")

    # ASSERT: the whole string arrived, so nothing was cut
    ev = one(collect(src, ch.pid), "openat", strings=(path,))
    assert ev.ret == ch.values()[0] == -errno.ENOENT  # legal (the kernel did not say ENAMETOOLONG)
    assert not ev.truncated


IA32_OPEN_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
	/* int $0x80 takes 32-bit pointers: put the path below 4 GiB */
	char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	strcpy(p, argv[1]);
	long ret;
	/* ia32 open is 5, which is fstat in the x86_64 table */
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(5), "b"((unsigned)(unsigned long)p), "c"(0), "d"(0) : "memory");
	printf("%ld\n", ret);
	return 0;
}
"""


def test_ia32_syscall_from_a_64bit_process_is_seen(sensor, collect, tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the int $0x80 helper")
    (tmp_path / "ia32.c").write_text(IA32_OPEN_C)
    exe = tmp_path / "ia32"
    subprocess.run([cc, "-O1", "-o", str(exe), str(tmp_path / "ia32.c")], check=True, capture_output=True)
    src = sensor(["file"])
    target = str(tmp_path / "ia32.c")

    # TRIGGER
    p = subprocess.Popen([str(exe), target], stdout=subprocess.PIPE, text=True)
    fd = int(p.communicate(timeout=10)[0])
    if fd == -errno.ENOSYS:
        pytest.skip("this kernel has no ia32 emulation")
    assert fd >= 3

    # ASSERT: reported as the x86_64 open it is equivalent to, marked as an i386 call
    evs = collect(src, p.pid)
    opens = [e for e in evs if e.type == EventType.SYSCALL and target in e.strings]
    assert len(opens) == 1
    ev = opens[0]
    assert ev.name == "open" and ev.ret == fd
    assert ev.flags & F_IA32
    assert ev.args[1] & 3 == os.O_RDONLY
