"""Where in a libssl file the TLS uprobes go: OpenSSL's shared read and write functions.

A uprobe traps on an int3 at its address; the kernel then has to run the instruction that
was there. x86 emulates a few kinds (push, call, jmp, jcc, nop) and single-steps any other
out of line, a second trap. OpenSSL's exported calls all start with ``sub $N,%rsp``, which
is single-stepped: measured here, a probe at ``SSL_read_ex`` costs ~12 us a hit, one on the
instruction four bytes in (a call) ~1 us. A return probe has to sit at a function's first
instruction, so moving the probe inside the exported function is not enough.

Both ``SSL_read`` and ``SSL_read_ex`` (OpenSSL 1.1.1 and 3.x) are thin wrappers around one
internal function, ``ssl_read_internal(SSL *, void *buf, size_t num, size_t *readbytes)``,
which starts with ``push``; ``SSL_write``/``SSL_write_ex`` around ``ssl_write_internal``,
the same way (from OpenSSL 3.3 ``ssl_write_internal`` takes a flags argument before the
count's address, and ``SSL_write_ex`` reaches it through a tail jump to ``SSL_write_ex2``).
The files are stripped of those names, so they are found from the code: :func:`shared_calls`
decodes the first instructions of each wrapper (a whitelist of the prologue instructions
compilers emit: stack adjustments, the stack protector's load, register moves and tests,
conditional branches to an error path) up to its first call, following tail jumps, and
takes its target, checking what the wrapper did to the argument registers on the way: the
``_ex`` one passes them through, the other points the count's argument at its own frame.
When both wrappers of a pair reach the same target that way, that is the shared function,
and the caller probes it once (entry and return) for both; anything not understood gives
``None`` and the caller probes the exported functions as before.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

PT_LOAD = 1
SHT_DYNSYM = 11
SHT_GNU_HASH = 0x6FFFFFF6
PROLOGUE_MAX = 96  # bytes of a wrapper decoded, at most, before its first call


@dataclass(frozen=True)
class Shared:
    """The shared functions' file offsets (for a uprobe); None where the wrappers of a pair
    did not show one with certainty."""

    read: int | None
    write: int | None
    write_args: int = 4  # 5: OpenSSL 3.3's, with flags before the count's address


class ElfError(ValueError):
    pass


def elf_layout(data) -> tuple[list[tuple[int, int, int]], list[tuple]]:
    """The PT_LOAD segments (vaddr, offset, filesz) and the section headers (Elf64_Shdr fields
    as tuples) of a 64-bit little-endian ELF file (bytes or an mmap)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    (e_phoff, e_shoff) = struct.unpack_from("<QQ", data, 0x20)
    (e_phentsize, e_phnum, e_shentsize, e_shnum) = struct.unpack_from("<HHHH", data, 0x36)
    loads = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                                 e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    return loads, sections


def _dynsyms(data, wanted: frozenset[bytes] | None = None) -> tuple[dict[str, int], list[tuple[int, int, int]]]:
    """The defined dynamic symbols (name -> address; only the ``wanted`` names, when given) and
    the PT_LOAD segments (vaddr, offset, filesz) of a 64-bit little-endian ELF file (bytes or
    an mmap)."""
    loads, sections = elf_layout(data)
    syms: dict[str, int] = {}
    for idx, sh in enumerate(sections):
        if sh[1] != SHT_DYNSYM:
            continue
        _name, _type, _flags, _addr, off, size, link, _info, _align, entsize = sh
        stroff = sections[link][4]
        hashed = next((h for h in sections if h[1] == SHT_GNU_HASH and h[6] == idx), None)
        if wanted is not None and hashed is not None:
            _gnu_lookup(data, hashed[4], off, entsize or 24, size // (entsize or 24), stroff, wanted, syms)
            continue
        firsts = {w[:1] for w in wanted} if wanted is not None else None
        for j in range(size // (entsize or 24)):
            st_name, _st_info, _other, st_shndx, st_value, _st_size = struct.unpack_from("<IBBHQQ", data,
                                                                                         off + j * entsize)
            if st_shndx == 0 or not st_value:
                continue  # undefined: imported from another library
            if firsts is not None and data[stroff + st_name:stroff + st_name + 1] not in firsts:
                continue  # (node has 50,000 symbols)
            end = data.find(b"\0", stroff + st_name, stroff + st_name + 256)
            name = data[stroff + st_name:end] if end >= 0 else b""
            if wanted is None or name in wanted:
                key = name.decode(errors="replace")
                if syms.setdefault(key, st_value) != st_value:
                    syms[key] = 0  # two definitions (symbol versions): neither is taken
    syms = {k: v for k, v in syms.items() if v}
    if not loads:
        raise ElfError("no loadable segments")
    return syms, loads


def _gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def _gnu_lookup(data, hoff: int, symoff: int, entsize: int, count: int, stroff: int, wanted: frozenset[bytes],
                syms: dict[str, int]) -> None:
    """The ``wanted`` names through the file's GNU hash table (.gnu.hash): a few reads each,
    where a scan of node's 50,000 dynamic symbols takes ~50 ms. A chain is walked no further
    than the ``count`` symbols the table has (a file whose chain never ends stops there)."""
    nbuckets, first, bloom_size, _shift = struct.unpack_from("<IIII", data, hoff)
    if not nbuckets:
        return
    buckets = hoff + 16 + 8 * bloom_size
    chains = buckets + 4 * nbuckets
    for name in wanted:
        h = _gnu_hash(name)
        i = struct.unpack_from("<I", data, buckets + 4 * (h % nbuckets))[0]
        if i < first:
            continue
        while i < count:  # a chain ends at an entry with bit 0 set
            h2 = struct.unpack_from("<I", data, chains + 4 * (i - first))[0]
            if (h | 1) == (h2 | 1):
                st_name, _info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data,
                                                                                       symoff + i * entsize)
                if st_shndx and st_value and data[stroff + st_name:stroff + st_name + len(name) + 1] == name + b"\0":
                    key = name.decode(errors="replace")
                    if syms.setdefault(key, st_value) != st_value:
                        syms[key] = 0  # two definitions (symbol versions): neither is taken
            if h2 & 1:
                break
            i += 1


def _offset(loads: list[tuple[int, int, int]], vaddr: int) -> int | None:
    for v, off, size in loads:
        if v <= vaddr < v + size:
            return vaddr - v + off
    return None


RCX, RDX, RSI, RDI, R8 = 1, 2, 6, 7, 8  # x86 register numbers: the 4th, 3rd, 2nd, 1st, 5th argument
STACK = "stack"  # a register given an address in the wrapper's own frame
ARG4 = "arg4"    # a register given the 4th argument as it came (mov %rcx,r before rcx was written)
OTHER = "other"
HOPS = 2  # tail jumps followed from a wrapper (OpenSSL 3.3: SSL_write_ex jumps to SSL_write_ex2)


def first_call(code: bytes, wrote: dict[int, str] | None = None) -> tuple[int, dict[int, str], bool] | None:
    """The target of the first call or jump in ``code``, as an offset from its start; the
    registers the instructions before it wrote (added to ``wrote``: ``STACK``, an address in
    the frame, by ``mov %rsp,r`` or ``lea d(%rsp),r``; ``ARG4``; ``OTHER``, anything else);
    and whether it is a jump. None unless every instruction before it is one of the prologue
    forms below. A conditional branch is stepped over (the fall-through is the main path: the
    target is an error path)."""
    i = 0
    n = min(len(code), PROLOGUE_MAX)
    wrote = dict(wrote or {})
    while i < n:
        b = code[i]
        rest = code[i:]
        rex = b if 0x40 <= b <= 0x4F else 0
        op = rest[1:] if rex else rest  # the opcode and what follows, past a REX prefix
        if rest[:4] == b"\xf3\x0f\x1e\xfa":                      # endbr64
            i += 4
        elif 0x50 <= b <= 0x57:                                  # push r64
            i += 1
        elif b == 0x41 and len(rest) > 1 and 0x50 <= rest[1] <= 0x57:  # push r8..r15
            i += 2
        elif rest[:3] == b"\x48\x83\xec":                        # sub $imm8,%rsp
            i += 4
        elif rest[:3] == b"\x48\x81\xec":                        # sub $imm32,%rsp
            i += 7
        elif rest[:9] == b"\x64\x48\x8b\x04\x25\x28\x00\x00\x00":  # mov %fs:0x28,%rax (canary)
            wrote[0] = OTHER
            i += 9
        elif rest[:4] == b"\x48\x89\x44\x24":                    # mov %rax,disp8(%rsp)
            i += 5
        elif rest[:4] == b"\x48\x89\x84\x24":                    # mov %rax,disp32(%rsp)
            i += 8
        elif len(op) > 1 and op[0] in (0x31, 0x85, 0x89, 0x63) and op[1] >= 0xC0 and (rex or op[0] != 0x63):
            # xor/test/mov r,r (the destination is r/m), movslq r/m32,r64 (the destination is reg)
            m = op[1]
            rm, reg = (m & 7) | (8 if rex & 1 else 0), ((m >> 3) & 7) | (8 if rex & 4 else 0)
            if op[0] == 0x63:
                wrote[reg] = OTHER
            elif op[0] == 0x89 and rex & 8 and reg == 4:          # mov %rsp,r
                wrote[rm] = STACK
            elif op[0] == 0x89 and rex & 8 and reg == RCX and RCX not in wrote:  # mov %rcx,r
                wrote[rm] = ARG4
            elif op[0] in (0x31, 0x89):
                wrote[rm] = OTHER
            i += 2 + bool(rex)
        elif rex & 8 and len(op) > 3 and op[0] == 0x8D and op[1] & 0xC7 in (0x44, 0x84) and op[2] == 0x24:
            # lea disp8/disp32(%rsp),r64
            wrote[((op[1] >> 3) & 7) | (8 if rex & 4 else 0)] = STACK
            i += 5 if op[1] & 0xC0 == 0x40 else 8
        elif 0x70 <= b <= 0x7F:                                  # jcc rel8
            i += 2
        elif b == 0x0F and len(rest) > 1 and 0x80 <= rest[1] <= 0x8F:  # jcc rel32
            i += 6
        elif b in (0xE8, 0xE9) and len(rest) >= 5:               # call / jmp rel32
            return i + 5 + struct.unpack_from("<i", rest, 1)[0], wrote, b == 0xE9
        else:
            return None
    return None


def _passes_through(wrote: dict[int, str]) -> bool:
    """An _ex wrapper: (SSL *, buf, num, size_t *) reach the call as they came."""
    return not {RDI, RSI, RDX, RCX} & wrote.keys()


def _counts_into_its_frame(wrote: dict[int, str]) -> bool:
    """SSL_read/SSL_write: the SSL * and buf as they came, num widened (movslq), and the 4th
    argument an address in the wrapper's frame: the count's size_t."""
    return not {RDI, RSI} & wrote.keys() and wrote.get(RCX) == STACK


# OpenSSL 3.3+: ssl_write_internal(SSL *, buf, num, uint64_t flags, size_t *written), the count's
# address the 5th argument
def _passes_through5(wrote: dict[int, str]) -> bool:
    """SSL_write_ex (through SSL_write_ex2): the SSL *, buf and num as they came, its 4th
    argument (written) moved to the 5th; the 4th is then the flags."""
    return not {RDI, RSI, RDX} & wrote.keys() and wrote.get(R8) == ARG4


def _counts_into_its_frame5(wrote: dict[int, str]) -> bool:
    """SSL_write: the SSL * and buf as they came, the 5th argument an address in its frame."""
    return not {RDI, RSI} & wrote.keys() and wrote.get(R8) == STACK


# (the pair, the contracts of its two wrappers, how many arguments the shared function takes)
FORMS = {
    "read": [(("SSL_read", "SSL_read_ex"), (_counts_into_its_frame, _passes_through), 4)],
    "write": [(("SSL_write", "SSL_write_ex"), (_counts_into_its_frame, _passes_through), 4),
              (("SSL_write", "SSL_write_ex"), (_counts_into_its_frame5, _passes_through5), 5)],
}


def shared_calls(path: str) -> Shared | None:
    """The file offsets of OpenSSL's shared read and write functions in the libssl at
    ``path``, each None when it cannot be told with certainty (the caller then probes that
    pair's exported functions); None for neither."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            return _shared_calls(data)
    except (OSError, ElfError, struct.error, ValueError, IndexError):
        return None


WRAPPERS = frozenset(n.encode() for n in ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"))


def exports_openssl(path: str) -> bool:
    """Whether the ELF file at ``path`` itself defines OpenSSL's SSL_read and SSL_write: an
    executable with OpenSSL linked in statically that exports it (node, whose addons link
    against it), probed as a libssl is."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            syms, _ = _dynsyms(data, WRAPPERS)
    except (OSError, ElfError, struct.error, ValueError, IndexError):
        return False
    return {"SSL_read", "SSL_write"} <= syms.keys()


def symbol_offsets(path: str, names) -> dict[str, int]:
    """The file offsets of the functions ``names`` the ELF file at ``path`` defines once, for
    uprobes by offset: libbpf would parse the file's symbol tables again for each probe, a
    second or so for the ten of a 100 MB node; this reads the dynamic ones once."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            syms, loads = _dynsyms(data, frozenset(n.encode() for n in names))
    except (OSError, ElfError, struct.error, ValueError, IndexError):
        return {}
    out = {}
    for name, addr in syms.items():
        off = _offset(loads, addr)
        if off is not None:
            out[name] = off
    return out


def _shared_calls(data) -> Shared | None:
    syms, loads = _dynsyms(data, WRAPPERS)

    def target(name: str, contract) -> int | None:
        """Where the wrapper's first call goes, through up to HOPS tail jumps, when what it
        did to the argument registers on the way keeps ``contract``."""
        addr = syms.get(name)
        wrote: dict[int, str] = {}
        for _ in range(HOPS + 1):
            off = _offset(loads, addr) if addr else None
            if off is None:
                return None
            got = first_call(data[off:off + PROLOGUE_MAX], wrote)
            if got is None:
                return None
            rel, wrote, jumped = got
            addr += rel
            if not jumped:
                break
        else:
            return None
        return addr if contract(wrote) else None

    found: dict[str, tuple[int, int] | None] = {}
    for kind, forms in FORMS.items():
        found[kind] = None
        for pair, contracts, nargs in forms:
            targets = {target(name, c) for name, c in zip(pair, contracts)}
            vaddr = targets.pop() if len(targets) == 1 else None  # the two wrappers must agree
            off = _offset(loads, vaddr) if vaddr is not None else None
            if off is not None and vaddr not in (syms.get(pair[0]), syms.get(pair[1])):
                found[kind] = (off, nargs)
                break
    read, write = found["read"], found["write"]
    if read is None and write is None:
        return None
    if read is not None and write is not None and read[0] == write[0]:
        return None
    return Shared(read[0] if read else None, write[0] if write else None, write[1] if write else 4)


__all__ = ["Shared", "shared_calls", "first_call", "exports_openssl", "symbol_offsets"]
