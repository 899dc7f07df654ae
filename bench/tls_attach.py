"""How soon a libssl file new to the sensor gets its TLS probes, and what a new process's
first HTTPS exchange loses meanwhile.

Each run starts a Python process that loads its own fresh copy of libssl.so.3
(``LD_LIBRARY_PATH``: a new inode, as a container image new to the host brings) and at
once makes one HTTPS request to itself (a server thread): four TLS calls, SSL_write and
SSL_read at each end. The socket data sensor traces every process, as the agent does.
Two configurations, one after the other:

- ``mapping``: the sensor reports the libssl mapping (``SD_REC_LIB``) and the reader
  probes the file at once (``SockSettings.tls_watch``, the default);
- ``rescan``: only the periodic rescan of new pids' maps, every 2 s (the baseline: how
  the reader found new files before).

Printed per configuration: runs whose four plaintext chunks were all captured, some,
none; and the delay from the mapping to the probes being on (``LibFile.lag_ms``).

Run as root: ``.venv/bin/python bench/tls_attach.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from andon.events.sockdata import ConnClose, Data, SockSettings, SockSource

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"

CHILD = r"""
import socket, ssl, threading
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain({cert!r}, {key!r})
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept(); c = sctx.wrap_socket(c, server_side=True)
    got = b""
    while b"\r\n\r\n" not in got:
        got += c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); c.close()
t = threading.Thread(target=serve); t.start()
k = cctx.wrap_socket(socket.create_connection(srv.getsockname()))
k.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
got = b""
while not got.endswith(b"ok"):
    got += k.recv(65536)
k.close(); t.join()
"""


def run_config(name: str, runs: int, work: Path, code: str) -> dict:
    src = SockSource(SockSettings(tls_watch=name == "mapping", tls_rescan_s=2.0))
    src.start()
    if src.tls is None:
        src.close()
        raise SystemExit(f"TLS uprobes unavailable here: {src.tls_error}")
    full = some = none = 0
    lags: list[float] = []
    try:
        for i in range(runs):
            lib = work / f"{name}{i}"
            lib.mkdir()
            shutil.copy(LIBSSL, lib / "libssl.so.3")  # a new inode every run
            p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, LD_LIBRARY_PATH=str(lib)))
            chunks = closes = 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (p.poll() is None or closes < 2):
                for r in src.read(0.01):
                    if r.pid != p.pid:
                        continue
                    chunks += isinstance(r, Data) and r.encrypted
                    closes += isinstance(r, ConnClose)
            p.wait()
            full += chunks >= 4
            some += 0 < chunks < 4
            none += chunks == 0
            st = (lib / "libssl.so.3").stat()
            f = src.tls.files.get((st.st_dev, st.st_ino))
            if f is not None and f.lag_ms is not None:
                lags.append(f.lag_ms)
            time.sleep(0.2)
    finally:
        src.close()
    return {"config": name, "runs": runs, "full": full, "some": some, "none": none, "lags_ms": lags}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    with tempfile.TemporaryDirectory(prefix="andon-tls-bench-") as d:
        work = Path(d)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                        "-days", "1", "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                       check=True, capture_output=True)
        code = CHILD.format(cert=str(work / "cert.pem"), key=str(work / "key.pem"))
        results = [run_config(c, args.runs, work, code) for c in ("rescan", "mapping")]
    t = Table(title=f"a new process's first HTTPS exchange, {args.runs} runs each (4 plaintext chunks a run)")
    for col in ("config", "all 4 captured", "some", "none", "mapping → probes on, ms: p50 / max"):
        t.add_column(col, justify="left" if col == "config" else "right")
    for r in results:
        lags = r["lags_ms"]
        lag = f"{statistics.median(lags):.1f} / {max(lags):.1f}" if lags else "-"
        t.add_row(r["config"], str(r["full"]), str(r["some"]), str(r["none"]), lag)
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
