"""``andon endpoint add|list|remove|audit|sync``: the workloads network policy applies to.

An endpoint is a network namespace seen through its host-side veth (``--netns``), a podman
container (``--container``: its labels, addresses and veth come from podman), or a cgroup v2
directory of processes on the host network (``--cgroup``). ``add`` attaches the policy
programs and keeps them there after andon exits (maps pinned in bpffs, state in
``--state-dir``); every change recomputes identities and policy for all endpoints and applies
the result in one atomic step, under the state directory's lock. ``sync`` makes the
endpoints follow a config file and podman's running containers, once or (``--follow``)
as containers start and stop.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
import time
from typing import Any

from ..errors import UsageError

EXIT_OK, EXIT_FAIL = 0, 1


def add_state_args(p: argparse.ArgumentParser) -> None:
    from ..netpolicy.state import DEFAULT_PIN_DIR, DEFAULT_STATE_DIR

    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where applied endpoints and policies are kept")
    p.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR), help="bpffs directory for the datapath's maps")


def open_datapath(args: argparse.Namespace, state: Any) -> Any:
    """The datapath on the pinned maps, with the endpoints attached by earlier runs taken over."""
    from ..netpolicy.state import open_datapath as open_dp

    return open_dp(state, args.pin_dir)


def _labels(text: str | None) -> list[str]:
    from ..netpolicy.labels import labels_from

    labels = [s for s in (text or "").split(",") if s]
    labels_from(labels)  # bad labels fail before anything changes
    return labels


def run_add(args: argparse.Namespace) -> int:
    from ..netpolicy import podman
    from ..netpolicy.state import add_endpoint, netns_addresses

    labels = _labels(args.labels)
    if args.container:
        c = podman.inspect(args.container)
        if c is None:
            raise UsageError(f"podman knows no container {args.container!r}")
        rec = podman.endpoint_record(c, labels, args.audit)
        if args.address:
            rec["addresses"] = args.address
    elif args.cgroup:
        from ..netpolicy import cgroup

        rec = {"kind": "cgroup", "cgroup": str(cgroup.resolve(args.cgroup)), "ifname": None, "labels": labels,
               "addresses": [], "audit": args.audit}
    else:
        if not args.ifname:
            raise UsageError("--netns needs --ifname (the namespace's host-side veth)")
        try:
            socket.if_nametoindex(args.ifname)
        except OSError:
            raise UsageError(f"no network interface {args.ifname!r} on the host") from None
        addresses = args.address or netns_addresses(args.netns)
        if not addresses:
            raise UsageError(f"no address in network namespace {args.netns!r}: give --address")
        rec = {"kind": "netns", "netns": args.netns, "ifname": args.ifname, "labels": labels, "addresses": addresses,
               "audit": args.audit}
    out = add_endpoint(args.state_dir, args.pin_dir, args.name, rec)
    print(f"endpoint {args.name}: {_where(out)}, identity {out['identity']}, labels {','.join(out['labels']) or '-'}"
          f"{', audit mode' if out.get('audit') else ''}")
    return EXIT_OK


def _where(rec: dict[str, Any]) -> str:
    kind = rec.get("kind", "netns")
    if kind == "cgroup":
        return f"cgroup {rec['cgroup']} (id {rec.get('cgroup_id')})"
    head = f"container {rec.get('container_name') or rec.get('container_id', '')[:12]}, " if kind == "container" else ""
    return f"{head}{rec['ifname']} (ifindex {rec.get('ifindex')}), addresses {', '.join(rec['addresses'])}"


def run_remove(args: argparse.Namespace) -> int:
    from ..netpolicy.state import remove_endpoint

    remove_endpoint(args.state_dir, args.pin_dir, args.name)
    print(f"endpoint {args.name} removed")
    return EXIT_OK


def run_audit(args: argparse.Namespace) -> int:
    from ..netpolicy.state import set_audit

    set_audit(args.state_dir, args.pin_dir, args.name, args.mode == "on")
    print(f"endpoint {args.name}: audit {args.mode}"
          + (" (would-be drops pass and are reported as AUDIT)" if args.mode == "on" else ""))
    return EXIT_OK


def endpoint_rows(state: Any) -> list[dict[str, Any]]:
    from ..netpolicy.identity import IdentityAllocator

    alloc = IdentityAllocator.from_dict(state.identities) if state.identities else IdentityAllocator()
    rows = []
    for name, rec in sorted(state.endpoints.items()):
        ident = alloc.allocate(rec["labels"])
        rows.append({"name": name, "kind": rec.get("kind", "netns"), "identity": ident.id, "labels": rec["labels"],
                     "addresses": rec["addresses"], "ifname": rec.get("ifname"), "netns": rec.get("netns"),
                     "container": rec.get("container_name"), "container_id": rec.get("container_id"),
                     "cgroup": rec.get("cgroup"), "cgroup_id": rec.get("cgroup_id"),
                     "audit": bool(rec.get("audit", False))})
    return rows


def run_list(args: argparse.Namespace) -> int:
    from ..netpolicy.state import NetpolicyState, locked

    from pathlib import Path

    if Path(args.state_dir).is_dir():
        with locked(args.state_dir):
            rows = endpoint_rows(NetpolicyState.load(args.state_dir))
    else:
        rows = []  # nothing added yet
    if args.output == "json":
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    head = ("NAME", "KIND", "IDENTITY", "LABELS", "ADDRESSES", "WHERE", "AUDIT")
    table = [head] + [(r["name"], r["kind"], str(r["identity"]), ",".join(r["labels"]) or "-",
                       ",".join(r["addresses"]) or "(host)", r["cgroup"] if r["kind"] == "cgroup" else r["ifname"],
                       "on" if r["audit"] else "off") for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


# -- sync ------------------------------------------------------------------------------------------
def run_sync(args: argparse.Namespace) -> int:
    from ..netpolicy.podman import EndpointSync

    network = None
    if args.config:
        from pathlib import Path

        from ..app.config import load_config

        network = load_config(Path(args.config)).network
    s = EndpointSync.from_settings(network, state_dir=args.state_dir, pin_dir=args.pin_dir,
                                   containers=args.containers, label=args.label)
    s.report = lambda line: print(line, flush=True)
    s.sync_once()
    if not args.follow:
        return EXIT_OK
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    s.follow(stop, deadline)
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("endpoint", help="network policy endpoints: add|list|remove|audit|sync")
    esub = p.add_subparsers(dest="endpoint_command", metavar="SUBCOMMAND")
    esub.required = True
    a = esub.add_parser("add", help="enforce policy on a namespace (its host-side veth), a container or a cgroup")
    a.add_argument("name")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--netns", help="a named network namespace (ip netns); needs --ifname")
    which.add_argument("--container", help="a running podman container (name or id): labels, veth and addresses "
                                           "from podman; its labels get the source 'container:'")
    which.add_argument("--cgroup", help="a cgroup v2 directory (/sys/fs/cgroup/unified/...) of processes on the host "
                                        "network")
    a.add_argument("--ifname", help="the host-side veth of --netns")
    a.add_argument("--labels", default="", help="k=v,k2=v2 (source k8s: unless written, e.g. container:k=v)")
    a.add_argument("--address", action="append", help="the endpoint's IP (default: read from the namespace)")
    a.add_argument("--audit", action="store_true", help="audit mode: would-be drops pass and are reported as AUDIT")
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
    au = esub.add_parser("audit", help="switch an endpoint's audit mode on or off")
    au.add_argument("name")
    au.add_argument("mode", choices=("on", "off"))
    add_state_args(au)
    au.set_defaults(func=run_audit)
    sy = esub.add_parser("sync", help="endpoints from the config file and podman's running containers")
    sy.add_argument("--config", help="andon.yaml whose network.endpoints to apply (and network.containers)")
    sy.add_argument("--containers", choices=("label", "all", "off"), default=None,
                    help="which running podman containers are endpoints (default: network.containers, else label)")
    sy.add_argument("--label", default=None, help="the label a container needs with --containers label "
                                                  "(default: andon.endpoint=true)")
    sy.add_argument("--follow", action="store_true", help="then follow podman's events until interrupted")
    sy.add_argument("--duration", type=float, default=0.0, help="with --follow: stop after this many seconds")
    add_state_args(sy)
    sy.set_defaults(func=run_sync)
