"""``andon endpoint`` and ``andon policy apply|list|delete`` end to end, as root.

Three namespaces of the test's own, each joined to the host by a veth and routed through it:
``frontend`` (app=frontend) and ``api`` (app=api) are endpoints, ``other`` is an unmanaged
peer. Every andon command runs as its own process, so the enforcement must outlive it
(pinned maps, TC filters left on the veths).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "kernel"))
import servers as S  # noqa: E402
from test_netpolicy_datapath import Server, in_netns, tcp_ok  # noqa: E402  (read-only helpers)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TC, bpffs)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/policy.bpf.o").exists(), reason="make bpf first"),
]

API_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: api-allows-frontend
spec:
  endpointSelector:
    matchLabels:
      app: api
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"""

BROKEN_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: broken
spec:
  endpointSelector:
    matchLabels:
      app: api
  ingress:
  - toPorts:
    - ports:
      - port: "99999"
        protocol: TCP
"""


def andon(*argv: str, dirs: tuple[Path, Path], check: bool = True) -> subprocess.CompletedProcess:
    state, pins = dirs
    sub = argv[:2] if argv[0] in ("endpoint", "policy") else argv[:1]
    cmd = [sys.executable, "-m", "andon.cli.main", *sub, *argv[len(sub):], "--state-dir", str(state),
           "--pin-dir", str(pins)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict]:
    pins = Path("/sys/fs/bpf") / f"andon-test-{os.getpid()}"
    dirs = (tmp_path / "state", pins)
    with S.netns() as fe, S.netns() as api, S.netns() as other:
        for ns in (fe, api, other):
            S._ip("-n", ns.name, "route", "add", "default", "via", ns.host_ip)
        servers = [Server(lambda f: in_netns(api.name, f), api.ns_ip, port) for port in (8080, 9090)]
        try:
            yield {"fe": fe, "api": api, "other": other, "dirs": dirs, "policy": tmp_path / "api.yaml",
                   "broken": tmp_path / "broken.yaml"}
        finally:
            for s in servers:
                s.close()
            for name in ("frontend", "api"):
                andon("endpoint", "remove", name, dirs=dirs, check=False)
    assert not pins.exists(), "the last endpoint removed takes the pins with it"


def test_endpoints_policy_apply_delete_and_a_broken_file(world):
    fe, api, other, dirs = world["fe"], world["api"], world["other"], world["dirs"]
    # TRIGGER: no endpoints, no policy
    assert tcp_ok(api.ns_ip, 9090, ns=other.name), "routing between the namespaces works without andon"

    andon("endpoint", "add", "frontend", "--netns", fe.name, "--ifname", fe.host_if, "--labels", "app=frontend",
          dirs=dirs)
    andon("endpoint", "add", "api", "--netns", api.name, "--ifname", api.host_if, "--labels", "app=api", dirs=dirs)
    rows = json.loads(andon("endpoint", "list", "-o", "json", dirs=dirs).stdout)
    # ASSERT: addresses read from the namespaces, distinct user identities
    by = {r["name"]: r for r in rows}
    assert by["frontend"]["addresses"] == [fe.ns_ip] and by["api"]["addresses"] == [api.ns_ip]
    assert by["api"]["ifname"] == api.host_if and by["api"]["labels"] == ["app=api"]
    assert 256 <= by["frontend"]["identity"] != by["api"]["identity"] >= 256
    assert tcp_ok(api.ns_ip, 9090, ns=fe.name), "endpoints without policy allow everything"

    world["policy"].write_text(API_POLICY)
    out = andon("policy", "apply", str(world["policy"]), dirs=dirs).stdout
    assert "endpoint api" in out and "ingress: default deny by api-allows-frontend, 1 entries" in out
    assert "endpoint frontend" in out and "ingress: default allow" in out
    # ASSERT: frontend -> api:8080 allowed; :9090 and the unlabelled peer dropped
    assert tcp_ok(api.ns_ip, 8080, ns=fe.name)
    assert not tcp_ok(api.ns_ip, 9090, ns=fe.name)
    assert not tcp_ok(api.ns_ip, 8080, ns=other.name)
    listed = json.loads(andon("policy", "list", "-o", "json", dirs=dirs).stdout)
    assert [p["name"] for p in listed] == ["api-allows-frontend"]

    # TRIGGER: a broken file: exit 1, nothing changes
    world["broken"].write_text(BROKEN_POLICY)
    r = andon("policy", "apply", str(world["broken"]), dirs=dirs, check=False)
    assert r.returncode == 1 and "unchanged" in r.stdout
    assert [p["name"] for p in json.loads(andon("policy", "list", "-o", "json", dirs=dirs).stdout)] == \
        ["api-allows-frontend"]
    assert tcp_ok(api.ns_ip, 8080, ns=fe.name)
    assert not tcp_ok(api.ns_ip, 9090, ns=fe.name)

    # TRIGGER: delete -> everything allowed again
    andon("policy", "delete", "api-allows-frontend", dirs=dirs)
    assert json.loads(andon("policy", "list", "-o", "json", dirs=dirs).stdout) == []
    assert tcp_ok(api.ns_ip, 9090, ns=fe.name)
    assert tcp_ok(api.ns_ip, 8080, ns=other.name)


def named_policy(name: str, port: int) -> str:
    return API_POLICY.replace("name: api-allows-frontend", f"name: {name}").replace('"8080"', f'"{port}"')


def test_concurrent_applies_lose_nothing(world, tmp_path):
    """Two processes each apply four files, one after the other, at the same time: all eight
    are in state.json and in force (without the state lock one process's save overwrites the
    other's file list)."""
    fe, api, dirs = world["fe"], world["api"], world["dirs"]
    andon("endpoint", "add", "frontend", "--netns", fe.name, "--ifname", fe.host_if, "--labels", "app=frontend",
          dirs=dirs)
    andon("endpoint", "add", "api", "--netns", api.name, "--ifname", api.host_if, "--labels", "app=api", dirs=dirs)
    files = []
    for g in range(2):
        for i in range(4):
            f = tmp_path / f"p{g}{i}.yaml"
            f.write_text(named_policy(f"p{g}{i}", 7000 + 10 * g + i))
            files.append(f)
    script = ("import subprocess, sys\n"
              "for f in sys.argv[1:]:\n"
              "    subprocess.run([sys.executable, '-m', 'andon.cli.main', 'policy', 'apply', f, '--state-dir', %r,"
              " '--pin-dir', %r], check=True, capture_output=True)\n" % (str(dirs[0]), str(dirs[1])))
    # TRIGGER: both processes at once
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, files[4 * g:4 * g + 4])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    # ASSERT: every file is applied, and the kernel has every policy's entry (one port each)
    state = json.loads((dirs[0] / "state.json").read_text())
    assert sorted(state["policy_files"]) == sorted(str(f.resolve()) for f in files)
    listed = json.loads(andon("policy", "list", "-o", "json", dirs=dirs).stdout)
    assert sorted(p["name"] for p in listed) == sorted(f"p{g}{i}" for g in range(2) for i in range(4))
    assert sorted(state["policy_ids"]) == sorted(p["name"] for p in listed)
    out = andon("policy", "apply", str(files[0]), dirs=dirs).stdout  # re-apply: what each endpoint has now
    assert "endpoint api" in out and "ingress: default deny by" in out and ", 8 entries" in out, out
