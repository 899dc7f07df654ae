"""The policy state kept between ``andon endpoint`` / ``andon policy`` runs.

One directory (``/var/lib/andon/netpolicy/`` by default) holds ``state.json``: the endpoints
(name, kind, host-side veth, labels, addresses, and the TC filter handles the datapath needs
to take them over), the text of every applied policy file, the identity allocation and the
numeric policy ids the kernel reports. The file is written whole to a temporary name and
renamed over the old one, so a crash leaves either the old or the new state. The BPF maps
are pinned in ``bpffs`` (``/sys/fs/bpf/andon/netpolicy`` by default) beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .labels import PolicyError

DEFAULT_STATE_DIR = Path("/var/lib/andon/netpolicy")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/andon/netpolicy")
STATE_FILE = "state.json"
FORMAT = 1


@dataclass
class NetpolicyState:
    """Plain data: what is applied. :meth:`load` / :meth:`save` round-trip it through JSON."""

    directory: Path
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> record
    policy_files: dict[str, str] = field(default_factory=dict)  # file name -> text, in apply order
    identities: dict[str, Any] = field(default_factory=dict)  # IdentityAllocator.to_dict()
    policy_ids: dict[str, int] = field(default_factory=dict)  # policy name -> id the kernel reports

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def load(cls, directory: str | Path) -> NetpolicyState:
        d = Path(directory)
        path = d / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(d)
        except (OSError, ValueError) as e:
            raise PolicyError(f"{path}: unreadable state ({e}); move it away to start afresh") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PolicyError(f"{path}: not an andon netpolicy state of format {FORMAT}")
        try:
            return cls(d, dict(data["endpoints"]), dict(data["policy_files"]), dict(data["identities"]),
                       {str(k): int(v) for k, v in data["policy_ids"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"{path}: malformed state ({e!r})") from None

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "endpoints": self.endpoints, "policy_files": self.policy_files,
                "identities": self.identities, "policy_ids": self.policy_ids}
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def policy_id(self, name: str) -> int:
        """A stable number for a policy name (1 up; 0 means 'no policy')."""
        if name not in self.policy_ids:
            self.policy_ids[name] = max(self.policy_ids.values(), default=0) + 1
        return self.policy_ids[name]
