"""gRPC bodies as text, the way Pixie shows them in ``http_events``.

A gRPC request or response body (HTTP/2 DATA, ``content-type: application/grpc``) is a run of
messages, each 1 byte of flags (1: compressed with the stream's ``grpc-encoding``), 4 bytes of
big-endian length, then the message. Without the service's ``.proto`` there are no field names,
so each message is decoded from protobuf's wire format alone and printed the way protobuf's text
format prints unknown fields (what ``protoc --decode_raw`` prints):

- a varint as ``1: 150``; a fixed32 as ``3: 0x04030201``; a fixed64 as ``4: 0x0807060504030201``;
- a length-delimited field that parses as a message as ``1 {`` its fields ``}``, two spaces an
  indent, 10 levels at most; otherwise as a C-escaped string, ``2: "Hello\\n"``, cut after
  :data:`MAX_STR` bytes with ``...<truncated>...`` (Pixie's 64);
- a group as ``5 {`` ... ``}``.

A message cut short (the body is kept up to ``BODY_KEEP`` bytes) prints the fields before the
cut, as protobuf's partial parse does. Messages are joined by newlines. Differences from Pixie:
a body with no bytes (a trailers-only error response) is an empty string, not
``<Failed to parse protobuf>``; gzip-compressed messages are always inflated (Pixie's flag for
this is off by default); ``application/grpc+json`` messages are shown as their text.

Pure functions of bytes: they never raise on hostile input and never allocate more than a
bounded multiple of it: a body's messages are inflated to :data:`INFLATE_MAX` bytes in all
(many small gzip bombs in one body cost no more than one).
"""

from __future__ import annotations

import zlib

MAX_STR = 64  # bytes of a string field printed (Pixie's kMaxPBStringLen)
NEST = 10  # levels of length-delimited fields tried as messages (protobuf's printer's budget)
GROUP_DEPTH = 100  # groups nested in groups, at most (protobuf's parser's recursion limit)
INFLATE_MAX = 1 << 14  # bytes a body's compressed messages are inflated to, in all, at most
FAILED = "<Failed to parse protobuf>"
TRUNCATED = "...<truncated>..."

_ESC = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x22: '\\"', 0x27: "\\'", 0x5C: "\\\\"}
_ESCAPE = [_ESC.get(c, chr(c) if 0x20 <= c < 0x7F else f"\\{c:03o}") for c in range(256)]


class _Bad(Exception):
    """Bytes that are not protobuf's wire format."""


def is_grpc(ctype: str) -> bool:
    return ctype.startswith("application/grpc")


def framed(body: bytes | bytearray, body_size: int) -> bool:
    """Whether a body (its kept prefix ``body``, ``body_size`` bytes in all) is gRPC's
    framing exactly: length-prefixed messages, flags 0 or 1, ending at its last byte."""
    p = 0
    while p + 5 <= len(body):
        if body[p] > 1:
            return False
        p += 5 + int.from_bytes(body[p + 1:p + 5], "big")
        if p == body_size:
            return True
    return False


def _varint(b: bytes, p: int, end: int, most: int = 10) -> tuple[int, int]:
    v = shift = 0
    while p < end and shift < 7 * most:
        c = b[p]
        p += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v & 0xFFFFFFFFFFFFFFFF, p
        shift += 7
    raise _Bad("varint")


def _fields(b: bytes, p: int, end: int, depth: int, group: int, out: list, tag_bytes: int) -> int:
    """Parse fields from ``b[p:end]`` into ``out`` as (number, wire type, value); a group's
    fields end at its END_GROUP tag (``group`` is its number; 0 at the top). Returns where it
    stopped; raises _Bad where the bytes stop being protobuf (``out`` keeps what came before).

    A tag is read as 32 bits, the high bits of a longer varint dropped, of at most
    ``tag_bytes`` bytes: protobuf's message parser takes 5, the printer's parse of a string
    as a message 10."""
    while p < end:
        tag, p = _varint(b, p, end, tag_bytes)
        tag &= 0xFFFFFFFF
        num, wt = tag >> 3, tag & 7
        if num == 0:
            raise _Bad("field number")
        if wt == 0:
            v, p = _varint(b, p, end)
        elif wt == 1:
            if p + 8 > end:
                raise _Bad("fixed64")
            v, p = int.from_bytes(b[p:p + 8], "little"), p + 8
        elif wt == 5:
            if p + 4 > end:
                raise _Bad("fixed32")
            v, p = int.from_bytes(b[p:p + 4], "little"), p + 4
        elif wt == 2:
            n, p = _varint(b, p, end)
            if n > end - p:
                raise _Bad("length")
            v, p = b[p:p + n], p + n
        elif wt == 3:
            if depth <= 0:
                raise _Bad("groups nested too deep")
            v = []
            out.append((num, wt, v))
            p = _fields(b, p, end, depth - 1, num, v, tag_bytes)
            continue
        elif wt == 4:
            if num != group:
                raise _Bad("end of group")
            return p
        else:
            raise _Bad("wire type")
        out.append((num, wt, v))
    if group:
        raise _Bad("group not ended")
    return p


def _message(b: bytes, depth: int) -> list | None:
    """The fields of ``b`` if all of it is one message, else None."""
    out: list = []
    try:
        _fields(b, 0, len(b), depth, 0, out, 10)
    except _Bad:
        return None
    return out


def _escape(b: bytes) -> str:
    if len(b) > MAX_STR:
        return "".join(_ESCAPE[c] for c in b[:MAX_STR]) + TRUNCATED
    return "".join(_ESCAPE[c] for c in b)


def _print(fields: list, out: list[str], indent: str, budget: int) -> None:
    for num, wt, v in fields:
        if wt == 0:
            out.append(f"{indent}{num}: {v}")
        elif wt == 5:
            out.append(f"{indent}{num}: 0x{v:08x}")
        elif wt == 1:
            out.append(f"{indent}{num}: 0x{v:016x}")
        elif wt == 3:
            out.append(f"{indent}{num} {{")
            _print(v, out, indent + "  ", budget - 1)
            out.append(f"{indent}}}")
        else:
            inner = _message(v, budget) if v and budget > 0 else None
            if inner is None:
                out.append(f'{indent}{num}: "{_escape(v)}"')
            else:
                out.append(f"{indent}{num} {{")
                _print(inner, out, indent + "  ", budget - 1)
                out.append(f"{indent}}}")


def pb_text(b: bytes) -> tuple[str, bool]:
    """One protobuf message, schema unknown, as text format; and whether all of it parsed (if
    not, the text is that of the fields before the first bad byte)."""
    fields: list = []
    try:
        _fields(b, 0, len(b), GROUP_DEPTH, 0, fields, 5)
        ok = True
    except _Bad:
        ok = False
    lines: list[str] = []
    _print(fields, lines, "", NEST)
    return "\n".join(lines), ok


def _inflate(data: bytes, most: int) -> bytes | None:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, most)
    except zlib.error:
        return None


def body_text(ctype: str, encoding: str, body: bytes | bytearray) -> str:
    """A gRPC body (the prefix kept of it) as its column shows it: each message as text."""
    body = bytes(body)
    if not body:
        return ""
    as_text = "json" in ctype[len("application/grpc"):]
    parts: list[str] = []
    ok = True
    p = 0
    budget = INFLATE_MAX
    while p < len(body):
        if p + 5 > len(body):
            ok = False
            break
        flag, n = body[p], int.from_bytes(body[p + 1:p + 5], "big")
        data = body[p + 5:p + 5 + n]  # shorter than n where the kept prefix ends
        p += 5 + n
        if flag == 1:  # 0 or 1 by the spec; Pixie takes any other value as uncompressed too
            if encoding != "gzip":
                parts.append(f"<Non-gzip decompression not supported: {encoding[:32] or 'none'}>")
                continue
            inflated = _inflate(data, budget) if budget > 0 else b""
            if inflated is None:
                parts.append("<Failed to gunzip data>")
                continue
            budget -= len(inflated)
            data = inflated
        if as_text:
            parts.append(data.decode("utf-8", "replace"))
            continue
        text, ok = pb_text(data)
        if text:
            parts.append(text)
    if not parts and not ok:
        return FAILED
    return "\n".join(parts)


__all__ = ["FAILED", "MAX_STR", "body_text", "framed", "is_grpc", "pb_text"]
