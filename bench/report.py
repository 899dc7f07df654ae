"""Summaries, the machine description, tables and the JSON file every benchmark writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
console = Console(width=240)


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def machine() -> dict[str, object]:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    # --vm: the hypervisor (a container runtime inside the VM would otherwise win)
    virt = cmd("systemd-detect-virt", "--vm")
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "cpus": os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "mem_total": first("/proc/meminfo", "MemTotal"),
        "virtualization": virt if virt not in ("?", "none") else ("vm" if "hypervisor" in first("/proc/cpuinfo", "flags") else virt),
        "clocksource": first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "bpftrace": cmd("bpftrace", "--version"),
        "git_commit": cmd("git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"),
        "mitigations": first_line("/sys/devices/system/cpu/vulnerabilities/spectre_v2"),
    }


def first_line(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def write_json(kind: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def table(title: str, columns: list[str], rows: list[list[str]], styles: list[str | None] | None = None) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for i, r in enumerate(rows):
        t.add_row(*r, style=(styles[i] if styles else None))
    return t


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """The same rows as a GitHub table, for pasting into docs/performance.md."""
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
