"""The andon side of a benchmark: load the sensor, stream every event into Python, count.

Run as its own process by the benchmarks (``tracers.AndonTracer``), so its CPU time,
memory and GIL are its own and the kernel's self-filter (the loader's pid) hides its own
syscalls. Protocol on stdout, one JSON object a line:

    {"ready": ...}     after LiveSource.start() returned: every program is attached
    {"result": ...}    after SIGTERM: the ring drained, counts and kernel counters

Modes (``--mode``):

    raw      LiveSource.read_raw: numpy batches of records, counted by (type, nr) with
             vectorised operations. The fast path a consumer that filters first would use.
    decode   LiveSource.read: every record decoded into an ``Event`` object, counted by
             ``Event.name``. The per-event Python path the rule engine uses today.
    skip     advance the ring's consumer position without reading records (analysis only:
             the kernel-side cost of emitting, with no Python work per event). Counts are
             the bytes passed over, divided by the slot size.
    idle     never read (analysis only: the ring fills, then every event is a counted drop).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from andon.events.live import LiveSource, SensorSettings
from andon.events.schema import EVENT_DTYPE, HEADER_DTYPE, SLOT, EventType
from andon.events.syscalls import expand_types, syscall_name

NKEYS = 8 * 1024  # (type << 10 | nr): types 1..4, syscall numbers < 1024
COMM_OFF = EVENT_DTYPE.fields["comm"][1]


def key_name(key: int) -> str:
    etype, nr = key >> 10, key & 1023
    if etype == EventType.SYSCALL:
        return syscall_name(nr)
    return {EventType.EXEC: "execve", EventType.FORK: "clone", EventType.EXIT: "procexit"}.get(etype, f"type_{etype}")


class Counter:
    """Counts of every record, and of the records whose comm is the workload's."""

    def __init__(self, comm: str) -> None:
        self.comm = comm
        self.comm_w = np.frombuffer(comm.encode()[:15].ljust(16, b"\0"), "<u8")
        self.all = np.zeros(NKEYS, dtype=np.int64)
        self.target = np.zeros(NKEYS, dtype=np.int64)
        self.first_t = 0.0  # monotonic time the first workload record reached Python
        self.last_t = 0.0

    def _seen_target(self, n: int) -> None:
        if n:
            now = time.monotonic()
            if not self.first_t:
                self.first_t = now
            self.last_t = now

    def add_array(self, arr: np.ndarray) -> None:
        # Cheap per batch (a few microseconds) because with the kernel's adaptive wake-up a
        # consumer that keeps up is handed very small batches. Keys are (type << 10 | nr);
        # as_dict folds the nr of non-syscall records away.
        keys = (arr["type"].astype(np.intp) << 10) | (arr["nr"] & 1023)
        c = np.bincount(keys)
        self.all[: c.size] += c
        # comm compared as two u64 words: the kernel pads comm with NULs (strscpy_pad)
        w = np.ndarray((len(arr), 2), "<u8", arr, COMM_OFF, (arr.strides[0], 8))
        mine = (w[:, 0] == self.comm_w[0]) & (w[:, 1] == self.comm_w[1])
        n = int(np.count_nonzero(mine))
        if n:
            c = np.bincount(keys[mine])
            self.target[: c.size] += c
        self._seen_target(n)

    def add_one(self, key: int, comm: str) -> None:
        self.all[key] += 1
        if comm == self.comm:
            self.target[key] += 1
            self._seen_target(1)

    def as_dict(self, counts: np.ndarray) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in np.flatnonzero(counts):
            name = key_name(int(k))
            out[name] = out.get(name, 0) + int(counts[k])
        return out


def rss_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", required=True, help="comma-separated event types, as `andon events --type`")
    ap.add_argument("--mode", choices=("raw", "decode", "skip", "idle"), default="raw")
    ap.add_argument("--comm", default="", help="count separately the records of this process name")
    ap.add_argument("--ring-bytes", type=int, default=SensorSettings.__dataclass_fields__["ring_bytes"].default)
    ap.add_argument("--wakeup-bytes", type=int, default=0)
    ap.add_argument("--poll-ms", type=float, default=50.0,
                    help="longest wait on an empty ring; with wake-ups off it is the polling period")
    ap.add_argument("--no-linger", action="store_true",
                    help="read whenever anything is pending (RingReader's linger for a fuller batch off)")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    args = ap.parse_args()

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    settings = SensorSettings(
        types=frozenset(expand_types(args.types.split(","))),
        ring_bytes=args.ring_bytes,
        wakeup_bytes=args.wakeup_bytes,
    )
    src = LiveSource(settings)
    src.start()
    if args.no_linger:
        src.reader.BATCH_BYTES = 1  # any pending byte is a batch (instance attributes shadow the class's)
        src.reader.LINGER_S = 0.0
    counter = Counter(args.comm)
    skipped_bytes = 0
    import andon

    emit({"ready": {"pid": os.getpid(), "syscalls": src.enabled_syscalls, "process": src.enabled_process,
                    "syscall_hook": getattr(src, "syscall_hook", ""), "andon": andon.__file__,
                    "bpf_dir": str(settings.bpf_dir), "ring_bytes": src.reader.size, "mode": args.mode,
                    **rss_kb()}})

    # how the kernel's wake-ups shaped the stream: each "sleep" is a wait on an empty
    # ring, ended by a wake-up (or by the timeout, counted apart); batches are yields
    waits = {"sleeps": 0, "timeouts": 0, "batches": 0}

    def consume(timeout: float) -> None:
        nonlocal skipped_bytes
        if args.mode in ("raw", "decode"):
            if src.reader.pending_bytes() == 0:
                waits["sleeps"] += 1
                if not src.reader.wait(timeout):
                    waits["timeouts"] += 1
                    return
        if args.mode == "raw":
            for arr, big in src.read_raw(timeout):
                waits["batches"] += 1
                if arr is not None:
                    counter.add_array(arr)
                else:
                    h = np.frombuffer(big, dtype=HEADER_DTYPE, count=1)[0]
                    etype = int(h["type"])
                    nr = int(h["nr"]) & 1023 if etype == EventType.SYSCALL else 0
                    counter.add_one((etype << 10) | nr, h["comm"].decode(errors="replace"))
        elif args.mode == "decode":
            for ev in src.read(timeout):
                counter.add_one((ev.type << 10) | (ev.nr & 1023) if ev.type == EventType.SYSCALL else ev.type << 10, ev.comm)
        elif args.mode == "skip":
            rd = src.reader
            if rd.wait(timeout):
                prod = rd.producer_pos
                skipped_bytes += prod - rd.consumer_pos
                rd._cons.value = prod  # one aligned store, as RingReader does
        else:  # idle
            time.sleep(timeout)

    t_start = time.monotonic()
    poll_s = args.poll_ms / 1000
    while not stop:
        consume(poll_s)
    # drain: the kernel counts every record it committed; read until we have them all
    t_stop = time.monotonic()
    drained = True
    while True:
        k = src.stats()
        if args.mode in ("raw", "decode"):
            got = src.reader.records_read
        else:
            got = skipped_bytes // SLOT
        if args.mode == "idle" or got >= k["events"]:
            break
        if time.monotonic() - t_stop > args.drain_timeout:
            drained = False
            break
        consume(0.05)
    t_end = time.monotonic()
    ru = os.times()
    res = {
        "mode": args.mode,
        "kernel": src.stats(),
        "records_read": src.reader.records_read if args.mode in ("raw", "decode") else skipped_bytes // SLOT,
        "by_type": counter.as_dict(counter.all),
        "target_comm": args.comm,
        "target_by_type": counter.as_dict(counter.target),
        "target_first_t": counter.first_t,
        "target_last_t": counter.last_t,
        "drained": drained,
        **waits,
        "drain_s": t_end - t_stop,
        "run_s": t_stop - t_start,
        "cpu_user_s": ru.user,
        "cpu_sys_s": ru.system,
        **rss_kb(),
    }
    src.close()
    emit({"result": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
