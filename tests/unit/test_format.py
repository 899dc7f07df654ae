"""Arguments named and rendered as Falco users read them."""

from andon.events.format import errno_name, event_args, is_open_read, is_open_write, open_flags, result, s32
from andon.events.schema import Event, EventType, Sock
from andon.events.syscalls import BY_NAME, expand_types

import pytest

from andon.errors import UsageError


def sc(name, args, ret=0, strings=(), sock=None):
    return Event(ts=0, type=EventType.SYSCALL, nr=BY_NAME[name].nr, pid=1, tid=1, uid=0, gid=0, cgroup_id=0,
                 ret=ret, args=tuple(args) + (0,) * (6 - len(args)), comm="x", strings=strings, sock=sock)


def test_open_flags():
    assert open_flags(0) == "O_RDONLY"
    assert open_flags(0o1101) == "O_WRONLY|O_CREAT|O_TRUNC"
    assert open_flags(0o2000002) == "O_RDWR|O_CLOEXEC"
    assert is_open_read(2) and is_open_write(2) and not is_open_write(0) and not is_open_read(1)


def test_openat_args_by_falco_name():
    e = sc("openat", [2**64 - 100, 0, 0o1101, 0o640], ret=-13, strings=("/etc/shadow",))
    assert event_args(e) == {"dirfd": -100, "name": "/etc/shadow", "flags": "O_WRONLY|O_CREAT|O_TRUNC",
                             "mode": "0640"}
    assert result(e) == "EACCES"


def test_symlink_names_target_and_linkpath():
    e = sc("symlinkat", [0, 2**32 - 100, 0], strings=("/etc/shadow", "/tmp/s"))
    a = event_args(e)
    assert a["target"] == "/etc/shadow" and a["linkpath"] == "/tmp/s" and a["linkdirfd"] == -100


def test_ptrace_and_socket_symbols():
    assert event_args(sc("ptrace", [16, 1234]))["request"] == "PTRACE_ATTACH"
    a = event_args(sc("socket", [17, 3, 768], ret=3))
    assert a["domain"] == "AF_PACKET" and a["type"] == "SOCK_RAW"


def test_connect_tuple():
    e = sc("connect", [3, 0, 16], sock=Sock(2, 1, 6, 5555, 80, "127.0.0.1", "127.0.0.9", True))
    assert event_args(e)["tuple"] == "127.0.0.1:5555->127.0.0.9:80"


def test_errno_and_s32():
    assert errno_name(-2) == "ENOENT" and errno_name(0) == "SUCCESS" and errno_name(7) == "SUCCESS"
    assert s32(0xFFFFFF9C) == -100 and s32(2**64 - 1) == -1 and s32(5) == 5


def test_type_words():
    assert expand_types(["exec"]) == {"execve", "execveat"}
    assert {"open", "openat", "openat2"} <= expand_types(["open"])
    assert "connect" in expand_types(["net"]) and "openat" not in expand_types(["net"])
    with pytest.raises(UsageError, match="unknown event type 'opne'"):
        expand_types(["opne"])
