"""``andon policy validate FILE...``: check CiliumNetworkPolicy files, say what andon enforces.

``validate`` reads every document of every file, prints each problem compiler style
(``file:line:col: error CODE: ...``, the line, a caret, a hint), then one summary line; or the
same as JSON with ``-o json``. Warnings (parts andon parses but cannot enforce on one host) do
not fail it: exit 0 when every file loads, 1 on any error.

``apply``, ``list`` and ``delete`` need the running datapath; they are added beside
``validate`` as further ``_SUBCOMMANDS`` entries.
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_FAIL = 0, 1


def run_validate(args: argparse.Namespace) -> int:
    from ..netpolicy.policy import load_files

    result = load_files(args.files)
    if args.output == "json":
        print(result.to_json_text())
    else:
        print(result.render(warnings=not args.no_warnings))
    return EXIT_OK if result.ok else EXIT_FAIL


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="check policy files; report what andon does not enforce")
    p.add_argument("files", nargs="+", metavar="FILE", help="CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--no-warnings", action="store_true", help="print errors only")
    p.set_defaults(func=run_validate)


_SUBCOMMANDS = (_add_validate,)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="network policy: Cilium policy files (validate)")
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    for add in _SUBCOMMANDS:
        add(psub)
