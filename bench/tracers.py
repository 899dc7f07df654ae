"""The tracers a benchmark compares, each started until it is provably attached and stopped cleanly.

Every tracer is a context manager: ``__enter__`` returns only once the tracer's BPF
programs are attached (checked in the kernel, not guessed from a sleep alone), and
``__exit__`` stops the process and waits for it. ``result`` holds what the tracer
reported (andon: counts and kernel counters; bpftrace: its count map; snoops: lost-event
lines).

How "attached" is checked: ``/proc/<pid>/fdinfo`` of a BPF link names the tracepoint it
is attached to (``tp_name``), and ``bpftool perf show`` lists the tracepoints a process
attached through perf events (bpftrace 0.17 attaches that way). The same fdinfo of a
program fd carries ``run_time_ns`` and ``run_cnt`` when BPF stats are on, which
:func:`bpf_prog_stats` reads for the per-invocation cost.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import snapshot

BENCH = Path(__file__).resolve().parent
HZ = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A tracer could not be started or verified; the benchmark stops rather than mismeasure."""


# -- what a process holds in the kernel --------------------------------------------------------
def _fdinfo(pid: int) -> list[dict[str, str]]:
    out = []
    base = Path(f"/proc/{pid}/fdinfo")
    try:
        entries = list(base.iterdir())
    except OSError:
        return out
    for p in entries:
        try:
            text = p.read_text()
        except OSError:
            continue
        if "prog_id:" not in text:
            continue
        d = {}
        for line in text.splitlines():
            k, _, v = line.partition(":")
            d[k.strip()] = v.strip()
        out.append(d)
    return out


def attached_tracepoints(pid: int) -> set[str]:
    """Tracepoint names the process has BPF programs attached to (links and perf events)."""
    names = {d["tp_name"] for d in _fdinfo(pid) if "tp_name" in d}
    try:
        perf = json.loads(subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True, text=True,
                                         timeout=10).stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        perf = []
    names |= {e["tracepoint"] for e in perf if e.get("pid") == pid and "tracepoint" in e}
    return names


def bpf_prog_stats(pid: int) -> dict[int, dict[str, int]]:
    """prog_id -> {run_time_ns, run_cnt} for every program fd the process holds."""
    out = {}
    for d in _fdinfo(pid):
        if "run_cnt" in d:  # a program fd (links have no run_cnt)
            out[int(d["prog_id"])] = {"run_time_ns": int(d["run_time_ns"]), "run_cnt": int(d["run_cnt"])}
    return out


def bpf_prog_names() -> dict[int, str]:
    try:
        progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                          timeout=10).stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return {}
    return {p["id"]: p.get("name", "?") for p in progs}


class BpfStats:
    """Kernel BPF run-time statistics on while held (bpf(BPF_ENABLE_STATS)): the fd form of
    ``sysctl kernel.bpf_stats_enabled=1`` that switches itself off when closed, so a crashed
    benchmark cannot leave every BPF program on the machine paying for two clock reads."""

    BPF_ENABLE_STATS = 32
    BPF_STATS_RUN_TIME = 0
    NR_BPF = 321  # x86_64

    def __enter__(self) -> BpfStats:
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.create_string_buffer(int(self.BPF_STATS_RUN_TIME).to_bytes(4, "little") + bytes(124))
        fd = libc.syscall(self.NR_BPF, self.BPF_ENABLE_STATS, attr, 128)
        if fd < 0:
            raise BenchError(f"BPF_ENABLE_STATS failed: {os.strerror(ctypes.get_errno())}")
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# -- other tracing on the machine ----------------------------------------------------------------
TRACING_LINK_TYPES = {"raw_tracepoint", "tracing", "perf_event", "kprobe_multi", "uprobe_multi", "tracepoint"}


def _bpftool_json(*args: str) -> list[dict]:
    try:
        rc = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=10)
        return json.loads(rc.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return []


def foreign_tracing(own_pids: set[int]) -> set[str]:
    """Tracing attachments on the machine that are not held by ``own_pids``.

    Another tracer on a syscall or sched tracepoint slows *every* process, the baseline
    included (it puts all tasks on the syscall slow path), so a run that overlaps one is
    not comparable; the benchmarks wait for a quiet machine and re-run when this is set."""
    own_links = {int(d["link_id"]) for pid in own_pids for d in _fdinfo(pid) if "link_id" in d}
    found = {f"link {l['id']} {l.get('type')} {l.get('tp_name', l.get('func_name', ''))}".strip()
             for l in _bpftool_json("link", "show")
             if l.get("type") in TRACING_LINK_TYPES and l["id"] not in own_links}
    found |= {f"perf pid {e.get('pid')} {e.get('tracepoint', e.get('func', e.get('filename', '')))}"
              for e in _bpftool_json("perf", "show") if e.get("pid") not in own_pids}
    return found


class ForeignWatch:
    """Polls for foreign tracing in a thread while a measurement runs; ``seen`` collects it."""

    def __init__(self, own_pids: set[int], period: float = 0.5) -> None:
        self.own_pids = own_pids
        self.period = period
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.seen |= foreign_tracing(self.own_pids)
            if self._stop.wait(self.period):
                break

    def __enter__(self) -> ForeignWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.seen |= foreign_tracing(self.own_pids)


def wait_quiet(timeout: float = 300.0, log=print) -> float:
    """Wait until no foreign tracing is attached; returns seconds waited (BenchError past timeout)."""
    t0 = time.monotonic()
    said = False
    while found := foreign_tracing(set()):
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"other tracing stayed attached for {timeout:.0f} s: {sorted(found)}")
        if not said:
            log(f"  waiting for other tracing to detach: {sorted(found)[:3]}")
            said = True
        time.sleep(0.5)
    return time.monotonic() - t0


def cpu_busy_s() -> tuple[float, float]:
    """Machine-wide (busy, steal) CPU seconds from /proc/stat."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq) / HZ, steal / HZ


# -- process accounting ---------------------------------------------------------------------------
def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process from /proc/<pid>/stat (all threads), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan"), float("nan")
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) / HZ, int(fields[12]) / HZ  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def mem_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, and ``ring_map``: the resident size of
    its mappings of BPF maps. The ring buffer's data pages are mapped twice in a row (so a
    record that wraps is contiguous) and are kernel memory, yet VmRSS counts them, twice:
    a 64 MiB ring adds 128 MiB to VmRSS. RssAnon is the process's own heap."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1])
        ring = 0
        in_map = False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if "-" in line.split(" ", 1)[0] and not line.endswith(":"):  # a mapping's header line
                in_map = line.endswith("anon_inode:bpf-map")
            elif in_map and line.startswith("Rss:"):
                ring += int(line.split()[1])
        out["ring_map"] = ring
    except OSError:
        pass
    return out


class RssSampler:
    """Samples a process's memory every ``period`` seconds in a thread; ``peak`` holds the
    highest VmRSS and RssAnon seen."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid = pid
        self.period = period
        self.peak = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_kb(self) -> int:
        return self.peak["VmRSS"]

    def _run(self) -> None:
        while not self._stop.is_set():
            m = mem_kb(self.pid)
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m.get(k, 0))
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# -- tracers --------------------------------------------------------------------------------------
class Tracer:
    """A tracing process. Subclasses set ``argv``, ``expect`` (tracepoints that must be attached)."""

    name = "tracer"
    argv: list[str] = []
    expect: set[str] = set()
    settle_s = 0.3  # after attach is confirmed: let start-up work (map creation, printing) finish
    attach_timeout_s = 30.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.result: dict = {}
        self._stderr = tempfile.TemporaryFile(mode="w+")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    env: dict[str, str] | None = None
    stdout: int = subprocess.PIPE  # where the tracer's output goes (read by parse, or discarded)

    def __enter__(self) -> Tracer:
        self.proc = subprocess.Popen(self.argv, stdout=self.stdout, stderr=self._stderr, text=True,
                                     start_new_session=True, env=self.env)
        try:
            self.wait_attached()
            deadline = time.monotonic() + self.attach_timeout_s
            while True:
                have = attached_tracepoints(self.pid)
                if self.expect <= have:
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{self.name}: expected {sorted(self.expect)} attached, found {sorted(have)}"
                                     f"{self._stderr_tail()}")
                time.sleep(0.1)
            self.attached = sorted(have)
            time.sleep(self.settle_s)
        except BaseException:
            self._kill()
            raise
        return self

    def wait_attached(self) -> None:
        """Tracer-specific readiness (a line on stdout, a fixed delay)."""

    def stop_signal(self) -> int:
        return signal.SIGINT

    stop_timeout_s = 60.0

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        t0 = time.monotonic()
        out = ""
        # the stop signal, repeated once (a signal that lands while the tracer is still
        # setting up its handlers can be lost); then SIGKILL, and the run is reported as such
        for attempt in range(2):
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal())
            try:
                o, _ = self.proc.communicate(timeout=self.stop_timeout_s)
                out += o or ""
                break
            except subprocess.TimeoutExpired as e:
                out += (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout) or ""
        else:
            self._kill()
            raise BenchError(f"{self.name} did not stop within {2 * self.stop_timeout_s:.0f} s of its stop signal"
                             f"{self._stderr_tail()}")
        self.stop_s = time.monotonic() - t0
        self._stderr.seek(0)
        self.parse(out, self._stderr.read())
        self._stderr.close()

    def parse(self, stdout: str, stderr: str) -> None:
        pass

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:]
        return f"\n--- {self.name} stderr ---\n{tail}" if tail else ""

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # this one process, by its own Popen handle
            self.proc.wait()


def _readline(proc: subprocess.Popen, timeout: float, want: str) -> str:
    """Read stdout lines until one contains ``want``; BenchError on timeout or exit."""
    assert proc.stdout is not None
    result: list[str] = []

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if want in line:
                result.append(line)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        raise BenchError(f"no line containing {want!r} within {timeout} s (exit code {proc.poll()})")
    return result[0]


class AndonTracer(Tracer):
    """bench/consumer.py: the andon sensor, every event streamed into Python."""

    def __init__(self, types: str, mode: str = "raw", comm: str = "", wakeup_bytes: int = 0,
                 ring_bytes: int | None = None, expect: set[str] | None = None, poll_ms: float | None = None,
                 bpf_dir: Path | None = None, extra: list[str] | None = None) -> None:
        super().__init__()
        self.name = f"andon-{mode}"
        self.argv = [sys.executable, str(BENCH / "consumer.py"), "--types", types, "--mode", mode,
                     "--comm", comm, "--wakeup-bytes", str(wakeup_bytes)]
        if ring_bytes:
            self.argv += ["--ring-bytes", str(ring_bytes)]
        if poll_ms is not None:
            self.argv += ["--poll-ms", str(poll_ms)]
        self.argv += extra or []
        self.expect = expect if expect is not None else {"sys_exit"}
        self.ready: dict = {}
        self.env = snapshot.env(bpf_dir)  # the frozen copy of andon, the same for every run

    def wait_attached(self) -> None:
        line = _readline(self.proc, self.attach_timeout_s, '"ready"')  # type: ignore[arg-type]
        self.ready = json.loads(line)["ready"]
        if not self.ready["andon"].startswith(str(snapshot.SNAP)):
            raise BenchError(f"the consumer imported andon from {self.ready['andon']}, not the snapshot")

    def stop_signal(self) -> int:
        return signal.SIGTERM

    def parse(self, stdout: str, stderr: str) -> None:
        for line in stdout.splitlines():
            if '"result"' in line:
                self.result = json.loads(line)["result"]
                self.result["ready"] = self.ready
        if not self.result:
            raise BenchError(f"andon consumer gave no result (exit {self.proc.returncode})\n{stderr[-2000:]}")


class BpftraceTracer(Tracer):
    """bpftrace counting in the kernel: one per-CPU count map, nothing streamed."""

    def __init__(self, probes: list[str], name: str = "bpftrace", body: str = "{ @[probe] = count(); }",
                 expect: set[str] | None = None) -> None:
        super().__init__()
        self.name = name
        prog = ", ".join(probes) + " " + body + ' BEGIN { printf("ready\\n"); }'
        self.program = prog
        # -B none: unbuffered, so "Attaching" and "ready" arrive as printed
        self.argv = ["bpftrace", "-B", "none", "-e", prog]
        self.expect = expect if expect is not None else {p.rsplit(":", 1)[1] for p in probes}

    def wait_attached(self) -> None:
        # bpftrace prints "Attaching N probes..." before attaching; BEGIN fires after all are attached
        _readline(self.proc, self.attach_timeout_s, "Attaching")  # type: ignore[arg-type]
        _readline(self.proc, self.attach_timeout_s, "ready")  # type: ignore[arg-type]

    def parse(self, stdout: str, stderr: str) -> None:
        counts = {}
        for m in re.finditer(r"^@\[(.+?)\]: (\d+)$", stdout, re.M):
            counts[m.group(1)] = int(m.group(2))
        self.result = {"counts": counts}


class SnoopTracer(Tracer):
    """libbpf-tools opensnoop / execsnoop, every event printed (to /dev/null)."""

    settle_s = 0.3

    def __init__(self, tool: str, expect: set[str], delay_s: float = 1.0) -> None:
        super().__init__()
        self.name = tool.rsplit("/", 1)[-1]
        self.argv = [tool]
        self.expect = expect
        self.delay_s = delay_s

    # its output is per event, so it goes to /dev/null, not to a pipe we must read
    stdout = subprocess.DEVNULL

    def wait_attached(self) -> None:
        time.sleep(self.delay_s)  # no readiness line: a fixed delay, then the kernel check

    def parse(self, stdout: str, stderr: str) -> None:
        lost = sum(int(m.group(1)) for m in re.finditer(r"[Ll]ost (\d+) events", stderr))
        self.result = {"lost": lost}


def stop_on_signals() -> None:
    """SIGTERM and SIGINT end a benchmark through KeyboardInterrupt, so every tracer's
    ``__exit__`` stops its process. (A shell starts background jobs with SIGINT ignored,
    and Python then installs no handler of its own: set it explicitly.)"""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def check_prerequisites() -> list[str]:
    """Stop early, with the fix, when the machine cannot run the benchmarks; returns notes."""
    notes = []
    if os.geteuid() != 0:
        raise BenchError("the benchmarks load BPF programs: run them as root (sudo make bench)")
    if not Path("/sys/kernel/tracing/events").is_dir():
        # bpftrace and libbpf-tools resolve tracepoint ids through tracefs
        rc = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True)
        if rc.returncode != 0:
            raise BenchError("tracefs is not mounted at /sys/kernel/tracing and mounting it failed")
        notes.append("mounted tracefs at /sys/kernel/tracing")
    bpf_dir = BENCH.parent / "build" / "bpf"
    for obj in ("process/sched.bpf.o", "syscalls/sys_exit.bpf.o"):
        if not (bpf_dir / obj).exists():
            raise BenchError(f"{bpf_dir / obj} is missing: run `make bpf` first")
    return notes


class AgentTracer(Tracer):
    """``andon run``: the whole agent (sensor, state, rules, alerts to stdout as JSON)."""

    def __init__(self, rules: list[Path], name: str = "andon-run", extra: list[str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.argv = [sys.executable, "-m", "andon", "run", "-o", "json", "--no-watch"]
        for r in rules:
            self.argv += ["--rules", str(r)]
        self.argv += extra or []
        self.expect = {"sys_exit", "sched_process_exec"}
        self.env = snapshot.env()

    def wait_attached(self) -> None:
        deadline = time.monotonic() + self.attach_timeout_s
        while time.monotonic() < deadline:
            self._stderr.seek(0)
            text = self._stderr.read()
            if "andon: ready" in text:
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f"andon run did not get ready{self._stderr_tail()}")

    def parse(self, stdout: str, stderr: str) -> None:
        alerts: dict[str, int] = {}
        for line in stdout.splitlines():
            if line.startswith("{"):
                rule = json.loads(line).get("rule", "?")
                alerts[rule] = alerts.get(rule, 0) + 1
        m = re.search(r"andon: (\d+) events in [\d.]+s, (\d+) alerts, (\d+) lost, (\d+) truncated", stderr)
        if not m:
            raise BenchError(f"andon run gave no closing line (exit {self.proc.returncode})\n{stderr[-2000:]}")
        self.result = {"events": int(m.group(1)), "alerts": int(m.group(2)), "lost": int(m.group(3)),
                       "truncated": int(m.group(4)), "by_rule": alerts}


# -- the socket data sensor alone ---------------------------------------------------------------
# the experiment's programs (workloads/sockdata_socktp.bpf.c): the sensor's body on socket
# tracepoints for data and per-syscall tracepoints for the lifecycle, no sys_exit hook; the
# sensor's own process-exit program with both, as with the shipped hooks
SOCKTP_DATA = ("sdx_send", "sdx_recv")
SOCKTP_PROGRAMS = (*SOCKTP_DATA, "sdx_close", "sdx_connect", "sdx_accept", "sdx_accept4", "sdx_execve",
                   "sdx_execveat", "sdx_close_range", "sockdata_proc_exit")


def build_socktp(bpf_dir: Path, out: Path) -> Path:
    """A copy of ``bpf_dir`` (built objects) with net/sockdata.bpf.o replaced by the
    socket-tracepoint experiment, built by the Makefile's rule for it from this tree."""
    root = BENCH.parent
    if not (bpf_dir / "net" / "sockdata.bpf.o").exists():
        raise BenchError(f"{bpf_dir}/net/sockdata.bpf.o is missing: run `make bpf` first")
    target = "build/bench/socktp/sockdata.bpf.o"
    r = subprocess.run(["make", "-s", "-C", str(root), target], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise BenchError(f"building the socktp experiment failed:\n{r.stderr[-1500:]}")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bpf_dir, out)
    shutil.copy(root / target, out / "net" / "sockdata.bpf.o")
    return out


def socktp_source(settings, data_only: bool = False):
    """A SockSource whose object is the socket-tracepoint experiment, loaded and attached
    with its programs instead of a sys_exit entry point; read, counted and closed as usual.
    ``data_only``: the two socket tracepoints, no syscall tracepoint at all (a connection
    ends only with its process: the bound of what taking the lifecycle off syscalls would save)."""
    from andon.events.sockdata import SockSource

    class SockTpSource(SockSource):
        hooks = {"socktp": (*SOCKTP_DATA, "sockdata_proc_exit") if data_only else SOCKTP_PROGRAMS}

        def start(self) -> None:
            super().start()
            self.hook = "socktp-data" if data_only else "socktp"

    return SockTpSource(settings)


def shipped_source(settings):
    """The shipped SockSource, its hooks cut to the programs its object has: bench/sock_hook.py's
    baselines are objects built from older revisions (before the process-exit program, for one)."""
    from andon.bpf.object import BpfObject
    from andon.events.sockdata import SockSource

    obj = BpfObject(settings.bpf_dir / "net" / "sockdata.bpf.o")
    try:
        present = {p.name for p in obj.programs()}
    finally:
        obj.close()

    class ShippedSource(SockSource):
        hooks = {h: tuple(p for p in progs if p in present) for h, progs in SockSource.hooks.items()}

    return ShippedSource(settings)


def sock_drain(seconds: float | None = None, variant: str = "full", hooks: str = "sys_exit") -> dict:
    """The agent's socket data sensor (``net/sockdata.bpf.o`` with the settings ``andon run``
    gives it: ObserveConfig's protocols, copy size and ring) with a reader that only walks
    the ring's record headers and moves the consumer on: no copies, no decoding, no
    parsing. Under load this is the kernel's share of the agent's cost (capture, copy,
    ring, wake-ups); the whole agent's minus this is the Python side's.

    ``variant`` splits that share: ``floor`` traces no process (a pid filter that matches
    nothing: every syscall still takes the tracepoint and the program's first checks),
    ``track`` follows connections and infers protocols but ships no data (no protocol
    enabled), ``full`` is the sensor as the agent runs it, ``exported`` the same with the
    exported OpenSSL calls probed instead of the functions they share (``tls_shared``).

    Prints ``{"ready": ...}`` once attached and ``{"result": ...}`` (records, bytes, the
    kernel's counters) after SIGINT/SIGTERM or ``seconds``, one JSON object a line."""
    from andon.app.config import ObserveConfig
    from andon.app.observer import PROTOCOL_NAMES
    from andon.bpf.varring import BUSY, DISCARD, PAGE
    from andon.events.sockdata import SockSettings

    cfg = ObserveConfig()
    protocols = frozenset(PROTOCOL_NAMES[p] for p in cfg.protocols) if variant != "track" else frozenset()
    settings = SockSettings(protocols=protocols, max_copy=cfg.max_copy_bytes, ring_bytes=cfg.ring_buffer_mb << 20,
                            pids=frozenset() if variant == "floor" else None, tls_shared=variant != "exported",
                            tls_go=variant != "nogo")
    # a list, not an Event: a second signal arriving inside the handler's Event.set() would
    # wait for the lock the first holds, in the same thread, for ever
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    records = nbytes = 0
    with (socktp_source(settings, hooks == "socktp-data") if hooks.startswith("socktp")
          else shipped_source(settings)) as src:
        rd = src.reader
        assert rd is not None
        mem, mask = rd._prod_map, rd.mask
        print(json.dumps({"ready": {"hook": src.hook, "tls": src.tls is not None, "ring_bytes": rd.size,
                                    "variant": variant}}), flush=True)
        deadline = time.monotonic() + seconds if seconds else None
        while not stop and (deadline is None or time.monotonic() < deadline):
            if not rd.wait(0.1):
                continue
            cons, prod = rd._cons.value, rd._prod[0]
            start = cons
            while cons < prod:  # header walk, as VarRingReader.read_batch, with nothing copied
                hdr = int.from_bytes(mem[PAGE + (cons & mask): PAGE + (cons & mask) + 4], "little")
                if hdr & BUSY:
                    break
                length = hdr & ~(BUSY | DISCARD) & 0xFFFFFFFF
                records += not hdr & DISCARD
                cons += (length + 15) & ~7
            if cons != start:
                rd._cons.value = cons
                nbytes += cons - start
        st = src.stats()
    print(json.dumps({"result": {"records": records, "bytes": nbytes, **st}}), flush=True)
    return st


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="bench tracers that run as their own process")
    ap.add_argument("mode", choices=["sock-drain"], help="sock-drain: the socket data sensor, ring drained unread")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--variant", choices=["full", "track", "floor", "exported", "nogo"], default="full",
                    help="full: as the agent runs it; track: connections and inference, no data shipped; "
                         "floor: no process traced (the hook's own cost); exported: full with OpenSSL's "
                         "exported calls probed, not the functions they share")
    ap.add_argument("--hooks", choices=["sys_exit", "socktp", "socktp-data"], default="sys_exit",
                    help="sys_exit: the sensor as shipped; socktp: the experiment on socket tracepoints "
                         "(ANDON_BPF_DIR must hold its object, bench/sock_hook.py builds it); socktp-data: "
                         "its two socket tracepoints alone")
    a = ap.parse_args()
    sock_drain(a.seconds, a.variant, a.hooks)
