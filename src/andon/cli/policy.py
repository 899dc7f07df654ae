"""``andon policy validate FILE...``: check CiliumNetworkPolicy files, say what andon enforces.

``validate`` reads every document of every file, prints each problem compiler style
(``file:line:col: error CODE: ...``, the line, a caret, a hint), then one summary line; or the
same as JSON with ``-o json``. Warnings (parts andon parses but cannot enforce on one host) do
not fail it: exit 0 when every file loads, 1 on any error.

``apply FILE...`` validates the files together with the ones applied before (any error: nothing
changes, exit 1), then resolves every applied policy against every endpoint (``andon endpoint``)
and replaces the kernel's policy in one atomic step; it prints what each endpoint got.
``apply --audit`` puts the files' policies in audit mode (kept in state.json with the files;
the ``andon.io/policy-audit-mode: "true"`` annotation does the same from the file): their deny
entries, and default deny switched on only by audited policies, let packets through as AUDIT. ``list``
shows the applied policies, ``delete NAME`` removes the file that defined policy NAME (a policy
name or a file name) and re-applies the rest.
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


def _print_resolution(res: Any, loaded: Any) -> None:
    for w in loaded.warnings:
        print(w.render())
    for name, epp in sorted(res.endpoints.items()):
        dirs = []
        for d in ("ingress", "egress"):
            n = sum(1 for e in epp.entries if e.direction == d)
            deny = f"default deny by {', '.join(epp.default_deny[d])}" if epp.is_default_deny(d) else "default allow"
            if epp.is_default_deny(d) and (epp.default_deny_audit[d] or epp.endpoint.audit):
                deny += " (audit)"
            dirs.append(f"{d}: {deny}, {n} entries")
        print(f"endpoint {name} (identity {epp.identity.id}): {'; '.join(dirs)}")
    for p in res.problems:
        print(p.render())


def _reapply(args: argparse.Namespace, state: Any, files: dict[str, str]) -> tuple[int, Any, Any]:
    """Resolve ``files`` against the endpoints and put the result in the kernel; exit code first."""
    from ..netpolicy.state import compute, enforce
    from .endpoint import open_datapath

    loaded, res = compute(state, files)
    if not loaded.ok:
        print(loaded.render(warnings=False))
        print("andon: nothing applied, the running policy is unchanged")
        return EXIT_FAIL, loaded, res
    if state.endpoints:
        dp = open_datapath(args, state)
        try:
            enforce(dp, state, res)
        finally:
            dp.close(detach=False)
    state.policy_files = files
    state.save()
    return EXIT_OK, loaded, res


def run_apply(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..netpolicy.policy import load_files
    from ..netpolicy.state import locked

    audit = getattr(args, "audit", False)
    checked = load_files(args.files, audit_files=args.files if audit else ())  # the files' own problems, with their paths
    if not checked.ok:
        print(checked.render(warnings=False))
        print("andon: nothing applied, the running policy is unchanged")
        return EXIT_FAIL
    texts = {str(Path(f).resolve()): Path(f).read_text(encoding="utf-8") for f in args.files}
    # the whole read-modify-write under the state lock: a concurrent apply, delete or endpoint
    # change cannot lose this one's files (nor this one theirs)
    with locked(args.state_dir):
        return _apply_locked(args, checked, texts, audit)


def _apply_locked(args: argparse.Namespace, checked: Any, texts: dict[str, str], audit: bool) -> int:
    from ..netpolicy.state import NetpolicyState

    state = NetpolicyState.load(args.state_dir)
    files = dict(state.policy_files)
    for key, text in texts.items():
        files.pop(key, None)  # re-applying a file moves it last (later definitions win)
        files[key] = text
        # --audit is a property of this application of the file: applying it again without
        # --audit enforces it
        if key in state.audit_files:
            state.audit_files.remove(key)
        if audit:
            state.audit_files.append(key)
    state.audit_files = [f for f in state.audit_files if f in files]
    rc, loaded, res = _reapply(args, state, files)
    if rc == EXIT_OK:
        print(f"applied {len(checked.policies)} policies from {len(args.files)} files{' in audit mode' if audit else ''} "
              f"({len(loaded.policies)} policies in force, {len(state.endpoints)} endpoints)")
        _print_resolution(res, loaded)
    return rc


def _policies(state: Any) -> list[Any]:
    from ..netpolicy.policy import load_texts

    return load_texts(list(state.policy_files.items()), audit_files=state.audit_files).policies


def run_list(args: argparse.Namespace) -> int:
    import json

    from ..netpolicy.state import NetpolicyState

    state = NetpolicyState.load(args.state_dir)
    rows = [{"name": p.name, "kind": p.kind, "file": p.file, "rules": len(p.rules), "id": state.policy_ids.get(p.name),
             "audit": p.audit, "audit_by": ("apply --audit" if p.file in state.audit_files else "annotation") if p.audit else None}
            for p in _policies(state)]
    if args.output == "json":
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            mode = f"AUDIT ({r['audit_by']})" if r["audit"] else "enforced"
            print(f"{r['name']}  {r['kind']}  {r['rules']} rules  {mode}  {r['file']}")
        print(f"{len(rows)} policies applied")
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UsageError
    from ..netpolicy.state import STATE_FILE, locked

    if not (Path(args.state_dir) / STATE_FILE).exists():
        raise UsageError(f"no applied policy or file named {args.name!r} (nothing applied in {args.state_dir})")
    with locked(args.state_dir):  # the read-modify-write, as in apply
        return _delete_locked(args)


def _delete_locked(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..netpolicy.state import NetpolicyState

    state = NetpolicyState.load(args.state_dir)
    pols = _policies(state)
    files = {p.file for p in pols if p.name == args.name} | {f for f in state.policy_files if f == args.name}
    if not files:
        raise UsageError(f"no applied policy or file named {args.name!r} (andon policy list)")
    gone = sorted(p.name for p in pols if p.file in files)
    rest = {f: t for f, t in state.policy_files.items() if f not in files}
    state.audit_files = [f for f in state.audit_files if f in rest]
    rc, _, res = _reapply(args, state, rest)
    if rc == EXIT_OK:
        print(f"deleted {', '.join(gone)} ({', '.join(sorted(files))})")
    return rc


def _add_apply(sub: Any) -> None:
    from .endpoint import add_state_args

    p = sub.add_parser("apply", help="validate, then enforce policy files on the endpoints")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--audit", action="store_true",
                   help="audit mode for these files' policies: their would-be drops pass and are reported as AUDIT")
    add_state_args(p)
    p.set_defaults(func=run_apply)
    ls = sub.add_parser("list", help="the applied policies")
    ls.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_state_args(ls)
    ls.set_defaults(func=run_list)
    d = sub.add_parser("delete", help="remove an applied policy (by policy or file name)")
    d.add_argument("name")
    add_state_args(d)
    d.set_defaults(func=run_delete)


_SUBCOMMANDS = (_add_validate, _add_apply)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="network policy: Cilium policy files (validate|apply|list|delete)")
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    for add in _SUBCOMMANDS:
        add(psub)
