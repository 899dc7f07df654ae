"""The wire ABI: the BTF of the built BPF objects against the Python mirror in schema.py.

As cilium/tetragon's alignchecker does for Go, this reads the struct layouts the compiler
actually produced (``bpftool btf dump file X -j``) and compares every member's offset and
size with what the decoder assumes: the numpy ``EVENT_DTYPE``, the ``struct.Struct``
formats, and the bytes ``SyscallSpec.pack`` and ``pack_config`` write into maps. A field
added, resized or moved on one side only fails here, without root and without a kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import struct
from pathlib import Path

import pytest

import btf as btf_reader
from andon.events import schema
from andon.events.live import default_bpf_dir
from andon.events.schema import CONFIG, EVENT_DTYPE, EXEC_INFO, SOCK, ExecInfo, pack_config
from andon.events.syscalls import SyscallSpec

OBJECTS = ("process/sched.bpf.o", "syscalls/sys_exit.bpf.o", "syscalls/sys_exit_btf.bpf.o")
WIRE_STRUCTS = ("andon_event", "andon_sock", "andon_exec_info", "andon_sc_spec", "andon_config")

Member = tuple[str, int, int]  # name, byte offset, byte size


def _objects() -> list[Path]:
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed (make setup installs it)")
    paths = [default_bpf_dir() / rel for rel in OBJECTS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"BPF objects not built ({', '.join(missing)}): run `make bpf`")
    return paths


def _btf_structs(path: Path) -> dict[str, tuple[int, list[Member]]]:
    """The wire structs in the object's BTF: name -> (size, [(member, offset, size)])."""
    return btf_reader.structs(path, lambda name: name in WIRE_STRUCTS)


@functools.cache
def _btf(name: str) -> tuple[int, list[Member]]:
    """The layout of a wire struct; every object that has it must have the same one."""
    seen = {}
    for path in _objects():
        structs = _btf_structs(path)
        if name in structs:
            seen[path.name] = structs[name]
    assert seen, f"struct {name} is in the BTF of none of {OBJECTS} (is it only used through a cast?)"
    layouts = set(json.dumps(v) for v in seen.values())
    assert len(layouts) == 1, f"struct {name} differs between objects: {seen}"
    return next(iter(seen.values()))


_TOKEN = re.compile(r"(\d*)([xcbB?hHiIlLqQnNefdspP])")


def _format_members(fmt: str, names: list[str]) -> list[Member]:
    """The members a struct format lays out, one name per item ('6Q' and '16s' are one item
    each, as a C array member is; 'x' runs are padding members)."""
    assert fmt[0] == "<", "wire formats are little-endian and unpadded"
    items = _TOKEN.findall(fmt[1:])
    assert "".join(c + k for c, k in items) == fmt[1:], f"cannot tokenise {fmt!r}"
    # '6Q' is six values but one member; 'QQ' two members
    assert len(items) == len(names), f"{fmt!r} has {len(items)} members, names list has {len(names)}"
    out, off = [], 0
    for (count, code), name in zip(items, names):
        size = struct.calcsize("<" + count + code)
        out.append((name, off, size))
        off += size
    assert off == struct.calcsize(fmt)
    return out


def test_every_wire_struct_is_in_the_btf():
    for name in WIRE_STRUCTS:
        size, members = _btf(name)
        assert size > 0 and members


def test_andon_event_matches_event_dtype():
    size, members = _btf("andon_event")
    assert size == EVENT_DTYPE.itemsize == schema.REC_SMALL
    assert [m[0] for m in members] == list(EVENT_DTYPE.names)
    for name, off, msize in members:
        dt, dt_off = EVENT_DTYPE.fields[name][:2]
        assert off == dt_off, f"andon_event.{name}: C offset {off}, numpy {dt_off}"
        assert msize == dt.itemsize, f"andon_event.{name}: C size {msize}, numpy {dt.itemsize}"
    # data[] is the flexible tail: its offset is the header size both sides agree on
    data_off = dict((n, o) for n, o, _ in members)["data"]
    assert data_off == schema.HDR_SIZE == schema.HEADER_DTYPE.itemsize
    assert size - data_off == schema.DATA_SMALL


def test_andon_event_header_matches_the_decoders_struct_format():
    # decode_record unpacks the header with this format, not with EVENT_DTYPE
    names = ["ts", "cgroup_id", "ret", "args", "pid", "tid", "uid", "gid", "type", "nr", "size", "nstr", "flags", "comm"]
    _, members = _btf("andon_event")
    assert _format_members(schema._HDR.format, names) == members[:-1]


def test_andon_sock_matches_sock_format():
    names = ["family", "type", "proto", "sport", "dport", "from_arg", "saddr", "daddr"]
    size, members = _btf("andon_sock")
    assert size == SOCK.size
    assert _format_members(SOCK.format, names) == members


def test_andon_exec_info_matches_exec_info_format():
    names = [
        "cap_effective", "cap_permitted", "start_time", "exe_ctime", "exe_mtime",
        "ppid", "ruid", "rgid", "loginuid", "tty", "sid", "vpid", "pidns", "mntns", "netns", "exe_flags",
        "argv_len",
    ]  # fmt: skip
    fmt = EXEC_INFO.format.replace("QQQQQ", "Q" * 5)
    size, members = _btf("andon_exec_info")
    assert size == EXEC_INFO.size
    assert _format_members(fmt, names) == members
    # decode_record builds ExecInfo positionally from the unpacked tuple (argv_len aside)
    fields = [f.name for f in dataclasses.fields(ExecInfo)]
    assert fields[:16] == [m[0] for m in members[:16]] and members[16][0] == "argv_len"


def test_andon_sc_spec_matches_what_syscallspec_packs():
    size, members = _btf("andon_sc_spec")
    assert size == 16
    # distinct values in every slot, so a byte written one place off shows
    spec = SyscallSpec("sendto", "net", ("a",), str0=10, str1=11, sock_fd=12, sa=13, salen=14,
                       msghdr=15, how=16, fdpair=17)  # fmt: skip
    if any(f.name == "sa_local" for f in dataclasses.fields(SyscallSpec)):
        spec = dataclasses.replace(spec, sa_local=True)
    raw = spec.pack(False)
    assert len(raw) == size
    for name, off, msize in members:
        got = raw[off : off + msize]
        if name == "pad":
            assert got == bytes(msize), "padding must be zero"
            continue
        if name == "enabled":
            want = 0
        else:
            v = getattr(spec, name)  # every C member has a same-named SyscallSpec field
            want = 0xFF if v is None else int(v)
        assert msize == 1 and got[0] == want, f"andon_sc_spec.{name} at {off}: packed {got.hex()}, want {want:#x}"
    assert spec.pack(True)[dict((n, o) for n, o, _ in members)["enabled"]] == 1


def test_andon_config_matches_config_format_and_pack_config():
    names = ["self_tgid", "wakeup_bytes", "cgroup_subsys", "pad"]
    size, members = _btf("andon_config")
    assert size == CONFIG.size
    assert _format_members(CONFIG.format, names) == members
    raw = pack_config(0x11223344, 0x55667788, 0x99AABBCC)
    at = {n: int.from_bytes(raw[o : o + s], "little") for n, o, s in members}
    assert at == {"self_tgid": 0x11223344, "wakeup_bytes": 0x55667788, "cgroup_subsys": 0x99AABBCC, "pad": 0}
