"""Read a BPF ring buffer from Python by mapping it, without libbpf's per-record callback.

The ring is mapped twice as the kernel lays it out: one writable page holding
``consumer_pos``, then a read-only producer page followed by the data area mapped twice
in a row (so a record that wraps is still contiguous). andon's records are whole
256-byte slots (bpf/abi/events.h), so a run of one-slot records is one numpy array: we
find where the run ends with a vectorised look at the slot headers, copy it out in one
go, and only step record by record over the rare multi-slot ones.

``consumer_pos`` is advanced with one aligned 8-byte store; a zeroing write such as
``struct.pack_into`` would briefly show the producer a consumer at 0 and look like drops.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import time
from collections.abc import Iterator

import numpy as np

from ..events.schema import EVENT_DTYPE, REC_SMALL, RINGBUF_BUSY, RINGBUF_DISCARD, SLOT

PAGE = mmap.PAGESIZE
_HDR_LEN_MASK = ~(RINGBUF_BUSY | RINGBUF_DISCARD) & 0xFFFFFFFF


def map_ring(fd: int, size: int) -> tuple[mmap.mmap, mmap.mmap, ctypes.c_uint64]:
    """Map a ring buffer map as the kernel lays it out.

    Returns the writable consumer page, the read-only producer page followed by the data
    area mapped twice (so a wrapping record is contiguous), and ``consumer_pos`` as a
    ctypes u64 over the first page: one aligned 8-byte store per update, never a torn one.
    """
    cons_map = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    prod_map = mmap.mmap(fd, PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
    return cons_map, prod_map, ctypes.c_uint64.from_buffer(cons_map)


class RingReader:
    """Consume the ring buffer map ``fd`` of ``size`` bytes (its max_entries)."""

    def __init__(self, fd: int, size: int) -> None:
        if size & (size - 1) or size % SLOT:
            raise ValueError(f"ring size {size} must be a power of two and a multiple of {SLOT}")
        self.fd = fd
        self.size = size
        self.mask = size - 1
        self._cons_map, self._prod_map, self._cons = map_ring(fd, size)
        # producer_pos is read through numpy: a plain aligned 8-byte load
        self._prod = np.frombuffer(self._prod_map, dtype="<u8", count=1, offset=0)
        self._data = np.frombuffer(self._prod_map, dtype=np.uint8, offset=PAGE, count=2 * size)
        # slot headers as u32 pairs: [len, pg_off] every 256 bytes across the doubled area
        self._slot_len = np.frombuffer(self._prod_map, dtype="<u4", offset=PAGE, count=(2 * size) // 4)[:: SLOT // 4]
        self._records = np.frombuffer(self._prod_map, dtype=np.uint8, offset=PAGE, count=2 * size)
        self._ep = select.epoll()
        self._ep.register(fd, select.EPOLLIN)
        self.records_read = 0
        self.bytes_read = 0

    # -- positions -----------------------------------------------------------------------
    @property
    def consumer_pos(self) -> int:
        return self._cons.value

    @property
    def producer_pos(self) -> int:
        return int(self._prod[0])

    def pending_bytes(self) -> int:
        return self.producer_pos - self.consumer_pos

    # a batch worth reading at once: below this, give the producer a moment to add more
    BATCH_BYTES = 256 * SLOT
    LINGER_S = 0.002

    def wait(self, timeout: float) -> bool:
        """Block until there is data (or timeout seconds pass).

        A trickle is read at once (the kernel's wake-up comes when we had caught up); when
        data is already flowing but less than a batch is pending we linger ~2 ms first,
        so that at a million events a second each read moves thousands of records rather
        than dozens, and the per-read cost stops dominating the consumer's CPU."""
        pending = self.pending_bytes()
        if pending >= self.BATCH_BYTES:
            return True
        if pending > 0:
            time.sleep(min(timeout, self.LINGER_S))
            return True
        return bool(self._ep.poll(timeout))

    # -- reading ---------------------------------------------------------------------------
    def read(self, max_slots: int = 1 << 16) -> Iterator[tuple[np.ndarray | None, bytes | None]]:
        """Yield what is committed, in order: ``(array_of_small_records, None)`` for a run of
        one-slot records, ``(None, record_bytes)`` for a multi-slot record. Advances the
        consumer position after each item is copied out."""
        cons = self.consumer_pos
        prod = self.producer_pos
        budget = max_slots
        while cons < prod and budget > 0:
            off = cons & self.mask
            first = off // SLOT
            n = min((prod - cons) // SLOT, budget)
            if n == 0:
                break
            lens = self._slot_len[first : first + n]
            # one-slot records whose commit is done: len == 248 exactly (busy/discard bits clear)
            bad = np.flatnonzero(lens != REC_SMALL)
            run = int(bad[0]) if bad.size else n
            if run:
                start = off
                end = off + run * SLOT
                chunk = self._records[start:end].view(np.dtype([("h", "<u8"), ("ev", EVENT_DTYPE)]))["ev"].copy()
                cons += run * SLOT
                self._cons.value = cons
                self.records_read += run
                self.bytes_read += run * SLOT
                budget -= run
                yield chunk, None
                continue
            hdr = int(lens[0])
            if hdr & RINGBUF_BUSY:
                break  # the producer has not committed this one yet
            length = hdr & _HDR_LEN_MASK
            total = (length + 8 + 7) & ~7
            if hdr & RINGBUF_DISCARD:
                cons += total
                self._cons.value = cons
                continue
            rec = self._records[off + 8 : off + 8 + length].tobytes()
            cons += total
            self._cons.value = cons
            self.records_read += 1
            self.bytes_read += total
            budget -= (total + SLOT - 1) // SLOT
            yield None, rec

    def close(self) -> None:
        try:
            self._ep.close()
        except Exception:
            pass
        # numpy views must go before the maps can close
        self._prod = self._data = self._slot_len = self._records = None  # type: ignore[assignment]
        del self._cons
        for m in (self._cons_map, self._prod_map):
            try:
                m.close()
            except BufferError:
                pass


def page_aligned_size(n: int) -> int:
    """The smallest valid ring size >= n: a power of two and at least one page."""
    size = max(n, os.sysconf("SC_PAGE_SIZE"))
    return 1 << (size - 1).bit_length()
