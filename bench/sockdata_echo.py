"""Cost of the socket data sensor on a loopback request/response loop.

A child process does N round trips (client writes an HTTP request, server thread reads it
and writes a response) over one TCP connection on 127.0.0.1. We time the child's CPU
(user + sys, from wait4) and wall clock with no sensor, with the sensor copying the HTTP
data, and with HTTP switched off (inference, then counted and skipped), in rounds so the
noise of a shared machine shows. Printed as ratios against the no-sensor runs of the same
round. Run as root: .venv/bin/python bench/sockdata_echo.py [rounds] [n] [iovecs]

With ``iovecs`` K > 0 the client sends each request by sendmsg as K iovecs (as gRPC's C core
writes a header block, one iovec a string) instead of send.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

from andon.events.sockdata import SockSettings, SockSource
from andon.protocols.base import Protocol

CHILD = r"""
import socket, sys, threading
N, K = int(sys.argv[1]), int(sys.argv[2])
REQ = b"GET /bench HTTP/1.1\r\nHost: x\r\n\r\n"
PARTS = [REQ[i * len(REQ) // K:(i + 1) * len(REQ) // K] for i in range(K)]
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept()
    for _ in range(N):
        c.recv(4096); c.sendall(RESP)
    c.close()
t = threading.Thread(target=serve); t.start()
k = socket.create_connection(srv.getsockname())
for _ in range(N):
    if K:
        k.sendmsg(PARTS)
    else:
        k.sendall(REQ)
    k.recv(4096)
k.close(); t.join()
"""


def run_child(n: int, iovecs: int = 0) -> tuple[float, float]:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(n), str(iovecs)])
    _, status, ru = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return ru.ru_utime + ru.ru_stime, time.monotonic() - t0


def with_sensor(protocols: frozenset, n: int, iovecs: int = 0) -> tuple[float, float, dict]:
    src = SockSource(SockSettings(protocols=protocols))
    src.start()
    stop = threading.Event()
    count = [0]

    def reader() -> None:
        while not stop.is_set():
            count[0] += sum(1 for _ in src.read(0.05))

    t = threading.Thread(target=reader)
    t.start()
    try:
        cpu, wall = run_child(n, iovecs)
    finally:
        stop.set()
        t.join()
        st = src.stats()
        src.close()
    st["read"] = count[0]
    return cpu, wall, st


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    iovecs = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    ratios: dict[str, list[float]] = {"copy": [], "skip": []}
    wall_ratios: dict[str, list[float]] = {"copy": [], "skip": []}
    for r in range(rounds):
        base_cpu, base_wall = run_child(n, iovecs)
        cpu_c, wall_c, st_c = with_sensor(frozenset({Protocol.HTTP}), n, iovecs)
        cpu_s, wall_s, st_s = with_sensor(frozenset({Protocol.DNS}), n, iovecs)
        ratios["copy"].append(cpu_c / base_cpu)
        ratios["skip"].append(cpu_s / base_cpu)
        wall_ratios["copy"].append(wall_c / base_wall)
        wall_ratios["skip"].append(wall_s / base_wall)
        print(f"round {r + 1}: baseline {base_cpu * 1e6 / n:.1f} us CPU per round trip; "
              f"copy x{cpu_c / base_cpu:.2f} (+{(cpu_c - base_cpu) * 1e6 / n:.2f} us, "
              f"events {st_c['events']}, drops {st_c['drops']}); "
              f"skip x{cpu_s / base_cpu:.2f} (skipped {st_s['skipped_chunks']} chunks)")
    for k in ("copy", "skip"):
        print(f"{k}: child CPU x{statistics.median(ratios[k]):.2f} (median of {rounds}), "
              f"wall x{statistics.median(wall_ratios[k]):.2f}")
    how = f"sendmsg of {iovecs} iovecs" if iovecs else "send"
    print(f"each round trip is 4 traced data syscalls, the request by {how}; {n} round trips per run")


if __name__ == "__main__":
    main()
