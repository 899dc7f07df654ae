"""Network policy cost: andon's TC datapath with 0..100k entries next to iptables with as many rules.

Two network namespaces of our own (10.x addresses from ``tests/servers.py`` ``netns()``),
each joined to the host by a veth; the host forwards between them. An echo server
(``ip netns exec``, a subprocess) runs in namespace B, the client in a thread that joined
namespace A. Per configuration the client does ``--conns`` new TCP connections, each with
one 64-byte request/response (connect + round trip timed), and ``--rr`` round trips on one
persistent connection. Configurations, interleaved over ``--rounds`` rounds:

    none          no program attached, no iptables rules of ours
    andon-N       the policy program on B's host veth, ingress default deny, N filler
                  entries (other peers and ports) + the one entry allowing A -> B:port
    iptables-N    a chain of ours jumped to from FORWARD: N non-matching DROP rules,
                  then the ACCEPT for A -> B:port (iptables-restore --noflush)

Prints p50/p99 per configuration and the ratio of each p50 to ``none``'s from the same
run; time to apply the largest policy; memory: memlock of the policy maps (bpftool) and
the MemAvailable drop, next to iptables' ruleset size and MemAvailable drop; and the
XDP host firewall's drop rate against an iptables DROP in raw PREROUTING for a bounded
UDP flood (packets/s counted at the drop). Everything is removed on exit, errors too.

    sudo .venv/bin/python bench/netpolicy.py                    # 0/1k/10k/100k, 2 rounds
    sudo .venv/bin/python bench/netpolicy.py --sizes 0,1000 --conns 300 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import time

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
def measure(ns_a: str, ip: str, conns: int, rr: int, timeout: float) -> dict[str, object]:
    """New connection + one round trip, ``conns`` times; then ``rr`` round trips on one
    connection. Microseconds; failures counted, not timed."""
    def go() -> dict[str, object]:
        new, fails = [], 0
        for _ in range(conns):
            t0 = time.perf_counter_ns()
            try:
                with socket.create_connection((ip, PORT), timeout=timeout) as s:
                    s.sendall(b"x" * 64)
                    got = 0
                    while got < 64:
                        b = s.recv(64 - got)
                        if not b:
                            raise OSError("closed")
                        got += len(b)
            except OSError:
                fails += 1
                continue
            new.append((time.perf_counter_ns() - t0) / 1e3)
        lat: list[float] = []
        with contextlib.suppress(OSError), socket.create_connection((ip, PORT), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(rr):
                t0 = time.perf_counter_ns()
                s.sendall(b"y" * 64)
                got = 0
                while got < 64:
                    b = s.recv(64 - got)
                    if not b:
                        raise OSError("closed")
                    got += len(b)
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
    ap.add_argument("--no-iptables", action="store_true")
    ap.add_argument("--flood", type=int, default=200000, help="UDP packets per drop test (0 skips it)")
    ap.add_argument("--timeout", type=float, default=2.0)
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
        srv = subprocess.Popen(["ip", "netns", "exec", b.name, sys.executable, "-c", SERVER, b.ns_ip, str(PORT)],
                               stdout=subprocess.PIPE, text=True)
        stack.callback(lambda: (srv.kill(), srv.wait(5)))
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError("echo server did not start")
        if use_ipt:
            sh("iptables", "-N", CHAIN)
            stack.callback(lambda: sh("iptables", "-X", CHAIN, check=False))
            stack.callback(iptables_clear)
            sh("iptables", "-I", "FORWARD", "1", "-j", CHAIN)
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
        for rnd in range(args.rounds):
            record("none", measure(a.name, b.ns_ip, conns, rr, args.timeout))
            dp.attach_endpoint(dp_if, EP, default_deny_ingress=True, deny_policy_id=42)
            try:
                for n in sizes:
                    ents = fillers(n) + [allow_entry()]
                    m0 = mem_available_kb()
                    t0 = time.monotonic()
                    dp.apply(ents)
                    apply_s.setdefault(n, []).append(time.monotonic() - t0)
                    if rnd == 0:
                        mem[f"andon-{n}-memavail-kb"] = m0 - mem_available_kb()
                        mem[f"andon-{n}-memlock"] = policy_memlock(dp)
                    dp.flush_conntrack()
                    record(f"andon-{n}", measure(a.name, b.ns_ip, conns, rr, args.timeout))
                dp.apply([])
            finally:
                dp.detach_endpoint(dp_if)
            dp.flush_conntrack()
            if use_ipt:
                for n in sizes:
                    iptables_clear()
                    m0 = mem_available_kb()
                    ipt_load_s.setdefault(n, []).append(iptables_load(n, a.ns_ip, b.ns_ip))
                    if rnd == 0:
                        mem[f"iptables-{n}-memavail-kb"] = m0 - mem_available_kb()
                        mem[f"iptables-{n}-save-bytes"] = len(sh("iptables-save", "-t", "filter").stdout)
                    # fewer connections where each one costs milliseconds: bounded in time too
                    k = conns if n <= 10000 else max(50, conns // 10)
                    record(f"iptables-{n}", measure(a.name, b.ns_ip, k, max(50, rr // 10 if n > 10000 else rr),
                                                    args.timeout))
                iptables_clear()

        report(results, apply_s, ipt_load_s, mem)
        if args.flood:
            flood_report(a, b, min(args.flood, 2_000_000), use_ipt)
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
    base_new = pct(results["none"]["new"], 0.5)
    base_rr = pct(results["none"]["rr"], 0.5)
    print(f"{'config':<16}{'n':>6}{'new p50 us':>12}{'p99':>10}{'ratio':>8}{'rr p50 us':>11}{'p99':>9}{'ratio':>8}"
          f"{'fails':>7}")
    for name, d in results.items():
        n50, n99, r50, r99 = pct(d["new"], .5), pct(d["new"], .99), pct(d["rr"], .5), pct(d["rr"], .99)
        print(f"{name:<16}{len(d['new']):>6}{n50:>12.1f}{n99:>10.1f}{n50 / base_new:>8.2f}{r50:>11.1f}{r99:>9.1f}"
              f"{r50 / base_rr:>8.2f}{sum(d['fails']):>7}")
    for n, xs in apply_s.items():
        print(f"andon apply {n:>6} entries: {statistics.median(xs):.2f} s (median of {len(xs)})")
    for n, xs in ipt_load_s.items():
        print(f"iptables-restore {n:>6} rules: {statistics.median(xs):.2f} s (median of {len(xs)})")
    for k, v in mem.items():
        print(f"{k}: {v}")


def flood_report(a: S.NetNs, b: S.NetNs, count: int, use_ipt: bool) -> None:
    """UDP from A to B (one port, 64-byte payload, ``count`` packets, bounded) dropped at
    A's host veth: by XDP (HostFirewall), then by iptables raw PREROUTING DROP."""
    def flood() -> float:
        def go() -> float:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                t0 = time.monotonic()
                payload = b"z" * 64
                for _ in range(count):
                    with contextlib.suppress(BlockingIOError):
                        s.sendto(payload, (b.ns_ip, 9999))
                return time.monotonic() - t0
        return in_netns(a.name, go)  # type: ignore[return-value]

    with HostFirewall(a.host_if) as fw:
        rid = fw.add_rule(f"{a.ns_ip}/32", "udp", 9999)
        t0p = time.process_time()
        secs = flood()
        dropped = fw.counters()[rid][0]
        print(f"XDP drop:      {dropped} of {count} dropped in {secs:.2f} s -> {dropped / secs:,.0f} pkt/s "
              f"(sender-bound; client CPU {time.process_time() - t0p:.2f} s)")
    if not use_ipt:
        return
    rule = ["-t", "raw", "-I", "PREROUTING", "1", "-i", a.host_if, "-p", "udp", "--dport", "9999", "-j", "DROP"]
    sh("iptables", *rule)
    try:
        secs = flood()
        out = sh("iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n").stdout
        dropped = next(int(line.split()[0]) for line in out.splitlines() if a.host_if in line and "DROP" in line)
        print(f"iptables DROP: {dropped} of {count} dropped in {secs:.2f} s -> {dropped / secs:,.0f} pkt/s")
    finally:
        sh("iptables", "-t", "raw", "-D", "PREROUTING", *rule[5:], check=False)


if __name__ == "__main__":
    sys.exit(main())
