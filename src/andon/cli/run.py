"""``andon run``: the agent. Falco's rules on andon's events, and protocol tracing into
Pixie's tables (``observe:``), in one process.

Exit codes: 0 stopped cleanly, 1 the rules files have errors (all printed), 2 bad usage or
config, 3 not root / kernel feature missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .main import EXIT_FAIL, EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the agent: Falco rules over live kernel events (or a capture with -r)",
        description=(
            "Load Falco-syntax rules files, switch on the kernel events they need, and raise "
            "alerts as Falco does (text or JSON; stdout, file, syslog, program, HTTP). "
            "SIGHUP, or editing a rules file, reloads the rules; a broken file is reported "
            "and the running rules stay."
        ),
    )
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config file (default: $ANDON_CONFIG, then /etc/andon/andon.yaml, else built-in defaults)")
    p.add_argument("--rules", action="append", default=[], metavar="FILE",
                   help="rules file or directory, repeatable, loaded in order (replaces the config's rules_files)")
    p.add_argument("-r", "--read", metavar="CAPTURE", help="run the rules over a capture file instead of live events")
    p.add_argument("-o", "--output", choices=("text", "json"), help="alerts on stdout as text lines or JSON (Falco's)")
    p.add_argument("--rule-matching", choices=("first", "all"), help="Falco's rule_matching (default first)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--count", type=int, metavar="N", help="stop after N alerts")
    p.add_argument("--no-watch", action="store_true", help="do not reload when a rules file changes (SIGHUP still does)")
    p.add_argument("--no-observe", action="store_true",
                   help="no protocol tracing (the config's observe.enabled: false)")
    p.add_argument("--no-rules", action="store_true", help="protocol tracing only: no rules, no alerts")
    p.add_argument("--data-dir", metavar="DIR", help="where the tables are kept (the config's store.data_dir)")
    p.add_argument("--no-flows", action="store_true",
                   help="do not store the network policy verdicts as flows (the config's flows.enabled: false)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..app.agent import Agent, RulesLoadFailed, describe
    from ..app.channels import build_channels
    from ..app.config import find_config, load_config

    cfg = load_config(find_config(args.config))
    if args.no_rules and args.no_observe:
        raise UsageError("--no-rules and --no-observe leave nothing to run")
    if args.no_rules and args.read:
        raise UsageError("-r replays a capture through the rules; it cannot go with --no-rules")
    if args.data_dir:
        from ..store.settings import StoreSettings

        cfg = replace(cfg, store=replace(cfg.store or StoreSettings(), data_dir=Path(args.data_dir)))
    observe = cfg.observe.enabled and not args.no_observe and not args.read
    if args.no_flows:
        cfg = replace(cfg, flows=replace(cfg.flows, enabled=False))
    if args.no_rules:
        return _observe_only(cfg, args.duration)
    if args.rule_matching:
        cfg = replace(cfg, rule_matching=args.rule_matching)
    if args.no_watch:
        cfg = replace(cfg, watch_config_files=False)
    outputs = dict(cfg.outputs)
    if args.output:
        outputs["json_output"] = args.output == "json"
    paths = None
    if args.rules:
        paths = []
        for r in args.rules:
            p = Path(r)
            if not p.exists():
                raise UsageError(f"rules file {r} does not exist")
            paths += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")) if p.is_dir() else [p]
    channels = build_channels(outputs)
    try:
        agent = Agent(cfg, channels, rules_paths=paths)
    except RulesLoadFailed as e:
        channels.close()
        print(e.text, file=sys.stderr)
        print(f"andon: {e}; nothing was started", file=sys.stderr)
        return EXIT_FAIL
    except BaseException:
        channels.close()
        raise
    if args.read:
        summary = agent.run_replay(args.read, count=args.count)
        print(f"andon: {describe(summary, channels.stats())}", file=sys.stderr)
        return EXIT_OK
    observer = _start_observer(cfg) if observe else None
    endpoints = _start_endpoints(cfg)
    _start_firewall(cfg)
    flows = _start_flows(cfg, observer)
    try:
        summary = agent.run_live(duration=args.duration, count=args.count)
    finally:
        if flows is not None:
            flows.close()
        if endpoints is not None:
            endpoints.close()
        if observer is not None:
            observer.close()
    print(f"andon: {describe(summary, channels.stats())}", file=sys.stderr)
    if observer is not None:
        from ..app.observer import describe as describe_observe

        print(f"andon: {describe_observe(observer.last_stats)}", file=sys.stderr)
    if flows is not None and (flows.stats.ring_opens or flows.stats.flows):
        # said only when a policy datapath was there: an agent without network policy stays quiet
        print(f"andon: {flows.describe()}", file=sys.stderr)
    return EXIT_OK


def _start_endpoints(cfg: Any) -> Any:
    """The config's ``network`` section: its endpoints (and podman's containers when followed)
    applied at start, before the flow service reads their names; containers followed in a thread
    until the agent stops. A failure is said on stderr, the agent runs on."""
    if not cfg.network.active:
        return None
    from ..netpolicy.podman import EndpointService

    def report(line: str) -> None:
        print(f"andon: network: {line}", file=sys.stderr, flush=True)

    service = EndpointService(cfg.network, report)
    ok = service.start()
    n = len(cfg.network.endpoints)
    done = "in force" if ok else "NOT applied (see above)"
    follow = f"; following podman's containers ({cfg.network.containers})" if service.follows else ""
    report(f"{n} configured endpoint{'s' if n != 1 else ''} {done} (state {cfg.network.state_dir}){follow}")
    return service


def _start_firewall(cfg: Any) -> None:
    """The config's ``firewall`` section: its rules applied at start (added when missing,
    removed when no longer listed; rules added by hand stay). They stay in force after the
    agent stops, as ``andon firewall add`` rules do. A failure is said on stderr, the agent
    runs on."""
    fw = cfg.firewall
    if fw is None:
        return
    from ..errors import AndonError
    from ..netpolicy.kernel_firewall import RuleSpec, sync_config

    specs = [RuleSpec(r["iface"], r["cidr"], r["proto"], r["port_lo"], r["port_hi"]) for r in fw.rules]
    try:
        added, removed = sync_config(specs, state_file=fw.state_file, pin_dir=fw.pin_dir)
    except (AndonError, OSError) as e:
        print(f"andon: firewall: {len(specs)} configured rule(s) NOT applied: {e}", file=sys.stderr, flush=True)
        return
    n = len(specs)
    print(f"andon: firewall: {n} configured rule{'s' if n != 1 else ''} in force ({len(added)} added, "
          f"{len(removed)} removed; andon firewall list)", file=sys.stderr, flush=True)


def _start_flows(cfg: Any, observer: Any) -> Any:
    """The policy datapath's verdicts into the ``flows`` table: into the observer's store when
    protocol tracing runs, else into a store of its own on the same data directory."""
    if not cfg.flows.enabled:
        return None
    from ..netpolicy.flows import FlowService

    store = observer.store if observer is not None else None
    service = FlowService(cfg.flows, store=store, store_settings=cfg.store, node_name=cfg.hostname)
    service.start()
    state = f"reading {cfg.flows.pin_dir}" if service.ring is not None else f"waiting for {cfg.flows.pin_dir}"
    print(f"andon: flows: {state} (names from {cfg.flows.state_dir})", file=sys.stderr)
    return service


def _start_observer(cfg: Any) -> Any:
    """Protocol tracing beside the rules; a kernel that cannot do it costs only this part."""
    from ..app.observer import Observer, tls_text
    from ..errors import NotSupported

    observer = Observer(cfg.observe, cfg.store)
    try:
        observer.start()
    except NotSupported as e:
        print(f"andon: protocol tracing is off: {e}", file=sys.stderr)
        return None
    observer.start_thread()
    print(f"andon: observe: {cfg.observe.protocols_text()} into {observer.store_settings.data_dir} "
          f"({observer.source.hook}); {tls_text(observer.source)}", file=sys.stderr)
    return observer


def _observe_only(cfg: Any, duration: float | None) -> int:
    """``--no-rules``: protocol tracing until SIGINT/SIGTERM or ``duration``."""
    import time

    from ..app.observer import Observer, tls_text
    from ..app.observer import describe as describe_observe
    from ..app.stream import StopFlag, polls

    observer = Observer(cfg.observe, cfg.store)
    observer.start()
    print(f"andon: observe: {cfg.observe.protocols_text()} into {observer.store_settings.data_dir} "
          f"({observer.source.hook}); {tls_text(observer.source)}; no rules", file=sys.stderr)
    observer.start_thread()
    endpoints = _start_endpoints(cfg)
    _start_firewall(cfg)
    flows = _start_flows(cfg, observer)
    deadline = time.monotonic() + duration if duration else None
    try:
        with StopFlag() as stop:
            for timeout in polls(stop, deadline):
                time.sleep(timeout)
    finally:
        if flows is not None:
            flows.close()
        if endpoints is not None:
            endpoints.close()
        observer.close()
    print(f"andon: {describe_observe(observer.last_stats)}", file=sys.stderr)
    if flows is not None and (flows.stats.ring_opens or flows.stats.flows):
        # said only when a policy datapath was there: an agent without network policy stays quiet
        print(f"andon: {flows.describe()}", file=sys.stderr)
    return EXIT_OK
