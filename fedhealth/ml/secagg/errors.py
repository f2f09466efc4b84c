"""Why a secure-aggregation step was refused, as a code plus a message a person can read.

Every refusal is a ``SecAggError``: the caller records ``code`` (stable, machine-readable)
and shows ``message`` (names the site, stage and value). Nothing here ever carries key
material or a vector's contents.
"""

from __future__ import annotations


class SecAggError(Exception):
    """A protocol step was refused; ``code`` says which rule, ``message`` says why."""

    code = "secagg_refused"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BelowThreshold(SecAggError):
    """Fewer than ``t`` sites remain (or hold shares) for a stage: the round fails closed."""

    code = "secagg_below_threshold"


class ProtocolViolation(SecAggError):
    """A message broke the protocol: wrong stage, round, sender, recipient, length, replay."""

    code = "secagg_protocol"
