"""TlsAttacher's bookkeeping of the sensor's libssl mapping records, over a fake /proc (no
BPF: the probing itself is tests/kernel/test_sockdata_tls.py's)."""

from __future__ import annotations

from pathlib import Path

from andon.events import tls
from andon.events.tls import TlsAttacher


def _proc(tmp_path: Path, pid: int, maps: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "maps").write_text(maps)
    return proc


def _attacher(proc: Path, monkeypatch) -> tuple[TlsAttacher, list[tuple[str, int]]]:
    a = TlsAttacher(obj=None, proc=proc, host_dirs=())  # type: ignore[arg-type]
    tried: list[tuple[str, int]] = []
    monkeypatch.setattr(a, "_attach", lambda path, pid: tried.append((path, pid)))
    return a, tried


PID = 4_200_000  # above any pid_max, so never this process's own pid (which on_mapped skips)

MAPS = ("7f0000000000-7f0000001000 r--p 00000000 fe:00 42 /opt/app/lib/libssl.so.3\n"
        "7f0000001000-7f0000002000 r-xp 00001000 fe:00 42 /opt/app/lib/libssl.so.3\n"
        "7f0000003000-7f0000004000 r-xp 00001000 fe:00 43 /usr/lib/libssl3.so\n")


def test_a_mapping_record_reads_that_process_once_per_file(tmp_path, monkeypatch):
    proc = _proc(tmp_path, PID, MAPS)
    a, tried = _attacher(proc, monkeypatch)
    # the dynamic loader's mapping of libssl: its maps are read, its OpenSSL libssl tried
    # (NSS's libssl3.so is another library)
    a.on_mapped(PID, 0, 42)
    assert tried == [(f"{proc}/{PID}/root/opt/app/lib/libssl.so.3", PID)]
    assert a.maps_read == 1
    # the same file mapped again by the same process (dlopen/dlclose in a loop): not read again
    for _ in range(100):
        a.on_mapped(PID, 0, 42)
    assert a.maps_read == 1 and len(tried) == 1
    # another file in the same process is read
    a.on_mapped(PID, 0, 77)
    assert a.maps_read == 2
    # the rescan does not read a pid a mapping record already read
    a.rescan()
    assert a.maps_read == 2


def test_the_remembered_mappings_are_bounded(tmp_path, monkeypatch):
    proc = _proc(tmp_path, PID, "")
    a, _ = _attacher(proc, monkeypatch)
    monkeypatch.setattr(tls, "MAPPED_MAX", 8)
    for ino in range(1, 21):
        a.on_mapped(PID, 0, ino)
    assert a.maps_read == 20
    assert 0 < len(a._mapped) <= 8
    a.on_mapped(PID, 0, 20)  # still remembered after the last clear
    assert a.maps_read == 20


def test_a_fifo_where_the_maps_name_libssl_is_skipped_without_blocking(tmp_path):
    """Whoever owns a process's root can put a FIFO at the path its maps name: opening it
    without O_NONBLOCK would block the reader for good. It is skipped, and nothing is probed."""
    import os
    import threading

    lib = tmp_path / "root" / "lib"
    lib.mkdir(parents=True)
    os.mkfifo(lib / "libssl.so.3")
    proc = tmp_path / "proc"
    (proc / str(PID)).mkdir(parents=True)
    (proc / str(PID) / "maps").write_text(f"7f0000001000-7f0000002000 r-xp 00001000 fe:00 42 {lib}/libssl.so.3\n")
    os.symlink("/", proc / str(PID) / "root")
    a = TlsAttacher(obj=None, proc=proc, host_dirs=())  # type: ignore[arg-type]  # a probe would fail on None
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(a.on_mapped(PID, 0, 42)), daemon=True)
    t.start()
    t.join(5)
    assert got == [0], "on_mapped blocked on the FIFO"
    assert a.files == {} and a.failed == {} and a.maps_read == 1


def test_the_openssl_files_a_process_maps_are_told_from_others_by_name(tmp_path, monkeypatch):
    names = {
        "/usr/lib/x86_64-linux-gnu/libssl.so.3": True,
        "/opt/old/lib/libssl.so.1.1": True,
        # a Python wheel's bundled copy (auditwheel names it after its hash)
        "/venv/lib/python3.11/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3": True,
        "/usr/lib/libssl3.so": False,  # NSS
        "/usr/lib/libssl.so.3 (deleted)": False,  # replaced on disk: nothing to open
        "/opt/x/libssl-notahash.so.3": False,
        "/usr/lib/libssl.so": False,  # the development symlink, never mapped by its soname
    }
    maps = "".join(f"7f00000{i:02x}000-7f00000{i:02x}fff r-xp 00001000 fe:00 {50 + i} {n}\n"
                   for i, n in enumerate(names))
    proc = _proc(tmp_path, PID, maps)
    a, tried = _attacher(proc, monkeypatch)
    a.on_mapped(PID, 0, 50)
    assert sorted(p for p, _ in tried) == sorted(f"{proc}/{PID}/root{n}" for n, ok in names.items() if ok)


def test_an_executable_that_exports_openssl_is_probed_and_each_file_looked_at_once(tmp_path, monkeypatch):
    """node (NodeSource's and nodejs.org's builds) has OpenSSL linked in and exports it: a
    rescan tries the executable itself; each executable file is read once, whatever many
    processes run it."""
    exe = tmp_path / "bin" / "node"
    exe.parent.mkdir()
    exe.write_bytes(b"elf")
    other = tmp_path / "bin" / "python3"
    other.write_bytes(b"elf")
    proc = tmp_path / "proc"
    pids = {PID: exe, PID + 1: exe, PID + 2: other}
    for pid, target in pids.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "maps").write_text("")
        (proc / str(pid) / "exe").symlink_to(target)
    a, tried = _attacher(proc, monkeypatch)
    looked: list[str] = []
    monkeypatch.setattr(tls, "exports_openssl", lambda p: looked.append(p) or Path(p).resolve() == exe)
    a.rescan()
    assert tried == [(f"{proc}/{pid}/root{exe}", pid) for pid in (PID, PID + 1)]
    assert sorted(Path(p).resolve().name for p in looked) == ["node", "python3"]  # once per file
    a.rescan()  # nothing new
    assert len(tried) == 2 and len(looked) == 2


def test_exports_openssl_reads_the_dynamic_symbols(tmp_path):
    import shutil as sh

    from andon.events.libssl_code import exports_openssl
    assert exports_openssl("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    assert not exports_openssl(sh.which("python3") or "/usr/bin/python3")  # links libssl, exports none of it
    assert not exports_openssl("/usr/lib/x86_64-linux-gnu/libcrypto.so.3")  # OpenSSL, but not SSL_read
    (tmp_path / "x").write_bytes(b"\x7fELF" + bytes(100))
    assert not exports_openssl(str(tmp_path / "x"))
    assert not exports_openssl(str(tmp_path / "missing"))


def test_a_go_program_with_crypto_tls_is_probed_once_per_file_and_a_refused_one_says_why(tmp_path, monkeypatch):
    """Go programs carry their own TLS: an executable that go_tls finds probes in is tried (as
    node is), each file looked at once; one it refuses (a Go before the register ABI) is
    remembered as failed with the reason, and not looked at again; with the Go programs not
    loaded (go=False) no executable is read for Go at all."""
    from andon.events.go_tls import Func, GoTls, GoTlsError

    bins = tmp_path / "bin"
    bins.mkdir()
    good, old, plain = bins / "svc", bins / "legacy", bins / "cat"
    for f in (good, old, plain):
        f.write_bytes(b"elf")
    proc = tmp_path / "proc"
    pids = {PID: good, PID + 1: good, PID + 2: old, PID + 3: plain}
    for pid, target in pids.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "maps").write_text("")
        (proc / str(pid) / "exe").symlink_to(target)
    found = GoTls("go1.21.0", Func(10, 0, copy=20), Func(30, 0))
    looked: list[str] = []

    def fake_go_tls(p: str):
        looked.append(Path(p).resolve().name)
        name = Path(p).resolve()
        if name == old:
            raise GoTlsError("built with go1.16.15: the probes read Go's register ABI, Go 1.17+")
        return found if name == good else None

    monkeypatch.setattr(tls, "exports_openssl", lambda p: False)
    monkeypatch.setattr(tls, "go_tls", fake_go_tls)
    a, tried = _attacher(proc, monkeypatch)
    a.rescan()
    assert tried == [(f"{proc}/{pid}/root{good}", pid) for pid in (PID, PID + 1)]
    assert sorted(looked) == ["cat", "legacy", "svc"]  # once per file
    assert list(a.failed.values()) == ["Go's crypto/tls: built with go1.16.15: the probes read Go's register ABI, "
                                       "Go 1.17+"]
    assert a._go[(good.stat().st_dev, good.stat().st_ino)] is found  # handed to the probing
    a.rescan()
    assert len(tried) == 2 and len(looked) == 3

    b = TlsAttacher(obj=None, proc=proc, host_dirs=(), go=False)  # type: ignore[arg-type]
    monkeypatch.setattr(b, "_attach", lambda path, pid: tried.append((path, pid)))
    looked.clear()
    b.rescan()
    assert looked == [] and len(tried) == 2
