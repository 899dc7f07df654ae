"""HTTP/1.x: request and response messages paired in order into ``http_events`` records.

Handles keep-alive and pipelining (responses pair with requests first in, first out),
``Content-Length`` and ``Transfer-Encoding: chunked`` bodies, messages split across any
number of chunks and several messages in one chunk, bodiless responses (to HEAD, 1xx, 204,
304), interim ``100 Continue`` (counted as a frame, not paired: the final response is),
``101 Switching Protocols`` (paired, then the rest of the connection is skipped and
counted), bodies read to the connection's close when a response has neither length nor
chunking. Bodies are never buffered whole: the first ``BODY_KEEP`` bytes are kept, the rest
only counted. Bytes lost inside a body of known length (a gap, a truncated copy) only make
that body shorter; lost anywhere else the partial message is dropped and the direction
resynchronises on the next request line / status line.

Columns and their formats follow Pixie (``socket_trace_connector.cc``, ``http/parse.cc``,
``http/utils.cc``): headers as a JSON object sorted case-insensitively (repeated names kept),
``content_type`` 1 for a JSON response, bodies cut at 512 characters plus
``... [TRUNCATED]``, response bodies without a Content-Type or with a non-text one replaced
by Pixie's placeholders, gzip response bodies inflated.

Role.UNKNOWN: the direction whose first bytes are a request line carries requests (or the
other one, if the first bytes seen are a status line).
"""

from __future__ import annotations

import json
import operator
import re
import urllib.parse
import zlib
from dataclasses import dataclass, field

from andon.protocols.base import DataChunk, Direction, Protocol
from andon.protocols.stream import Side, StreamParser, bound, latency

MAX_HEAD = 64 * 1024  # request/status line plus headers
BODY_KEEP = 1024  # Pixie's http_body_limit_bytes
BODY_COLUMN = 512  # Pixie's max_body_bytes
HEADERS_COLUMN = 8192  # Pixie's kMaxHTTPHeadersBytes
MAX_CHUNK_LINE = 2048  # Pixie's chunk-size search window

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQ_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\s]+) HTTP/1\.([0-9])")
_RESP_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: ([^\r\n]*))?")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_REQ_START = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) \S+ HTTP/1\.[0-9]\r\n")
_RESP_START = re.compile(rb"HTTP/1\.[0-9] [0-9]{3}[ \r]")
_METHOD_PREFIX = re.compile(rb"[A-Z]{3,10} [/*a-zA-Z]")
_TOKEN_RE = re.compile(_TOKEN)
_HEX_RE = re.compile(rb"[0-9A-Fa-f]+")
# the fast path for an ASCII header block with no continuation lines: every line
# "name:[ \t]*value[ \t]*" (the same as _HEADER per line), then all pairs in one findall
_TOKEN_S = _TOKEN.decode()
_TOKEN_S_RE = re.compile(_TOKEN_S)
_json_str = json.encoder.encode_basestring  # what json.dumps(str, ensure_ascii=False) calls
_JSON_ESCAPE = json.encoder.ESCAPE  # the characters it escapes (quote, backslash, controls)


class Head:
    """What the bytes of one message head say (start line and headers), parsed once.

    Immutable once built, so equal head bytes share one (``_REQ_HEADS``, ``_RESP_HEADS``): a load generator
    sends the same request head over and over, and a server's response heads differ only
    when its Date header ticks.
    """

    __slots__ = ("minor", "method", "path", "status", "reason", "lines", "hmap", "hjson", "chunked", "cl",
                 "ctype", "gzip")

    def __init__(self, lines: list[HeaderLine]) -> None:
        self.minor = 1
        self.method = "-"
        self.path = "-"
        self.status = -1
        self.reason = "-"
        self.lines = lines
        hmap = self.hmap = dict(map(_LOWER_VALUE, reversed(lines)))  # the first of a repeated name wins
        self.hjson = bound(_members_json(lines), HEADERS_COLUMN)
        te = hmap.get("transfer-encoding")
        self.chunked = te is not None and te.lower().split(",")[-1].strip() == "chunked"
        cl = hmap.get("content-length")
        # None: no Content-Length; -1: one that is not a length (the message is invalid)
        self.cl = None if cl is None else (int(cl) if cl.isdigit() and len(cl) <= 18 else -1)
        self.ctype = hmap.get("content-type")
        self.gzip = hmap.get("content-encoding") == "gzip"


_REQ_HEADS: dict[bytes, Head] = {}  # request head bytes -> Head
_RESP_HEADS: dict[bytes, Head] = {}  # response head bytes -> Head
_HEAD_CACHE_MAX = 256  # entries of each (a few MB at worst); heads longer than _HEAD_CACHE_KEY are not kept
_HEAD_CACHE_KEY = 2048


class Message:
    """One message being read: its head and what arrived of its body."""

    __slots__ = ("is_req", "head", "method", "path", "body", "body_size", "mode", "remaining", "chunk_state",
                 "lost", "ts")

    def __init__(self, is_req: bool, head: Head, ts: int = 0) -> None:
        self.is_req = is_req
        self.head = head
        self.method = head.method
        self.path = head.path
        self.body = b""
        self.body_size = 0
        self.mode = "none"  # none | cl | chunked | close
        self.remaining = 0  # cl: body bytes to come; chunked: bytes of the current chunk
        self.chunk_state = "size"  # size | data | crlf | trailer
        self.lost = False
        self.ts = ts

    @property
    def minor(self) -> int:
        return self.head.minor

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def reason(self) -> str:
        return self.head.reason

    def header(self, name: str) -> str | None:
        return self.head.hmap.get(name.lower())

    def take_body(self, data: bytes | bytearray) -> None:
        room = BODY_KEEP - len(self.body)
        if room > 0:
            if type(self.body) is not bytearray:
                self.body = bytearray(self.body)
            self.body += data[:room]


# one header line as parsed: (name, value, the name in lower case, '"name":"value"' as JSON);
# made once per distinct line (_LINES), so a head seen for the first time is mostly lines seen before
HeaderLine = tuple[str, str, str, str]
_LOWER_VALUE = operator.itemgetter(2, 1)
_LOWER = operator.itemgetter(2)
_MEMBER = operator.itemgetter(3)


def header_line(name: str, value: str) -> HeaderLine:
    if _JSON_ESCAPE.search(name) is None and _JSON_ESCAPE.search(value) is None:
        member = '"%s":"%s"' % (name, value)  # nothing the encoder would escape: each string between quotes
    else:
        member = _json_str(name) + ":" + _json_str(value)
    return (name, value, name.lower(), member)


def _members_json(lines: list[HeaderLine]) -> str:
    return "{" + ",".join(map(_MEMBER, sorted(lines, key=_LOWER))) + "}"


def headers_json(headers: list[tuple[str, str]]) -> str:
    """Pixie's ``ToJSONString(HeadersMap)``: a compact JSON object, keys in case-insensitive
    order, a repeated header name repeated as a key."""
    return _members_json([header_line(k, v) for k, v in headers])


def _text(b: bytes | bytearray) -> str:
    return b.decode("utf-8", "replace")


def req_body_text(ctype: str | None, body: bytes | bytearray) -> str:
    """A request body as its column shows it: text, a url-encoded form decoded."""
    if not body:
        return ""
    text = _text(body)
    if ctype == "application/x-www-form-urlencoded":
        text = urllib.parse.unquote_plus(text, errors="replace")
    return text


def resp_body_text(ctype: str | None, gzip: bool, body: bytes | bytearray, body_size: int) -> str:
    """A response body as its column shows it, as Pixie does: text and JSON kept (gzip
    inflated), anything else replaced by a marker. HTTP/1.x and HTTP/2 alike."""
    if ctype is None:
        return "<removed: unknown content-type>" if body_size > 0 else _text(body)
    if "json" not in ctype and "text/" not in ctype:
        return "<removed: non-text content-type>"
    if gzip:
        try:
            return _text(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bytes(body), BODY_KEEP))
        except zlib.error:
            return "<Failed to gunzip body>"
    return _text(body)


def _req_body(msg: Message) -> str:
    return req_body_text(msg.head.ctype, msg.body)


def _resp_body(msg: Message) -> str:
    return resp_body_text(msg.head.ctype, msg.head.gzip, msg.body, msg.body_size)


def parse_head(is_req: bool, head: bytes) -> Head | None:
    """A message head (without its blank line) -> :class:`Head`; None if it is not HTTP/1.x."""
    nl = head.find(b"\r\n")
    first = head if nl < 0 else head[:nl]
    if is_req:
        m = _REQ_LINE.fullmatch(first)
    else:
        m = _RESP_LINE.fullmatch(first)
    if not m:
        return None
    lines: list[HeaderLine] | None = []
    if nl >= 0:
        lines = _fast_lines(head, nl)
        if lines is None:
            headers = _slow_headers(head.split(b"\r\n")[1:])
            if headers is None:
                return None
            lines = [header_line(k, v) for k, v in headers]
    h = Head(lines)
    if is_req:
        h.method, h.path, h.minor = _text(m.group(1)), _text(m.group(2)), int(m.group(3))
    else:
        h.minor, h.status = int(m.group(1)), int(m.group(2))
        h.reason = _text(m.group(3) or b"")
    return h


_LINES: dict[bytes, HeaderLine] = {}  # header line bytes -> what it says (fast path lines only)
_LINES_MAX = 4096  # entries (a few MB at worst); lines longer than _LINE_KEY are not kept
_LINE_KEY = 256


def _fast_lines(head: bytes, nl: int) -> list[HeaderLine] | None:
    """The common case: ASCII, no continuation lines, every line ``name:[ \t]*value[ \t]*``
    with a token name (what _HEADER matches), split without a regex, each distinct line
    parsed once (_LINES). None means "use the line by line path", which decides validity."""
    cache = _LINES
    out = []
    for line in head[nl + 2 :].split(b"\r\n"):
        hl = cache.get(line)
        if hl is None:
            if not line.isascii() or b"\n" in line:
                return None
            name, colon, value = line.decode("ascii").partition(":")
            if not colon or not (name.replace("-", "").isalnum() or _TOKEN_S_RE.fullmatch(name)):
                return None
            hl = header_line(name, value.strip(" \t"))
            if len(line) <= _LINE_KEY:
                if len(cache) >= _LINES_MAX:
                    cache.clear()
                cache[line] = hl
        out.append(hl)
    return out


def _slow_headers(lines: list[bytes]) -> list[tuple[str, str]] | None:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + _text(line.strip())).strip())
            continue
        h = _HEADER.fullmatch(line)
        if not h:
            return None
        headers.append((_text(h.group(1)), _text(h.group(2))))
    return headers


def _head(is_req: bool, head: bytes) -> Head | None:
    """:func:`parse_head` through the cache of heads already seen."""
    if type(head) is not bytes:  # a chunk's data may be any bytes-like object
        head = bytes(head)
    cache = _REQ_HEADS if is_req else _RESP_HEADS
    h = cache.get(head)
    if h is None:
        h = parse_head(is_req, head)
        if h is not None and len(head) <= _HEAD_CACHE_KEY:
            if len(cache) >= _HEAD_CACHE_MAX:
                cache.clear()
            cache[head] = h
    return h


class HTTPParser(StreamParser):
    protocol = Protocol.HTTP
    table = "http_events"
    drains = True  # _parse takes every whole message there is

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.upgraded = False

    # -- role -----------------------------------------------------------------------------
    def _guess(self, chunk: DataChunk) -> bool | None:
        if chunk.gap:
            return None
        data = bytes(chunk.data[:16])
        if data.startswith(b"HTTP/1."):
            return False
        if _METHOD_PREFIX.match(data):
            return True
        return None

    def _find_boundary(self, side: Side) -> int:
        pat = _REQ_START if side.is_req else _RESP_START
        m = pat.search(side.buf)
        return m.start() if m else -1

    # -- parsing --------------------------------------------------------------------------
    def feed(self, chunk: DataChunk) -> list[dict]:
        return self.feed_parts(chunk.ts_ns, chunk.direction, chunk.data, chunk.size, chunk.gap, chunk)

    def feed_parts(self, ts_ns: int, direction: Direction, data: bytes, size: int = -1, gap: int = 0,
                   chunk: DataChunk | None = None) -> list[dict]:
        if self.upgraded:
            self.stats.bytes_skipped += len(data)
            return []
        side = self.sides.get(direction)
        if (side is not None and not side.buf and side.state is None and not side.skip and not side.resync
                and not gap and not self.closed and self.req_dir is not None):
            out = self._whole(side, data, size, ts_ns)
            if out is not None:
                return out
        return StreamParser.feed(self, chunk if chunk is not None else DataChunk(ts_ns, direction, data, size, gap))

    def _whole(self, side: Side, data: bytes, size: int, ts: int) -> list[dict] | None:
        """The usual chunk: exactly one whole message, nothing buffered before it. Parsed
        straight from the chunk (no buffer, no copies); None sends it the general way,
        which makes the same records from it (tests/unit/test_observe_hotpath.py)."""
        if type(data) is not bytes:  # bytes methods below; other buffers go the general way
            return None
        n = len(data)
        if size != n or data[:2] == b"\r\n":
            return None
        end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            return None
        is_req = side.is_req
        head = _head(is_req, data[:end])
        if head is None or (is_req and len(head.method) > 20):  # _plausible_start's bound
            return None
        msg = Message(is_req, head, ts)
        if not self._body_mode(msg):
            return None
        rest = n - end - 4
        if msg.mode == "cl":
            if rest != msg.remaining:
                return None
            msg.body = data[end + 4 : end + 4 + BODY_KEEP]
            msg.remaining = 0
        elif msg.mode != "none" or rest:
            return None
        side.last_ts = ts
        return self._finish(side, msg)

    def _parse(self, side: Side) -> list[dict]:
        out: list[dict] = []
        while not self.upgraded and not side.resync:
            msg = side.state
            if msg is None:
                msg = self._parse_head(side)
                if msg is None:
                    break
                side.state = msg
            done_at = self._parse_body(side, msg)
            if done_at is None:
                break
            if done_at > 0:
                msg.ts = side.ts_at(done_at)
            side.consume(done_at)
            side.state = None
            out += self._finish(side, msg)
        if self.upgraded:
            self.stats.bytes_skipped += side.drop_all()
        return out

    @staticmethod
    def _plausible_start(is_req: bool, head: bytes) -> bool:
        if not is_req:
            n = min(len(head), 7)
            return head[:n] == b"HTTP/1."[:n]
        sp = head.find(b" ")
        method = head if sp < 0 else head[:sp]
        if sp < 0 and len(head) > 20:
            return False
        return len(method) <= 20 and (not method or _TOKEN_RE.fullmatch(method) is not None)

    def _invalid(self, side: Side) -> None:
        self._desync(side)

    def _parse_head(self, side: Side) -> Message | None:
        buf = side.buf
        lead = 0
        while buf.startswith(b"\r\n", lead):
            lead += 2
        if lead:
            side.consume(lead)
            buf = side.buf
        if not buf:
            return None
        # reject garbage as soon as the first bytes say it cannot be a message
        if not self._plausible_start(side.is_req, bytes(buf[:64])):
            self._invalid(side)
            return None
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buf) >= MAX_HEAD:
                self._invalid(side)
            return None
        head = _head(side.is_req, bytes(buf[:end]))
        if head is None:
            self._invalid(side)
            return None
        msg = Message(side.is_req, head, side.ts_at(end + 4))
        side.consume(end + 4)
        if not self._body_mode(msg):
            self._invalid(side)
            return None
        return msg

    def _body_mode(self, msg: Message) -> bool:
        head = msg.head
        if not msg.is_req:
            status = head.status
            if (self.reqs and self.reqs[0].method == "HEAD") or 100 <= status < 200 or status in (204, 304):
                msg.mode = "none"
                return True
        if head.chunked:
            msg.mode, msg.chunk_state = "chunked", "size"
            return True
        cl = head.cl
        if cl is not None:
            if cl < 0:
                return False
            msg.mode, msg.remaining, msg.body_size = "cl", cl, cl
            if cl == 0:
                msg.mode = "none"
            return True
        msg.mode = "none" if msg.is_req else "close"
        return True

    def _parse_body(self, side: Side, msg: Message) -> int | None:
        """Consume body bytes; return the offset in ``side.buf`` just past the message's
        last byte once it is complete (bytes before it not yet consumed), else None."""
        buf = side.buf
        if msg.mode == "none":
            return 0
        if msg.mode == "close":
            msg.take_body(buf)
            msg.body_size += len(buf)
            side.consume(len(buf))
            return None
        if msg.mode == "cl":
            take = min(msg.remaining, len(buf))
            msg.take_body(buf[:take])
            msg.remaining -= take
            if msg.remaining == 0:
                return take
            side.consume(take)
            return None
        # chunked
        pos = 0
        while True:
            st = msg.chunk_state
            if st == "size":
                nl = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                if nl < 0:
                    if len(buf) - pos > MAX_CHUNK_LINE:
                        self._invalid(side)
                    side.consume(pos)
                    return None
                size_text = bytes(buf[pos:nl]).split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 15 or _HEX_RE.fullmatch(size_text) is None:
                    self._invalid(side)
                    return None
                size = int(size_text, 16)
                pos = nl + 2
                if size == 0:
                    msg.chunk_state = "trailer"
                else:
                    msg.chunk_state, msg.remaining = "data", size
                    msg.body_size += size
            elif st == "data":
                take = min(msg.remaining, len(buf) - pos)
                msg.take_body(buf[pos : pos + take])
                msg.remaining -= take
                pos += take
                if msg.remaining:
                    side.consume(pos)
                    return None
                msg.chunk_state = "crlf"
            elif st == "crlf":
                if len(buf) - pos < 2:
                    side.consume(pos)
                    return None
                if buf[pos : pos + 2] != b"\r\n":
                    self._invalid(side)
                    return None
                pos += 2
                msg.chunk_state = "size"
            else:  # trailer: header lines up to an empty line
                nl = buf.find(b"\r\n", pos, pos + MAX_HEAD)
                if nl < 0:
                    if len(buf) - pos > MAX_HEAD:
                        self._invalid(side)
                    side.consume(pos)
                    return None
                empty = nl == pos
                pos = nl + 2
                if empty:
                    return pos

    def _absorb(self, side: Side, n: int, ts: int) -> list[dict] | None:
        msg = side.state
        if not isinstance(msg, Message):
            return None
        if msg.mode == "close":
            msg.body_size += n
            msg.lost = True
            return []
        if msg.mode == "cl" and n <= msg.remaining:
            msg.remaining -= n
            msg.lost = True
            if msg.remaining == 0:
                msg.ts = ts
                side.state = None
                return self._finish(side, msg)
            return []
        if msg.mode == "chunked" and msg.chunk_state == "data" and n <= msg.remaining:
            msg.remaining -= n
            msg.lost = True
            if msg.remaining == 0:
                msg.chunk_state = "crlf"
            return []
        return None

    def _close_sides(self, now_ns: int) -> list[dict]:
        out: list[dict] = []
        for side in self.sides.values():
            msg = side.state
            if isinstance(msg, Message) and msg.mode == "close" and not side.is_req:
                msg.ts = side.last_ts or now_ns
                side.state = None
                out += self._finish(side, msg)
        return out

    # -- pairing --------------------------------------------------------------------------
    def _finish(self, side: Side, msg: Message) -> list[dict]:
        if msg.is_req:
            self._push_request(msg)
            return []
        self.stats.frames += 1
        if 100 <= msg.status < 200 and msg.status != 101:
            return []  # interim (100 Continue): the final response answers the request
        if not self.reqs:
            self.stats.unmatched_responses += 1
            return []
        req = self.reqs.popleft()
        if msg.status == 101:
            self.upgraded = True
        return [self._emit(self._record(req, msg))]

    def _record(self, req: Message, resp: Message) -> dict:
        rh = resp.head
        ctype = rh.ctype
        return {
            "time_": resp.ts,
            "major_version": 1,
            "minor_version": rh.minor,
            "content_type": 1 if ctype and "json" in ctype else 0,
            "req_headers": req.head.hjson,
            "req_method": req.method,
            "req_path": req.path,
            "req_body": bound(_req_body(req), BODY_COLUMN) if req.body else "",
            "req_body_size": req.body_size,
            "resp_headers": rh.hjson,
            "resp_status": rh.status,
            "resp_message": rh.reason,
            "resp_body": bound(_resp_body(resp), BODY_COLUMN),
            "resp_body_size": resp.body_size,
            "latency": latency(req.ts, resp.ts),
        }
