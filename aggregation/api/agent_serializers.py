"""What site agents send and receive: configurations, weights and aggregate figures."""

from __future__ import annotations

import math
import re

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from fedhealth.api import parsers
from fedhealth.api.fields import FiniteFloatField, json_object_text
from fedhealth.ml.metrics import MAX_CALIBRATION_BINS, MAX_ROC_POINTS

MAX_METRICS = 64
# What a site may send of an evaluation's curves: the core thins what it computes to
# these (fedhealth.ml.metrics), so a conforming site never meets the limit.
MAX_CURVE_POINTS = MAX_ROC_POINTS
MAX_CALIBRATION_POINTS = MAX_CALIBRATION_BINS
# Metric names are identifiers (they become chart labels and column names).
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Ranges of the metrics the core computes (fedhealth.ml.metrics); anything else a site
# sends must be finite and within +-METRIC_MAGNITUDE.
PROBABILITY_METRICS = frozenset(
    {
        "accuracy",
        "balanced_accuracy",
        "auroc",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "brier",
    }
)
LOSS_METRICS = frozenset({"log_loss", "loss"})
MAX_LOSS = 1e6
# A version's mean log loss per row on the site's validation slice (from the logits,
# exact): what the best version is selected by, so bounded tighter than other losses.
# Clipped probabilities never score past 36.04 nats a row; 100 leaves room for exact
# logits, and caps what one site's report can add to a version's weighted loss.
MAX_VALIDATION_LOSS = 100.0
ROW_COUNTS = frozenset({"n", "validation_n"})
METRIC_MAGNITUDE = 1e12


def _metric_problem(key: str, v: float) -> str | None:
    if key in PROBABILITY_METRICS and not 0.0 <= v <= 1.0:
        return f"metric {key!r} must be between 0 and 1, got {v!r}"
    if key in LOSS_METRICS and not 0.0 <= v <= MAX_LOSS:
        return f"metric {key!r} must be between 0 and {MAX_LOSS:g}, got {v!r}"
    if key == "validation_loss" and not 0.0 <= v <= MAX_VALIDATION_LOSS:
        return (
            f"metric 'validation_loss' (mean log loss per row) must be between 0 and "
            f"{MAX_VALIDATION_LOSS:g}, got {v!r}"
        )
    if key in ROW_COUNTS and not (0 <= v <= 2**31 - 1 and float(v).is_integer()):
        return f"metric {key!r} must be a whole number of rows, got {v!r}"
    if abs(v) > METRIC_MAGNITUDE:
        return f"metric {key!r} is implausibly large: {v!r}"
    return None


class TrainingItemSerializer(serializers.Serializer):
    round = serializers.IntegerField()
    experiment = serializers.IntegerField()
    number = serializers.IntegerField()
    update = serializers.IntegerField()
    terms = serializers.DictField(
        help_text="The experiment's terms, as the site's admin accepted them: the agent's own "
        "policy (--consent-policy) checks them before it claims."
    )
    terms_sha256 = serializers.CharField()
    status = serializers.CharField()
    deadline = serializers.DateTimeField()
    secure = serializers.BooleanField(
        help_text="Secure aggregation: report with rounds/<id>/trained/ and keep the weights."
    )


class SecureItemSerializer(serializers.Serializer):
    round = serializers.IntegerField()
    experiment = serializers.IntegerField()
    number = serializers.IntegerField()
    phase = serializers.CharField()
    deadline = serializers.DateTimeField()


class EvaluationItemSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    experiment = serializers.IntegerField()
    version = serializers.IntegerField()
    sha256 = serializers.CharField()
    dataset = serializers.IntegerField(allow_null=True)
    test_fraction = serializers.FloatField()
    seed = serializers.IntegerField()
    validation_fraction = serializers.FloatField(
        help_text="Share of the training rows held out (seeded with seed): report the version's "
        "validation_loss and validation_n on it with the evaluation (0: none, omit them)."
    )


class ComparisonItemSerializer(serializers.Serializer):
    """A completed experiment waiting for this agent site's alone / global / personalised
    figures (``agent/experiments/<id>/comparison/``)."""

    experiment = serializers.IntegerField()
    model = serializers.IntegerField(help_text="The selected global version's id (its weights).")
    version = serializers.IntegerField(help_text="Its version number: send it back with the figures.")
    sha256 = serializers.CharField()
    dataset = serializers.IntegerField()
    mode = serializers.CharField(
        allow_null=True, help_text="Personalisation mode (fedper, finetune, ditto), or null: none."
    )
    test_fraction = serializers.FloatField()
    seed = serializers.IntegerField()
    config = serializers.DictField(
        help_text="rounds, model, train, seed, validation_fraction: the budget and seeds of the "
        "site's local-only and personalised models."
    )


class AssignmentsSerializer(serializers.Serializer):
    site = serializers.CharField()
    training = TrainingItemSerializer(many=True)
    secure = SecureItemSerializer(
        many=True, help_text="Secure rounds owing this site a protocol step."
    )
    evaluations = EvaluationItemSerializer(many=True)
    comparisons = ComparisonItemSerializer(
        many=True,
        help_text="Completed experiments waiting for this site's alone / global / personalised "
        "figures (after it evaluated every version).",
    )


class SplitSerializer(serializers.Serializer):
    test_fraction = serializers.FloatField()
    seed = serializers.IntegerField()
    validation_fraction = serializers.FloatField(
        required=False,
        help_text="Share of the training rows held out (seeded with seed) and never trained "
        "on; absent: none.",
    )


class TrainingTaskSerializer(serializers.Serializer):
    """Everything an agent needs to train a round exactly as a hosted worker would."""

    round = serializers.IntegerField()
    number = serializers.IntegerField()
    experiment = serializers.IntegerField()
    update = serializers.IntegerField()
    attempts = serializers.IntegerField()
    deadline = serializers.DateTimeField()
    dataset = serializers.IntegerField(
        allow_null=True, help_text="The dataset the experiment expects."
    )
    schema = serializers.DictField()
    model_config = serializers.DictField()
    train_config = serializers.DictField(
        help_text="Incl. the round seed and the strategy's extras."
    )
    normalizer = serializers.DictField()
    split = SplitSerializer()
    privacy = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="Record-level DP request (epsilon, delta, clip_norm, rounds), or null: the "
        "agent derives its own noise and enforces its own budget.",
    )
    secure_aggregation = serializers.BooleanField(
        help_text="True: never upload the weights; report with trained/ and take the protocol's steps."
    )


def metrics_from(value) -> dict[str, float]:
    """A JSON object (or its text) of metric name -> finite number."""
    if isinstance(value, str):
        try:
            value = parsers.loads(value)
        except parsers.JSONTooDeep as exc:
            raise serializers.ValidationError(str(exc)) from None
        except ValueError:
            raise serializers.ValidationError("must be a JSON object of numbers") from None
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise serializers.ValidationError(f"must be a JSON object of at most {MAX_METRICS} numbers")
    out = {}
    for key, v in value.items():
        if not isinstance(key, str) or not METRIC_NAME.match(key):
            raise serializers.ValidationError(
                "metric names must be 1-64 lower-case letters, digits or underscores"
            )
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise serializers.ValidationError(
                f"metric {key!r} must be a finite number (omit undefined ones), got {v!r}"
            )
        problem = _metric_problem(key, float(v))
        if problem:
            raise serializers.ValidationError(problem)
        out[key] = float(v)
    return out


@extend_schema_field({"type": "string", "description": "JSON object: metric name -> number"})
class MetricsJSONField(serializers.JSONField):
    """Metrics as JSON text inside a multipart form."""

    def to_internal_value(self, data):
        return metrics_from(data)


@extend_schema_field(
    {
        "type": "string",
        "description": "JSON object: the round's privacy spend from the agent's accountant "
        "(round, noise_multiplier, sample_rate, steps, delta, clip_norm, epsilon, epsilon_total)",
    }
)
class PrivacyReportField(serializers.JSONField):
    """The agent's report of its round's spend, as JSON text inside a multipart form."""

    def to_internal_value(self, data):
        return json_object_text(data, "a JSON object of the round's spend")


class UpdateUploadSerializer(serializers.Serializer):
    """A trained update, as multipart: safetensors weights and what produced them."""

    weights = serializers.FileField(
        allow_empty_file=True, help_text="safetensors bytes (float32 tensors)."
    )
    sha256 = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        required=False,
        help_text="SHA-256 (hex) of the weights bytes; or send the X-Content-SHA256 header.",
    )
    num_samples = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    loss = FiniteFloatField(required=False, allow_null=True)
    metrics = MetricsJSONField(
        required=False, help_text="Local model on the site's test split (JSON object)."
    )
    privacy = PrivacyReportField(
        required=False,
        help_text="Required in a differentially private experiment, refused otherwise: what "
        "the agent's own accountant says this round spent. Recorded and checked against the "
        "experiment's settings and the registered rows (a mismatch is flagged, not corrected).",
    )

    def validate_weights(self, value):
        if value.size > settings.FEDHEALTH_MAX_UPDATE_BYTES:
            raise serializers.ValidationError(
                f"the update is {value.size} bytes; the limit is {settings.FEDHEALTH_MAX_UPDATE_BYTES}"
            )
        return value


class FailureSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)
    code = serializers.ChoiceField(
        choices=["site_reported", "privacy_budget", "privacy_settings", "site_policy"],
        default="site_reported",
        help_text="Why, in the product's words: privacy_budget when the site's own budget "
        "refuses the round.",
    )


class BoundedListField(serializers.ListField):
    """A ListField that refuses an over-long list before validating its items."""

    def to_internal_value(self, data):
        if isinstance(data, list) and self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


def _unit_points(max_length: int, help_text: str) -> BoundedListField:
    return BoundedListField(
        child=FiniteFloatField(min_value=0, max_value=1), max_length=max_length, help_text=help_text
    )


def _non_decreasing(values: list[float]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


class RocSerializer(serializers.Serializer):
    fpr = _unit_points(
        MAX_CURVE_POINTS, f"False-positive rates, non-decreasing; at most {MAX_CURVE_POINTS}."
    )
    tpr = _unit_points(
        MAX_CURVE_POINTS, f"True-positive rates, non-decreasing; at most {MAX_CURVE_POINTS}."
    )

    def validate(self, attrs):
        if len(attrs["fpr"]) != len(attrs["tpr"]):
            raise serializers.ValidationError("fpr and tpr must have the same length")
        for name in ("fpr", "tpr"):
            if not _non_decreasing(attrs[name]):
                raise serializers.ValidationError(
                    {name: ["an ROC curve never goes back: values must not decrease"]}
                )
        return attrs


class CalibrationSerializer(serializers.Serializer):
    mean_predicted = _unit_points(
        MAX_CALIBRATION_POINTS, f"Per bin; at most {MAX_CALIBRATION_POINTS} bins."
    )
    fraction_positive = _unit_points(MAX_CALIBRATION_POINTS, "Per bin.")
    count = BoundedListField(
        child=FiniteFloatField(min_value=0, max_value=2**31 - 1), max_length=MAX_CALIBRATION_POINTS
    )

    def validate(self, attrs):
        if (
            not len(attrs["mean_predicted"])
            == len(attrs["fraction_positive"])
            == len(attrs["count"])
        ):
            raise serializers.ValidationError("calibration lists must have the same length")
        return attrs


class ConfusionSerializer(serializers.Serializer):
    tn = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    fp = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    fn = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    tp = serializers.IntegerField(min_value=0, max_value=2**31 - 1)


class CurvesSerializer(serializers.Serializer):
    roc = RocSerializer(required=False)
    calibration = CalibrationSerializer(required=False)
    confusion = ConfusionSerializer(required=False)


class EvaluationSerializer(serializers.Serializer):
    """A site's evaluation of a global model on its own test split: figures, no rows."""

    metrics = serializers.DictField(
        child=FiniteFloatField(), help_text="Metric name -> number (omit undefined)."
    )
    curves = CurvesSerializer(required=False)

    def validate_metrics(self, value):
        return metrics_from(value)


class EvaluationResultSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    site = serializers.CharField()
    recorded = serializers.BooleanField(
        help_text="False when this site had already reported (the first stands)."
    )


# -- secure aggregation (docs/secure-aggregation.md) ------------------------------------


class TrainedSerializer(serializers.Serializer):
    """A secure round's report that the site trained: figures only, the weights stay home."""

    num_samples = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    loss = FiniteFloatField(required=False, allow_null=True)
    metrics = serializers.DictField(
        required=False, help_text="Local model on the site's test split."
    )
    privacy = serializers.DictField(
        required=False,
        help_text="Required in a differentially private experiment, refused otherwise: the "
        "round's spend from the agent's own accountant (round, noise_multiplier, sample_rate, "
        "steps, delta, clip_norm, epsilon, epsilon_total), as with update/. Figures only.",
    )

    def validate_metrics(self, value):
        return metrics_from(value)


class SecureTaskSerializer(serializers.Serializer):
    round = serializers.IntegerField()
    phase = serializers.CharField(
        help_text="training (not open yet), advertise, share, masked, consistency, unmask, done, "
        "failed, or "
        "over (this site has no part: forget the round)."
    )
    deadline = serializers.DateTimeField(
        allow_null=True, help_text="The open phase closes then; who has not posted is dropped."
    )
    threshold = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(help_text="active or dropped.")
    last_phase = serializers.CharField(
        help_text="The last phase whose message from this site counted."
    )
    dropped_in = serializers.CharField()
    protocol_id = serializers.CharField(
        help_text="This site's name in the round's protocol (random, fresh each round): the "
        "roster, shares and survivor lists name every site by such an id, never by its slug."
    )
    task = serializers.DictField(
        allow_null=True,
        help_text="This site's step now (the core's site_step input: the round's context, the "
        "roster, the ciphertexts addressed to this site, or the unmask request), or null. "
        "Under site-level DP the masked task also carries `site_dp` (noise_multiplier, "
        "clip_norm, threshold, denominator, ...): the noise share the agent is asked to add "
        "before masking; the agent checks it against the target it agreed to.",
    )


class SecureMessageSerializer(serializers.Serializer):
    """A protocol message as the core's wire format writes it (``fedhealth.ml.secagg.wire``):
    ``kind``, ``ctx`` and the step's fields, bytes as standard base64. Checked strictly by
    the protocol (kind, fields, types, base64, round, sender, length) before it counts."""

    kind = serializers.CharField()
    ctx = serializers.DictField()
    site = serializers.CharField()


class SecurePostedSerializer(serializers.Serializer):
    round = serializers.IntegerField()
    result = serializers.CharField(
        help_text="posted, or replay (already counted: nothing changed)."
    )
