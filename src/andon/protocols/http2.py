"""HTTP/2 (RFC 9113), request/response pairs into ``http_events`` as Pixie records them.

A connection starts with the client's preface (``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``, which
the sensor infers the protocol from), then frames both ways: 9 bytes of header (length,
type, flags, stream id), then the payload. A request is a stream's HEADERS (and
CONTINUATION) frames from the client, then its DATA frames, up to the frame flagged
END_STREAM; its response the same from the server, trailers included (a HEADERS frame
after the DATA: gRPC's status). Header blocks are HPACK-compressed (RFC 7541) with a table
each direction keeps across the connection, so they are decoded in order, every one of
them (PUSH_PROMISE's too), by :class:`Hpack`, one per direction.

Loss. Bytes lost or not copied inside a DATA frame's payload only shorten the body kept.
Anywhere else (a frame header, a header block; counted ``invalid``) the direction waits for
a chunk (one call's bytes) that starts at a frame boundary, frame headers tiling it, and goes
on from there, with the streams in flight whose frames that way may have been among the lost
bytes given up (counted unmatched): a request not yet ended; a response begun, or one whose
first frame after the loss is not a header block with ``:status``. The direction's HPACK
table, which the lost blocks may have added to, is known again only from the entries added
after the loss (the newest: their indexes do not depend on what came before); a field that
names an older entry is left out of the row, never guessed (``unknown_headers``), until the
entries added since leave no room for an older one in the table, or a size update empties
it. A field the peer keeps adding by the name of a lost entry stays unknown.

Rows: ``major_version`` 2, ``minor_version`` 0; ``req_method``/``req_path`` from ``:method``
and ``:path``; ``resp_status`` from ``:status``; ``resp_message`` empty (HTTP/2 has no
reason phrase); ``req_headers``/``resp_headers`` every header, pseudo-headers included, as
JSON (as for HTTP/1.x); bodies as for HTTP/1.x, but gRPC's (``content-type:
application/grpc``): those are ``content_type`` 2 and each message decoded as protobuf
without its schema (:mod:`.grpc`), as Pixie does; ``latency`` the response's end minus the
request's end. A stream reset (RST_STREAM) before its response ends is counted unmatched.
"""

from __future__ import annotations

import struct
from typing import Any
from dataclasses import dataclass, field

from . import grpc
from .base import ConnParser, DataChunk, Direction, Protocol, Role
from .http import BODY_COLUMN, BODY_KEEP, HEADERS_COLUMN, headers_json, req_body_text, resp_body_text
from .stream import bound, latency

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_BLOCK = 1 << 18  # bytes of one header block (HEADERS + CONTINUATION) kept, at most
MAX_TABLE = 1 << 18  # an HPACK table's size, at most (peers use 4 KiB to 64 KiB)
MAX_STREAMS = 1024  # streams in flight remembered per connection, at most (then the oldest go)
MAX_HEADERS = 512  # header fields kept for one message, trailers included
MAX_RESYNC = 1 << 22  # bytes looked through for the next frame header after a loss, at most
RESYNC_MAX_FRAME = 1 << 18  # a frame header found while resynchronising has a length below this
BLOCK_TYPES = (HEADERS, CONTINUATION, PUSH_PROMISE)  # the frames whose payload is kept
_FRAME_HEAD = struct.Struct("!HBBBI")  # a frame header: length (16 + 8 bits), type, flags, stream


@dataclass(slots=True)
class Msg:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    body_size: int = 0
    end_ts: int = 0  # when its END_STREAM frame came; 0 while it goes on

    def get(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")


@dataclass(slots=True)
class Stream:
    req: Msg = field(default_factory=Msg)
    resp: Msg | None = None
    after_loss: bool = False  # in flight, its response not begun, when server bytes were lost


@dataclass(slots=True)
class Way:
    """One direction: the frame being read, the header block being gathered, its HPACK table."""

    decoder: Hpack
    d: Direction = Direction.INGRESS
    head: bytearray = field(default_factory=bytearray)  # a frame header still short of 9 bytes
    ftype: int = -1  # the frame in progress (-1: between frames)
    flags: int = 0
    sid: int = 0
    left: int = 0  # its payload bytes still to come
    payload: bytearray = field(default_factory=bytearray)  # a non-DATA frame's payload so far
    pad: int = -1  # a padded DATA frame's pad length, once read (-1: not yet / not padded)
    block: bytearray | None = None  # a header block waiting for its CONTINUATION
    block_sid: int = 0
    block_flags: int = 0
    block_type: int = HEADERS
    preface: int = 0  # preface bytes still to skip (the client's direction)
    length: int = 0  # the frame in progress's payload length
    started: bool = False  # bytes seen in this direction
    resync: bool = False  # looking for the next frame header after bytes lost past a DATA frame
    resync_sid: int = 0  # the stream whose DATA the lost bytes were
    resync_bytes: int = 0
    resync_ts: int = 0  # when bytes taken for the resync stream were last seen
    broken: bool = False  # bytes lost where frames or a header block were: waiting for a chunk
    # that starts at a frame boundary (frames tiling it) to go on from


_HUFFMAN_CACHE = 4096  # Huffman-coded header strings remembered, decoded (the same values recur)
SEEN_MAX = 16  # header blocks remembered decoded, per direction, while its table stays the same
FIXED_MAX = 1024  # blocks naming no dynamic entry remembered decoded, for all connections
SEEN_BLOCK = 1024  # bytes of a block remembered, at most
_JSON_MAX = 1024  # header lists remembered as their column's JSON


_FIXED: dict[bytes, tuple[list[tuple[str, str]], tuple, bool]] = {}  # see Hpack._fixed


class HpackError(ValueError):
    pass


class HpackUnknown(HpackError):
    """A reference to a dynamic table entry added while bytes were lost."""


class Hpack:
    """An HPACK decoder (RFC 7541) for one direction of a connection: its dynamic table, in
    step with the peer's encoder. Written here for speed, on the hpack library's static
    table and Huffman code (its own decoder logs every field, and costs 3-4 times this)."""

    STATIC: tuple = ()

    def __init__(self, max_size: int = MAX_TABLE) -> None:
        if not Hpack.STATIC:
            from hpack.table import HeaderTable

            Hpack.STATIC = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in HeaderTable.STATIC_TABLE)
        self.dynamic: list[tuple[str | None, str]] = []  # newest first; None: a name lost
        self.size = 0
        self.max_size = 4096  # the protocol's initial size; updates in the blocks change it
        self.limit = max_size
        # after bytes were lost (desync): entries the peer added then sit, unknown, behind the
        # ones added since; None once no such entry can be left in the table
        self.unknown_behind: bool = False
        self.unknown = 0  # fields that named such an entry: left out of the headers
        # blocks that left the table as it was, decoded: the same block means the same fields
        # until the table changes (a peer repeating a request or a response sends the same bytes)
        self._seen: dict[bytes, tuple[list[tuple[str, str]], int]] = {}
        # blocks that name no dynamic entry, decoded, with what they do to the table (the
        # entries they add, in order; a size update as (None, size)): the same whatever the
        # table holds (nginx adds every response header it sends, and names none), so one
        # memory serves every connection
        self._fixed = _FIXED
        self._dyn = False  # the block being decoded named a dynamic entry
        self._ops: list[tuple[str | None, Any]] = []  # what it did to the table
        self.changes = 0  # the table's changes so far

    def _changed(self) -> None:
        self.changes += 1
        if self._seen:
            self._seen.clear()

    def desync(self) -> None:
        """Header blocks may have been lost: what the table held cannot be placed any more. It
        starts again from the entries added from now on (the newest, so their indexes are
        right whatever came before), and is whole again once those leave no room for an older
        one (the smallest entry is 32 bytes) or a size update empties it. Until then an index
        past them is an unknown entry, not an error."""
        self.dynamic.clear()
        self.size = 0
        self.unknown_behind = self.max_size >= 32
        self._changed()

    def _add(self, name: str | None, value: str) -> None:
        # a nameless entry (its name was a lost entry's) counts its value and overhead only:
        # sizes are then a lower bound, which is all the whole-again test needs; an entry the
        # peer evicted and this table kept longer is one no valid block names
        self.dynamic.insert(0, (name, value))
        self.size += len(name or "") + len(value) + 32
        self._changed()
        self._whole_again()
        self._shrink()

    def _whole_again(self) -> None:
        # an older entry, however small, no longer fits beside the known ones: the peer's
        # table evicted every one of them
        if self.unknown_behind and self.size + 32 > self.max_size:
            self.unknown_behind = False

    def _shrink(self) -> None:
        while self.size > self.max_size and self.dynamic:
            k, v = self.dynamic.pop()
            self.size -= len(k or "") + len(v) + 32

    def _entry(self, i: int) -> tuple[str | None, str]:
        if 0 < i <= len(self.STATIC):
            return self.STATIC[i - 1]
        j = i - len(self.STATIC) - 1
        self._dyn = True
        if 0 <= j < len(self.dynamic):
            return self.dynamic[j]
        if self.unknown_behind and j >= 0:
            raise HpackUnknown(f"index {i}: an entry added while bytes were lost")
        raise HpackError(f"index {i} out of the tables")

    @staticmethod
    def _int(b: bytes, p: int, prefix: int) -> tuple[int, int]:
        mask = (1 << prefix) - 1
        v = b[p] & mask
        p += 1
        if v < mask:
            return v, p
        shift = 0
        while True:
            if p >= len(b) or shift > 28:
                raise HpackError("integer past the block")
            c = b[p]
            p += 1
            v += (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                return v, p

    def _str(self, b: bytes, p: int) -> tuple[str, int]:
        if p >= len(b):
            raise HpackError("string past the block")
        huff = b[p] & 0x80
        n, p = self._int(b, p, 7)
        if p + n > len(b):
            raise HpackError("string past the block")
        raw = b[p:p + n]
        return (_huffman(raw) if huff else raw).decode("utf-8", "replace"), p + n

    def decode(self, b: bytes) -> list[tuple[str, str]]:
        """A header block's fields, in order (the returned list is not to be changed)."""
        hit = self._seen.get(b)
        if hit is not None:
            self.unknown += hit[1]
            return hit[0]
        fixed = self._fixed.get(b)
        if fixed is not None:
            out, ops, resizes = fixed
            if resizes:
                for name, value in ops:
                    if name is None:
                        self._resize(value)
                    else:
                        self._add(name, value)
            else:  # _add's, its checks once for the block (the same table: the size is the same)
                for name, value in ops:
                    self.dynamic.insert(0, (name, value))
                    self.size += len(name) + len(value) + 32
                self._changed()
                self._whole_again()
                self._shrink()
            return out
        unknown, changes = self.unknown, self.changes
        self._dyn = False
        self._ops = []
        out = self._decode(b)
        if len(b) > SEEN_BLOCK:
            return out
        if self.changes == changes:
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()
            self._seen[b] = (out, self.unknown - unknown)
        elif not self._dyn and self.unknown == unknown:
            if len(self._fixed) >= FIXED_MAX:
                self._fixed.clear()
            self._fixed[b] = (out, tuple(self._ops), any(name is None for name, _ in self._ops))
        return out

    def _resize(self, size: int) -> None:
        if size > self.limit:
            raise HpackError(f"table size {size} past {self.limit}")
        self.max_size = size
        self._changed()
        self._whole_again()
        self._shrink()

    def _decode(self, b: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        p, n = 0, len(b)
        while p < n:
            c = b[p]
            if c & 0x80:  # indexed field
                i, p = self._int(b, p, 7)
                try:
                    field_ = self._entry(i)
                except HpackUnknown:
                    field_ = (None, "")
                if field_[0] is None:
                    self.unknown += 1
                else:
                    out.append(field_)
            elif c & 0x40:  # literal with incremental indexing
                name, value, p = self._literal(b, p, 6)
                if name is None:
                    self.unknown += 1  # its name is a lost entry's: the entry is added, nameless
                else:
                    out.append((name, value))
                    self._ops.append((name, value))
                self._add(name, value)
            elif c & 0x20:  # dynamic table size update
                size, p = self._int(b, p, 5)
                self._ops.append((None, size))
                self._resize(size)
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, p = self._literal(b, p, 4)
                if name is None:
                    self.unknown += 1
                else:
                    out.append((name, value))
        return out

    def _literal(self, b: bytes, p: int, prefix: int) -> tuple[str | None, str, int]:
        """A literal field: its name by index (or a string when the index is 0), its value.
        The name is None when it was an entry added while bytes were lost."""
        i, p = self._int(b, p, prefix)
        name: str | None
        if i:
            try:
                name = self._entry(i)[0]
            except HpackUnknown:
                name = None  # the name of an entry added while bytes were lost
        else:
            name, p = self._str(b, p)
        value, p = self._str(b, p)
        return name, value, p


def _huffman(raw: bytes) -> bytes:
    global _huffman
    import functools

    from hpack.huffman_table import decode_huffman

    cached = functools.lru_cache(maxsize=_HUFFMAN_CACHE)(lambda r: bytes(decode_huffman(r)))
    _huffman = cached  # the first call sets up the cached decoder for all
    return cached(raw)


_JSON: dict[tuple, str] = {}  # header lists -> their column (the same lists recur)


def _decoder() -> Hpack:
    return Hpack()


class HTTP2Parser(ConnParser):
    protocol = Protocol.HTTP2
    table = "http_events"

    def __init__(self, role: Role = Role.UNKNOWN) -> None:
        super().__init__(role)
        self.ways: dict[Direction, Way] = {}
        self.streams: dict[int, Stream] = {}
        # the client's direction: from the role, else from where the preface shows
        self.req_dir: Direction | None = {Role.SERVER: Direction.INGRESS,
                                          Role.CLIENT: Direction.EGRESS}.get(role)
        self.gone: set[int] = set()  # streams given up at a loss whose requests go on: ignored
        self.grpc = False  # a gRPC call was seen on this connection
        self.from_start = False  # the client's preface was seen

    # -- bytes ----------------------------------------------------------------------------
    def _way(self, d: Direction) -> Way:
        w = self.ways.get(d)
        if w is None:
            w = self.ways[d] = Way(_decoder(), d)
        return w

    def feed(self, chunk: DataChunk) -> list[dict]:
        d = chunk.direction
        w = self._way(d)
        data = bytes(chunk.data)
        gap = chunk.gap
        if w.broken:
            self.stats.bytes_skipped += gap
            if not self._resume(w, data):
                return []
            gap = 0  # frames from here: the lost bytes are behind us
        if not w.started:
            if self.req_dir is None and not gap and data.startswith(PREFACE[:16]):
                self.req_dir = d
            if d == self.req_dir and not gap and data[:len(PREFACE)] == PREFACE[:min(len(data), len(PREFACE))]:
                w.preface = len(PREFACE)
            elif gap and self.req_dir is not None and d != self.req_dir:
                # the server's first frames (its SETTINGS) written before the sensor knew the
                # protocol from the client's preface: whole frames, so the direction starts
                # afresh at this chunk (a frame boundary). They hold no header block, unless
                # they are a loss after all: the table and the streams' responses are then
                # taken as possibly lost, at no cost when they are not
                self.stats.bytes_skipped += gap
                gap = 0
                w.decoder.desync()
                for st in self.streams.values():
                    st.after_loss = True
            if w.preface:
                self.from_start = True
            elif not self.from_start:
                # the connection's middle (it began before the agent looked; the sensor knew it
                # from frames, not the preface): the tables are as after a loss, and this
                # direction starts at a frame boundary
                w.decoder.desync()
                if not self._frames_tile(data):
                    w.started = w.broken = True
                    self.stats.bytes_skipped += len(data) + gap
                    return []
                gap = 0
        w.started = True
        out: list[dict] = []
        try:
            if gap:
                out += self._missing(w, gap, chunk.ts_ns, records=True)
                if w.broken and not self._resume(w, data):
                    return out
            out += self._bytes(d, w, data, chunk.ts_ns)
            if chunk.truncated and not w.broken:
                out += self._missing(w, chunk.truncated, chunk.ts_ns)
        except Exception:  # noqa: BLE001 - hostile bytes (a header block the decoder refuses): never raise
            self._break(w)
        return out

    def _break(self, w: Way) -> None:
        """This direction's bytes cannot be followed from here (lost where frames or a header
        block were, or not HTTP/2): it waits for a chunk that starts at a frame boundary
        (_frames_tile), its HPACK table known again only from what the peer adds from then
        on (Hpack.desync). The streams whose frames this way may have been among the lost
        bytes are given up, counted unmatched: a request not ended, a response begun; a
        response not begun is kept if it begins with its status (_begun)."""
        if w.broken:
            return
        w.broken = True
        self.stats.invalid += 1
        w.ftype, w.left, w.pad, w.preface = -1, 0, -1, 0
        w.head.clear()
        w.payload.clear()
        w.block = None
        w.resync = False
        w.decoder.desync()
        is_req = self.req_dir is None or w.d == self.req_dir
        for sid, st in list(self.streams.items()):
            if (not st.req.end_ts) if is_req else st.resp is not None:
                self._give_up(sid)  # its frames this way may be among the lost bytes
            elif not is_req:
                st.after_loss = True  # its response's first frames may be: see _begun

    def _give_up(self, sid: int) -> None:
        if self.streams.pop(sid, None) is not None:
            self.stats.unmatched_requests += 1
            if len(self.gone) >= MAX_STREAMS:
                self.gone.pop()
            self.gone.add(sid)

    def _begun(self, sid: int, headers: list[tuple[str, str]] | None) -> bool:
        """Whether a response frame (a header block, or DATA: ``headers`` None) of a stream in
        flight at a loss of server bytes begins its response: a block with ``:status``. Else
        its beginning was among the lost bytes, and the stream is given up."""
        st = self.streams.get(sid)
        if st is None or not st.after_loss or st.resp is not None:
            return True
        if headers is not None and any(k == ":status" for k, _ in headers):
            st.after_loss = False
            return True
        self._give_up(sid)
        return False

    def _resume(self, w: Way, data: bytes) -> bool:
        """A broken direction goes on at ``data`` if it starts at a frame boundary; else its
        bytes are skipped, counted."""
        if self._frames_tile(data):
            w.broken = False
            return True
        self.stats.bytes_skipped += len(data)
        return False

    @staticmethod
    def _frame_ok(ftype: int, flags: int, sid: int, length: int) -> bool:
        """A frame header that RFC 9113 allows (types 0-9 only; a HEADERS frame on a
        client's stream, odd)."""
        if length > RESYNC_MAX_FRAME:
            return False
        if ftype == DATA:
            return sid > 0 and not flags & ~(END_STREAM | PADDED)
        if ftype == HEADERS:
            return sid % 2 == 1 and not flags & ~(END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG)
        if ftype == PRIORITY:
            return sid > 0 and length == 5 and flags == 0
        if ftype == RST_STREAM:
            return sid > 0 and length == 4 and flags == 0
        if ftype == SETTINGS:
            return sid == 0 and length % 6 == 0 and (flags == 0 or (flags == 1 and length == 0))
        if ftype == PUSH_PROMISE:
            return sid % 2 == 1 and not flags & ~(END_HEADERS | PADDED)
        if ftype == PING:
            return sid == 0 and length == 8 and flags in (0, 1)
        if ftype == GOAWAY:
            return sid == 0 and length >= 8 and flags == 0
        if ftype == WINDOW_UPDATE:
            return length == 4 and flags == 0
        if ftype == CONTINUATION:
            return sid > 0 and not flags & ~END_HEADERS
        return False

    def _frames_tile(self, data: bytes) -> bool:
        """Whether ``data`` (a chunk: one call's bytes) starts at a frame boundary: frame
        headers that RFC 9113 allows, one after the other, up to its end (the last frame may
        go on past it); not a CONTINUATION first, whose HEADERS was lost."""
        i, n, prev = 0, len(data), -1
        if n < 9:
            return False
        while i + 9 <= n:
            ftype, flags = data[i + 3], data[i + 4]
            length = int.from_bytes(data[i:i + 3], "big")
            sid = int.from_bytes(data[i + 5:i + 9], "big")
            if sid & 0x80000000 or not self._frame_ok(ftype, flags, sid, length):
                return False
            if ftype == CONTINUATION and prev not in (HEADERS, PUSH_PROMISE, CONTINUATION):
                return False
            prev = ftype if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION) and not flags & END_HEADERS else -1
            i += 9 + length
        return True

    def _missing(self, w: Way, n: int, ts: int, records: bool = False) -> list[dict]:
        """n bytes of this direction were never seen (lost, or not copied). Inside a DATA
        payload they only shorten the body. Past its end, when they are a write's tail not
        copied and that stream is the only one open, the direction looks for the next frame
        header in what comes next (``resync``), and that stream's row is kept. Anywhere else,
        and always for ``records`` lost (a gap: whole calls, begun and ended, and their header
        blocks can be among them), the direction breaks (_break) and goes on at a frame
        boundary."""
        if w.preface:
            k = min(n, w.preface)
            w.preface -= k
            n -= k
        if not n:
            return []
        self.stats.bytes_skipped += n
        if w.resync and not records:
            self._resync_body(w, n, ts)
            return []
        if w.ftype == DATA and not w.flags & PADDED:
            if n <= w.left:
                msg = self._msg_of(w.sid, w)
                if msg is not None:
                    msg.body_size += n
                w.left -= n
                return self._frame_done(w, ts) if not w.left else []
            # one write's tail not copied; records lost (a gap) can hold whole calls begun
            # and ended among them, their header blocks with them: those always break
            if list(self.streams) == [w.sid] and not records:
                msg = self._msg_of(w.sid, w)
                if msg is not None:
                    msg.body_size += w.left
                rest = n - w.left
                w.resync, w.resync_sid, w.resync_bytes = True, w.sid, 0
                w.ftype, w.left = -1, 0
                w.head.clear()
                self._resync_body(w, rest, ts)
                return []
        self._break(w)
        return []

    def _resync_body(self, w: Way, n: int, ts: int) -> None:
        """Bytes while resynchronising: taken for the resync stream's DATA (their frame headers,
        9 bytes each, cannot be told apart), up to MAX_RESYNC."""
        w.resync_bytes += n
        w.resync_ts = ts
        if w.resync_bytes > MAX_RESYNC:
            w.resync = False
            self._break(w)
            return
        st = self.streams.get(w.resync_sid)
        msg = (st.req if w.d == self.req_dir else st.resp) if st is not None else None
        if msg is not None:
            msg.body_size += n

    def _find_frame(self, data: bytes) -> int:
        """The first offset in ``data`` where a plausible frame header of this connection
        starts: a known type with flags it can have, on the resync stream, another open stream,
        or (connection frames) stream 0, of a plausible length. -1 if none."""
        for i in range(len(data) - 8):
            length = int.from_bytes(data[i:i + 3], "big")
            ftype, flags = data[i + 3], data[i + 4]
            sid = int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF
            if ftype not in (DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, GOAWAY):
                continue
            ok = self._frame_ok(ftype, flags, sid, length)
            if ftype in (DATA, RST_STREAM) or (ftype == WINDOW_UPDATE and sid):
                ok = ok and sid in self.streams
            if ok:
                return i
        return -1

    def _bytes(self, d: Direction, w: Way, data: bytes, ts: int) -> list[dict]:
        out: list[dict] = []
        i, n = 0, len(data)
        if w.resync:
            i = self._find_frame(data)
            if i < 0:
                self._resync_body(w, n, ts)
                return out
            if i:
                self._resync_body(w, i, ts)
            w.resync = False
            sid = int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF
            if sid not in (0, w.resync_sid):
                # another stream's frame: the resync stream ended among the lost bytes (its
                # END_STREAM with them), at the latest when its last bytes were seen
                out += self._end(w, w.resync_sid, w.resync_ts)
        if w.preface:
            k = min(w.preface, n)
            if data[:k] != PREFACE[len(PREFACE) - w.preface:len(PREFACE) - w.preface + k]:
                self._break(w)
                return out
            w.preface -= k
            i = k
        while i < n and not w.broken:
            if w.ftype < 0:  # a frame header
                if not w.head and i + 9 <= n:  # whole in this chunk
                    hi, lo, w.ftype, w.flags, sid = _FRAME_HEAD.unpack_from(data, i)
                    i += 9
                else:
                    take = min(9 - len(w.head), n - i)
                    w.head += data[i:i + take]
                    i += take
                    if len(w.head) < 9:
                        break
                    hi, lo, w.ftype, w.flags, sid = _FRAME_HEAD.unpack_from(w.head)
                    w.head.clear()
                length = hi << 8 | lo
                w.sid = sid & 0x7FFFFFFF
                w.left, w.length, w.pad = length, length, -1
                w.payload.clear()
                self.stats.frames += 1
                if w.block is not None and w.ftype != CONTINUATION:
                    self._break(w)  # a header block must go on in CONTINUATION frames
                    break
                if length == 0:
                    out += self._frame_done(w, ts)
                continue
            take = min(w.left, n - i)
            part = data[i:i + take]
            off = w.length - w.left  # where in the payload this part starts
            i += take
            w.left -= take
            if w.ftype == DATA:
                self._data(w, part, off)
            elif w.ftype in BLOCK_TYPES:
                if len(w.payload) + len(part) + (len(w.block) if w.block is not None else 0) > MAX_BLOCK:
                    self._break(w)
                    break
                if not w.left and not w.payload:  # the whole payload in this chunk
                    out += self._frame_done(w, ts, part)
                    continue
                w.payload += part
            if not w.left:
                out += self._frame_done(w, ts)
        return out

    def _data(self, w: Way, part: bytes, off: int) -> None:
        """A piece of a DATA frame's payload, starting ``off`` bytes into it: body bytes, but for
        a padded frame's pad length (its first byte) and padding (its last ``pad`` bytes)."""
        if w.flags & PADDED:
            if off == 0 and part:
                w.pad, part, off = part[0], part[1:], 1
            if w.pad < 0:
                return
            part = part[:max(0, w.length - w.pad - off)]
        if w.d != self.req_dir and self.req_dir is not None and not self._begun(w.sid, None):
            return
        msg = self._msg_of(w.sid, w)
        if msg is None:
            return
        msg.body_size += len(part)
        room = BODY_KEEP - len(msg.body)
        if room > 0:
            msg.body += part[:room]

    def _msg_of(self, sid: int, w: Way) -> Msg | None:
        """The message of stream ``sid`` this direction's frames make, creating a request."""
        is_req = w.d == self.req_dir
        st = self.streams.get(sid)
        if is_req:
            if st is None:
                if sid in self.gone:
                    return None  # given up at a loss
                if len(self.streams) >= MAX_STREAMS:
                    old = next(iter(self.streams))
                    del self.streams[old]
                    self.stats.unmatched_requests += 1
                st = self.streams[sid] = Stream()
            return st.req
        if st is None:
            return None
        if st.resp is None:
            st.resp = Msg()
        return st.resp

    # -- frames ---------------------------------------------------------------------------
    def _frame_done(self, w: Way, ts: int, payload: bytes | None = None) -> list[dict]:
        """A frame whose payload has all come (``payload``, else the one gathered in w)."""
        ftype, flags, sid = w.ftype, w.flags, w.sid
        if payload is None:
            payload = bytes(w.payload)
            w.payload.clear()
        w.ftype = -1
        if ftype == DATA:
            if flags & END_STREAM:
                return self._end(w, sid, ts)
            return []
        if ftype in (HEADERS, PUSH_PROMISE):
            p = 0
            pad = 0
            if flags & PADDED:
                if not payload:
                    self._break(w)
                    return []
                pad, p = payload[0], 1
            if ftype == HEADERS and flags & PRIORITY_FLAG:
                p += 5
            if ftype == PUSH_PROMISE:
                p += 4  # the promised stream's id
            if p + pad > len(payload):
                self._break(w)
                return []
            w.block = bytearray(payload[p:len(payload) - pad])
            w.block_sid, w.block_flags, w.block_type = sid, flags, ftype
        elif ftype == CONTINUATION:
            if w.block is None or sid != w.block_sid:
                self._break(w)
                return []
            w.block += payload
            w.block_flags |= flags & END_HEADERS
            flags = w.block_flags
        elif ftype == RST_STREAM:
            st = self.streams.pop(sid, None)
            if st is not None:
                self.stats.unmatched_requests += 1
            return []
        else:
            return []  # SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY, unknown types
        if w.block is not None and len(w.block) > MAX_BLOCK:
            self._break(w)
            return []
        if not flags & END_HEADERS:
            return []
        block, btype, bsid, bflags = bytes(w.block), w.block_type, w.block_sid, w.block_flags
        w.block = None
        unknown = w.decoder.unknown
        headers = w.decoder.decode(block)
        self.stats.unknown_headers += w.decoder.unknown - unknown
        if btype == PUSH_PROMISE:
            return []  # decoded to keep the table in step; pushed responses are not rows
        if w.d != self.req_dir and self.req_dir is not None and not self._begun(bsid, headers):
            return []
        msg = self._msg_of(bsid, w)
        if msg is not None and not (msg is not self._req_of(bsid) and headers and headers[0][0] == ":status"
                                    and headers[0][1].startswith("1")):  # an interim 1xx: the final one follows
            if len(msg.headers) + len(headers) > MAX_HEADERS:
                self.stats.truncated += 1
                headers = headers[:max(0, MAX_HEADERS - len(msg.headers))]
            msg.headers += headers  # a second block on a stream: its trailers
        if bflags & END_STREAM:
            return self._end(w, bsid, ts)
        return []

    def _req_of(self, sid: int) -> Msg | None:
        st = self.streams.get(sid)
        return st.req if st is not None else None

    def _end(self, w: Way, sid: int, ts: int) -> list[dict]:
        st = self.streams.get(sid)
        if st is None:
            if w.d == self.req_dir:
                self.gone.discard(sid)
            return []
        is_req = w.d == self.req_dir
        if is_req:
            st.req.end_ts = ts
            return []
        if st.resp is None:
            return []
        st.resp.end_ts = ts
        del self.streams[sid]
        if not st.req.headers:
            self.stats.unmatched_responses += 1
            return []
        self.stats.records += 1
        return [self._record(st.req, st.resp)]

    @staticmethod
    def _json(headers: list[tuple[str, str]]) -> str:
        key = tuple(headers)
        text = _JSON.get(key)
        if text is None:
            if len(_JSON) >= _JSON_MAX:
                _JSON.clear()
            text = _JSON[key] = bound(headers_json(headers), HEADERS_COLUMN)
        return text

    def _record(self, req: Msg, resp: Msg) -> dict:
        rq, rs = dict(reversed(req.headers)), dict(reversed(resp.headers))  # a name's first value
        status = rs.get(":status", "")
        ctype = rs.get("content-type") or None
        req_ctype = rq.get("content-type", "")
        is_grpc = grpc.is_grpc(req_ctype) or grpc.is_grpc(ctype or "")
        if is_grpc:
            self.grpc = True
        elif (self.grpc and not req_ctype and ctype is None and grpc.framed(req.body, req.body_size)
              and (not resp.body_size or grpc.framed(resp.body, resp.body_size))):
            # both content-types left out (they named HPACK entries lost), on a connection that
            # carried gRPC, bodies framed as gRPC's exactly: gRPC
            is_grpc, req_ctype = True, "application/grpc"
        if is_grpc:
            kind = 2
            req_body = grpc.body_text(req_ctype, rq.get("grpc-encoding", ""), req.body)
            resp_body = grpc.body_text(ctype or req_ctype, rs.get("grpc-encoding", ""), resp.body)
        else:
            kind = 1 if ctype and "json" in ctype else 0
            req_body = req_body_text(req_ctype or None, req.body)
            resp_body = resp_body_text(ctype, rs.get("content-encoding") == "gzip", resp.body, resp.body_size)
        return {
            "time_": resp.end_ts,
            "major_version": 2,
            "minor_version": 0,
            "content_type": kind,
            "req_headers": self._json(req.headers),
            "req_method": rq.get(":method", ""),
            "req_path": rq.get(":path", ""),
            "req_body": bound(req_body, BODY_COLUMN),
            "req_body_size": req.body_size,
            "resp_headers": self._json(resp.headers),
            "resp_status": int(status) if status.isdigit() and len(status) <= 3 else 0,
            "resp_message": "",
            "resp_body": bound(resp_body, BODY_COLUMN),
            "resp_body_size": resp.body_size,
            "latency": latency(req.end_ts, resp.end_ts),
        }

    def pending_bytes(self) -> int:
        """Bytes held for frames and header blocks still incomplete (bounded by MAX_BLOCK a
        direction), and for the bodies of streams in flight (BODY_KEEP each)."""
        held = sum(len(w.head) + len(w.payload) + (len(w.block) if w.block is not None else 0)
                   for w in self.ways.values())
        return held + sum(len(st.req.body) + (len(st.resp.body) if st.resp else 0) for st in self.streams.values())

    def close(self, now_ns: int) -> list[dict]:
        self.stats.unmatched_requests += len(self.streams)
        self.streams.clear()
        for w in self.ways.values():
            w.payload.clear()
            w.block = None
            w.head.clear()
        return []


__all__ = ["HTTP2Parser", "PREFACE"]
