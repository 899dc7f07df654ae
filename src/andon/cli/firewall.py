"""``andon firewall add|list|remove``: the XDP host firewall, one command at a time.

Drop by source CIDR, protocol and destination port at an interface, before the stack sees
the packet (iptables' ``-s CIDR -p PROTO --dport PORT -j DROP`` in raw PREROUTING, done at
XDP). Rules stay after the command exits: the program and its maps are pinned under
``--pin-dir`` (one directory per interface), the rules kept in ``--state-file``. ``list``
shows each rule's drop counters and each interface's passed total; removing an
interface's last rule takes the program off it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError

EXIT_OK = 0


def _proto(text: str | None) -> int | str:
    if text is None:
        return 0
    if text.lower() not in ("icmp", "icmpv6", "tcp", "udp", "sctp", "any") and not text.isdigit():
        raise UsageError(f"--proto {text!r}: expected icmp, icmpv6, tcp, udp, sctp or a protocol number")
    return text


def run_add(args: argparse.Namespace) -> int:
    from ..netpolicy.kernel_firewall import RuleSpec, add_rules, parse_ports

    try:
        lo, hi = parse_ports(args.port)
    except UsageError as e:
        raise UsageError(f"--{e}") from None
    proto = _proto(args.proto)
    if lo and str(proto).lower() not in ("tcp", "udp", "6", "17"):
        raise UsageError("--port needs --proto tcp or udp")
    (rid,) = add_rules([RuleSpec(args.iface, args.cidr, proto, lo, hi)], state_file=args.state_file,
                       pin_dir=args.pin_dir, mode=args.mode)
    print(rid)
    return EXIT_OK


def run_remove(args: argparse.Namespace) -> int:
    from ..netpolicy.kernel_firewall import remove_rules

    if not ((args.ids and not args.all and not args.iface) or (args.all and args.iface and not args.ids)):
        raise UsageError("andon firewall remove takes rule ids, or --iface IF --all")
    gone = remove_rules(args.ids, ifname=args.iface if args.all else None, state_file=args.state_file,
                        pin_dir=args.pin_dir)
    for r in gone:
        print(f"removed rule {r.rule_id}")
    return EXIT_OK


def render(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True, width=200 if not sys.stdout.isatty() else None)
    if not status["interfaces"]:
        console.print("no firewall rules")
        return
    t = Table(box=None, pad_edge=False)
    for c in ("ID", "IFACE", "CIDR", "PROTO", "PORT", "DROPPED PKTS", "DROPPED BYTES"):
        t.add_column(c, justify="right" if c.startswith(("ID", "DROPPED")) else "left")
    for r in status["rules"]:
        t.add_row(str(r["id"]), r["iface"], r["cidr"], r["proto"], r["port"], str(r["dropped_packets"]),
                  str(r["dropped_bytes"]))
    console.print(t)
    console.print()
    t = Table(box=None, pad_edge=False)
    for c in ("IFACE", "XDP", "MODE", "RULES", "PASSED PKTS", "PASSED BYTES"):
        t.add_column(c, justify="right" if c.startswith(("RULES", "PASSED")) else "left")
    for i in status["interfaces"]:
        t.add_row(i["iface"], i["status"], i["mode"] or "-", str(i["rules"]), str(i["passed_packets"]),
                  str(i["passed_bytes"]))
    console.print(t)


def run_list(args: argparse.Namespace) -> int:
    from ..netpolicy.kernel_firewall import firewall_status

    status = firewall_status(state_file=args.state_file, pin_dir=args.pin_dir)
    if args.output == "json":
        print(json.dumps(status, indent=1))
    else:
        render(status)
    return EXIT_OK


def _state_args(p: argparse.ArgumentParser) -> None:
    from ..netpolicy.kernel_firewall import DEFAULT_PIN_DIR, DEFAULT_STATE_FILE

    p.add_argument("--state-file", default=str(DEFAULT_STATE_FILE), help="where the rules are kept")
    p.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR), help="bpffs directory (one subdirectory per interface)")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("firewall", help="XDP host firewall: drop by CIDR, protocol and port (add|list|remove)")
    fsub = p.add_subparsers(dest="firewall_command", metavar="SUBCOMMAND")
    fsub.required = True
    a = fsub.add_parser("add", help="drop packets arriving on an interface; prints the rule id")
    a.add_argument("--iface", required=True, help="the interface whose incoming packets the rule sees")
    a.add_argument("--cidr", help="source addresses (default: every IPv4 and IPv6 source)")
    a.add_argument("--proto", help="icmp, icmpv6, tcp, udp, sctp or a protocol number (default: any)")
    a.add_argument("--port", help="destination port P or range LO-HI (needs --proto tcp or udp)")
    a.add_argument("--mode", choices=("native", "generic"), default=None,
                   help="XDP mode when the program is first attached (default: native, else generic)")
    _state_args(a)
    a.set_defaults(func=run_add)
    ls = fsub.add_parser("list", help="rules with their drop counters, interfaces with their passed totals")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _state_args(ls)
    ls.set_defaults(func=run_list)
    r = fsub.add_parser("remove", help="remove rules by id, or every rule of an interface (--iface IF --all)")
    r.add_argument("ids", nargs="*", type=int, metavar="ID")
    r.add_argument("--iface", help="with --all: the interface")
    r.add_argument("--all", action="store_true", help="every rule of --iface; the program leaves it")
    _state_args(r)
    r.set_defaults(func=run_remove)
