"""Redis RESP2 and RESP3: commands and replies paired in order into ``redis_events`` records.

Requests are arrays of bulk strings or inline commands (``PING\\r\\n``); replies are any RESP2
type (simple string, error, integer, bulk string, array) or RESP3 type (null, boolean,
double, big number, blob error, verbatim string, map, set, attribute, push). Pipelines pair
first in, first out (Pixie pairs each reply with the latest earlier request, which
mis-pairs pipelines; we do not). Published messages (``message``/``pmessage``/``smessage``
arrays from the server, RESP2 or RESP3 push) become records of their own with
``req_cmd = "PUSH PUB"`` and latency 0, as in Pixie's stitcher; (un)subscribe
confirmations answer the (UN)SUBSCRIBE that asked for them (one record per command, the
further per-channel confirmations are counted frames).

Formats follow Pixie's ``redis/parse.cc`` and ``formatting.cc``: a bulk string is its text,
null is ``<NULL>``, a null array ``[NULL]``, an error keeps its ``-`` prefix, an array is a
compact JSON array of its elements' texts. ``req_cmd`` is the upper-cased command name (two
words for container commands such as ``CONFIG GET``); ``req_args`` is a JSON object named
after the arguments for the common commands in ``_ARGS`` (Pixie has the full command table;
we cover the usual ones), and the JSON array of arguments otherwise.

Role.UNKNOWN: a direction starting with an array of bulk strings or an inline command word
carries requests; one starting with a reply type marker carries replies.

Lost bytes (the copy bound cut a big write, or the ring dropped records). RESP does not say
how long an aggregate is, so the rest of a cut reply cannot be found by looking for a
frame start: the words inside a reply (COMMAND DOCS's ``integer``, ``arguments``) look like
replies themselves. Instead the order of the exchange is used:

* a request cut short is still a request: it is queued with the words seen (the cut one
  ends in ``... [TRUNCATED]``), so its reply answers it and not the next command;
* a reply cut short answers the oldest waiting request at once, with what was seen of it
  (``... [TRUNCATED]`` at the end; latency to the last byte seen). Requests still waiting
  then are counted unmatched: their replies may have been in the lost bytes;
* except a reply that is one bulk string (``$``, ``=``, ``!``: its length is in its first
  line): when the lost bytes end inside it or exactly at its end, the rest of it is skipped
  by that length, the waiting requests stay queued, and the replies after it pair as usual
  (those that were not in the lost bytes themselves);
* after the cut, a direction resumes only at a write that starts a frame: for replies, once
  a request has been made since the cut (or at a published message), since before that
  everything the server sends is the rest of the cut reply;
* the same holds for writes held while the role was unknown, when they are replayed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from andon.protocols.base import DataChunk, Direction, Protocol
from andon.protocols.stream import MAX_STRING, TRUNCATED_MSG, Side, StreamParser, bound, latency

MAX_DEPTH = 16
MAX_ELEMENTS = 1 << 20
MAX_INLINE = 64 * 1024
_NEED = object()
_BAD = object()
_MARKERS = b"+-:$*_,#(!=%~>|"
_CONTAINER = {
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
}
# argument names from the Redis command reference: a plain name is one argument, a name
# ending in "..." takes the rest as a list, "[name]" is optional
_ARGS: dict[str, tuple[str, ...]] = {
    "GET": ("key",), "GETDEL": ("key",), "INCR": ("key",), "DECR": ("key",), "TTL": ("key",),
    "PTTL": ("key",), "TYPE": ("key",), "STRLEN": ("key",), "PERSIST": ("key",),
    "INCRBY": ("key", "increment"), "DECRBY": ("key", "decrement"), "APPEND": ("key", "value"),
    "EXPIRE": ("key", "seconds"), "PEXPIRE": ("key", "milliseconds"), "SETNX": ("key", "value"),
    "DEL": ("key...",), "EXISTS": ("key...",), "UNLINK": ("key...",), "MGET": ("key...",),
    "HGET": ("key", "field"), "HDEL": ("key", "field..."), "HGETALL": ("key",), "HKEYS": ("key",),
    "HLEN": ("key",), "HEXISTS": ("key", "field"), "LLEN": ("key",),
    "LPUSH": ("key", "element..."), "RPUSH": ("key", "element..."), "LPOP": ("key", "[count]"),
    "RPOP": ("key", "[count]"), "LRANGE": ("key", "start", "stop"), "LINDEX": ("key", "index"),
    "SADD": ("key", "member..."), "SREM": ("key", "member..."), "SMEMBERS": ("key",),
    "SCARD": ("key",), "SISMEMBER": ("key", "member"), "ZSCORE": ("key", "member"),
    "ZRANGE": ("key", "start", "stop"), "ZCARD": ("key",), "PUBLISH": ("channel", "message"),
    "SUBSCRIBE": ("channel...",), "PSUBSCRIBE": ("pattern...",), "ECHO": ("message",),
    "PING": ("[message]",), "KEYS": ("pattern",), "SELECT": ("index",), "AUTH": ("password",),
    "CONFIG GET": ("parameter...",), "HELLO": ("[protover]",),
}
_PUB = {"message", "pmessage", "smessage"}
_SUB = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe"}


_INT_RE = re.compile(rb"-?[0-9]+")
_CMD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
# what json.dumps(value, ensure_ascii=False, separators=(",", ":")) builds on every call
_js_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


_js_str = json.encoder.encode_basestring  # what that encoder calls for a str (ensure_ascii=False)


def _js(value: object) -> str:
    """Compact JSON; the shapes commands and replies make (lists of str, str keys to str or
    lists of str) written by hand, the same text as ``_js_encode`` at a fraction of its cost."""
    enc = _js_str
    if type(value) is list:
        if set(map(type, value)) <= {str}:
            return "[" + ",".join(map(enc, value)) + "]"
        return _js_encode(value)
    if type(value) is dict:
        parts = []
        for k, v in value.items():
            if type(k) is not str:
                return _js_encode(value)
            if type(v) is str:
                parts.append(enc(k) + ":" + enc(v))
            elif type(v) is list and set(map(type, v)) <= {str}:
                parts.append(enc(k) + ":[" + ",".join(map(enc, v)) + "]")
            else:
                return _js_encode(value)
        return "{" + ",".join(parts) + "}"
    return _js_encode(value)


@dataclass(slots=True)
class Value:
    """A parsed RESP value: its Pixie text and, for aggregates, the element texts."""

    text: str
    items: list[str] | None = None
    push: bool = False
    bulk_array: bool = False  # an array whose elements are all bulk strings (a command)


def _line(buf: bytearray, pos: int) -> tuple[bytes, int] | object:
    nl = buf.find(b"\r\n", pos, pos + MAX_INLINE)
    if nl < 0:
        return _BAD if len(buf) - pos > MAX_INLINE else _NEED
    return bytes(buf[pos:nl]), nl + 2


def _size(text: bytes) -> int | None:
    if len(text) > 16 or _INT_RE.fullmatch(text) is None:
        return None
    n = int(text)
    return n if n >= -1 else None


def _t(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def parse_value(buf: bytearray, pos: int, depth: int = 0) -> tuple[Value, int] | object:
    """One RESP value at ``buf[pos:]``: (value, next position), ``_NEED`` or ``_BAD``."""
    if pos >= len(buf):
        return _NEED
    if depth > MAX_DEPTH:
        return _BAD
    marker = buf[pos]
    got = _line(buf, pos + 1)
    if not isinstance(got, tuple):
        return got
    text, nxt = got
    if marker in b"+:,(":
        return Value(_t(text)), nxt
    if marker == ord("-"):
        return Value("-" + _t(text)), nxt
    if marker == ord("_"):
        return Value("<NULL>"), nxt
    if marker == ord("#"):
        if text not in (b"t", b"f"):
            return _BAD
        return Value("true" if text == b"t" else "false"), nxt
    if marker in b"$!=":
        n = _size(text)
        if n is None or n > 512 * 1024 * 1024:
            return _BAD
        if n == -1:
            return Value("<NULL>"), nxt
        if len(buf) < nxt + n + 2:
            return _NEED
        if buf[nxt + n : nxt + n + 2] != b"\r\n":
            return _BAD
        body = _t(bytes(buf[nxt : nxt + n]))
        if marker == ord("!"):
            body = "-" + body
        elif marker == ord("=") and len(body) >= 4 and body[3] == ":":
            body = body[4:]  # verbatim: 3-letter format and a colon before the text
        return Value(body), nxt + n + 2
    if marker in b"*~>%|":
        n = _size(text)
        if n is None or n > MAX_ELEMENTS:
            return _BAD
        if n == -1:
            return Value("[NULL]"), nxt
        count = n * 2 if marker in b"%|" else n
        items: list[str] = []
        all_bulk = True
        p = nxt
        for _ in range(count):
            if p < len(buf) and buf[p] != ord("$"):
                all_bulk = False
            got = parse_value(buf, p, depth + 1)
            if not isinstance(got, tuple):
                return got
            item, p = got
            items.append(item.text)
        if marker == ord("|"):  # attribute: metadata before the real reply
            return parse_value(buf, p, depth + 1)
        if marker == ord("%"):
            return Value(_js(dict(zip(items[::2], items[1::2]))), items), p
        return Value(_js(items), items, push=marker == ord(">"), bulk_array=all_bulk and marker == ord("*")), p
    return _BAD


def _format_args(cmd: str, args: list[str]) -> str:
    if cmd == "SET" and len(args) >= 2:
        opts: list[str] = []
        i = 2
        while i < len(args):
            if args[i].upper() in ("EX", "PX", "EXAT", "PXAT") and i + 1 < len(args):
                opts.append(args[i] + " " + args[i + 1])
                i += 2
            else:
                opts.append(args[i])
                i += 1
        return _js({"key": args[0], "value": args[1], "options": opts})
    spec = _ARGS.get(cmd)
    if spec is None:
        return _js(args)
    out: dict[str, object] = {}
    rest = list(args)
    for name in spec:
        if name.endswith("..."):
            if not rest:
                return _js(args)
            out[name[:-3]] = rest
            rest = []
        elif name.startswith("["):
            if rest:
                out[name[1:-1]] = rest.pop(0)
        else:
            if not rest:
                return _js(args)
            out[name] = rest.pop(0)
    if rest:
        return _js(args)
    return _js(out)


@dataclass(slots=True)
class Request:
    cmd: str
    args: str
    ts: int
    sub_kind: str = ""
    sub_count: int = 0


_COMMANDS: dict[tuple[str, ...], tuple[str, str, str, int]] = {}  # words -> what command() makes of them
_COMMANDS_MAX = 1024  # entries; commands of more than _COMMANDS_CHARS characters are not kept
_COMMANDS_CHARS = 256


def command(words: list[str]) -> Request:
    """The request record's ``req_cmd`` and ``req_args`` from a command's words; a command
    sent again (a benchmark's, a polling client's) is looked up, not formatted again."""
    key = tuple(words)
    got = _COMMANDS.get(key)
    if got is None:
        req = _command(words)
        if sum(map(len, words)) <= _COMMANDS_CHARS:
            if len(_COMMANDS) >= _COMMANDS_MAX:
                _COMMANDS.clear()
            _COMMANDS[key] = (req.cmd, req.args, req.sub_kind, req.sub_count)
        return req
    return Request(got[0], got[1], 0, got[2], got[3])


def _command(words: list[str]) -> Request:
    if not words or _CMD_RE.fullmatch(words[0]) is None:
        return Request("", _js(words), 0)
    cmd = words[0].upper()
    rest = words[1:]
    if cmd in _CONTAINER and rest:
        cmd = cmd + " " + rest[0].upper()
        rest = rest[1:]
    req = Request(cmd, _format_args(cmd, rest), 0)
    if cmd.lower() in _SUB:
        req.sub_kind, req.sub_count = cmd.lower(), max(1, len(rest))
    return req


_LOST = "lost"  # Side.state of a direction skipping the rest of a cut frame
_START_REQ = re.compile(rb"\*[1-9][0-9]{0,6}\r\n\$")
_START_PUB = re.compile(rb"\*[34]\r\n\$[78]\r\n[ps]?message\r\n")


def _words_so_far(buf: bytearray) -> list[str]:
    """The words of the command at the front of ``buf`` that was cut short: the whole bulk
    strings, then what was seen of the cut one with the truncation mark."""
    if not buf or buf[0] != ord("*"):
        line = bytes(buf[: MAX_INLINE]).split(b"\r\n", 1)[0]
        words = [_t(w) for w in line.split()]
        if words:
            words[-1] += TRUNCATED_MSG
        return words
    got = _line(buf, 1)
    if not isinstance(got, tuple):
        return []
    _, pos = got
    words: list[str] = []
    while pos < len(buf):
        if buf[pos] != ord("$"):
            break
        got = _line(buf, pos + 1)
        if not isinstance(got, tuple):
            break
        text, nxt = got
        n = _size(text)
        if n is None or n < 0:
            break
        if len(buf) < nxt + n + 2:
            words.append(_t(bytes(buf[nxt : nxt + min(n, MAX_STRING)])) + TRUNCATED_MSG)
            return words
        words.append(_t(bytes(buf[nxt : nxt + n])))
        pos = nxt + n + 2
    if words:
        words[-1] += TRUNCATED_MSG
    return words


def _bulk_left(buf: bytearray) -> int | None:
    """The bytes still to come of the bulk string reply (``$``, ``=``, ``!``) at the front of
    ``buf``, once its length line is whole; None for any other reply."""
    if buf[:1] not in (b"$", b"=", b"!"):
        return None
    got = _line(buf, 1)
    if not isinstance(got, tuple):
        return None
    n = _size(got[0])
    if n is None or n < 0:
        return None
    left = got[1] + n + 2 - len(buf)
    return left if left > 0 else None


def _reply_so_far(buf: bytearray) -> str:
    """What was seen of a reply that was cut short, marked as truncated: a bulk string's
    first bytes, an aggregate's whole top-level elements."""
    if buf[:1] in (b"$", b"=", b"!"):
        got = _line(buf, 1)
        if isinstance(got, tuple):
            body = _t(bytes(buf[got[1] : got[1] + MAX_STRING]))
            return ("-" + body if buf[:1] == b"!" else body) + TRUNCATED_MSG
    elif buf[:1] and buf[:1] in b"*~>%":
        got = _line(buf, 1)
        if isinstance(got, tuple):
            items: list[str] = []
            pos = got[1]
            while True:
                value = parse_value(buf, pos, 1)
                if not isinstance(value, tuple):
                    break
                items.append(value[0].text)
                pos = value[1]
            if buf[:1] == b"%":  # a map's whole pairs, as parse_value shows a map
                return _js(dict(zip(items[::2], items[1::2]))) + TRUNCATED_MSG
            return _js(items) + TRUNCATED_MSG
    return TRUNCATED_MSG


class RedisParser(StreamParser):
    protocol = Protocol.REDIS
    table = "redis_events"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sub_left = 0  # further (un)subscribe confirmations still expected
        self.sub_kind = ""

    def feed(self, chunk: DataChunk) -> list[dict]:
        return self.feed_parts(chunk.ts_ns, chunk.direction, chunk.data, chunk.size, chunk.gap, chunk)

    def feed_parts(self, ts_ns: int, direction: Direction, data: bytes, size: int = -1, gap: int = 0,
                   chunk: DataChunk | None = None) -> list[dict]:
        side = self.sides.get(direction)
        if side is None and gap and self.req_dir is not None and direction in (Direction.EGRESS, Direction.INGRESS):
            side = self._side(Direction(direction))
        if side is not None and (gap or side.state is _LOST) and not self.closed:
            out = self._lose(side, gap, ts_ns) if gap else []
            if side.state is not _LOST:  # the loss was inside a reply of known length: no cut
                return out + StreamParser.feed(self, DataChunk(ts_ns, direction, data, size, 0))
            if not self._resumes(side, data):
                self.stats.bytes_skipped += len(data)  # the rest of the cut frame
                side.last_ts = ts_ns
                if size > len(data):
                    self.stats.truncated += 1
                return out
            side.state = None  # a frame starts here: what was lost before it is accounted for
            return out + StreamParser.feed(self, DataChunk(ts_ns, direction, data, size, 0))
        if (side is not None and not side.buf and not side.skip and not side.resync and not gap
                and not self.closed and size == len(data) and data):
            out = self._whole(side, data, ts_ns)
            if out is not None:
                return out
        return StreamParser.feed(self, chunk if chunk is not None else DataChunk(ts_ns, direction, data, size, gap))

    def _whole(self, side: Side, data: bytes, ts: int) -> list[dict] | None:
        """The usual chunk: whole commands (arrays of bulk strings) or whole plain replies
        and nothing else, nothing buffered before them. Read straight from the chunk; None
        (anything else, decided before any state changes) sends it the general way, which
        makes the same records of it (tests/unit/test_observe_hotpath.py)."""
        if type(data) is not bytes:  # bytes methods below; other buffers go the general way
            return None
        # one split at every CRLF: a value whose bytes hold a CRLF, or whose length line does
        # not say exactly the length of the next part, is not this simple shape: None
        parts = data.split(b"\r\n")
        if parts[-1]:
            return None
        n = len(parts) - 1
        i = 0
        got: list = []
        if side.is_req:
            while i < n:
                line = parts[i]
                count = line[1:]
                if line[:1] != b"*" or not count.isdigit() or len(count) > 16:
                    return None
                c = int(count)
                end = i + 1 + 2 * c
                if not 1 <= c <= MAX_ELEMENTS or end > n:
                    return None
                words = []
                for j in range(i + 1, end, 2):
                    word = parts[j + 1]
                    if parts[j] != b"$%d" % len(word):
                        return None
                    words.append(word.decode("utf-8", errors="replace"))
                got.append(words)
                i = end
            for words in got:
                req = command(words)
                req.ts = ts
                self._push_request(req)
            side.last_ts = ts
            return []
        while i < n:
            line = parts[i]
            marker = line[:1]
            if len(line) > 1024:
                return None
            if marker == b"$":
                if line == b"$-1":
                    got.append("<NULL>")
                    i += 1
                    continue
                if i + 1 >= n or line != b"$%d" % len(parts[i + 1]):
                    return None
                got.append(parts[i + 1].decode("utf-8", errors="replace"))
                i += 2
            elif marker == b"+" or marker == b":":
                got.append(line[1:].decode("utf-8", errors="replace"))
                i += 1
            elif marker == b"-":
                got.append("-" + line[1:].decode("utf-8", errors="replace"))
                i += 1
            else:
                return None
        side.last_ts = ts
        out: list[dict] = []
        stats = self.stats
        reqs = self.reqs
        for text in got:  # _reply for a value that is not an aggregate
            stats.frames += 1
            if not reqs:
                stats.unmatched_responses += 1
                continue
            req = reqs.popleft()
            out.append(self._emit(self._record(req.cmd, req.args, req.ts, text, ts)))
        return out

    def _resumes(self, side: Side, data: bytes) -> bool:
        """Whether a direction skipping the rest of a cut frame starts a frame again with
        this write (see the module docstring)."""
        if side.is_req:
            if _START_REQ.match(data):
                return True
            word = data.split(b"\r\n", 1)[0].split(b" ", 1)[0].decode("latin-1").upper()
            return data.endswith(b"\r\n") and (word in _ARGS or word in _CONTAINER or word == "SET")
        if data[:1] == b">" or _START_PUB.match(data):
            return True
        return bool(self.reqs) and data[:1] in _MARKERS and parse_value(bytearray(data[:MAX_INLINE]), 0) is not _BAD

    def _lose(self, side: Side, n: int, ts: int) -> list[dict]:
        """``n`` bytes of this direction were never seen (see the module docstring)."""
        if side.state is _LOST:
            return []
        n, out = self._lose_in_skip(side, n, ts)  # inside the rest of a bulk string being skipped
        if n == 0:
            return out
        left = None if side.is_req else _bulk_left(side.buf)
        if left is not None and n <= left:
            # the lost bytes end inside this bulk string or at its end: it answers the oldest
            # request, the rest of it is skipped, and the replies after it still pair
            out += self._answer_oldest(_reply_so_far(side.buf), ts)
            self.stats.bytes_skipped += side.drop_all() + left - n  # seen, and still to come
            side.resync = False
            if left > n:
                self._begin_skip(side, left - n, None)
            return out
        if side.is_req:
            words = _words_so_far(side.buf)
            req = command(words) if words else Request("", TRUNCATED_MSG, 0)
            req.ts = ts
            self._push_request(req)
        else:
            out += self._answer_oldest(_reply_so_far(side.buf) if side.buf else TRUNCATED_MSG, ts)
            self.stats.unmatched_requests += len(self.reqs)
            self.reqs.clear()
        self.stats.bytes_skipped += side.drop_all()
        side.resync = False
        side.state = _LOST
        return out

    def _answer_oldest(self, text: str, ts: int) -> list[dict]:
        """A reply cut short, ``text`` what was seen of it: the oldest waiting request's record
        (none if no request waits: an unmatched response, as a whole reply would be)."""
        self.stats.frames += 1
        if not self.reqs:
            self.stats.unmatched_responses += 1
            return []
        req = self.reqs.popleft()
        return [self._emit(self._record(req.cmd, req.args, req.ts, text, ts))]

    def _guess(self, chunk: DataChunk) -> bool | None:
        data = bytes(chunk.data[:32])
        if not data or chunk.gap:
            return None
        if re.match(rb"\*[0-9]+\r\n\$", data) or re.match(rb"[A-Za-z]+[ \r]", data):
            return True
        if data[:1] in b"+-:$_,#(!=%~>|" and data[:1] != b"*":
            return False
        return None

    def _find_boundary(self, side: Side) -> int:
        buf = side.buf
        if buf and buf[0] in (b"*" if side.is_req else _MARKERS):
            return 0
        pos = 0
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0 or nl + 2 >= len(buf):
                return -1
            c = buf[nl + 2]
            if (side.is_req and c == ord("*")) or (not side.is_req and c in _MARKERS):
                return nl + 2
            pos = nl + 2

    def _parse(self, side: Side) -> list[dict]:
        out: list[dict] = []
        buf = side.buf
        while buf:
            if side.is_req and buf[0] not in _MARKERS:
                got = _line(buf, 0)  # inline command
                if got is _BAD:
                    self._bad(side)
                    break
                if got is _NEED:
                    break
                line, end = got
                words = [_t(w) for w in line.split()]
                if words:
                    req = command(words)
                    req.ts = side.ts_at(end)
                    self._push_request(req)
                side.consume(end)
                continue
            got = parse_value(buf, 0)
            if got is _NEED:
                break
            if got is _BAD:
                self._bad(side)
                break
            value, end = got
            ts = side.ts_at(end)
            side.consume(end)
            if side.is_req:
                if value.items is None:
                    self._bad_frame()
                    continue
                req = command(value.items)
                req.ts = ts
                self._push_request(req)
            else:
                out += self._reply(value, ts)
        return out

    def _bad(self, side: Side) -> None:
        self._desync(side)

    def _bad_frame(self) -> None:
        self.stats.invalid += 1

    def _reply(self, value: Value, ts: int) -> list[dict]:
        self.stats.frames += 1
        kind = value.items[0].lower() if value.items else ""
        if value.items is not None:

            if kind in _PUB and len(value.items) >= 3:
                return [self._emit(self._record("PUSH PUB", "", ts, value.text, ts))]
            if kind in _SUB:
                if self.reqs and self.reqs[0].sub_kind == kind:
                    req = self.reqs.popleft()
                    self.sub_left, self.sub_kind = req.sub_count - 1, kind
                    return [self._emit(self._record(req.cmd, req.args, req.ts, value.text, ts))]
                if self.sub_left > 0 and kind == self.sub_kind:
                    self.sub_left -= 1
                    return []
            if value.push:
                return [self._emit(self._record("PUSH " + kind.upper(), "", ts, value.text, ts))]
        if not self.reqs:
            self.stats.unmatched_responses += 1
            return []
        req = self.reqs.popleft()
        return [self._emit(self._record(req.cmd, req.args, req.ts, value.text, ts))]

    @staticmethod
    def _record(cmd: str, args: str, req_ts: int, resp: str, resp_ts: int) -> dict:
        return {
            "time_": resp_ts,
            "req_cmd": cmd,
            "req_args": bound(args),
            "resp": bound(resp),
            "latency": latency(req_ts, resp_ts),
        }
