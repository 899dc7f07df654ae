"""The machinery every byte-stream parser shares: bounded per-direction buffers, lost bytes,
frame timestamps, request queues and the role of each direction.

A parser subclasses :class:`StreamParser` and implements ``_parse(side)``, which takes
whole frames off ``side.buf`` and returns finished records. The base class:

* keeps, per direction, the bytes not parsed yet (at most ``MAX_PENDING_BYTES``; more is
  dropped, counted and the direction resynchronised),
* remembers which chunk (so which syscall return time) every buffered byte came from, so a
  frame is stamped with the time of the chunk holding its *last* byte, as Pixie does
  (``event_parser.h``: ``GetTimestamp(position + frame.end)``); latency is then response
  end minus request end,
* lets a parser *skip* the known rest of a long frame (an HTTP body, a big DataRow) without
  buffering it; bytes lost inside a skipped region only mark the frame truncated, bytes
  lost anywhere else throw away the partial frame and resynchronise the direction,
* decides which direction carries requests: from the role, or for ``Role.UNKNOWN`` from
  the first bytes the protocol can recognise (``_guess``).
"""

from __future__ import annotations

import abc
from collections import deque
from typing import Callable

from andon.protocols.base import ConnParser, DataChunk, Direction, ParseStats, Role

MAX_PENDING_BYTES = 1 << 20  # unparsed bytes kept per direction
MAX_PENDING_REQUESTS = 256  # requests waiting for their response
RESYNC_KEEP = 64  # bytes kept after a failed boundary search (a boundary may straddle chunks)
MAX_STRING = 1024  # Pixie's default string column bound (data_table.h)
TRUNCATED_MSG = "... [TRUNCATED]"  # what Pixie appends to a cut string column


def bound(text: str, limit: int = MAX_STRING) -> str:
    """Cut a string column the way Pixie's table does: ``limit`` characters, then a marker."""
    if len(text) > limit:
        return text[:limit] + TRUNCATED_MSG
    return text


def latency(req_ts: int, resp_ts: int) -> int:
    """Pixie's ``CalculateLatency``: response end minus request end, 0 if either is unknown."""
    if req_ts > 0 and resp_ts > 0:
        return resp_ts - req_ts
    return 0


class Side:
    """One direction of a connection: its unparsed bytes and where they came from."""

    __slots__ = ("is_req", "buf", "base", "marks", "skip", "on_skip_done", "skip_lost", "resync", "state", "last_ts")

    def __init__(self, is_req: bool) -> None:
        self.is_req = is_req
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.marks: deque[tuple[int, int]] = deque()  # (stream offset just past a chunk, its ts)
        self.skip = 0  # bytes of the current frame still to be skipped unbuffered
        self.on_skip_done: Callable[[int, bool], list[dict]] | None = None  # (ts, lost) -> records
        self.skip_lost = False
        self.resync = False  # look for a frame boundary before parsing
        self.state: object = None  # parser-specific (e.g. HTTP body state)
        self.last_ts = 0  # time of the latest chunk of this direction

    def push(self, data: bytes, ts: int) -> None:
        self.last_ts = ts
        if data:
            self.buf += data
            self.marks.append((self.base + len(self.buf), ts))

    def ts_at(self, end: int) -> int:
        """Timestamp of the chunk holding byte ``end - 1`` of ``buf``."""
        pos = self.base + max(end, 1) - 1
        for mark_end, ts in self.marks:
            if mark_end > pos:
                return ts
        return self.marks[-1][1] if self.marks else 0

    def consume(self, n: int) -> None:
        if n <= 0:
            return
        del self.buf[:n]
        self.base += n
        marks = self.marks
        while marks and marks[0][0] <= self.base:
            marks.popleft()

    def drop_all(self) -> int:
        n = len(self.buf)
        self.consume(n)
        self.marks.clear()
        return n


class StreamParser(ConnParser):
    """Base of the stream parsers; see the module docstring."""

    max_pending_bytes = MAX_PENDING_BYTES
    max_pending_requests = MAX_PENDING_REQUESTS
    # True if one _parse call takes every whole frame it can (or sets resync): _run then
    # skips the second call that would only find out nothing more can be done
    drains = False

    def __init__(self, role: Role = Role.UNKNOWN, stats: ParseStats | None = None) -> None:
        super().__init__(role, stats if stats is not None else ParseStats())
        # which Direction carries requests; None until known (Role.UNKNOWN)
        self.req_dir: Direction | None = None
        if role == Role.CLIENT:
            self.req_dir = Direction.EGRESS
        elif role == Role.SERVER:
            self.req_dir = Direction.INGRESS
        self.sides: dict[Direction, Side] = {}
        self.reqs: deque = deque()  # parsed requests waiting for a response
        self.early: list[DataChunk] = []  # chunks seen before the role was known (bounded)
        self.early_bytes = 0
        self.closed = False

    # -- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def _parse(self, side: Side) -> list[dict]:
        """Take whole frames off ``side.buf``; return records completed."""

    def _guess(self, chunk: DataChunk) -> bool | None:
        """For Role.UNKNOWN: True if this chunk's direction carries requests, False if
        responses, None if the bytes do not say."""
        return None

    def _find_boundary(self, side: Side) -> int:
        """Offset in ``side.buf`` where a frame plausibly starts, or -1."""
        return -1

    def _absorb(self, side: Side, n: int, ts: int) -> list[dict] | None:
        """``n`` bytes were lost right after everything buffered on ``side``: if the parser
        is inside a frame whose length it knows (an HTTP body), it may count them as part of
        it and return the records that completes; None means it cannot."""
        return None

    def _reset(self, side: Side) -> None:
        """Forget the partial frame of ``side`` (after lost bytes)."""
        side.state = None

    # -- shared ---------------------------------------------------------------------------
    def _side(self, direction: Direction) -> Side:
        side = self.sides.get(direction)
        if side is None:
            side = Side(direction == self.req_dir)
            self.sides[direction] = side
        return side

    def feed(self, chunk: DataChunk) -> list[dict]:
        if self.closed:
            return []
        if self.req_dir is not None:  # the usual case: a direction already seen
            side = self.sides.get(chunk.direction)
            if side is not None:
                return self._feed_side(side, chunk)
        try:
            direction = Direction(chunk.direction)
        except ValueError:
            self.stats.invalid += 1
            self.stats.bytes_skipped += len(chunk.data)
            return []
        if self.req_dir is None:
            guess = self._guess(chunk)
            if guess is None:
                self.early.append(chunk)
                self.early_bytes += len(chunk.data)
                while self.early and (self.early_bytes > self.max_pending_bytes or len(self.early) > 64):
                    old = self.early.pop(0)
                    self.early_bytes -= len(old.data)
                    self.stats.bytes_skipped += len(old.data)
                return []
            self.req_dir = direction if guess else Direction(1 - direction)
            out: list[dict] = []
            early, self.early, self.early_bytes = self.early, [], 0
            # replayed through feed(), the parser's own entry: its handling of lost bytes
            # (Redis's lost mode) and its fast paths apply to them as to any later chunk
            for old in early:
                out += self.feed(old)
            return out + self.feed(chunk)
        return self._feed_known(chunk)

    def feed_parts(self, ts_ns: int, direction: Direction, data: bytes, size: int = -1, gap: int = 0) -> list[dict]:
        """``feed(DataChunk(ts_ns, direction, data, size, gap))``; parsers with a whole-chunk
        reader take the usual chunk here without the DataChunk being made."""
        return self.feed(DataChunk(ts_ns, direction, data, size, gap))

    def _feed_known(self, chunk: DataChunk) -> list[dict]:
        return self._feed_side(self._side(Direction(chunk.direction)), chunk)

    def _feed_side(self, side: Side, chunk: DataChunk) -> list[dict]:
        out: list[dict] = []
        ts = chunk.ts_ns
        if chunk.gap > 0:
            out += self._lose(side, chunk.gap, ts)
        data = chunk.data
        if side.skip:
            n = min(side.skip, len(data))
            side.skip -= n
            data = data[n:]
            if side.skip == 0:
                out += self._end_skip(side, ts)
        side.push(data, ts)
        out += self._run(side)
        if chunk.truncated:
            self.stats.truncated += 1
            out += self._lose(side, chunk.truncated, ts)
        if len(side.buf) > self.max_pending_bytes:
            self.stats.invalid += 1
            self.stats.bytes_skipped += side.drop_all()
            self._reset(side)
            side.resync = True
        return out

    def _run(self, side: Side) -> list[dict]:
        out: list[dict] = []
        while True:
            if side.skip:
                return out
            if side.resync:
                at = self._find_boundary(side)
                if at < 0:
                    keep = min(len(side.buf), RESYNC_KEEP)
                    dropped = len(side.buf) - keep
                    self.stats.bytes_skipped += dropped
                    side.consume(dropped)
                    return out
                self.stats.bytes_skipped += at
                side.consume(at)
                side.resync = False
            before = (side.base, len(side.buf), side.skip)
            out += self._parse(side)
            if side.resync:
                continue
            if self.drains:
                return out
            if (side.base, len(side.buf), side.skip) == before:
                return out

    def _lose_in_skip(self, side: Side, n: int, ts: int) -> tuple[int, list[dict]]:
        """Of ``n`` lost bytes, those inside the known rest of a frame being skipped only
        shorten the skip (the frame is marked as having lost bytes). Returns the bytes lost
        beyond it, and the records that ending the skip made."""
        if not side.skip:
            return n, []
        side.skip_lost = True
        if n < side.skip:
            side.skip -= n
            return 0, []
        n -= side.skip
        side.skip = 0
        return n, self._end_skip(side, ts)

    def _lose(self, side: Side, n: int, ts: int) -> list[dict]:
        """``n`` bytes of this direction were never seen."""
        n, out = self._lose_in_skip(side, n, ts)
        if n == 0:
            return out
        if not side.buf and side.state is not None and not side.resync:
            absorbed = self._absorb(side, n, ts)
            if absorbed is not None:
                return out + absorbed + self._run(side)
        if side.buf or side.state is not None:
            self.stats.bytes_skipped += side.drop_all()
            self._reset(side)
        side.resync = True
        return out + self._run(side)

    def _desync(self, side: Side) -> None:
        """The bytes at the front of ``side.buf`` are not a frame: count it, drop the first
        byte (so the boundary search cannot find the same place again) and resynchronise."""
        self.stats.invalid += 1
        if side.buf:
            self.stats.bytes_skipped += 1
            side.consume(1)
        self._reset(side)
        side.resync = True

    def _begin_skip(self, side: Side, n: int, done: Callable[[int, bool], list[dict]]) -> None:
        side.skip = n
        side.skip_lost = False
        side.on_skip_done = done

    def _end_skip(self, side: Side, ts: int) -> list[dict]:
        done, side.on_skip_done = side.on_skip_done, None
        lost, side.skip_lost = side.skip_lost, False
        return done(ts, lost) if done is not None else []

    def _push_request(self, req: object) -> None:
        self.stats.frames += 1
        self.reqs.append(req)
        while len(self.reqs) > self.max_pending_requests:
            self.reqs.popleft()
            self.stats.unmatched_requests += 1

    def _emit(self, record: dict) -> dict:
        self.stats.records += 1
        return record

    def _close_sides(self, now_ns: int) -> list[dict]:
        """Subclasses may finish frames that end at close (HTTP bodies read to EOF)."""
        return []

    def close(self, now_ns: int) -> list[dict]:
        if self.closed:
            return []
        out = self._close_sides(now_ns)
        self.closed = True
        self.stats.unmatched_requests += len(self.reqs)
        self.reqs.clear()
        for side in self.sides.values():
            if side.buf:
                self.stats.bytes_skipped += side.drop_all()
        for old in self.early:
            self.stats.bytes_skipped += len(old.data)
        self.early, self.early_bytes = [], 0
        return out

    def pending_bytes(self) -> int:
        """Bytes held in memory right now (for tests that check the bounds)."""
        return sum(len(s.buf) for s in self.sides.values()) + self.early_bytes
