"""An agent site's alone / global / personalised figures at the end of an experiment.

A hosted site's worker measures its comparison on the server's queue
(``aggregation.services.site_comparison.compare_hosted``); an agent site measures the
same on its own machine, with the same core call (``fedhealth.ml.comparison.
compare_at_site``), and sends only the figures here. The assignments list the
experiments waiting for it (``comparison_items``); the models stay in the agent's
folder. Both doors end in ``record_site_comparison``, which bounds every figure and
keeps the first report.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from aggregation.models import Experiment, Participant, SiteComparison, SiteEvaluation
from aggregation.permissions import visible_experiments
from aggregation.policy.figures import version_figures
from aggregation.services.site_comparison import (
    SiteComparisonInvalid,
    record_site_comparison,
    selected_version,
)
from clients.models import Site
from fedhealth.api.exceptions import Conflict, PayloadTooLarge
from fedhealth.api.schema import ErrorSerializer

from .agent import AgentBase

# Three metric sets of at most a few dozen numbers, a mode and a version: a few KiB.
MAX_COMPARISON_BYTES = 16 * 1024
# Errors about the moment or the site (not the figures): a 409, the figures a 400.
STATE_FIELDS = frozenset({"experiment", "participant", "source"})


def comparison_items(site: Site) -> list[dict]:
    """Completed experiments this agent site took part in with consent and has not
    reported a comparison for, once it evaluated every version itself (its own
    validation loss counts) and every version's evaluations are final (every site
    that accepted reported or gave up, or the evaluation grace passed: the rule that
    publishes figures). Only then is the selected version settled: before, a late
    site's validation loss could still move it, and this site would compare against a
    version the experiment no longer offers."""
    if site.mode != Site.Mode.AGENT:
        return []  # a hosted site's worker measures its own
    participants = (
        Participant.objects.filter(
            site=site,
            consent=Participant.Consent.ACCEPTED,
            dataset__isnull=False,
            experiment__status=Experiment.Status.COMPLETED,
        )
        .exclude(comparison__status=SiteComparison.Status.DONE)
        .select_related("experiment")
        .order_by("experiment_id")
    )
    items = []
    for participant in participants:
        experiment = participant.experiment
        versions = list(experiment.versions.all())
        own = set(
            SiteEvaluation.objects.filter(version__experiment=experiment, site=site).values_list(
                "version_id", flat=True
            )
        )
        if not versions or any(v.pk not in own for v in versions):
            continue  # this site's own evaluations first: they are in the same assignments
        figures = version_figures(versions)
        if not all(figures[v.pk].final for v in versions):
            continue  # another site's validation loss may still move the selection
        version = selected_version(experiment)
        config = experiment.federated_config()
        items.append(
            {
                "experiment": experiment.pk,
                "model": version.pk,
                "version": version.version,
                "sha256": version.sha256,
                "dataset": participant.dataset_id,
                "mode": None
                if experiment.personalize == Experiment.Personalize.OFF
                else experiment.personalize,
                "test_fraction": experiment.test_fraction,
                "seed": experiment.seed,
                # The budget and seeds the local-only and personalised models use: the
                # fields of fedhealth.ml.federation.FederatedConfig compare_at_site reads.
                "config": {
                    "rounds": config.rounds,
                    "model": config.model.to_dict(),
                    "train": config.train.to_dict(),
                    "seed": config.seed,
                    "validation_fraction": config.validation_fraction,
                },
            }
        )
    return items


class ComparisonUploadSerializer(serializers.Serializer):
    """What an agent site sends: figures on its own test rows, never a model."""

    alone = serializers.DictField(allow_null=True, help_text="Local-only model: metric -> number or null.")
    # "global" is a Python keyword: declared below.
    personalized = serializers.DictField(allow_null=True, help_text="Personalised model, or null.")
    mode = serializers.CharField(allow_null=True)
    version = serializers.IntegerField(help_text="The global version compared.")


ComparisonUploadSerializer._declared_fields["global"] = serializers.DictField(
    allow_null=True, help_text="The selected global model: metric -> number or null."
)


class ComparisonResultSerializer(serializers.Serializer):
    experiment = serializers.IntegerField()
    site = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)
    recorded = serializers.BooleanField(
        help_text="False when this site had already reported (the first report stands)."
    )


class AgentExperimentViewSet(AgentBase):
    """An experiment as one agent site takes part in it (here: its end comparison)."""

    queryset = Experiment.objects.none()  # the model, for the schema; get_queryset() scopes
    serializer_class = ComparisonUploadSerializer

    def get_queryset(self):
        return visible_experiments(self.request.user)

    @extend_schema(
        request=ComparisonUploadSerializer,
        responses={
            201: ComparisonResultSerializer,
            200: ComparisonResultSerializer,
            400: ErrorSerializer,
            409: ErrorSerializer,
            413: ErrorSerializer,
        },
    )
    @action(detail=True, methods=["post"])
    def comparison(self, request, pk=None):
        """Report alone / global / personalised figures on this site's own test rows,
        once per experiment (a repeat is acknowledged with 200; the first report stands).
        Checked by ``record_site_comparison``: known metrics, finite, in range, null
        where undefined."""
        if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_COMPARISON_BYTES:
            raise PayloadTooLarge(f"a comparison may be at most {MAX_COMPARISON_BYTES} bytes")
        experiment = self.get_object()  # another site's experiment: 404
        participant = Participant.objects.filter(experiment=experiment, site=self.site).first()
        if participant is None:
            raise Conflict(f"site {self.site.slug} takes no part in experiment {experiment.pk}")
        if not isinstance(request.data, dict):
            raise serializers.ValidationError({"figures": ["send a JSON object of figures"]})
        before = SiteComparison.objects.filter(
            participant=participant, status=SiteComparison.Status.DONE
        ).exists()
        try:
            row = record_site_comparison(participant, dict(request.data), source="agent")
        except SiteComparisonInvalid as exc:
            if STATE_FIELDS & set(exc.errors):
                raise Conflict(str(exc)) from None
            raise serializers.ValidationError(exc.errors) from None
        return Response(
            {
                "experiment": experiment.pk,
                "site": self.site.slug,
                "version": row.version.version if row.version else None,
                "recorded": not before,
            },
            status=status.HTTP_200_OK if before else status.HTTP_201_CREATED,
        )


__all__ = ["AgentExperimentViewSet", "comparison_items"]
