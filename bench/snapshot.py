"""Freeze the andon code a benchmark measures, so every run of one benchmark measures the same code.

The consumer process is started afresh for every run, and the working tree may change
while a benchmark takes its 15 minutes (``make bpf``, an edit to the ring reader). So at
the start we copy ``src/andon`` and ``build/bpf`` into ``build/bench/snapshot/`` and start
every consumer with ``PYTHONPATH`` and ``ANDON_BPF_DIR`` pointing there; the JSON records
the commit, whether the copied trees differed from it, and a hash of each BPF object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAP = ROOT / "build" / "bench" / "snapshot"
RAW_TP_DIR = SNAP / "bpf-rawtp"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def freeze() -> dict:
    if SNAP.exists():
        shutil.rmtree(SNAP)
    shutil.copytree(ROOT / "src" / "andon", SNAP / "src" / "andon", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "build" / "bpf", SNAP / "bpf")
    # the same objects less the tp_btf one: LiveSource then falls back to raw_tp/sys_exit,
    # which lets cost.py compare the two hooks with everything else equal
    shutil.copytree(SNAP / "bpf", RAW_TP_DIR)
    (RAW_TP_DIR / "syscalls" / "sys_exit_btf.bpf.o").unlink(missing_ok=True)
    objects = {str(p.relative_to(SNAP / "bpf")): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
               for p in sorted((SNAP / "bpf").rglob("*.bpf.o"))}
    info = {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "commit_subject": _git("log", "-1", "--format=%s"),
        # uncommitted changes in what the snapshot holds (the objects are built from bpf/)
        "dirty": _git("status", "--porcelain", "--", "src/andon", "bpf").splitlines(),
        "bpf_objects": objects,
        "path": str(SNAP),
    }
    (SNAP / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def info() -> dict:
    """What freeze() recorded for the snapshot in place."""
    return json.loads((SNAP / "info.json").read_text())


def env(bpf_dir: Path | None = None) -> dict[str, str]:
    """Environment for a consumer process that must import the frozen copy."""
    if not SNAP.exists():
        raise RuntimeError("no code snapshot: call snapshot.freeze() first")
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SNAP / "src") + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["ANDON_BPF_DIR"] = str(bpf_dir or SNAP / "bpf")
    return e


def source_at(rev: str, dest: str) -> str:
    """Extract ``src/andon`` of git revision ``rev`` under ``dest``; returns the directory to put
    on ``PYTHONPATH`` (the baseline of the benchmarks that compare two revisions' Python)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/andon"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return os.path.join(dest, "src")
