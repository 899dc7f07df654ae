"""Run the real agent for protocol tracing (`andon run --no-rules`) in a test and read its tables.

The agent's contract, which these helpers rely on:

- ``andon run --no-rules --data-dir DIR [-c CONFIG]`` traces sockets into Pixie's tables,
  Parquet segments under DIR/<table>/;
- once the sensor is attached it writes ``andon: observe: <protocols> into DIR (<hook>); no rules``
  on stderr;
- DIR/control.sock answers ``flush``, so a query sees rows parsed so far;
- SIGINT stops it (exit 0) with a closing line
  ``andon: observe: 5 conn_stats, 3 http_events (2 server side), ...; N connections; L records lost, ...``.

Usage::

    with ObserveAgent(tmp_path / "data") as agent:
        run_clients()
        rows = agent.wait_rows("SELECT ... FROM http_events WHERE local_port = 8080", 20)
    assert agent.closing_rows()["http_events"] >= 20

The machine is shared: the sensor sees every process's traffic, so every query must pick
the test's own rows (its server port, its client pid).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
ANDON = [sys.executable, "-m", "andon"]
CLOSING = re.compile(r"^andon: observe: (?P<tables>.*?); (?P<conns>\d+) connections; (?P<lost>\d+) records lost")


class ObserveAgent:
    """One `andon run --no-rules` process; a context manager that always stops it."""

    def __init__(self, data_dir: Path, *, config: str = "", ready_timeout: float = 40.0) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.ready_timeout = ready_timeout
        self.stderr_lines: list[str] = []
        self.returncode: int | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    # -- lifetime --------------------------------------------------------------------------
    def __enter__(self) -> ObserveAgent:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*ANDON, "run", "--no-rules", "--data-dir", str(self.data_dir)]
        if self.config:
            cfg = self.data_dir.parent / "andon-observe.yaml"
            cfg.write_text(self.config)
            argv += ["-c", str(cfg)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("andon run --no-rules did not become ready:\n" + self.log_tail())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT, wait for the closing line; SIGKILL if it does not stop in ``timeout``."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.returncode = p.returncode
        return self.returncode

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            if line.startswith("andon: observe:") and line.endswith("no rules"):
                self._ready.set()

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr_lines[-n:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- tables ----------------------------------------------------------------------------
    def sql(self, query: str) -> list[dict[str, Any]]:
        """Ask the agent to flush, then run SQL over DIR in this process (what `andon query
        --sql` does, without a Python start-up per poll)."""
        from andon.query import runner
        from andon.store.catalog import Catalog
        from andon.store.control import request_flush

        request_flush(self.data_dir, timeout=2.0)
        catalog = Catalog(self.data_dir)
        try:
            return runner.run_sql(query, catalog)[0].dicts()
        finally:
            catalog.close()

    def wait_rows(self, query: str, n: int, *, timeout: float = 15.0, settle: float = 0.6,
                  until: Callable[[list[dict[str, Any]]], bool] | None = None) -> list[dict[str, Any]]:
        """Poll ``query`` until it returns at least ``n`` rows (and ``until(rows)`` holds, when
        given): the agent parses behind the clients. Then once more after ``settle`` seconds,
        so that rows beyond ``n`` show. After ``timeout``, whatever the query returns."""
        deadline = time.monotonic() + timeout
        rows = self.sql(query)
        while len(rows) < n or (until is not None and not until(rows)):
            if time.monotonic() > deadline:
                break
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("andon run exited:\n" + self.log_tail())
            time.sleep(0.25)
            rows = self.sql(query)
        if len(rows) >= n and (until is None or until(rows)) and settle:
            time.sleep(settle)
            rows = self.sql(query)
        return rows

    def query_cli(self, *args: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """``andon query --data-dir DIR ARGS -o json``, the real CLI: its list of tables."""
        r = subprocess.run([*ANDON, "query", "--data-dir", str(self.data_dir), *args, "-o", "json"],
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if r.returncode != 0:
            raise AssertionError(f"andon query {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
        return json.loads(r.stdout)

    # -- closing line ----------------------------------------------------------------------
    def closing_line(self) -> str:
        for line in reversed(self.stderr_lines):
            if CLOSING.match(line):
                return line
        raise AssertionError("no closing line from andon run:\n" + self.log_tail())

    def closing_rows(self) -> dict[str, int]:
        """Rows per table from the closing line (``59 conn_stats, 3 http_events``)."""
        tables = CLOSING.match(self.closing_line())["tables"]
        if tables == "no rows":
            return {}
        out = {}
        for part in tables.split(", "):  # "3 http_events (2 server side)"
            n, name = part.split(" ", 1)
            out[name.split(" (", 1)[0]] = int(n)
        return out

    def closing_lost(self) -> int:
        """Records the sensor lost (ring full), from the closing line."""
        return int(CLOSING.match(self.closing_line())["lost"])
