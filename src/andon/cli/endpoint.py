"""``andon endpoint add|list|remove``: the workloads network policy applies to.

An endpoint here is a network namespace seen through its host-side veth. ``add`` attaches the
policy programs to that veth and keeps them there after andon exits (maps pinned in bpffs,
state in ``--state-dir``); every add or remove recomputes identities and policy for all
endpoints and applies the result in one atomic step.
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

from ..errors import UsageError

EXIT_OK, EXIT_FAIL = 0, 1


def add_state_args(p: argparse.ArgumentParser) -> None:
    from ..netpolicy.state import DEFAULT_PIN_DIR, DEFAULT_STATE_DIR

    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where applied endpoints and policies are kept")
    p.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR), help="bpffs directory for the datapath's maps")


def open_datapath(args: argparse.Namespace, state: Any) -> Any:
    """The datapath on the pinned maps, with the endpoints attached by earlier runs taken over."""
    from pathlib import Path

    from ..netpolicy.datapath import Datapath

    dp = Datapath(pin_dir=Path(args.pin_dir))
    for rec in state.endpoints.values():
        if "datapath" in rec:  # not yet for the one being added
            dp.adopt_endpoint(rec["datapath"])
    return dp


def run_add(args: argparse.Namespace) -> int:
    from ..netpolicy.labels import labels_from
    from ..netpolicy.state import NetpolicyState, compute, enforce, netns_addresses

    state = NetpolicyState.load(args.state_dir)
    if args.name in state.endpoints:
        raise UsageError(f"endpoint {args.name!r} exists already (andon endpoint remove it first)")
    try:
        socket.if_nametoindex(args.ifname)
    except OSError:
        raise UsageError(f"no network interface {args.ifname!r} on the host") from None
    labels = [s for s in (args.labels or "").split(",") if s]
    labels_from(labels)  # bad labels fail before anything changes
    addresses = args.address or netns_addresses(args.netns)
    if not addresses:
        raise UsageError(f"no address in network namespace {args.netns!r}: give --address")
    state.endpoints[args.name] = {"kind": "netns", "netns": args.netns, "ifname": args.ifname, "labels": labels,
                                  "addresses": addresses}
    loaded, res = compute(state)
    epp = res.endpoints[args.name]
    dp = open_datapath(args, state)
    try:
        ifindex = dp.attach_endpoint(args.ifname, epp.identity.id,
                                     default_deny_ingress=epp.is_default_deny("ingress"),
                                     default_deny_egress=epp.is_default_deny("egress"))
        state.endpoints[args.name]["ifindex"] = ifindex
        try:
            enforce(dp, state, res)
        except BaseException:
            dp.detach_endpoint(ifindex)
            raise
        state.endpoints[args.name]["datapath"] = dp.endpoint_record(ifindex)
        state.save()
    finally:
        dp.close(detach=False)
    print(f"endpoint {args.name}: identity {epp.identity.id}, {args.ifname} (ifindex {ifindex}), "
          f"addresses {', '.join(addresses)}")
    return EXIT_OK


def run_remove(args: argparse.Namespace) -> int:
    from ..netpolicy.state import NetpolicyState, compute, enforce

    state = NetpolicyState.load(args.state_dir)
    rec = state.endpoints.get(args.name)
    if rec is None:
        raise UsageError(f"no endpoint {args.name!r}")
    dp = open_datapath(args, state)
    try:
        try:
            dp.detach_endpoint(int(rec["ifindex"]))
        except OSError:
            pass  # the veth went away with its namespace
        del state.endpoints[args.name]
        _, res = compute(state)
        enforce(dp, state, res)
        state.save()
        last = not state.endpoints
    finally:
        dp.close(detach=False)
    if last:
        from pathlib import Path

        from ..netpolicy.datapath import unpin

        unpin(Path(args.pin_dir))  # nothing attached any more: drop the pins
    print(f"endpoint {args.name} removed")
    return EXIT_OK


def endpoint_rows(state: Any) -> list[dict[str, Any]]:
    from ..netpolicy.identity import IdentityAllocator

    alloc = IdentityAllocator.from_dict(state.identities) if state.identities else IdentityAllocator()
    rows = []
    for name, rec in sorted(state.endpoints.items()):
        ident = alloc.allocate(rec["labels"])
        rows.append({"name": name, "identity": ident.id, "labels": rec["labels"], "addresses": rec["addresses"],
                     "ifname": rec["ifname"], "netns": rec.get("netns")})
    return rows


def run_list(args: argparse.Namespace) -> int:
    from ..netpolicy.state import NetpolicyState

    rows = endpoint_rows(NetpolicyState.load(args.state_dir))
    if args.output == "json":
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    head = ("NAME", "IDENTITY", "LABELS", "ADDRESSES", "IFNAME")
    table = [head] + [(r["name"], str(r["identity"]), ",".join(r["labels"]) or "-", ",".join(r["addresses"]),
                       r["ifname"]) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("endpoint", help="network policy endpoints: add|list|remove")
    esub = p.add_subparsers(dest="endpoint_command", metavar="SUBCOMMAND")
    esub.required = True
    a = esub.add_parser("add", help="enforce policy on a network namespace through its host-side veth")
    a.add_argument("name")
    a.add_argument("--netns", required=True, help="the named network namespace (ip netns)")
    a.add_argument("--ifname", required=True, help="the host-side veth of the namespace")
    a.add_argument("--labels", default="", help="k=v,k2=v2")
    a.add_argument("--address", action="append", help="the endpoint's IP (default: read from the namespace)")
    add_state_args(a)
    a.set_defaults(func=run_add)
    ls = esub.add_parser("list", help="the endpoints, their identities and addresses")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_state_args(ls)
    ls.set_defaults(func=run_list)
    r = esub.add_parser("remove", help="stop enforcing on an endpoint")
    r.add_argument("name")
    add_state_args(r)
    r.set_defaults(func=run_remove)
