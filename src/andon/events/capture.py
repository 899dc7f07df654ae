"""Capture files: the live stream written to disk, replayed later through the same decoder.

Layout (little endian)::

    magic    8 bytes  b"ANDONCAP"
    version  u32      1
    hlen     u32      length of the JSON header that follows
    header   hlen     JSON: host, kernel, boot_offset, started, types, state snapshot
    records  ...      repeated: u32 length, then that many bytes of struct andon_event

Records are stored exactly as the kernel wrote them, so a capture replays through the
same ``decode_record`` as the live ring, and a test can replay a real capture. The header
carries the process table as it was at the start, so offline analysis knows the
processes that existed before the first event. A capture cut short (the agent killed
mid-write) reads up to its last whole record and reports the cut.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CaptureError
from .schema import EVENT_DTYPE, REC_SMALL, Event, decode_record

MAGIC = b"ANDONCAP"
VERSION = 1
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
        self.truncated = False
        self.records = 0

    def raw_records(self) -> Iterator[bytes]:
        f = self._f
        while True:
            lb = f.read(4)
            if not lb:
                return
            if len(lb) < 4:
                self.truncated = True
                return
            (n,) = _LEN.unpack(lb)
            if n < 112 or n > _MAX_RECORD:
                raise CaptureError(f"{self.path}: record {self.records} has impossible length {n}")
            rec = f.read(n)
            if len(rec) < n:
                self.truncated = True
                return
            self.records += 1
            yield rec

    def events(self) -> Iterator[Event]:
        off = self.header.boot_offset
        for rec in self.raw_records():
            yield decode_record(rec, off)

    def batches(self, chunk: int = 1 << 20) -> Iterator[tuple[np.ndarray | None, bytes | None]]:
        """The records as the live ring gives them (``LiveSource.read_raw``): runs of
        one-slot records as a numpy ``EVENT_DTYPE`` array, a larger record alone as bytes.

        ``write_batch`` lays one-slot records out every ``4 + REC_SMALL`` bytes, so a run is
        read with one strided numpy view, without a Python step per record."""
        f = self._f
        buf = b""
        step = 4 + REC_SMALL
        while True:
            more = f.read(chunk)
            buf += more
            pos = 0
            end = len(buf)
            while end - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
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
                    yield recs, None
                    continue
                if n < 112 or n > _MAX_RECORD:
                    raise CaptureError(f"{self.path}: record {self.records} has impossible length {n}")
                if end - pos - 4 < n:
                    break
                self.records += 1
                yield None, buf[pos + 4 : pos + 4 + n]
                pos += 4 + n
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
