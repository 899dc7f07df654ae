"""The andon command as a user runs it: live stream, capture, replay, Ctrl-C.

Each test starts the real `andon` process, does something known in a child, and asserts
what andon printed about it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANDON = [sys.executable, "-m", "andon"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the live sensor needs root"),
    pytest.mark.skipif(not (ROOT / "build/bpf/syscalls/sys_exit.bpf.o").exists(), reason="run `make bpf` first"),
]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(ANDON + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _links_held(pid: int) -> int:
    """How many BPF links the process holds (each attached program is one)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf_link":
                    n += 1
            except OSError:
                pass
    except OSError:
        pass
    return n


def wait_attached(p: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """andon is attached once this andon process holds its BPF links (an andon of an earlier
    test may still be leaving the kernel: looking at program names would see that one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _links_held(p.pid) > 0:
            time.sleep(0.3)  # and has seeded its tables
            return
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError("andon did not attach its programs in time")


def our_programs() -> list[str]:
    out = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True).stdout)
    names = ("sys_exit", "sched_process_exec", "sched_process_e", "sched_process_f", "sched_process_fork",
             "sched_process_exit")
    return [p.get("name", "") for p in out if p.get("name", "") in names]


def test_live_json_shows_exec_and_open_of_a_child(tmp_path):
    marker = tmp_path / f"andon-{uuid.uuid4().hex[:8]}"
    marker.write_text("x")
    p = start(["events", "-o", "json", "-t", "exec,open", "--duration", "8", "-c", "cat"])
    try:
        wait_attached(p)
        # TRIGGER: a known exec with a known argv, which opens a known file
        child = subprocess.run(["cat", str(marker)], capture_output=True, text=True, cwd=tmp_path)
        assert child.stdout == "x"
    finally:
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    evs = [json.loads(line) for line in out.splitlines()]
    execs = [e for e in evs if e["type"] == "execve" and e["args"]["args"] == [str(marker)]]
    assert len(execs) == 1
    ex = execs[0]
    assert ex["args"]["exepath"] == "/usr/bin/cat"
    assert ex["args"]["cwd"] == str(tmp_path)
    assert ex["proc"]["ppid"] == os.getpid()
    assert ex["res"] == "SUCCESS"
    opens = [e for e in evs if e["type"] == "openat" and e["args"].get("name") == str(marker) and e["pid"] == ex["pid"]]
    assert len(opens) == 1
    assert opens[0]["args"]["flags"] == "O_RDONLY"
    assert opens[0]["ret"] >= 3
    assert opens[0]["proc"]["fd_name"] == str(marker)
    # the closing line counts what was seen and lost
    assert "events shown" in err and " lost" in err


def test_count_stops_after_n_events_and_nothing_stays_loaded(tmp_path):
    # only the test's own execs count: two execs by anything else on the machine would end
    # andon before the test sees it attached
    name = f"andon-n-{uuid.uuid4().hex[:6]}"
    (tmp_path / name).symlink_to("/bin/true")
    p = start(["events", "-o", "json", "-t", "exec", "-c", name, "--count", "2"])
    wait_attached(p)
    deadline = time.monotonic() + 10
    while p.poll() is None and time.monotonic() < deadline:
        subprocess.run([str(tmp_path / name)])
        time.sleep(0.05)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    evs = [json.loads(line) for line in out.splitlines()]
    assert [e["comm"] for e in evs] == [name, name]
    assert "andon: 2 events shown" in err
    time.sleep(0.5)  # links are freed after an RCU grace period
    assert our_programs() == []


def test_ctrl_c_stops_cleanly_with_counts():
    p = start(["events", "-t", "exec"])
    wait_attached(p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "events shown" in err and "lost" in err
    time.sleep(0.5)
    assert our_programs() == []


def test_capture_then_replay_with_filters(tmp_path):
    cap = tmp_path / "run.andoncap"
    p = start(["capture", "-w", str(cap), "--duration", "6", "-t", "exec,file"])
    try:
        wait_attached(p)
        child = subprocess.Popen(["/bin/sh", "-c", f"mkdir {tmp_path}/d1 && touch {tmp_path}/d1/f && exit 7"])
        child.wait()
    finally:
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "events written to" in err
    assert cap.stat().st_size > 0

    # replay: only the shell's own events, as JSON
    r = subprocess.run(ANDON + ["events", "-r", str(cap), "-o", "json", "--pid", str(child.pid)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {e["pid"] for e in evs} == {child.pid}
    types = [e["type"] for e in evs]
    # before its exec the child is still Python (subprocess closes fds there), then sh
    assert types.count("execve") == 1 and types[-1] == "procexit"
    assert evs[types.index("execve")]["args"]["exepath"] == "/usr/bin/dash"
    assert evs[-1]["args"]["code"] == 7
    # the shell forked mkdir and touch; their execs are separate pids, but the shell's clones are here
    assert types.count("clone") >= 2
    # replay with a type filter and from another process's view: mkdir's own event
    r2 = subprocess.run(ANDON + ["events", "-r", str(cap), "-o", "json", "-t", "mkdir,mkdirat"],
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
    mk = [json.loads(line) for line in r2.stdout.splitlines()]
    mine = [e for e in mk if e["args"].get("path") == f"{tmp_path}/d1"]
    assert len(mine) == 1 and mine[0]["res"] == "SUCCESS"
    # the replayed state knows mkdir's parent is the shell
    assert mine[0]["proc"]["ppid"] == child.pid


def test_replay_of_a_damaged_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.andoncap"
    bad.write_bytes(b"not a capture at all")
    r = subprocess.run(ANDON + ["events", "-r", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 1
    assert "not an andon capture file" in r.stderr


def test_unknown_type_is_a_usage_error():
    r = subprocess.run(ANDON + ["events", "-t", "opne"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2
    assert "unknown event type 'opne'" in r.stderr


def test_container_filter_shows_only_that_container():
    image = os.environ.get("ANDON_TEST_IMAGE", "localhost/andon-test:bookworm")
    if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode != 0:
        pytest.skip(f"test image {image} is missing: run scripts/build-test-image.sh")
    name = f"andon-f-{uuid.uuid4().hex[:8]}"
    run = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
           "--network", "none", "-d", "--name", name, image, "sleep", "30"]
    cid = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    try:
        p = start(["events", "-o", "json", "-t", "exec", "--container", cid[:12], "--duration", "6"])
        try:
            wait_attached(p)
            # TRIGGER: one exec inside the container, one on the host
            subprocess.run(["podman", "exec", name, "cat", "/etc/debian_version"], capture_output=True, check=True)
            subprocess.run(["cat", "/etc/hostname"], capture_output=True, check=True)
        finally:
            out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        evs = [json.loads(line) for line in out.splitlines()]
        # ASSERT: the container's cat, and nothing from the host
        cats = [e for e in evs if e["args"].get("args") == ["/etc/debian_version"]]
        assert len(cats) == 1
        assert cats[0]["proc"]["container_id"] == cid[:12]
        assert all(e["proc"]["container_id"] == cid[:12] for e in evs)
        assert not [e for e in evs if e["args"].get("args") == ["/etc/hostname"]]
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
