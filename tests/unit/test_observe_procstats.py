"""process_stats rows from /proc text: field positions, units, and hostile command names."""

import os

from andon.observe.procstats import CLK_TCK, PAGE, ProcStatsSampler, parse_io, parse_stat

# /proc/<pid>/stat of a process whose comm holds a space and a ')' (proc(5) allows both)
STAT = (
    "4242 (we ird) na) S 1 4242 4242 0 -1 4194560 150 0 3 0 "
    "25 7 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
)


def test_stat_fields_and_units():
    row = parse_stat(STAT)
    assert row is not None
    assert row["pid"] == 4242
    assert row["comm"] == "we ird) na"
    assert row["ppid"] == 1
    assert row["minor_faults"] == 150
    assert row["major_faults"] == 3
    assert row["cpu_utime_ns"] == 25 * 1_000_000_000 // CLK_TCK
    assert row["cpu_ktime_ns"] == 7 * 1_000_000_000 // CLK_TCK
    assert row["num_threads"] == 3
    assert row["start_ticks"] == 98765
    assert row["vsize_bytes"] == 123456789
    assert row["rss_bytes"] == 2048 * PAGE


def test_stat_malformed_is_none():
    assert parse_stat("") is None
    assert parse_stat("12 (x) S 1 2") is None
    assert parse_stat("zz (x) " + "S " * 40) is None


def test_io_parse_and_missing_keys():
    io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n"
    assert parse_io(io) == {"rchar_bytes": 10, "wchar_bytes": 20, "read_bytes": 4096, "write_bytes": 8192}
    assert parse_io("rchar: x\n") == {"rchar_bytes": 0, "wchar_bytes": 0, "read_bytes": 0, "write_bytes": 0}


def test_sampler_reads_fake_proc(tmp_path):
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(STAT)
    (tmp_path / "4242" / "io").write_text("rchar: 5\nwchar: 6\nread_bytes: 7\nwrite_bytes: 8\n")
    (tmp_path / "77").mkdir()  # vanished between listdir and open: no stat file
    (tmp_path / "self").mkdir()  # not a pid
    s = ProcStatsSampler(proc=str(tmp_path))
    rows = s.sample(now_ns=123)
    assert [r["pid"] for r in rows] == [4242]
    assert rows[0]["time_"] == 123 and rows[0]["wchar_bytes"] == 6
    assert s.skipped == 1 and s.samples == 1


def test_sampler_sees_this_process():
    rows = {r["pid"]: r for r in ProcStatsSampler().sample(now_ns=1)}
    me = rows[os.getpid()]
    assert me["num_threads"] >= 1 and me["rss_bytes"] > 1_000_000
