"""Build and run the C workloads in bench/workloads/.

Each workload prints one line of ``key=value`` pairs and times itself (CLOCK_MONOTONIC
around its loop only), so process start-up and the harness's own Python never enter a
measurement. Binaries are built -O2 -static into build/bench/ on every run (it takes a
second): a static binary makes no loader opens, so the events it causes are exactly its
loop's.

The binaries are named ``ab-<workload>`` and execloop runs ``ab-true`` (a copy of
/bin/true): the kernel names a task after its executable, so these names (``comm``) pick
out the benchmark's own events on a machine where other programs open files and run
``true`` at the same time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH / "workloads"
OUT = BENCH.parent / "build" / "bench"
NAMES = ("openclose", "execloop", "syscall_rate")
PREFIX = "ab-"
TRUE = OUT / "ab-true"


def comm(name: str) -> str:
    """The comm the kernel gives a workload's process (executable name, 15 bytes at most)."""
    return (PREFIX + name)[:15]


def build(cc: str = "gcc") -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in NAMES:
        exe = OUT / (PREFIX + name)
        cmd = [cc, "-O2", "-static", "-Wall", "-Werror", "-o", str(exe), str(SRC / f"{name}.c")]
        rc = subprocess.run(cmd, capture_output=True, text=True)
        if rc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{rc.stderr}")
        out[name] = exe
    shutil.copy2("/bin/true", TRUE)
    out["true"] = TRUE
    return out


def run(name: str, *args: object, timeout: float = 300) -> dict[str, float]:
    """Run a built workload; returns its key=value line as numbers, plus ``cpu_s`` (the
    workload's own user+system time, its children included, from wait4)."""
    exe = OUT / (PREFIX + name)
    argv = [str(exe), *map(str, args)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        # a blocking wait4 (it gives the rusage), with a timer as the time bound
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if status and os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9:
            raise RuntimeError(f"{' '.join(argv)} did not finish in {timeout} s")
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {text}")
    line = text.strip().splitlines()[-1]
    res = {k: float(v) for k, v in (kv.split("=", 1) for kv in line.split())}
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    return res
