"""Representations of experiments and their records: aggregate figures only."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from aggregation import policy
from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.policy import CONFIG_FIELDS
from aggregation.services.creation import (
    BOUNDS,
    DP_MODES,
    EARLY_STOPPING,
    MAX_DESCRIPTION_LENGTH,
    MAX_HIDDEN_LAYERS,
    MAX_LAYER_WIDTH,
    MAX_NAME_LENGTH,
    MAX_SITES,
    PERSONALIZE_CHOICES,
    ExperimentInvalid,
    validate_experiment,
)
from aggregation.services.predict import MAX_BATCH
from fedhealth.api.fields import FiniteFloatField, MetricsField, ReadJSONField, reject_nul
from fedhealth.ml.metrics import json_safe
from fedhealth.ml.schema import Schema, SchemaError
from fedhealth.ml.strategies import STRATEGIES


class PolicySerializer(serializers.Serializer):
    """A read serializer whose output is the policy's representation for the caller
    (aggregation/policy); its declared fields document that representation."""

    represent = None  # policy function (viewer, obj) -> dict

    def to_representation(self, instance):
        request = self.context.get("request")
        # No request, no viewer: nothing of any site (fail closed).
        viewer = policy.viewer_of(request.user) if request is not None else policy.Viewer(policy.NOBODY)
        return json_safe(self.show(viewer, instance))

    def show(self, viewer: policy.Viewer, instance) -> dict | None:
        return type(self).represent(viewer, instance)


class ParticipantSerializer(serializers.Serializer):
    site = serializers.CharField(source="site.slug")
    dataset = serializers.IntegerField(source="dataset_id", allow_null=True)
    consent = serializers.ChoiceField(
        choices=["invited", "accepted", "declined", "withdrawn", "terms_changed"],
        help_text="The site's decision; terms_changed: it accepted terms that changed since.",
    )
    decided_at = serializers.DateTimeField(allow_null=True)
    decline_reason = serializers.CharField(allow_blank=True)
    withdrawn_from_round = serializers.IntegerField(allow_null=True)


class ExperimentSerializer(PolicySerializer, serializers.ModelSerializer):
    represent = policy.experiment
    participants = ParticipantSerializer(
        many=True, read_only=True, help_text="Every site for a coordinator; a site sees only its own."
    )
    num_sites = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="How many sites take part (null for a site while the experiment is a draft). "
        "With fewer than three, each site can infer the other's feature means and standard "
        "deviations from the normalizer and the rounds' sample counts.",
    )
    failure_code = serializers.CharField(read_only=True, help_text="aggregation.reasons code, or empty.")
    schema = ReadJSONField()
    strategy_params = ReadJSONField()
    normalizer = ReadJSONField(allow_null=True, help_text="Global mean/std, fixed at start.")
    hidden_layers = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    current_round = serializers.IntegerField(read_only=True, allow_null=True)
    privacy = serializers.ListField(
        child=serializers.DictField(),
        read_only=True,
        help_text="With record-level DP: each site's epsilon after each round (its rounds so far "
        "composed, at delta), the noise multiplier and clip it trained with. A coordinator sees "
        "every site's, a site its own.",
    )
    finish_code = serializers.CharField(
        read_only=True, help_text="Why a completed experiment finished before its last round "
        "(early_stopped), or empty.",
    )
    stopped_after_round = serializers.IntegerField(read_only=True, allow_null=True)
    comparison = serializers.DictField(
        read_only=True, allow_null=True,
        help_text="Alone / global / personalised on the site's own test rows, once the experiment "
        "completed. A site: its own row (status, mode, version, alone, global, personalized, "
        "global_worse_than_alone, personalized_beats_alone). The coordinator: aggregates only "
        "(reported, mean per kind with defined counts, personalized_beats_alone of "
        "personalized_compared, global_worse_than_alone), withheld below "
        "FEDHEALTH_MIN_FIGURE_SITES reports.",
    )

    class Meta:
        model = Experiment
        fields = [
            "id",
            "name",
            "description",
            "status",
            "failure_reason",
            "failure_code",
            "schema",
            *CONFIG_FIELDS,
            "participants",
            "num_sites",
            "normalizer",
            "current_round",
            "privacy",
            "finish_code",
            "stopped_after_round",
            "comparison",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


def _bounded(name: str) -> serializers.Field:
    """A number field whose minimum/maximum (and OpenAPI's) are the creation service's."""
    bound = BOUNDS[name]
    if bound.integer:
        return serializers.IntegerField(min_value=int(bound.low), max_value=int(bound.high), required=False)
    return FiniteFloatField(min_value=bound.low, max_value=bound.high, required=False)


class ExperimentCreateSerializer(serializers.Serializer):
    """A new draft experiment over the given datasets (one per site).

    The fields parse and document; ``aggregation.services.creation`` decides (the web
    form and the admin call it too), so every door accepts and refuses the same drafts.
    """

    name = serializers.CharField(max_length=MAX_NAME_LENGTH)
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_LENGTH, required=False, allow_blank=True, trim_whitespace=False
    )
    datasets = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        min_length=1,
        max_length=MAX_SITES,
        help_text="Ready datasets, one per participating site.",
    )
    schema = serializers.JSONField(
        required=False,
        help_text="Feature schema: features (name, unit, expected range min/max: flagged and kept; hard "
        "limits hard_min/hard_max: impossible values, a dataset holding one cannot join), label, and the "
        "positive class {value, name, other}. The default vitals schema if absent.",
    )
    hidden_layers = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_LAYER_WIDTH),
        max_length=MAX_HIDDEN_LAYERS,
        required=False,
    )
    strategy = serializers.ChoiceField(choices=list(STRATEGIES), default="fedavg")
    strategy_params = serializers.DictField(child=FiniteFloatField(), required=False)
    num_rounds = _bounded("num_rounds")
    local_epochs = _bounded("local_epochs")
    batch_size = _bounded("batch_size")
    lr = _bounded("lr")
    weight_decay = _bounded("weight_decay")
    dropout = _bounded("dropout")
    min_sites = _bounded("min_sites")
    fraction_fit = _bounded("fraction_fit")
    round_timeout = _bounded("round_timeout")
    test_fraction = _bounded("test_fraction")
    validation_fraction = _bounded("validation_fraction")
    seed = _bounded("seed")
    outlier_factor = _bounded("outlier_factor")
    dp_mode = serializers.ChoiceField(
        choices=list(DP_MODES),
        required=False,
        help_text="record: DP-SGD at each site, with each site's own ledger and budget. site: "
        "DP-FedAvg (each site's whole contribution; at least 3 sites, fedavg or fedprox; with a "
        "handful of sites its epsilon is large, which is why record is the default).",
    )
    dp_epsilon = _bounded("dp_epsilon")
    dp_delta = FiniteFloatField(
        required=False,
        allow_null=True,
        help_text="Below 1/rows at every site; null: 1/(10 x rows) at each site. Site-level: "
        "below 1/sites; null: 1e-05.",
    )
    dp_clip_norm = _bounded("dp_clip_norm")
    secure_aggregation = serializers.BooleanField(
        required=False,
        help_text="The server learns only the sum of the sites' updates (hosted sites and agents "
        "alike; not with robust strategies, which compare each site's update).",
    )
    secagg_threshold = serializers.IntegerField(
        required=False, allow_null=True, min_value=2,
        help_text="Sites that must complete each phase; null: a majority of the sites, at least 2. "
        "Below it a round fails closed (the previous model stays).",
    )

    personalize = serializers.ChoiceField(
        choices=[*PERSONALIZE_CHOICES, "on"], required=False,
        help_text="At the end, each site builds its own model from the best global version "
        "(fedper, finetune or ditto; on: fedper, the measured best) and reports alone / global / "
        "personalised on its own test rows. off by default.",
    )
    early_stopping = serializers.IntegerField(
        required=False, allow_null=True,
        min_value=int(EARLY_STOPPING.low), max_value=int(EARLY_STOPPING.high),
        help_text="Finish once the sites' weighted validation loss has not improved for this many "
        "rounds (needs validation_fraction above 0); null: off.",
    )

    def validate_schema(self, value):
        reject_nul(value, "schema")
        try:
            return Schema.from_dict(value).to_dict()
        except SchemaError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs):
        try:
            return validate_experiment(**attrs)
        except ExperimentInvalid as exc:
            raise serializers.ValidationError(exc.errors) from None


class RoundSerializer(PolicySerializer, serializers.ModelSerializer):
    represent = policy.round_
    metrics = ReadJSONField(
        help_text="A coordinator: train_loss, num_samples, accepted and rejected sites. A site: "
        "whether its own update was accepted or rejected and why; train_loss when at least "
        "FEDHEALTH_MIN_FIGURE_SITES updates were combined; num_samples when, besides, every "
        "participant was accepted."
    )
    model_version = serializers.SerializerMethodField()
    failure_code = serializers.CharField(read_only=True, help_text="aggregation.reasons code, or empty.")
    secure = serializers.JSONField(
        read_only=True, allow_null=True,
        help_text="Secure aggregation only: the protocol's phase and its deadline, the threshold and "
        "each site's last phase (a site sees its own; the coordinator every site and how many dropped).",
    )

    class Meta:
        model = Round
        fields = [
            "id",
            "experiment",
            "number",
            "status",
            "deadline",
            "started_at",
            "closed_at",
            "completed_at",
            "metrics",
            "failure_reason",
            "failure_code",
            "model_version",
            "secure",
        ]
        read_only_fields = fields

    def get_model_version(self, obj: Round) -> int | None:
        version = getattr(obj, "model_version", None)
        return version.pk if version else None


class UpdateSerializer(PolicySerializer, serializers.ModelSerializer):
    represent = policy.update
    site = serializers.CharField(source="site.slug", read_only=True)
    error = serializers.CharField(read_only=True, help_text="The product's message for error_code (aggregation.reasons).")
    error_code = serializers.CharField(read_only=True, help_text="aggregation.reasons code, or empty.")
    site_note = serializers.CharField(read_only=True, help_text="The site agent's own note: shown to its own site only.")
    experiment = serializers.IntegerField(source="round.experiment_id", read_only=True)
    round_number = serializers.IntegerField(source="round.number", read_only=True)
    metrics = MetricsField(help_text="The site's local model on its own test split.")
    loss = serializers.SerializerMethodField()

    class Meta:
        model = ClientUpdate
        fields = [
            "id",
            "experiment",
            "round",
            "round_number",
            "site",
            "status",
            "num_samples",
            "loss",
            "metrics",
            "sha256",
            "error",
            "error_code",
            "site_note",
            "attempts",
            "source",
            "created_at",
            "started_at",
            "received_at",
        ]
        read_only_fields = fields

    def get_loss(self, obj: ClientUpdate) -> float | None:
        return MetricsField().to_representation({"loss": obj.loss})["loss"]


class VersionListSerializer(serializers.ListSerializer):
    """A page of versions: their published figures in three queries, not three per version."""

    def to_representation(self, data):
        items = list(data.all() if hasattr(data, "all") else data)
        self.child.context["figures"] = policy.version_figures(items)
        request = self.context.get("request")
        viewer = policy.viewer_of(request.user) if request is not None else policy.Viewer(policy.NOBODY)
        self.child.context["privacy"] = policy.version_privacy(viewer, items)
        return super().to_representation(items)


class ModelVersionSerializer(PolicySerializer, serializers.ModelSerializer):
    round = serializers.IntegerField(source="round.number", read_only=True)
    normalizer = ReadJSONField(help_text="{mean, std} per feature: scale inputs with these.")
    model_config = ReadJSONField()
    schema = ReadJSONField()
    metrics = ReadJSONField(
        help_text="mean, sites_reported, defined (per metric, over how many sites its mean is: "
        "null where undefined), final. A coordinator follows the running mean of the "
        "sites' evaluations; a site sees the mean only once it is final (every site reported or "
        "the evaluation deadline passed) and at least FEDHEALTH_MIN_FIGURE_SITES sites stand "
        "behind it, and an empty mean before."
    )
    privacy = ReadJSONField(
        allow_null=True,
        help_text="The version's formal guarantee (null without DP): for a site, its own "
        "(epsilon, delta) after rounds 1..round composed; for the coordinator the worst case "
        "over the sites (scope worst_site), how many sites it covers and how many sent updates "
        "without a recorded spend (unaccounted_sites).",
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "experiment",
            "version",
            "round",
            "sha256",
            "normalizer",
            "model_config",
            "schema",
            "metrics",
            "privacy",
            "created_at",
        ]
        read_only_fields = fields
        list_serializer_class = VersionListSerializer

    def show(self, viewer: policy.Viewer, instance) -> dict:
        return policy.version(
            viewer, instance, self.context.get("figures", {}).get(instance.pk), self.context.get("privacy")
        )


@extend_schema_field(
    {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_BATCH,
        "items": {
            "type": "object",
            "additionalProperties": {},
            "description": "Feature name -> value.",
        },
    }
)
class RecordsField(serializers.Field):
    """A batch of records: only its shape is checked here (a list of objects), cheaply;
    the values are checked against the schema by the prediction service."""

    def to_internal_value(self, data):
        if not isinstance(data, list) or not data:
            raise serializers.ValidationError("must be a non-empty list of records (objects)")
        if len(data) > MAX_BATCH:
            raise serializers.ValidationError(f"at most {MAX_BATCH} records per request")
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise serializers.ValidationError(
                {bad: ["each record must be an object of feature values"]}
            )
        return data


class PredictRequestSerializer(serializers.Serializer):
    """One record (``record``) or a batch (``records``) of feature values."""

    record = serializers.DictField(required=False, help_text="Feature name -> value.")
    records = RecordsField(required=False)
    personal = serializers.BooleanField(
        required=False, default=False,
        help_text="Predict with the caller's own site's personalised model of this version's "
        "experiment (hosted sites, once the experiment completed); 400 when the site has none.",
    )

    def validate(self, attrs):
        if ("record" in attrs) == ("records" in attrs):
            raise serializers.ValidationError({"records": ["give either record or records"]})
        return attrs


class PredictResponseSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    experiment = serializers.IntegerField()
    version = serializers.IntegerField()
    personal = serializers.BooleanField(help_text="Whether the site's personalised model answered.")
    threshold = serializers.FloatField()
    probabilities = serializers.ListField(child=serializers.FloatField())
    labels = serializers.ListField(child=serializers.IntegerField())


class RoundHistorySerializer(serializers.Serializer):
    round = serializers.IntegerField()
    status = serializers.CharField()
    train_loss = serializers.FloatField(allow_null=True)
    num_samples = serializers.IntegerField(allow_null=True)
    accepted = serializers.ListField(child=serializers.CharField())
    rejected = serializers.ListField(child=serializers.DictField(child=serializers.CharField()))
    model = serializers.IntegerField(allow_null=True)
    version = serializers.IntegerField(allow_null=True)
    sites_reported = serializers.IntegerField()
    final = serializers.BooleanField(help_text="The mean is final (see the version's metrics).")
    mean = MetricsField(
        help_text="Null where a metric is undefined (AUROC at a site whose test rows hold one class); "
        "each mean is over the sites where its metric is defined."
    )
    defined = serializers.DictField(
        child=serializers.IntegerField(), help_text="Per metric: over how many of sites_reported its mean is."
    )
    per_site = serializers.DictField(
        child=MetricsField(), help_text="Evaluations visible to the caller."
    )


class MetricsHistorySerializer(serializers.Serializer):
    experiment = serializers.IntegerField()
    status = serializers.CharField()
    rounds = RoundHistorySerializer(many=True)


@extend_schema_field({"type": "string", "format": "binary"})
class BinaryField(serializers.Field):
    """Raw bytes in OpenAPI; for documenting downloads."""
