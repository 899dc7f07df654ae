"""Falco's fields over synthetic events run through an offline Tracker: each expected value
is what libsinsp (and the container plugin) give for the same event and state."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from andon.app.enrich import Context, Tracker
from andon.errors import FieldArgError, RuleError, UnknownFieldError
from andon.events.schema import AF_INET, AF_UNIX, EXE_LOWER_LAYER, EXE_WRITABLE, Event, EventType, ExecInfo, Sock
from andon.events.syscalls import BY_NAME
from andon.rules.fields import FIELDS, json_value, render
from andon.rules.types import FieldType, Multi
from andon.state.container import ContainerInfo
from andon.state.users import UserDb

SEC = 1_000_000_000
BOOT = 1_700_000_000 * SEC  # wall clock at boot
CID = "4ce3e5cebfe3" + "0123456789abcdef" * 3 + "abcd"
AT_FDCWD = 2**64 - 100
O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_CLOEXEC, O_DIRECTORY = 0o1, 0o2, 0o100, 0o1000, 0o2000000, 0o200000


class Stream:
    """A Tracker fed with synthetic events; ``get(field, ev)`` evaluates on the last context."""

    def __init__(self, etc: Path | None = None) -> None:
        self.tr = Tracker(boot_offset=BOOT, offline=True)
        if etc is not None:
            self.tr.users = UserDb(etc=str(etc))
        self.now = BOOT + 100 * SEC
        self.ctx: Context | None = None
        self.ev: Event | None = None

    def feed(self, ev: Event) -> Event:
        self.ctx = self.tr(ev)
        self.ev = ev
        return ev

    def tick(self) -> int:
        self.now += 1000
        return self.now

    def exec(self, pid: int, argv: list[str], *, ppid: int, comm: str | None = None, sid: int | None = None,
             cwd: str = "/", uid: int = 0, gid: int = 0, cgroup2: str = "", vpid: int | None = None,
             pidns: int = 4026531836, caps: int = 0, flags: int = 0, loginuid: int = 0xFFFFFFFF,
             exepath: str | None = None, tty: int = 0, start: int | None = None) -> Event:  # fmt: skip
        x = ExecInfo(
            cap_effective=caps, cap_permitted=caps, start_time=start if start is not None else pid * SEC,
            exe_ctime=BOOT + 5 * SEC, exe_mtime=BOOT + 4 * SEC, ppid=ppid, ruid=uid, rgid=gid, loginuid=loginuid,
            tty=tty, sid=sid if sid is not None else pid, vpid=pid if vpid is None else vpid, pidns=pidns, mntns=1,
            netns=1, exe_flags=flags, exepath=exepath or argv[0], filename=argv[0], cwd=cwd, cgroup="",
            cgroup2=cgroup2, argv=argv,
        )  # fmt: skip
        name = comm or os.path.basename(argv[0])[:15]
        ev = Event(self.tick(), EventType.EXEC, 0, pid, pid, uid, gid, 77, 0, (pid, 0, 0, 0, 0, 0), name, exec=x)
        return self.feed(ev)

    def fork(self, parent: int, child: int) -> Event:
        ev = Event(self.tick(), EventType.FORK, 0, parent, parent, 0, 0, 77, 0, (child, child, child * SEC, 0, 0, 0),
                   "x")  # fmt: skip
        return self.feed(ev)

    def sc(self, name: str, pid: int, ret: int, *args: int, strings: tuple[str, ...] = (),
           sock: Sock | None = None) -> Event:  # fmt: skip
        a = tuple(args) + (0,) * (6 - len(args))
        ev = Event(self.tick(), EventType.SYSCALL, BY_NAME[name].nr, pid, pid, 0, 0, 77, ret, a, "x",
                   strings=strings, sock=sock)  # fmt: skip
        return self.feed(ev)

    def get(self, name: str, arg: str | None = None) -> object:
        ex = FIELDS.lookup(name, arg)
        return ex(self.ev, self.ctx)


def shell_tree(s: Stream) -> None:
    """systemd(1) -> sshd(100) -> bash(200, session leader) -> sh(300) -> curl(400)."""
    s.exec(1, ["/sbin/init", "splash"], ppid=0, comm="systemd", exepath="/usr/lib/systemd/systemd", sid=1)
    s.fork(1, 100)
    s.exec(100, ["sshd:", "alice", "[priv]"], ppid=1, comm="sshd", exepath="/usr/sbin/sshd", sid=100)
    s.fork(100, 200)
    s.exec(200, ["-bash"], ppid=100, comm="bash", exepath="/usr/bin/bash", sid=200, cwd="/home/alice", tty=34816)
    s.fork(200, 300)
    s.exec(300, ["/bin/sh", "-c", "curl -s x"], ppid=200, comm="sh", exepath="/usr/bin/dash", sid=200,
           cwd="/home/alice")  # fmt: skip
    s.fork(300, 400)


@pytest.fixture
def s() -> Stream:
    st = Stream()
    shell_tree(st)
    return st


# -- proc.* ---------------------------------------------------------------------------------
def test_exec_and_ancestry(s: Stream):
    s.exec(400, ["curl", "-s", "http://x"], ppid=300, exepath="/usr/bin/curl", sid=200, cwd="/home/alice",
           tty=34816)  # fmt: skip
    assert s.get("evt.type") == "execve"
    assert s.get("evt.dir") == "<"
    assert s.get("evt.res") == "SUCCESS" and s.get("evt.rawres") == 0 and s.get("evt.failed") is False
    assert s.get("proc.name") == "curl"
    assert s.get("proc.exe") == "curl"
    assert s.get("proc.exepath") == "/usr/bin/curl"
    assert s.get("proc.args") == "-s http://x"
    assert s.get("proc.args", "1") == "http://x"
    assert s.get("proc.args", "5") == ""
    assert s.get("proc.cmdline") == "curl -s http://x"
    assert s.get("proc.cwd") == "/home/alice/"
    assert s.get("proc.pid") == 400 and s.get("proc.ppid") == 300 and s.get("proc.vpid") == 400
    assert s.get("proc.tty") == 34816
    assert s.get("proc.pname") == "sh"
    assert s.get("proc.pexe") == "/bin/sh"
    assert s.get("proc.pexepath") == "/usr/bin/dash"
    assert s.get("proc.pcmdline") == "sh -c curl -s x"
    assert s.get("proc.aname", "0") == "curl"
    assert s.get("proc.aname", "1") == "sh"
    assert s.get("proc.aname", "2") == "bash"
    assert s.get("proc.aname", "3") == "sshd"
    assert s.get("proc.aname", "4") == "systemd"
    assert s.get("proc.aname", "5") is None
    assert FIELDS.lookup("proc.aname[2]")(s.ev, s.ctx) == "bash"
    assert s.get("proc.apid", "2") == 200
    assert s.get("proc.aexepath", "3") == "/usr/sbin/sshd"
    assert s.get("proc.acmdline", "3") == "sshd alice [priv]"  # proc.name + argv[1:]
    assert s.get("proc.aexe", "1") == "/bin/sh"
    anames = s.get("proc.aname")
    assert isinstance(anames, Multi) and anames == ("sh", "bash", "sshd", "systemd")
    assert render(anames, FieldType.CHARBUF) == "sh bash sshd systemd"
    assert s.get("proc.apid") == (300, 200, 100, 1)
    assert s.get("proc.sid") == 200 and s.get("proc.sname") == "bash"
    assert s.get("proc.is_sid_leader") is False
    assert s.get("proc.loginshellid") == 200  # the oldest *sh among self and ancestors
    assert s.get("thread.tid") == 400 and s.get("thread.ismain") is True
    # started at 400 s after boot (the exec's start_time), event 100 s + a few us after boot
    assert s.get("proc.pid.ts") == BOOT + 400 * SEC
    assert s.get("proc.duration") == s.ev.ts - (BOOT + 400 * SEC)
    assert s.get("proc.exe_ino.ctime") == BOOT + 5 * SEC
    assert s.get("proc.exe_ino.mtime") == BOOT + 4 * SEC
    assert s.get("proc.exe_ino.ctime_duration_proc_start") == 395 * SEC
    assert s.get("proc.exe_ino") is None
    assert s.get("proc.pidns_init_start_ts") == BOOT  # host: boot time
    assert s.get("evt.arg.exe") == "curl"
    assert s.get("evt.arg.args") == "-s http://x"
    assert s.get("evt.arg.ptid") == "300"
    assert s.get("evt.arg", "0") == "0"
    assert s.get("evt.rawarg.ptid") == 300


def test_exe_flags_and_caps(s: Stream):
    caps = (1 << 0) | (1 << 1) | (1 << 21) | (1 << 39)
    s.exec(400, ["/tmp/x"], ppid=300, caps=caps, flags=EXE_WRITABLE | EXE_LOWER_LAYER)
    assert s.get("thread.cap_effective") == "CAP_CHOWN CAP_DAC_OVERRIDE CAP_SYS_ADMIN CAP_BPF"
    assert s.get("thread.cap_permitted") == "CAP_CHOWN CAP_DAC_OVERRIDE CAP_SYS_ADMIN CAP_BPF"
    assert s.get("evt.arg.flags") == "EXE_WRITABLE|EXE_LOWER_LAYER"
    assert s.get("evt.rawarg.flags") == EXE_WRITABLE | EXE_LOWER_LAYER
    assert s.get("proc.is_exe_writable") is True
    assert s.get("proc.is_exe_lower_layer") is True
    assert s.get("proc.is_exe_upper_layer") is False
    assert s.get("proc.is_exe_from_memfd") is False
    s.exec(400, ["/tmp/y"], ppid=300, caps=0)
    assert s.get("thread.cap_effective") == ""
    assert s.get("evt.arg.flags") == "0"


# -- open -------------------------------------------------------------------------------------
def test_openat_success_fields(s: Stream):
    s.exec(400, ["vi"], ppid=300, cwd="/home/alice")
    flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
    s.sc("openat", 400, 3, AT_FDCWD, 0, flags, 0o644, strings=("notes/../.bashrc",))
    assert s.get("evt.type") == "openat"
    assert s.get("evt.is_open_read") is False
    assert s.get("evt.is_open_write") is True
    assert s.get("evt.is_open_exec") is False
    assert s.get("evt.arg.flags") == "O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC"
    assert s.get("evt.rawarg.flags") == flags
    assert s.get("evt.arg.mode") == "0644"
    assert s.get("evt.arg.dirfd") == "AT_FDCWD"
    assert s.get("evt.arg.name") == "/home/alice/.bashrc"  # made absolute, as Falco's resolved form
    assert s.get("evt.rawarg.name") == "notes/../.bashrc"
    assert s.get("evt.arg.fd") == "<f>/home/alice/.bashrc"
    assert s.get("evt.arg", "0") == "<f>/home/alice/.bashrc"
    assert s.get("evt.arg.dev") is None  # not collected
    assert s.get("evt.res") == "SUCCESS" and s.get("evt.rawres") == 3 and s.get("evt.failed") is False
    assert s.get("fd.num") == 3
    assert s.get("fd.name") == "/home/alice/.bashrc"
    assert s.get("fd.nameraw") == "notes/../.bashrc"
    assert s.get("fd.directory") == "/home/alice"
    assert s.get("fd.filename") == ".bashrc"
    assert s.get("fd.type") == "file" and s.get("fd.typechar") == "f"
    assert s.get("fd.sip") is None and s.get("fd.l4proto") == "<NA>" and s.get("fd.sockfamily") is None
    assert s.get("fd.is_server") is False
    assert s.get("fd.containername") == "host:/home/alice/.bashrc"
    assert s.get("evt.args") == ("fd=<f>/home/alice/.bashrc dirfd=AT_FDCWD name=/home/alice/.bashrc "
                                 "flags=O_TRUNC|O_CREAT|O_WRONLY|O_CLOEXEC mode=0644 dev=<NA> ino=<NA>")  # fmt: skip


def test_open_read_flags_and_directory(s: Stream):
    s.exec(400, ["ls"], ppid=300, cwd="/home/alice")
    s.sc("open", 400, 4, 0, O_RDWR, 0, strings=("/etc/shadow",))
    assert s.get("evt.is_open_read") is True and s.get("evt.is_open_write") is True
    assert s.get("evt.arg.flags") == "O_RDWR"
    s.sc("openat", 400, 5, AT_FDCWD, 0, O_DIRECTORY | O_CLOEXEC, 0, strings=("/etc",))
    assert s.get("evt.is_open_read") is True and s.get("evt.is_open_write") is False
    # libsinsp's open_flags_to_scap tests O_TMPFILE with '&': O_DIRECTORY alone sets it too
    assert s.get("evt.arg.flags") == "O_DIRECTORY|O_RDONLY|O_CLOEXEC|O_TMPFILE"
    assert s.get("fd.type") == "directory" and s.get("fd.typechar") == "d"
    assert s.get("fd.directory") == "/etc"
    assert s.get("fd.filename") is None  # only for files
    s.sc("creat", 400, 6, 0, 0o755, strings=("/tmp/run.sh",))
    assert s.get("evt.is_open_write") is False  # creat is not an "open" for libsinsp
    assert s.get("evt.is_open_exec") is True


def test_open_failure_fields(s: Stream):
    s.exec(400, ["cat"], ppid=300, cwd="/srv")
    s.sc("openat", 400, -2, AT_FDCWD, 0, 0, 0, strings=("missing.txt",))
    assert s.get("evt.res") == "ENOENT"
    assert s.get("evt.rawres") == -2
    assert s.get("evt.failed") is True
    assert s.get("evt.arg.fd") == "ENOENT"
    assert s.get("fd.num") == -1
    assert s.get("fd.name") == "/srv/missing.txt"  # from the event: no fd was made
    assert s.get("fd.nameraw") == "missing.txt"
    assert s.get("fd.directory") == "/srv"
    assert s.get("fd.typechar") == "f"
    assert s.get("fd.type") is None and s.get("fd.filename") is None
    s.sc("open", 400, -13, 0, 0, 0, strings=("/root/x",))
    assert s.get("evt.res") == "EACCES"
    assert s.get("fd.typechar") == "o"  # libsinsp's extract_typechar forgets open_x


def test_events_without_fd_have_no_fd_fields(s: Stream):
    s.exec(400, ["rm"], ppid=300, cwd="/tmp")
    for name in ("fd.num", "fd.name", "fd.type", "fd.typechar", "fd.directory", "fd.sip", "fd.ip", "fd.net"):
        assert s.get(name) is None, name
    s.sc("unlink", 400, 0, 0, strings=("a",))
    assert s.get("fd.name") is None and s.get("fd.num") is None
    assert s.get("evt.arg.path") == "/tmp/a"
    # unlinkat uses its dirfd: AT_FDCWD is not an fd of the table, fd.name is empty
    s.sc("unlinkat", 400, 0, AT_FDCWD, 0, 0, strings=("b",))
    assert s.get("fd.num") == -100
    assert s.get("fd.name") == ""
    assert s.get("evt.arg.name") == "/tmp/b"


# -- sockets ----------------------------------------------------------------------------------
def tcp(lip: str, lport: int, rip: str, rport: int, from_arg: bool = True) -> Sock:
    return Sock(AF_INET, 1, 6, lport, rport, lip, rip, from_arg)


def test_socket_connect_fields(s: Stream):
    s.exec(400, ["curl"], ppid=300)
    s.sc("socket", 400, 3, AF_INET, 1 | O_CLOEXEC, 6, sock=tcp("0.0.0.0", 0, "0.0.0.0", 0, False))
    assert s.get("evt.arg.domain") == "AF_INET"
    assert s.get("evt.rawarg.domain") == AF_INET
    assert s.get("fd.num") == 3 and s.get("fd.type") == "ipv4" and s.get("fd.typechar") == "4"
    assert s.get("fd.l4proto") == "tcp"
    assert s.get("fd.name") == ""
    assert s.get("fd.sip") is None and s.get("fd.ip") is None  # no role yet
    s.sc("connect", 400, 0, 3, 0, 16, sock=tcp("10.0.0.5", 40000, "93.184.216.34", 443))
    assert s.get("fd.num") == 3
    assert s.get("fd.name") == "10.0.0.5:40000->93.184.216.34:443"
    assert s.get("fd.cip") == "10.0.0.5" and s.get("fd.cport") == 40000
    assert s.get("fd.sip") == "93.184.216.34" and s.get("fd.sport") == 443
    assert s.get("fd.lip") == "10.0.0.5" and s.get("fd.lport") == 40000
    assert s.get("fd.rip") == "93.184.216.34" and s.get("fd.rport") == 443
    assert s.get("fd.l4proto") == "tcp" and s.get("fd.sockfamily") == "ip"
    assert s.get("fd.connected") is True and s.get("fd.is_server") is False
    assert s.get("fd.ip") == Multi(("10.0.0.5", "93.184.216.34"))
    assert s.get("fd.port") == Multi((40000, 443))
    net = s.get("fd.net")
    assert isinstance(net, Multi) and set(net) == {"10.0.0.5", "93.184.216.34"}
    assert s.get("fd.snet") == "93.184.216.34" and s.get("fd.cnet") == "10.0.0.5"
    assert s.get("fd.sip.name") is None  # no names learnt: never asks the network
    assert s.get("evt.arg.fd") == "<4t>10.0.0.5:40000->93.184.216.34:443"
    assert s.get("evt.arg.tuple") == "10.0.0.5:40000->93.184.216.34:443"
    assert s.get("evt.res") == "SUCCESS"
    assert render(s.get("fd.sport"), FieldType.PORT) == "443"
    assert json_value(s.get("fd.sport"), FieldType.PORT) == 443


def test_connect_on_unknown_socket_falls_back_to_the_table(s: Stream):
    s.exec(400, ["app"], ppid=300)
    s.sc("connect", 400, 0, 7, 0, 16, sock=tcp("10.0.0.5", 40001, "10.0.0.9", 5432))
    assert s.get("fd.num") == 7
    assert s.get("fd.sip") == "10.0.0.9" and s.get("fd.sport") == 5432


def test_loopback_lip_is_the_client_on_both_ends(s: Stream):
    s.exec(400, ["srv"], ppid=300)
    s.sc("socket", 400, 3, AF_INET, 1, 6)
    s.sc("bind", 400, 0, 3, 0, 16, sock=tcp("0.0.0.0", 8080, "0.0.0.0", 0))
    assert s.get("fd.is_server") is True
    assert s.get("fd.sip") == "0.0.0.0" and s.get("fd.sport") == 8080
    assert s.get("fd.ip") == Multi(("0.0.0.0",)) and s.get("fd.port") == Multi((8080,))
    assert s.get("fd.cip") is None and s.get("fd.lip") is None  # a server socket has no client side
    s.sc("listen", 400, 0, 3, 128, sock=tcp("0.0.0.0", 8080, "0.0.0.0", 0, False))
    s.sc("accept4", 400, 4, 3, 0, 0, 0, sock=tcp("127.0.0.1", 8080, "127.0.0.1", 51000, False))
    assert s.get("fd.num") == 4
    assert s.get("fd.name") == "127.0.0.1:51000->127.0.0.1:8080"
    assert s.get("fd.cport") == 51000 and s.get("fd.sport") == 8080
    assert s.get("fd.is_server") is True
    # libsinsp: the client address is local, so "local" is the client side, even here
    assert s.get("fd.lport") == 51000 and s.get("fd.rport") == 8080
    s.sc("accept4", 400, 5, 3, 0, 0, 0, sock=tcp("10.0.0.5", 8080, "203.0.113.7", 51001, False))
    assert s.get("fd.lip") == "10.0.0.5" and s.get("fd.rip") == "203.0.113.7"
    assert s.get("fd.lport") == 8080 and s.get("fd.rport") == 51001
    assert s.get("fd.is_server") is True


def test_udp_sendto(s: Stream):
    s.exec(400, ["dig"], ppid=300)
    s.sc("socket", 400, 3, AF_INET, 2, 17)
    assert s.get("fd.l4proto") == "udp"
    udp = Sock(AF_INET, 2, 17, 53000, 53, "10.0.0.5", "8.8.8.8", True)
    s.sc("sendto", 400, 30, 3, 0, 30, 0, 0, 16, sock=udp)
    assert s.get("fd.name") == "10.0.0.5:53000->8.8.8.8:53"
    assert s.get("fd.sip") == "8.8.8.8" and s.get("fd.sport") == 53
    assert s.get("fd.l4proto") == "udp"
    assert s.get("fd.connected") is False
    assert s.get("fd.name_changed") is True
    assert s.get("evt.arg.size") == "30"
    assert s.get("evt.arg.tuple") == "10.0.0.5:53000->8.8.8.8:53"


def test_unix_socket_family(s: Stream):
    s.exec(400, ["docker"], ppid=300)
    s.sc("socket", 400, 3, AF_UNIX, 1, 0)
    assert s.get("evt.arg.domain") == "AF_LOCAL|AF_UNIX"  # both names of the enum value
    assert s.get("fd.typechar") == "u"
    s.sc("connect", 400, 0, 3, 0, 110, sock=Sock(AF_UNIX, 1, 0, 0, 0, "", "", True, "/run/docker.sock"))
    assert s.get("fd.name") == "/run/docker.sock"
    assert s.get("fd.sockfamily") == "unix"
    assert s.get("fd.sip") is None and s.get("fd.ip") is None and s.get("fd.l4proto") == "<NA>"


def test_dup_event_fd_is_the_new_fd(s: Stream):
    s.exec(400, ["sh"], ppid=300, cwd="/")
    s.sc("openat", 400, 3, AT_FDCWD, 0, O_WRONLY, 0, strings=("/tmp/log",))
    s.sc("dup2", 400, 1, 3, 1)
    assert s.get("fd.num") == 1 and s.get("fd.name") == "/tmp/log"
    assert s.get("evt.arg.oldfd") == "<f>/tmp/log"
    s.sc("dup2", 400, -9, 9, 1)
    assert s.get("fd.num") == 9 and s.get("fd.name") == ""  # failed: the old fd, unknown
    s.sc("close", 400, 0, 3)
    assert s.get("fd.num") == 3 and s.get("fd.name") == "/tmp/log"  # looked up before the close


# -- arguments of other calls -------------------------------------------------------------------
def test_symlinkat_and_linkat_args(s: Stream):
    s.exec(400, ["ln"], ppid=300, cwd="/home/alice")
    s.sc("symlinkat", 400, 0, 0, AT_FDCWD, 0, strings=("/etc/shadow", "link"))
    assert s.get("evt.arg.target") == "/etc/shadow"
    assert s.get("evt.arg.linkpath") == "/home/alice/link"
    assert s.get("evt.arg.linkdirfd") == "AT_FDCWD"
    assert s.get("evt.arg", "1") == "/etc/shadow"
    assert s.get("fd.num") == -100  # symlinkat uses its linkdirfd
    s.sc("symlink", 400, 0, 0, 0, strings=("../etc/passwd", "/tmp/p"))
    assert s.get("evt.arg.target") == "../etc/passwd"  # a CHARBUF: never made absolute
    assert s.get("evt.arg.linkpath") == "/tmp/p"
    assert s.get("fd.name") is None
    s.sc("openat", 400, 5, AT_FDCWD, 0, O_DIRECTORY, 0, strings=("/etc",))
    s.sc("linkat", 400, 0, 5, 0, AT_FDCWD, 0, 0x400, strings=("shadow", "s2"))
    assert s.get("evt.arg.olddir") == "<d>/etc"
    assert s.get("evt.arg.oldpath") == "/etc/shadow"
    assert s.get("evt.arg.newpath") == "/home/alice/s2"
    assert s.get("evt.rawarg.oldpath") == "shadow"
    assert s.get("fd.name") is None  # linkat is not an fd event for libsinsp
    s.sc("link", 400, -17, 0, 0, strings=("/a", "/b"))
    assert s.get("evt.arg.oldpath") == "/a" and s.get("evt.arg.newpath") == "/b"
    assert s.get("evt.res") == "EEXIST" and s.get("evt.arg.res") == "EEXIST"


def test_ptrace_and_chmod_args(s: Stream):
    s.exec(400, ["gdb"], ppid=300)
    s.sc("ptrace", 400, 0, 16, 1234, 0, 0)
    assert s.get("evt.arg.request") == "PTRACE_ATTACH"
    assert s.get("evt.rawarg.request") == 16
    assert s.get("evt.arg.pid") == "1234"
    s.sc("ptrace", 400, 0, 0x4206, 99)
    assert s.get("evt.arg.request") == "PTRACE_SEIZE"
    s.sc("chmod", 400, 0, 0, 0o4755, strings=("/tmp/x",))
    assert s.get("evt.arg.mode") == "S_IXOTH|S_IROTH|S_IXGRP|S_IRGRP|S_IXUSR|S_IWUSR|S_IRUSR|S_ISUID"
    assert s.get("evt.arg.filename") == "/tmp/x"
    assert s.get("evt.arg.flags") is None  # chmod has no flags parameter


def test_clone_and_procexit(s: Stream):
    s.fork(300, 500)
    assert s.get("evt.type") == "clone"
    assert s.get("evt.rawres") == 500 and s.get("evt.res") == "SUCCESS"
    ev = Event(s.tick(), EventType.EXIT, 0, 500, 500, 0, 0, 77, 9, (1, 0, 0, 0, 0, 0), "sh")
    s.feed(ev)
    assert s.get("evt.type") == "procexit"
    assert s.get("evt.res") is None and s.get("evt.rawres") is None and s.get("evt.failed") is None
    assert s.get("evt.arg.sig") == "9"


# -- containers -------------------------------------------------------------------------------
def test_container_fields_for_a_host_process(s: Stream):
    s.exec(400, ["curl"], ppid=300)
    assert s.get("container.id") == "host"
    assert s.get("container.full_id") == "host"
    assert s.get("container.name") == "host"
    assert s.get("container.type") == "host"
    assert s.get("container.image") == ""
    assert s.get("container.image.repository") == ""
    assert s.get("container.image.tag") == ""
    assert s.get("container.privileged") is False
    assert s.get("container.start_ts") == BOOT
    assert s.get("k8s.ns.name") is None and s.get("k8s.pod.name") is None


def test_container_fields_for_a_container_process(s: Stream):
    cg = f"/machine.slice/libpod-{CID}.scope/container"
    # conmon (host) -> container init (vpid 1) -> cat (vpid 2)
    s.fork(1, 600)
    s.exec(600, ["/usr/bin/conmon"], ppid=1)
    s.fork(600, 601)
    s.exec(601, ["/bin/sh", "-c", "cat /etc/shadow"], ppid=600, comm="sh", cgroup2=cg, vpid=1, pidns=99, start=50 * SEC)
    s.fork(601, 602)
    s.exec(602, ["cat", "/etc/shadow"], ppid=601, cgroup2=cg, vpid=2, pidns=99, start=60 * SEC)
    assert s.get("container.id") == CID[:12]
    assert s.get("container.name") is None  # runtime has not answered: only id and start_ts
    assert s.get("container.image.repository") is None
    assert s.get("container.privileged") is None
    assert s.get("container.start_ts") == BOOT + 50 * SEC
    assert s.get("proc.pidns_init_start_ts") == BOOT + 50 * SEC
    assert s.get("proc.vpid") == 2 and s.get("thread.vtid") == 2
    s.tr.containers.add(ContainerInfo(CID, "podman", name="web", image="docker.io/library/nginx:1.27",
                                      image_repository="docker.io/library/nginx", image_tag="1.27",
                                      privileged=True, resolved=True,
                                      labels={"io.kubernetes.pod.namespace": "prod"}))  # fmt: skip
    assert s.get("container.name") == "web"
    assert s.get("container.full_id") == CID
    assert s.get("container.image") == "docker.io/library/nginx:1.27"
    assert s.get("container.image.repository") == "docker.io/library/nginx"
    assert s.get("container.image.tag") == "1.27"
    assert s.get("container.privileged") is True
    assert s.get("container.type") == "podman"
    assert s.get("k8s.ns.name") == "prod" and s.get("k8s.pod.name") is None


# -- users ------------------------------------------------------------------------------------
@pytest.fixture
def etc(tmp_path: Path) -> Path:
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/zsh\n")
    (tmp_path / "group").write_text("root:x:0:\nstaff:x:50:alice\n")
    return tmp_path


def test_user_and_group_names(etc: Path):
    s = Stream(etc)
    shell_tree(s)
    s.exec(400, ["id"], ppid=300, uid=1000, gid=50, loginuid=1000)
    assert s.get("user.uid") == 1000 and s.get("user.name") == "alice"
    assert s.get("user.homedir") == "/home/alice" and s.get("user.shell") == "/bin/zsh"
    assert s.get("user.loginuid") == 1000 and s.get("user.loginname") == "alice"
    assert s.get("group.gid") == 50 and s.get("group.name") == "staff"
    s.exec(400, ["id"], ppid=300, uid=4242, gid=4242)
    assert s.get("user.name") == "<NA>"  # libsinsp's string, not a missing value
    assert s.get("user.homedir") == "<NA>" and s.get("user.shell") == "<NA>"
    assert s.get("group.name") == "<NA>"
    assert s.get("user.loginuid") == -1 and s.get("user.loginname") == "<NA>"
    s.exec(400, ["id"], ppid=300, uid=0, gid=0)
    assert s.get("user.name") == "root" and s.get("user.homedir") == "/root"


def test_root_without_passwd_is_still_root(tmp_path: Path):
    s = Stream(tmp_path)  # no passwd, no group
    shell_tree(s)
    s.exec(400, ["id"], ppid=300, uid=0, gid=0)
    assert s.get("user.name") == "root" and s.get("group.name") == "root" and s.get("user.homedir") == "/root"
    assert s.get("user.shell") == "<NA>"


# -- missing process, times, evt.* ---------------------------------------------------------------
def test_no_process_means_na_but_thread_tid_answers(s: Stream):
    ev = Event(s.tick(), EventType.SYSCALL, BY_NAME["openat"].nr, 9999, 9998, 0, 0, 0, 3,
               (AT_FDCWD, 0, 0, 0, 0, 0), "ghost", strings=("/x",))  # fmt: skip
    ctx = Context(None, None, s.tr)
    for name in ("proc.name", "proc.pid", "proc.cmdline", "proc.pname", "user.name", "user.uid", "group.name",
                 "container.id", "container.name", "fd.name", "fd.num", "thread.cap_effective", "proc.aname"):
        assert FIELDS.lookup(name)(ev, ctx) is None, name
    assert FIELDS.lookup("thread.tid")(ev, ctx) == 9998
    assert FIELDS.lookup("evt.type")(ev, ctx) == "openat"
    assert render(None, FieldType.CHARBUF) == "<NA>"


def test_unknown_parent_is_na():
    s = Stream()
    s.exec(700, ["orphan"], ppid=12345)
    assert s.get("proc.ppid") is None and s.get("proc.pname") is None and s.get("proc.aname", "1") is None
    assert s.get("proc.aname") is None
    assert s.get("proc.sname") == "orphan"


def test_time_fields(s: Stream):
    s.exec(400, ["date"], ppid=300)
    ts = s.ev.ts
    lt = time.localtime(ts // SEC)
    assert s.get("evt.rawtime") == ts
    assert s.get("evt.rawtime.s") == ts // SEC and s.get("evt.rawtime.ns") == ts % SEC
    assert s.get("evt.time") == time.strftime("%H:%M:%S", lt) + f".{ts % SEC:09d}"
    assert s.get("evt.time.s") == time.strftime("%H:%M:%S", lt)
    assert s.get("evt.datetime") == time.strftime("%Y-%m-%d %H:%M:%S", lt) + f".{ts % SEC:09d}"
    assert s.get("evt.time.iso8601") == "2023-11-14T22:15:00.000009000+0000"  # boot + 100 s, 9 events
    assert s.get("evt.source") == "syscall"
    assert s.get("evt.hostname") == os.uname().nodename
    assert s.get("evt.num") == s.tr.nevents
    assert render(s.get("evt.rawtime"), FieldType.ABSTIME) == str(ts)


# -- registry ---------------------------------------------------------------------------------
def test_unknown_field_suggests():
    with pytest.raises(UnknownFieldError, match=r"proc\.nmae.*did you mean 'proc\.name'"):
        FIELDS.lookup("proc.nmae")
    with pytest.raises(UnknownFieldError, match="field classes are"):
        FIELDS.lookup("nope.thing")
    with pytest.raises(RuleError):
        FIELDS.lookup("fd.nmae")


def test_field_argument_errors():
    with pytest.raises(FieldArgError, match="takes no argument"):
        FIELDS.lookup("proc.name", "1")
    with pytest.raises(FieldArgError, match="needs an argument"):
        FIELDS.lookup("evt.arg")
    with pytest.raises(FieldArgError, match="number"):
        FIELDS.lookup("proc.aname", "x")
    with pytest.raises(FieldArgError, match=r"unknown event argument 'flgs'.*flags"):
        FIELDS.lookup("evt.arg.flgs")


def test_every_stable_field_is_known():
    import re

    from corpus import STABLE_FIELDS

    names = re.findall(r"^\| `([^`]+)`", STABLE_FIELDS.read_text(), re.M)
    assert len(names) == 64  # the table's rows (its heading says 65)
    for n in names:
        ex = FIELDS.lookup(n)
        assert ex.name == n


def test_extractor_shape_and_listing():
    ex = FIELDS.lookup("proc.aname", "2")
    assert (ex.name, ex.arg, ex.type, ex.text) == ("proc.aname", "2", FieldType.CHARBUF, "proc.aname[2]")
    ex = FIELDS.lookup("evt.arg.flags")
    assert (ex.name, ex.arg, ex.type) == ("evt.arg.flags", None, FieldType.CHARBUF)
    assert FIELDS.lookup("evt.rawarg.res").type is FieldType.INT64
    assert FIELDS.lookup("evt.rawarg.name").type is FieldType.CHARBUF
    assert FIELDS.lookup("fd.net").type is FieldType.IPNET
    names = FIELDS.names()
    assert names == sorted(names) and "fd.sip" in names and len(names) > 100
    info = FIELDS.info("fd.ip")
    assert info.filter_only and info.type is FieldType.IPADDR


def test_render_and_json_value():
    assert render(True, FieldType.BOOL) == "true" and render(False, FieldType.BOOL) == "false"
    assert render(-2, FieldType.INT64) == "-2"
    assert render("10.0.0.1", FieldType.IPADDR) == "10.0.0.1"
    assert render(Multi(), FieldType.IPADDR) == "<NA>"
    assert render(Multi(("a", "b")), FieldType.CHARBUF) == "a b"
    assert json_value(None, FieldType.CHARBUF) is None
    assert json_value(True, FieldType.BOOL) is True
    assert json_value(443, FieldType.PORT) == 443
    assert json_value(12, FieldType.ABSTIME) == 12
    assert json_value("x", FieldType.CHARBUF) == "x"
    assert json_value(Multi(("sh", "bash")), FieldType.CHARBUF) == "sh bash"
