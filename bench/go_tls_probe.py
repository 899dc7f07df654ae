"""What Go's crypto/tls calls pay for the sensor's probes on them, per call.

A Go child (``tests/go/tlsdemo pingpong``, built by ``make test-go``) makes N round trips of 64
bytes over TLS on loopback TCP between a client and a server goroutine of its own: each
round trip is four crypto/tls calls (the client's Write and Read, the server's Read and
Write) and their socket syscalls. Configurations, interleaved, ``--repeat`` rounds:

- ``off``: no sensor;
- ``nogo``: the sensor tracing the child, Go's probes off (its socket syscalls are hooked,
  its ciphertext recognised and dropped; nothing of its TLS captured);
- ``go``: the sensor as shipped, Go's crypto/tls probed at each function's entry (its stack
  check's jbe) and at every ret: the plaintext of all four calls captured.

Printed: ns per round trip (median over rounds), and the probes' cost per call: (go - nogo)
/ 4. Run as root: ``.venv/bin/python bench/go_tls_probe.py [--n 20000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from andon.events.sockdata import SockSettings, SockSource

DEMO = Path(__file__).resolve().parents[1] / "build/go/tlsdemo"


def one(n: int, src: SockSource | None) -> dict:
    p = subprocess.Popen([str(DEMO), "pingpong", str(n), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdin is not None
    if src is not None:
        src.add_pid(p.pid)
        assert src.tls is not None
        while src.tls.go and not any(f.go for f in src.tls.files.values()):
            list(src.read(0.05))  # the rescan probes it
    got: dict = {}
    p.stdin.write("x")
    p.stdin.close()
    while p.poll() is None:
        if src is not None:
            chunks = sum(1 for _ in src.read(0.05))
            got["records"] = got.get("records", 0) + chunks
        else:
            p.wait()
    if src is not None:
        got["records"] = got.get("records", 0) + sum(1 for _ in src.read(0.2))
    assert p.stdout is not None and p.returncode == 0
    got.update(json.loads(p.stdout.read().strip().splitlines()[-1]))
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="round trips per child")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if not DEMO.exists():
        raise SystemExit(f"{DEMO} is not built: make test-go")
    results: dict[str, list[dict]] = {"off": [], "nogo": [], "go": []}
    for rnd in range(a.repeat):
        order = list(results)
        order = order[rnd % 3:] + order[:rnd % 3]
        for name in order:
            src = None
            if name != "off":  # one sensor at a time: its own probes only
                src = SockSource(SockSettings(pids=frozenset(), tls_go=name == "go", tls_rescan_s=0.05))
                src.start()
                if src.tls is None or (name == "go" and not src.tls.go):
                    raise SystemExit(f"Go TLS probes unavailable: {src.tls_error or src.go_tls_error}")
            try:
                results[name].append(one(a.n, src))
                if src is not None:
                    results[name][-1]["tls_chunks"] = src.stats()["tls_chunks"]
            finally:
                if src is not None:
                    src.close()
        print(f"round {rnd + 1}/{a.repeat} done", file=sys.stderr)
    med = {k: statistics.median(r["ns_per_round_trip"] for r in v) for k, v in results.items()}
    chunks = {k: statistics.median(r.get("tls_chunks", 0) for r in v) for k, v in results.items()}
    t = Table(title=f"a TLS round trip of 64 bytes in Go (4 crypto/tls calls), ns (median of {a.repeat} rounds of {a.n})")
    for col in ("config", "ns per round trip", "vs off", "plaintext chunks captured"):
        t.add_column(col, justify="right" if col != "config" else "left")
    for k in results:
        t.add_row(k, f"{med[k]:,.0f}", f"{med[k] / med['off']:.2f}", f"{chunks[k]:,.0f}")
    Console().print(t)
    per_call = (med["go"] - med["nogo"]) / 4
    print(json.dumps({"median_ns_per_round_trip": med, "tls_chunks": chunks, "go_probes_ns_per_call": round(per_call)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
