"""Real containers seen by the real sensor: the exec event's cgroup names the container
podman made, and the state module resolves its name, image and privileges.

Needs root, the built BPF objects, podman and the test image (``scripts/build-test-image.sh``
makes it). Containers run with runc (crun fails on the test machines), no network, and
the ulimits the sandbox allows; every container a test makes is removed afterwards.

TRIGGER: ``podman run`` a shell that execs /bin/true (or sleeps, for /proc seeding).
ASSERT: the exec event's v1 and v2 cgroup leaves give the id podman reports, the process
table puts the process in that container (and conmon, beside it, on the host), and the
registry's runtime lookup returns the container's name, image and privileged flag.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from andon.events.live import LiveSource, SensorSettings, default_bpf_dir
from andon.events.schema import Event, EventType
from andon.state.container import ContainerRegistry, ContainerSettings, container_id_from_cgroup, match_cgroup
from andon.state.process import ProcessTable, StateSettings
from andon.state.users import NA, UserDb

pytestmark = pytest.mark.e2e

IMAGE = os.environ.get("ANDON_TEST_IMAGE", "localhost/andon-test:bookworm")
REPO = Path(__file__).resolve().parents[2]
PODMAN_RUN = [
    "run", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--network", "none",
]  # fmt: skip


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "container e2e tests load BPF programs and run podman: run them as root"
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install podman runc)"
    if not shutil.which("runc"):
        return "runc is not installed (apt-get install runc)"
    for rel in ("process/sched.bpf.o",):
        if not (default_bpf_dir() / rel).exists():
            return f"BPF objects not built ({rel} missing in {default_bpf_dir()}): run `make bpf`"
    r = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True)
    if r.returncode != 0:
        return f"test image {IMAGE} is missing: run scripts/build-test-image.sh (as root)"
    return None


@pytest.fixture(scope="module", autouse=True)
def ready() -> None:
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def podman() -> Iterator[Callable[..., tuple[str, str]]]:
    """``podman(*args, cmd=[...], detach=False) -> (name, full id)``: a container with a
    fresh ``andon-t-<random>`` name, removed (with anything it left) at teardown."""
    made: list[str] = []

    def run(*args: str, cmd: list[str], detach: bool = False, timeout: float = 60) -> tuple[str, str]:
        name = f"andon-t-{secrets.token_hex(4)}"
        made.append(name)
        argv = ["podman", *PODMAN_RUN, "--name", name, *(["-d"] if detach else []), *args, IMAGE, *cmd]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}"
        cid = subprocess.run(
            ["podman", "inspect", "--type", "container", "--format", "{{.Id}}", name],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert len(cid) == 64, cid
        return name, cid

    yield run
    if made:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *made], capture_output=True, timeout=120)


@pytest.fixture
def sensor() -> Iterator[LiveSource]:
    src = LiveSource(SensorSettings(types=frozenset({"execve", "clone", "procexit"})))
    src.start()
    yield src
    src.close()


def read_until(src: LiveSource, done: Callable[[Event], bool], sink: Callable[[Event], None],
               timeout: float = 20) -> Event:  # fmt: skip
    """Feed every event to ``sink`` until one satisfies ``done``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in src.read(0.05):
            sink(ev)
            if done(ev):
                return ev
    raise AssertionError(f"the awaited event did not come within {timeout}s; sensor stats {src.stats()}")


def test_exec_in_container_names_podmans_container(sensor, podman):
    # the state starts from /proc, as the agent does, then follows the ring
    reg = ContainerRegistry(ContainerSettings(timeout=10))
    table = ProcessTable(StateSettings(), boot_offset=sensor.boot_offset, containers=reg)
    table.seed_from_proc()
    events: list[Event] = []

    def sink(ev: Event) -> None:
        events.append(ev)
        table.apply(ev)

    try:
        # TRIGGER
        t0 = time.time_ns()
        name, cid = podman(cmd=["/bin/sh", "-c", "exec /bin/true"])
        def is_true_exec(e: Event) -> bool:
            return e.type == EventType.EXEC and e.exec.argv == ["/bin/true"] and "libpod-" in e.exec.cgroup2

        true_exec = read_until(sensor, is_true_exec, sink)
        # the exit of /bin/true follows its exec
        read_until(sensor, lambda e: e.type == EventType.EXIT and e.pid == true_exec.pid and e.args[0] == 1, sink)

        # ASSERT: the kernel's cgroup leaves name podman's container
        x = true_exec.exec
        assert x.cgroup2 == f"libpod-{cid}"
        assert match_cgroup(x.cgroup2).id == cid and match_cgroup(x.cgroup2).runtime == "podman"
        if x.cgroup:  # a v1 hierarchy is mounted here too
            assert container_id_from_cgroup(x.cgroup) == cid[:12]
        assert x.vpid == 1  # the shell was the container's init and exec'd /bin/true in place
        sh_exec = next(
            e for e in events if e.type == EventType.EXEC and e.pid == true_exec.pid and e.exec.argv[:1] == ["/bin/sh"]
        )
        assert sh_exec.exec.argv == ["/bin/sh", "-c", "exec /bin/true"]

        # ASSERT: the process table put it in the container (it has exited: the grace list has it)
        p = table.get(true_exec.pid)
        assert p is not None and not p.alive
        assert (p.container, p.container_id, p.runtime) == (cid, cid[:12], "podman")
        assert (p.name, p.exe, p.exepath, p.vpid) == ("true", "/bin/true", "/usr/bin/true", 1)
        # conmon watches the container from the host: its own cgroup is not the container
        parent = table.parent(p)
        assert parent is not None and parent.name == "conmon", [(a.pid, a.name) for a in table.ancestors(p)]
        assert parent.container_id == "host"
        conmon_execs = [e for e in events if e.type == EventType.EXEC and e.exec.exepath.endswith("/conmon")]
        assert conmon_execs and all(container_id_from_cgroup(e.exec.cgroup2) == "host" for e in conmon_execs)

        # ASSERT: the runtime lookup, started off the event path by the exec, names it
        info = reg.resolve(cid, timeout=15)
        assert info is not None and info.resolved, reg.stats
        assert (info.name, info.image, info.image_repository, info.image_tag) == (
            name, IMAGE, IMAGE.rsplit(":", 1)[0], IMAGE.rsplit(":", 1)[1],
        )  # fmt: skip
        assert info.privileged is False
        assert info.start_ts is not None and t0 - 5 * 10**9 < info.start_ts < time.time_ns()
    finally:
        reg.close()


def test_privileged_container_and_proc_seeding(podman):
    # a container already running when the agent starts: found by the /proc scan
    name, cid = podman("--privileged", "--user", "42:42", cmd=["/bin/sleep", "300"], detach=True)
    pid = int(subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Pid}}", name], capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    reg = ContainerRegistry(ContainerSettings(timeout=10))
    try:
        table = ProcessTable(StateSettings(), containers=reg)
        table.seed_from_proc()
        p = table.get(pid)
        assert p is not None
        assert (p.name, p.exe, p.args, p.container, p.container_id) == ("sleep", "/bin/sleep", ("300",), cid, cid[:12])
        assert (p.uid, p.gid, p.vpid) == (42, 42, 1)
        assert p.pidns != table.get(os.getpid()).pidns
        info = reg.resolve(p.container, timeout=15)
        assert info is not None and info.resolved and info.name == name and info.privileged is True
        # user names come from the container's own /etc/passwd (uid 100 is only on the host)
        db = UserDb()
        root, key = db.for_process(p)
        assert db.user_name(42, root, key) == "_apt" and db.group_name(42, root, key) == "shadow"
        assert db.user_name(100, root, key) == NA
    finally:
        reg.close()


# -- the agent: a container's entrypoint exec already has its metadata ------------------------
import json  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent import ANDON, AgentRun  # noqa: E402

PRIV_RULE = """
- rule: Privileged container entrypoint
  desc: the first process of a privileged container
  condition: evt.type = execve and container.privileged = true and proc.vpid = 1
  output: privileged entrypoint (name=%container.name image=%container.image.repository proc=%proc.name)
  priority: WARNING
"""


def test_agent_alerts_on_a_privileged_containers_entrypoint(tmp_path, podman):
    rules = tmp_path / "rules.yaml"
    rules.write_text(PRIV_RULE)
    with AgentRun(["--rules", str(rules)]) as agent:
        # TRIGGER: the entrypoint is the container's only exec; it is gone in milliseconds
        name, cid = podman("--privileged", cmd=["true"])
        # ASSERT: the rule, whose condition needs container.privileged, fired on it
        a = agent.wait_for("Privileged container entrypoint", lambda a: a["output_fields"]["container.name"] == name)
        f = a["output_fields"]
        assert (f["container.name"], f["container.image.repository"], f["proc.name"]) == (
            name, IMAGE.rsplit(":", 1)[0], "true")
        assert f["container.id"] == cid[:12]
        # an unprivileged container's entrypoint does not fire it
        other, _ = podman(cmd=["true"])
        agent.settle(1.5)
        assert not [x for x in agent.of_rule("Privileged container entrypoint")
                    if x["output_fields"]["container.name"] == other]
    assert agent.returncode == 0
    closing = [line for line in agent.stderr_lines if "events in" in line]
    assert closing, agent.stderr_lines[-5:]


def test_replay_names_a_container_started_during_the_capture(tmp_path, podman):
    cap = tmp_path / "run.andoncap"
    p = subprocess.Popen(ANDON + ["capture", "-w", str(cap), "--duration", "8"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (cap.exists() and cap.stat().st_size > 0):
            time.sleep(0.05)
        time.sleep(1.0)  # attached and seeded; the runtime's events are followed
        # TRIGGER: a container that did not exist when the capture started
        name, cid = podman("--privileged", cmd=["true"])
    finally:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err

    # ASSERT: the capture carries the container's metadata as a side record
    from andon.events.capture import CaptureReader

    with CaptureReader(cap) as r:
        assert r.version == 2
        infos = [d["info"] for d in r.items() if isinstance(d, dict) and d.get("kind") == "container"]
    mine = [i for i in infos if i["id"] == cid]
    assert mine and mine[-1]["name"] == name and mine[-1]["privileged"] is True

    # ASSERT: the replayed alert on the entrypoint names it, as the live agent does
    rules = tmp_path / "rules.yaml"
    rules.write_text(PRIV_RULE)
    r = subprocess.run(ANDON + ["run", "-r", str(cap), "--rules", str(rules), "-o", "json"], capture_output=True,
                       text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    alerts = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    hits = [a for a in alerts if a["rule"] == "Privileged container entrypoint"
            and a["output_fields"]["container.id"] == cid[:12]]
    assert len(hits) == 1, (alerts[-5:], r.stderr[-2000:])
    f = hits[0]["output_fields"]
    assert (f["container.name"], f["container.image.repository"]) == (name, IMAGE.rsplit(":", 1)[0])
