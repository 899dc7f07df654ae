"""Finding the function OpenSSL's SSL_read/SSL_read_ex (and SSL_write/SSL_write_ex) share
(src/andon/events/libssl_code.py): the prologue decoder on the bytes two real builds have,
and the whole search on the host's libssl."""

from __future__ import annotations

import os

import pytest

from andon.events.libssl_code import ARG4, OTHER, R8, RCX, STACK, first_call, shared_calls

# Debian 12's libssl.so.3 (OpenSSL 3.0.x), as objdump shows them
DEB_SSL_READ = bytes.fromhex(
    "4883ec18"              # sub $0x18,%rsp
    "64488b042528000000"    # mov %fs:0x28,%rax
    "4889442408"            # mov %rax,0x8(%rsp)
    "31c0"                  # xor %eax,%eax
    "85d2"                  # test %edx,%edx
    "782f"                  # js (the error path)
    "4889e1"                # mov %rsp,%rcx
    "4863d2"                # movslq %edx,%rdx
    "e83dfeffff")           # call ssl_read_internal (-0x1c3 from the next instruction)
DEB_SSL_READ_EX = bytes.fromhex("4883ec08" "e8c7fdffff")  # sub $8,%rsp; call
# psycopg[binary]'s bundled libssl-6a9b88ec.so.3 (OpenSSL 3.3)
WHEEL_SSL_READ = bytes.fromhex("4883ec18" "85d2" "7819" "488d4c2408" "4863d2" "e82bfeffff")  # lea 8(%rsp),%rcx
WHEEL_SSL_WRITE = bytes.fromhex("4883ec18" "85d2" "781b" "31c9" "4863d2" "4c8d442408" "e879fcffff")
WHEEL_SSL_WRITE_EX = bytes.fromhex("4989c8" "31c9" "e9d6ffffff")  # mov %rcx,%r8; xor %ecx,%ecx; jmp SSL_write_ex2


def test_the_prologue_is_decoded_up_to_the_first_call_with_the_registers_it_wrote():
    assert first_call(DEB_SSL_READ) == (0x1E + 5 - 0x1C3, {0: OTHER, RCX: STACK, 2: OTHER}, False)
    assert first_call(DEB_SSL_READ_EX) == (4 + 5 - 0x239, {}, False)
    assert first_call(WHEEL_SSL_READ) == (0x10 + 5 - 0x1D5, {RCX: STACK, 2: OTHER}, False)
    # SSL_write of 3.3 passes flags (0) in rcx and the count's address in r8
    assert first_call(WHEEL_SSL_WRITE) == (0x12 + 5 - 0x387, {RCX: OTHER, 2: OTHER, R8: STACK}, False)
    # SSL_write_ex of 3.3 moves its 4th argument to the 5th and jumps (a tail call) to SSL_write_ex2
    assert first_call(WHEEL_SSL_WRITE_EX) == (5 + 5 - 0x2A, {R8: ARG4, RCX: OTHER}, True)
    # what an earlier hop wrote is carried on into the next
    assert first_call(DEB_SSL_READ_EX, {R8: ARG4}) == (4 + 5 - 0x239, {R8: ARG4}, False)


def test_a_copy_of_rcx_after_rcx_was_written_is_not_the_4th_argument():
    code = bytes.fromhex("31c9" "4989c8" "e800000000")  # xor %ecx,%ecx; mov %rcx,%r8; call
    assert first_call(code) == (10, {RCX: OTHER, R8: OTHER}, False)


@pytest.mark.parametrize("code", [
    bytes.fromhex("488b07e800000000"),    # mov (%rdi),%rax: a load, not a prologue form
    bytes.fromhex("4883ec08c3"),          # a ret before any call
    bytes.fromhex("4883ec08"),            # cut short
    bytes.fromhex("90" * 200 + "e800000000"),  # nops are not a prologue form (nor is 96 B)
    b"",
])
def test_anything_else_is_not_understood(code):
    assert first_call(code) is None


def test_the_host_libssl_has_both_shared_functions_and_they_start_with_a_push():
    path = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    found = shared_calls(path)
    assert found is not None and found.read is not None and found.write is not None
    assert found.read != found.write
    with open(path, "rb") as f:
        data = f.read()
    for off in (found.read, found.write):
        # push %r12..%r15 or push %rbp/%rbx: an instruction the kernel emulates
        assert data[off] in range(0x50, 0x58) or (data[off] == 0x41 and data[off + 1] in range(0x50, 0x58))


def test_the_wheel_libssl_3_3_has_both_and_its_write_takes_flags():
    import glob
    paths = glob.glob(os.path.join(os.path.dirname(os.path.dirname(pytest.__file__)), "psycopg_binary.libs",
                                   "libssl-*.so.3"))
    if not paths:
        pytest.skip("psycopg[binary] bundles no libssl here")
    found = shared_calls(paths[0])
    assert found is not None and found.read is not None and found.write is not None
    with open(paths[0], "rb") as f:
        data = f.read()
    # SSL_write_ex2, and the flags argument of the function both write wrappers share, came
    # with OpenSSL 3.3 (the psycopg-binary installed here bundles 3.3 or later)
    assert found.write_args == (5 if b"SSL_write_ex2" in data else 4) and found.read != found.write


def test_a_file_that_is_not_an_elf_library_has_none(tmp_path):
    p = tmp_path / "libssl.so.3"
    p.write_bytes(b"\x7fELF" + bytes(60))
    assert shared_calls(str(p)) is None
    p.write_text("not elf")
    assert shared_calls(str(p)) is None
    assert shared_calls(str(tmp_path / "missing")) is None


def test_the_gnu_hash_table_finds_what_a_scan_of_the_symbols_finds():
    """Symbols are looked up through .gnu.hash (node has 50,000: a scan took ~50 ms); the
    lookup agrees with the whole table read, for every wanted name, found or not."""
    import mmap

    from andon.events import libssl_code as lc
    assert lc._gnu_hash(b"") == 5381 and lc._gnu_hash(b"printf") == 0x156B2BB8  # the ELF gABI's example
    wanted = frozenset({b"SSL_read", b"SSL_write_ex", b"SSL_do_handshake", b"no_such_symbol", b"SSL_CTX_new"})
    paths = [p for p in ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/bin/node", "/usr/lib/x86_64-linux-gnu/libc.so.6")
             if os.path.exists(p)]
    for path in paths:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            hashed, _ = lc._dynsyms(data, wanted)
            every, _ = lc._dynsyms(data, None)
        assert hashed == {k: v for k, v in every.items() if k.encode() in wanted}, path
    assert paths


def test_a_hash_chain_that_never_ends_stops_at_the_last_symbol():
    """A hostile .gnu.hash: one bucket whose chain has no end bit, every entry with the wanted
    name's hash, the symbols' names all different from it. The walk stops at the table's 4
    symbols with nothing found (it used to go on up to 2^20 entries, then read past them)."""
    import struct as st

    from andon.events import libssl_code as lc
    h = lc._gnu_hash(b"SSL_read") & ~1  # bit 0 clear: "not the chain's last"
    table = st.pack("<IIII", 1, 0, 0, 6) + st.pack("<I", 0) + st.pack("<4I", h, h, h, h)
    symoff, strings = len(table), b"\0other\0"
    stroff = symoff + 4 * 24
    syms_tab = b"".join(st.pack("<IBBHQQ", 1, 0x12, 0, 1, 0x1000 + 16 * k, 8) for k in range(4))
    data = table + syms_tab + strings
    found: dict[str, int] = {}
    lc._gnu_lookup(data, 0, symoff, 24, 4, stroff, frozenset({b"SSL_read"}), found)
    assert found == {}
    # the same table with the last symbol named SSL_read finds it, at its address
    data = table + syms_tab[:72] + st.pack("<IBBHQQ", 7, 0x12, 0, 1, 0x1030, 8) + strings + b"SSL_read\0"
    lc._gnu_lookup(data, 0, symoff, 24, 4, stroff, frozenset({b"SSL_read"}), found)
    assert found == {"SSL_read": 0x1030}
