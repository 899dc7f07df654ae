"""Run the real `andon run` agent in a test and read its alerts.

The agent's contract, which these helpers rely on:

- ``andon run --rules FILE [--rules FILE ...] -o json`` writes one Falco JSON alert per line
  on stdout (keys ``time rule priority source hostname output output_fields tags``);
- once its programs are attached and its process table is seeded it writes a line
  starting with ``andon: ready`` on stderr;
- SIGINT stops it cleanly (exit 0) with a closing summary on stderr.

Usage::

    with AgentRun(["--rules", STABLE]) as agent:
        do_the_thing()
        alert = agent.wait_for("Clear Log Activities", lambda a: a["output_fields"]["fd.name"] == path)
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
from corpus import STABLE_RULES  # noqa: E402
DEFAULT_RULES = ROOT / "src" / "andon" / "rules" / "data" / "andon_rules.yaml"
ANDON = [sys.executable, "-m", "andon"]

Alert = dict[str, Any]


class AgentRun:
    """One `andon run` process; a context manager that always stops it."""

    def __init__(self, args: list[str], *, ready_timeout: float = 30.0, env: dict[str, str] | None = None,
                 observe: bool = False) -> None:
        # the rules' tests leave protocol tracing off (tests/e2e/test_observe.py covers it)
        self.args = ["run", "-o", "json", *([] if observe else ["--no-observe"]), *args]
        self.ready_timeout = ready_timeout
        self.env = env
        self.alerts: list[Alert] = []
        self.stderr_lines: list[str] = []
        self.returncode: int | None = None
        self._q: queue.Queue[Alert] = queue.Queue()
        self._ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    # -- lifetime --------------------------------------------------------------------------
    def __enter__(self) -> AgentRun:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(
            ANDON + self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(self.ready_timeout):
            self.stop()
            raise AssertionError("andon run did not become ready:\n" + "\n".join(self.stderr_lines[-30:]))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> int | None:
        p = self.proc
        if p is None or p.poll() is not None:
            self.returncode = p.returncode if p is not None else None
            return self.returncode
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        time.sleep(0.1)  # let the readers drain
        self.returncode = p.returncode
        return self.returncode

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            a = json.loads(line)
            self.alerts.append(a)
            self._q.put(a)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if line.startswith("andon: ready"):
                self._ready.set()

    # -- alerts ----------------------------------------------------------------------------
    def wait_for(self, rule: str, match: Callable[[Alert], bool] = lambda a: True, timeout: float = 15.0) -> Alert:
        """The first alert of ``rule`` (seen before or after this call) for which ``match`` is true."""
        for a in list(self.alerts):
            if a.get("rule") == rule and match(a):
                return a
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                seen = sorted({a.get("rule", "?") for a in self.alerts})
                raise AssertionError(
                    f"no alert of rule {rule!r} within {timeout}s; rules alerted: {seen}\n"
                    + "\n".join(self.stderr_lines[-15:])
                )
            try:
                a = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError("andon run exited:\n" + "\n".join(self.stderr_lines[-30:])) from None
                continue
            if a.get("rule") == rule and match(a):
                return a

    def settle(self, seconds: float = 1.0) -> list[Alert]:
        """Wait a little for stragglers, then return every alert so far."""
        time.sleep(seconds)
        return list(self.alerts)

    def of_rule(self, rule: str) -> list[Alert]:
        return [a for a in self.alerts if a.get("rule") == rule]
