"""``andon top``: the busiest endpoints of the last window, refreshed live.

    andon top                       # every 2 s, the last 10 s, until Ctrl-C
    andon top --window 1m --once -o json

Reads the agent's tables (asking a running agent to flush first, as ``andon query`` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store.settings import DEFAULT_DATA_DIR, parse_duration_ns


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="live view of the busiest endpoints: request rate, error rate, p50/p99 latency",
        description="The busiest HTTP, gRPC, PostgreSQL, MySQL, Redis and DNS endpoints over the last window, "
        "from the tables the agent stores, refreshed until Ctrl-C.",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"(default: {DEFAULT_DATA_DIR})")
    p.add_argument("--window", default="10s", help="how far back each view looks (default 10s)")
    p.add_argument("--interval", default="2s", help="time between refreshes (default 2s)")
    p.add_argument("-n", "--limit", type=int, default=20, help="endpoints shown (default 20)")
    p.add_argument("--client", action="store_true",
                   help="count the client side's rows instead of the server side's")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_top)


def _durations(args: argparse.Namespace) -> tuple[int, float]:
    window = parse_duration_ns(args.window)
    interval = parse_duration_ns(args.interval) / 1e9
    if window <= 0 or interval <= 0:
        raise UsageError("--window and --interval must be longer than 0")
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    return window, interval


def snapshot(data_dir: Path, window_ns: int, limit: int, client: bool) -> tuple[list[Any], int]:
    from ..query.top import top
    from ..store.catalog import with_catalog
    from ..store.control import request_flush

    request_flush(data_dir, timeout=0.5)
    now = time.time_ns()
    return with_catalog(data_dir, lambda c: top(c, now - window_ns, now, limit=limit, client=client)), now


def render(rows: list[Any], window_ns: int, now_ns: int, client: bool) -> Any:
    from rich.table import Table

    side = "client" if client else "server"
    stamp = time.strftime("%H:%M:%S", time.localtime(now_ns / 1e9))
    t = Table(title=f"andon top: last {window_ns / 1e9:g}s, {side} side, {stamp}", title_justify="left")
    for name, just in (("PROTO", "left"), ("SERVICE", "left"), ("PORT", "right"), ("ENDPOINT", "left"),
                       ("REQ/S", "right"), ("ERR %", "right"), ("P50 ms", "right"), ("P99 ms", "right")):
        t.add_column(name, justify=just, overflow="fold")
    for r in rows:
        err = f"{100 * r.error_rate:.1f}"
        rate = f"{r.rate:.1f}" if r.rate >= 1 else f"{r.rate:.2f}"
        t.add_row(r.protocol, r.service, str(r.port), r.endpoint, rate,
                  f"[red]{err}[/red]" if r.errors else err, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")
    if not rows:
        t.caption = "no requests in this window"
    return t


def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    window, interval = _durations(args)
    if not args.data_dir.is_dir():
        raise UsageError(f"no data directory {args.data_dir}: is the agent storing tables there? (--data-dir DIR)")
    if args.once or args.output == "json":
        rows, now = snapshot(args.data_dir, window, args.limit, args.client)
        if args.output == "json":
            for r in rows:
                print(json.dumps(r.as_dict(), sort_keys=True))
        else:
            Console().print(render(rows, window, now, args.client))
        return 0
    console = Console()
    if not console.is_terminal:
        console.print("andon top: not a terminal; printing a view every interval (use --once for one)",
                      style="dim")
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                rows, now = snapshot(args.data_dir, window, args.limit, args.client)
                live.update(render(rows, window, now, args.client), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0
