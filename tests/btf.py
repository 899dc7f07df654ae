"""The wire structs a built BPF object really has, read from its BTF with bpftool.

ABI tests compare these against the Python struct formats, so C and Python cannot drift
apart unnoticed (the idea of cilium/tetragon's alignchecker).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Member = tuple[str, int, int]  # name, offset, size


def need(obj: Path) -> None:
    """Skip (with the reason) when bpftool or the built object is missing."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed (make setup installs it)")
    if not obj.exists():
        pytest.skip(f"{obj.name} is not built: run `make bpf`")


@functools.cache
def _dump(path: Path) -> dict[int, dict]:
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(path), "-j"], capture_output=True, text=True)
    assert out.returncode == 0, f"bpftool failed on {path}: {out.stderr}"
    return {t["id"]: t for t in json.loads(out.stdout)["types"]}


def structs(path: Path, wanted: Callable[[str], bool]) -> dict[str, tuple[int, list[Member]]]:
    """Struct name -> (size, [(member, offset, size)]) for every struct whose name ``wanted``."""
    types = _dump(path)

    def size_of(tid: int) -> int:
        t = types[tid]
        kind = t["kind"]
        if kind in ("INT", "STRUCT", "UNION", "ENUM", "ENUM64", "FLOAT"):
            return t["size"]
        if kind == "PTR":
            return 8
        if kind == "ARRAY":
            return t["nr_elems"] * size_of(t["type_id"])
        if kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            return size_of(t["type_id"])
        raise AssertionError(f"unexpected BTF kind {kind} in a wire struct")

    out = {}
    for t in types.values():
        if t["kind"] == "STRUCT" and wanted(t.get("name", "")):
            members = []
            for m in t["members"]:
                assert m["bits_offset"] % 8 == 0 and not m.get("bitfield_size"), f"bitfield {m['name']} in {t['name']}"
                members.append((m["name"], m["bits_offset"] // 8, size_of(m["type_id"])))
            out[t["name"]] = (t["size"], members)
    return out
