"""Where in a Go executable the TLS uprobes go: crypto/tls.(*Conn).Read and .Write.

Go never calls OpenSSL: every Go program carries its own TLS, in its own executable, so a
Go service's HTTPS (or any TLS it speaks) is probed in that file. What is needed, from the
file alone:

* the two functions, and ``runtime.memmove``, by name in the ELF symbol table (``.symtab``;
  Go keeps it unless the program was linked with ``-s``, and then there is nothing to find:
  ``None``);
* the Go version, from the build information Go writes into every executable: the probes
  read arguments and results from registers, Go's register ABI, which is Go 1.17+ on amd64;
* each function's entry probe: at its first instruction, or, where the function starts with
  Go's stack check (``cmp`` against the goroutine's stack guard, then ``jbe`` to grow the
  stack), at that ``jbe``: the kernel emulates a conditional jump, and single-steps a
  ``cmp`` out of line (a second trap, ~13 us a hit on this machine). The check writes no
  register the probe reads;
* Write's plaintext is all of its argument, taken at the entry: nothing more;
* Read's plaintext is what it copies into its argument from the record it decrypted,
  ``copy(b, c.input...)``, compiled to one ``call runtime.memmove`` (to, from and count in
  rax, rbx and rcx): that call instruction is probed (a call is emulated). Where the
  decoded Read has not exactly one such call, every ``ret`` in it is probed instead,
  single-stepped, and the count taken from rax. Not a uretprobe: that replaces the return
  address on the goroutine's stack, and Go's runtime, which walks and moves those stacks,
  dies on it. The code is decoded instruction by instruction (capstone), from the symbol's
  start to its end; a function that does not decode whole is not probed;
* the run-time type words (itabs) of ``*net.TCPConn`` and ``*net.UnixConn`` as a
  ``net.Conn``: the entry programs read the socket's fd through the Conn only when its
  wrapped connection is one of those two (anything else is counted, not guessed at). They
  go to the program in the probe's cookie as distances from the probed instruction, so
  the same cookie holds wherever the executable is loaded.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from .libssl_code import ElfError, _offset, elf_layout

SHT_SYMTAB = 2
ET_EXEC, ET_DYN = 2, 3
READ = "crypto/tls.(*Conn).Read"
WRITE = "crypto/tls.(*Conn).Write"
MEMMOVE = "runtime.memmove"
# the itab symbol's name: go.itab.* up to Go 1.19, go:itab.* from 1.20
ITABS = {kind: (f"go.itab.*net.{kind}Conn,net.Conn", f"go:itab.*net.{kind}Conn,net.Conn") for kind in ("TCP", "Unix")}
BUILDINFO_MAGIC = b"\xff Go buildinf:"
MIN_GO = (1, 17)  # the register ABI on amd64
FUNC_MAX = 1 << 16  # bytes of a function decoded, at most


class GoTlsError(ValueError):
    """The file is a Go program with crypto/tls, but it cannot be probed (why)."""


@dataclass(frozen=True)
class Func:
    """One probed function: the file offset of its entry probe and the cookie of that probe
    (the two itabs' distances from its address); for Read, the offset of its call of
    runtime.memmove (``copy``) or, where there is none to be sure of, of each ret."""

    entry: int
    cookie: int
    copy: int | None = None
    rets: tuple[int, ...] = ()


@dataclass(frozen=True)
class GoTls:
    version: str  # e.g. "go1.19.8"
    read: Func
    write: Func


def go_version(data, buildinfo: int, loads: list[tuple[int, int, int]]) -> str | None:
    """The Go version an executable was built with, from its ``.go.buildinfo`` (at file offset
    ``buildinfo``): inline in the form Go 1.18+ writes, else (Go 1.13-1.17) through its
    pointer to the version string, followed in the file with ``loads`` (its PT_LOAD
    segments). None when it cannot be told."""
    i = buildinfo
    if data[i:i + 14] != BUILDINFO_MAGIC or i + 32 >= len(data):
        return None
    if data[i + 15] & 2:  # flags: strings inline, with varint lengths
        n, p = _uvarint(data, i + 32)
        return bytes(data[p:p + n]).decode("ascii", "replace") if 0 < n < 128 else None
    if data[i + 14] != 8:
        return None
    (hdr,) = struct.unpack_from("<Q", data, i + 16)  # -> a Go string header (pointer, length)
    off = _offset(loads, hdr)
    if off is None:
        return None
    ptr, n = struct.unpack_from("<QQ", data, off)
    off = _offset(loads, ptr)
    return bytes(data[off:off + n]).decode("ascii", "replace") if off is not None and 0 < n < 128 else None


def _uvarint(data, p: int) -> tuple[int, int]:
    n = shift = 0
    for _ in range(10):
        b = data[p]
        p += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, p
        shift += 7
    raise GoTlsError("bad varint in the build information")


def _version_tuple(v: str) -> tuple[int, int] | None:
    if not v.startswith("go"):
        return None  # "devel ..." builds: newer than any release
    parts = v[2:].split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0) if len(parts) > 1 else 0
    except ValueError:
        return None


def _elf(data) -> tuple[list[tuple[int, int, int]], list[tuple], dict[str, tuple]]:
    """The PT_LOAD segments (vaddr, offset, filesz), the section headers, and the sections by name."""
    loads, sections = elf_layout(data)
    e_type, e_machine = struct.unpack_from("<HH", data, 0x10)
    if e_machine != 62 or e_type not in (ET_EXEC, ET_DYN):
        raise ElfError("not an x86-64 executable")
    (e_shstrndx,) = struct.unpack_from("<H", data, 0x3E)
    e_shnum = len(sections)
    named: dict[str, tuple] = {}
    if 0 < e_shstrndx < e_shnum:
        stroff, strsize = sections[e_shstrndx][4], sections[e_shstrndx][5]
        for sh in sections:
            if sh[0] < strsize:
                end = data.find(b"\x00", stroff + sh[0], stroff + strsize)
                if end > 0:
                    named[bytes(data[stroff + sh[0]:end]).decode("ascii", "replace")] = sh
    return loads, sections, named


def _symbols(data, sections: list[tuple], names: set[str]) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the wanted names in ``.symtab``. The names are found in the
    string table first (one search each), then the table is scanned for those offsets only."""
    import numpy as np

    out: dict[str, tuple[int, int]] = {}
    for sh in sections:
        if sh[1] != SHT_SYMTAB:
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9] or 24
        if entsize != 24 or link >= len(sections):
            raise ElfError("odd symbol table")
        stroff, strsize = sections[link][4], sections[link][5]
        at: dict[int, str] = {}
        for name in names:  # searched in place in the file: a Go program's table is megabytes
            j = data.find(b"\x00" + name.encode() + b"\x00", stroff, stroff + strsize)
            if j >= 0:
                at[j + 1 - stroff] = name
        if not at:
            return out
        dt = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"),
                       ("size", "<u8")])
        syms = np.frombuffer(data, dtype=dt, count=size // 24, offset=off)
        for k in np.nonzero(np.isin(syms["name"], np.fromiter(at, dtype=np.uint32)))[0]:
            s = syms[k]
            if s["shndx"]:
                out[at[int(s["name"])]] = (int(s["value"]), int(s["size"]))
    return out


PCLN_MAGICS = {0xFFFFFFFA: "1.16", 0xFFFFFFF0: "1.18", 0xFFFFFFF1: "1.20"}  # pcHeader.magic: its layout


def _pclntab_funcs(data, sh: tuple, text_addr: int, names: set[str]) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the wanted functions, from Go's own function table
    (``.gopclntab``), which a program stripped of its ELF symbols (``-ldflags=-s``, strip)
    still has: the runtime needs it for stack traces. ``sh``: that section's header."""
    import numpy as np

    base, size = sh[4], sh[5]
    magic, ptrsize = struct.unpack_from("<I", data, base)[0], data[base + 7]
    form = PCLN_MAGICS.get(magic)
    if form is None or ptrsize != 8:
        raise GoTlsError(f"a Go function table this does not read (magic {magic:#x})")
    if form == "1.16":  # nfunc nfiles funcnameOffset cuOffset filetabOffset pctabOffset pclnOffset
        nfunc, _nfiles, nameoff, _cu, _file, _pc, pcln = struct.unpack_from("<7Q", data, base + 8)
        text = 0
    else:  # nfunc nfiles textStart funcnameOffset cuOffset filetabOffset pctabOffset pclnOffset
        nfunc, _nfiles, text, nameoff, _cu, _file, _pc, pcln = struct.unpack_from("<8Q", data, base + 8)
        text = text or text_addr  # a position-independent file leaves it to a relocation
    if not 0 < nfunc < 1 << 24 or max(nameoff, pcln) >= size:
        raise GoTlsError("a Go function table out of its section")
    names_at: dict[int, str] = {}
    lo, hi = base + nameoff, base + pcln  # the function names, searched in place (no copy)
    for name in names:
        j = data.find(b"\x00" + name.encode() + b"\x00", lo, hi)
        if j >= 0:
            names_at[j + 1 - lo] = name
        elif data[lo:lo + len(name) + 1] == name.encode() + b"\x00":
            names_at[0] = name
    if not names_at:
        return {}
    sec = np.frombuffer(data, dtype=np.uint8, count=size, offset=base)
    width = 8 if form != "1.16" else 16  # functab entries: (entryoff u32, funcoff u32) or (entry, funcoff) uintptrs
    n = min(nfunc + 1, (size - pcln) // width)
    raw = sec[pcln:pcln + n * width].view("<u4" if width == 8 else "<u8").reshape(n, 2)
    entries, funcoffs = raw[:, 0].astype(np.int64), raw[:nfunc, 1].astype(np.int64)
    nameoff_at = pcln + funcoffs + (4 if width == 8 else 8)  # _func.nameOff, after its entry
    if nameoff_at.size == 0 or nameoff_at.max() + 4 > size:
        raise GoTlsError("a Go function table out of its section")
    nameoffs = sec[nameoff_at[:, None] + np.arange(4)].copy().view("<i4").ravel()
    out: dict[str, tuple[int, int]] = {}
    for k in np.nonzero(np.isin(nameoffs, np.fromiter(names_at, dtype=np.int64)))[0]:
        start = int(entries[k]) + (text if width == 8 else 0)
        end = int(entries[k + 1]) + (text if width == 8 else 0) if k + 1 < n else start
        out[names_at[int(nameoffs[k])]] = (start, end - start)
    return out


# net.Conn's methods in its itabs' order (sorted by name): a *net.TCPConn's itab for it points at these
CONN_METHODS = ("Close", "LocalAddr", "Read", "RemoteAddr", "SetDeadline", "SetReadDeadline", "SetWriteDeadline",
                "Write")


def _itab_by_methods(data, loads: list[tuple[int, int, int]], itablink: tuple, methods: list[int]) -> int | None:
    """The address of the itab, among those ``.itablink`` lists, whose eight method pointers are
    ``methods`` (a type's net.Conn methods, by address): the type's itab for net.Conn, found
    without its symbol. An itab is (inter, _type, hash u32, pad u32, fun[...])."""
    off, size = itablink[4], itablink[5]
    want = struct.pack("<8Q", *methods)
    for (ptr,) in struct.iter_unpack("<Q", data[off:off + size - size % 8]):
        o = _offset(loads, ptr + 24) if ptr else None
        if o is not None and data[o:o + 64] == want:
            return ptr
    return None


def _decode(code: bytes, vaddr: int, memmove: int | None = None) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The entry probe's address, every ret's, and every call of ``memmove``'s, in the function
    at ``vaddr`` (``code``: all its bytes)."""
    try:
        import capstone
    except ImportError as e:  # a dependency: pyproject.toml
        raise GoTlsError("the capstone module is not installed") from e
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    insns = list(md.disasm_lite(code, vaddr))
    end = insns[-1][0] + insns[-1][1] if insns else vaddr
    # the function's last bytes may be int3 padding up to the next one; all else must decode
    if end - vaddr < len(code) and code[end - vaddr:].strip(b"\xcc"):
        raise GoTlsError(f"function at {vaddr:#x} did not decode whole ({end - vaddr} of {len(code)} bytes)")
    rets = tuple(a for a, _size, mnem, _ops in insns if mnem == "ret")
    if not rets:
        raise GoTlsError(f"function at {vaddr:#x} has no ret")
    target = hex(memmove) if memmove is not None else None
    copies = tuple(a for a, _size, mnem, ops in insns if mnem == "call" and ops == target)
    entry = vaddr
    # Go's stack check: cmp 0x10(%r14),%rsp; jbe, or lea -N(%rsp),%r12; cmp 0x10(%r14),%r12; jbe
    head = [(a, m, ops.replace(" ", "")) for a, _s, m, ops in insns[:3]]
    if len(head) >= 2 and head[0][1] == "cmp" and "[r14+0x10]" in head[0][2] and head[1][1] == "jbe":
        entry = head[1][0]
    elif (len(head) == 3 and head[0][1] == "lea" and head[0][2].startswith("r12,[rsp") and head[1][1] == "cmp"
          and "[r14+0x10]" in head[1][2] and head[2][1] == "jbe"):
        entry = head[2][0]
    return entry, rets, copies


def _cookie(entry: int, tcp: int, unix: int | None) -> int:
    def dist(target: int) -> int:
        d = target - entry
        if not -(1 << 31) <= d < (1 << 31):
            raise GoTlsError("the itabs are more than 2 GiB from the code")
        return d & 0xFFFFFFFF

    return dist(tcp) | dist(unix if unix is not None else tcp) << 32


def go_tls_of(data) -> GoTls | None:
    """The probes for a Go executable's crypto/tls (``data``: the file, bytes or an mmap). None
    for a file that is not a Go program using crypto/tls over sockets; GoTlsError for one that
    is but cannot be probed."""
    loads, sections, named = _elf(data)
    if ".go.buildinfo" not in named:
        return None  # not a Go program
    want = {READ, WRITE, MEMMOVE} | {n for names in ITABS.values() for n in names}
    syms = _symbols(data, sections, want)
    stripped = READ not in syms or WRITE not in syms
    if stripped:  # no ELF symbols: Go's own function table, and the itabs by their methods
        if ".gopclntab" not in named or ".itablink" not in named:
            return None
        text_addr = named[".text"][3] if ".text" in named else 0
        conn = {kind: [f"net.(*{kind}Conn).{m}" for m in CONN_METHODS] for kind in ("TCP", "Unix")}
        syms = _pclntab_funcs(data, named[".gopclntab"], text_addr,
                              {READ, WRITE, MEMMOVE} | {n for ms in conn.values() for n in ms})
        if READ not in syms or WRITE not in syms:
            return None  # no crypto/tls in it
        for kind, ms in conn.items():
            if all(m in syms for m in ms):
                found = _itab_by_methods(data, loads, named[".itablink"], [syms[m][0] for m in ms])
                if found is not None:
                    syms[ITABS[kind][0]] = (found, 0)
    version = go_version(data, named[".go.buildinfo"][4], loads)
    if version is None:
        raise GoTlsError("cannot tell which Go built it: the probes read Go's register ABI, Go 1.17+")
    vt = _version_tuple(version)
    if vt is not None and vt < MIN_GO:
        raise GoTlsError(f"built with {version}: the probes read Go's register ABI, Go 1.17+")
    itab = {kind: next((syms[n][0] for n in names if n in syms), None) for kind, names in ITABS.items()}
    if itab["TCP"] is None:
        if itab["Unix"] is None:
            return None  # TLS, but never over a socket of the net package
        itab["TCP"] = itab["Unix"]
    memmove = syms.get(MEMMOVE, (None, 0))[0]
    funcs = []
    for name in (READ, WRITE):
        vaddr, size = syms[name]
        off = _offset(loads, vaddr)
        if off is None or not 0 < size <= FUNC_MAX or _offset(loads, vaddr + size - 1) is None:
            raise GoTlsError(f"{name} is not in the file's code")
        entry, rets, copies = _decode(bytes(data[off:off + size]), vaddr, memmove)
        cookie = _cookie(entry, itab["TCP"], itab["Unix"])
        at = lambda a: a - vaddr + off  # noqa: E731 - an address in this function -> its file offset
        if name == WRITE:
            funcs.append(Func(at(entry), cookie))
        elif len(copies) == 1:
            funcs.append(Func(at(entry), cookie, copy=at(copies[0])))
        else:
            funcs.append(Func(at(entry), cookie, rets=tuple(at(r) for r in rets)))
    return GoTls(version, funcs[0], funcs[1])


def go_tls(path: str) -> GoTls | None:
    """go_tls_of the file at ``path``; None also for a file that cannot be read or is no ELF."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            return go_tls_of(data)
    except GoTlsError:
        raise
    except (OSError, struct.error, IndexError, ValueError):  # ElfError, numpy's on a table past the end
        return None


__all__ = ["GoTls", "Func", "GoTlsError", "go_tls", "go_tls_of", "go_version"]
