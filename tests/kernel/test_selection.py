"""The agent changes which syscalls the kernel sends while it runs (rules reloaded).

TRIGGER the same syscalls before and after ``set_types``; ASSERT the ring carries exactly
the selected ones each time.
"""

from __future__ import annotations


def _names(evs):
    return sorted({e.name for e in evs})


def test_set_types_switches_syscalls_on_and_off(sensor, collect, run_py, tmp_path):
    src = sensor(["openat", "close"])
    path = str(tmp_path / "f")
    open(path, "w").close()
    prog = f"out(sc('openat', AT_FDCWD, {path!r}, 0, 0))\nout(sc('mkdir', {str(tmp_path / 'd')!r}, 0o700))"

    # TRIGGER with openat, close selected; mkdir not
    ch = run_py(prog)
    first = collect(src, ch.pid)
    assert "openat" in _names(first) and "mkdir" not in _names(first)

    # TRIGGER after the switch: mkdir on, openat off
    src.set_types(frozenset({"mkdir", "close"}))
    (tmp_path / "d").rmdir()
    ch = run_py(prog)
    second = collect(src, ch.pid)
    assert "mkdir" in _names(second)
    assert "openat" not in _names(second)
    mk = [e for e in second if e.name == "mkdir"]
    assert mk[0].strings == (str(tmp_path / "d"),) and mk[0].ret == 0
    assert set(src.enabled_syscalls) == {"mkdir", "close"}
