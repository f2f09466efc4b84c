"""The site-agent protocol: assignments, claim, global model, update, failure, evaluation.

An agent is stateless apart from its CSV: everything it must resume from lives here,
in the database, so a restarted agent asks again and carries on. Every POST is safe
to retry: claiming an update already being trained re-claims it, a replayed update
with the same bytes is acknowledged, and a second evaluation is ignored.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import F
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from aggregation.models import (
    ClientUpdate,
    Experiment,
    ModelVersion,
    Participant,
    Round,
    SecureRound,
    SecureSite,
)
from aggregation.permissions import visible_rounds, visible_versions
from aggregation.reasons import Reason
from aggregation.services import (
    UpdateRefused,
    consent,
    fail_update,
    submit_update,
)
from aggregation.services import privacy as privacy_ledger
from aggregation.services.artifacts import global_weights_for
from aggregation.services.rounds import OPEN_UPDATE, claim_update
from aggregation.services.selection import reported_validation_problem
from clients.api.permissions import IsSiteAgent
from fedhealth.api.exceptions import Conflict, PayloadTooLarge, field_error
from fedhealth.api.schema import ErrorSerializer
from fedhealth.ml.weights_io import (
    WeightsFormatError,
    sha256_hex,
    weights_from_bytes,
    weights_to_bytes,
)

from . import agent_serializers as s
from .agent_secure import SecureStepsMixin
from .records import BINARY, FirstRenderer, weights_response
from .serializers import UpdateSerializer

EVALUATED = (Experiment.Status.RUNNING, Experiment.Status.PAUSED, Experiment.Status.COMPLETED)
# Multipart framing around the weights: generous, the fields are a few numbers.
FORM_OVERHEAD = 64 * 1024


class AgentBase(viewsets.GenericViewSet):
    permission_classes = [IsAuthenticated, IsSiteAgent]
    throttle_scope = "agent"

    @property
    def site(self):
        return self.request.auth.site


class AssignmentsView(APIView):
    permission_classes = AgentBase.permission_classes
    throttle_scope = "agent"

    @extend_schema(responses={200: s.AssignmentsSerializer})
    def get(self, request):
        """Work waiting for this site: updates to train in open rounds, global model
        versions it has not evaluated yet, and finished experiments whose comparison
        (alone / global / personalised) it has not reported."""
        from .agent_comparison import comparison_items  # it builds on this module's base
        site = request.auth.site
        training = [
            {
                "round": u.round_id,
                "experiment": u.round.experiment_id,
                "number": u.round.number,
                "update": u.pk,
                "status": u.status,
                "deadline": u.round.deadline,
                "secure": u.round.experiment.secure_aggregation,
            }
            for u in ClientUpdate.objects.filter(
                site=site, status__in=OPEN_UPDATE, round__status=Round.Status.OPEN
            )
            .select_related("round__experiment")
            .order_by("round_id")
        ]
        # Secure rounds owing this site a protocol step (its task: rounds/<id>/secure/).
        secure = [
            {
                "round": p.secure_round.round_id,
                "experiment": p.secure_round.round.experiment_id,
                "number": p.secure_round.round.number,
                "phase": p.secure_round.phase,
                "deadline": p.secure_round.phase_deadline,
            }
            for p in SecureSite.objects.filter(
                site=site,
                status=SecureSite.Status.ACTIVE,
                secure_round__round__status=Round.Status.AGGREGATING,
            )
            .exclude(secure_round__phase__in=[SecureRound.Phase.DONE, SecureRound.Phase.FAILED])
            .exclude(last_phase=F("secure_round__phase"))
            .select_related("secure_round__round")
            .order_by("secure_round__round_id")
        ]
        # The terms travel with the work, so the agent's own policy can refuse them
        # before it claims anything (fedhealth/agent/policy.py).
        terms = {
            e.pk: consent.terms(e)
            for e in Experiment.objects.filter(pk__in={item["experiment"] for item in training})
            .select_related("created_by")
        }
        for item in training:
            item["terms"] = terms[item["experiment"]]
            item["terms_sha256"] = consent.hash_terms(item["terms"])
        # Only experiments this site accepted (and did not withdraw from) are evaluated.
        versions = list(
            ModelVersion.objects.filter(
                experiment__participants__site=site,
                experiment__participants__consent=Participant.Consent.ACCEPTED,
                experiment__status__in=EVALUATED,
            )
            .exclude(evaluations__site=site)
            .select_related("experiment")
            .order_by("experiment_id", "version")
        )
        datasets = dict(
            Participant.objects.filter(
                site=site, experiment_id__in={v.experiment_id for v in versions}
            ).values_list("experiment_id", "dataset_id")
        )
        evaluations = [
            {
                "model": v.pk,
                "experiment": v.experiment_id,
                "version": v.version,
                "sha256": v.sha256,
                "dataset": datasets.get(v.experiment_id),
                "test_fraction": v.experiment.test_fraction,
                "seed": v.experiment.seed,
                "validation_fraction": v.experiment.validation_fraction,
            }
            for v in versions
        ]
        return Response(
            s.AssignmentsSerializer(
                {
                    "site": site.slug,
                    "training": training,
                    "secure": secure,
                    "evaluations": evaluations,
                    "comparisons": comparison_items(site),
                }
            ).data
        )


class AgentRoundViewSet(SecureStepsMixin, AgentBase):
    """A round as seen by one selected agent site (secure-aggregation steps: agent_secure)."""

    queryset = Round.objects.none()  # the model, for the schema; get_queryset() scopes
    serializer_class = s.FailureSerializer  # for OPTIONS; each action documents its own

    def get_queryset(self):
        return visible_rounds(self.request.user).select_related("experiment")

    def selected(self) -> tuple[Round, ClientUpdate]:
        round_ = self.get_object()
        update = (
            ClientUpdate.objects.filter(round=round_, site=self.site)
            .select_related("round")
            .first()
        )
        if update is None:
            raise Conflict(
                f"site {self.site.slug} was not selected for round {round_.number} of experiment "
                f"{round_.experiment_id}; only selected sites may train it"
            )
        return round_, update

    @extend_schema(request=None, responses={200: s.TrainingTaskSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def claim(self, request, pk=None):
        """Start (or, after a restart, resume) training this round: returns the
        configuration to train exactly as a hosted worker would."""
        round_, update = self.selected()
        if not claim_update(update.pk):  # checks the site's consent first
            update.refresh_from_db()
            round_.refresh_from_db()
            if update.error_code in (Reason.WITHDRAWN, Reason.NO_CONSENT):
                raise Conflict(
                    f"site {self.site.slug} has no valid consent for experiment "
                    f"{round_.experiment_id}: {Reason(update.error_code).label}"
                )
            if update.status == ClientUpdate.Status.RECEIVED:
                raise Conflict(f"this site's update for round {round_.number} was already received")
            if round_.status != Round.Status.OPEN:
                raise Conflict(f"round {round_.number} is closed ({round_.status})")
            raise Conflict(f"this site's update for round {round_.number} is {update.status}")
        update.refresh_from_db()
        experiment = round_.experiment
        # The same plan a hosted worker trains with (aggregation.services.sitework, which
        # imports torch: on use, so that web processes start without it).
        from aggregation.services.sitework import site_plan

        plan = site_plan(experiment, self.site, round_.number).to_dict()
        participant = Participant.objects.filter(experiment=experiment, site=self.site).first()
        return Response(
            s.TrainingTaskSerializer(
                {
                    "round": round_.pk,
                    "number": round_.number,
                    "experiment": experiment.pk,
                    "update": update.pk,
                    "attempts": update.attempts,
                    "deadline": round_.deadline,
                    "dataset": participant.dataset_id if participant else None,
                    "schema": experiment.schema,
                    "model_config": plan["model_config"],
                    "train_config": plan["train_config"],
                    "normalizer": plan["normalizer"],
                    "split": plan["split"],
                    "privacy": plan.get("privacy"),
                    "secure_aggregation": experiment.secure_aggregation,
                }
            ).data
        )

    @extend_schema(responses={(200, "application/octet-stream"): BINARY, 409: ErrorSerializer})
    @action(
        detail=True,
        methods=["get"],
        url_path="global-model",
        content_negotiation_class=FirstRenderer,
    )
    def global_model(self, request, pk=None):
        """The model this round starts from (safetensors; `X-Model-Version`, 0 = initial)."""
        round_, _ = self.selected()
        weights, version = global_weights_for(round_)
        return weights_response(
            weights_to_bytes(weights),
            f"experiment-{round_.experiment_id}-round-{round_.number}.safetensors",
            **{"X-Model-Version": str(version)},
        )

    @extend_schema(
        request={"multipart/form-data": s.UpdateUploadSerializer},
        responses={
            201: UpdateSerializer,
            200: UpdateSerializer,
            409: ErrorSerializer,
            413: ErrorSerializer,
        },
    )
    @action(detail=True, methods=["post"], url_path="update", parser_classes=[MultiPartParser])
    def submit(self, request, pk=None):
        """Upload the trained weights (safetensors, never pickle) with their SHA-256.

        Checked before acceptance: size, checksum, format, float32, names and shapes
        against the experiment's model, no NaN/Inf, the site selected and the round
        open. Sending the same bytes again is acknowledged (200), not counted twice.
        """
        round_, update = self.selected()
        if (
            int(request.META.get("CONTENT_LENGTH") or 0)
            > settings.FEDHEALTH_MAX_UPDATE_BYTES + FORM_OVERHEAD
        ):
            raise PayloadTooLarge(
                f"an update may be at most {settings.FEDHEALTH_MAX_UPDATE_BYTES} bytes"
            )
        form = s.UpdateUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data["weights"].read()
        declared = (
            form.validated_data.get("sha256")
            or request.headers.get("X-Content-SHA256", "").strip().lower()
        )
        if not declared:
            raise field_error(
                "sha256", "send the SHA-256 of the weights (field sha256 or X-Content-SHA256)"
            )
        if sha256_hex(data) != declared:
            raise field_error(
                "sha256", "does not match the uploaded bytes (corrupted or truncated upload)"
            )
        try:
            weights = weights_from_bytes(data, expected_sha256=declared)
        except WeightsFormatError as exc:
            raise field_error("weights", str(exc)) from None
        num_samples = form.validated_data["num_samples"]
        reported = _reported_spend(round_, form.validated_data.get("privacy"))
        try:
            # The update and the agent's report of its spend are recorded together: a
            # received update of a private experiment never lacks its ledger entry.
            with transaction.atomic():
                submission = submit_update(
                    update.pk,
                    weights,
                    num_samples=num_samples,
                    loss=form.validated_data.get("loss"),
                    metrics=form.validated_data.get("metrics", {}),
                    source="agent",
                )
                if reported is not None and not submission.replayed:
                    privacy_ledger.record_reported_spend(update.pk, reported)
        except UpdateRefused as exc:
            # The service is the one judge of an update (sample count, shapes, finite,
            # plausible); the sender's bad data is a 400, the round's state a 409.
            if exc.bad_input:
                field = "num_samples" if exc.code == Reason.SAMPLE_COUNT else "weights"
                raise field_error(field, str(exc)) from None
            raise Conflict(str(exc)) from None
        body = UpdateSerializer(
            ClientUpdate.objects.select_related("site", "round").get(pk=update.pk),
            context=self.get_serializer_context(),
        ).data
        return Response(
            body, status=status.HTTP_200_OK if submission.replayed else status.HTTP_201_CREATED
        )

    @extend_schema(
        request=s.FailureSerializer, responses={200: UpdateSerializer, 409: ErrorSerializer}
    )
    @action(detail=True, methods=["post"])
    def failure(self, request, pk=None):
        """Report that this site cannot train the round (e.g. its data changed)."""
        _, update = self.selected()
        form = s.FailureSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        # The agent's words are its own note, shown to its own site only; everyone else
        # reads the product's reason.
        code = Reason(form.validated_data["code"])
        if not fail_update(update.pk, code, note=form.validated_data["reason"]):
            update.refresh_from_db()
            if update.status != ClientUpdate.Status.FAILED:
                raise Conflict(f"this site's update is {update.status} and cannot fail now")
        return Response(
            UpdateSerializer(
                ClientUpdate.objects.select_related("site", "round").get(pk=update.pk),
                context=self.get_serializer_context(),
            ).data
        )


def _reported_spend(round_: Round, raw):
    """The agent's report of its round's spend: required with DP, refused without."""
    if round_.experiment.privacy_settings is None:
        if raw is not None:
            raise field_error("privacy", "this experiment does not train with differential privacy")
        return None
    if raw is None:
        raise field_error(
            "privacy",
            "this experiment trains with record-level DP: send the round's spend from the "
            "agent's accountant with the update",
        )
    try:
        return privacy_ledger.parse_reported_spend(raw, round_number=round_.number)
    except ValueError as exc:
        raise field_error("privacy", str(exc)) from None


class AgentModelViewSet(AgentBase):
    """Federated evaluation: the agent scores a global version on its own test split."""

    queryset = ModelVersion.objects.none()
    serializer_class = s.EvaluationSerializer

    def get_queryset(self):
        return visible_versions(self.request.user).select_related("experiment")

    @extend_schema(
        request=s.EvaluationSerializer,
        responses={201: s.EvaluationResultSerializer, 200: s.EvaluationResultSerializer},
    )
    @action(detail=True, methods=["post"])
    def evaluation(self, request, pk=None):
        """Report metrics and curves (aggregates of predictions, never rows).

        With a validation slice in the experiment, ``metrics`` carry the version's
        ``validation_loss`` and ``validation_n`` on it, checked against the site's
        registered rows; the best version is selected by them, as for hosted sites.
        """
        version = self.get_object()
        form = s.EvaluationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        experiment = version.experiment
        rows = (
            Participant.objects.filter(experiment=experiment, site=self.site)
            .values_list("dataset__row_count", flat=True)
            .first()
        )
        problem = reported_validation_problem(
            form.validated_data["metrics"],
            validation_fraction=experiment.validation_fraction,
            test_fraction=experiment.test_fraction,
            rows=rows or 0,
        )
        if problem:
            raise field_error("metrics", problem)
        curves = {k: dict(v) for k, v in form.validated_data.get("curves", {}).items()}
        from aggregation.services.sitework import record_evaluation  # torch: on use

        recorded = record_evaluation(
            version.pk, self.site.pk, form.validated_data["metrics"], curves
        )
        return Response(
            {"model": version.pk, "site": self.site.slug, "recorded": recorded},
            status=status.HTTP_201_CREATED if recorded else status.HTTP_200_OK,
        )
