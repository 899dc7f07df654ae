"""andon's command line. Thin: parse arguments, call into andon, render, return an exit code.

Exit codes: 0 success, 1 a check failed (doctor, validate), 2 usage error,
3 missing privilege or kernel feature, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import AndonError, NotSupported, PermissionDenied, UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="andon",
        description="One eBPF agent for runtime security, observability and network policy.",
    )
    p.add_argument("--version", action="version", version=f"andon {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: libbpf debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from . import doctor, events, query, rules, run, top
    from . import policy
    from . import endpoint

    events.add_parsers(sub)  # andon events / capture
    doctor.add_parser(sub)
    rules.add_parser(sub)  # runtime security: andon rules validate|list|fields
    policy.add_parser(sub)  # network policy: andon policy validate (apply|list|delete with the datapath)
    endpoint.add_parser(sub)  # network policy: andon endpoint add|list|remove
    run.add_parser(sub)  # the agent
    query.add_parser(sub)  # observability: PxL scripts and SQL over the stored tables
    top.add_parser(sub)  # observability: the busiest endpoints, live
    from . import observe; observe.add_parser(sub)  # network flows, as hubble observe
    from . import firewall; firewall.add_parser(sub)  # XDP host firewall: andon firewall add|list|remove
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="andon: %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        logging.getLogger("andon.libbpf").setLevel(max(level, logging.INFO if args.verbose else logging.ERROR))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except UsageError as e:
        print(f"andon: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PermissionDenied, NotSupported) as e:
        print(f"andon: {e}", file=sys.stderr)
        if isinstance(e, NotSupported):
            print("andon: run `andon doctor` to see what this kernel allows", file=sys.stderr)
        return EXIT_ENV
    except FileNotFoundError as e:
        print(f"andon: {e}", file=sys.stderr)
        return EXIT_ENV
    except AndonError as e:
        print(f"andon: {e}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        # `andon events | head`: the reader left; not an error
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
