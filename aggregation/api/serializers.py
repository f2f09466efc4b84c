"""Representations of experiments and their records: aggregate figures only."""

from __future__ import annotations

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from aggregation.models import ClientUpdate, Experiment, ModelVersion, Round
from aggregation.services.predict import MAX_BATCH
from clients.models import Dataset
from fedhealth.api.fields import FiniteFloatField, MetricsField, ReadJSONField, reject_nul
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema, SchemaError
from fedhealth.ml.strategies import STRATEGIES, get_strategy

# An experiment's training configuration, shared by the read and create serializers.
CONFIG_FIELDS = [
    "hidden_layers",
    "dropout",
    "strategy",
    "strategy_params",
    "num_rounds",
    "local_epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "min_sites",
    "fraction_fit",
    "round_timeout",
    "test_fraction",
    "seed",
]


class ParticipantSerializer(serializers.Serializer):
    site = serializers.CharField(source="site.slug")
    dataset = serializers.IntegerField(source="dataset_id", allow_null=True)


class ExperimentSerializer(serializers.ModelSerializer):
    participants = ParticipantSerializer(many=True, read_only=True)
    schema = ReadJSONField()
    strategy_params = ReadJSONField()
    normalizer = ReadJSONField(allow_null=True, help_text="Global mean/std, fixed at start.")
    hidden_layers = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    current_round = serializers.SerializerMethodField()

    class Meta:
        model = Experiment
        fields = [
            "id",
            "name",
            "description",
            "status",
            "failure_reason",
            "schema",
            *CONFIG_FIELDS,
            "participants",
            "normalizer",
            "current_round",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_current_round(self, obj: Experiment) -> int | None:
        numbers = [r.number for r in obj.rounds.all()]
        return max(numbers) if numbers else None


class ExperimentCreateSerializer(serializers.ModelSerializer):
    """A new draft experiment over the given datasets (one per site)."""

    datasets = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        min_length=1,
        max_length=1000,
        help_text="Ready datasets, one per participating site.",
    )
    schema = serializers.JSONField(
        required=False, help_text="Feature schema; the default vitals schema if absent."
    )
    hidden_layers = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1024), max_length=8, required=False
    )
    strategy = serializers.ChoiceField(choices=list(STRATEGIES), default="fedavg")
    strategy_params = serializers.DictField(child=FiniteFloatField(), required=False)
    round_timeout = serializers.IntegerField(min_value=10, max_value=7 * 24 * 3600, required=False)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)
    min_sites = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    weight_decay = FiniteFloatField(min_value=0.0, max_value=1.0, required=False)
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.FloatField: FiniteFloatField,
    }

    class Meta:
        model = Experiment
        fields = [
            "name",
            "description",
            "datasets",
            "schema",
            *CONFIG_FIELDS,
        ]

    def validate_schema(self, value):
        reject_nul(value, "schema")
        try:
            return Schema.from_dict(value).to_dict()
        except SchemaError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs):
        try:
            get_strategy(attrs.get("strategy", "fedavg"), **attrs.get("strategy_params", {}))
        except (ValueError, TypeError) as exc:
            raise serializers.ValidationError({"strategy_params": [str(exc)]}) from None
        schema = attrs.setdefault("schema", DEFAULT_SCHEMA.to_dict())
        ids = attrs["datasets"]
        found = {d.pk: d for d in Dataset.objects.filter(pk__in=ids).select_related("site")}
        problems, sites = [], set()
        for pk in ids:
            ds = found.get(pk)
            if ds is None:
                problems.append(f"dataset {pk} does not exist")
            elif ds.status != Dataset.Status.READY:
                problems.append(f"dataset {pk} is {ds.status}, not ready")
            elif ds.schema != schema:
                problems.append(f"dataset {pk} has a different schema from the experiment")
            elif ds.site_id in sites:
                problems.append(f"site {ds.site.slug} has more than one dataset in the list")
            sites.add(getattr(ds, "site_id", None))
        if problems:
            raise serializers.ValidationError({"datasets": problems})
        if attrs.get("min_sites", 1) > len(ids):
            raise serializers.ValidationError({"min_sites": [f"only {len(ids)} sites take part"]})
        attrs["datasets"] = [found[pk] for pk in ids]
        return attrs


class RoundSerializer(serializers.ModelSerializer):
    metrics = ReadJSONField(help_text="train_loss, num_samples, accepted and rejected sites.")
    model_version = serializers.SerializerMethodField()

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
            "model_version",
        ]
        read_only_fields = fields

    def get_model_version(self, obj: Round) -> int | None:
        version = getattr(obj, "model_version", None)
        return version.pk if version else None


class UpdateSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.slug", read_only=True)
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
            "attempts",
            "source",
            "created_at",
            "started_at",
            "received_at",
        ]
        read_only_fields = fields

    def get_loss(self, obj: ClientUpdate) -> float | None:
        return MetricsField().to_representation({"loss": obj.loss})["loss"]


class ModelVersionSerializer(serializers.ModelSerializer):
    round = serializers.IntegerField(source="round.number", read_only=True)
    normalizer = ReadJSONField(help_text="{mean, std} per feature: scale inputs with these.")
    model_config = ReadJSONField()
    schema = ReadJSONField()
    metrics = ReadJSONField(help_text="Mean of the sites' evaluations, and how many reported.")

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
            "created_at",
        ]
        read_only_fields = fields


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

    def validate(self, attrs):
        if ("record" in attrs) == ("records" in attrs):
            raise serializers.ValidationError({"records": ["give either record or records"]})
        return attrs


class PredictResponseSerializer(serializers.Serializer):
    model = serializers.IntegerField()
    experiment = serializers.IntegerField()
    version = serializers.IntegerField()
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
    mean = MetricsField()
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
