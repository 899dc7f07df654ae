"""The fd table driven by synthetic syscall events: names, types, roles, dup/close semantics."""

from __future__ import annotations

import pytest

from andon.events.schema import AF_INET, AF_INET6, AF_UNIX, Event, EventType, ExecInfo, Sock
from andon.events.syscalls import BY_NAME
from andon.state.fd import O_CLOEXEC, O_DIRECTORY, FdInfo, FdTable, join, normalize
from andon.state.process import ProcessTable, StateSettings

PID = 4000
AT_FDCWD64 = 2**64 - 100
AT_FDCWD32 = 2**32 - 100
_ts = [1_000_000_000]


def sc(name: str, ret: int, *args: int, strings: tuple[str, ...] = (), sock: Sock | None = None,
       pid: int = PID) -> Event:  # fmt: skip
    _ts[0] += 1000
    a = tuple(args) + (0,) * (6 - len(args))
    nr = BY_NAME[name].nr
    return Event(_ts[0], EventType.SYSCALL, nr, pid, pid, 0, 0, 0, ret, a, "app", strings=strings, sock=sock)


def exec_ev(pid: int = PID, argv: tuple[str, ...] = ("/bin/app",), cwd: str = "/srv") -> Event:
    _ts[0] += 1000
    x = ExecInfo(0, 0, 1, 0, 0, 1, 0, 0, 0xFFFFFFFF, 0, pid, pid, 1, 1, 1, 0,
                 exepath=argv[0], filename=argv[0], cwd=cwd, argv=list(argv))  # fmt: skip
    return Event(_ts[0], EventType.EXEC, 0, pid, pid, 0, 0, 0, 0, (pid, 0, 0, 0, 0, 0), "app", exec=x)


def fork_ev(parent: int, child: int, tid: int | None = None) -> Event:
    _ts[0] += 1000
    return Event(_ts[0], EventType.FORK, 0, parent, parent, 0, 0, 0, 0, (tid or child, child, _ts[0], 0, 0, 0), "app")


@pytest.fixture
def table() -> ProcessTable:
    t = ProcessTable(StateSettings(proc_root=None))
    t.apply(exec_ev(cwd="/srv/app"))
    return t


def fd(t: ProcessTable, n: int, pid: int = PID) -> FdInfo:
    fi = t.fd_info(pid, n)
    assert fi is not None, f"fd {n} not tracked"
    return fi


# -- paths -------------------------------------------------------------------------------
def test_normalize_and_join_follow_falco():
    assert normalize("/a//b/./c/../d") == "/a/b/d"
    assert normalize("//etc/passwd") == "/etc/passwd"
    assert normalize("/../../etc") == "/etc"
    assert join("/srv/app", "../etc/x.conf") == "/srv/etc/x.conf"
    assert join("/", "tmp/x") == "/tmp/x"
    assert join("/srv/", "./a") == "/srv/a"


@pytest.mark.parametrize("cwd_fd", [AT_FDCWD64, AT_FDCWD32])
def test_openat_fdcwd_resolves_against_cwd(table, cwd_fd):
    table.apply(sc("openat", 5, cwd_fd, 0, 0o2, strings=("../etc/./app.conf",)))
    fi = fd(table, 5)
    assert fi.name == "/srv/etc/app.conf"
    assert fi.nameraw == "../etc/./app.conf"
    assert (fi.type, fi.typechar) == ("file", "f")
    assert fi.directory == "/srv/etc" and fi.filename == "app.conf"


def test_openat_relative_to_dirfd(table):
    table.apply(sc("openat", 3, AT_FDCWD64, 0, O_DIRECTORY | O_CLOEXEC, strings=("/var/lib/../log",)))
    d = fd(table, 3)
    assert (d.name, d.type, d.typechar) == ("/var/log", "directory", "d")
    table.apply(sc("openat", 4, 3, 0, 0, strings=("nginx/access.log",)))
    assert fd(table, 4).name == "/var/log/nginx/access.log"
    # an absolute path ignores dirfd
    table.apply(sc("openat", 6, 3, 0, 0, strings=("/etc/shadow",)))
    assert fd(table, 6).name == "/etc/shadow"


def test_openat_unknown_dirfd_is_marked(table):
    table.apply(sc("openat", 7, 99, 0, 0, strings=("x",)))
    assert fd(table, 7).name == "<UNKNOWN>/x"


def test_open_creat_openat2_and_failure(table):
    table.apply(sc("open", 3, 0, 0o100, strings=("data.txt",)))
    table.apply(sc("creat", 4, 0, 0o644, strings=("/tmp/new",)))
    # openat2: flags come from struct open_how, put in args[2] by the kernel side
    table.apply(sc("openat2", 5, AT_FDCWD64, 0, O_DIRECTORY, 0, 0, strings=("/etc",)))
    table.apply(sc("openat", -2, AT_FDCWD64, 0, 0, strings=("/missing",)))
    assert fd(table, 3).name == "/srv/app/data.txt"
    assert fd(table, 4).name == "/tmp/new"
    assert fd(table, 5).type == "directory"
    assert table.fd_info(PID, -2) is None
    assert len(table.get(PID).fds) == 3


def test_memfd_create_type_and_cloexec(table):
    table.apply(sc("memfd_create", 3, 0, 1, strings=("payload",)))
    fi = fd(table, 3)
    assert (fi.type, fi.typechar, fi.name, fi.cloexec) == ("memfd", "m", "payload", True)


# -- sockets -------------------------------------------------------------------------------
def tcp4(sport: int, dport: int, saddr: str = "10.0.0.5", daddr: str = "93.184.216.34", from_arg: bool = True) -> Sock:
    return Sock(AF_INET, 1, 6, sport, dport, saddr, daddr, from_arg)


def test_socket_connect_client_tuple(table):
    table.apply(sc("socket", 3, AF_INET, 1 | O_CLOEXEC, 0, sock=Sock(AF_INET, 1, 6, 0, 0, "0.0.0.0", "0.0.0.0", False)))
    fi = fd(table, 3)
    assert (fi.type, fi.typechar, fi.l4proto, fi.name, fi.cloexec) == ("ipv4", "4", "tcp", "", True)
    table.apply(sc("connect", 0, 3, 0, 16, sock=tcp4(40000, 443)))
    fi = fd(table, 3)
    assert fi.name == "10.0.0.5:40000->93.184.216.34:443"
    assert (fi.role, fi.connected) == ("client", True)
    assert (fi.cip, fi.cport, fi.sip, fi.sport) == ("10.0.0.5", 40000, "93.184.216.34", 443)
    assert (fi.lip, fi.lport, fi.rip, fi.rport) == ("10.0.0.5", 40000, "93.184.216.34", 443)


def test_nonblocking_connect_counts_and_refused_does_not(table):
    table.apply(sc("socket", 3, AF_INET, 1, 6))
    table.apply(sc("connect", -115, 3, 0, 16, sock=tcp4(40001, 80)))  # EINPROGRESS
    assert fd(table, 3).name.endswith("->93.184.216.34:80")
    table.apply(sc("socket", 4, AF_INET, 1, 6))
    table.apply(sc("connect", -111, 4, 0, 16, sock=tcp4(0, 81)))  # ECONNREFUSED
    assert fd(table, 4).name == "" and not fd(table, 4).connected


def test_connect_on_socket_opened_before_we_looked(table):
    table.apply(sc("connect", 0, 9, 0, 16, sock=tcp4(40002, 5432)))
    fi = fd(table, 9)
    assert (fi.type, fi.l4proto, fi.role) == ("ipv4", "tcp", "client")


def test_ipv6_and_mapped_ipv4(table):
    table.apply(sc("socket", 3, AF_INET6, 1, 6))
    table.apply(sc("connect", 0, 3, 0, 28, sock=Sock(AF_INET6, 1, 6, 50000, 8080, "::1", "::1", True)))
    fi = fd(table, 3)
    assert (fi.type, fi.typechar, fi.name) == ("ipv6", "6", "::1:50000->::1:8080")
    table.apply(sc("socket", 4, AF_INET6, 1, 6))
    mapped = Sock(AF_INET6, 1, 6, 50001, 80, "::ffff:10.0.0.5", "::ffff:1.2.3.4", True)
    table.apply(sc("connect", 0, 4, 0, 28, sock=mapped))
    fi = fd(table, 4)
    assert (fi.type, fi.name) == ("ipv4", "10.0.0.5:50001->1.2.3.4:80")


def test_bind_listen_accept_server_tuple(table):
    table.apply(sc("socket", 3, AF_INET, 1, 0))
    table.apply(sc("bind", 0, 3, 0, 16, sock=Sock(AF_INET, 1, 6, 8080, 0, "0.0.0.0", "0.0.0.0", True)))
    table.apply(sc("listen", 0, 3, 128, sock=Sock(AF_INET, 1, 6, 8080, 0, "0.0.0.0", "0.0.0.0", False)))
    lst = fd(table, 3)
    assert (lst.name, lst.role, lst.listening, lst.sport) == ("0.0.0.0:8080", "server", True, 8080)
    # accept4's tuple is the new fd's: local = server side, remote = client
    acc = Sock(AF_INET, 1, 6, 8080, 51234, "10.0.0.5", "10.0.0.9", False)
    table.apply(sc("accept4", 4, 3, 0, 0, O_CLOEXEC, sock=acc))
    fi = fd(table, 4)
    assert fi.name == "10.0.0.9:51234->10.0.0.5:8080"
    assert (fi.role, fi.connected, fi.cloexec, fi.l4proto) == ("server", True, True, "tcp")
    assert (fi.lip, fi.lport, fi.rip, fi.rport) == ("10.0.0.5", 8080, "10.0.0.9", 51234)


def test_dup2_socket_onto_stdout(table):
    table.apply(sc("openat", 1, AT_FDCWD64, 0, 1, strings=("/dev/pts/0",)))
    table.apply(sc("socket", 3, AF_INET, 1 | O_CLOEXEC, 6))
    table.apply(sc("connect", 0, 3, 0, 16, sock=tcp4(40010, 4444, daddr="6.6.6.6")))
    table.apply(sc("dup2", 1, 3, 1))
    out = fd(table, 1)
    assert (out.type, out.name, out.role) == ("ipv4", "10.0.0.5:40010->6.6.6.6:4444", "client")
    assert out.num == 1 and not out.cloexec  # dup clears close-on-exec
    assert fd(table, 3).cloexec
    # the two fds are one socket: the kernel's view and ours agree after exec
    table.apply(exec_ev(argv=("/bin/sh", "-i")))
    assert table.fd_info(PID, 3) is None
    assert fd(table, 1).name == "10.0.0.5:40010->6.6.6.6:4444"


def test_unix_connect_and_socketpair(table):
    table.apply(sc("socket", 3, AF_UNIX, 1, 0))
    table.apply(sc("connect", 0, 3, 0, 110, sock=Sock(AF_UNIX, 1, 0, 0, 0, "", "", True, "/run/docker.sock")))
    fi = fd(table, 3)
    assert (fi.type, fi.typechar, fi.name, fi.role) == ("unix", "u", "/run/docker.sock", "client")
    table.apply(sc("socketpair", 0, AF_UNIX, 1 | O_CLOEXEC, 0, 0, 5, 6))
    assert fd(table, 5).type == fd(table, 6).type == "unix"
    assert fd(table, 5).cloexec


def test_udp_sendto_names_unconnected_socket(table):
    table.apply(sc("socket", 3, AF_INET, 2, 0))
    assert fd(table, 3).l4proto == "udp"
    table.apply(sc("sendto", 30, 3, 0, 30, 0, 0, 16, sock=Sock(AF_INET, 2, 17, 53000, 53, "10.0.0.5", "8.8.8.8", True)))
    assert fd(table, 3).name == "10.0.0.5:53000->8.8.8.8:53"


# -- dup, fcntl, close, close_range --------------------------------------------------------
def test_fcntl_dupfd_and_setfd(table):
    table.apply(sc("openat", 3, AT_FDCWD64, 0, 0, strings=("/etc/hosts",)))
    table.apply(sc("fcntl", 10, 3, 1030, 10))  # F_DUPFD_CLOEXEC
    table.apply(sc("fcntl", 11, 3, 0, 11))  # F_DUPFD
    assert fd(table, 10).name == fd(table, 11).name == "/etc/hosts"
    assert fd(table, 10).cloexec and not fd(table, 11).cloexec
    table.apply(sc("fcntl", 0, 11, 2, 1))  # F_SETFD FD_CLOEXEC
    assert fd(table, 11).cloexec
    assert not fd(table, 3).cloexec  # per-descriptor: the original is untouched


def test_dup3_and_dup(table):
    table.apply(sc("openat", 3, AT_FDCWD64, 0, 0, strings=("/etc/hosts",)))
    table.apply(sc("dup3", 7, 3, 7, O_CLOEXEC))
    table.apply(sc("dup", 8, 3))
    assert fd(table, 7).cloexec and fd(table, 7).name == "/etc/hosts"
    assert fd(table, 8).name == "/etc/hosts"


def test_close_and_failed_close(table):
    table.apply(sc("openat", 3, AT_FDCWD64, 0, 0, strings=("/a",)))
    table.apply(sc("openat", 4, AT_FDCWD64, 0, 0, strings=("/b",)))
    table.apply(sc("close", -4, 3))  # EINTR: the fd state is unknown, keep it
    assert table.fd_info(PID, 3) is not None
    table.apply(sc("close", 0, 3))
    table.apply(sc("close", -9, 4))  # EBADF: certainly not open
    assert table.fd_info(PID, 3) is None and table.fd_info(PID, 4) is None


def test_close_range(table):
    for n in range(0, 8):
        table.apply(sc("openat", n, AT_FDCWD64, 0, 0, strings=(f"/f{n}",)))
    table.apply(sc("close_range", 0, 5, 2**32 - 1, 4))  # CLOSE_RANGE_CLOEXEC
    assert [fd(table, n).cloexec for n in range(8)] == [False] * 5 + [True] * 3
    table.apply(sc("close_range", 0, 3, 2**32 - 1, 0))  # ~0U as a 32-bit value
    assert sorted(table.get(PID).fds) == [0, 1, 2]


def test_anonymous_fd_types(table):
    table.apply(sc("eventfd2", 3, 0, O_CLOEXEC))
    table.apply(sc("signalfd4", 4, 2**64 - 1, 0, 8, O_CLOEXEC))
    table.apply(sc("timerfd_create", 5, 1, 0))
    table.apply(sc("inotify_init1", 6, 0))
    table.apply(sc("epoll_create1", 7, O_CLOEXEC))
    table.apply(sc("userfaultfd", 8, 0))
    table.apply(sc("pipe2", 0, 0, O_CLOEXEC, 0, 0, 9, 10))
    got = {n: (fd(table, n).type, fd(table, n).typechar) for n in range(3, 11)}
    assert got == {
        3: ("event", "e"),
        4: ("signalfd", "s"),
        5: ("timerfd", "t"),
        6: ("inotify", "i"),
        7: ("eventpoll", "l"),
        8: ("userfaultfd", "u"),
        9: ("pipe", "p"),
        10: ("pipe", "p"),
    }
    assert fd(table, 3).cloexec and fd(table, 9).cloexec and not fd(table, 5).cloexec
    table.apply(exec_ev())
    assert sorted(table.get(PID).fds) == [5, 6, 8]


# -- tables across fork ----------------------------------------------------------------------
def test_fork_copies_table_copy_on_write(table):
    table.apply(sc("openat", 3, AT_FDCWD64, 0, 0, strings=("/shared",)))
    table.apply(fork_ev(PID, PID + 1))
    child = table.get(PID + 1)
    assert child.fds.shared and fd(table, 3, PID + 1).name == "/shared"
    table.apply(sc("close", 0, 3, pid=PID + 1))
    table.apply(sc("openat", 4, AT_FDCWD64, 0, 0, strings=("/parent-only",)))
    assert table.fd_info(PID + 1, 3) is None and fd(table, 3).name == "/shared"
    assert table.fd_info(PID + 1, 4) is None and fd(table, 4).name == "/parent-only"


def test_thread_shares_the_process_table(table):
    table.apply(fork_ev(PID, PID, tid=PID + 7))
    _ts[0] += 1000
    args = (AT_FDCWD64, 0, 0, 0, 0, 0)
    nr = BY_NAME["openat"].nr
    ev = Event(_ts[0], EventType.SYSCALL, nr, PID, PID + 7, 0, 0, 0, 3, args, "worker", strings=("t",))
    table.apply(ev)
    assert fd(table, 3).name == "/srv/app/t"
    assert table.thread(PID + 7) is table.get(PID)


def test_fd_table_is_bounded_and_counts():
    t = FdTable(max_fds=4)
    for n in range(6):
        t.add(FdInfo(n, "file", f"/f{n}"))
    assert len(t) == 4 and t.dropped == 2
    t.add(FdInfo(0, "file", "/replaced"))  # replacing an entry always fits
    assert t.get(0).name == "/replaced"


def test_fdinfo_roundtrip():
    fi = FdInfo(5, "ipv4", "1.1.1.1:1->2.2.2.2:2", "", O_CLOEXEC, l4proto="tcp", role="client",
                cip="1.1.1.1", cport=1, sip="2.2.2.2", sport=2, connected=True)  # fmt: skip
    back = FdInfo.from_dict(fi.to_dict())
    assert back.to_dict() == fi.to_dict() and back.cloexec


# -- the raw-record path (the agent's lean opens) ----------------------------------------
def test_apply_open_from_raw_values_makes_what_apply_makes():
    """open_args + ProcessTable.apply_open give the fd entry that apply(Event) gives, for
    every path open call, every way a dirfd arrives, and flag bits above 32."""
    import numpy as np

    from andon.events.schema import EVENT_DTYPE, encode_record
    from andon.state.fd import OPEN_PATH_NRS, open_args

    assert OPEN_PATH_NRS == {BY_NAME[n].nr for n in ("open", "openat", "openat2", "creat")}
    high = 1 << 40
    cases = []
    for flags in (0, 1, 2 | 0o1000, O_DIRECTORY, O_DIRECTORY | 0o20000000, O_CLOEXEC | 0o100, high | 1):
        for path in ("/etc/shadow", "rel/x.conf", "../up", "/a//b/./c", ""):
            for dirfd in (AT_FDCWD64, AT_FDCWD32, 7):  # 7: /var/lib, opened below
                cases.append(("openat", 3, (dirfd, 0, flags), path))
                cases.append(("openat2", 4, (dirfd, 0, flags), path))
            cases.append(("open", 5, (0, flags), path))
    cases.append(("creat", 6, (0, 0o644), "/tmp/new"))
    cases.append(("openat", -2, (AT_FDCWD64, 0, 0), "/missing"))
    checked = 0
    for name, ret, args, path in cases:
        slow = ProcessTable(StateSettings(proc_root=None))
        fast = ProcessTable(StateSettings(proc_root=None))
        for t in (slow, fast):
            t.apply(exec_ev(cwd="/srv/app"))
            t.apply(sc("openat", 7, AT_FDCWD64, 0, O_DIRECTORY, strings=("/var/lib",)))
        ev = sc(name, ret, *args, strings=(path,))
        slow.apply(ev)
        rec = np.frombuffer(encode_record(ev), dtype=EVENT_DTYPE)
        dirfd, flags = open_args(rec["nr"], rec["args"])
        assert fast.apply_open(PID, ev.ts, ret, int(dirfd[0]), int(flags[0]), path)
        got, want = fast.get(PID), slow.get(PID)
        assert got.fds.to_list() == want.fds.to_list(), (name, args, path)
        assert got.last_seen == want.last_seen == ev.ts
        if ret >= 0:
            checked += 1
            assert got.fds.get(ret) is not None
    assert checked > 200
    # openat keeps 32 flag bits, openat2 all of them (open_how.flags)
    rec = np.frombuffer(encode_record(sc("openat", 3, AT_FDCWD64, 0, high | 1, strings=("/x",))), dtype=EVENT_DTYPE)
    assert open_args(rec["nr"], rec["args"])[1].tolist() == [1]
    rec = np.frombuffer(encode_record(sc("openat2", 3, AT_FDCWD64, 0, high | 1, strings=("/x",))), dtype=EVENT_DTYPE)
    assert open_args(rec["nr"], rec["args"])[1].tolist() == [high | 1]


def test_apply_open_declines_what_it_cannot_do_alone():
    t = ProcessTable(StateSettings(proc_root=None))
    assert not t.apply_open(PID, 5, 3, -100, 0, "/x")  # unknown pid: the caller needs the Event
    t.apply(exec_ev(cwd="/srv"))
    p = t.get(PID)
    p.proc_ts = 10**15  # /proc read after the events below
    assert t.apply_open(PID, 10**15 - 1, 3, -100, 0, "/old")  # older than the read: nothing to do
    assert p.fds.get(3) is None
    assert not t.apply_open(PID, 10**15 - 1, 3, -100, 0, "/old", fresh=True)  # wants the entry it would make
    assert t.apply_open(PID, 10**15 - 1, -2, -100, 0, "/old", fresh=True)  # a failed open makes none anyway
    assert t.apply_open(PID, 10**15 + 1, 3, -100, 0, "/new", fresh=True)
    assert p.fds.get(3).name == "/new" and p.last_seen == 10**15 + 1


def test_add_remove_leaves_what_add_then_remove_leaves():
    for start, fd in (({}, 3), ({3: "old"}, 3), ({4: "x"}, 3)):
        for max_fds in (1, 8):
            a, b = FdTable(max_fds), FdTable(max_fds)
            for t in (a, b):
                for n, name in start.items():
                    t.add(FdInfo(n, "file", name))
            shared = a.fork()  # copy-on-write: the sharer must not see either side's change
            a.add(FdInfo(fd, "file", "/new"))
            a.remove(fd)
            b.add_remove(fd)
            assert [(n, fi.name) for n, fi in b.items()] == [(n, fi.name) for n, fi in a.items()]
            assert b.dropped == a.dropped, (start, fd, max_fds)
            assert sorted(shared._d) == sorted(start)
    full = FdTable(1)
    full.add(FdInfo(4, "file", "/x"))
    full.add_remove(3)
    assert full.dropped == 1 and sorted(full._d) == [4]


def test_apply_open_close_pairs_only_what_it_can():
    t = ProcessTable(StateSettings(proc_root=None))
    assert not t.apply_open_close(PID, 10, 11, 3, 0)  # unknown pid
    t.apply(exec_ev(cwd="/srv"))
    p = t.get(PID)
    t.apply(sc("openat", 3, AT_FDCWD64, 0, 0, strings=("/etc/hostname",)))
    assert p.fds.get(3) is not None
    assert not t.apply_open_close(PID, _ts[0] + 1, _ts[0] + 2, 3, -4)  # EINTR: the entry would stay
    assert p.fds.get(3) is not None
    assert t.apply_open_close(PID, _ts[0] + 1, _ts[0] + 2, 3, 0)
    assert p.fds.get(3) is None and p.last_seen == _ts[0] + 2
    assert t.apply_open_close(PID, _ts[0] + 3, _ts[0] + 4, 5, -9)  # EBADF also removes
    p.proc_ts = 10**18
    assert not t.apply_open_close(PID, 10**18 - 2, 10**18 + 1, 3, 0)  # the open is older than /proc
