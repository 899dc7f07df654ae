"""Rule evaluation throughput: Falco's stable rules over a replayed capture, events per CPU second.

Records a capture of a mixed workload with the event types ``andon run`` switches on for
Falco's stable rules (``Agent.kernel_types()``): ``openclose`` (openat + close), ``execloop``
(fork + execve), file reads by ``cat``/``head`` (sensitive files included, so some rules
fire), TCP connects to a listener on 127.0.0.1, and a few shells. Each part runs a bounded
number of iterations. Then replays the capture, in this process, through

    decode      the capture reader's decoder, every record into an Event, nothing else
    state       decode every record + the Tracker (process and fd tables), one event at a
                time: the state cost without the agent's lean paths, for reference
    rules       the agent (``Agent.run_replay``): state + the stable rules, alerts counted,
                not printed. Its batch path applies what no rule can match to the tables
                from the raw records (no Event), so it can be faster than "state".

and prints events per second of CPU time (``time.process_time``, so one core) for each,
the median of ``--repeat`` runs, with ``rules`` as a ratio to ``decode`` measured in the
same run, and the alert counts. The capture stays in ``build/bench/rules.andoncap``;
``--capture FILE`` replays an existing one instead of recording.

    .venv/bin/python bench/rules.py                      # record (root) and measure
    .venv/bin/python bench/rules.py --capture build/bench/rules.andoncap --repeat 7
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import report

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

from andon.app.agent import Agent  # noqa: E402
from andon.app.config import AgentConfig  # noqa: E402
from andon.app.enrich import Tracker  # noqa: E402
from andon.events.capture import CaptureReader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import STABLE_RULES as STABLE  # noqa: E402
CAPTURE = ROOT / "build" / "bench" / "rules.andoncap"
ANDON = [str(ROOT / ".venv" / "bin" / "python"), "-m", "andon"]


class CountingChannels:
    """The agent's channel fan-out, reduced to counting alerts per rule."""

    def __init__(self) -> None:
        self.by_rule: Counter[str] = Counter()

    def emit(self, alert: object) -> None:
        self.by_rule[alert.rule] += 1  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


def make_agent(rules: Path, channels: CountingChannels | None = None) -> Agent:
    cfg = AgentConfig(rules_files=(rules,), watch_config_files=False)
    return Agent(cfg, channels or CountingChannels(), rules_paths=[rules], status=open(os.devnull, "w"))


# -- recording ---------------------------------------------------------------------------------


def _listener(stop: threading.Event) -> tuple[int, threading.Thread]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    srv.settimeout(0.2)

    def serve() -> None:
        with srv:
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                except TimeoutError:
                    continue
                c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def workload(scale: int, log=print) -> dict[str, int]:
    """The mixed workload, every part bounded in count (and each subprocess in time)."""
    import workloads

    done: dict[str, int] = {}
    workloads.run("openclose", 20_000 * scale, timeout=120)
    done["openclose"] = 20_000 * scale
    workloads.run("execloop", 200 * scale, str(workloads.TRUE), timeout=120)
    done["execloop"] = 200 * scale
    # file reads by ordinary tools, sensitive files among them (Read sensitive file untrusted)
    n = 20 * scale
    script = (f"i=0; while [ $i -lt {n} ]; do cat /etc/hostname /etc/passwd >/dev/null; "
              "head -c 16 /etc/shadow >/dev/null 2>&1; ls /tmp >/dev/null; i=$((i+1)); done")
    subprocess.run(["sh", "-c", script], check=True, timeout=120)
    done["file_reads"] = n
    # TCP connects to 127.0.0.1, from this process (each one is a socket + connect + close)
    stop = threading.Event()
    port, t = _listener(stop)
    k = 300 * scale
    for _ in range(k):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    stop.set()
    t.join(2)
    done["connects"] = k
    # a few shells running a few commands
    for _ in range(5 * scale):
        subprocess.run(["bash", "-c", "id >/dev/null; uname -a >/dev/null; echo x | grep -q x; true"],
                       check=True, timeout=60)
    done["shells"] = 5 * scale
    log("  workload: " + ", ".join(f"{k} {v:,}" for k, v in done.items()))
    return done


def record(path: Path, rules: Path, scale: int, log=print) -> dict:
    import workloads

    workloads.build()
    types = sorted(make_agent(rules).kernel_types())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    cmd = ANDON + ["capture", "-w", str(path), "-t", ",".join(types), "--duration", "300"]
    log(f"recording {path} ({len(types)} event types)")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # the file is created once the sensor is attached and the process table seeded
        # (run_capture opens it after both); progress lines are only printed to a tty
        deadline = time.monotonic() + 60
        while not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"andon capture did not start: {proc.stderr.read()}")
            time.sleep(0.05)
        time.sleep(0.2)
        done = workload(scale, log)
        time.sleep(0.5)  # let the reader drain the ring
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    log("  " + (last[-1] if last else "andon capture said nothing"))
    return {"types": types, "workload": done, "capture_said": last[-1] if last else ""}


# -- measuring ---------------------------------------------------------------------------------


def _events(reader: CaptureReader):
    """The reader's fastest way to the events (batches when it has them)."""
    batches = getattr(reader, "event_batches", None)
    if batches is None:
        yield from reader.events()
        return
    for evs in batches():
        yield from evs


def run_decode(path: Path) -> tuple[int, float]:
    t0 = time.process_time()
    n = 0
    with CaptureReader(path) as r:
        for _ev in _events(r):
            n += 1
    return n, time.process_time() - t0


def run_state(path: Path) -> tuple[int, float]:
    t0 = time.process_time()
    n = 0
    with CaptureReader(path) as r:
        tr = Tracker(boot_offset=r.header.boot_offset, snapshot=r.header.state, offline=True)
        for ev in _events(r):
            tr(ev)
            n += 1
        tr.close()
    return n, time.process_time() - t0


def run_rules(path: Path, rules: Path) -> tuple[int, float, dict[str, int]]:
    ch = CountingChannels()
    agent = make_agent(rules, ch)  # rules loading is not part of the measurement
    t0 = time.process_time()
    s = agent.run_replay(path)
    dt = time.process_time() - t0
    return s.events, dt, dict(ch.by_rule)


def measure(path: Path, rules: Path, repeat: int, log=print) -> dict:
    runs: dict[str, list[float]] = {"decode": [], "state": [], "rules": []}
    events = 0
    alerts: dict[str, int] = {}
    for i in range(repeat):
        # rotate the order so a slow minute is spread over all three
        for kind in ["decode", "state", "rules"][i % 3 :] + ["decode", "state", "rules"][: i % 3]:
            if kind == "decode":
                n, dt = run_decode(path)
            elif kind == "state":
                n, dt = run_state(path)
            else:
                n, dt, alerts = run_rules(path, rules)
            events = n
            runs[kind].append(n / dt)
            log(f"  {kind:<7} {n:,} events in {dt:.2f} s CPU: {n / dt:,.0f}/s")
    return {"events": events, "runs": runs, "summary": {k: report.summary(v) for k, v in runs.items()},
            "alerts": alerts}


COLUMNS = ["stage", "events", "events/s (CPU, median)", "min", "max", "vs decode", "alerts"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, help="replay this capture instead of recording one")
    ap.add_argument("--rules", type=Path, default=STABLE, help=f"rules file (default {STABLE})")
    ap.add_argument("--scale", type=int, default=1, help="workload size multiplier (default 1: ~60k events)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    data: dict = {"kind": "rules", "machine": report.machine(), "rules": str(args.rules)}
    path = args.capture
    if path is None:
        path = CAPTURE
        data["recording"] = record(path, args.rules, args.scale)
    data["capture"] = str(path)
    data["capture_bytes"] = path.stat().st_size
    res = measure(path, args.rules, args.repeat)
    data.update(res)
    s = res["summary"]
    base = s["decode"]["median"]
    nalerts = sum(res["alerts"].values())
    rows = []
    for kind in ("decode", "state", "rules"):
        rows.append([kind, f"{res['events']:,}", f"{s[kind]['median']:,.0f}", f"{s[kind]['min']:,.0f}",
                     f"{s[kind]['max']:,.0f}", report.fmt_ratio(s[kind]["median"] / base),
                     f"{nalerts:,}" if kind == "rules" else ""])
    title = f"{args.rules.name} over {path.name}: events per CPU second, median of {args.repeat}"
    report.console.print(report.table(title, COLUMNS, rows))
    by_rule = sorted(res["alerts"].items(), key=lambda kv: -kv[1])
    if by_rule:
        report.console.print(report.table("alerts by rule", ["rule", "alerts"],
                                          [[k, f"{v:,}"] for k, v in by_rule]))
    data["markdown"] = report.markdown_table(COLUMNS, rows)
    out = report.write_json("rules", data)
    report.console.print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
