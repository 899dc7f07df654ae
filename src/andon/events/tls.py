"""Attach the socket data sensor's TLS uprobes to every libssl in use, and to Go programs.

The probes themselves (``sockdata_ssl_*`` in ``bpf/net/sockdata.bpf.c``) live in the
sensor's object and share its maps; this module only decides *where* they go. A uprobe
is placed on a file's inode, so one attachment with pid -1 covers every process that
maps that file, including processes started later. What has to be found are the
distinct files:

* the host's standard library directories, once at start;
* every ``libssl.so.3`` / ``libssl.so.1.1`` (or a wheel's ``libssl-<hash>.so.3``) named in
  ``/proc/<pid>/maps``, opened through
  ``/proc/<pid>/root`` so that a container's (or any other mount namespace's) own copy is
  the file attached. Each file is attached once, keyed by (st_dev, st_ino);
* every executable that has OpenSSL linked in and exports it (node's official and
  NodeSource builds), and every Go executable with crypto/tls in it (``go_tls``: Go
  programs carry their own TLS): ``/proc/<pid>/exe`` of each new pid is looked at once per
  file (``libssl_code.exports_openssl``, ``go_tls.go_tls``), at start, at each rescan, and
  at the first exec of a file (the sensor's exec record).

:meth:`TlsAttacher.on_mapped` reads one process's maps the moment the sensor says it
mapped a file named ``libssl.so.*`` or ``libssl-*`` executable (``SD_REC_LIB``, from its ``mmap(2)`` at
exit), so a library loaded late (Python's ``import ssl``), after an exec in the same pid,
or from a directory of its own (``LD_LIBRARY_PATH``, a container image new to this host)
is probed within milliseconds of its loading, before the program's first TLS call in
most cases; calls made in between are not seen. :meth:`TlsAttacher.rescan` is the
backstop (a record lost to a full ring): it reads the maps of pids it has not seen
before (a directory listing plus one small file per new process) once a rescan period.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..bpf.object import BpfObject, Link
from ..errors import BpfError, NotSupported
from .go_tls import GoTls, GoTlsError, go_tls
from .libssl_code import exports_openssl, shared_calls, symbol_offsets

log = logging.getLogger("andon.tls")

# OpenSSL's sonames, and the copies Python wheels bundle under a hashed name (auditwheel:
# psycopg[binary]'s psycopg_binary.libs/libssl-6a9b88ec.so.3); NSS's libssl3.so is another
# library with other functions
LIBSSL = re.compile(r"/libssl(-[0-9a-f]{8})?\.so\.(3|1\.1)$")

# function -> its entry program and its return program. The four data calls share one
# return program; SSL_do_handshake's only binds an SSL * to its socket (a memory BIO's
# client writes before it reads).
PROBES = {
    "SSL_read": ("sockdata_ssl_read", "sockdata_ssl_ret"),
    "SSL_write": ("sockdata_ssl_write", "sockdata_ssl_ret"),
    "SSL_read_ex": ("sockdata_ssl_read_ex", "sockdata_ssl_ret"),
    "SSL_write_ex": ("sockdata_ssl_write_ex", "sockdata_ssl_ret"),
    "SSL_do_handshake": ("sockdata_ssl_handshake", "sockdata_ssl_handshake_ret"),
}
# the function SSL_read and SSL_read_ex both call (and SSL_write/SSL_write_ex), where
# libssl_code finds it: probed in their place, its calls as the _ex calls
# (the pair, the entry program by the shared function's argument count)
SHARED_PROBES = {
    "read": (("SSL_read", "SSL_read_ex"), {4: "sockdata_ssl_read_shared"}),
    "write": (("SSL_write", "SSL_write_ex"), {4: "sockdata_ssl_write_shared", 5: "sockdata_ssl_write_shared5"}),
}
RET_PROG = "sockdata_ssl_ret"
PROGRAMS = (frozenset(p for pair in PROBES.values() for p in pair)
            | {p for _, progs in SHARED_PROBES.values() for p in progs.values()})
# Go's crypto/tls: the entry programs, and the one at every ret of either function. Loaded
# apart from the others (they need bpf_get_attach_cookie, Linux 5.15+ for uprobes)
GO_PROBES = {"read": "sockdata_go_tls_read", "write": "sockdata_go_tls_write"}
GO_COPY_PROG = "sockdata_go_tls_read_copy"  # at Read's call of runtime.memmove
GO_RET_PROG = "sockdata_go_tls_ret"  # at each ret of a Read without one
GO_PROGRAMS = frozenset(GO_PROBES.values()) | {GO_COPY_PROG, GO_RET_PROG}
GO_FUNCTIONS = ("tls.(*Conn).Read", "tls.(*Conn).Write")

# (pid, inode) pairs of mapping records remembered, at most (then forgotten, all at once)
MAPPED_MAX = 65536
# executables (device, inode) remembered as exporting OpenSSL or not, at most
EXES_MAX = 16384

# where a host installs its libssl (Debian multiarch, Fedora/RHEL lib64, /usr/local builds)
HOST_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
)


@dataclass
class LibFile:
    """One file with TLS probes on it: a libssl, an executable that exports OpenSSL (node), or
    a Go program (``go`` says its Go version)."""

    path: str  # as opened: through /proc/<pid>/root/ for a file of another mount namespace
    dev: int
    ino: int
    pid: int  # the process it was found mapped in; 0 for a host path
    functions: tuple[str, ...] = ()  # the functions seen (OpenSSL 1.1.0 has no _ex calls)
    shared: dict[str, int] = field(default_factory=dict)  # "read"/"write" -> file offset of the shared
    # function probed in place of that pair (empty: the exported functions are probed)
    lag_ms: float | None = None  # from its mapping to its probes on; None: found by a scan
    go: str = ""  # a Go executable's Go version: its crypto/tls is probed (go_tls), not OpenSSL
    links: list[Link] = field(default_factory=list, repr=False)


class TlsAttacher:
    """Owns the uprobe links of one loaded sensor object; close() detaches them."""

    def __init__(self, obj: BpfObject, rescan_s: float = 2.0, proc: Path = Path("/proc"),
                 host_dirs: tuple[str, ...] = HOST_DIRS, shared: bool = True, go: bool = True) -> None:
        self._obj = obj
        self.shared = shared  # probe a pair's shared function where one is found (libssl_code)
        self.go = go  # the Go programs are loaded: probe Go executables' crypto/tls
        self.rescan_s = rescan_s
        self._proc = proc
        self._host_dirs = host_dirs
        self.files: dict[tuple[int, int], LibFile] = {}
        self.failed: dict[tuple[int, int], str] = {}  # files that could not be probed, and why
        self._seen: set[int] = set()
        self._mapped: set[tuple[int, int]] = set()  # (pid, inode) of the mapping records handled
        # executables looked at: "openssl" (exports it), "go" (a Go program with crypto/tls), ""
        self._exes: dict[tuple[int, int], str] = {}
        self._go: dict[tuple[int, int], GoTls] = {}  # the probes found for a "go" executable, until probed
        self._next_scan = 0.0
        self.exes_gone = 0  # executables of exec records whose process was gone before it was looked at
        self.scans = 0
        self.maps_read = 0  # /proc/<pid>/maps files read, over all scans

    # -- finding files -------------------------------------------------------------------
    def start(self) -> None:
        """Probe the host's libssl files and those of every running process.

        Raises NotSupported when not even one file could be probed because uprobes are
        unavailable (the socket capture itself keeps working without them)."""
        for d in self._host_dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for name in names:
                path = f"{d}/{name}"
                if LIBSSL.search(path):
                    self._attach(path, 0)
        self.rescan()
        if not self.files and self.failed:
            why = "; ".join(sorted(set(self.failed.values())))
            raise NotSupported("TLS uprobes", f"no libssl could be probed ({why}): is CONFIG_UPROBE_EVENTS on?")

    def rescan(self) -> int:
        """Read the maps of processes not seen before; probe new libssl files. Returns
        how many files were newly probed."""
        before = len(self.files)
        try:
            pids = {int(n) for n in os.listdir(self._proc) if n.isdigit()}
        except OSError as e:
            log.warning("cannot list %s: %s", self._proc, e)
            return 0
        self._seen &= pids  # forget exited processes: their pids may be reused
        own = os.getpid()
        for pid in sorted(pids - self._seen):
            self._seen.add(pid)
            if pid == own:
                continue
            for path in self._libssl_of(pid) + self._exe_of(pid):
                self._attach(path, pid)
        self.scans += 1
        self._next_scan = time.monotonic() + self.rescan_s
        return len(self.files) - before

    def maybe_rescan(self) -> int:
        """rescan() when the period has passed since the last; cheap to call often."""
        if time.monotonic() < self._next_scan:
            return 0
        return self.rescan()

    def on_mapped(self, pid: int, ts_ns: int = 0, ino: int = 0) -> int:
        """pid mapped a libssl file (inode ``ino``) at wall-clock ``ts_ns``, or ran an executable
        new to the sensor (its inode): probe the libssl files in its maps that are new, and
        its executable if that exports OpenSSL (node). A process that maps the same file
        again (a dlopen and dlclose loop) is not read again. Returns how many files were
        newly probed."""
        if pid == os.getpid():
            return 0
        if ino:
            if (pid, ino) in self._mapped:
                return 0
            if len(self._mapped) >= MAPPED_MAX:
                self._mapped.clear()
            self._mapped.add((pid, ino))
        self._seen.add(pid)
        new = 0
        for path in self._libssl_of(pid) + self._exe_of(pid):
            lib = self._attach(path, pid)
            if lib is not None:
                new += 1
                if ts_ns:
                    lib.lag_ms = (time.time_ns() - ts_ns) / 1e6
        return new

    def _libssl_of(self, pid: int) -> list[str]:
        try:
            with open(self._proc / str(pid) / "maps", "rb") as f:
                raw = f.read()
        except OSError:
            return []  # exited, or a kernel thread
        self.maps_read += 1
        found: set[str] = set()
        for line in raw.split(b"\n"):
            if b"/libssl" not in line:
                continue
            parts = line.split(maxsplit=5)
            if len(parts) == 6:
                path = parts[5].decode(errors="replace")
                if LIBSSL.search(path):  # " (deleted)" files do not match: not probed
                    found.add(path)
        # the process's own view of its files: right inside a container's mount namespace
        return [f"{self._proc}/{pid}/root{p}" for p in sorted(found)]

    def _exe_of(self, pid: int) -> list[str]:
        """The process's executable, when it has OpenSSL linked in and exports it (node), or is
        a Go program with crypto/tls: each executable file is looked at once (by device and
        inode)."""
        exe = f"{self._proc}/{pid}/exe"
        try:
            st = os.stat(exe)
            target = os.readlink(exe)
        except OSError:
            self.exes_gone += 1
            return []  # exited, a kernel thread
        key = (st.st_dev, st.st_ino)
        if key in self.files or key in self.failed:
            return []
        kind = self._exes.get(key)
        if kind is None:
            if len(self._exes) >= EXES_MAX:
                self._exes.clear()
                self._go.clear()
            kind = self._exes[key] = self._exe_kind(exe, key)
        if not kind or target.endswith(" (deleted)"):
            return []
        return [f"{self._proc}/{pid}/root{target}"]

    def _exe_kind(self, exe: str, key: tuple[int, int]) -> str:
        if exports_openssl(exe):
            return "openssl"
        if not self.go:
            return ""
        try:
            found = go_tls(exe)
        except GoTlsError as e:
            self.failed[key] = f"Go's crypto/tls: {e}"
            log.info("%s not probed: %s", exe, self.failed[key])
            return ""
        if found is None:
            return ""
        self._go[key] = found
        return "go"

    # -- probing ---------------------------------------------------------------------------
    def _attach(self, path: str, pid: int) -> LibFile | None:
        """Probe the file at path unless it is probed (or failed) already; the new LibFile.

        The file is opened first and probed through that descriptor (/proc/self/fd/N: the
        same inode), so a short-lived process that exits meanwhile, taking its
        /proc/<pid>/root with it, does not make the file fail. Only a regular file is
        probed: a FIFO put at that path (by whoever owns the process's root) would block an
        open without O_NONBLOCK, and the reader with it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or key in self.files or key in self.failed:
                return None
            return self._probe(f"/proc/self/fd/{fd}", LibFile(path, st.st_dev, st.st_ino, pid))
        finally:
            os.close(fd)

    def _pair(self, target: str, lib: LibFile, prog: str, ret_prog: str, fn: str | None, offset: int = 0) -> str:
        """Attach one entry program and its return program; "" or why not. The return probe
        first: an entry without its return would leave the thread marked "inside a TLS
        call" and its later socket bytes taken for ciphertext."""
        try:
            ret = self._obj.program(ret_prog).attach_uprobe(target, fn, retprobe=True, offset=offset)
        except (NotSupported, BpfError) as e:
            return str(e)
        try:
            entry = self._obj.program(prog).attach_uprobe(target, fn, offset=offset)
        except (NotSupported, BpfError) as e:
            ret.destroy()
            return str(e)
        lib.links += [ret, entry]
        return ""

    def _probe(self, target: str, lib: LibFile) -> LibFile | None:
        key = (lib.dev, lib.ino)
        if self._exes.get(key) == "go":
            try:
                found = self._go.pop(key, None) or go_tls(target)
            except GoTlsError as e:
                found, self.failed[key] = None, f"Go's crypto/tls: {e}"
            return self._probe_go(target, lib, found) if found else None
        done: list[str] = []
        why = ""
        found = shared_calls(target) if self.shared else None
        covered: set[str] = set()
        for kind, (pair, progs) in SHARED_PROBES.items():
            off = getattr(found, kind) if found else None
            if off is None:
                continue
            prog = progs[found.write_args if kind == "write" else 4]  # type: ignore[union-attr]
            err = self._pair(target, lib, prog, RET_PROG, None, off)
            if err:
                why = why or err
                continue
            lib.shared[kind] = off
            covered.update(pair)
            done.extend(pair)
        offsets = symbol_offsets(target, PROBES)
        for fn, (prog, ret_prog) in PROBES.items():
            if fn in covered:
                continue
            off = offsets.get(fn)  # by offset where found: libbpf reads the symbols per probe
            err = self._pair(target, lib, prog, ret_prog, None if off else fn, off or 0)
            if err:
                why = why or err
                continue
            done.append(fn)
        if not {"SSL_read", "SSL_write"} <= set(done):
            for link in lib.links:
                link.destroy()
            lib.links.clear()
            self.failed[key] = why or "SSL_read/SSL_write not found"
            log.info("libssl %s not probed: %s", lib.path, self.failed[key])
            return None
        lib.functions = tuple(done)
        self.files[key] = lib
        log.info("probing %s (%s%s) for pid %d and every other user of it", lib.path, ", ".join(done),
                 "".join(f"; {k} at its shared function, offset {o:#x}" for k, o in lib.shared.items()), lib.pid)
        return lib

    def _probe_go(self, target: str, lib: LibFile, found: GoTls) -> LibFile | None:
        """Go's crypto/tls: Read's copy (or ret) probes first (an entry without them would leave
        its call in the map until the LRU takes it), then the entries."""
        key = (lib.dev, lib.ino)
        why = ""
        for kind, prog in GO_PROBES.items():
            fn = getattr(found, kind)
            try:
                if fn.copy is not None:
                    lib.links.append(self._obj.program(GO_COPY_PROG).attach_uprobe(target, None, offset=fn.copy))
                for off in fn.rets:
                    lib.links.append(self._obj.program(GO_RET_PROG).attach_uprobe(target, None, offset=off))
                lib.links.append(self._obj.program(prog).attach_uprobe(target, None, offset=fn.entry, cookie=fn.cookie))
            except (NotSupported, BpfError) as e:
                why = str(e)
                break
        if why:
            for link in lib.links:
                link.destroy()
            lib.links.clear()
            self.failed[key] = why
            log.info("Go program %s not probed: %s", lib.path, why)
            return None
        lib.functions, lib.go = GO_FUNCTIONS, found.version
        self.files[key] = lib
        log.info("probing %s (Go %s: %s; Read's plaintext at %s) for pid %d and every other process running it",
                 lib.path, found.version, ", ".join(GO_FUNCTIONS),
                 "its copy" if found.read.copy is not None else f"its {len(found.read.rets)} rets", lib.pid)
        return lib

    def close(self) -> None:
        for lib in self.files.values():
            for link in lib.links:
                link.destroy()
            lib.links.clear()
        self.files.clear()


__all__ = ["TlsAttacher", "LibFile", "PROGRAMS", "GO_PROGRAMS", "LIBSSL"]
