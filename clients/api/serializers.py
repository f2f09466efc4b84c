"""Representations of sites and datasets: summaries only, never a row or a file."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from clients.models import Dataset, Site
from clients.permissions import site_of
from clients.policy import dataset_summary
from fedhealth.api.fields import (
    FiniteFloatField,
    ReadJSONField,
    finite,
    json_object_text,
    reject_nul,
)
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema, SchemaError
from fedhealth.ml.validation import Policy


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "slug", "mode", "is_active", "created_at"]
        read_only_fields = fields


class FeatureSummarySerializer(serializers.Serializer):
    unit = serializers.CharField(allow_blank=True)
    mean = FiniteFloatField()
    std = FiniteFloatField()
    min = FiniteFloatField()
    max = FiniteFloatField()


class StatsSerializer(serializers.Serializer):
    """Sufficient statistics for federated normalisation: row count, per-feature sums."""

    count = serializers.IntegerField(min_value=0)
    sum = serializers.ListField(child=FiniteFloatField())
    sumsq = serializers.ListField(child=FiniteFloatField())


class ProblemSerializer(serializers.Serializer):
    kind = serializers.CharField()
    message = serializers.CharField()
    line = serializers.IntegerField(allow_null=True)
    column = serializers.CharField(allow_null=True)
    value = serializers.CharField(allow_null=True)


class ValidationReportSerializer(serializers.Serializer):
    """What the core validator found in an uploaded CSV."""

    ok = serializers.BooleanField()
    policy = serializers.CharField()
    rows_total = serializers.IntegerField()
    rows_valid = serializers.IntegerField()
    rows_dropped = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField())
    file_errors = serializers.ListField(child=serializers.CharField())
    problems = ProblemSerializer(many=True)
    warnings = ProblemSerializer(many=True)


# Parts of a validation report that quote the file's cells: for the owning site only.
REPORT_QUOTES = {"problems", "warnings"}


class DatasetSerializer(serializers.ModelSerializer):
    site = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    # Figures as clients/policy.py's dataset_summary shows them to the caller: in full to
    # the owning site; to others counts, balance and rounded means/SDs, no min/max and no
    # exact sufficient statistics, and none at all under the row limit (null).
    positive_count = serializers.SerializerMethodField()
    label_balance = serializers.SerializerMethodField()
    hosted = serializers.SerializerMethodField(
        help_text="True when the CSV sits in the platform's site-private storage."
    )
    schema = ReadJSONField()
    stats = serializers.SerializerMethodField(
        help_text="Sufficient statistics {count, sum, sumsq}: the owning site only (null for others)."
    )
    summary = serializers.SerializerMethodField(
        help_text="Per feature: unit, mean, std (and min, max for the owning site); others get means and SDs "
        "rounded, and {} for a dataset under the disclosure row limit."
    )
    validation_report = serializers.SerializerMethodField(
        help_text="The owning site sees the full report; others only its counts (the examples quote cell values)."
    )

    class Meta:
        model = Dataset
        fields = [
            "id",
            "site",
            "name",
            "status",
            "hosted",
            "row_count",
            "positive_count",
            "label_balance",
            "rows_dropped",
            "policy",
            "schema",
            "stats",
            "summary",
            "validation_report",
            "sha256",
            "created_at",
        ]
        read_only_fields = fields

    def get_hosted(self, obj: Dataset) -> bool:
        return bool(obj.file)

    def _shown(self, obj: Dataset):
        cache = self.context.setdefault("_dataset_summaries", {})
        if obj.pk not in cache:
            request = self.context.get("request")
            cache[obj.pk] = dataset_summary(getattr(request, "user", None), obj)
        return cache[obj.pk]

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_positive_count(self, obj: Dataset) -> int | None:
        return self._shown(obj).positive_count

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_label_balance(self, obj: Dataset) -> float | None:
        return self._shown(obj).label_balance

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": {}})
    def get_stats(self, obj: Dataset) -> dict | None:
        stats = self._shown(obj).stats
        return finite(stats) if stats is not None else None

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_summary(self, obj: Dataset) -> dict:
        return finite(self._shown(obj).features_dict())

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_validation_report(self, obj: Dataset) -> dict:
        report = finite(obj.validation_report or {})
        request = self.context.get("request")
        if request is not None and site_of(request.user) == obj.site:
            return report
        return {k: v for k, v in report.items() if k not in REPORT_QUOTES}


class SchemaJSONField(serializers.JSONField):
    """A feature schema as JSON (object, or a JSON string inside a multipart form)."""

    def to_internal_value(self, data):
        data = json_object_text(data, "a JSON object (the schema)")
        reject_nul(data, "schema")
        try:
            return Schema.from_dict(data)
        except SchemaError as exc:
            raise serializers.ValidationError(str(exc)) from None


class DatasetUploadSerializer(serializers.Serializer):
    """A CSV upload (multipart) from a hosted site."""

    file = serializers.FileField(
        allow_empty_file=True, help_text="The CSV, UTF-8, comma-separated, with a header."
    )
    name = serializers.CharField(
        max_length=255, required=False, help_text="Defaults to the file name."
    )
    policy = serializers.ChoiceField(choices=[p.value for p in Policy], default=Policy.REJECT.value)
    schema = SchemaJSONField(
        required=False, help_text="Feature schema; the default vitals schema if absent."
    )

    def validated_schema(self) -> Schema:
        return self.validated_data.get("schema") or DEFAULT_SCHEMA


class DatasetUploadResultSerializer(DatasetSerializer):
    report = serializers.SerializerMethodField()

    class Meta(DatasetSerializer.Meta):
        fields = [*DatasetSerializer.Meta.fields, "report"]
        read_only_fields = fields

    @extend_schema_field(ValidationReportSerializer)
    def get_report(self, obj: Dataset) -> dict:
        return obj.validation_report


class DatasetRegisterSerializer(serializers.Serializer):
    """What an agent may share about its local CSV. Shapes are checked by the service."""

    name = serializers.CharField(max_length=255, required=False, allow_blank=True)
    schema = serializers.JSONField()
    row_count = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    positive_count = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    stats = StatsSerializer()
    summary = serializers.DictField(child=FeatureSummarySerializer())

    def validate(self, attrs):
        reject_nul(attrs.get("schema"), "schema")
        reject_nul(attrs.get("summary"), "summary")
        return attrs
