"""Why something failed, in the product's own words.

Every failure anyone can see (an update, a round, an experiment, an evaluation) carries
one of these codes and its text, never raw exception text or server paths: those go to
the operator's logs. An agent's own free-text explanation is kept apart
(``ClientUpdate.site_note``), length-limited, and shown to that site only.
"""

from __future__ import annotations

from django.db import models

# An agent's free-text note about its own failure: kept short, shown only to its site.
SITE_NOTE_MAX = 500


class Reason(models.TextChoices):
    # A site's part in a round
    MISSED_DEADLINE = "missed_deadline", "The site did not report before the round's deadline."
    NO_WORKER = "no_worker", "No worker took the site's work before the round's deadline."
    DATA_UNUSABLE = "data_unusable", "The site's dataset could not be read or did not validate."
    DATA_CHANGED = "data_changed", "The site's dataset file changed or disappeared after it was registered."
    TRAINING_FAILED = "training_failed", "Local training failed at the site."
    SITE_REPORTED = "site_reported", "The site reported that it could not train this round."
    UPDATE_INVALID = "update_invalid", "The update did not fit the model (names, shapes, type or non-finite values)."
    SAMPLE_COUNT = "sample_count", "The update claimed more training rows than the site holds."
    IMPLAUSIBLE = "implausible", "The update's weights were outside any plausible range."
    OUTLIER = "outlier", "The update was far from the global model compared with the round's other updates."
    UNREADABLE = "unreadable", "The stored update could not be read (missing or corrupted)."
    DUPLICATE = "duplicate", "A second update from the same site in one round."
    NOT_SELECTED = "not_selected", "A valid update the robust strategy (Krum) did not select this round."
    EXPERIMENT_ENDED = "experiment_ended", "The experiment ended before the site reported."
    ATTEMPTS_EXHAUSTED = "attempts_exhausted", "The work failed on every attempt and was given up."
    PRIVACY_BUDGET = "privacy_budget", "Another round would exceed the site's privacy budget for this dataset; the site did not train."
    PRIVACY_SETTINGS = "privacy_settings", "The experiment's privacy settings cannot be met at this site (delta must be below 1 / its training rows)."
    SECAGG_DROPPED = "secagg_dropped", "The site did not take its step of the secure-aggregation protocol before the phase's deadline; it was counted as dropped."
    WITHDRAWN = "withdrawn", "The site withdrew from the experiment (or withdrew the dataset it took part with); it is not asked again."
    NO_CONSENT = "no_consent", "The site has not accepted the experiment's current terms, so it was not trained on."
    SITE_POLICY = "site_policy", "The site's own policy refused this experiment's terms."
    # A round or an experiment
    QUORUM = "quorum", "Too few sites' updates were usable to meet the experiment's quorum."
    AGGREGATE_INVALID = "aggregate_invalid", "The combined model was not finite or not plausible; the previous global model is kept."
    AGGREGATION_FAILED = "aggregation_failed", "Aggregation failed after repeated attempts; the previous global model is kept."
    ROUND_FAILED = "round_failed", "A round failed."
    SECAGG_THRESHOLD = "secagg_threshold", "Too few sites completed the secure-aggregation protocol (below its threshold): the round failed closed and the previous global model is kept."
    SECAGG_FAILED = "secagg_failed", "The secure-aggregation protocol could not unmask the sum (a message did not check out): the round failed closed and the previous global model is kept."
    EARLY_STOPPED = "early_stopped", "The experiment stopped early: the sites' weighted validation loss had not improved for the rounds its early stopping allows."
    # An evaluation
    EVALUATION_FAILED = "evaluation_failed", "The site could not evaluate this model version."
    # A site's end-of-experiment comparison (alone / global / personalised)
    COMPARISON_FAILED = "comparison_failed", "The site could not train its local-only and personalised models."
    INTERNAL = "internal", "An internal error stopped this work; the operator's logs have the details."


def text(code: str, detail: str = "") -> str:
    """The product's message for ``code``, with an optional product-made ``detail``
    (never exception text: callers build it from numbers and names they control)."""
    try:
        base = Reason(code).label
    except ValueError:
        base = Reason.INTERNAL.label
    return f"{base} {detail}".strip() if detail else str(base)


def clean_note(note: str) -> str:
    """An agent's free text, made safe to store: control characters dropped, length capped."""
    kept = "".join(ch for ch in note if ch.isprintable() or ch == " ")
    return kept[:SITE_NOTE_MAX]
