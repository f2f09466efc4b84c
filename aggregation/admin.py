from django.contrib import admin, messages

from . import services
from .models import ClientUpdate, Experiment, ModelVersion, Participant, Round, SiteEvaluation


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    autocomplete_fields = ["site"]
    raw_id_fields = ["dataset"]


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "strategy", "num_rounds", "rounds_done", "created_by", "created_at"]
    list_filter = ["status", "strategy"]
    search_fields = ["name", "description"]
    inlines = [ParticipantInline]
    readonly_fields = [
        "status", "failure_reason", "normalizer", "initial_weights", "initial_sha256",
        "strategy_state", "strategy_state_file", "started_at", "finished_at", "created_at",
    ]
    actions = ["start", "pause", "resume", "cancel"]

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


class ClientUpdateInline(admin.TabularInline):
    model = ClientUpdate
    extra = 0
    can_delete = False
    fields = ["site", "status", "num_samples", "loss", "error", "sha256"]
    readonly_fields = fields


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ["experiment", "number", "status", "deadline", "started_at", "completed_at"]
    list_filter = ["status", "experiment"]
    search_fields = ["experiment__name"]
    inlines = [ClientUpdateInline]
    readonly_fields = ["experiment", "number", "status", "deadline", "started_at", "closed_at",
                       "completed_at", "metrics", "failure_reason"]


@admin.register(ClientUpdate)
class ClientUpdateAdmin(admin.ModelAdmin):
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
class SiteEvaluationAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False  # evaluations come from the sites


class SiteEvaluationInline(admin.TabularInline):
    model = SiteEvaluation
    extra = 0
    can_delete = False
    fields = ["site", "metrics", "created_at"]
    readonly_fields = fields


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
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
