"""MySQL / MariaDB client/server protocol: commands paired with their responses into
``mysql_events`` records.

Packets are a 3-byte little-endian length, a sequence id and the payload. A command is a
packet with sequence id 0 from the client; the connection phase (server greeting, login,
auth switches) is ignored. Responses: ERR (``0xff``), OK (``0x00``), EOF (``0xfe``, 5
bytes) and result sets (column count, column definitions, an EOF unless the client asked
for CLIENT_DEPRECATE_EOF, rows, then EOF / OK-with-``0xfe`` / ERR), several in a row when
SERVER_MORE_RESULTS_EXISTS is set. COM_STMT_PREPARE's answer maps the statement id to its
text; COM_STMT_EXECUTE's ``req_body`` is ``query=[<text>] params=[<values>]`` with the
parameters decoded from the binary protocol (types sent with the execute, or the last ones
sent for that statement), or ``Execute stmt_id=N.`` if the prepare was not seen.
COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA and COM_QUIT have no response: their records have
``resp_status`` 1 (none) and latency 0.

Columns follow Pixie (``mysql/handler.cc``): ``req_cmd`` is the command byte, ``req_body`` the
statement text for text commands, ``resp_status`` is Pixie's ``RespStatus`` (0 unknown,
1 none, 2 OK, 3 ERR), ``resp_body`` the error message for ERR (after the SQL state),
``Resultset rows = N`` for result sets (joined by ``, `` for several), empty for OK.

Role.UNKNOWN: the server greeting (protocol version 10, sequence 0) marks the server's
direction; a sequence-0 packet holding a known command marks the client's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from andon.protocols.base import DataChunk, Direction, Protocol
from andon.protocols.stream import Side, StreamParser, bound, latency

FRAME_CAP = 256 * 1024
MAX_PACKET = 0xFFFFFF
COM_QUIT, COM_INIT_DB, COM_QUERY, COM_FIELD_LIST = 0x01, 0x02, 0x03, 0x04
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE = 0x16, 0x17, 0x18, 0x19
COM_STMT_RESET, COM_STMT_FETCH = 0x1A, 0x1C
_STRING_CMDS = {COM_INIT_DB, COM_QUERY, 0x05, 0x06, COM_STMT_PREPARE}
_NO_RESPONSE = {COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE}
_RESULTSET_CMDS = {COM_QUERY, COM_STMT_EXECUTE, COM_STMT_FETCH, 0x0A}
_VALID_CMDS = set(range(0x01, 0x20)) - {0x00, 0x0F, 0x10, 0x14, 0x1D}
STATUS_UNKNOWN, STATUS_NONE, STATUS_OK, STATUS_ERR = 0, 1, 2, 3
MORE_RESULTS = 0x0008


class _Bad(Exception):
    pass


def lenenc(b: bytes, p: int) -> tuple[int | None, int]:
    """A length-encoded integer at ``p``: (value or None for NULL, next position)."""
    if p >= len(b):
        raise _Bad("short")
    c = b[p]
    if c < 0xFB:
        return c, p + 1
    if c == 0xFB:
        return None, p + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(c)
    if size is None or p + 1 + size > len(b):
        raise _Bad("bad length-encoded integer")
    return int.from_bytes(b[p + 1 : p + 1 + size], "little"), p + 1 + size


def _ok_status(payload: bytes) -> int:
    try:
        _, p = lenenc(payload, 1)
        _, p = lenenc(payload, p)
        return struct.unpack_from("<H", payload, p)[0] if p + 2 <= len(payload) else 0
    except _Bad:
        return 0


def _param(payload: bytes, p: int, typ: int, unsigned: bool) -> tuple[str, int]:
    fixed = {0x01: 1, 0x02: 2, 0x0D: 2, 0x03: 4, 0x09: 4, 0x08: 8}
    if typ in fixed:
        n = fixed[typ]
        if p + n > len(payload):
            raise _Bad("short param")
        return str(int.from_bytes(payload[p : p + n], "little", signed=not unsigned)), p + n
    if typ == 0x04:
        return repr(struct.unpack_from("<f", payload, p)[0]), p + 4
    if typ == 0x05:
        return repr(struct.unpack_from("<d", payload, p)[0]), p + 8
    if typ == 0x06:
        return "NULL", p
    if typ in (0x07, 0x0A, 0x0C, 0x0B):
        if p >= len(payload):
            raise _Bad("short param")
        n = payload[p]
        raw = payload[p + 1 : p + 1 + n]
        if len(raw) != n:
            raise _Bad("short param")
        if typ == 0x0B:
            return "time(" + raw.hex() + ")", p + 1 + n
        y, mo, d = (struct.unpack_from("<HBB", raw) if n >= 4 else (0, 0, 0))
        text = f"{y:04d}-{mo:02d}-{d:02d}"
        if n >= 7:
            text += " {:02d}:{:02d}:{:02d}".format(*raw[4:7])
        if n >= 11:
            text += ".{:06d}".format(int.from_bytes(raw[7:11], "little"))
        return text, p + 1 + n
    n, p = lenenc(payload, p)  # strings, decimals, blobs, enum/set, bit, geometry
    if n is None:
        return "NULL", p
    raw = payload[p : p + n]
    if len(raw) != n:
        raise _Bad("short param")
    return raw.decode("utf-8", errors="replace"), p + n


@dataclass(slots=True)
class Statement:
    query: str
    num_params: int
    types: list[tuple[int, bool]] = field(default_factory=list)


class Request:
    """A command waiting for its response, and the response read so far."""

    __slots__ = ("cmd", "body", "ts", "stmt_text", "phase", "cols_left", "rows", "parts", "stmt_id", "num_params")

    def __init__(self, cmd: int, body: str, ts: int) -> None:
        self.cmd = cmd
        self.body = body
        self.ts = ts
        self.stmt_text = ""  # COM_STMT_PREPARE: its text, kept when the id comes back
        # response state
        self.phase = "first"  # first | cols | col_eof | rows | prep_defs
        self.cols_left = 0
        self.rows = 0
        self.parts: list[str] = []
        self.stmt_id = 0
        self.num_params = 0


class MySQLParser(StreamParser):
    protocol = Protocol.MYSQL
    table = "mysql_events"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.statements: dict[int, Statement] = {}
        self.max_statements = 1024

    # -- role, resync ---------------------------------------------------------------------
    def _guess(self, chunk: DataChunk) -> bool | None:
        d = bytes(chunk.data[:5])
        if len(d) < 5:
            return None
        n = int.from_bytes(d[:3], "little")
        if d[3] == 0 and d[4] == 10 and n > 40:
            return False  # server greeting
        if d[3] == 0 and d[4] in _VALID_CMDS and n == chunk.size - 4:
            return True
        return None

    def _find_boundary(self, side: Side) -> int:
        buf = side.buf
        for i in range(max(0, min(len(buf) - 4, 64 * 1024) + 1)):
            n = int.from_bytes(buf[i : i + 3], "little")
            seq = buf[i + 3]
            if not 1 <= n <= FRAME_CAP or i + 4 + n > len(buf):
                continue
            if side.is_req and seq == 0 and buf[i + 4] in _VALID_CMDS and i + 4 + n == len(buf):
                return i
            if not side.is_req and seq == 1 and (i + 4 + n == len(buf) or (i + 4 + n + 4 <= len(buf) and buf[i + 4 + n + 3] == 2)):
                return i
        return -1

    # -- framing --------------------------------------------------------------------------
    def feed(self, chunk: DataChunk) -> list[dict]:
        return self.feed_parts(chunk.ts_ns, chunk.direction, chunk.data, chunk.size, chunk.gap, chunk)

    def feed_parts(self, ts_ns: int, direction: Direction, data: bytes, size: int = -1, gap: int = 0,
                   chunk: DataChunk | None = None) -> list[dict]:
        side = self.sides.get(direction)
        if (side is not None and not side.buf and not side.skip and not side.resync and not gap
                and not self.closed and size == len(data) and data):
            out = self._whole(side, data, ts_ns)
            if out is not None:
                return out
        return StreamParser.feed(self, chunk if chunk is not None else DataChunk(ts_ns, direction, data, size, gap))

    def _whole(self, side: Side, data: bytes, ts: int) -> list[dict] | None:
        """The usual chunk: whole packets and nothing else, nothing buffered before them.
        Read straight from the chunk; None (decided before any state changes) sends it the
        general way, which makes the same records (tests/unit/test_observe_hotpath.py)."""
        if type(data) is not bytes:  # bytes methods below; other buffers go the general way
            return None
        n = len(data)
        pos = 0
        frames = []
        while pos < n:
            if n - pos < 4:
                return None
            size = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            end = pos + 4 + size
            if 4 + size > FRAME_CAP or end > n:
                return None
            frames.append((data[pos + 3], pos + 4, end))
            pos = end
        side.last_ts = ts
        out: list[dict] = []
        packet = self._packet
        for seq, start, end in frames:
            out += packet(side, seq, data[start:end], ts)
        return out

    def _parse(self, side: Side) -> list[dict]:
        out: list[dict] = []
        buf = side.buf
        while len(buf) >= 4 and not side.resync:
            n = int.from_bytes(buf[:3], "little")
            seq = buf[3]
            if 4 + n > FRAME_CAP:
                have = min(len(buf), 4 + n)
                payload = bytes(buf[4:have])
                side.consume(have)
                self.stats.truncated += 1
                rest = 4 + n - have
                if rest:
                    self._begin_skip(side, rest, lambda ts, lost, s=side, q=seq, p=payload: self._packet(s, q, p, ts))
                    break
                out += self._packet(side, seq, payload, side.ts_at(0))
                continue
            if len(buf) < 4 + n:
                break
            ts = side.ts_at(4 + n)
            payload = bytes(buf[4 : 4 + n])
            side.consume(4 + n)
            out += self._packet(side, seq, payload, ts)
        return out

    def _packet(self, side: Side, seq: int, payload: bytes, ts: int) -> list[dict]:
        try:
            if side.is_req:
                return self._request(seq, payload, ts)
            return self._response(seq, payload, ts)
        except (_Bad, struct.error, IndexError, ValueError):
            self.stats.invalid += 1
            if self.reqs and not side.is_req:
                self.reqs.popleft()
                self.stats.unmatched_requests += 1
            return []

    # -- client ---------------------------------------------------------------------------
    def _request(self, seq: int, payload: bytes, ts: int) -> list[dict]:
        if seq != 0 or not payload:
            self.stats.frames += 1  # login, auth switch, long data continuation
            return []
        cmd = payload[0]
        if cmd not in _VALID_CMDS:
            self.stats.invalid += 1
            return []
        body = ""
        req = Request(cmd, body, ts)
        if cmd in _STRING_CMDS:
            req.body = payload[1:].decode("utf-8", errors="replace")
            req.stmt_text = req.body
        elif cmd == COM_STMT_EXECUTE:
            req.body = self._execute_body(payload)
        elif cmd == COM_STMT_CLOSE and len(payload) >= 5:
            self.statements.pop(struct.unpack_from("<I", payload, 1)[0], None)
        if cmd in _NO_RESPONSE:
            self.stats.frames += 1
            return [self._record(req, STATUS_NONE, "", ts)]
        self._push_request(req)
        return []

    def _execute_body(self, payload: bytes) -> str:
        if len(payload) < 5:
            raise _Bad("short execute")
        stmt_id = struct.unpack_from("<I", payload, 1)[0]
        st = self.statements.get(stmt_id)
        if st is None:
            return f"Execute stmt_id={stmt_id}."
        params: list[str] = []
        if st.num_params:
            p = 10
            bitmap = payload[p : p + (st.num_params + 7) // 8]
            p += (st.num_params + 7) // 8
            if p >= len(payload):
                raise _Bad("short execute")
            if payload[p] == 1:
                p += 1
                st.types = [(payload[p + 2 * i], bool(payload[p + 2 * i + 1] & 0x80)) for i in range(st.num_params)]
                p += 2 * st.num_params
            else:
                p += 1
            for i in range(st.num_params):
                if i // 8 < len(bitmap) and bitmap[i // 8] >> (i % 8) & 1:
                    params.append("NULL")
                    continue
                if i >= len(st.types):
                    raise _Bad("parameter types unknown")
                value, p = _param(payload, p, *st.types[i])
                params.append(value)
        return f"query=[{st.query}] params=[{', '.join(params)}]"

    # -- server ---------------------------------------------------------------------------
    def _response(self, seq: int, payload: bytes, ts: int) -> list[dict]:
        self.stats.frames += 1
        req = self.reqs[0] if self.reqs else None
        if req is None or not payload:
            if seq == 1 and payload and payload[0] in (0x00, 0xFF):
                self.stats.unmatched_responses += 1
            return []
        head = payload[0]
        if req.phase == "first":
            if seq != 1 and not req.parts:
                return []  # greeting / login replies / stray EOF, not this command's
            if head == 0xFF:
                return self._finish(req, STATUS_ERR, self._err(payload), ts)
            if req.cmd == COM_STMT_PREPARE and head == 0x00 and len(payload) >= 12:
                stmt_id, ncols, nparams = struct.unpack_from("<IHH", payload, 1)
                req.stmt_id, req.num_params = stmt_id, nparams
                req.cols_left = ncols + nparams
                if len(self.statements) >= self.max_statements:
                    self.statements.pop(next(iter(self.statements)))
                self.statements[stmt_id] = Statement(req.stmt_text, nparams)
                if req.cols_left == 0:
                    return self._finish(req, STATUS_OK, "", ts)
                req.phase = "prep_defs"
                return []
            if head in (0x00, 0xFE) and len(payload) >= 7 or head == 0xFE and len(payload) < 9:
                if req.cmd in _RESULTSET_CMDS and head == 0x00 and _ok_status(payload) & MORE_RESULTS:
                    req.parts.append("")
                    return []
                return self._finish(req, STATUS_OK, "", ts)
            if req.cmd not in _RESULTSET_CMDS and req.cmd != COM_FIELD_LIST:
                return self._finish(req, STATUS_OK, "", ts)
            n, end = lenenc(payload, 0)
            # MariaDB may add a byte after the count (metadata-follows flag)
            if n is None or n == 0 or len(payload) - end > 1:
                raise _Bad("column count")
            req.cols_left, req.rows, req.phase = n, 0, "cols"
            return []
        if req.phase == "prep_defs":
            if head == 0xFE and len(payload) == 5:
                return []  # EOF between or after the definitions
            req.cols_left -= 1
            if req.cols_left == 0:
                return self._finish(req, STATUS_OK, "", ts)
            return []
        if req.phase == "cols":
            req.cols_left -= 1
            if req.cols_left == 0:
                req.phase = "col_eof"
            return []
        if req.phase == "col_eof":
            req.phase = "rows"
            if head == 0xFE and len(payload) == 5:
                return []  # the EOF after the column definitions (no CLIENT_DEPRECATE_EOF)
        # rows
        if head == 0xFF:
            return self._finish(req, STATUS_ERR, self._err(payload), ts)
        if head == 0xFE and len(payload) < MAX_PACKET:
            status = struct.unpack_from("<H", payload, 3)[0] if len(payload) == 5 else _ok_status(payload)
            req.parts.append(f"Resultset rows = {req.rows}")
            if status & MORE_RESULTS:
                req.phase = "first"
                return []
            return self._finish(req, STATUS_OK, ", ".join(p for p in req.parts if p), ts)
        req.rows += 1
        return []

    @staticmethod
    def _err(payload: bytes) -> str:
        if len(payload) < 9 and not (len(payload) > 3 and payload[3:4] != b"#"):
            raise _Bad("short ERR packet")
        start = 9 if payload[3:4] == b"#" else 3
        return payload[start:].decode("utf-8", errors="replace")

    def _finish(self, req: Request, status: int, body: str, ts: int) -> list[dict]:
        if self.reqs and self.reqs[0] is req:
            self.reqs.popleft()
        return [self._record(req, status, body, ts)]

    def _record(self, req: Request, status: int, body: str, ts: int) -> dict:
        return self._emit({
            "time_": ts,
            "req_cmd": req.cmd,
            "req_body": bound(req.body, 512),
            "resp_status": status,
            "resp_body": bound(body, 512),
            "latency": latency(req.ts, ts),
        })
