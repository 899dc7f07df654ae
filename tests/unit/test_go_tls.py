"""Finding where Go's crypto/tls is probed in a Go executable (src/andon/events/go_tls.py):
on the test program tests/go/tlsdemo as Go built it (`make test-go`), checked against what
binutils' readelf says of the same file, and on files that must give nothing or an error."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from andon.events.go_tls import GoTlsError, _decode, go_tls, go_tls_of

GO_DEMO = Path(__file__).resolve().parents[2] / "build/go/tlsdemo"


@pytest.fixture(scope="module")
def demo() -> bytes:
    if not GO_DEMO.exists():
        pytest.skip(f"{GO_DEMO} is not built: make test-go (needs golang-go, scripts/setup.sh)")
    return GO_DEMO.read_bytes()


def _readelf_symbols(path: Path) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["readelf", "-sW", str(path)], check=True, capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].endswith(":") and f[0] != "Num:":
            syms[f[7]] = (int(f[1], 16), int(f[2], 16) if f[2].startswith("0x") else int(f[2]))
    return syms


def _vaddr_to_offset(path: Path, vaddr: int) -> int:
    out = subprocess.run(["readelf", "-lW", str(path)], check=True, capture_output=True, text=True).stdout
    for m in re.finditer(r"LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)", out):
        off, va, size = (int(x, 16) for x in m.groups())
        if va <= vaddr < va + size:
            return vaddr - va + off
    raise AssertionError(f"{vaddr:#x} in no segment")


def test_the_demo_program_probes_match_its_symbols_and_code(demo):
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    found = go_tls(str(GO_DEMO))
    assert found is not None
    version = subprocess.run(["go", "version", str(GO_DEMO)], capture_output=True, text=True).stdout
    assert found.version.startswith("go1.") and found.version in version
    syms = _readelf_symbols(GO_DEMO)
    tcp = next(syms[n][0] for n in ("go.itab.*net.TCPConn,net.Conn", "go:itab.*net.TCPConn,net.Conn") if n in syms)
    unix = next(syms[n][0] for n in ("go.itab.*net.UnixConn,net.Conn", "go:itab.*net.UnixConn,net.Conn") if n in syms)
    memmove = syms["runtime.memmove"][0]
    for fn, name in ((found.read, "crypto/tls.(*Conn).Read"), (found.write, "crypto/tls.(*Conn).Write")):
        vaddr, size = syms[name]
        start = _vaddr_to_offset(GO_DEMO, vaddr)
        # the entry probe is on the stack check's jbe (short 0x76 or near 0f 86), a few bytes in
        assert 0 < fn.entry - start <= 9 and (demo[fn.entry] == 0x76 or demo[fn.entry:fn.entry + 2] == b"\x0f\x86")
        # the cookie: both itabs as signed 32-bit distances from the probed instruction
        probe_vaddr = vaddr + fn.entry - start
        lo, hi = fn.cookie & 0xFFFFFFFF, fn.cookie >> 32
        signed = lambda d: d - (1 << 32) if d >= 1 << 31 else d  # noqa: E731
        assert (probe_vaddr + signed(lo), probe_vaddr + signed(hi)) == (tcp, unix)
        dis = subprocess.run(["objdump", "-d", f"--start-address={vaddr:#x}", f"--stop-address={vaddr + size:#x}",
                              str(GO_DEMO)], check=True, capture_output=True, text=True).stdout
        calls = re.findall(r"^\s*([0-9a-f]+):\s.*\tcall\s+([0-9a-f]+) <runtime\.memmove>", dis, re.M)
        if name.endswith("Read"):
            # Read's plaintext at its one call of runtime.memmove (e8 rel32 to it), no ret probes
            assert len(calls) == 1 and int(calls[0][1], 16) == memmove
            assert fn.copy == _vaddr_to_offset(GO_DEMO, int(calls[0][0], 16)) and demo[fn.copy] == 0xE8
            assert start < fn.copy < start + size and fn.rets == ()
            rel = int.from_bytes(demo[fn.copy + 1:fn.copy + 5], "little", signed=True)
            assert vaddr + (fn.copy - start) + 5 + rel == memmove
        else:
            assert (fn.copy, fn.rets) == (None, ())  # Write: all of its argument, at the entry


def test_files_that_are_no_go_program_with_tls_give_none(demo, tmp_path):
    assert go_tls("/usr/lib/x86_64-linux-gnu/libssl.so.3") is None
    assert go_tls("/bin/sh") is None
    assert go_tls(str(tmp_path / "missing")) is None
    (tmp_path / "junk").write_bytes(b"\x7fELF" + b"\x00" * 100)
    assert go_tls(str(tmp_path / "junk")) is None
    # stripped of its symbols and of Go's function table too: nothing to find the functions by
    if shutil.which("objcopy"):
        bare = tmp_path / "bare"
        subprocess.run(["objcopy", "--strip-all", "--remove-section=.gopclntab", str(GO_DEMO), str(bare)], check=True)
        assert go_tls(str(bare)) is None
    # cut short anywhere: None or GoTlsError, or the whole file's answer when all it reads is
    # still there; never another exception, never other offsets
    whole = go_tls(str(GO_DEMO))
    answers = []
    for frac in (0.1, 0.5, 0.8, 0.95, 0.999):
        cut = tmp_path / f"cut{frac}"
        cut.write_bytes(demo[: int(len(demo) * frac)])
        try:
            answers.append(go_tls(str(cut)))
        except GoTlsError:
            answers.append("refused")
    assert set(answers) <= {None, "refused", whole} and answers[0] is None


def test_a_go_older_than_the_register_abi_is_refused_with_its_version(demo):
    i = demo.find(b"\xff Go buildinf:")
    assert i >= 0 and demo[i + 15] & 2
    n = demo[i + 32]
    ver = demo[i + 33:i + 33 + n]
    assert ver.startswith(b"go1.")
    old = ver.replace(ver[2:6], b"1.16", 1) if ver[4:6] != b"16" else ver
    patched = demo[: i + 33] + old + demo[i + 33 + n:]
    with pytest.raises(GoTlsError, match="go1.16.*Go 1.17"):
        go_tls_of(patched)


def test_a_function_that_does_not_decode_whole_or_has_no_ret_is_refused():
    # cmp 0x10(%r14),%rsp; jbe; ret: the entry probe on the jbe
    code = bytes.fromhex("493b6610" "7601" "c3")
    assert _decode(code, 0x1000) == (0x1004, (0x1006,), ())
    with pytest.raises(GoTlsError, match="no ret"):
        _decode(bytes.fromhex("4889c3" "e800000000"), 0x1000)  # mov; call
    with pytest.raises(GoTlsError, match="did not decode whole"):
        _decode(bytes.fromhex("c3" "0f0b0f") + b"\xff" * 3, 0x1000)  # ret, then bytes that are no instruction
    # int3 padding after the last instruction is fine; a function without the stack check is probed at its start
    assert _decode(bytes.fromhex("4889c3" "c3" "cccc"), 0x2000) == (0x2000, (0x2003,), ())
    # calls of memmove (at 0x3000 here) are told from other calls: two, at 0x2000 and 0x200a
    code = bytes.fromhex("e8fb0f0000" "e800000000" "e8f10f0000" "c3")
    assert _decode(code, 0x2000, memmove=0x3000) == (0x2000, (0x200F,), (0x2000, 0x200A))


def test_a_read_without_exactly_one_copy_is_probed_at_its_rets(demo, monkeypatch):
    """When Read's call of runtime.memmove is not found exactly once (another Go's inlining),
    the rets carry its plaintext instead: correct, and dearer (single-stepped)."""
    import andon.events.go_tls as g

    real = g._decode
    monkeypatch.setattr(g, "_decode", lambda code, vaddr, memmove=None: real(code, vaddr, None))
    found = go_tls(str(GO_DEMO))
    assert found is not None and found.read.copy is None and len(found.read.rets) >= 2
    assert all(demo[r] == 0xC3 for r in found.read.rets)
    assert (found.write.copy, found.write.rets) == (None, ())


def test_a_stripped_go_program_is_probed_from_its_function_table(demo, tmp_path):
    """Without ELF symbols (Go's linker with -ldflags="-s -w", as release builds often are, or
    binutils' strip), the functions come from Go's own function table (.gopclntab) and the
    itabs from .itablink, by their method pointers: the same probes as with the symbols."""
    built = GO_DEMO.parent / "tlsdemo-stripped"
    if not built.exists():
        pytest.skip(f"{built} is not built: make test-go")
    out = subprocess.run(["readelf", "-SW", str(built)], capture_output=True, text=True).stdout
    assert ".symtab" not in out and ".gopclntab" in out
    found = go_tls(str(built))
    assert found is not None and found.read.copy is not None and found.version.startswith("go1.")
    # the same program, so the same code: each probe where the unstripped file has it (the
    # files' layouts differ only after the code), the same itab distances
    whole = go_tls(str(GO_DEMO))
    assert whole is not None
    for a, b in ((found.read, whole.read), (found.write, whole.write)):
        assert (a.entry, a.copy, a.rets, a.cookie) == (b.entry, b.copy, b.rets, b.cookie)
    if shutil.which("strip"):
        stripped = tmp_path / "stripped"
        subprocess.run(["strip", "-o", str(stripped), str(GO_DEMO)], check=True)
        assert go_tls(str(stripped)) == whole
