"""What a TLS library call pays for the sensor's probes, per call, by where they are.

A child process calls OpenSSL on memory BIOs in a loop, N times each (Python's ``ssl``:
``SSLObject.write`` is one SSL_write_ex with its plaintext, ``SSLObject.read`` on an empty
BIO one SSL_read_ex that returns "want read"), with no socket: what is timed is the library
call and its probes, nothing else. Configurations, interleaved, ``--repeat`` rounds:

- ``off``: no sensor;
- ``exported``: the sensor with OpenSSL's exported calls probed (entry and return), the child
  traced: how it was before stop 28, and how a libssl whose shared functions are not found
  is still probed;
- ``shared``: the sensor as shipped: the function SSL_read and SSL_read_ex share (and the
  write pair's) probed in their place (``libssl_code``).

Printed: ns per call (median over rounds), and the probes' own cost (traced minus off).
Run as root: ``.venv/bin/python bench/tls_probe.py [--n 20000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from andon.events.sockdata import SockSettings, SockSource

CHILD = r"""
import json, ssl, sys, time
n = int(sys.argv[1])
cert, key = sys.argv[2], sys.argv[3]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
# a client and a server SSL on memory BIOs, handshaken by moving bytes between them
ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
c, s = cctx.wrap_bio(ci, co), sctx.wrap_bio(si, so, server_side=True)
for _ in range(10):
    for obj in (c, s):
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
    si.write(co.read()); ci.write(so.read())
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
msg = b"GET / HTTP/1.1\r\n\r\n"
t = time.perf_counter()
for _ in range(n):
    c.write(msg)
w = time.perf_counter() - t
co.read()
t = time.perf_counter()
for _ in range(n):
    try:
        c.read(100)
    except ssl.SSLWantReadError:
        pass
r = time.perf_counter() - t
print(json.dumps({"write_ns": w / n * 1e9, "read_ns": r / n * 1e9}), flush=True)
"""


def one(n: int, cert: str, key: str, src: SockSource | None) -> dict:
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(n), cert, key], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    json.loads(p.stdout.readline())
    if src is not None:
        src.add_pid(p.pid)
    out, _ = p.communicate("go\n", timeout=300)
    if src is not None:
        src.read(0.0)
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="calls of each kind per child")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        srcs = {}
        for name, shared in (("exported", False), ("shared", True)):
            s = SockSource(SockSettings(pids=frozenset(), tls_shared=shared))
            s.start()
            if s.tls is None:
                raise SystemExit(f"TLS uprobes unavailable: {s.tls_error}")
            srcs[name] = s
        results: dict[str, list[dict]] = {"off": [], "exported": [], "shared": []}
        try:
            for rnd in range(a.repeat):
                order = list(results)
                order = order[rnd % 3:] + order[:rnd % 3]
                for name in order:
                    # only one sensor's probes may be on at once: close the other's by detaching
                    for other, s in srcs.items():
                        if other != name and s.tls is not None:
                            s.tls.close()
                    if name != "off":
                        srcs[name].tls.start()
                    results[name].append(one(a.n, str(cert), str(key), srcs.get(name)))
                    if name != "off":
                        srcs[name].tls.close()
                print(f"round {rnd + 1}/{a.repeat} done", file=sys.stderr)
        finally:
            for s in srcs.values():
                s.close()
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("write_ns", "read_ns")} for k, v in results.items()}
    t = Table(title=f"one OpenSSL call on a memory BIO, ns (median of {a.repeat} rounds of {a.n})")
    for col in ("probes", "SSL_write_ex", "probes' cost", "SSL_read_ex (want read)", "probes' cost"):
        t.add_column(col, justify="right" if col != "probes" else "left")
    for k in results:
        w, r = med[k]["write_ns"], med[k]["read_ns"]
        t.add_row(k, f"{w:,.0f}", "-" if k == "off" else f"{w - med['off']['write_ns']:,.0f}",
                  f"{r:,.0f}", "-" if k == "off" else f"{r - med['off']['read_ns']:,.0f}")
    Console().print(t)
    ratio = (med["exported"]["write_ns"] - med["off"]["write_ns"]) / max(1.0, med["shared"]["write_ns"] - med["off"]["write_ns"])
    print(json.dumps({"median_ns": med, "exported_over_shared_probe_cost_write": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
