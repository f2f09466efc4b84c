"""How often each kind of work is tried before it is given up, and how long to wait
between tries. Set once, here; the tasks (aggregation/tasks.py) and the sweeper read
these, so a failure always ends in a terminal state with its reason.

What is worth another try is a *transient* failure: the database or the broker briefly
unreachable, a timeout. Anything else (bad data, a bug, a missing file) is *permanent*
and ends the work at once: trying again would fail the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, BrokerError, ConnectionError, TimeoutError,
)


@dataclass(frozen=True)
class Budget:
    """``attempts`` tries in all (the first included). After failed try ``n`` the
    next waits between half and all of ``min(max_wait, first_wait * 2**(n-1))``
    seconds: exponential backoff, with jitter so that many sites failing at once do
    not all come back in the same second."""

    attempts: int
    first_wait: float
    max_wait: float

    def wait(self, failed_try: int) -> float:
        ceiling = min(self.max_wait, self.first_wait * 2 ** max(0, failed_try - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def exhausted(self, tries: int) -> bool:
        return tries >= self.attempts


# A site's training: waits of 5-10 s then 10-20 s, so at most ~30 s of waiting over
# 3 tries. ClientUpdate.attempts counts every try, including the sweeper's re-sends of
# work quiet for FEDHEALTH_STALE_SECONDS (5 min) and redeliveries after a worker died:
# 3 tries in all is still well inside a round's default 30-minute deadline.
TRAIN_SITE = Budget(attempts=3, first_wait=10, max_wait=60)
# Aggregation: waits of 2.5-5, 5-10 and 10-20 s, at most ~35 s over 4 tries
# (Round.aggregation_attempts), then the round fails and the previous model stays.
AGGREGATE_ROUND = Budget(attempts=4, first_wait=5, max_wait=60)
# A hosted site's evaluation of a version: as training, 3 tries over at most ~30 s
# of waiting (EvaluationAttempt.attempts), then it is recorded as failed.
EVALUATE_SITE = Budget(attempts=3, first_wait=10, max_wait=60)
# A hosted site's end-of-experiment comparison (alone / global / personalised): as
# evaluation, 3 tries (SiteComparison.attempts), then it is recorded as failed.
COMPARE_SITE = Budget(attempts=3, first_wait=10, max_wait=60)
# The sweeper itself is never retried: Celery beat runs it again every
# FEDHEALTH_SWEEP_SECONDS, which is its backoff. One item failing (logged) does not
# stop it from sweeping the others.
SWEEP = Budget(attempts=1, first_wait=0, max_wait=0)
