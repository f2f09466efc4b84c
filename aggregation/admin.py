from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from clients.models import Dataset
from fedhealth.ml.strategies import STRATEGIES
from fedhealth.readonly_admin import ReadOnlyAdmin, ReadOnlyTabularInline

from . import services
from .models import ClientUpdate, Experiment, ModelVersion, Participant, Round, SiteEvaluation
from .services.creation import (
    BOUNDS,
    EARLY_STOPPING,
    ExperimentInvalid,
    create_experiment,
    update_experiment,
    validate_experiment,
)


class ExperimentAdminForm(forms.ModelForm):
    """The admin's door to a draft: the same creation service as the web form and the API
    (aggregation/services/creation.py), so the admin cannot store what they refuse."""

    datasets = forms.ModelMultipleChoiceField(
        queryset=Dataset.objects.filter(status=Dataset.Status.READY).select_related("site"),
        help_text="One ready dataset per participating site.",
    )
    strategy = forms.ChoiceField(choices=[(name, name) for name in STRATEGIES])

    class Meta:
        model = Experiment
        fields = ["name", "description", "datasets", "hidden_layers", "strategy", "strategy_params", *BOUNDS,
                  "dp_mode", "dp_delta", "secure_aggregation", "secagg_threshold", "personalize", "early_stopping"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, bound in BOUNDS.items():  # the service's bounds, shown by the widgets
            field = self.fields.get(name)
            if field is not None:
                field.widget.attrs.update({"min": bound.low, "max": bound.high})
        if "dp_mode" in self.fields:  # DP came later: a post without it keeps DP off
            self.fields["dp_mode"].required = False
        if "personalize" in self.fields:  # came later too: a post without it keeps it off
            self.fields["personalize"].required = False
        if "early_stopping" in self.fields:  # the service's bound, shown by the widget
            self.fields["early_stopping"].widget.attrs.update({"min": EARLY_STOPPING.low, "max": EARLY_STOPPING.high})
        if self.instance.pk:
            self.initial["datasets"] = [p.dataset_id for p in self.instance.participants.all() if p.dataset_id]

    def service_arguments(self) -> dict:
        args = {name: self.cleaned_data[name] for name in self.Meta.fields if name in self.cleaned_data}
        args.setdefault("name", "")
        if not args.get("dp_mode"):
            args.pop("dp_mode", None)
        if not args.get("personalize"):
            args.pop("personalize", None)
        args["datasets"] = list(args.get("datasets") or [])
        return args

    def clean(self):
        cleaned = super().clean()
        try:
            validate_experiment(**self.service_arguments(), schema=self.instance.schema or None)
        except ExperimentInvalid as exc:
            for field, messages_ in exc.errors.items():
                target = field if field in self.fields else None
                if target is None or not self.has_error(target):
                    for message in messages_:
                        self.add_error(target, message)
        return cleaned

    def _post_clean(self):
        # The model's own validators are not a second rulebook: the service decided above.
        pass


class StartedExperimentForm(forms.ModelForm):
    class Meta:
        model = Experiment
        fields: list[str] = []


def _started(obj: Experiment | None) -> bool:
    return obj is not None and obj.status != Experiment.Status.DRAFT


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentAdminForm
    list_display = ["name", "status", "strategy", "num_rounds", "rounds_done", "created_by", "created_at"]
    list_filter = ["status", "strategy"]
    search_fields = ["name", "description"]
    # Participants are chosen with the ``datasets`` field (through the creation service)
    # and only listed here.
    readonly_fields = [
        "participating_sites", "status", "failure_reason", "normalizer", "initial_weights", "initial_sha256",
        "strategy_state", "strategy_state_file", "started_at", "finished_at", "created_at",
    ]
    actions = ["start", "pause", "resume", "cancel"]

    def get_fields(self, request, obj=None):
        if _started(obj):
            return self.get_readonly_fields(request, obj)
        return [*ExperimentAdminForm.Meta.fields, *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        if _started(obj):
            # A started experiment's configuration is what its rounds ran with.
            config = [name for name in ExperimentAdminForm.Meta.fields if name != "datasets"]
            return [*config, *self.readonly_fields]
        return self.readonly_fields

    def get_form(self, request, obj=None, **kwargs):
        if _started(obj):
            kwargs["form"] = StartedExperimentForm
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request, obj, form, change):
        if change and _started(obj):
            return  # nothing of a started experiment is editable here
        arguments = form.service_arguments()
        try:
            if change:
                saved = update_experiment(obj, **arguments)
            else:
                saved = create_experiment(created_by=request.user, **arguments)
        except ExperimentInvalid as exc:  # changed since the form was checked
            raise ValidationError(exc.errors) from None
        obj.pk = saved.pk
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        pass  # participants were written by the creation service

    @admin.display(description="Participants")
    def participating_sites(self, obj: Experiment) -> str:
        rows = obj.participants.select_related("site", "dataset").order_by("site__name") if obj.pk else []
        return ", ".join(f"{p.site} ({p.dataset or 'no dataset'})" for p in rows) or "-"

    @admin.display(description="Rounds done")
    def rounds_done(self, obj: Experiment) -> int:
        return obj.rounds.filter(status=Round.Status.COMPLETED).count()

    def _apply(self, request, queryset, action, verb):
        for experiment in queryset:
            try:
                action(experiment.pk)
                self.message_user(request, f"{experiment}: {verb}.", messages.SUCCESS)
            except services.TransitionError as exc:
                self.message_user(request, f"{experiment}: {exc}", messages.ERROR)

    @admin.action(description="Start selected experiments")
    def start(self, request, queryset):
        self._apply(request, queryset, services.start_experiment, "started")

    @admin.action(description="Pause selected experiments")
    def pause(self, request, queryset):
        self._apply(request, queryset, services.pause_experiment, "paused")

    @admin.action(description="Resume selected experiments")
    def resume(self, request, queryset):
        self._apply(request, queryset, services.resume_experiment, "resumed")

    @admin.action(description="Cancel selected experiments")
    def cancel(self, request, queryset):
        self._apply(request, queryset, services.cancel_experiment, "cancelled")


class ClientUpdateInline(ReadOnlyTabularInline):
    model = ClientUpdate
    fields = ["site", "status", "num_samples", "loss", "error", "sha256"]
    readonly_fields = fields


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ["experiment", "number", "status", "deadline", "started_at", "completed_at"]
    list_filter = ["status", "experiment"]
    search_fields = ["experiment__name"]
    inlines = [ClientUpdateInline]
    readonly_fields = ["experiment", "number", "status", "deadline", "started_at", "closed_at",
                       "completed_at", "metrics", "failure_reason"]


@admin.register(ClientUpdate)
class ClientUpdateAdmin(ReadOnlyAdmin):
    list_display = ["round", "site", "status", "source", "num_samples", "loss", "attempts", "received_at"]
    list_filter = ["status", "source", "site"]
    search_fields = ["site__name", "round__experiment__name", "sha256", "error"]
    readonly_fields = [f.name for f in ClientUpdate._meta.fields]


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = ["experiment", "site", "dataset", "joined_at"]
    list_filter = ["site", "experiment__status"]
    search_fields = ["experiment__name", "site__name", "dataset__name"]
    autocomplete_fields = ["site"]
    raw_id_fields = ["experiment", "dataset"]


@admin.register(SiteEvaluation)
class SiteEvaluationAdmin(ReadOnlyAdmin):
    list_display = ["version", "site", "accuracy", "auroc", "created_at"]
    list_filter = ["site", "version__experiment"]
    search_fields = ["site__name", "version__experiment__name"]
    readonly_fields = [f.name for f in SiteEvaluation._meta.fields]

    @admin.display(description="Accuracy")
    def accuracy(self, obj: SiteEvaluation) -> str:
        return _format(obj.metrics.get("accuracy"))

    @admin.display(description="AUROC")
    def auroc(self, obj: SiteEvaluation) -> str:
        return _format(obj.metrics.get("auroc"))


class SiteEvaluationInline(ReadOnlyTabularInline):
    model = SiteEvaluation
    fields = ["site", "metrics", "created_at"]
    readonly_fields = fields


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["experiment", "version", "sha256", "accuracy", "auroc", "created_at"]
    list_filter = ["experiment"]
    search_fields = ["experiment__name", "sha256"]
    inlines = [SiteEvaluationInline]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    @admin.display(description="Accuracy")
    def accuracy(self, obj: ModelVersion):
        return _metric(obj, "accuracy")

    @admin.display(description="AUROC")
    def auroc(self, obj: ModelVersion):
        return _metric(obj, "auroc")


def _metric(version: ModelVersion, key: str) -> str:
    return _format(version.metrics.get("mean", {}).get(key))


def _format(value) -> str:
    return "-" if value is None else f"{value:.3f}"


# Derived records (fedhealth/readonly_admin.py): read-only everywhere in the admin.
from . import admin_derived  # noqa: E402,F401
