"""The site's own policy over which experiments its agent trains for.

The server asks a site's admin to accept an experiment's terms on the web; this file is
the site's second lock, on its own machine: before claiming any round, the agent checks
the terms the server sends with the assignment against the policy, and refuses (a
failure with code ``site_policy`` and the reason, which the site sees) whatever the
server says. JSON or TOML (``tomllib``), e.g.::

    {"require_secure_aggregation": true, "max_rounds": 50, "min_sites": 3,
     "require_dp": false, "max_epsilon": 5}

``min_sites``: the experiment's quorum (sites whose updates every aggregated round
needs) must be at least this. ``max_epsilon``: record-level DP on with at most this
epsilon (so it also refuses an experiment without DP).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file, key and value."""


@dataclass(frozen=True)
class LocalPolicy:
    require_secure_aggregation: bool = False
    max_rounds: int | None = None
    min_sites: int | None = None
    require_dp: bool = False
    max_epsilon: float | None = None
    max_local_epochs: int | None = None

    @classmethod
    def from_dict(cls, raw: Any, source: str = "policy") -> LocalPolicy:
        if not isinstance(raw, dict):
            raise PolicyError(f"{source}: expected a table of settings, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise PolicyError(f"{source}: unknown setting {key!r} (known: {', '.join(known)})")
            if key.startswith("require_"):
                if not isinstance(value, bool):
                    raise PolicyError(f"{source}: {key} must be true or false, not {value!r}")
            elif key == "max_epsilon":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value <= 0
                ):
                    raise PolicyError(f"{source}: {key} must be a positive number, not {value!r}")
                value = float(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(
                    f"{source}: {key} must be a whole number of at least 1, not {value!r}"
                )
            values[key] = value
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> LocalPolicy:
        """Read a ``.toml`` file with tomllib, anything else as JSON."""
        try:
            text = path.read_text(encoding="utf-8")
            raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise PolicyError(f"{path}: {exc}") from exc
        return cls.from_dict(raw, str(path))

    def refusals(self, terms: dict[str, Any] | None) -> list[str]:
        """Why this site refuses an experiment with these ``terms`` (empty: it may train)."""
        if not isinstance(terms, dict):
            return [
                "the server sent no terms with the assignment, so this site's policy cannot be checked"
            ]
        out: list[str] = []
        privacy = terms.get("privacy") or {}
        dp_on = privacy.get("mode") == "record"
        if self.require_secure_aggregation and not terms.get("secure_aggregation"):
            out.append("secure aggregation is off, and this site's policy requires it")
        if self.max_rounds is not None and int(terms.get("rounds", 0)) > self.max_rounds:
            out.append(
                f"{terms.get('rounds')} rounds, more than this site's policy allows ({self.max_rounds})"
            )
        if (
            self.max_local_epochs is not None
            and int(terms.get("local_epochs", 0)) > self.max_local_epochs
        ):
            out.append(
                f"{terms.get('local_epochs')} local epochs per round, more than this site's policy "
                f"allows ({self.max_local_epochs})"
            )
        if self.min_sites is not None and int(terms.get("quorum", 0)) < self.min_sites:
            out.append(
                f"the experiment needs only {terms.get('quorum')} site(s) per round; this site's policy "
                f"requires at least {self.min_sites}"
            )
        if self.require_dp and not dp_on:
            out.append("differential privacy is off, and this site's policy requires it")
        if self.max_epsilon is not None:
            epsilon = privacy.get("epsilon")
            if not dp_on or epsilon is None:
                out.append(
                    f"no differential privacy (epsilon unbounded); this site's policy allows at most {self.max_epsilon:g}"
                )
            elif float(epsilon) > self.max_epsilon:
                out.append(
                    f"epsilon {float(epsilon):g}, more than this site's policy allows ({self.max_epsilon:g})"
                )
        return out


def terms_sha256(terms: dict[str, Any]) -> str:
    """The hash the server sends with the terms (canonical JSON: sorted keys, no spaces)."""
    canonical = json.dumps(terms, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
