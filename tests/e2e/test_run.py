"""`andon run` as a user runs it: rules from a file, live alerts, reload, replay, config.

Each test writes its own small rules file, starts the real agent, does something real
(open a file with a unique name, make a directory) and asserts the alerts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from agent import ANDON, ROOT, AgentRun

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the live sensor needs root"),
    pytest.mark.skipif(not (ROOT / "build/bpf/syscalls/sys_exit.bpf.o").exists(), reason="run `make bpf` first"),
]

OPEN_RULE = """
- rule: Marker opened
  desc: a file whose name carries the test's marker was opened
  condition: evt.type in (open, openat, openat2) and fd.name contains {marker}
  output: marker opened (file=%fd.name proc=%proc.name flags=%evt.arg.flags)
  priority: NOTICE
  tags: [test]
"""

MKDIR_RULE = """
- rule: Marker directory made
  desc: a directory whose name carries the test's marker was made
  condition: evt.type in (mkdir, mkdirat) and evt.arg.path contains {marker}
  output: marker dir (path=%evt.arg.path proc=%proc.name)
  priority: WARNING
"""


def touch_and_read(path: Path) -> None:
    """A child process (not the test itself) opens the file: `cat` it."""
    path.write_text("x")
    subprocess.run(["cat", str(path)], check=True, capture_output=True)


def wait_stderr(agent: AgentRun, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.stderr_lines:
            if text in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no stderr line with {text!r}:\n" + "\n".join(agent.stderr_lines[-20:]))


def test_live_alert_is_falcos_json(tmp_path):
    marker = f"andon-e2e-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(OPEN_RULE.format(marker=marker))
    target = tmp_path / f"{marker}.txt"
    with AgentRun(["--rules", str(rules)]) as agent:
        # TRIGGER
        touch_and_read(target)
        a = agent.wait_for("Marker opened", lambda a: a["output_fields"]["proc.name"] == "cat")
    # ASSERT: Falco's keys and types
    assert agent.returncode == 0
    assert set(a) == {"hostname", "output", "output_fields", "priority", "rule", "source", "tags", "time"}
    assert a["priority"] == "Notice" and a["source"] == "syscall" and a["tags"] == ["test"]
    assert a["output_fields"]["fd.name"] == str(target)
    assert a["output_fields"]["evt.arg.flags"] == "O_RDONLY"
    assert isinstance(a["output_fields"]["evt.time"], int)
    assert a["time"].endswith("Z") and len(a["time"].split(".")[1]) == 10  # 9 digits + Z
    assert f"marker opened (file={target} proc=cat flags=O_RDONLY)" in a["output"]
    assert " Notice marker opened" in a["output"]
    closing = agent.stderr_lines[-1]
    assert "events in" in closing and " alerts" in closing and " lost" in closing


def test_broken_rules_do_not_start_and_say_where(tmp_path):
    rules = tmp_path / "bad.yaml"
    rules.write_text("- rule: Bad\n  desc: x\n  condition: evt.type = openat and and\n  output: x\n  priority: NOTICE\n")
    p = subprocess.run(ANDON + ["run", "--no-observe", "--rules", str(rules), "--duration", "2"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 1
    assert f"{rules}:3:" in p.stderr  # file:line:col of the condition
    assert "nothing was started" in p.stderr
    assert "andon: ready" not in p.stderr


def test_reload_on_change_keeps_good_rules_when_the_new_file_is_broken(tmp_path):
    marker = f"andon-e2e-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(OPEN_RULE.format(marker=marker))
    with AgentRun(["--rules", str(rules)]) as agent:
        touch_and_read(tmp_path / f"{marker}-1")
        agent.wait_for("Marker opened", lambda a: a["output_fields"]["fd.name"].endswith("-1"))

        # a broken edit: reported, the running rule stays
        rules.write_text(OPEN_RULE.format(marker=marker) + "\n- rule: [broken\n")
        wait_stderr(agent, "reload failed")
        touch_and_read(tmp_path / f"{marker}-2")
        agent.wait_for("Marker opened", lambda a: a["output_fields"]["fd.name"].endswith("-2"))

        # a good edit that needs a syscall the kernel was not sending (mkdir)
        rules.write_text(MKDIR_RULE.format(marker=marker))
        wait_stderr(agent, "reloaded: 1 rules")
        subprocess.run(["mkdir", str(tmp_path / f"{marker}-dir2")], check=True)
        a = agent.wait_for("Marker directory made", lambda a: a["output_fields"]["proc.name"] == "mkdir")
        assert a["output_fields"]["evt.arg.path"] == str(tmp_path / f"{marker}-dir2")
        assert a["priority"] == "Warning"
        touch_and_read(tmp_path / f"{marker}-3")
        time.sleep(1.0)
    assert not [a for a in agent.of_rule("Marker opened") if a["output_fields"]["fd.name"].endswith("-3")]
    assert "1 reloads (1 failed)" in agent.stderr_lines[-1]


def test_sighup_reloads(tmp_path):
    marker = f"andon-e2e-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(MKDIR_RULE.format(marker=marker))
    with AgentRun(["--rules", str(rules), "--no-watch"]) as agent:
        rules.write_text(OPEN_RULE.format(marker=marker))
        time.sleep(1.5)
        assert not any("reloaded" in line for line in agent.stderr_lines)  # --no-watch: no reload yet
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        wait_stderr(agent, "reloaded: 1 rules")
        touch_and_read(tmp_path / f"{marker}-x")
        agent.wait_for("Marker opened")


def test_replay_of_a_capture_raises_the_live_alert(tmp_path):
    marker = f"andon-e2e-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(OPEN_RULE.format(marker=marker))
    cap = tmp_path / "c.andoncap"
    capture = subprocess.Popen(ANDON + ["capture", "-w", str(cap), "--duration", "6"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with AgentRun(["--rules", str(rules)]) as agent:
            time.sleep(1.0)  # the capture attached meanwhile (it started first)
            touch_and_read(tmp_path / f"{marker}.txt")
            live = agent.wait_for("Marker opened", lambda a: a["output_fields"]["proc.name"] == "cat")
    finally:
        _, err = capture.communicate(timeout=60)
    assert capture.returncode == 0, err
    p = subprocess.run(ANDON + ["run", "-r", str(cap), "--rules", str(rules), "-o", "json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    replayed = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    same = [a for a in replayed if a["output_fields"]["fd.name"] == live["output_fields"]["fd.name"]
            and a["output_fields"]["proc.name"] == "cat"]
    assert len(same) == 1
    # the same event, the same alert. Times may differ by well under a millisecond: each
    # process measures the wall-minus-boot clock offset itself (two clock reads)
    r = same[0]
    assert r["output"].split(" ", 1)[1] == live["output"].split(" ", 1)[1]
    assert abs(r["output_fields"].pop("evt.time") - live["output_fields"].pop("evt.time")) < 1_000_000
    assert r["output_fields"] == live["output_fields"]
    assert (r["rule"], r["priority"], r["tags"]) == (live["rule"], live["priority"], live["tags"])


def test_config_file_output_and_count(tmp_path):
    """One agent, both jobs: rules alerts to a file, and HTTP rows into the data directory."""
    from andon.store.catalog import Catalog

    marker = f"andon-e2e-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(OPEN_RULE.format(marker=marker))
    out = tmp_path / "alerts.jsonl"
    data = tmp_path / "data"
    cfg = tmp_path / "andon.yaml"
    cfg.write_text(
        f"rules_files: [{rules}]\njson_output: true\nstdout_output: {{enabled: false}}\n"
        f"file_output: {{enabled: true, keep_alive: true, filename: {out}}}\n"
        f"observe: {{protocols: [http]}}\nstore: {{data_dir: {data}}}\n"
    )
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = subprocess.Popen(ANDON + ["run", "-c", str(cfg), "--count", "2", "--duration", "60"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    asked = 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{marker}", timeout=5).read()
            except urllib.error.HTTPError as e:
                assert e.code == 404
                e.read()  # the whole response: a client that stops after the head has no complete reply
                asked += 1
            except OSError:
                pass  # the server is still starting
            touch_and_read(tmp_path / f"{marker}-{uuid.uuid4().hex[:4]}")
            if p.poll() is not None:
                break
        stdout, stderr = p.communicate(timeout=30)
    finally:
        web.kill()
        web.wait()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert stdout == ""  # stdout output off
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) >= 2 and all(a["rule"] == "Marker opened" for a in lines)
    closing = [x for x in stderr.splitlines() if " alerts" in x]
    assert closing and " 2 alerts" in closing[-1]
    assert any(x.startswith("andon: observe: http into") for x in stderr.splitlines())
    # the requests made while the rules ran are rows of http_events, both ends
    cat = Catalog(data)
    rows = cat.con.execute(f"SELECT trace_role, req_path, resp_status FROM http_events "
                           f"WHERE local_port = {port} OR remote_port = {port}").fetchall()
    assert asked >= 1
    assert {(2, f"/{marker}", 404), (1, f"/{marker}", 404)} <= set(rows)
