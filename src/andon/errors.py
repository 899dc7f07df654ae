"""Every error andon raises on purpose derives from :class:`AndonError`.

Leaves also derive from the builtin a caller would naturally catch, so code that does
``except OSError`` around a load still works::

    AndonError
    ├── NotSupported(AndonError, OSError)      a kernel feature is missing, found by trying it
    ├── PermissionDenied(AndonError, PermissionError)   not root / no CAP_BPF
    ├── BpfError(AndonError, OSError)          a libbpf call failed (errno kept)
    │   └── VerifierError                      the verifier rejected a program; carries its log
    ├── CaptureError(AndonError, ValueError)   a capture file is not ours, or is damaged
    ├── UsageError(AndonError, ValueError)     bad arguments from the command line or config
    ├── StoreError(AndonError, OSError)        the data directory cannot be used (store/store.py)
    ├── QueryError(AndonError, ValueError)     a PxL script or SQL query is wrong (query/plan.py)
    ├── PolicyError(AndonError, ValueError)    a label, selector, endpoint or policy is malformed
    ├── PolicyEntryError(AndonError, ValueError)  an entry the datapath's maps cannot hold (netpolicy/datapath.py)
    └── RuleError(AndonError, ValueError)      a rules file, condition or output format is wrong
        ├── RuleSyntaxError                    a condition or output does not parse (``pos``)
        ├── UnknownFieldError                  no such field (``evt.nope``)
        ├── FieldArgError                      a field's argument is missing, not allowed or bad
        ├── UndefinedMacroError                an identifier is neither a macro nor a field
        └── MacroCycleError                    macros that use each other in a loop
"""

from __future__ import annotations

import errno as _errno
import os


class AndonError(Exception):
    """Root of andon's errors."""


class NotSupported(AndonError, OSError):
    """A kernel feature this needs is not available here.

    ``feature`` names it as ``andon doctor`` does; ``hint`` says what the user loses or can do.
    """

    def __init__(self, feature: str, hint: str = "") -> None:
        self.feature = feature
        self.hint = hint
        super().__init__(f"{feature} is not supported here" + (f": {hint}" if hint else ""))


class PermissionDenied(AndonError, PermissionError):
    """andon needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN) for this."""


class BpfError(AndonError, OSError):
    """A libbpf or bpf(2) call failed; ``errno`` is kept."""

    def __init__(self, what: str, err: int) -> None:
        err = abs(err)
        self.what = what
        super().__init__(err, f"{what}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})")


class VerifierError(BpfError):
    """The kernel verifier rejected a program. ``log`` is the verifier's full log."""

    def __init__(self, program: str, err: int, log: str) -> None:
        self.program = program
        self.log = log
        super().__init__(f"verifier rejected program {program!r}", err)

    def __str__(self) -> str:
        tail = "\n".join(self.log.strip().splitlines()[-12:])
        return f"{super().__str__()}\n--- last lines of the verifier log ---\n{tail}"


class CaptureError(AndonError, ValueError):
    """A capture file cannot be read: wrong magic, newer version, or truncated."""


class UsageError(AndonError, ValueError):
    """Bad arguments or configuration from the user."""


class RuleError(AndonError, ValueError):
    """Something in a rules file is wrong. ``pos`` is an offset into the text it came from, if known."""

    def __init__(self, message: str, pos: int | None = None) -> None:
        self.message = message
        self.pos = pos
        super().__init__(message)


class RuleSyntaxError(RuleError):
    """A condition or output string does not parse."""


class UnknownFieldError(RuleError):
    """A field name andon does not know."""


class FieldArgError(RuleError):
    """A field argument is missing where required, given where not allowed, or malformed."""


class UndefinedMacroError(RuleError):
    """A bare identifier in a condition is not a defined macro."""


class MacroCycleError(RuleError):
    """Macros refer to each other in a loop."""


class PolicyError(AndonError, ValueError):
    """A label, selector, endpoint or policy is malformed (raised by the programmatic API;
    policy files report problems instead of raising)."""
