"""Where the shared external corpus lives (Falco's rules and parser cases, Cilium policies,
reference tables), read in place, never copied into the project.

It sits beside the project (``../shared``); a clone elsewhere on the same machine finds it
through ``$ANDON_SHARED`` or by looking up the directory tree, then at ``/work/shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("ANDON_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" for p in ROOT.parents]
    candidates.append(Path("/work/shared"))
    for c in candidates:
        if (c / "corpus").is_dir():
            return c
    raise FileNotFoundError(
        f"the shared corpus was not found (looked for shared/corpus above {ROOT} and at /work/shared); "
        "set ANDON_SHARED to the directory that holds corpus/ and reference/"
    )


SHARED = shared_dir()
CORPUS = SHARED / "corpus"
STABLE_RULES = CORPUS / "falco" / "falco_rules.yaml"
PARSER_CASES = CORPUS / "falco" / "filter_parser_cases.json"
STABLE_FIELDS = SHARED / "reference" / "falco_stable_fields.md"
