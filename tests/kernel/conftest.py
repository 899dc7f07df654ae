"""Shared machinery for tests that load andon's real BPF programs (root only).

Every test here follows the same three steps:

* ``sensor(types)`` loads and attaches a :class:`LiveSource` for just those event types;
* a CHILD process triggers the syscall: the sensor drops the agent's own pid in the kernel
  (``cfg.self_tgid``), and the agent here is the pytest process itself;
* ``collect(source, child.pid)`` reads the ring until everything the child did is in hand,
  and the test asserts on decoded values.

Nothing here is specific to one event type, so later kernel tests (file, net, l7, enforce)
can use the same fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from andon.events.live import LiveSource, SensorSettings, default_bpf_dir
from andon.events.nr_x86_64 import SYSCALL_NUMBERS
from andon.events.schema import Event
from andon.events.syscalls import expand_types

HERE = Path(__file__).resolve().parent
BPF_OBJECTS = ("process/sched.bpf.o", "syscalls/sys_exit.bpf.o", "syscalls/sys_exit_btf.bpf.o")


def _why_not_runnable() -> str | None:
    if sys.platform != "linux":
        return "kernel tests need Linux"
    if os.uname().machine != "x86_64":
        # the syscall table (nr_x86_64.py) and the pt_regs reads are x86_64 only for now
        return f"kernel tests are x86_64 only (this is {os.uname().machine})"
    if os.geteuid() != 0:
        return "kernel tests load BPF programs: run them as root (sudo .venv/bin/pytest tests/kernel)"
    missing = [rel for rel in BPF_OBJECTS if not (default_bpf_dir() / rel).exists()]
    if missing:
        return f"BPF objects not built ({', '.join(missing)} missing in {default_bpf_dir()}): run `make bpf`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # hooks in a conftest see the whole session: mark only the items of this directory
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session", autouse=True)
def kernel_ready() -> Iterator[None]:
    """Skip everything in tests/kernel with the reason when it cannot run here; else make
    sure bpffs and tracefs are mounted (mounting them if needed, unmounting what we mounted)."""
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    mounted: list[str] = []
    for fstype, where in (("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")):
        if _is_mounted(where, fstype):
            continue
        res = subprocess.run(["mount", "-t", fstype, fstype, where], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"{fstype} is not mounted at {where} and mounting it failed: {res.stderr.strip()}")
        mounted.append(where)
    yield
    for where in reversed(mounted):
        subprocess.run(["umount", where], capture_output=True)


def _is_mounted(where: str, fstype: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == [where, fstype] for line in f)


# -- the sensor -----------------------------------------------------------------------------


@pytest.fixture(params=["tp_btf", "raw_tp"])
def syscall_hook(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Which build of the syscall dispatcher the sensor runs, and the bpf_dir that gets it.

    The loader tries tp_btf first and falls back to raw_tp only where tp_btf cannot load,
    so on a kernel like this one the raw_tp build would go untested: for "raw_tp" we give
    the loader a directory whose sys_exit_btf.bpf.o is the raw_tp build."""
    real = default_bpf_dir()
    if request.param == "tp_btf":
        return request.param, real
    farm = tmp_path_factory.mktemp("bpf-raw-tp")
    for rel in BPF_OBJECTS:
        (farm / rel).parent.mkdir(parents=True, exist_ok=True)
        target = "syscalls/sys_exit.bpf.o" if rel == "syscalls/sys_exit_btf.bpf.o" else rel
        (farm / rel).symlink_to(real / target)
    return request.param, farm


@pytest.fixture
def sensor(syscall_hook: tuple[str, Path]) -> Iterator[Callable[..., LiveSource]]:
    """``sensor(types, **settings)``: a started LiveSource for those types (names, aliases or
    categories, as ``andon events --type`` takes them), once per build of the syscall
    dispatcher (tp_btf, raw_tp). Closed when the test ends."""
    hook, bpf_dir = syscall_hook
    started: list[LiveSource] = []

    def start(types: Iterable[str], **settings: object) -> LiveSource:
        settings.setdefault("bpf_dir", bpf_dir)
        src = LiveSource(SensorSettings(types=frozenset(expand_types(list(types))), **settings))  # type: ignore[arg-type]
        started.append(src)
        src.start()
        if src.enabled_syscalls:
            sections = {p.section for obj in src._objs for p in obj.programs() if p.autoload}
            assert f"{hook}/sys_exit" in sections, f"wanted the {hook} dispatcher, loaded {sections}"
        return src

    yield start
    for src in reversed(started):
        src.close()


def drain(source: LiveSource, timeout: float = 5.0) -> Iterator[Event]:
    """Every event committed before this call (and perhaps some after): reads until the
    consumer reaches the producer position seen at the start. A record still being written
    by another CPU (busy bit) is waited for, up to timeout."""
    assert source.reader is not None
    target = source.reader.producer_pos
    deadline = time.monotonic() + timeout
    while source.reader.consumer_pos < target:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"ring not drained in {timeout}s: consumer {source.reader.consumer_pos} < {target}"
            )
        yield from source.read(0.05)


def collect(
    source: LiveSource,
    match: int | Callable[[Event], bool],
    until: Callable[[Event], bool] | None = None,
    timeout: float = 5.0,
) -> list[Event]:
    """The events that ``match`` (a pid: ``ev.pid == pid``; or a predicate), in ring order.

    With ``until=None`` it reads everything committed so far and stops: call it after the
    child has been waited for (a task's sys_exit and sched_process_exit events are committed
    in its own context, before its parent's wait() returns). With ``until`` it reads until a
    matching event satisfies it, and fails after ``timeout`` seconds if none does.
    """
    pred = (lambda ev: ev.pid == match) if isinstance(match, int) else match
    got: list[Event] = []
    if until is None:
        got = [ev for ev in drain(source, timeout) if pred(ev)]
        return got
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in source.read(0.05):
            if pred(ev):
                got.append(ev)
                if until(ev):
                    return got
    raise AssertionError(
        f"no matching event satisfied `until` within {timeout}s; {len(got)} matched: "
        f"{[(e.name, e.pid, e.ret) for e in got[:20]]}; stats {source.stats()}"
    )


@pytest.fixture(name="collect")
def collect_fixture() -> Callable[..., list[Event]]:
    return collect


# -- children that trigger syscalls ---------------------------------------------------------

# What every Python child starts with: ``sc(name, *args)`` makes the raw syscall by number
# (so ``open`` is open(2), not glibc's openat), returning -errno on failure; ``out()`` prints
# values for the test to compare with what the kernel reported.
CHILD_PRELUDE = f"""
import ctypes, os, socket, struct, sys, time
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR = {dict(SYSCALL_NUMBERS)!r}
AT_FDCWD = -100

def _arg(a):
    if isinstance(a, int):
        return ctypes.c_long(a)
    if isinstance(a, str):
        return ctypes.c_char_p(a.encode())
    return a

def sc(name, *args):
    r = _libc.syscall(ctypes.c_long(NR[name]), *[_arg(a) for a in args])
    return r if r != -1 else -ctypes.get_errno()

def out(*vals):
    print(*vals, flush=True)
"""


@dataclass
class Child:
    pid: int
    returncode: int
    stdout: str
    stderr: str

    def values(self) -> list[int]:
        """Every integer the child printed, in order."""
        return [int(tok) for tok in self.stdout.split()]


def run_py(code: str, *, cwd: str | os.PathLike[str] | None = None, timeout: float = 20.0,
           check: bool = True) -> Child:
    """Run ``code`` (after CHILD_PRELUDE) in a child Python and wait for it."""
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + code],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    if check and p.returncode != 0:
        raise AssertionError(f"child failed ({p.returncode}): {stderr.strip()[-2000:]}")
    return Child(p.pid, p.returncode, stdout, stderr)


@pytest.fixture(name="run_py")
def run_py_fixture() -> Callable[..., Child]:
    return run_py


class Spawned:
    """A child Python still running: talk to it over stdin/stdout, then ``finish()``."""

    def __init__(self, code: str, cwd: str | os.PathLike[str] | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_PRELUDE + code],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def readline(self) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(5)
            raise AssertionError(f"child exited ({self.proc.returncode}): {self.proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        return line.strip()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def finish(self, timeout: float = 20.0) -> Child:
        stdout, stderr = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"child failed ({self.proc.returncode}): {stderr.strip()[-2000:]}")
        return Child(self.pid, self.proc.returncode, stdout, stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def spawn_py() -> Iterator[Callable[..., Spawned]]:
    """``spawn_py(code, cwd=None)``: a child left running (killed at teardown if still alive)."""
    children: list[Spawned] = []

    def spawn(code: str, cwd: str | os.PathLike[str] | None = None) -> Spawned:
        ch = Spawned(code, cwd)
        children.append(ch)
        return ch

    yield spawn
    for ch in children:
        ch.kill()
