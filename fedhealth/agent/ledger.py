"""The agent's own privacy ledger and budget, on the hospital's machine.

The server's privacy settings are a request. The agent derives each round's spend
itself (``fedhealth.ml.sitework.privacy_spend``: its own rows, the accountant), composes
it with every earlier round recorded here for the same rows, and refuses to train when
the result would exceed the budget its operator set (``--privacy-budget``), whatever
the server asks. The ledger is a JSON-lines file in the agent's state folder, one line
per round, written and fsynced *before* training starts: a crash can only over-count.
Rows are identified by a fingerprint of their values, so a renamed or re-registered
file keeps its spend and a different file starts its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fedhealth.ml.privacy import RoundSpend, composed_epsilon

__all__ = ["AgentLedger", "BudgetExceeded", "fingerprint"]

LEDGER_FILE = "privacy-ledger.jsonl"
_SLACK = 1e-9


def fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the rows' values: the identity of the patients a spend is about."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(X, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.float32).tobytes())
    return digest.hexdigest()


class BudgetExceeded(Exception):
    """The next round would take these rows past the agent's budget."""

    def __init__(self, spent: float, after: float, budget: float) -> None:
        self.spent, self.after, self.budget = spent, after, budget
        super().__init__(spent, after, budget)

    def __str__(self) -> str:
        return (
            f"privacy budget: spent epsilon {self.spent:.3f} of {self.budget:.3f} on these "
            f"rows; this round would reach {self.after:.3f}, so the site does not train"
        )


class AgentLedger:
    """Reads and appends ``<state_dir>/privacy-ledger.jsonl``."""

    def __init__(self, state_dir: Path, *, budget: float | None = None) -> None:
        if budget is not None and not budget >= 0:
            raise ValueError(f"privacy budget must be >= 0, got {budget}")
        self.path = Path(state_dir) / LEDGER_FILE
        self.budget = budget

    def spends(self, rows: str) -> list[RoundSpend]:
        """Every recorded round on the rows with fingerprint ``rows``."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry["rows"] == rows:
                found.append(RoundSpend.from_dict(entry["spend"]))
        return found

    def spent(self, rows: str) -> float:
        return composed_epsilon(self.spends(rows))

    def reserve(self, rows: str, spend: RoundSpend, *, experiment: int) -> float:
        """Check the round against the budget, then record it durably; returns the new total.

        Raises BudgetExceeded (nothing recorded) past the budget.
        """
        history = self.spends(rows)
        after = composed_epsilon([*history, spend])
        if self.budget is not None and after > self.budget + _SLACK:
            raise BudgetExceeded(composed_epsilon(history), after, self.budget)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"rows": rows, "experiment": experiment, "spend": spend.to_dict()})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return after
