"""The socket data wire ABI: the BTF of net/sockdata.bpf.o against the struct formats of
andon.events.sockdata, member by member (name, offset, size), as tests/unit/test_abi.py
does for the security event ring. Needs bpftool and the built object, not root."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

import btf as btf_reader
from andon.events import sockdata as sd
from andon.events.live import default_bpf_dir

OBJ = default_bpf_dir() / "net/sockdata.bpf.o"


@pytest.fixture(scope="module")
def btf() -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    btf_reader.need(OBJ)
    return btf_reader.structs(OBJ, lambda name: name.startswith("andon_sd_"))


def _layout(fmt: struct.Struct, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, offset, size) of each item of a '<' format, one name per item."""
    import re

    items = re.findall(r"(\d*)([xcbBhHiIqQs])", fmt.format[1:])
    assert len(items) == len(names), (fmt.format, names)
    out, off = [], 0
    for (count, code), name in zip(items, names):
        size = struct.calcsize("<" + count + code)
        out.append((name, off, size))
        off += size
    return out


def _flatten(btf, name: str) -> list[tuple[str, int, int]]:
    """Members with the nested header (member `h`) expanded in place."""
    out = []
    for m, off, size in btf[name][1]:
        if m == "h":
            out += [(hm, off + hoff, hsize) for hm, hoff, hsize in btf["andon_sd_hdr"][1]]
        else:
            out.append((m, off, size))
    return out


def test_header(btf):
    assert btf["andon_sd_hdr"][0] == sd.HDR.size == 32
    assert btf["andon_sd_hdr"][1] == _layout(sd.HDR, sd.HDR_FIELDS)


@pytest.mark.parametrize(
    "cname,fmt,fields",
    [
        ("andon_sd_open", sd.OPEN, sd.OPEN_FIELDS),
        ("andon_sd_close", sd.CLOSE, sd.CLOSE_FIELDS),
        ("andon_sd_lib", sd.LIB, sd.LIB_FIELDS),
    ],
)
def test_records(btf, cname, fmt, fields):
    assert btf[cname][0] == fmt.size
    assert _flatten(btf, cname) == _layout(fmt, sd.HDR_FIELDS + fields)


def test_data_record_and_its_bytes(btf):
    size, members = btf["andon_sd_data"]
    # data[] is a flexible array: it starts where the fixed part ends, at the format's size
    assert size == sd.DATA.size
    assert members[-1][:2] == ("data", sd.DATA.size)
    assert _flatten(btf, "andon_sd_data")[:-1] == _layout(sd.DATA, sd.HDR_FIELDS + sd.DATA_FIELDS)


def test_config(btf):
    assert btf["andon_sd_config"][0] == sd.CONFIG.size
    assert btf["andon_sd_config"][1] == _layout(sd.CONFIG, sd.CONFIG_FIELDS)


# -- constants: the #defines and enums of the header against the Python names -------------------

HEADER = Path(__file__).resolve().parents[2] / "bpf/abi/sockdata.h"


def _defines(prefix: str) -> dict[str, int]:
    text = HEADER.read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(rf"#define ({prefix}\w+)\s+(0x[0-9a-fA-F]+|\d+)", text)}


def test_data_flags():
    assert _defines("SD_F_") == {"SD_F_TRUNCATED": sd.F_TRUNCATED, "SD_F_ADDR": sd.F_ADDR,
                                 "SD_F_ENCRYPTED": sd.F_ENCRYPTED, "SD_F_NOCOPY": sd.F_NOCOPY}


def test_nocopy_calls_are_the_programs_numbers():
    from andon.events.nr_x86_64 import SYSCALL_NAMES
    prog = (HEADER.parents[1] / "net/sockdata.bpf.c").read_text()
    nrs = {m[1]: int(m[2]) for m in re.finditer(r"#define NR_(SENDFILE|SPLICE) (\d+)", prog)}
    assert nrs == {"SENDFILE": sd.NR_SENDFILE, "SPLICE": sd.NR_SPLICE}
    assert (SYSCALL_NAMES[sd.NR_SENDFILE], SYSCALL_NAMES[sd.NR_SPLICE]) == ("sendfile", "splice")


def test_tls_calls():
    names = {"SD_TLS_READ": "SSL_read", "SD_TLS_WRITE": "SSL_write", "SD_TLS_READ_EX": "SSL_read_ex",
             "SD_TLS_WRITE_EX": "SSL_write_ex", "SD_TLS_READ_SHARED": "SSL_read/_ex",
             "SD_TLS_WRITE_SHARED": "SSL_write/_ex", "SD_TLS_GO_READ": "tls.(*Conn).Read",
             "SD_TLS_GO_WRITE": "tls.(*Conn).Write"}
    assert {sd.TLS_CALLS[v]: k for k, v in _defines("SD_TLS_").items()} == {v: k for k, v in names.items()}


def test_stat_names_follow_enum_sd_stat():
    body = HEADER.read_text().split("enum sd_stat {", 1)[1].split("};", 1)[0]
    entries = [(m[1], int(m[2])) for m in re.finditer(r"SD_STAT_(\w+) = (\d+)", body)]
    assert entries[-1] == ("MAX", len(sd.STAT_NAMES))
    assert [v for _, v in entries] == list(range(len(entries)))
    assert tuple(n.lower() for n, _ in entries[:-1]) == sd.STAT_NAMES
