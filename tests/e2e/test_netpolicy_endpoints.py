"""Endpoints of every kind through the CLI, as root: podman containers (labels from ``podman run
--label``), cgroups on the host network, audit mode per endpoint, ``endpoint sync --follow``
adding and removing containers as they start and stop, and the state lock under two
concurrent ``andon endpoint add``.

The client is a network namespace of the test's own (an endpoint labelled app=client), routed
through the host to podman's bridge. The container runs a Perl echo server (the test image has
perl, no python) on two ports. Flows are read from the pinned ring, as another process would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "kernel"))
import servers as S  # noqa: E402
from test_netpolicy_datapath import Server, in_netns, tcp_ok  # noqa: E402  (read-only helpers)

IMAGE = "localhost/andon-test:bookworm"
CGROUP2 = Path("/sys/fs/cgroup/unified")
OK_PORT, DENY_PORT = 8080, 9090

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TC, bpffs, podman)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/policy.bpf.o").exists(), reason="make bpf first"),
]

ECHO = ("use IO::Socket::INET; for my $p (@ARGV) { if (!fork) { my $s = IO::Socket::INET->new(LocalPort => $p, "
        "Listen => 16, ReuseAddr => 1) or die \"$p: $!\"; while (my $c = $s->accept) { my $b; $c->recv($b, 64); "
        "$c->send($b); close $c } exit } } 1 while wait != -1;")

API_POLICY = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: api-from-client
spec:
  endpointSelector:
    matchLabels:
      app: api
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "{OK_PORT}"
        protocol: TCP
"""


def batch_policy(port: int) -> str:
    return f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: batch-egress
spec:
  endpointSelector:
    matchLabels:
      app: batch
  egress:
  - toEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "{port}"
        protocol: TCP
"""


def andon(*argv: str, dirs: tuple[Path, Path], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    state, pins = dirs
    sub = argv[:2]
    cmd = [sys.executable, "-m", "andon.cli.main", *sub, *argv[2:], "--state-dir", str(state), "--pin-dir", str(pins)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def endpoints(dirs: tuple[Path, Path]) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(andon("endpoint", "list", "-o", "json", dirs=dirs).stdout)}


def podman(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *argv], capture_output=True, text=True, timeout=120, check=check)


@contextlib.contextmanager
def container(*labels: str) -> Iterator[dict]:
    """A container of the test image running the echo server; its name, id and address."""
    name = f"andon-ep-{uuid.uuid4().hex[:8]}"
    argv = ["run", "-d", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
            "--name", name]
    for lbl in labels:
        argv += ["--label", lbl]
    cid = podman(*argv, IMAGE, "perl", "-e", ECHO, str(OK_PORT), str(DENY_PORT)).stdout.strip()
    try:
        info = json.loads(podman("inspect", name).stdout)[0]
        ip = info["NetworkSettings"]["IPAddress"]
        deadline = time.monotonic() + 15
        while not tcp_ok(ip, OK_PORT) and time.monotonic() < deadline:  # from the host, before any endpoint
            time.sleep(0.2)
        yield {"name": name, "id": cid, "ip": ip}
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    pins = Path("/sys/fs/bpf") / f"andon-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    d = (tmp_path / "state", pins)
    try:
        yield d
    finally:
        if (d[0] / "state.json").exists():
            for name in json.loads((d[0] / "state.json").read_text())["endpoints"]:
                andon("endpoint", "remove", name, dirs=d, check=False)
        assert not pins.exists(), "the last endpoint removed takes the pins with it"


@pytest.fixture
def client_ns(dirs) -> Iterator[S.NetNs]:
    with S.netns() as ns:
        S._ip("-n", ns.name, "route", "add", "default", "via", ns.host_ip)
        andon("endpoint", "add", "client", "--netns", ns.name, "--ifname", ns.host_if, "--labels", "app=client",
              dirs=dirs)
        yield ns


def read_flows(pins: Path, want: int, timeout: float = 3.0) -> list:
    """Flows in the pinned ring (what andon's flow reader would see)."""
    from andon.netpolicy.datapath import Datapath, wait_flows

    dp = Datapath(pin_dir=pins)
    try:
        return wait_flows(dp, want, timeout)
    finally:
        dp.close(detach=False)


needs_podman = pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")


@needs_podman
def test_container_endpoint_labels_allow_deny_audit(dirs, client_ns):
    ns = client_ns
    with container("app=api", "tier=backend") as c:
        assert tcp_ok(c["ip"], DENY_PORT, ns=ns.name), "routing from the namespace to the container works"
        # TRIGGER: the container as an endpoint; its labels come from podman
        out = andon("endpoint", "add", "api", "--container", c["name"], dirs=dirs).stdout
        eps = endpoints(dirs)
        # ASSERT: labels with the container source, address and host veth from podman
        api = eps["api"]
        assert api["kind"] == "container" and api["container_id"] == c["id"]
        assert api["labels"] == ["container:app=api", "container:tier=backend"]
        assert api["addresses"] == [c["ip"]]
        # the host veth's peer is the container's eth0 (each side's own sysfs)
        eth0 = int(podman("exec", c["name"], "cat", "/sys/class/net/eth0/ifindex").stdout)
        assert int(Path(f"/sys/class/net/{api['ifname']}/iflink").read_text()) == eth0 and api["ifname"] in out
        # on podman's default bridge: podman0 with netavark, cni-podman0 with CNI (Debian 12's default)
        bridge = podman("network", "inspect", "podman", "--format", "{{.NetworkInterface}}").stdout.strip()
        assert bridge in ("podman0", "cni-podman0")
        assert Path(f"/sys/class/net/{api['ifname']}/master").resolve().name == bridge
        assert api["identity"] != eps["client"]["identity"]

        policy = dirs[0].parent / "api.yaml"
        policy.write_text(API_POLICY)
        applied = andon("policy", "apply", str(policy), dirs=dirs).stdout
        assert "endpoint api" in applied and "ingress: default deny by api-from-client" in applied
        # ASSERT: allowed port succeeds, the other is dropped at the container's veth
        assert tcp_ok(c["ip"], OK_PORT, ns=ns.name)
        assert not tcp_ok(c["ip"], DENY_PORT, ns=ns.name)
        flows = read_flows(dirs[1], 50, 1.0)
        drop = [f for f in flows if f.dport == DENY_PORT and f.verdict == "DROPPED"]
        assert drop and drop[0].drop_reason_desc == "POLICY_DENIED"
        assert (drop[0].src_identity, drop[0].dst_identity) == (eps["client"]["identity"], api["identity"])

        # TRIGGER: audit mode on the container endpoint
        andon("endpoint", "audit", "api", "on", dirs=dirs)
        assert endpoints(dirs)["api"]["audit"] is True
        # ASSERT: the denied port now succeeds and its flow says AUDIT (what would have dropped it)
        assert tcp_ok(c["ip"], DENY_PORT, ns=ns.name)
        audited = [f for f in read_flows(dirs[1], 50, 1.0) if f.dport == DENY_PORT and f.verdict == "AUDIT"]
        assert audited and audited[0].drop_reason_desc == "POLICY_DENIED" and audited[0].traffic_direction == "INGRESS"
        # TRIGGER: audit off: enforced again
        andon("endpoint", "audit", "api", "off", dirs=dirs)
        assert not tcp_ok(c["ip"], DENY_PORT + 0, ns=ns.name)
        andon("endpoint", "remove", "api", dirs=dirs)
        assert tcp_ok(c["ip"], DENY_PORT, ns=ns.name), "removed: no policy on the container"


@needs_podman
def test_sync_follows_container_start_and_stop(dirs, client_ns):
    state, pins = dirs
    follower = subprocess.Popen([sys.executable, "-m", "andon.cli.main", "endpoint", "sync", "--follow",
                                 "--containers", "label", "--duration", "120", "--state-dir", str(state),
                                 "--pin-dir", str(pins)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)  # podman events is running
        with container("app=api", "andon.endpoint=true") as c, container("app=other") as unlabelled:
            deadline = time.monotonic() + 20
            while c["name"] not in endpoints(dirs) and time.monotonic() < deadline:
                time.sleep(0.3)
            eps = endpoints(dirs)
            # ASSERT: the labelled container became an endpoint on its own, the other did not
            assert c["name"] in eps and unlabelled["name"] not in eps
            assert "container:app=api" in eps[c["name"]]["labels"]
            # TRIGGER: stop it
            podman("stop", "-t", "0", c["name"])
            deadline = time.monotonic() + 20
            while c["name"] in endpoints(dirs) and time.monotonic() < deadline:
                time.sleep(0.3)
            # ASSERT: gone from the endpoints; the hand-added client stays
            assert set(endpoints(dirs)) == {"client"}
    finally:
        follower.terminate()
        out = follower.communicate(timeout=10)[0]
    assert f"endpoint {c['name']} added" in out and f"endpoint {c['name']} removed" in out, out


CLIENT = r"""
import errno, json, os, socket, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
out = {}
for p in sys.argv[3:]:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((sys.argv[2], int(p))); s.sendall(b"ping"); out[p] = "ok" if s.recv(8) == b"ping" else "bad"
    except OSError as e:
        out[p] = errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
    s.close()
print(json.dumps(out))
"""


@pytest.mark.skipif(not (CGROUP2 / "cgroup.procs").exists(), reason="no cgroup2 at /sys/fs/cgroup/unified")
def test_cgroup_endpoint_by_cli(dirs, client_ns):
    ns = client_ns
    cgdir = CGROUP2 / f"andon-test-{uuid.uuid4().hex[:8]}"
    cgdir.mkdir()
    servers = [Server(lambda f: in_netns(ns.name, f), ns.ns_ip, p) for p in (OK_PORT, DENY_PORT)]
    try:
        out = andon("endpoint", "add", "batch", "--cgroup", str(cgdir), "--labels", "app=batch", dirs=dirs).stdout
        assert f"cgroup {cgdir} (id {os.stat(cgdir).st_ino})" in out
        eps = endpoints(dirs)
        assert eps["batch"]["kind"] == "cgroup" and eps["batch"]["addresses"] == []
        policy = dirs[0].parent / "batch.yaml"
        policy.write_text(batch_policy(OK_PORT))
        andon("policy", "apply", str(policy), dirs=dirs)
        # TRIGGER: a process in the cgroup connects to the client namespace
        r = subprocess.run([sys.executable, "-c", CLIENT, str(cgdir), ns.ns_ip, str(OK_PORT), str(DENY_PORT)],
                           capture_output=True, text=True, timeout=30)
        # ASSERT: allowed port ok; denied port refused at connect() with EPERM
        assert json.loads(r.stdout) == {str(OK_PORT): "ok", str(DENY_PORT): "EPERM"}, r.stderr
        flows = [f for f in read_flows(dirs[1], 50, 1.0) if f.cgroup_id == eps["batch"]["cgroup_id"]]
        assert any(f.dport == DENY_PORT and f.verdict == "DROPPED" and f.ifindex == 0 for f in flows)
        assert any(f.dport == OK_PORT and f.verdict == "FORWARDED" and f.dst_identity == eps["client"]["identity"]
                   for f in flows)
        # a cgroup inside an endpoint cgroup cannot be an endpoint too
        (cgdir / "inner").mkdir()
        r = andon("endpoint", "add", "inner", "--cgroup", str(cgdir / "inner"), dirs=dirs, check=False)
        assert r.returncode != 0 and "may not nest" in r.stderr
        andon("endpoint", "remove", "batch", dirs=dirs)
        r = subprocess.run([sys.executable, "-c", CLIENT, str(cgdir), ns.ns_ip, str(DENY_PORT)], capture_output=True,
                           text=True, timeout=30)
        assert json.loads(r.stdout) == {str(DENY_PORT): "ok"}, "removed: programs detached"
    finally:
        for s in servers:
            s.close()
        with contextlib.suppress(OSError):
            (cgdir / "inner").rmdir()
        cgdir.rmdir()


def test_concurrent_adds_lose_nothing(dirs):
    """Two processes each add three namespace endpoints at the same time: all six are kept
    (without the lock, one process's save overwrites the other's)."""
    with contextlib.ExitStack() as stack:
        nss = [stack.enter_context(S.netns()) for _ in range(6)]
        script = ("import subprocess, sys\n"
                  "for name, ns, veth in zip(*[iter(sys.argv[1:])] * 3):\n"
                  "    subprocess.run([sys.executable, '-m', 'andon.cli.main', 'endpoint', 'add', name, '--netns', ns,"
                  " '--ifname', veth, '--labels', 'app=' + name, '--state-dir', %r, '--pin-dir', %r], check=True)\n"
                  % (str(dirs[0]), str(dirs[1])))
        groups = [nss[:3], nss[3:]]
        procs = [subprocess.Popen([sys.executable, "-c", script,
                                   *[x for i, n in enumerate(g) for x in (f"ep{gi}{i}", n.name, n.host_if)]],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for gi, g in enumerate(groups)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        eps = endpoints(dirs)
        # ASSERT: every endpoint is in the state, each with its own namespace's address
        assert set(eps) == {f"ep{g}{i}" for g in range(2) for i in range(3)}
        assert sorted(e["addresses"][0] for e in eps.values()) == sorted(n.ns_ip for n in nss)
        for name in eps:
            andon("endpoint", "remove", name, dirs=dirs)


@pytest.mark.skipif(not (CGROUP2 / "cgroup.procs").exists(), reason="no cgroup2 at /sys/fs/cgroup/unified")
def test_sync_from_config(dirs, client_ns, tmp_path):
    """network.endpoints of a config file: added, updated (labels, audit), removed when they
    leave the file; an endpoint added by hand (client) is left alone, even under a config name."""
    cgdir = CGROUP2 / f"andon-test-{uuid.uuid4().hex[:8]}"
    cgdir.mkdir()
    cfg = tmp_path / "andon.yaml"
    try:
        with S.netns() as other:
            cfg.write_text(f"""
network:
  containers: off
  endpoints:
    - {{name: other, netns: {other.name}, ifname: {other.host_if}, labels: {{app: other}}}}
    - {{name: batch, cgroup: {cgdir}, labels: [app=batch], audit: true}}
    - {{name: client, netns: {client_ns.name}, ifname: {client_ns.host_if}, labels: [app=taken]}}
""")
            out = andon("endpoint", "sync", "--config", str(cfg), dirs=dirs).stdout
            # ASSERT: both added; client was added by hand: not touched
            assert "endpoint batch added" in out and "endpoint other added" in out
            assert "endpoint client: added by hand, left alone" in out
            eps = endpoints(dirs)
            assert eps["other"]["addresses"] == [other.ns_ip] and eps["other"]["labels"] == ["app=other"]
            assert eps["batch"]["audit"] is True and eps["batch"]["kind"] == "cgroup"
            assert eps["client"]["labels"] == ["app=client"]
            # TRIGGER: change other's labels, drop batch
            cfg.write_text(f"""
network:
  endpoints:
    - {{name: other, netns: {other.name}, ifname: {other.host_if}, labels: [app=other2]}}
""")
            out = andon("endpoint", "sync", "--config", str(cfg), "--containers", "off", dirs=dirs).stdout
            assert "endpoint batch removed" in out and "endpoint other updated" in out
            eps = endpoints(dirs)
            assert set(eps) == {"client", "other"} and eps["other"]["labels"] == ["app=other2"]
            assert eps["other"]["identity"] not in (eps["client"]["identity"],)
            # a second pass changes nothing
            out = andon("endpoint", "sync", "--config", str(cfg), "--containers", "off", dirs=dirs).stdout
            assert "added" not in out and "removed" not in out and "updated" not in out
            andon("endpoint", "remove", "other", dirs=dirs)
        # a broken config: a clear error, exit 1, nothing changed
        cfg.write_text("network:\n  endpoints:\n    - {name: x, netns: a, container: b}\n")
        r = andon("endpoint", "sync", "--config", str(cfg), dirs=dirs, check=False)
        assert r.returncode != 0 and "exactly one of netns, container, cgroup" in r.stderr
        assert set(endpoints(dirs)) == {"client"}
    finally:
        cgdir.rmdir()
