"""Flows end to end, as root: ``andon endpoint``/``andon policy`` enforce, ``andon run`` stores the
verdicts as flows, ``andon observe`` shows them (L3/L4 from the datapath, L7 HTTP from the
protocol tables) with names, identities, labels and the policy and rule that decided.

Two namespaces of the test's own: ``frontend`` (app=frontend) and ``api`` (app=api, a Python
HTTP server on 8080); the policy lets frontend reach api on 8080/TCP only, so api is default
deny on ingress (switched on by ``api-allows-frontend``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "kernel"))
sys.path.insert(0, str(HERE))
import servers as S  # noqa: E402
from observe_agent import ANDON, ROOT, ObserveAgent  # noqa: E402
from test_netpolicy_cli import API_POLICY, andon  # noqa: E402
from test_netpolicy_datapath import in_netns  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TC, bpffs, the socket sensor)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/policy.bpf.o").exists(), reason="make bpf first"),
]


# http.server's own bind looks the host name up (getfqdn), which waits for DNS timeouts in a
# namespace without a resolver: bind without it
HTTP_SERVER = """
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "api", self.server_address[1]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
Server((sys.argv[1], 8080), handler).serve_forever()
"""


def connects(ip: str, port: int, ns: str, timeout: float = 1.0) -> bool:
    """True when a TCP connection from namespace ``ns`` to ip:port completes."""
    def go() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                return True
            except OSError:
                return False
    return bool(in_netns(ns, go))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict]:
    pins = Path("/sys/fs/bpf") / f"andon-flows-test-{os.getpid()}"
    dirs = (tmp_path / "state", pins)
    with S.netns() as fe, S.netns() as api:
        for ns in (fe, api):
            S._ip("-n", ns.name, "route", "add", "default", "via", ns.host_ip)
        http = subprocess.Popen(["ip", "netns", "exec", api.name, sys.executable, "-c", HTTP_SERVER, api.ns_ip,
                                 str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (tmp_path / "hello.txt").write_text("hello from api\n")
        try:
            deadline = time.monotonic() + 10
            while not connects(api.ns_ip, 8080, fe.name):
                assert time.monotonic() < deadline, "the HTTP server in the api namespace did not start"
                time.sleep(0.2)
            yield {"fe": fe, "api": api, "dirs": dirs, "tmp": tmp_path}
        finally:
            http.terminate()
            http.wait(5)
            for name in ("frontend", "api"):
                andon("endpoint", "remove", name, dirs=dirs, check=False)


def observe(data: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ANDON, "observe", "--data-dir", str(data), "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def flows_json(data: Path, state: Path) -> list[dict]:
    r = observe(data, state, "-o", "json", "--last", "10000")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_forwarded_dropped_and_l7_flows_with_names_and_policies(world):
    fe, api, (state, pins), tmp = world["fe"], world["api"], world["dirs"], world["tmp"]
    andon("endpoint", "add", "frontend", "--netns", fe.name, "--ifname", fe.host_if, "--labels", "app=frontend",
          dirs=world["dirs"])
    andon("endpoint", "add", "api", "--netns", api.name, "--ifname", api.host_if, "--labels", "app=api",
          dirs=world["dirs"])
    (tmp / "api.yaml").write_text(API_POLICY)
    andon("policy", "apply", str(tmp / "api.yaml"), dirs=world["dirs"])
    eps = {r["name"]: r for r in json.loads(andon("endpoint", "list", "-o", "json", dirs=world["dirs"]).stdout)}
    fe_id, api_id = eps["frontend"]["identity"], eps["api"]["identity"]
    data = tmp / "data"
    config = f"flows:\n  pin_dir: {pins}\n  state_dir: {state}\n  poll_interval: 500ms\n"
    with ObserveAgent(data, config=config) as agent:
        deadline = time.monotonic() + 10  # the flows line follows the observer's ready line
        while not any(line.startswith("andon: flows:") for line in agent.stderr_lines):
            assert time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.1)
        assert any(f"flows: reading {pins}" in line for line in agent.stderr_lines), agent.log_tail()
        # TRIGGER: an allowed HTTP request, a denied connection
        r = subprocess.run(["ip", "netns", "exec", fe.name, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", "5", f"http://{api.ns_ip}:8080/hello.txt"],
                           capture_output=True, text=True, timeout=20)
        assert r.stdout == "200", r.stderr
        assert not connects(api.ns_ip, 9090, fe.name)

        deadline = time.monotonic() + 25
        while True:
            flows = flows_json(data, state)
            kinds = {(f["flow"]["verdict"], f["flow"]["Type"]) for f in flows}
            if {("DROPPED", "L3_L4"), ("FORWARDED", "L3_L4"), ("FORWARDED", "L7")} <= kinds or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        compact = observe(data, state, "--last", "10000", "--utc").stdout
        drops_only = observe(data, state, "--verdict", "DROPPED", "--to-label", "app=api", "-o", "json")
        l7_only = observe(data, state, "--type", "l7", "--http-status", "2+", "-o", "json")
    # ASSERT: the agent said what it stored
    assert agent.returncode == 0
    closing = [line for line in agent.stderr_lines if line.startswith("andon: flows:")]
    assert closing and " stored (" in closing[-1] and " 0 undecodable" in closing[-1], agent.log_tail()

    def fl(f: dict) -> dict:
        return f["flow"]

    # ASSERT: the allowed SYN at api's ingress: a policy verdict naming the policy and its rule
    allowed = [fl(f) for f in flows if fl(f)["Type"] == "L3_L4" and fl(f)["verdict"] == "FORWARDED"
               and fl(f).get("traffic_direction") == "INGRESS" and fl(f)["event_type"]["type"] == 5
               and fl(f).get("l4", {}).get("TCP", {}).get("destination_port") == 8080]
    assert allowed, json.dumps(flows, indent=1)[-3000:]
    a = allowed[-1]
    assert a["source"]["pod_name"] == "frontend" and a["destination"]["pod_name"] == "api"
    assert a["source"]["identity"] == fe_id and a["destination"]["identity"] == api_id
    assert a["source"]["labels"] == ["k8s:app=frontend"] and a["destination"]["labels"] == ["k8s:app=api"]
    assert a["IP"] == {"source": fe.ns_ip, "destination": api.ns_ip, "ipVersion": "IPv4"}
    assert a["l4"]["TCP"]["flags"] == {"SYN": True} and a["is_reply"] is False
    assert a["policy_match_type"] == 2  # L3-L4: the frontend identity and the port
    assert a["ingress_allowed_by"][0]["name"] == "api-allows-frontend"
    assert a["ingress_allowed_by"][0]["rule"] == "rule 0 (ingress item 0)"
    assert a["Summary"] == "TCP Flags: SYN"
    # ASSERT: frontend's own egress is not selected by any policy
    fe_out = [fl(f) for f in flows if fl(f)["Type"] == "L3_L4" and fl(f).get("traffic_direction") == "EGRESS"
              and fl(f)["source"].get("pod_name") == "frontend" and fl(f)["event_type"]["type"] == 5]
    assert fe_out and fe_out[-1]["policy_log"] == ["no policy selects frontend for egress"]
    # ASSERT: the denied SYN: a drop at api's ingress, default deny switched on by the policy
    dropped = [fl(f) for f in flows if fl(f)["verdict"] == "DROPPED"]
    assert dropped
    d = dropped[-1]
    assert d["l4"]["TCP"]["destination_port"] == 9090 and d["drop_reason_desc"] == "POLICY_DENIED"
    assert d["drop_reason"] == 133 and d["traffic_direction"] == "INGRESS"
    assert d["source"]["identity"] == fe_id and d["destination"]["pod_name"] == "api"
    assert d["ingress_denied_by"][0]["name"] == "api-allows-frontend"
    assert d["ingress_denied_by"][0]["rule"] == "default deny"
    assert d["policy_log"] == ["default deny by api-allows-frontend"]
    # ASSERT: the HTTP exchange as L7 flows between the two endpoints
    l7 = [fl(f) for f in flows if fl(f)["Type"] == "L7"]
    resp = [f for f in l7 if f["l7"]["type"] == "RESPONSE" and f["l7"]["http"]["url"].endswith(":8080/hello.txt")]
    assert resp, agent.log_tail() + json.dumps(l7, indent=1)
    h = resp[-1]
    assert h["l7"]["http"]["code"] == 200 and h["l7"]["http"]["method"] == "GET"
    assert h["source"]["pod_name"] == "api" and h["destination"]["pod_name"] == "frontend"
    assert h["source"]["identity"] == api_id and h["is_reply"] is True
    assert int(h["l7"]["latency_ns"]) > 0
    assert any(f["l7"]["type"] == "REQUEST" and f["source"]["pod_name"] == "frontend" for f in l7)
    # ASSERT: compact lines as hubble observe prints them
    lines = compact.splitlines()
    assert any(f"frontend:" in ln and f"(ID:{fe_id}) -> api:9090 (ID:{api_id}) Policy denied DROPPED "
               "(TCP Flags: SYN; default deny by api-allows-frontend)" in ln for ln in lines), compact
    assert any(f"(ID:{api_id}) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN; allowed by "
               "api-allows-frontend rule 0 (ingress item 0))" in ln for ln in lines), compact
    assert any(re.search(r"\(ID:%d\) <- api:8080 \(ID:%d\) http-response FORWARDED \(HTTP/1\.[01] 200 \d+ms "
                         r"\(GET http://[0-9.]+:8080/hello\.txt\)\)$" % (fe_id, api_id), ln) for ln in lines), compact
    # ASSERT: the filters
    only = [json.loads(x)["flow"] for x in drops_only.stdout.splitlines()]
    assert only and all(f["verdict"] == "DROPPED" and "k8s:app=api" in f["destination"]["labels"] for f in only)
    only7 = [json.loads(x)["flow"] for x in l7_only.stdout.splitlines()]
    assert only7 and all(f["Type"] == "L7" and f["l7"]["http"]["code"] == 200 for f in only7)


# -- andon observe --follow ----------------------------------------------------------------------------
CGROUP2 = Path("/sys/fs/cgroup/unified")


class Follower:
    """``andon observe --follow ...`` as a subprocess; its stdout lines collected by a thread.
    A context manager that always terminates it."""

    def __init__(self, *argv: str) -> None:
        import threading

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([*ANDON, "observe", "--follow", *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_stderr(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in e for e in self.err):
            assert self.proc.poll() is None, f"observe exited {self.proc.returncode}: {self.err}"
            assert time.monotonic() < deadline, f"no {text!r} on stderr: {self.err}"
            time.sleep(0.1)

    def wait(self, want, timeout: float) -> list[str]:
        """Lines until ``want(lines)`` holds or ``timeout``; the lines either way."""
        deadline = time.monotonic() + timeout
        while not want(list(self.lines)) and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"observe exited {self.proc.returncode}: {self.err}"
            time.sleep(0.2)
        return list(self.lines)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)


def _flows(lines: list[str]) -> list[dict]:
    return [json.loads(x)["flow"] for x in lines if x.startswith("{")]


def _has(flows: list[dict], verdict: str, port: int, **match) -> bool:
    for f in flows:
        if f["verdict"] != verdict or f.get("l4", {}).get("TCP", {}).get("destination_port") != port:
            continue
        if all(f.get(k) == v if not isinstance(v, dict) else all(f.get(k, {}).get(a) == b for a, b in v.items())
               for k, v in match.items()):
            return True
    return False


CG_CLIENT = r"""
import errno, json, os, socket, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[2], int(sys.argv[3]))); print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__)
"""

BATCH_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: batch-to-api
spec:
  endpointSelector:
    matchLabels:
      app: batch
  egress:
  - toEndpoints:
    - matchLabels:
        app: api
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"""


def _endpoints_and_policy(world: dict) -> dict:
    fe, api, dirs, tmp = world["fe"], world["api"], world["dirs"], world["tmp"]
    andon("endpoint", "add", "frontend", "--netns", fe.name, "--ifname", fe.host_if, "--labels", "app=frontend",
          dirs=dirs)
    andon("endpoint", "add", "api", "--netns", api.name, "--ifname", api.host_if, "--labels", "app=api", dirs=dirs)
    (tmp / "api.yaml").write_text(API_POLICY)
    andon("policy", "apply", str(tmp / "api.yaml"), dirs=dirs)
    return {r["name"]: r for r in json.loads(andon("endpoint", "list", "-o", "json", dirs=dirs).stdout)}


@pytest.mark.skipif(not (CGROUP2 / "cgroup.procs").exists(), reason="no cgroup2 at /sys/fs/cgroup/unified")
def test_follow_with_a_running_agent_shows_new_flows_and_cgroup_endpoints(world):
    """Store mode: an agent stores the flows, ``observe --follow -o json`` prints them as they
    come, with names and labels; a cgroup endpoint's denied connect() is named by its cgroup."""
    import uuid

    fe, api, (state, pins), tmp = world["fe"], world["api"], world["dirs"], world["tmp"]
    eps = _endpoints_and_policy(world)
    cgdir = CGROUP2 / f"andon-test-{uuid.uuid4().hex[:8]}"
    cgdir.mkdir()
    try:
        andon("endpoint", "add", "batch", "--cgroup", str(cgdir), "--labels", "app=batch", dirs=world["dirs"])
        (tmp / "batch.yaml").write_text(BATCH_POLICY)
        andon("policy", "apply", str(tmp / "batch.yaml"), dirs=world["dirs"])
        batch_id = json.loads(andon("endpoint", "list", "-o", "json", dirs=world["dirs"]).stdout)
        batch_id = next(r["identity"] for r in batch_id if r["name"] == "batch")
        data = tmp / "data"
        config = f"flows:\n  pin_dir: {pins}\n  state_dir: {state}\n  poll_interval: 500ms\n"
        with ObserveAgent(data, config=config) as agent:
            deadline = time.monotonic() + 10
            while not any(f"flows: reading {pins}" in line for line in agent.stderr_lines):
                assert time.monotonic() < deadline, agent.log_tail()
                time.sleep(0.1)
            with Follower("-o", "json", "--data-dir", str(data), "--state-dir", str(state), "--pin-dir",
                          str(pins)) as obs:
                time.sleep(1.5)  # it printed the stored flows (none of these yet) and polls
                # TRIGGER: an allowed and a denied connection, and the cgroup's denied connect()
                assert connects(api.ns_ip, 8080, fe.name)
                assert not connects(api.ns_ip, 9090, fe.name)
                r = subprocess.run([sys.executable, "-c", CG_CLIENT, str(cgdir), api.ns_ip, "9090"],
                                   capture_output=True, text=True, timeout=30)
                assert r.stdout.strip() == "EPERM", r.stderr

                def done(lines: list[str]) -> bool:
                    fl = _flows(lines)
                    return (_has(fl, "FORWARDED", 8080, traffic_direction="INGRESS")
                            and _has(fl, "DROPPED", 9090, traffic_direction="INGRESS")
                            and _has(fl, "DROPPED", 9090, source={"pod_name": "batch"}))
                lines = obs.wait(done, 20)
        assert agent.returncode == 0
        fl = _flows(lines)
        # ASSERT: each new flow printed once, as it came, with names and labels
        allowed = [f for f in fl if f["verdict"] == "FORWARDED" and f.get("traffic_direction") == "INGRESS"
                   and f["event_type"]["type"] == 5 and f.get("l4", {}).get("TCP", {}).get("destination_port") == 8080]
        assert len(allowed) == 1, json.dumps(fl, indent=1)[-3000:]
        assert allowed[0]["source"]["pod_name"] == "frontend" and allowed[0]["destination"]["pod_name"] == "api"
        assert allowed[0]["ingress_allowed_by"][0]["name"] == "api-allows-frontend"
        drop = [f for f in fl if f["verdict"] == "DROPPED" and f["destination"].get("pod_name") == "api"
                and f.get("l4", {}).get("TCP", {}).get("destination_port") == 9090]
        assert drop and drop[0]["drop_reason_desc"] == "POLICY_DENIED"
        assert drop[0]["source"]["labels"] == ["k8s:app=frontend"], json.dumps(drop, indent=1)[-4000:]
        assert drop[0]["source"]["identity"] == eps["frontend"]["identity"]
        # ASSERT: the cgroup endpoint's drop: its name, identity and labels, denied at egress by
        # default deny of its policy, to api (the connect hook has no source address yet)
        cg = [f for f in fl if f["verdict"] == "DROPPED" and f["source"].get("pod_name") == "batch"]
        assert cg, json.dumps(fl, indent=1)[-3000:]
        c = cg[0]
        assert c["source"]["labels"] == ["k8s:app=batch"] and c["source"]["identity"] == batch_id
        assert c["destination"]["pod_name"] == "api" and c["traffic_direction"] == "EGRESS"
        assert c["drop_reason_desc"] == "POLICY_DENIED" and c["policy_log"] == ["default deny by batch-to-api"]
        assert c["IP"]["destination"] == api.ns_ip and "interface" not in c
    finally:
        andon("endpoint", "remove", "batch", dirs=world["dirs"], check=False)
        cgdir.rmdir()


def test_follow_without_an_agent_reads_the_pinned_ring(world):
    """Ring mode: no agent on the data directory, the ring is pinned: ``observe --follow`` reads
    it itself and prints compact lines for new flows."""
    fe, api, (state, pins), tmp = world["fe"], world["api"], world["dirs"], world["tmp"]
    eps = _endpoints_and_policy(world)
    fe_id, api_id = eps["frontend"]["identity"], eps["api"]["identity"]
    with Follower("--data-dir", str(tmp / "no-agent-here"), "--state-dir", str(state), "--pin-dir", str(pins),
                  "--utc") as obs:
        obs.wait_stderr("reading the flow ring", 20)
        # TRIGGER
        assert connects(api.ns_ip, 8080, fe.name)
        assert not connects(api.ns_ip, 9090, fe.name)
        allowed = (f"(ID:{api_id}) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN; allowed by "
                   "api-allows-frontend rule 0 (ingress item 0))")
        dropped = (f"(ID:{fe_id}) -> api:9090 (ID:{api_id}) Policy denied DROPPED (TCP Flags: SYN; "
                   "default deny by api-allows-frontend)")
        lines = obs.wait(lambda ls: any(allowed in x for x in ls) and any(dropped in x for x in ls), 15)
        # ASSERT: both, named; the first line is a new flow (nothing stored was printed)
        assert any(allowed in x and "frontend:" in x for x in lines), "\n".join(lines + obs.err)
        assert any(dropped in x for x in lines), "\n".join(lines + obs.err)
        assert sum(dropped in x for x in lines) >= 1 and all(": " in x for x in lines)
    assert obs.proc.returncode is not None
