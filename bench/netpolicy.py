"""Network policy cost: andon's TC datapath with 0..100k entries next to iptables with as many rules.

Two network namespaces of our own (10.x addresses from ``tests/servers.py`` ``netns()``),
each joined to the host by a veth; the host forwards between them. An echo server
(``ip netns exec``, a subprocess) runs in namespace B, the client in a thread that joined
namespace A. Per configuration the client does ``--conns`` new TCP connections, each with
one 64-byte request/response (connect + round trip timed), and ``--rr`` round trips on one
persistent connection. Configurations, over ``--rounds`` rounds:

    none          no program attached, no jump to our iptables chain
    andon-N       the policy program on B's host veth, ingress default deny, N filler
                  entries (other peers and ports) + the one entry allowing A -> B:port
    iptables-N    a chain of ours jumped to from FORWARD: N non-matching DROP rules,
                  then the ACCEPT for A -> B:port (iptables-restore --noflush)

Each configuration is measured in ``--blocks`` blocks, each next to a ``none`` block
(program detached / FORWARD jump removed; order alternating), so a configuration's ratio
compares it with the no-policy figures of the same minutes. Client and server run on one
CPU (``--cpu``), so every block sees the same placement. Prints p50/p99 per configuration,
its paired ``none`` p50 and the ratio; time to apply each policy; memory: memlock of the
policy maps and the MemAvailable drop, next to iptables' ruleset size and MemAvailable
drop; and the XDP host firewall's drop rate against an iptables DROP in raw PREROUTING for
a bounded UDP flood from a sendmmsg sender (``workloads/udp_flood.c``), packets/s counted
at the drop. Everything is removed on exit, errors too.

    sudo .venv/bin/python bench/netpolicy.py                    # 0/1k/10k/100k, 2 rounds
    sudo .venv/bin/python bench/netpolicy.py --sizes 0,1000 --conns 300 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
import servers as S  # noqa: E402  (netns())
from servers import in_netns  # noqa: E402

from andon.netpolicy.datapath import Datapath, PolicyEntry  # noqa: E402
from andon.netpolicy.kernel_firewall import HostFirewall  # noqa: E402

EP, PEER = 300, 1001
PORT = 24711
CHAIN = "ANDON_NPBENCH"

SERVER = r"""
import socket, sys, threading
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((sys.argv[1], int(sys.argv[2]))); t.listen(512)
def serve(c):
    with c:
        while True:
            d = c.recv(64)
            if not d: return
            c.sendall(d)
print("ready", flush=True)
while True:
    c, _ = t.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def sh(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])}: {r.stderr.strip()[-500:]}")
    return r


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


# -- measurement ----------------------------------------------------------------------------------------
def echo64(s: socket.socket, payload: bytes) -> None:
    """Send 64 bytes and read the server's 64 back."""
    s.sendall(payload)
    got = 0
    while got < 64:
        b = s.recv(64 - got)
        if not b:
            raise OSError("closed")
        got += len(b)


def measure(ns_a: str, ip: str, conns: int, rr: int, timeout: float, cpu: int = -1) -> dict[str, object]:
    """New connection + one round trip, ``conns`` times; then ``rr`` round trips on one
    connection. Microseconds; failures counted, not timed. ``cpu`` >= 0: the client thread
    runs on that CPU only (as the server does), so every block sees the same placement."""
    def go() -> dict[str, object]:
        if cpu >= 0:
            os.sched_setaffinity(0, {cpu})
        new, fails = [], 0
        for _ in range(conns):
            t0 = time.perf_counter_ns()
            try:
                with socket.create_connection((ip, PORT), timeout=timeout) as s:
                    echo64(s, b"x" * 64)
            except OSError:
                fails += 1
                continue
            new.append((time.perf_counter_ns() - t0) / 1e3)
        lat: list[float] = []
        with contextlib.suppress(OSError), socket.create_connection((ip, PORT), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(rr):
                t0 = time.perf_counter_ns()
                echo64(s, b"y" * 64)
                lat.append((time.perf_counter_ns() - t0) / 1e3)
        return {"new": new, "rr": lat, "fails": fails}
    return in_netns(ns_a, go)  # type: ignore[return-value]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


# -- configurations ---------------------------------------------------------------------------------------
def fillers(n: int) -> list[PolicyEntry]:
    """``n`` ingress entries that never match the benchmark's traffic: other peers, ports."""
    return [PolicyEntry(EP, "ingress", 5000 + i // 500, "tcp", 1000 + i % 500, 0, "allow", 9, i) for i in range(n)]


def allow_entry() -> PolicyEntry:
    return PolicyEntry(EP, "ingress", PEER, "tcp", PORT, 0, "allow", 7, 0)


def iptables_load(n: int, src: str, dst: str) -> float:
    """Our chain with ``n`` non-matching rules then the ACCEPT; seconds iptables-restore took."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += [f"-A {CHAIN} -s 10.{100 + i // 65536 % 50}.{i // 256 % 256}.{i % 256}/32 -p tcp --dport {1000 + i % 500}"
              " -j DROP" for i in range(n)]
    lines += [f"-A {CHAIN} -s {src}/32 -d {dst}/32 -p tcp --dport {PORT} -j ACCEPT", "COMMIT", ""]
    t0 = time.monotonic()
    sh("iptables-restore", "--noflush", input="\n".join(lines))
    return time.monotonic() - t0


def iptables_clear() -> None:
    sh("iptables", "-F", CHAIN, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0,1000,10000,100000")
    ap.add_argument("--conns", type=int, default=1000, help="new connections per configuration and round")
    ap.add_argument("--rr", type=int, default=2000, help="persistent round trips per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=4,
                    help="per configuration, blocks alternating with a no-policy block (the ratio's baseline)")
    ap.add_argument("--no-iptables", action="store_true")
    ap.add_argument("--flood", type=int, default=1000000, help="UDP packets per drop test (0 skips it)")
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--cpu", type=int, default=1, help="run client and server on this CPU (-1: anywhere)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    conns = max(1, min(args.conns, 5000))
    rr = max(1, min(args.rr, 20000))
    use_ipt = not args.no_iptables and bool(sh("sh", "-c", "command -v iptables-restore", check=False).stdout)
    if not use_ipt and not args.no_iptables:
        print("iptables-restore not found: iptables rows skipped")

    with contextlib.ExitStack() as stack:
        a = stack.enter_context(S.netns())
        b = stack.enter_context(S.netns())
        for ns in (a, b):
            sh("ip", "-n", ns.name, "route", "add", "default", "via", ns.host_ip)
        # TIME_WAIT of the client's many short connections must not slow connect()'s port search
        sh("ip", "netns", "exec", a.name, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
           "net.ipv4.ip_local_port_range=1024 65000")
        pin = ["taskset", "-c", str(args.cpu)] if args.cpu >= 0 else []
        srv = subprocess.Popen([*pin, "ip", "netns", "exec", b.name, sys.executable, "-c", SERVER, b.ns_ip, str(PORT)],
                               stdout=subprocess.PIPE, text=True)
        stack.callback(lambda: (srv.kill(), srv.wait(5)))
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError("echo server did not start")
        if use_ipt:
            sh("iptables", "-N", CHAIN)
            stack.callback(lambda: sh("iptables", "-X", CHAIN, check=False))
            stack.callback(iptables_clear)
            stack.callback(lambda: sh("iptables", "-D", "FORWARD", "-j", CHAIN, check=False))
        dp = stack.enter_context(Datapath())
        dp.set_ip_identity(f"{a.ns_ip}/32", PEER)
        dp_if = b.host_if

        results: dict[str, dict[str, list[float]]] = {}
        apply_s: dict[int, list[float]] = {}
        ipt_load_s: dict[int, list[float]] = {}
        mem: dict[str, float] = {}

        def record(name: str, r: dict[str, object]) -> None:
            d = results.setdefault(name, {"new": [], "rr": [], "fails": []})
            d["new"] += r["new"]  # type: ignore[operator]
            d["rr"] += r["rr"]  # type: ignore[operator]
            d["fails"].append(r["fails"])  # type: ignore[arg-type]

        measure(a.name, b.ns_ip, 50, 50, args.timeout)  # warm-up (ARP, routes)
        blocks = max(1, args.blocks)

        def paired(name: str, on, off, k: int, r: int) -> None:
            """``blocks`` blocks of ``k/blocks`` connections with the configuration on, each next
            to a block with it off (order alternating), so both see the same machine drift."""
            now = False  # nothing attached, no jump, between configurations
            for blk in range(blocks):
                for state in ((False, True) if blk % 2 == 0 else (True, False)):
                    if state != now:
                        (on if state else off)()
                        now = state
                    m = measure(a.name, b.ns_ip, max(1, k // blocks), max(1, r // blocks), args.timeout, args.cpu)
                    record(name if state else f"none|{name}", m)
                    if not state:
                        record("none", m)
            if now:
                off()

        for rnd in range(args.rounds):
            for n in sizes:
                ents = fillers(n) + [allow_entry()]
                m0 = mem_available_kb()
                t0 = time.monotonic()
                dp.apply(ents)
                apply_s.setdefault(n, []).append(time.monotonic() - t0)
                if rnd == 0:
                    mem[f"andon-{n}-memavail-kb"] = m0 - mem_available_kb()
                    mem[f"andon-{n}-memlock"] = policy_memlock(dp)

                def on() -> None:
                    dp.attach_endpoint(dp_if, EP, default_deny_ingress=True, deny_policy_id=42)
                    dp.flush_conntrack()

                def off() -> None:
                    dp.detach_endpoint(dp_if)
                    dp.flush_conntrack()
                paired(f"andon-{n}", on, off, conns, rr)
            dp.apply([])
            if use_ipt:
                for n in sizes:
                    iptables_clear()
                    m0 = mem_available_kb()
                    ipt_load_s.setdefault(n, []).append(iptables_load(n, a.ns_ip, b.ns_ip))
                    if rnd == 0:
                        mem[f"iptables-{n}-memavail-kb"] = m0 - mem_available_kb()
                        mem[f"iptables-{n}-save-bytes"] = len(sh("iptables-save", "-t", "filter").stdout)

                    def ipt_on() -> None:
                        sh("iptables", "-I", "FORWARD", "1", "-j", CHAIN)

                    def ipt_off() -> None:
                        while sh("iptables", "-D", "FORWARD", "-j", CHAIN, check=False).returncode == 0:
                            pass
                    # fewer connections where each one costs milliseconds: bounded in time too
                    k = conns if n <= 10000 else max(50, conns // 10)
                    paired(f"iptables-{n}", ipt_on, ipt_off, k, max(50, rr // 10 if n > 10000 else rr))
                iptables_clear()

        report(results, apply_s, ipt_load_s, mem)
        if args.flood:
            flood_report(a, b, min(args.flood, 5_000_000), use_ipt, args.cpu)
    return 0


def policy_memlock(dp: Datapath) -> int:
    """Sum of the kernel's memlock for the policy maps (both generations, allow and deny),
    from /proc/self/fdinfo: the figure ``bpftool map show`` prints."""
    total = 0
    for m in dp.policy_maps():
        for line in Path(f"/proc/self/fdinfo/{m.fd}").read_text().splitlines():
            if line.startswith("memlock:"):
                total += int(line.split()[1])
    return total


def report(results: dict, apply_s: dict, ipt_load_s: dict, mem: dict) -> None:
    """Per configuration p50/p99, and the ratio of its p50 to the p50 of the no-policy
    blocks measured alternately with it (``none|<config>``)."""
    print(f"{'config':<16}{'n':>6}{'new p50 us':>12}{'p99':>10}{'none p50':>10}{'ratio':>8}"
          f"{'rr p50 us':>11}{'p99':>9}{'none p50':>10}{'ratio':>8}{'fails':>7}")
    for name, d in results.items():
        if name.startswith("none|"):
            continue
        base = results.get(f"none|{name}", d)
        n50, n99, r50, r99 = pct(d["new"], .5), pct(d["new"], .99), pct(d["rr"], .5), pct(d["rr"], .99)
        b50, br50 = pct(base["new"], .5), pct(base["rr"], .5)
        print(f"{name:<16}{len(d['new']):>6}{n50:>12.1f}{n99:>10.1f}{b50:>10.1f}{n50 / b50:>8.2f}"
              f"{r50:>11.1f}{r99:>9.1f}{br50:>10.1f}{r50 / br50:>8.2f}{sum(d['fails']):>7}")
    for n, xs in apply_s.items():
        print(f"andon apply {n:>6} entries: {statistics.median(xs):.2f} s (median of {len(xs)})")
    for n, xs in ipt_load_s.items():
        print(f"iptables-restore {n:>6} rules: {statistics.median(xs):.2f} s (median of {len(xs)})")
    for k, v in mem.items():
        print(f"{k}: {v}")


def flood_exe() -> Path:
    """workloads/udp_flood.c built -O2 into build/bench (a sendmmsg sender: Python's
    per-packet cost would bound the rate before either drop path does)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    exe = BUILD / "np-udp_flood"
    sh("gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "bench/workloads/udp_flood.c"))
    return exe


def flood_report(a: S.NetNs, b: S.NetNs, count: int, use_ipt: bool, cpu: int) -> None:
    """UDP from A to B (one port, 64-byte payload, ``count`` packets, bounded) dropped at
    A's host veth: by XDP (HostFirewall), by iptables raw PREROUTING DROP, and not dropped
    at all (forwarded to B, where no socket takes it). Sender and drops share one CPU (the
    veth's receive runs in the sender's context), so the send rate falls as the drop costs
    more: packets/s and the ratio to iptables' rate from the same run."""
    exe = flood_exe()
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []

    def flood() -> float:
        out = sh("ip", "netns", "exec", a.name, *pin, str(exe), b.ns_ip, "9999", str(count)).stdout.split()
        if out[:1] != ["sent"] or int(out[1]) != count:
            raise RuntimeError(f"udp_flood: {' '.join(out)}")
        return float(out[3])

    def ipt_dropped() -> int:
        out = sh("iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n").stdout
        return next(int(line.split()[0]) for line in out.splitlines() if a.host_if in line and "DROP" in line)

    rates: dict[str, tuple[int, float]] = {}
    secs = flood()
    rates["no drop (forwarded)"] = (count, secs)
    with HostFirewall(a.host_if) as fw:
        rid = fw.add_rule(f"{a.ns_ip}/32", "udp", 9999)
        secs = flood()
        rates[f"XDP drop ({fw.mode})"] = (fw.counters()[rid][0], secs)
    if use_ipt:
        rule = ["-t", "raw", "-I", "PREROUTING", "1", "-i", a.host_if, "-p", "udp", "--dport", "9999", "-j", "DROP"]
        sh("iptables", *rule)
        try:
            secs = flood()
            rates["iptables raw DROP"] = (ipt_dropped(), secs)
        finally:
            sh("iptables", "-t", "raw", "-D", "PREROUTING", *rule[5:], check=False)
    base = rates.get("iptables raw DROP")
    for name, (n, secs) in rates.items():
        ratio = f"  {n / secs / (base[0] / base[1]):.2f}x iptables" if base else ""
        print(f"{name:<24}{n:>9} of {count} in {secs:.2f} s -> {n / secs:>11,.0f} pkt/s{ratio}")


if __name__ == "__main__":
    sys.exit(main())
