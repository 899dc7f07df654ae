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


# -- version 2: container side records ------------------------------------------------------------
import struct  # noqa: E402

from andon.app.enrich import Tracker  # noqa: E402
from andon.events.capture import SIDE, VERSION  # noqa: E402

CID = "f75f8025ce36280c95d8cb56d17a528eeaf3670fa1e4d5843eb1400099ec284f"
INFO = {"id": CID, "runtime": "podman", "name": "web", "image": "localhost/andon-test:bookworm",
        "image_repository": "localhost/andon-test", "privileged": True, "resolved": True}


def test_v2_round_trip_with_container_records_in_place(tmp_path):
    p = tmp_path / "c.andoncap"
    evs = [make(i, f"/f{i}") for i in range(6)]
    with CaptureWriter(p, CaptureHeader(boot_offset=0, types=["openat"])) as w:
        w.write_batch(np.frombuffer(b"".join(encode_record(e, 0) for e in evs[:3]), dtype=EVENT_DTYPE))
        w.write_container(INFO)
        for e in evs[3:]:
            w.write_record(encode_record(e, 0))
    assert VERSION == 2 and w.side_records == 1
    seen = []
    with CaptureReader(p) as r:
        assert r.version == 2
        r.on_side = lambda d: seen.append((len(got), d))
        got = []
        for ev in r.events():
            got.append(ev)
        assert got == evs and r.records == 6 and r.side_records == 1
    assert seen == [(3, {"kind": "container", "ts": seen[0][1]["ts"], "info": INFO})]
    with CaptureReader(p) as r:  # raw_records skips side records
        assert len(list(r.raw_records())) == 6


def test_lookahead_finds_a_record_within_the_window_and_keeps_order(tmp_path):
    p = tmp_path / "c.andoncap"
    evs = [make(i * 100_000_000, "/x") for i in range(10)]  # 0.1 s apart
    with CaptureWriter(p, CaptureHeader(boot_offset=0, types=["openat"])) as w:
        for i, e in enumerate(evs):
            if i == 4:
                w.write_container(INFO)
            w.write_record(encode_record(e, 0))
    with CaptureReader(p) as r:
        it = r.events()
        assert next(it) == evs[0]
        assert r.lookahead_container(CID, 0.2) is None  # 0.4 s away
        assert next(it) == evs[1]
        assert r.lookahead_container("0" * 64, 0.5) is None
        assert r.lookahead_container(CID, 0.5) == INFO
        assert list(it) == evs[2:]  # nothing lost or reordered by looking ahead


def test_replay_tracker_takes_container_records_and_waits_by_lookahead(tmp_path):
    p = tmp_path / "c.andoncap"
    with CaptureWriter(p, CaptureHeader(boot_offset=0, types=["openat"])) as w:
        w.write_record(encode_record(make(0, "/a"), 0))
        w.write_container(INFO)
        w.write_record(encode_record(make(1, "/b"), 0))
    tr = Tracker(offline=True)
    with CaptureReader(p) as r:
        tr.follow_capture(r)
        reg = tr.containers
        it = r.events()
        next(it)
        assert reg.pending(CID)
        info = reg.wait(CID, 0.5)  # found ahead, applied now
        assert info.resolved and info.name == "web" and info.privileged is True
        assert not reg.pending(CID) and reg.stats["waits"] == 1 and reg.stats["wait_expired"] == 0
        assert len(list(it)) == 1


def test_version_1_files_still_read(tmp_path):
    p = tmp_path / "v1.andoncap"
    hdr = b'{"boot_offset":0,"types":["openat"]}'
    evs = [make(i, "/v1") for i in range(3)]
    p.write_bytes(struct.pack("<8sII", b"ANDONCAP", 1, len(hdr)) + hdr
                  + b"".join(struct.pack("<I", 248) + encode_record(e, 0) for e in evs))
    tr = Tracker(offline=True)
    with CaptureReader(p) as r:
        tr.follow_capture(r)
        assert r.version == 1 and tr.containers.lookahead is None
        assert list(r.events()) == evs


def test_side_marker_in_a_v1_file_is_damage(tmp_path):
    p = tmp_path / "v1.andoncap"
    hdr = b'{"boot_offset":0}'
    p.write_bytes(struct.pack("<8sII", b"ANDONCAP", 1, len(hdr)) + hdr + struct.pack("<I", SIDE | 2) + b"{}")
    with CaptureReader(p) as r, pytest.raises(CaptureError, match="impossible length"):
        list(r.events())


def test_future_version_is_refused(tmp_path):
    p = tmp_path / "v9.andoncap"
    p.write_bytes(struct.pack("<8sII", b"ANDONCAP", 9, 2) + b"{}")
    with pytest.raises(CaptureError, match="version 9"):
        CaptureReader(p)


def test_batches_apply_side_records_and_look_ahead_by_pread(tmp_path):
    p = tmp_path / "c.andoncap"
    evs = [make(i * 100_000_000, "/x") for i in range(10)]  # 0.1 s apart
    with CaptureWriter(p, CaptureHeader(boot_offset=0, types=["openat"])) as w:
        w.write_batch(np.frombuffer(b"".join(encode_record(e, 0) for e in evs[:3]), dtype=EVENT_DTYPE))
        w.write_container(INFO)
        w.write_batch(np.frombuffer(b"".join(encode_record(e, 0) for e in evs[3:]), dtype=EVENT_DTYPE))
    seen = []
    with CaptureReader(p) as r:
        r.on_side = seen.append
        it = r.batches()
        arr, big = next(it)
        assert len(arr) == 3 and big is None and not seen
        assert r.lookahead_container(CID, 0.05) == INFO  # the record is next: found at once
        assert r.lookahead_container(CID, 0.5) == INFO
        assert r.lookahead_container("0" * 64, 5) is None
        rest = list(it)
        assert [len(a) for a, _ in rest] == [7] and [d["info"] for d in seen] == [INFO]
        assert r.records == 10 and r.side_records == 1
