"""Capture files: write, read back identical events, and fail clearly on damage."""

import numpy as np
import pytest

from andon.errors import CaptureError
from andon.events.capture import CaptureHeader, CaptureReader, CaptureWriter
from andon.events.schema import EVENT_DTYPE, Event, EventType, encode_record
from andon.events.syscalls import BY_NAME


def make(i, path):
    return Event(ts=10**18 + i, type=EventType.SYSCALL, nr=BY_NAME["openat"].nr, pid=1, tid=1, uid=0, gid=0,
                 cgroup_id=1, ret=3, args=(0,) * 6, comm="t", strings=(path,))


def write(tmp_path, evs, boot=500):
    p = tmp_path / "c.andoncap"
    hdr = CaptureHeader(boot_offset=boot, types=["openat"], state={"processes": [{"pid": 1, "comm": "init"}]})
    with CaptureWriter(p, hdr) as w:
        small = [e for e in evs if len(encode_record(e, boot)) == 248]
        w.write_batch(np.frombuffer(b"".join(encode_record(e, boot) for e in small), dtype=EVENT_DTYPE))
        for e in evs:
            if e not in small:
                w.write_record(encode_record(e, boot))
    return p, small + [e for e in evs if e not in small]


def test_round_trip(tmp_path):
    evs = [make(i, f"/f{i}") for i in range(100)] + [make(1000, "/" + "y" * 500)]
    p, order = write(tmp_path, evs)
    with CaptureReader(p) as r:
        assert r.header.boot_offset == 500
        assert r.header.state == {"processes": [{"pid": 1, "comm": "init"}]}
        got = list(r.events())
        assert got == order
        assert not r.truncated


def test_cut_short_reads_whole_records_and_says_so(tmp_path):
    p, order = write(tmp_path, [make(i, "/a") for i in range(10)])
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with CaptureReader(p) as r:
        got = list(r.events())
    assert got == order[:9]
    assert r.truncated


def test_not_a_capture(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"hello world, not a capture")
    with pytest.raises(CaptureError, match="bad magic"):
        CaptureReader(p)


def test_impossible_record_length(tmp_path):
    p, _ = write(tmp_path, [make(0, "/a")])
    data = bytearray(p.read_bytes())
    # the first record's length field follows the header
    hlen = int.from_bytes(data[12:16], "little")
    data[16 + hlen:20 + hlen] = (5).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    with CaptureReader(p) as r, pytest.raises(CaptureError, match="impossible length"):
        list(r.events())
