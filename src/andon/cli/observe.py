"""``andon observe``: network flows as ``hubble observe`` shows them.

    andon observe                        # the last 20 flows, Hubble's compact lines
    andon observe --verdict DROPPED --last 100 -o json
    andon observe --follow --to-label app=api --port 8080
    andon observe --type l7 --http-status 5+

Flows come from the store's ``flows`` table (the agent, ``andon run``, writes every verdict of
the policy datapath there) and, at read time, from ``http_events`` / ``dns_events`` rows whose
addresses belong to a managed endpoint (L7 flows), merged in time order. With ``--follow`` a
running agent is asked to flush every second; with no agent answering on the data directory,
``--follow`` reads the pinned flow ring itself (one reader at a time: while it does, those
flows are not stored, and an agent started meanwhile would share the ring with it).

Exit codes as ``andon`` (cli/main.py): 0 ok, 2 bad usage, 3 missing privilege, 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store.settings import DEFAULT_DATA_DIR

DEFAULT_LAST = 20  # hubble observe's default without --last/--since/--follow
VERDICTS = ("FORWARDED", "DROPPED", "AUDIT", "ERROR", "REDIRECTED", "TRACED", "TRANSLATED")
TYPES = ("trace", "drop", "policy-verdict", "l7")
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv4", "icmpv6", "sctp", "http", "dns")


def add_parser(sub: Any) -> None:
    from ..netpolicy.state import DEFAULT_PIN_DIR, DEFAULT_STATE_DIR

    p = sub.add_parser(
        "observe", help="network flows (policy verdicts, HTTP and DNS) as hubble observe shows them",
        description="Show the flows the agent stored: every verdict of the network policy datapath, and HTTP/DNS "
                    "between managed endpoints as L7 flows. Flags as hubble observe's.")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing flows as they come")
    p.add_argument("--last", type=int, metavar="N", help=f"the last N flows (default {DEFAULT_LAST} without "
                                                         "--since/--follow)")
    p.add_argument("--since", metavar="WHEN", help="flows since a duration ago (5m, 1h) or an RFC 3339 time")
    p.add_argument("--until", metavar="WHEN", help="flows until a duration ago or an RFC 3339 time")
    p.add_argument("--verdict", action="append", default=[], type=str.upper, choices=VERDICTS,
                   help="only this verdict (repeatable)")
    p.add_argument("--from-label", action="append", default=[], metavar="SELECTOR",
                   help="source labels: k8s:app=web,tier!=db (repeatable: any of them)")
    p.add_argument("--to-label", action="append", default=[], metavar="SELECTOR", help="destination labels")
    p.add_argument("--port", action="append", default=[], type=int, metavar="PORT",
                   help="source or destination port (repeatable)")
    p.add_argument("--protocol", action="append", default=[], type=str.lower, choices=PROTOCOLS,
                   help="L4 or L7 protocol (repeatable)")
    p.add_argument("-t", "--type", action="append", default=[], metavar="TYPE[:SUBTYPE]",
                   help=f"event type: {', '.join(TYPES)} (trace:to-endpoint, l7:http, drop:133...)")
    p.add_argument("--http-status", action="append", default=[], metavar="CODE",
                   help="HTTP response code: 404, 4+ (any 4xx), 50+ (500-509)")
    p.add_argument("-o", "--output", choices=("compact", "json", "jsonpb", "table"), default="compact",
                   help="compact: hubble's one line; json: one flow JSON per line (jsonpb: the same); table")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"(default: {DEFAULT_DATA_DIR})")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="endpoint names for L7 flows and for reading the ring directly")
    p.add_argument("--pin-dir", type=Path, default=DEFAULT_PIN_DIR, help="the pinned flow ring (--follow, no agent)")
    p.add_argument("--no-flush", action="store_true", help="do not ask a running agent to flush first")
    p.add_argument("--utc", action="store_true", help="compact/table times in UTC instead of local time")
    p.set_defaults(func=run_observe)


# -- arguments -------------------------------------------------------------------------------------
def parse_when(text: str, now_ns: int) -> int:
    """``5m`` (that long ago) or an RFC 3339 / ISO time -> ns since the epoch."""
    from ..store.settings import parse_duration_ns

    try:
        return now_ns - parse_duration_ns(text)
    except UsageError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r}: neither a duration (30s, 5m, 1h) nor an RFC 3339 time") from None
    if t.tzinfo is None:
        t = t.astimezone()
    return int(t.timestamp() * 1e9)


def build_filter(args: argparse.Namespace, now_ns: int) -> Any:
    from ..netpolicy.flows import FlowFilter, LabelSelector

    types = []
    for t in args.type:
        typ, _, subtype = t.partition(":")
        if typ.lower() not in TYPES:
            raise UsageError(f"--type {t!r}: expected one of {', '.join(TYPES)} (with an optional :SUBTYPE)")
        types.append((typ.lower(), subtype))
    for s in args.http_status:
        if not s.rstrip("+").isdigit() or len(s.rstrip("+")) > 3:
            raise UsageError(f"--http-status {s!r}: expected a code (404) or a prefix with + (4+, 50+)")
    if args.last is not None and args.last < 0:
        raise UsageError("--last N: N must be 0 or more")
    for p in args.port:
        if not 0 < p <= 65535:
            raise UsageError(f"--port {p}: expected 1-65535")
    return FlowFilter(
        verdicts=frozenset(args.verdict), from_labels=tuple(LabelSelector.parse(s) for s in args.from_label),
        to_labels=tuple(LabelSelector.parse(s) for s in args.to_label), ports=frozenset(args.port),
        protocols=frozenset(args.protocol), types=tuple(types), http_status=tuple(args.http_status),
        since_ns=parse_when(args.since, now_ns) if args.since else None,
        until_ns=parse_when(args.until, now_ns) if args.until else None)


# -- reading the store -------------------------------------------------------------------------------
def _query(catalog: Any, table: str, since_ns: int | None, until_ns: int | None, where: str = "") -> list[dict]:
    sql = catalog.source_sql(table, since_ns, until_ns)
    cond = [c for c in (f"time_ >= {int(since_ns)}" if since_ns is not None else "",
                        f"time_ <= {int(until_ns)}" if until_ns is not None else "", where) if c]
    q = f"SELECT * FROM ({sql}) AS t" + (f" WHERE {' AND '.join(cond)}" if cond else "") + " ORDER BY time_"
    cur = catalog.con.execute(q)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _addr_list(ctx: Any) -> str:
    addrs = set()
    for a in ctx.by_address:
        addrs.add(a)
        if "." in a:
            addrs.add(f"::ffff:{a}")
    return ", ".join("'" + a.replace("'", "''") + "'" for a in sorted(addrs))


def read_rows(data_dir: Path, ctx: Any, since_ns: int | None, until_ns: int | None,
              warn: Any = None) -> list[dict]:
    """Stored L3/L4 flows and L7 flows from the protocol tables, in time order."""
    from ..netpolicy.flows import dns_l7_rows, http_l7_rows
    from ..store.catalog import with_catalog

    def read(catalog) -> list[dict]:
        for w in catalog.warnings:
            if warn:
                warn(w)
        rows = _query(catalog, "flows", since_ns, until_ns)
        if ctx.by_address:
            addrs = _addr_list(ctx)
            where = f"(local_addr IN ({addrs}) OR remote_addr IN ({addrs}))"
            # an L7 request flow is stamped latency before its row: read a little earlier
            early = since_ns - 60 * 10**9 if since_ns is not None else None
            for table, make in (("http_events", http_l7_rows), ("dns_events", dns_l7_rows)):
                for r in _query(catalog, table, early, until_ns, where):
                    rows.extend(make(r, ctx, ""))
        return rows

    rows = with_catalog(data_dir, read)
    rows.sort(key=lambda r: int(r["time_"]))
    return rows


def row_key(r: dict) -> tuple:
    return (int(r["time_"]), r.get("event_type"), r.get("l7_type"), r.get("source_ip"), r.get("source_port"),
            r.get("destination_ip"), r.get("destination_port"), r.get("verdict"), r.get("ifindex"),
            r.get("traffic_direction"), r.get("tcp_flags"))


# -- printing -----------------------------------------------------------------------------------------
class Printer:
    def __init__(self, output: str, tz: dt.tzinfo | None) -> None:
        self.output = output
        self.tz = tz
        self.lines = 0

    def write(self, rows: list[dict]) -> None:
        from ..netpolicy.flows import compact, to_hubble

        if not rows:
            return
        if self.output == "table":
            self._table(rows)
        else:
            out = []
            for r in rows:
                if self.output == "compact":
                    out.append(compact(r, self.tz))
                else:
                    out.append(json.dumps(to_hubble(r), separators=(",", ":")))
            print("\n".join(out), flush=True)
        self.lines += len(rows)

    def _table(self, rows: list[dict]) -> None:
        from rich.console import Console
        from rich.table import Table

        from ..netpolicy.flows import _host, flow_type_text, summary_text, time_text, verdict_text

        t = Table(box=None, show_header=self.lines == 0, pad_edge=False)
        for c in ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"):
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(time_text(int(r["time_"]), self.tz), _host(r, "source"), _host(r, "destination"),
                      flow_type_text(r), verdict_text(r), summary_text(r))
        Console(soft_wrap=True, width=200 if not sys.stdout.isatty() else None).print(t)


# -- the command --------------------------------------------------------------------------------------
def run_observe(args: argparse.Namespace) -> int:
    from ..netpolicy.flows import StateWatcher
    from ..store.control import request, request_flush

    now = time.time_ns()
    flt = build_filter(args, now)
    tz = dt.timezone.utc if args.utc else None
    printer = Printer(args.output, tz)
    watcher = StateWatcher(args.state_dir, resolve_rules=False)
    have_store = args.data_dir.is_dir()
    if not have_store and not args.follow:
        raise UsageError(f"no data directory {args.data_dir}: is the agent storing flows there? (--data-dir DIR)")

    def warn(msg: str) -> None:
        print(f"andon: warning: {msg}", file=sys.stderr)

    agent = have_store and request(args.data_dir, "stats", timeout=1.0) is not None
    last = args.last if args.last is not None else (None if args.since else DEFAULT_LAST)
    rows: list[dict] = []
    if have_store:
        if agent and not args.no_flush:
            request_flush(args.data_dir, timeout=2.0)
        rows = [r for r in read_rows(args.data_dir, watcher.context, flt.since_ns, flt.until_ns, warn)
                if flt.matches(r)]
    if last is not None:
        rows = rows[-last:] if last else []
    printer.write(rows)
    if not args.follow:
        return 0
    if agent or not args.pin_dir.joinpath("np_flows").exists():
        if not agent:
            print(f"andon: no agent answers on {args.data_dir} and no flow ring is pinned at {args.pin_dir}: "
                  "waiting for stored flows", file=sys.stderr)
        return _follow_store(args, flt, printer, watcher, rows)
    return _follow_ring(args, flt, printer)


def _follow_store(args: argparse.Namespace, flt: Any, printer: Printer, watcher: Any, shown: list[dict]) -> int:
    from ..store.control import request_flush

    seen = {row_key(r) for r in shown}
    high = max((int(r["time_"]) for r in shown), default=time.time_ns() - 10**9)
    while True:
        time.sleep(1.0)
        if not args.data_dir.is_dir():
            continue
        if not args.no_flush:
            request_flush(args.data_dir, timeout=2.0)
        since = high - 5 * 10**9  # rows of the same moment may land in a later flush
        if flt.since_ns is not None:
            since = max(since, flt.since_ns)
        fresh = []
        for r in read_rows(args.data_dir, watcher.check(), since, flt.until_ns):
            k = row_key(r)
            if k in seen or not flt.matches(r):
                continue
            seen.add(k)
            fresh.append(r)
        printer.write(fresh)
        if fresh:
            high = max(high, max(int(r["time_"]) for r in fresh))
        cutoff = (high - 30 * 10**9,)
        seen = {k for k in seen if k >= cutoff}


def _follow_ring(args: argparse.Namespace, flt: Any, printer: Printer) -> int:
    import socket

    from ..netpolicy.flows import PinnedFlowRing, StateWatcher, flow_row

    # rules named as the agent names them ("rule 0 (ingress item 0)"): this needs the policies
    # resolved, which the store's L7 rows do not
    watcher = StateWatcher(args.state_dir, resolve_rules=True)

    node = socket.gethostname()
    try:
        ring = PinnedFlowRing(args.pin_dir)
    except PermissionError:
        from ..errors import PermissionDenied

        raise PermissionDenied(f"reading the pinned flow ring {args.pin_dir} needs root") from None
    print(f"andon: no agent answers on {args.data_dir}: reading the flow ring {args.pin_dir}/np_flows directly "
          "(one reader at a time; these flows are not stored, and L7 flows need the agent)", file=sys.stderr)
    try:
        while True:
            if not ring.still_pinned():
                print("andon: the flow ring was unpinned (last endpoint removed)", file=sys.stderr)
                return 0
            if not ring.wait(1.0):
                continue
            ctx = watcher.check()
            out = [r for r in (flow_row(f, ctx, node) for f in ring.flows()) if flt.matches(r)]
            printer.write(out)
    finally:
        if ring.decode_errors:
            print(f"andon: {ring.decode_errors} undecodable flow records", file=sys.stderr)
        ring.close()
