"""``andon run`` applies the config's ``network`` section, as root: a config file with a netns
endpoint under ``network.endpoints`` makes ``andon run --no-rules --duration ...`` create that
endpoint (state.json, the TC programs on its host veth, its identity), say so on stderr, and
leave it in force after the agent stops (the enforcement outlives the commands, as with
``andon endpoint add``). A policy applied afterwards then enforces on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "kernel"))
sys.path.insert(0, str(HERE / "e2e"))
import servers as S  # noqa: E402
from observe_agent import ANDON, ROOT  # noqa: E402
from test_netpolicy_cli import andon  # noqa: E402
from test_netpolicy_datapath import Server, in_netns, tcp_ok  # noqa: E402  (read-only helpers)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TC, bpffs, the socket sensor)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/policy.bpf.o").exists(), reason="make bpf first"),
]

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-8080-only
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"""


def tc_filters(dev: str, hook: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", dev, hook], capture_output=True, text=True,
                          timeout=10).stdout


def test_run_creates_the_configured_endpoint(tmp_path):
    state = tmp_path / "state"
    pins = Path("/sys/fs/bpf") / f"andon-run-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    dirs = (state, pins)
    with S.netns() as ns:
        cfg = tmp_path / "andon.yaml"
        cfg.write_text(f"""
network:
  state_dir: {state}
  pin_dir: {pins}
  endpoints:
    - {{name: web, netns: {ns.name}, ifname: {ns.host_if}, labels: {{app: web, tier: front}}}}
flows:
  enabled: false
""")
        try:
            # TRIGGER: the agent with that config, for a few seconds
            r = subprocess.run([*ANDON, "run", "--no-rules", "-c", str(cfg), "--data-dir", str(tmp_path / "data"),
                                "--duration", "2"], capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert r.returncode == 0, r.stderr
            # ASSERT: it said what it did
            assert "andon: network: endpoint web added" in r.stderr, r.stderr
            assert f"andon: network: 1 configured endpoint in force (state {state})" in r.stderr, r.stderr
            # ASSERT: the endpoint is in the state with the namespace's address and the config's labels
            rec = json.loads((state / "state.json").read_text())["endpoints"]["web"]
            assert rec["kind"] == "netns" and rec["config"] is True
            assert rec["ifname"] == ns.host_if and rec["addresses"] == [ns.ns_ip]
            assert sorted(rec["labels"]) == ["app=web", "tier=front"]
            assert rec["ifindex"] == int(Path(f"/sys/class/net/{ns.host_if}/ifindex").read_text())
            # ASSERT: both TC programs are on its host veth, after the agent is gone (names cut at 15)
            assert "name tc__from_endpoi " in tc_filters(ns.host_if, "ingress")
            assert "name tc__to_endpoint " in tc_filters(ns.host_if, "egress")
            listed = {e["name"]: e for e in json.loads(andon("endpoint", "list", "-o", "json", dirs=dirs).stdout)}
            assert listed["web"]["identity"] >= 256

            # TRIGGER: a policy on app=web; the endpoint the agent made enforces it
            servers = [Server(lambda f: in_netns(ns.name, f), ns.ns_ip, p) for p in (8080, 9090)]
            try:
                (tmp_path / "web.yaml").write_text(POLICY)
                andon("policy", "apply", str(tmp_path / "web.yaml"), dirs=dirs)
                assert tcp_ok(ns.ns_ip, 8080) and not tcp_ok(ns.ns_ip, 9090)
            finally:
                for s in servers:
                    s.close()

            # TRIGGER: run again: nothing to add, nothing said about adding
            r = subprocess.run([*ANDON, "run", "--no-rules", "-c", str(cfg), "--data-dir", str(tmp_path / "data"),
                                "--duration", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert r.returncode == 0 and "endpoint web added" not in r.stderr, r.stderr
            assert "1 configured endpoint in force" in r.stderr
        finally:
            andon("endpoint", "remove", "web", dirs=dirs, check=False)
    assert not pins.exists()


def test_run_with_a_broken_endpoint_says_so_and_runs_on(tmp_path):
    state = tmp_path / "state"
    pins = Path("/sys/fs/bpf") / f"andon-run-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "andon.yaml"
    cfg.write_text(f"""
network:
  state_dir: {state}
  pin_dir: {pins}
  endpoints:
    - {{name: ghost, netns: andon-no-such-ns-{uuid.uuid4().hex[:6]}, ifname: nosuchveth0, labels: [app=x]}}
flows:
  enabled: false
""")
    r = subprocess.run([*ANDON, "run", "--no-rules", "-c", str(cfg), "--data-dir", str(tmp_path / "data"),
                        "--duration", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    # ASSERT: the agent ran its course (exit 0) and said the section was not applied
    assert r.returncode == 0, r.stderr
    assert "andon: network: endpoints not applied: network namespace 'andon-no-such-ns-" in r.stderr, r.stderr
    assert "1 configured endpoint NOT applied" in r.stderr
    assert not (state / "state.json").exists() and not pins.exists()
