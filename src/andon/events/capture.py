"""Capture files: the live stream written to disk, replayed later through the same decoder.

Layout (little endian)::

    magic    8 bytes  b"ANDONCAP"
    version  u32      2 (1: no side records; still read)
    hlen     u32      length of the JSON header that follows
    header   hlen     JSON: host, kernel, boot_offset, started, types, state snapshot
    records  ...      repeated: u32 length, then that many bytes of struct andon_event;
                      or, from version 2, a side record: u32 (0x80000000 | n), then n bytes
                      of JSON ``{"kind": "container", "ts": ns, "info": {...}}``

Records are stored exactly as the kernel wrote them, so a capture replays through the
same ``decode_record`` as the live ring, and a test can replay a real capture. The header
carries the process table as it was at the start, so offline analysis knows the
processes that existed before the first event. A capture cut short (the agent killed
mid-write) reads up to its last whole record and reports the cut.

Side records carry what andon learnt *during* the capture that the kernel records do not
say: a container's metadata, written where the runtime's answer came in, so a replay
knows a container started mid-capture from that point on, as the live agent did.
``lookahead_container`` lets the replay look a bounded stretch ahead for one, as the live
agent waits a bounded time for the runtime's answer.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CaptureError
from .schema import EVENT_DTYPE, REC_SMALL, Event, decode_record

MAGIC = b"ANDONCAP"
VERSION = 2
SIDE = 0x80000000  # length marker bit of a side record (event records are < 64 KiB)
_PRE = struct.Struct("<8sII")
_LEN = struct.Struct("<I")
_MAX_RECORD = 1 << 16
_SLOT_REC = np.dtype([("len", "<u4"), ("ev", EVENT_DTYPE)])  # one record as write_batch lays it out


@dataclass
class CaptureHeader:
    boot_offset: int
    host: str = field(default_factory=socket.gethostname)
    kernel: str = field(default_factory=lambda: os.uname().release)
    started: int = field(default_factory=time.time_ns)
    types: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # the process table at the start

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CaptureHeader:
        try:
            d = json.loads(raw)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError, KeyError) as e:
            raise CaptureError(f"capture header is not valid: {e}") from e


class CaptureWriter:
    """Append records to a capture file. Use as a context manager; close() flushes."""

    def __init__(self, path: str | os.PathLike[str], header: CaptureHeader) -> None:
        self.path = Path(path)
        self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        hdr = header.to_json()
        self._f.write(_PRE.pack(MAGIC, VERSION, len(hdr)))
        self._f.write(hdr)
        self.records = 0
        self.side_records = 0
        self._buf = io.BytesIO()

    def write_batch(self, recs: np.ndarray) -> None:
        """A run of one-slot records straight from the ring (numpy EVENT_DTYPE)."""
        n = len(recs)
        if not n:
            return
        # interleave a u32 length before each 248-byte record without a Python loop
        out = np.empty((n, 4 + REC_SMALL), dtype=np.uint8)
        out[:, :4] = np.frombuffer(_LEN.pack(REC_SMALL), dtype=np.uint8)
        out[:, 4:] = recs.view(np.uint8).reshape(n, REC_SMALL)
        self._f.write(out.tobytes())
        self.records += n

    def write_side(self, kind: str, body: dict[str, Any], ts: int | None = None) -> None:
        """A side record (JSON), e.g. ``write_side("container", {"info": ...})``."""
        raw = json.dumps({"kind": kind, "ts": time.time_ns() if ts is None else ts, **body},
                         separators=(",", ":")).encode()  # fmt: skip
        self._f.write(_LEN.pack(SIDE | len(raw)))
        self._f.write(raw)
        self.side_records += 1

    def write_container(self, info: dict[str, Any]) -> None:
        self.write_side("container", {"info": info})

    def write_record(self, rec: bytes) -> None:
        self._f.write(_LEN.pack(len(rec)))
        self._f.write(rec)
        self.records += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CaptureReader:
    """Read a capture: ``header`` then ``events()`` in order. ``truncated`` is set when the
    file ended inside a record (that partial record is not returned)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115
        pre = self._f.read(_PRE.size)
        if len(pre) < _PRE.size or pre[:8] != MAGIC:
            self._f.close()
            raise CaptureError(f"{self.path} is not an andon capture file (bad magic)")
        _, version, hlen = _PRE.unpack(pre)
        if version > VERSION:
            self._f.close()
            raise CaptureError(f"{self.path} is capture version {version}; this andon reads up to {VERSION}")
        raw = self._f.read(hlen)
        if len(raw) < hlen:
            self._f.close()
            raise CaptureError(f"{self.path}: header cut short")
        self.header = CaptureHeader.from_json(raw)
        self.version = version
        self.truncated = False
        self.records = 0
        self.side_records = 0
        self.on_side: Callable[[dict[str, Any]], None] | None = None  # gets each side record in order
        self._ahead: deque[Event | dict[str, Any]] = deque()
        self._last_ts = 0
        self._batched = False  # batches() reads: lookahead by pread
        self._scan_from = 0

    def _next_raw(self) -> tuple[bool, bytes] | None:
        """(is_side, bytes) of the next record, or None at the end."""
        f = self._f
        lb = f.read(4)
        if not lb:
            return None
        if len(lb) < 4:
            self.truncated = True
            return None
        (n,) = _LEN.unpack(lb)
        side = bool(n & SIDE) and self.version >= 2
        if side:
            n &= ~SIDE
        if (not side and n < 112) or n > _MAX_RECORD:
            raise CaptureError(f"{self.path}: record {self.records} has impossible length {n}")
        rec = f.read(n)
        if len(rec) < n:
            self.truncated = True
            return None
        if side:
            self.side_records += 1
        else:
            self.records += 1
        return side, rec

    def raw_records(self) -> Iterator[bytes]:
        """The event records as written (side records skipped)."""
        while (item := self._next_raw()) is not None:
            if not item[0]:
                yield item[1]

    def _next(self) -> Event | dict[str, Any] | None:
        item = self._next_raw()
        if item is None:
            return None
        side, rec = item
        if side:
            try:
                d = json.loads(rec)
            except ValueError as e:
                raise CaptureError(f"{self.path}: side record {self.side_records} is not JSON: {e}") from e
            return d if isinstance(d, dict) else {}
        return decode_record(rec, self.header.boot_offset)

    def items(self) -> Iterator[Event | dict[str, Any]]:
        """Events and side records (dicts) in file order."""
        while True:
            item = self._ahead.popleft() if self._ahead else self._next()
            if item is None:
                return
            if isinstance(item, Event):
                self._last_ts = item.ts
            yield item

    def events(self) -> Iterator[Event]:
        """The events; each side record goes to ``on_side`` at its place in the stream."""
        for item in self.items():
            if isinstance(item, Event):
                yield item
            elif self.on_side is not None:
                self.on_side(item)

    def _side(self, raw: bytes) -> dict[str, Any]:
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise CaptureError(f"{self.path}: side record {self.side_records} is not JSON: {e}") from e
        if not isinstance(d, dict):
            d = {}
        if self.on_side is not None:
            self.on_side(d)
        return d

    def _scan_side(self, start: int, cid: str, limit: int, chunk: int = 1 << 16) -> dict[str, Any] | None:
        """``lookahead_container`` for ``batches()``: read ahead with pread from ``start``
        (where the batch reader stopped), leaving its file position alone."""
        fd = self._f.fileno()
        off = self.header.boot_offset
        pos = start
        buf, bpos = b"", 0  # buf holds the file from offset bpos
        while True:
            need = pos - bpos + 4 + _MAX_RECORD
            if pos + 4 > bpos + len(buf) or need > len(buf):
                buf, bpos = os.pread(fd, max(chunk, 4 + _MAX_RECORD), pos), pos
            i = pos - bpos
            if len(buf) - i < 4:
                return None
            (n,) = _LEN.unpack_from(buf, i)
            side = bool(n & SIDE)
            n &= ~SIDE
            if len(buf) - i - 4 < n or n > _MAX_RECORD or (not side and n < 112):
                return None  # cut short or damaged: the reader proper will say so
            if side:
                try:
                    d = json.loads(buf[i + 4 : i + 4 + n])
                except ValueError:
                    return None
                if isinstance(d, dict) and d.get("kind") == "container" and (d.get("info") or {}).get("id") == cid:
                    return d["info"]
            elif int.from_bytes(buf[i + 4 : i + 12], "little") + off > limit:
                return None
            pos += 4 + n

    def lookahead_container(self, cid: str, seconds: float) -> dict[str, Any] | None:
        """The info of the first container record for ``cid`` within ``seconds`` of event
        time after the last event returned, or None. What it reads stays queued in order
        (``events()``), or is read again (``batches()``)."""
        limit = self._last_ts + int(seconds * 1e9)
        if self._batched:
            return self._scan_side(self._scan_from, cid, limit)
        for item in self._ahead:
            if isinstance(item, dict) and item.get("kind") == "container" and (item.get("info") or {}).get("id") == cid:
                return item["info"]
            if isinstance(item, Event) and item.ts > limit:
                return None
        while True:
            item = self._next()
            if item is None:
                return None
            self._ahead.append(item)
            if isinstance(item, Event):
                if item.ts > limit:
                    return None
            elif item.get("kind") == "container" and (item.get("info") or {}).get("id") == cid:
                return item["info"]

    def batches(self, chunk: int = 1 << 20) -> Iterator[tuple[np.ndarray | None, bytes | None]]:
        """The records as the live ring gives them (``LiveSource.read_raw``): runs of
        one-slot records as a numpy ``EVENT_DTYPE`` array, a larger record alone as bytes.

        ``write_batch`` lays one-slot records out every ``4 + REC_SMALL`` bytes, so a run is
        read with one strided numpy view, without a Python step per record."""
        f = self._f
        buf = b""
        step = 4 + REC_SMALL
        off = self.header.boot_offset
        self._batched = True
        while True:
            more = f.read(chunk)
            buf += more
            base = f.tell() - len(buf)  # file offset of buf[0]
            pos = 0
            end = len(buf)
            while end - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
                if n & SIDE and self.version >= 2:  # a side record: applied where it is read
                    m = n & ~SIDE
                    if m > _MAX_RECORD:
                        raise CaptureError(f"{self.path}: side record {self.side_records} has impossible length {m}")
                    if end - pos - 4 < m:
                        break
                    self.side_records += 1
                    self._side(buf[pos + 4 : pos + 4 + m])
                    pos += 4 + m
                    continue
                if n == REC_SMALL:
                    k = (end - pos) // step
                    if k == 0:
                        break
                    lens = np.ndarray((k,), dtype="<u4", buffer=buf, offset=pos, strides=(step,))
                    bad = np.flatnonzero(lens != REC_SMALL)
                    k = int(bad[0]) if len(bad) else k
                    recs = np.ndarray((k,), dtype=_SLOT_REC, buffer=buf, offset=pos)["ev"]
                    self.records += k
                    pos += k * step
                    self._scan_from, self._last_ts = base + pos, int(recs["ts"][-1]) + off
                    yield recs, None
                    continue
                if n < 112 or n > _MAX_RECORD:
                    raise CaptureError(f"{self.path}: record {self.records} has impossible length {n}")
                if end - pos - 4 < n:
                    break
                self.records += 1
                rec = buf[pos + 4 : pos + 4 + n]
                pos += 4 + n
                self._scan_from, self._last_ts = base + pos, int.from_bytes(rec[:8], "little") + off
                yield None, rec
            buf = buf[pos:]
            if not more:
                if buf:
                    self.truncated = True
                return

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
