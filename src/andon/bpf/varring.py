"""Read a BPF ring buffer of variable-size records by mapping it (no libbpf callback).

The layout is the kernel's (kernel/bpf/ringbuf.c): a writable consumer page, then a
read-only producer page followed by the data area mapped twice in a row, so a record
that wraps round the end is still contiguous. Each record is an 8-byte header (u32
length with the BUSY and DISCARD bits, u32 page offset) and the record, the pair
rounded up to 8 bytes.

:class:`andon.bpf.ringbuf.RingReader` is the fast reader for the security ring, whose
records are whole 256-byte slots; this one takes records of any size (the socket data
sensor's) and hands each one out as bytes.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Iterator

from .ringbuf import map_ring

PAGE = mmap.PAGESIZE
BUSY = 1 << 31
DISCARD = 1 << 30
_LEN_MASK = ~(BUSY | DISCARD) & 0xFFFFFFFF
_U32 = struct.Struct("<I")


class VarRingReader:
    """Consume the ring buffer map ``fd`` of ``size`` bytes (its max_entries)."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % PAGE:
            raise ValueError(f"ring size {size} must be a power of two and a multiple of the page size")
        self.fd = fd
        self.size = size
        self.mask = size - 1
        # one aligned 8-byte store/load each: the producer must never see a torn position
        self._cons_map, self._prod_map, self._cons = map_ring(fd, size)
        self._view = memoryview(self._prod_map)
        self._prod = self._view[0:8].cast("Q")
        self._ep = select.epoll()
        self._ep.register(fd, select.EPOLLIN)
        self.records_read = 0
        self.bytes_read = 0

    @property
    def consumer_pos(self) -> int:
        return self._cons.value

    @property
    def producer_pos(self) -> int:
        return self._prod[0]

    def pending_bytes(self) -> int:
        return self.producer_pos - self.consumer_pos

    def wait(self, timeout: float) -> bool:
        """True when there is something to read, after at most ``timeout`` seconds."""
        if self.pending_bytes() > 0:
            return True
        return bool(self._ep.poll(timeout))

    def read(self, max_records: int = 1 << 16) -> Iterator[bytes]:
        """Yield committed records in order, advancing the consumer after each one."""
        cons = self.consumer_pos
        prod = self.producer_pos
        data = self._view[PAGE:]
        try:
            yield from self._records(data, cons, prod, max_records)
        finally:
            data.release()

    def _records(self, data: memoryview, cons: int, prod: int, max_records: int) -> Iterator[bytes]:
        n = 0
        while cons < prod and n < max_records:
            off = cons & self.mask
            hdr = _U32.unpack_from(data, off)[0]
            if hdr & BUSY:
                break  # reserved, not committed yet
            length = hdr & _LEN_MASK
            total = (length + 8 + 7) & ~7
            if not hdr & DISCARD:
                rec = bytes(data[off + 8 : off + 8 + length])
                n += 1
                self.records_read += 1
                self.bytes_read += total
                cons += total
                self._cons.value = cons
                yield rec
            else:
                cons += total
                self._cons.value = cons

    def close(self) -> None:
        try:
            self._ep.close()
        except OSError:
            pass
        if self._prod is not None:
            self._prod.release()
            self._view.release()
            self._prod = None  # type: ignore[assignment]
        del self._cons
        for m in (self._cons_map, self._prod_map):
            try:
                m.close()
            except BufferError:
                pass
