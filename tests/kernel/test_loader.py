"""Loader errors are typed and carry what the user needs."""

import subprocess
from pathlib import Path

import pytest

from andon.bpf.object import BpfObject
from andon.errors import VerifierError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rejected_obj(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpf") / "rejected.bpf.o"
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", f"-I{ROOT / 'build/include'}",
         "-c", str(Path(__file__).parent / "data/rejected.bpf.c"), "-o", str(out)],
        check=True,
    )
    return out


def test_verifier_rejection_carries_the_log(rejected_obj):
    with BpfObject(rejected_obj) as obj:
        with pytest.raises(VerifierError) as ei:
            obj.load()
    e = ei.value
    assert e.program == "unchecked"
    # the kernel's own words for a possibly-NULL map value dereference
    assert "map_value_or_null" in e.log
    assert "verifier rejected program 'unchecked'" in str(e)
    assert "last lines of the verifier log" in str(e)


def test_missing_object_file_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bpf"):
        BpfObject(tmp_path / "nope.bpf.o")
