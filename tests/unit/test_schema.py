"""Decoding records as the kernel writes them: one-slot, multi-slot, sockets, exec facts."""

import numpy as np
import pytest

from andon.events.schema import (
    DATA_SMALL,
    EVENT_DTYPE,
    EXE_FROM_MEMFD,
    REC_SMALL,
    SLOT,
    Event,
    EventType,
    ExecInfo,
    Sock,
    decode_batch,
    decode_record,
    encode_record,
)
from andon.events.syscalls import BY_NAME

OPENAT = BY_NAME["openat"].nr
CONNECT = BY_NAME["connect"].nr


def ev(**kw):
    base = dict(ts=1_700_000_000_000_000_000, type=EventType.SYSCALL, nr=OPENAT, pid=42, tid=43, uid=1000,
                gid=1000, cgroup_id=7, ret=3, args=(2**64 - 100, 0x1000, 0o2000000, 0o644, 0, 0), comm="cat")
    base.update(kw)
    return Event(**base)


def test_one_slot_record_round_trip():
    e = ev(strings=("/etc/hostname",))
    raw = encode_record(e, boot_offset=1000)
    assert len(raw) == REC_SMALL
    d = decode_record(raw, 1000)
    assert d == e
    assert d.name == "openat"


def test_long_path_takes_several_slots_and_survives_whole():
    path = "/" + "x" * 300
    raw = encode_record(ev(strings=(path,)))
    assert (len(raw) + 8) % SLOT == 0 and len(raw) > REC_SMALL
    assert decode_record(raw, 0).strings == (path,)


def test_two_strings_in_order():
    e = ev(nr=BY_NAME["symlinkat"].nr, strings=("/etc/shadow", "/tmp/link"))
    assert decode_record(encode_record(e), 0).strings == ("/etc/shadow", "/tmp/link")


def test_socket_tuple_v4_and_v6_and_unix():
    s4 = Sock(2, 1, 6, 40000, 8080, "127.0.0.1", "127.0.0.2", False)
    d = decode_record(encode_record(ev(nr=CONNECT, sock=s4)), 0)
    assert d.sock == s4 and d.sock.l4proto == "tcp"
    assert d.sock.tuple_str() == "127.0.0.1:40000->127.0.0.2:8080"
    s6 = Sock(10, 2, 17, 1, 53, "::1", "fe80::1", True)
    d6 = decode_record(encode_record(ev(nr=CONNECT, sock=s6)), 0)
    assert d6.sock.daddr == "fe80::1" and d6.sock.l4proto == "udp" and d6.sock.from_arg
    su = Sock(1, 1, 0, 0, 0, "", "", True, path="@abstract")
    du = decode_record(encode_record(ev(nr=CONNECT, sock=su)), 0)
    assert du.sock.path == "@abstract" and du.strings == ()


def test_exec_facts_and_argv():
    x = ExecInfo(cap_effective=0x1FF, cap_permitted=0x1FF, start_time=5, exe_ctime=6, exe_mtime=7, ppid=1,
                 ruid=1000, rgid=1000, loginuid=1000, tty=34816, sid=9, vpid=1, pidns=4026531836,
                 mntns=4026531841, netns=4026531840, exe_flags=EXE_FROM_MEMFD, exepath="/usr/bin/dash",
                 filename="/bin/sh", cwd="/root", cgroup="libpod-" + "a" * 64, cgroup2="",
                 argv=["sh", "-c", "echo hi there"])
    e = ev(type=EventType.EXEC, nr=0, ret=0, exec=x)
    d = decode_record(encode_record(e), 0)
    assert d.exec == x
    assert d.name == "execve"


def test_batch_decode_equals_single_decode():
    evs = [ev(ts=ev().ts + i, strings=(f"/tmp/f{i}",), ret=i) for i in range(50)]
    evs[7] = ev(nr=CONNECT, sock=Sock(2, 1, 6, 1, 2, "10.0.0.1", "10.0.0.2", False))
    evs[9] = ev(nr=BY_NAME["rename"].nr, strings=("/a", "/b"))
    raw = b"".join(encode_record(e) for e in evs)
    arr = np.frombuffer(raw, dtype=EVENT_DTYPE)
    one_by_one = [decode_record(encode_record(e), 0) for e in evs]
    assert decode_batch(arr, 0) == one_by_one
    assert [e.strings for e in one_by_one] == [e.strings for e in evs]
    assert one_by_one[7].sock == evs[7].sock


def test_hostile_record_does_not_raise():
    # strings with no terminator, exec facts claiming a huge argv: decoding stays bounded
    raw = bytearray(encode_record(ev(strings=("/x",))))
    raw[112:112 + DATA_SMALL] = b"A" * DATA_SMALL
    d = decode_record(bytes(raw), 0)
    assert d.strings == ("A" * DATA_SMALL,)


@pytest.mark.parametrize("bad", [b"\xff\xfe", "é".encode()])
def test_non_utf8_paths_round_trip(bad):
    p = "/tmp/" + bad.decode("utf-8", "surrogateescape")
    assert decode_record(encode_record(ev(strings=(p,))), 0).strings == (p,)
