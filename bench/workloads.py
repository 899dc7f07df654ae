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

``build N`` is not a C loop but a real build: ``make -B -j2`` of a generated C project of
N files (``build_project``), timed around make, the compilers' CPU included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH / "workloads"
OUT = BENCH.parent / "build" / "bench"
NAMES = ("openclose", "execloop", "syscall_rate", "openclose_rate")
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


PROJECT = OUT / "buildproj"

# one translation unit of the generated project: headers to parse and a few functions to
# optimise, so that each file keeps cc1 busy for a while, as real code does
_UNIT = """#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

struct rec{n} {{ int id; double w; char name[32]; struct rec{n} *next; }};

static int cmp{n}(const void *a, const void *b)
{{
    const struct rec{n} *x = a, *y = b;
    return (x->w > y->w) - (x->w < y->w);
}}

double work{n}(int count)
{{
    struct rec{n} *v = calloc((size_t)count, sizeof *v);
    double s = 0;
    if (!v)
        return -1;
    for (int i = 0; i < count; i++) {{
        v[i].id = i * {n};
        v[i].w = sin(i * 0.1 + {n}) * cos(i * 0.3);
        snprintf(v[i].name, sizeof v[i].name, "r%d-%d", {n}, i);
        v[i].next = i ? &v[i - 1] : NULL;
    }}
    qsort(v, (size_t)count, sizeof *v, cmp{n});
    for (int i = 0; i < count; i++)
        s += v[i].w * (double)strlen(v[i].name);
    free(v);
    return s;
}}
"""


def build_project(files: int) -> Path:
    """A C project of ``files`` units and a Makefile that links them, in build/bench/buildproj
    (written again only when the file count changes)."""
    stamp = PROJECT / f".files-{files}"
    if stamp.exists():
        return PROJECT
    if PROJECT.exists():
        shutil.rmtree(PROJECT)
    PROJECT.mkdir(parents=True)
    for n in range(files):
        (PROJECT / f"u{n:03d}.c").write_text(_UNIT.format(n=n))
    calls = "".join(f"    s += work{n}(100);\n" for n in range(files))
    decls = "".join(f"double work{n}(int);\n" for n in range(files))
    (PROJECT / "main.c").write_text(f"#include <stdio.h>\n{decls}int main(void)\n{{\n    double s = 0;\n{calls}"
                                    "    printf(\"%f\\n\", s);\n    return 0;\n}\n")
    (PROJECT / "Makefile").write_text(
        "CFLAGS = -O2 -g\nSRCS = $(wildcard *.c)\nOBJS = $(SRCS:.c=.o)\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS) -lm\n"
        "%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n"
    )
    stamp.touch()
    return PROJECT


def run(name: str, *args: object, timeout: float = 300) -> dict[str, float]:
    """Run a built workload; returns its key=value line as numbers, plus ``cpu_s`` (the
    workload's own user+system time, its children included, from wait4)."""
    if name == "build":
        return _run_build(int(args[0]), timeout)  # type: ignore[call-overload]
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


def _run_build(files: int, timeout: float) -> dict[str, float]:
    """``make -B -j2`` of the generated project: every unit compiled and linked again."""
    proj = build_project(files)
    argv = ["make", "-s", "-B", "-j2", "-C", str(proj)]
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic_ns()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        t1 = time.monotonic_ns()
        out.seek(0)
        text = out.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {text[-2000:]}")
    return {"iterations": float(files + 1), "elapsed_ns": float(t1 - t0), "cpu_s": ru.ru_utime + ru.ru_stime}
