"""``andon firewall add|list|remove`` end to end, as root.

A network namespace of the test's own joined to the host by a veth pair; the rules go on the
host-side veth, so they see what the namespace sends. Every andon command runs as its own
process: the program and the rules must outlive it (pinned XDP link and maps, state file).
State file and pins live in the test's own places (tmp_path, a bpffs directory of its own)
and go at the end, as do the namespace and the echo server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from andon.events.live import default_bpf_dir

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "e2e"))
import servers as S  # noqa: E402
from nplab import EchoServer, ping_probe, tcp_probe, udp_probe  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, XDP, bpffs)"),
    pytest.mark.skipif(not (default_bpf_dir() / "enforce/xdp_fw.bpf.o").exists(), reason="make bpf first"),
]

DROP_TIMEOUT = 0.4  # a probe with no answer in this long was dropped
PASS_TIMEOUT = 2.0
ECHO_REQ_BYTES = 14 + 20 + 8 + 6  # nplab's echo request: eth + ip + icmp + "andon!"


@dataclass
class Env:
    ns: S.NetNs
    state_file: Path
    pin_dir: Path
    ports: list[int]

    def andon(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        args = [*argv, "--state-file", str(self.state_file), "--pin-dir", str(self.pin_dir)]
        r = subprocess.run([sys.executable, "-m", "andon.cli.main", "firewall", *args], capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"andon firewall {' '.join(argv)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def add(self, *argv: str) -> int:
        return int(self.andon("add", "--iface", self.ns.host_if, *argv).stdout.strip())

    def status(self) -> dict:
        return json.loads(self.andon("list", "-o", "json").stdout)

    def rule(self, rid: int) -> dict:
        return next(r for r in self.status()["rules"] if r["id"] == rid)

    def iface(self) -> dict:
        return next(i for i in self.status()["interfaces"] if i["iface"] == self.ns.host_if)

    def tcp(self, port: int, expect: bool) -> bool:
        return tcp_probe(self.ns.name, self.ns.host_ip, port, PASS_TIMEOUT if expect else DROP_TIMEOUT)

    def udp(self, port: int, expect: bool) -> bool:
        return udp_probe(self.ns.name, self.ns.host_ip, port, PASS_TIMEOUT if expect else DROP_TIMEOUT)

    def ping(self, expect: bool) -> bool:
        return ping_probe(self.ns.name, self.ns.host_ip, PASS_TIMEOUT if expect else DROP_TIMEOUT)


def xdp_prog_on(ifname: str) -> int | None:
    """The id of the XDP program the kernel shows on ``ifname`` (None: none)."""
    out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", ifname], capture_output=True, text=True,
                         check=True).stdout
    xdp = json.loads(out)[0].get("xdp")
    return xdp["prog"]["id"] if xdp and "prog" in xdp else None


def wait_detached(ifname: str, seconds: float = 5.0) -> bool:
    """Whether ``ifname`` has no XDP program within ``seconds``.

    A link whose last pin is unlinked is freed after an RCU grace period, from a workqueue: the program stays on
    the interface for a moment after ``rmtree`` returns."""
    end = time.monotonic() + seconds
    while xdp_prog_on(ifname) is not None:
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    pin_dir = Path(f"/sys/fs/bpf/andon-test-fw-{os.getpid()}-{tmp_path.name}")
    with S.netns() as ns:
        ports = [S.free_port(ns.host_ip, udp_too=True)]
        while len(ports) < 2:
            ports = [*{*ports, S.free_port(ns.host_ip, udp_too=True)}]
        srv = EchoServer(None, ns.host_ip, ports)
        e = Env(ns, tmp_path / "firewall.json", pin_dir, ports)
        try:
            yield e
        finally:
            srv.close()
            if e.state_file.exists() and ns.host_if in json.loads(e.state_file.read_text())["interfaces"]:
                e.andon("remove", "--iface", ns.host_if, "--all", check=False)
    shutil.rmtree(pin_dir, ignore_errors=True)  # bpffs: unlink of pins and the directory


def test_icmp_rule_drops_ping_counts_per_rule_and_outlives_the_command(env):
    assert env.ping(True) and xdp_prog_on(env.ns.host_if) is None
    # TRIGGER: one command adds the rule and exits
    rid = env.add("--proto", "icmp")
    # ASSERT: the program stays on the veth after the command is gone, pinned
    prog = xdp_prog_on(env.ns.host_if)
    assert prog is not None
    assert sorted(p.name for p in (env.pin_dir / env.ns.host_if).iterdir()) == ["link", "np_fw_cnt", "np_fw_src"]
    assert not any(env.ping(False) for _ in range(3))
    assert env.tcp(env.ports[0], True)  # only ICMP is dropped
    r = env.rule(rid)
    assert (r["dropped_packets"], r["dropped_bytes"]) == (3, 3 * ECHO_REQ_BYTES)
    assert (r["cidr"], r["proto"], r["port"], r["in_kernel"]) == ("any", "icmp", "any", True)
    i = env.iface()
    assert i["attached"] and i["mode"] == "native" and i["prog_id"] == prog  # veth has native XDP
    assert i["passed_packets"] >= 4  # the TCP connection's SYN, ACK, data, FIN
    # TRIGGER: remove restores traffic; the last rule off takes the program off and unpins
    assert env.andon("remove", str(rid)).stdout.strip() == f"removed rule {rid}"
    assert env.ping(True)
    assert xdp_prog_on(env.ns.host_if) is None
    assert not (env.pin_dir / env.ns.host_if).exists()
    assert env.status() == {"rules": [], "interfaces": []}


def test_tcp_port_rule_drops_only_that_port(env):
    p, q = env.ports
    rid = env.add("--cidr", f"{env.ns.ns_ip}/32", "--proto", "tcp", "--port", str(p))
    assert not env.tcp(p, False)
    assert env.tcp(q, True)
    assert env.udp(p, True)  # same port, other protocol
    assert env.ping(True)
    assert env.rule(rid)["dropped_packets"] >= 1  # the SYN (and any retransmission)
    other = env.add("--cidr", "192.0.2.0/24", "--proto", "tcp", "--port", f"{q}-{q + 5}")  # not our source
    assert env.tcp(q, True)
    assert env.rule(other)["dropped_packets"] == 0
    env.andon("remove", str(rid))
    assert env.tcp(p, True)
    assert xdp_prog_on(env.ns.host_if) is not None  # one rule left: still attached


def test_later_command_adopts_the_pins_and_keeps_counters(env):
    rid = env.add("--proto", "icmp")
    before = env.iface()
    assert not env.ping(False)
    # TRIGGER: a second process adds a rule: it adopts the pinned link and maps
    rid2 = env.add("--proto", "udp", "--port", str(env.ports[0]))
    after = env.iface()
    # ASSERT: the same link, this build's program swapped in (BPF_LINK_UPDATE), counters kept
    assert after["link_id"] == before["link_id"] and after["prog_id"] != before["prog_id"]
    assert xdp_prog_on(env.ns.host_if) == after["prog_id"]
    assert env.rule(rid)["dropped_packets"] == 1 and rid2 != rid
    assert not env.ping(False) and not env.udp(env.ports[0], False)
    assert env.rule(rid)["dropped_packets"] == 2 and env.rule(rid2)["dropped_packets"] == 1
    state = json.loads(env.state_file.read_text())
    assert [d["id"] for d in state["interfaces"][env.ns.host_if]["rules"]] == [rid, rid2]
    env.andon("remove", "--iface", env.ns.host_if, "--all")
    assert xdp_prog_on(env.ns.host_if) is None and env.ping(True)


def test_bad_input_exits_2_and_changes_nothing(env):
    rid = env.add("--cidr", "10.0.0.0/8", "--proto", "udp", "--port", "100")
    for bits in range(9, 16):  # 8 nested prefixes: the /15 set holds all 8 rules
        env.add("--cidr", f"10.0.0.0/{bits}", "--proto", "udp", "--port", str(100 + bits))
    state, status = env.state_file.read_bytes(), env.status()
    ifname = env.ns.host_if
    for argv in (["add", "--iface", ifname, "--cidr", "10.0.0.0/33"],
                 ["add", "--iface", ifname, "--cidr", "not-a-net"],
                 ["add", "--iface", ifname, "--port", "80"],                      # a port without a protocol
                 ["add", "--iface", ifname, "--proto", "icmp", "--port", "80"],   # a port without tcp/udp
                 ["add", "--iface", ifname, "--proto", "tcp", "--port", "70000"],
                 ["add", "--iface", ifname, "--proto", "tcp", "--port", "90-80"],
                 ["add", "--iface", ifname, "--proto", "tcpx"],
                 ["add", "--iface", ifname, "--proto", "300"],
                 ["add", "--iface", "andon-nosuch0", "--proto", "icmp"],
                 ["add", "--iface", ifname, "--cidr", "10.0.0.0/16", "--proto", "udp", "--port", "99"],  # 9 cover it
                 ["add", "--iface", ifname, "--cidr", "10.0.0.0/8", "--proto", "udp", "--port", "100"],  # a duplicate
                 ["remove", "999"],
                 ["remove"],
                 ["remove", "--iface", ifname],
                 ["remove", "--iface", "andon-nosuch0", "--all"]):
        r = env.andon(*argv, check=False)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert r.stderr.startswith("andon: ") and r.stdout == "", (argv, r.stderr)
        assert env.state_file.read_bytes() == state, argv
    after = env.status()
    assert after["rules"] == status["rules"] and all(r["in_kernel"] for r in after["rules"])
    assert len(after["rules"]) == 8
    keep = ("link_id", "prog_id", "mode", "rules", "attached")  # the passed counters may move (IPv6 ND)
    assert [{k: i[k] for k in keep} for i in after["interfaces"]] == \
        [{k: i[k] for k in keep} for i in status["interfaces"]]
    env.andon("add", "--iface", ifname, "--cidr", "10.128.0.0/16", "--proto", "udp", "--port", "99")  # under /8 only
    assert len(env.status()["rules"]) == 9 and rid == 0


def test_interface_gone_is_shown_and_remove_cleans_up(env, tmp_path):
    with S.netns() as other:
        e2 = Env(other, env.state_file, env.pin_dir, env.ports)
        rid = e2.add("--proto", "icmp")
        assert not e2.ping(False)
    # the namespace and its veth are gone: the kernel made the link defunct
    i = e2.iface()
    assert (i["attached"], i["status"]) == (False, "interface gone (link defunct)")
    assert e2.rule(rid)["dropped_packets"] == 1  # counters still readable from the pins
    assert env.andon("remove", "--iface", other.host_if, "--all").stdout.strip() == f"removed rule {rid}"
    assert not (env.pin_dir / other.host_if).exists()
    assert env.status() == {"rules": [], "interfaces": []}


def test_generic_mode_and_ipv6_source_with_no_cidr(env):
    ns = env.ns
    S._ip("addr", "add", "fd00:a11::1/64", "dev", ns.host_if, "nodad")
    S._ip("-n", ns.name, "addr", "add", "fd00:a11::2/64", "dev", ns.ns_if, "nodad")
    p = env.ports[1]
    srv6 = EchoServer(None, "fd00:a11::1", env.ports)
    try:
        rid = env.add("--proto", "udp", "--port", str(p), "--mode", "generic")
        assert env.iface()["mode"] == "generic"
        assert not udp_probe(ns.name, "fd00:a11::1", p, DROP_TIMEOUT)  # IPv6 source: "any" covers it
        assert not env.udp(p, False)  # and IPv4
        assert env.rule(rid)["dropped_packets"] == 2
        assert udp_probe(ns.name, "fd00:a11::1", env.ports[0], PASS_TIMEOUT)
    finally:
        srv6.close()


def _run_agent(cfg: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "andon", "run", "--no-rules", "--no-flows",
                        "-c", str(cfg), "--data-dir", str(tmp_path / "data"), "--duration", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_andon_run_applies_the_config_section_and_leaves_hand_rules(env, tmp_path):
    ns, (p, q) = env.ns, env.ports
    hand = env.add("--proto", "udp", "--port", str(q))
    cfg = tmp_path / "andon.yaml"

    def config(rules: str) -> None:
        cfg.write_text(f"firewall:\n  state_file: {env.state_file}\n  pin_dir: {env.pin_dir}\n  rules:\n{rules}"
                       "flows:\n  enabled: false\nobserve:\n  protocols: [dns]\n")

    # TRIGGER: the agent with an ICMP rule and a TCP port rule in its config
    config(f"    - {{iface: {ns.host_if}, proto: icmp}}\n"
           f"    - {{iface: {ns.host_if}, cidr: {ns.ns_ip}/32, proto: tcp, port: {p}}}\n")
    r = _run_agent(cfg, tmp_path)
    assert "andon: firewall: 2 configured rules in force (2 added, 0 removed" in r.stderr, r.stderr
    # ASSERT: in force after the agent is gone, beside the hand-added rule
    assert not env.ping(False) and not env.tcp(p, False) and not env.udp(q, False) and env.tcp(q, True)
    rules = {r["id"]: r for r in env.status()["rules"]}
    assert sorted((r["proto"], r["source"]) for r in rules.values()) == [("icmp", "config"), ("tcp", "config"),
                                                                          ("udp", "cli")]
    # TRIGGER: the TCP rule leaves the config; run again
    config(f"    - {{iface: {ns.host_if}, proto: icmp}}\n")
    r = _run_agent(cfg, tmp_path)
    assert "1 configured rule in force (0 added, 1 removed" in r.stderr, r.stderr
    assert env.tcp(p, True) and not env.ping(False)
    after = {r["id"]: r for r in env.status()["rules"]}
    assert sorted(after) == sorted(i for i, r in rules.items() if r["proto"] != "tcp") and hand in after
    icmp = next(i for i, r in rules.items() if r["proto"] == "icmp")
    assert after[icmp]["dropped_packets"] == 2  # one ping after each run: the counter carried over


def test_andon_run_restores_rules_whose_pins_are_gone(env, tmp_path):
    rid = env.add("--proto", "icmp")
    # TRIGGER: the pins go (as after a reboot): the link goes with them, traffic passes
    shutil.rmtree(env.pin_dir / env.ns.host_if)
    assert wait_detached(env.ns.host_if) and env.ping(True)
    assert env.iface()["status"] == "not attached (no pins)"
    cfg = tmp_path / "andon.yaml"
    cfg.write_text(f"firewall:\n  state_file: {env.state_file}\n  pin_dir: {env.pin_dir}\n  rules: []\n"
                   "flows:\n  enabled: false\nobserve:\n  protocols: [dns]\n")
    _run_agent(cfg, tmp_path)
    # ASSERT: the agent put the state file's rules back, the hand-added one included
    assert not env.ping(False) and xdp_prog_on(env.ns.host_if) is not None
    assert env.rule(rid)["dropped_packets"] == 1 and env.iface()["attached"]
