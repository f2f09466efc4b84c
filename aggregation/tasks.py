"""Celery tasks: thin wrappers that load by id, call one service, and map what went
wrong to retry, ignore or give up.

What to send next, and to which queue, is decided in ``aggregation.dispatch``; how
often each kind of work is tried, in ``aggregation.budgets``. A transient failure (the
database or broker briefly unreachable) is retried with backoff until its budget is
spent; anything else ends the work at once. Either way it ends in a terminal state
with a reason code (update failed, round failed, evaluation failed); the exception
itself goes to the log only. Tasks are safe to run twice: every state change they
make is guarded in the database.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task
from django.core.exceptions import ObjectDoesNotExist

from . import services, sweeper
from .budgets import (
    AGGREGATE_ROUND,
    COMPARE_SITE,
    EVALUATE_SITE,
    SWEEP,
    TRAIN_SITE,
    TRANSIENT,
    Budget,
)
from .models import ClientUpdate
from .reasons import Reason
from .services import failures, secure_round, site_comparison
from .services.sitework import SiteDataError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every task below is idempotent (guarded in the database), so a message whose worker
# died is redelivered rather than lost; ``bind`` gives the task its retry count.
GUARDED = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}


def _unless_gone(work: Callable[..., T]) -> Callable[..., T | str]:
    """A message can outlive its object (an experiment deleted, a database reset):
    there is nothing to do then, and retrying would not change that."""

    @functools.wraps(work)
    def run(task: Any, *args: Any) -> T | str:
        try:
            return work(task, *args)
        except ObjectDoesNotExist as exc:
            log.warning("%s%s: %s; nothing to do", work.__name__, args, exc)
            return "gone"

    return run


def _retry_or_give_up(task: Any, budget: Budget, tries: int, exc: BaseException, give_up: Callable[[], Any]) -> str:
    """After a transient failure on try ``tries``: send the task again after the
    budget's backoff, or give the work up once the budget is spent."""
    name = task.name
    if budget.exhausted(tries):
        log.error("%s%s: transient failure on try %d of %d; giving up", name, task.request.args, tries,
                  budget.attempts, exc_info=exc)
        give_up()
        return "given up"
    log.warning("%s%s: transient failure on try %d of %d; trying again", name, task.request.args, tries,
                budget.attempts, exc_info=exc)
    raise task.retry(exc=exc, countdown=budget.wait(tries), max_retries=None)


# -- local training at a site -----------------------------------------------------

@shared_task(name="aggregation.train_site", max_retries=TRAIN_SITE.attempts - 1, **GUARDED)
@_unless_gone
def train_site(self, update_id: int) -> str:
    try:
        return services.train_hosted_update(update_id)
    except services.UpdateRefused as exc:  # the server's checks refused the site's own update
        log.warning("train_site(%s): update refused: %s", update_id, exc)
        services.fail_update(update_id, getattr(exc, "code", Reason.UPDATE_INVALID))
        return "failed: refused"
    except ObjectDoesNotExist:
        raise
    except TRANSIENT as exc:
        # ClientUpdate.attempts counts every claim (retries, redeliveries, re-sends).
        tries = max(self.request.retries + 1, _update_tries(update_id))
        return _retry_or_give_up(
            self, TRAIN_SITE, tries, exc, lambda: services.fail_update(update_id, Reason.ATTEMPTS_EXHAUSTED)
        )
    except SiteDataError as exc:
        log.exception("train_site(%s): the site's data cannot be used", update_id)
        services.fail_update(update_id, exc.code)
        return "failed: site data"
    except Exception:
        log.exception("train_site(%s): permanent failure", update_id)
        services.fail_update(update_id, Reason.INTERNAL)
        return "failed"


def _update_tries(update_id: int) -> int:
    try:
        return ClientUpdate.objects.values_list("attempts", flat=True).get(pk=update_id)
    except TRANSIENT:
        return 0


# -- aggregation on the server ----------------------------------------------------

@shared_task(name="aggregation.aggregate_round", max_retries=AGGREGATE_ROUND.attempts - 1, **GUARDED)
@_unless_gone
def aggregate_round(self, round_id: int) -> int | str | None:
    if secure_round.is_secure(round_id):
        # The protocol's phases move on by the sites' messages and their deadlines: here,
        # a deadline check (and a re-send of lost steps) each time the sweeper calls.
        try:
            version = secure_round.advance(round_id)
        except TRANSIENT:
            log.warning("aggregate_round(%s): transient failure; the sweeper calls again", round_id, exc_info=True)
            return "retry later"
        return version.version if version else None
    tries = failures.begin_aggregation(round_id)
    if not tries:
        return "skipped: not aggregating"
    if tries > AGGREGATE_ROUND.attempts:  # redelivered or re-sent past the budget
        failures.give_up_aggregation(round_id, Reason.AGGREGATION_FAILED)
        return "given up"
    try:
        version = services.aggregate_round(round_id)
    except TRANSIENT as exc:
        return _retry_or_give_up(
            self, AGGREGATE_ROUND, tries, exc,
            lambda: failures.give_up_aggregation(round_id, Reason.AGGREGATION_FAILED),
        )
    except ObjectDoesNotExist:
        raise
    except Exception:
        # A bug, a strategy refusing its input, a missing or corrupt global model: the
        # same would happen again. The round fails now; the previous model stays.
        log.exception("aggregate_round(%s): permanent failure on try %d", round_id, tries)
        failures.give_up_aggregation(round_id, Reason.INTERNAL)
        return "failed"
    return version.version if version else None


# -- secure aggregation: a hosted site's step ------------------------------------------

@shared_task(name="aggregation.secure_site_step", max_retries=TRAIN_SITE.attempts - 1, **GUARDED)
@_unless_gone
def secure_site_step(self, round_id: int, site_id: int) -> str:
    """A step the site cannot take is not retried: the site counts as dropped at the
    phase's deadline (the protocol recovers, or the round fails closed)."""
    try:
        return secure_round.run_site_phase(round_id, site_id)
    except ObjectDoesNotExist:
        raise
    except TRANSIENT as exc:
        return _retry_or_give_up(self, TRAIN_SITE, self.request.retries + 1, exc, lambda: None)
    except Exception:
        log.exception("secure_site_step(%s, %s): the site's step failed; it will count as dropped", round_id, site_id)
        return "failed"


# -- federated evaluation at each site ----------------------------------------------

@shared_task(name="aggregation.evaluate_site", max_retries=EVALUATE_SITE.attempts - 1, **GUARDED)
@_unless_gone
def evaluate_site(self, version_id: int, site_id: int) -> str:
    tries = failures.begin_evaluation(version_id, site_id)
    if not tries:
        return "skipped: evaluated or given up"
    if tries > EVALUATE_SITE.attempts:
        failures.fail_evaluation(version_id, site_id, Reason.ATTEMPTS_EXHAUSTED)
        return "given up"
    try:
        return services.evaluate_hosted(version_id, site_id)
    except TRANSIENT as exc:
        return _retry_or_give_up(
            self, EVALUATE_SITE, tries, exc,
            lambda: failures.fail_evaluation(version_id, site_id, Reason.ATTEMPTS_EXHAUSTED),
        )
    except ObjectDoesNotExist:
        raise
    except SiteDataError as exc:  # missing, changed or invalid: DATA_UNUSABLE or DATA_CHANGED
        log.exception("evaluate_site(%s, %s): the site's data cannot be used", version_id, site_id)
        failures.fail_evaluation(version_id, site_id, exc.code)
        return "failed: site data"
    except Exception:
        log.exception("evaluate_site(%s, %s): permanent failure", version_id, site_id)
        failures.fail_evaluation(version_id, site_id, Reason.EVALUATION_FAILED)
        return "failed"


# -- the end of an experiment: alone / global / personalised at each hosted site --------

# While the last version's evaluations are open (at most FEDHEALTH_EVALUATION_GRACE_SECONDS,
# an hour by default) the comparison waits, asking again this often; waiting is not a try.
COMPARISON_WAIT_SECONDS = 60

@shared_task(name="aggregation.compare_site", max_retries=COMPARE_SITE.attempts - 1, **GUARDED)
@_unless_gone
def compare_site(self, comparison_id: int) -> str:
    try:
        ready = site_comparison.ready_to_compare(comparison_id)
    except SiteDataError as exc:
        site_comparison.fail_comparison(comparison_id, exc.code)
        return "failed: site data"
    if not ready:  # other sites' evaluations of the last version are still coming
        raise self.retry(countdown=COMPARISON_WAIT_SECONDS, max_retries=None)
    tries = site_comparison.begin_comparison(comparison_id)
    if not tries:
        return "skipped: compared or given up"
    if tries > COMPARE_SITE.attempts:
        site_comparison.fail_comparison(comparison_id, Reason.ATTEMPTS_EXHAUSTED)
        return "given up"
    try:
        return site_comparison.compare_hosted(comparison_id)
    except TRANSIENT as exc:
        return _retry_or_give_up(
            self, COMPARE_SITE, tries, exc,
            lambda: site_comparison.fail_comparison(comparison_id, Reason.ATTEMPTS_EXHAUSTED),
        )
    except ObjectDoesNotExist:
        raise
    except SiteDataError as exc:
        log.exception("compare_site(%s): the site's data cannot be used", comparison_id)
        site_comparison.fail_comparison(comparison_id, exc.code)
        return "failed: site data"
    except Exception:
        log.exception("compare_site(%s): permanent failure", comparison_id)
        site_comparison.fail_comparison(comparison_id, Reason.COMPARISON_FAILED)
        return "failed"


# -- the sweeper (Celery beat) ------------------------------------------------------

@shared_task(name="aggregation.sweep", max_retries=SWEEP.attempts - 1)
def sweep() -> dict[str, int]:
    """Move on whatever a crash or a lost message left behind (see aggregation.sweeper).
    Never retried: beat runs it again in FEDHEALTH_SWEEP_SECONDS."""
    try:
        return sweeper.sweep()
    except TRANSIENT:
        log.exception("sweep: transient failure; the next sweep tries again")
        return {}
