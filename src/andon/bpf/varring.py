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

import ctypes
import mmap
import select
import struct
import time
from collections.abc import Iterator

from .ringbuf import map_ring

PAGE = mmap.PAGESIZE
BUSY = 1 << 31
DISCARD = 1 << 30
_LEN_MASK = ~(BUSY | DISCARD) & 0xFFFFFFFF
_U32 = struct.Struct("<I")


class VarRingReader:
    """Consume the ring buffer map ``fd`` of ``size`` bytes (its max_entries)."""

    def __init__(self, fd: int, size: int, batch_bytes: int = 64 * 1024, linger_s: float | None = 0.002) -> None:
        if size <= 0 or size & (size - 1) or size % PAGE:
            raise ValueError(f"ring size {size} must be a power of two and a multiple of the page size")
        self.fd = fd
        self.size = size
        self.mask = size - 1
        # one aligned 8-byte store/load each: the producer must never see a torn position
        self._setup(*map_ring(fd, size), batch_bytes, linger_s)
        self._ep = select.epoll()
        # edge-triggered: poll() returns on a wake-up the producer sends, not merely because
        # records are there (the ring's poll says readable whenever it is not empty)
        self._ep.register(fd, select.EPOLLIN | select.EPOLLET)

    def _setup(self, cons_map: object, prod_map: mmap.mmap, cons: ctypes.c_uint64, batch_bytes: int = 64 * 1024,
               linger_s: float | None = 0.002) -> None:
        self.batch_bytes, self.linger_s = batch_bytes, linger_s
        self._cons_map, self._prod_map, self._cons = cons_map, prod_map, cons
        self._view = memoryview(self._prod_map)
        self._prod = self._view[0:8].cast("Q")
        self.records_read = 0
        self.bytes_read = 0

    @classmethod
    def on_memory(cls, mem: mmap.mmap, consumer: ctypes.c_uint64, size: int) -> VarRingReader:
        """A reader of a ring laid out in ``mem`` as the kernel maps one (the producer page,
        then the data area twice), whose consumer position is ``consumer``: for tests and
        bench/observe_pipeline.py, which play the producer."""
        r = cls.__new__(cls)
        r.fd, r.size, r.mask = -1, size, size - 1
        r._setup(None, mem, consumer)
        r._ep = select.epoll()  # nothing registered: wait() returns on pending bytes only
        return r

    @property
    def consumer_pos(self) -> int:
        return self._cons.value

    @property
    def producer_pos(self) -> int:
        return self._prod[0]

    def pending_bytes(self) -> int:
        return self.producer_pos - self.consumer_pos

    def wait(self, timeout: float) -> bool:
        """True when there is something to read, after at most ``timeout`` seconds.

        With ``batch_bytes`` or more pending, at once. Then two ways to wait, after the
        producer's wake-ups:

        * ``linger_s`` None, for a producer that wakes the reader only each time its backlog
          crosses a multiple of ``batch_bytes`` (the socket data sensor's
          ``SockSettings.wakeup_bytes``): sleep until woken or ``timeout``, then take whatever
          is there. Under a trickle the reader reads on its timer, and the traced processes
          pay no wake-ups (each an irq_work and a context switch, ~30 µs of CPU in this VM).
        * ``linger_s`` set, for the kernel's adaptive wake-up (at the first record after the
          reader had caught up): wait for that, then, with less than a batch pending, linger
          ``linger_s`` first, so a steady load wakes the reader a few hundred times a second
          at most and each read takes many records (as :class:`andon.bpf.ringbuf.RingReader`)."""
        pending = self.pending_bytes()
        if pending >= self.batch_bytes:
            return True
        if self.linger_s is None:
            if timeout > 0:
                self._ep.poll(timeout)
            return self.pending_bytes() > 0
        if pending == 0 and not self._ep.poll(timeout):
            return self.pending_bytes() > 0
        if self.pending_bytes() < self.batch_bytes and timeout > 0:
            time.sleep(min(timeout, self.linger_s))
        return True

    def read(self, max_records: int = 1 << 16) -> Iterator[bytes]:
        """Yield committed records in order, the consumer advanced past each one before it is
        yielded (a caller that stops early leaves the rest in the ring)."""
        mem = self._prod_map
        while max_records > 0:
            offs, lens, ends, scanned = self.spans(min(max_records, 4096))
            for off, length, end in zip(offs, lens, ends):
                rec = mem[off : off + length]
                self.consume_to(end, 1)
                yield rec
            self.consume_to(scanned, 0)  # discarded records after the last one
            if not offs:
                return
            max_records -= len(offs)

    @property
    def memory(self) -> mmap.mmap:
        """The mapped ring; :meth:`spans` gives offsets into it."""
        return self._prod_map

    def spans(self, max_records: int = 1 << 16) -> tuple[list[int], list[int], list[int], int]:
        """The committed records there are now (at most ``max_records``), not consumed:
        their offsets in :attr:`memory`, their lengths, the consumer position just past each,
        and the position past everything scanned (discarded records included). The caller
        reads them in place, then calls :meth:`consume_to`."""
        cons = self._cons.value
        prod = self._prod[0]
        mem = self._prod_map
        mask = self.mask
        unpack = _U32.unpack_from
        offs: list[int] = []
        lens: list[int] = []
        ends: list[int] = []
        n = 0
        while cons < prod and n < max_records:
            off = PAGE + (cons & mask)
            hdr = unpack(mem, off)[0]
            if hdr & BUSY:
                break  # reserved, not committed yet
            length = hdr & _LEN_MASK
            cons += (length + 15) & ~7
            if not hdr & DISCARD:
                offs.append(off + 8)
                lens.append(length)
                ends.append(cons)
                n += 1
        return offs, lens, ends, cons

    def consume_to(self, pos: int, records: int) -> None:
        """Give the ring back up to ``pos`` (a position :meth:`spans` returned), ``records``
        records read."""
        start = self._cons.value
        if pos > start:
            self._cons.value = pos
            self.records_read += records
            self.bytes_read += pos - start

    def read_batch(self, max_records: int = 1 << 16) -> list[bytes]:
        """The committed records there are now (at most ``max_records``), copied out, in
        order; the consumer position then moves past them all in one store."""
        cons = self._cons.value
        prod = self._prod[0]
        mem = self._prod_map  # slicing the mmap copies straight into a bytes object
        mask = self.mask
        unpack = _U32.unpack_from
        out: list[bytes] = []
        append = out.append
        start = cons
        n = 0
        while cons < prod and n < max_records:
            off = PAGE + (cons & mask)
            hdr = unpack(mem, off)[0]
            if hdr & BUSY:
                break  # reserved, not committed yet
            length = hdr & _LEN_MASK
            if not hdr & DISCARD:
                append(mem[off + 8 : off + 8 + length])
                n += 1
            cons += (length + 15) & ~7
        if cons != start:
            self._cons.value = cons
            self.records_read += n
            self.bytes_read += cons - start
        return out

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
        if self._cons_map is None:  # on_memory: the memory is its owner's
            return
        for m in (self._cons_map, self._prod_map):
            try:
                m.close()
            except BufferError:
                pass
