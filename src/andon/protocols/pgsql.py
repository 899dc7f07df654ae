"""PostgreSQL frontend/backend protocol v3: queries paired with their results into
``pgsql_events`` records.

Frontend: the untagged startup message, SSLRequest / GSSENCRequest (the backend's one-byte
answer is read; after ``S`` the socket carries TLS, which the sensor does not deliver: what
follows is the plaintext of the TLS library's calls, from the startup message on, parsed as
if there were no TLS; after ``G`` the connection is GSSAPI-wrapped and skipped), CancelRequest, and tagged
messages. Simple query ``Q`` gives one record when its cycle ends (ReadyForQuery), with every
result set and command tag of the query string. The extended protocol gives one record per
Parse ``P`` (``PARSE COMPLETE``), Bind ``B`` (``BIND COMPLETE``), Describe ``D`` (the row
description) and Execute ``E``, whose ``req`` carries the statement text from the Parse that
the Bind named, and the bound parameters, as Pixie does (``query=[...] params=[...]``). After
an ErrorResponse the backend ignores the rest of the batch up to Sync: those requests are
counted unmatched when ReadyForQuery arrives. ``req_cmd`` is Pixie's name for the tag
(``Query``, ``Parse``, ``Bind``, ``Describe``, ``Execute``).

``resp`` follows Pixie's ``pgsql/types.h``: ``col1,col2`` then one line per DataRow (NULL
as ``[NULL]``) then the CommandComplete tag (``SELECT 3``); an error is
``ERROR RESPONSE [Severity=ERROR ... Message=...]``. :func:`rows_from_tag` reads the row
count from a tag. Binary-format values (parameters or columns) are shown as ``\\x`` + hex.
The response timestamp is the message that ends the response (CommandComplete, ErrorResponse,
ParseComplete...); Pixie's Execute takes its first response message instead.

Role.UNKNOWN: a direction starting with a startup / SSL request, or a ``Q``/``P`` message,
carries requests; one starting with an Authentication ``R`` message carries responses.
"""

from __future__ import annotations

import re
import struct

from andon.protocols.base import DataChunk, Direction, Protocol
from andon.protocols.stream import Side, StreamParser, bound, latency

FRAME_CAP = 256 * 1024  # message bytes kept; the rest of a longer message is skipped
_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
GSS_REQUEST = 80877104
CANCEL_REQUEST = 80877102
_FRONT_TAGS = set(b"QPBDESHCXpdcfF")
_BACK_TAGS = set(b"RSKZCDTEIN123ntsAGHWcdVv")
_REQ_NAMES = {"Q": "Query", "P": "Parse", "B": "Bind", "D": "Describe", "E": "Execute"}
_ERR_FIELDS = {
    "S": "Severity", "V": "InternalSeverity", "C": "Code", "M": "Message", "D": "Detail", "H": "Hint",
    "P": "Position", "p": "InternalPosition", "q": "InternalQuery", "W": "Where", "s": "SchemaName",
    "t": "TableName", "c": "ColumnName", "d": "DataTypeName", "n": "ConstraitName", "F": "File",
    "L": "Line", "R": "Routine",
}
_TAG_ROWS = re.compile(r"(?:SELECT|INSERT [0-9]+|UPDATE|DELETE|MERGE|FETCH|MOVE|COPY) ([0-9]+)")


def rows_from_tag(tag: str) -> int | None:
    """Rows a command touched, from its CommandComplete tag (``SELECT 3`` -> 3,
    ``INSERT 0 1`` -> 1); None for tags without a count (``CREATE TABLE``)."""
    m = _TAG_ROWS.fullmatch(tag.strip())
    return int(m.group(1)) if m else None


class _Bad(Exception):
    pass


class _Reader:
    __slots__ = ("b", "p")

    def __init__(self, b: bytes) -> None:
        self.b, self.p = b, 0

    def cstr(self) -> str:
        end = self.b.find(b"\0", self.p)
        if end < 0:
            raise _Bad("unterminated string")
        s = self.b[self.p : end].decode("utf-8", errors="replace")
        self.p = end + 1
        return s

    def int(self, size: int, signed: bool = True) -> int:
        if self.p + size > len(self.b):
            raise _Bad("short message")
        v = int.from_bytes(self.b[self.p : self.p + size], "big", signed=signed)
        self.p += size
        return v

    def some(self, n: int) -> bytes:
        """Up to ``n`` bytes: a value cut short by the copy bound keeps what arrived."""
        v = self.b[self.p : self.p + max(n, 0)]
        self.p += len(v)
        return v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.p + n > len(self.b):
            raise _Bad("short message")
        v = self.b[self.p : self.p + n]
        self.p += n
        return v


def _value(raw: bytes | None, fmt: int) -> str:
    if raw is None:
        return "[NULL]"
    if fmt == 1:
        return "\\x" + raw.hex()
    return raw.decode("utf-8", errors="replace")


def _err_text(payload: bytes) -> str:
    parts = []
    for item in payload.split(b"\0"):
        if not item:
            continue
        code = chr(item[0])
        value = item[1:].decode("utf-8", errors="replace")
        parts.append(f"{_ERR_FIELDS.get(code, 'Field:' + code)}={value}")
    return "ERROR RESPONSE [" + " ".join(parts) + "]"


_ROW_DESC_CACHE: dict[bytes, list[dict]] = {}  # payload -> fields, never changed once made
_ROW_DESC_CACHE_MAX = 256


def _row_desc(payload: bytes) -> list[dict]:
    """A RowDescription's fields; a query run again sends the same bytes, read once."""
    fields = _ROW_DESC_CACHE.get(payload)
    if fields is None:
        fields = _read_row_desc(payload)
        if len(payload) <= 4096:
            if len(_ROW_DESC_CACHE) >= _ROW_DESC_CACHE_MAX:
                _ROW_DESC_CACHE.clear()
            _ROW_DESC_CACHE[bytes(payload)] = fields
    return fields


def _read_row_desc(payload: bytes) -> list[dict]:
    r = _Reader(payload)
    fields = []
    for _ in range(r.int(2)):
        fields.append({"name": r.cstr(), "table_oid": r.int(4), "attr_num": r.int(2), "type_oid": r.int(4),
                       "type_size": r.int(2), "type_modifier": r.int(4), "fmt": r.int(2)})
    return fields


def _row_desc_text(fields: list[dict]) -> str:
    body = "] [".join(
        f"name={f['name']} table_oid={f['table_oid']} attr_num={f['attr_num']} type_oid={f['type_oid']} "
        f"type_size={f['type_size']} type_modifier={f['type_modifier']} fmt_code={'kBinary' if f['fmt'] == 1 else 'kText'}"
        for f in fields)
    return "ROW DESCRIPTION [" + body + "]"


class Request:
    """A request waiting for its response, and the response gathered so far."""

    __slots__ = ("tag", "text", "ts", "stmt", "query", "params", "fields", "rows", "parts", "resp_ts")

    def __init__(self, tag: str, text: str, ts: int, stmt: str = "", query: str = "",
                 params: list[str] | None = None) -> None:
        self.tag = tag  # Q P B D E, or "sync" for a Sync marker
        self.text = text
        self.ts = ts
        self.stmt = stmt  # Parse: statement name; Bind: source statement
        self.query = query  # Parse: its text
        self.params: list[str] = params if params is not None else []
        # response being gathered
        self.fields: list[dict] = []
        self.rows: list[str] = []
        self.parts: list[str] = []
        self.resp_ts = 0


class PgSQLParser(StreamParser):
    protocol = Protocol.PGSQL
    table = "pgsql_events"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.statements: dict[str, str] = {}  # prepared statement name -> text ("" = unnamed)
        self.bound_query = ""
        self.bound_params: list[str] = []
        self.ssl_answer = False  # the backend's next byte answers an SSL/GSS request
        self.encrypted = False  # GSSAPI encryption: the rest is wrapped, skipped

    # -- role, resync ---------------------------------------------------------------------
    def _guess(self, chunk: DataChunk) -> bool | None:
        d = bytes(chunk.data[:8])
        if len(d) >= 8 and d[0] == 0 and struct.unpack("!i", d[4:8])[0] in (PROTOCOL_3, SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST):
            return True
        if len(d) >= 5 and d[:1] in (b"Q", b"P"):
            return True
        if len(d) >= 5 and d[:1] == b"R" and struct.unpack("!i", d[1:5])[0] in range(8, 4096):
            return False
        return None

    def _find_boundary(self, side: Side) -> int:
        buf = side.buf
        tags = _FRONT_TAGS if side.is_req else _BACK_TAGS
        for i in range(min(len(buf) - 5, 64 * 1024) + 1):
            if buf[i] not in tags:
                continue
            n = struct.unpack_from("!i", buf, i + 1)[0]
            if not 4 <= n <= FRAME_CAP:
                continue
            nxt = i + 1 + n
            if nxt == len(buf) or (nxt < len(buf) and buf[nxt] in tags):
                return i
        return -1

    # -- framing --------------------------------------------------------------------------
    def feed(self, chunk: DataChunk) -> list[dict]:
        return self.feed_parts(chunk.ts_ns, chunk.direction, chunk.data, chunk.size, chunk.gap, chunk)

    def feed_parts(self, ts_ns: int, direction: Direction, data: bytes, size: int = -1, gap: int = 0,
                   chunk: DataChunk | None = None) -> list[dict]:
        if self.encrypted:
            self.stats.bytes_skipped += len(data)
            return []
        side = self.sides.get(direction)
        if (side is not None and not side.buf and not side.skip and not side.resync and not gap
                and not self.closed and size == len(data) and data
                and (side.is_req or not self.ssl_answer)):
            out = self._whole(side, data, ts_ns)
            if out is not None:
                return out
        return StreamParser.feed(self, chunk if chunk is not None else DataChunk(ts_ns, direction, data, size, gap))

    def _whole(self, side: Side, data: bytes, ts: int) -> list[dict] | None:
        """The usual chunk: whole tagged messages and nothing else, nothing buffered before
        them. Read straight from the chunk; None (decided before any state changes) sends it
        the general way, which makes the same records (tests/unit/test_observe_hotpath.py)."""
        if type(data) is not bytes:  # bytes methods below; other buffers go the general way
            return None
        n = len(data)
        tags = _FRONT_TAGS if side.is_req else _BACK_TAGS
        unpack = _I32.unpack_from
        pos = 0
        frames = []
        while pos < n:
            if n - pos < 5:
                return None
            tag = data[pos]
            size = unpack(data, pos + 1)[0]
            end = pos + 1 + size
            if tag not in tags or size < 4 or 1 + size > FRAME_CAP or end > n:
                return None
            frames.append((chr(tag), pos + 5, end))
            pos = end
        side.last_ts = ts
        out: list[dict] = []
        message = self._message
        for tag, start, end in frames:
            out += message(side, tag, data[start:end], ts)
        return out

    def _parse(self, side: Side) -> list[dict]:
        out: list[dict] = []
        buf = side.buf
        is_req = side.is_req
        tags = _FRONT_TAGS if is_req else _BACK_TAGS
        pos = 0  # bytes of buf taken by whole tagged frames, consumed in one go
        while len(buf) > pos and not self.encrypted and not side.resync:
            # the usual case: a whole tagged frame at pos; anything else takes the path below
            if len(buf) - pos >= 5 and (buf[pos] if is_req else not self.ssl_answer):
                tag = buf[pos]
                n = _I32.unpack_from(buf, pos + 1)[0]
                end = pos + 1 + n
                if tag in tags and 4 <= n and 1 + n <= FRAME_CAP and end <= len(buf):
                    ts = side.ts_at(end)
                    payload = bytes(buf[pos + 5 : end])
                    pos = end
                    out += self._message(side, chr(tag), payload, ts)
                    continue
            if pos:
                side.consume(pos)
                pos = 0
                continue
            if not side.is_req and self.ssl_answer:
                self.ssl_answer = False
                answer = buf[0]
                side.consume(1)
                self.stats.frames += 1
                # "S": TLS from here on. The sensor keeps the ciphertext out and delivers the
                # TLS calls' plaintext (the startup message first), so parsing goes on as
                # after "N"; with a TLS library it does not probe, nothing more comes.
                if answer == ord("G"):  # GSSAPI-wrapped from here on: skipped
                    self.encrypted = True
                    self.stats.bytes_skipped += side.drop_all()
                elif answer not in b"SN":
                    self._bad(side)
                continue
            if side.is_req and buf[0] == 0:  # untagged: startup, SSL, GSS or cancel request
                if len(buf) < 8:
                    break
                n, code = struct.unpack_from("!ii", buf)
                if not 8 <= n <= 10000 or code not in (PROTOCOL_3, SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST):
                    self._bad(side)
                    break
                if len(buf) < n:
                    break
                side.consume(n)
                self.stats.frames += 1
                if code in (SSL_REQUEST, GSS_REQUEST):
                    self.ssl_answer = True
                continue
            if len(buf) < 5:
                break
            tag = buf[0]
            n = struct.unpack_from("!i", buf, 1)[0]
            if tag not in (_FRONT_TAGS if side.is_req else _BACK_TAGS) or n < 4:
                self._bad(side)
                break
            if 1 + n > FRAME_CAP:
                have = min(len(buf), 1 + n)
                payload = bytes(buf[5:have])
                side.consume(have)
                self.stats.truncated += 1
                rest = 1 + n - have
                if rest:
                    self._begin_skip(side, rest, lambda ts, lost, s=side, t=tag, p=payload: self._message(s, chr(t), p, ts))
                    break
                out += self._message(side, chr(tag), payload, side.ts_at(0))
                continue
            if len(buf) < 1 + n:
                break
            ts = side.ts_at(1 + n)
            payload = bytes(buf[5 : 1 + n])
            side.consume(1 + n)
            out += self._message(side, chr(tag), payload, ts)
        if pos:
            side.consume(pos)
        return out

    def _bad(self, side: Side) -> None:
        self._desync(side)

    def _message(self, side: Side, tag: str, payload: bytes, ts: int) -> list[dict]:
        try:
            if side.is_req:
                self._request(tag, payload, ts)
                return []
            return self._response(tag, payload, ts)
        except (_Bad, struct.error, UnicodeError, ValueError):
            self.stats.invalid += 1
            return []

    # -- frontend -------------------------------------------------------------------------
    def _request(self, tag: str, payload: bytes, ts: int) -> None:
        if tag == "Q":
            self._push_request(Request("Q", payload.rstrip(b"\0").decode("utf-8", errors="replace"), ts))
        elif tag == "P":
            r = _Reader(payload)
            name, query = r.cstr(), r.cstr()
            self._push_request(Request("P", query, ts, stmt=name, query=query))
        elif tag == "B":
            r = _Reader(payload)
            portal, stmt = r.cstr(), r.cstr()
            p = r.p
            # counts are Int16 (a negative one: nothing follows), lengths Int32 (-1: NULL);
            # a payload too short raises struct.error or _Bad, counted by _message
            nf = _I16.unpack_from(payload, p)[0]
            p += 2
            fmts = struct.unpack_from("!%dh" % nf, payload, p) if nf > 0 else ()
            p += 2 * len(fmts)
            one = fmts[0] if len(fmts) == 1 else None
            params = []
            shown = []
            npar = _I16.unpack_from(payload, p)[0]
            p += 2
            for i in range(npar):
                n = _I32.unpack_from(payload, p)[0]
                p += 4
                if n == -1:
                    raw = None
                else:
                    if n < 0 or p + n > len(payload):
                        raise _Bad("short message")
                    raw = payload[p : p + n]
                    p += n
                fmt = one if one is not None else (fmts[i] if i < len(fmts) else 0)
                value = _value(raw, fmt)
                params.append(value)
                shown.append(f"[format={'kBinary' if fmt == 1 else 'kText'} value={value}]")
            nres = _I16.unpack_from(payload, p)[0]
            res = struct.unpack_from("!%dh" % nres, payload, p + 2) if nres > 0 else ()
            text = (f"portal={portal} statement={stmt} parameters=[{', '.join(shown)}] "
                    f"result_format_codes=[{', '.join('kBinary' if f == 1 else 'kText' for f in res)}]")
            self._push_request(Request("B", text, ts, stmt=stmt, params=params))
        elif tag == "D":
            r = _Reader(payload)
            kind = r.raw(1)
            if kind not in (b"S", b"P"):
                raise _Bad("describe target")
            name = r.cstr()
            self._push_request(Request("D", f"type={'kStatement' if kind == b'S' else 'kPortal'} name={name}", ts))
        elif tag == "E":
            self._push_request(Request("E", "", ts))
        elif tag == "S":
            self.stats.frames += 1
            self.reqs.append(Request("sync", "", ts))
        else:
            self.stats.frames += 1  # Flush, Close, Terminate, password, copy data: no record

    # -- backend --------------------------------------------------------------------------
    def _head(self) -> Request | None:
        return self.reqs[0] if self.reqs else None

    def _response(self, tag: str, payload: bytes, ts: int) -> list[dict]:
        self.stats.frames += 1
        req = self._head()
        if tag == "Z":  # ReadyForQuery: the end of a query cycle or of a Sync'ed batch
            out = []
            while self.reqs:
                head = self.reqs.popleft()
                if head.tag == "sync":
                    break
                if head.tag == "Q" and head.parts:
                    out.append(self._record(head, "\n".join(head.parts), head.resp_ts or ts))
                    continue
                self.stats.unmatched_requests += 1
                if head.tag == "Q":
                    break
            return out
        if req is None or req.tag == "sync":
            if tag in "CEI12ntT":
                self.stats.unmatched_responses += 1
            return []
        if tag == "E":
            text = _err_text(payload)
            if req.tag == "Q":
                req.parts.append(text)
                req.resp_ts = ts
                return []
            self.reqs.popleft()
            return [self._record(req, text, ts)]
        if req.tag == "P" and tag == "1":
            self.reqs.popleft()
            self.statements[req.stmt] = req.query
            return [self._record(req, "PARSE COMPLETE", ts)]
        if req.tag == "B" and tag == "2":
            self.reqs.popleft()
            self.bound_query = self.statements.get(req.stmt, "")
            self.bound_params = req.params
            return [self._record(req, "BIND COMPLETE", ts)]
        if req.tag == "D":
            if tag == "t":
                return []
            if tag in "Tn":
                self.reqs.popleft()
                fields = _row_desc(payload) if tag == "T" else []
                return [self._record(req, _row_desc_text(fields), ts)]
            return []
        if req.tag in "QE":
            if tag == "T":
                req.fields = _row_desc(payload)
                req.rows = []
            elif tag == "D":
                r = _Reader(payload)
                cols = []
                for i in range(r.int(2)):
                    if r.p >= len(payload):
                        break  # the rest of a row cut short by FRAME_CAP
                    n = r.int(4)
                    fmt = req.fields[i]["fmt"] if i < len(req.fields) else 0
                    cols.append(_value(None if n == -1 else r.some(n), fmt))
                if len(req.rows) < 64:  # enough for the bounded column
                    req.rows.append(",".join(cols))
            elif tag in "CIs":
                cmd_tag = payload.rstrip(b"\0").decode("utf-8", errors="replace") if tag == "C" else ""
                text = ""
                if req.rows:
                    if req.fields:
                        text += ",".join(f["name"] for f in req.fields) + "\n"
                    text += "\n".join(req.rows) + "\n"
                text += cmd_tag
                req.fields, req.rows = [], []
                if req.tag == "Q":
                    req.parts.append(text)
                    req.resp_ts = ts
                    return []
                self.reqs.popleft()
                return [self._record(req, text, ts)]
        return []

    def _record(self, req: Request, resp: str, ts: int) -> dict:
        if req.tag == "E":
            req.text = f"query=[{self.bound_query}] params=[{', '.join(self.bound_params)}]"
        return self._emit({
            "time_": ts,
            "req_cmd": _REQ_NAMES[req.tag],
            "req": bound(req.text),
            "resp": bound(resp),
            "latency": latency(req.ts, ts),
        })
