"""A tiny control socket in the data directory, so ``andon query`` sees rows not yet flushed.

``DATA_DIR/control.sock`` (unix stream, mode 0600: only the agent's user, root, may ask).
One request line, one reply line, then the server closes::

    flush\\n   ->  ok <rows written>\\n
    stats\\n   ->  ok {"rows_in": ..., ...}\\n      (the store's counters as JSON)
    other     ->  err unknown request\\n

The client (:func:`request_flush`) waits a short time and reports failure rather than
blocking a query: with no agent, or a busy one, the query reads what is on disk.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger("andon.store")

SOCKET_NAME = "control.sock"


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / SOCKET_NAME


class ControlServer:
    def __init__(self, store) -> None:
        self.store = store
        self.path = socket_path(store.data_dir)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.requests = 0

    def start(self) -> None:
        try:
            self.path.unlink(missing_ok=True)  # a dead agent's socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                s.bind(str(self.path))
            finally:
                os.umask(old)
            s.listen(8)
            s.settimeout(0.2)
        except OSError as e:
            log.warning("control socket %s not available (queries read only what is on disk): %s", self.path, e)
            return
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="andon-store-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                conn.settimeout(2.0)
                try:
                    line = conn.makefile("rb").readline(64).strip()
                    conn.sendall(self._answer(line))
                except OSError:
                    pass

    def _answer(self, line: bytes) -> bytes:
        self.requests += 1
        if line == b"flush":
            return f"ok {self.store.flush()}\n".encode()
        if line == b"stats":
            return f"ok {json.dumps(self.store.stats.as_dict())}\n".encode()
        return b"err unknown request\n"

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self.path.unlink(missing_ok=True)


def request(data_dir: Path, what: str = "flush", timeout: float = 1.0) -> str | None:
    """Send one request to a running agent; its reply after ``ok``, or None (no agent, timeout, error)."""
    path = socket_path(data_dir)
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(what.encode() + b"\n")
            reply = s.makefile("rb").readline(1 << 20).decode(errors="replace").strip()
    except OSError:
        return None
    if not reply.startswith("ok"):
        return None
    return reply[2:].strip()


def request_flush(data_dir: Path, timeout: float = 1.0) -> int | None:
    """Ask the agent to flush; rows written, or None if no agent answered in time."""
    reply = request(data_dir, "flush", timeout)
    try:
        return int(reply) if reply is not None else None
    except ValueError:
        return None
