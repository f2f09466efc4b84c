"""Forms of the experiment and prediction pages."""

from __future__ import annotations

import json
import math

from django import forms
from django.utils.formats import date_format
from django.utils.timezone import localtime

from clients.models import Dataset, Site
from clients.policy import join_problems
from fedhealth.ml.privacy import DP_TRAIN_DEFAULTS
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.strategies import STRATEGIES, strategy_params

from .models import Experiment, ModelVersion
from .services.creation import (
    BOUNDS,
    EARLY_STOPPING,
    MAX_DESCRIPTION_LENGTH,
    MAX_HIDDEN_LAYERS,
    MAX_LAYER_WIDTH,
    MAX_NAME_LENGTH,
    MAX_SITES,
    ExperimentInvalid,
    create_experiment,
    update_experiment,
    validate_experiment,
)

STRATEGY_INFO = {
    "fedavg": ("FedAvg", "Sample-weighted average of the sites' models."),
    "fedprox": ("FedProx", "FedAvg plus a proximal term that keeps local training near the global "
                           "model; for sites whose populations differ."),
    "fedadam": ("FedAdam", "An Adam step on the server over the averaged update."),
    "fedyogi": ("FedYogi", "Like FedAdam, with a more cautious second-moment update."),
    "fedadagrad": ("FedAdagrad", "An Adagrad step on the server over the averaged update."),
    "fedmedian": ("FedMedian", "Coordinate-wise median: robust to one faulty site."),
    "trimmed_mean": ("Trimmed mean", "Coordinate-wise mean without the extremes: robust to outliers."),
    "krum": ("Krum", "Picks the one site model closest to its neighbours: tolerates up to "
                     "f Byzantine sites (needs at least 2f + 3 sites)."),
    "multikrum": ("Multi-Krum", "Averages the few site models Krum ranks best (unweighted: "
                                "sample counts are not trusted)."),
}
PARAM_LABELS = {
    "proximal_mu": "Proximal term weight (mu)",
    "eta": "Server learning rate (eta)",
    "beta_1": "Momentum decay (beta 1)",
    "beta_2": "Second-moment decay (beta 2)",
    "tau": "Adaptivity (tau)",
    "beta": "Fraction trimmed at each end (beta)",
    "byzantine": "Byzantine sites tolerated (f)",
    "select": "Site models averaged (m)",
}
FEATURE_LABELS = {
    "heart_rate": "Heart rate",
    "systolic_bp": "Systolic blood pressure",
    "diastolic_bp": "Diastolic blood pressure",
    "spo2": "SpO2 (oxygen saturation)",
}
# Bounds come from the creation service, so the form cannot drift from the API.
MAX_LAYERS, MAX_WIDTH = MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH
# Service field -> the form field a person would correct.
MAX_SCHEMA_TEXT = 20_000  # a 100-feature schema with ranges fits in a few KB
SERVICE_FIELDS = {"hidden_layers": "hidden", "round_timeout": "deadline_minutes", "strategy_params": "strategy"}
# The deadline is asked in minutes (deadline_minutes); every other bound is a field as is.
FORM_NUMBERS = [name for name in BOUNDS if name != "round_timeout"]
NUMBER_LABELS = {
    "num_rounds": "Rounds",
    "local_epochs": "Local epochs per round",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "weight_decay": "Weight decay",
    "dropout": "Dropout",
    "min_sites": "Minimum sites per round",
    "fraction_fit": "Fraction of sites asked each round",
    "test_fraction": "Test fraction held out at each site",
    "validation_fraction": "Validation fraction held out at each site",
    "seed": "Random seed",
    "outlier_factor": "Outlier factor",
    "dp_epsilon": "Privacy budget per site (epsilon)",
    "dp_clip_norm": "Gradient clip per patient row",
}
NUMBER_HELP = {
    "min_sites": "A round needs at least this many sites' updates.",
    "test_fraction": "Each site keeps this share of its rows to evaluate the models.",
    "validation_fraction": "Each site also keeps this share of its training rows to score each round's "
                           "model; the round with the lowest loss is recommended (0: the last round).",
    "outlier_factor": "An update farther from the global model than this many times the median of the "
                      "round's other updates is refused.",
    "dp_epsilon": "Each site's patients get (epsilon, delta)-DP over the whole experiment; each site "
                  "derives its noise from this and its own row count. 3 is a common choice for a few "
                  "thousand rows (1 is strong, 8 weak).",
    "dp_clip_norm": "Each patient's gradient is clipped to this norm before noise; 1 suits the "
                    "default model. Site-level: the bound on each site's change of the model per "
                    "round (all weights together).",
}
# DP settings came after the others: a form without them keeps the defaults.
OPTIONAL_NUMBERS = ("outlier_factor", "dp_epsilon", "dp_clip_norm", "validation_fraction")


def strategy_label(name: str) -> str:
    return STRATEGY_INFO.get(name, (name, ""))[0]


def param_field_name(strategy: str, param: str) -> str:
    return f"{strategy}__{param}"


def _number(step: str, **attrs) -> forms.NumberInput:
    return forms.NumberInput(attrs={"step": step, **attrs})


def _bounded_field(name: str) -> forms.Field:
    """A number field whose limits (and the widget's min/max) are the service's BOUNDS."""
    bound = BOUNDS[name]
    default = Experiment._meta.get_field(name).default
    kwargs = {"label": NUMBER_LABELS[name], "help_text": NUMBER_HELP.get(name, ""), "initial": default,
              # Added after the others: a form without it keeps the default.
              "required": name not in OPTIONAL_NUMBERS}
    if bound.integer:
        return forms.IntegerField(min_value=int(bound.low), max_value=int(bound.high), **kwargs)
    return forms.FloatField(min_value=bound.low, max_value=bound.high, widget=_number("any"), **kwargs)


# What a site can infer when few sites take part (see aggregation/policy): said on the
# form, after saving, on the experiment page and in the API docs.
FEW_SITES = 3
FEW_SITES_NOTICE = (
    "With fewer than three sites, each site can infer the other's feature means and standard "
    "deviations from the normaliser and the rounds' sample counts."
)


class ExperimentForm(forms.Form):
    """A draft experiment: which sites (and which of their datasets), model, strategy,
    training budget. The schema is the default vitals, the one uploads are checked against.

    Validation and saving go through ``aggregation.services.creation``, as the API's and
    the admin's do; the fields only parse what a person typed.
    """

    name = forms.CharField(label="Experiment name", max_length=MAX_NAME_LENGTH)
    description = forms.CharField(
        required=False, max_length=MAX_DESCRIPTION_LENGTH, widget=forms.Textarea(attrs={"rows": 2}),
    )
    model_kind = forms.ChoiceField(
        label="Model type",
        choices=[("mlp", "Neural network (hidden layers below)"), ("logistic", "Logistic regression")],
        widget=forms.RadioSelect, initial="mlp",
    )
    hidden = forms.CharField(
        label="Hidden layer sizes", required=False,
        help_text=f"Comma-separated widths, e.g. 64, 32, 16 (up to {MAX_LAYERS} layers).",
    )
    strategy = forms.ChoiceField(
        label="Aggregation strategy",
        choices=[(name, strategy_label(name)) for name in STRATEGIES],
        initial="fedavg",
    )
    dp_mode = forms.ChoiceField(
        label="Differential privacy",
        choices=[
            ("off", "Off"),
            ("record", "Record-level: DP-SGD at each site (recommended for patient data)"),
            ("site", "Site-level: DP-FedAvg, each hospital's whole contribution (for many sites)"),
        ],
        widget=forms.RadioSelect, initial="off", required=False,
        help_text="Record-level DP bounds what the shared models can reveal about any one patient. "
                  "Each site keeps its own ledger and refuses to train past the budget its admin set. "
                  "Site-level DP hides whether a whole hospital took part: each site's change is "
                  "clipped and noise is added to the sum. With a handful of hospitals its epsilon is "
                  "large (every site trains every round, so there is no sampling to amplify it, and "
                  "the noise that hides one hospital is divided among only a few): that is why "
                  "record-level is the default. It needs at least 3 sites and FedAvg or FedProx.",
    )
    dp_delta = forms.FloatField(
        label="Delta", required=False, widget=_number("any"),
        help_text="Leave empty for 1/(10 x rows) at each site; it must stay below 1/rows at every site. "
                  "Site-level: empty for 1e-05, below 1/sites.",
    )
    secure_aggregation = forms.BooleanField(
        label="Secure aggregation", required=False,
        help_text="The server learns only the sum of the sites' updates, never one site's update: each "
                  "site masks its update so that the masks cancel only in the sum. Hosted sites and agents "
                  "alike; not with FedMedian, trimmed mean or Krum, which must compare each site's "
                  "update. A malicious site can still skew the sum.",
    )
    secagg_threshold = forms.IntegerField(
        label="Secure-aggregation threshold", required=False, min_value=2, max_value=MAX_SITES,
        help_text="How many sites must complete every step of the protocol. Empty: a majority of the "
                  "sites, at least 2. With fewer the round fails closed and the previous model stays; "
                  "fewer than this many colluding sites learn nothing about another site's update.",
    )
    personalize = forms.ChoiceField(
        label="Personalisation",
        choices=[("off", "Off"), ("fedper", "FedPer: each site keeps its own output layer (measured best)"),
                 ("finetune", "Fine-tuning on each site's rows"),
                 ("ditto", "Ditto: fine-tuning pulled toward the global model")],
        initial="off", required=False,
        help_text="At the end, each site builds its own model from the best global version, and every site "
                  "sees alone / global / personalised on its own test rows. The models stay at the site.",
    )
    early_stopping = forms.IntegerField(
        label="Early stopping (rounds)", required=False,
        min_value=int(EARLY_STOPPING.low), max_value=int(EARLY_STOPPING.high),
        help_text="Finish once the sites' validation loss has not improved for this many rounds. "
                  "Needs a validation fraction above 0. Empty: run every round.",
    )
    deadline_minutes = forms.IntegerField(
        label="Round deadline (minutes)",
        min_value=math.ceil(BOUNDS["round_timeout"].low / 60), max_value=int(BOUNDS["round_timeout"].high // 60),
        initial=30,
        help_text="A round closes after this long with the sites that reported, if at least the minimum did.",
    )
    schema = forms.CharField(
        label="Schema (JSON)", required=False, max_length=MAX_SCHEMA_TEXT,
        widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false", "class": "mono"}),
        help_text="Per feature: the expected range (min, max: values outside are flagged and kept) and the "
                  "hard limits (hard_min, hard_max: values outside are impossible or unit mistakes, and a "
                  "dataset holding one cannot join); and the positive class, the condition to detect. The "
                  "columns must be those of the sites' datasets. Empty: the default vitals schema.",
    )

    def __init__(self, *args, datasets, instance: Experiment | None = None, **kwargs):
        """``datasets``: the ready datasets the coordinator may choose from; ``instance``:
        the draft being edited, if any."""
        super().__init__(*args, **kwargs)
        self.instance = instance
        for name in FORM_NUMBERS:
            self.fields[name] = _bounded_field(name)
        # DP-SGD's measured local settings (DP_TRAIN_DEFAULTS): the page's script
        # (static/js/experiment_form.js) switches to them when record-level DP is chosen
        # and back when it is not, unless the coordinator typed other values.
        for name, value in DP_TRAIN_DEFAULTS.items():
            attrs = self.fields[name].widget.attrs
            attrs["data-dp-default"] = value
            attrs["data-plain-default"] = Experiment._meta.get_field(name).default
        self.site_fields: list[tuple[Site, str]] = []
        chosen = {p.site_id: p.dataset_id for p in instance.participants.all()} if instance else {}
        by_site: dict[Site, list[Dataset]] = {}
        ready = datasets.filter(status=Dataset.Status.READY, site__is_active=True).select_related("site")
        for ds in ready.order_by("site__name", "-created_at"):
            # A hosted site trains on its stored file, an agent on its own CSV: a dataset
            # of the other kind could never be trained on (the service refuses it too).
            if bool(ds.file) == (ds.site.mode == Site.Mode.HOSTED):
                by_site.setdefault(ds.site, []).append(ds)
        self.sites_without_data = list(Site.objects.filter(is_active=True).exclude(pk__in=[s.pk for s in by_site]))
        for site, options in by_site.items():
            name = f"site_{site.pk}"
            self.fields[name] = forms.TypedChoiceField(
                label=site.name, required=False, coerce=int, empty_value=None,
                choices=[("", "Not taking part")] + [
                    (ds.pk, _dataset_choice(ds)) for ds in options
                ],
                initial=chosen.get(site.pk),
            )
            self.site_fields.append((site, name))
        self.param_groups: list[tuple[str, str, list[str]]] = []
        stored = instance.strategy_params if instance else {}
        for strategy, defaults in ((s, strategy_params(s)) for s in STRATEGIES):
            names = []
            for param, default in defaults.items():
                name = param_field_name(strategy, param)
                current = stored.get(param, default) if instance and instance.strategy == strategy else default
                self.fields[name] = forms.FloatField(
                    label=PARAM_LABELS.get(param, param), required=False, initial=current,
                    widget=_number("any"),
                )
                names.append(name)
            self.param_groups.append((strategy, STRATEGY_INFO.get(strategy, (strategy, ""))[1], names))
        if instance:
            layers = list(instance.hidden_layers)
            self.initial.update({
                "name": instance.name,
                "description": instance.description,
                **{name: getattr(instance, name) for name in FORM_NUMBERS},
                "model_kind": "mlp" if layers else "logistic",
                "hidden": ", ".join(map(str, layers)),
                "strategy": instance.strategy,
                "deadline_minutes": max(1, round(instance.round_timeout / 60)),
                "dp_mode": instance.dp_mode,
                "dp_delta": instance.dp_delta,
                "secure_aggregation": instance.secure_aggregation,
                "secagg_threshold": instance.secagg_threshold,
                "personalize": instance.personalize,
                "early_stopping": instance.early_stopping,
            })
        else:
            self.initial.setdefault("hidden", ", ".join(map(str, Experiment._meta.get_field("hidden_layers").default())))
        # Shown in full so that a coordinator edits ranges in place, not from memory.
        self.initial.setdefault("schema", json.dumps(instance.schema if instance else DEFAULT_SCHEMA.to_dict(), indent=2))

    def site_bound_fields(self):
        return [(site, self[name]) for site, name in self.site_fields]

    def param_bound_groups(self):
        return [(strategy, strategy_label(strategy), about, [self[n] for n in names])
                for strategy, about, names in self.param_groups]

    def clean_schema(self) -> dict | None:
        """The schema as a dict (None: the draft's own, or the default); the service checks it."""
        text = (self.cleaned_data.get("schema") or "").strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"The schema is not valid JSON: {exc}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("The schema must be a JSON object with 'features' and 'label'.")
        return value

    def clean_hidden(self) -> list[int]:
        raw = self.cleaned_data.get("hidden", "")
        if self.data.get(self.add_prefix("model_kind")) == "logistic":
            return []
        parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
        if not parts:
            raise forms.ValidationError("Give at least one layer width, or choose logistic regression.")
        try:
            widths = [int(p) for p in parts]
        except ValueError:
            raise forms.ValidationError("Widths must be whole numbers, e.g. 64, 32, 16.") from None
        if len(widths) > MAX_LAYERS or any(not 1 <= w <= MAX_WIDTH for w in widths):
            raise forms.ValidationError(f"Up to {MAX_LAYERS} layers, each 1 to {MAX_WIDTH} wide.")
        return widths

    def few_sites(self) -> bool:
        """Whether fewer than three sites are chosen (as typed, or in the draft being edited)."""
        if self.is_bound:
            chosen = [n for _, n in self.site_fields if self.data.get(n) not in (None, "")]
        else:
            chosen = [n for _, n in self.site_fields if self.fields[n].initial is not None]
        return 0 < len(chosen) < FEW_SITES

    few_sites_notice = FEW_SITES_NOTICE

    def service_arguments(self) -> dict:
        """What the creation service takes, from the fields that parsed."""
        cleaned = self.cleaned_data
        strategy = cleaned.get("strategy")
        args = {
            "name": cleaned.get("name", ""),
            "description": cleaned.get("description", ""),
            "datasets": [cleaned[name] for _, name in self.site_fields if cleaned.get(name) is not None],
            **{name: cleaned[name] for name in FORM_NUMBERS if cleaned.get(name) is not None},
        }
        if cleaned.get("hidden") is not None:
            args["hidden_layers"] = cleaned["hidden"]
        if cleaned.get("dp_mode"):
            args["dp_mode"] = cleaned["dp_mode"]
        if "dp_delta" in cleaned:
            args["dp_delta"] = cleaned["dp_delta"]
        args["secure_aggregation"] = bool(cleaned.get("secure_aggregation"))
        if cleaned.get("secagg_threshold") is not None:
            args["secagg_threshold"] = cleaned["secagg_threshold"]
        if cleaned.get("personalize"):
            args["personalize"] = cleaned["personalize"]
        if "early_stopping" in cleaned:
            args["early_stopping"] = cleaned["early_stopping"]
        if cleaned.get("deadline_minutes") is not None:
            args["round_timeout"] = cleaned["deadline_minutes"] * 60
        if strategy:
            args["strategy"] = strategy
            args["strategy_params"] = {
                param: cleaned[param_field_name(strategy, param)]
                for param in strategy_params(strategy)
                if cleaned.get(param_field_name(strategy, param)) is not None
            }
        if cleaned.get("schema") is not None:
            args["schema"] = cleaned["schema"]
        else:
            args["schema"] = self.instance.schema if self.instance is not None else DEFAULT_SCHEMA.to_dict()
        return args

    def add_service_errors(self, exc: ExperimentInvalid) -> None:
        for field, messages in exc.errors.items():
            target = SERVICE_FIELDS.get(field, field)
            if target not in self.fields:
                target = None
            elif self.has_error(target):
                continue  # the field's own parse error already says what is wrong
            for message in messages:
                self.add_error(target, message)

    def clean(self):
        cleaned = super().clean()
        try:
            validate_experiment(**self.service_arguments())
        except ExperimentInvalid as exc:
            self.add_service_errors(exc)
        return cleaned

    def save(self, *, user=None) -> Experiment | None:
        """Create the draft (or apply the edit). None, with the errors added to the form,
        when the service refuses it now (a dataset or the draft changed meanwhile)."""
        try:
            if self.instance is None:
                return create_experiment(created_by=user, **self.service_arguments())
            return update_experiment(self.instance, **self.service_arguments())
        except ExperimentInvalid as exc:
            self.add_service_errors(exc)
            return None


class VersionChoiceField(forms.ModelChoiceField):
    """Versions grouped by experiment (newest experiment first, newest version first),
    each option with its round, date and headline figures as the viewer may see them
    (aggregation.policy: a site sees final means only; no viewer, no figure). The
    experiment's recommended version (services.recommend) is marked."""

    def __init__(self, *args, viewer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.viewer = viewer
        self._figures = None
        self.widget.choices = self.grouped_choices()

    def grouped_choices(self) -> list:
        from .services.recommend import recommended_version

        versions = list(self.queryset.select_related("experiment", "round"))
        groups: dict[int, list] = {}
        for v in sorted(versions, key=lambda v: (-v.experiment_id, -v.version)):
            groups.setdefault(v.experiment_id, []).append(v)
        choices = []
        for members in groups.values():
            experiment = members[0].experiment
            best = recommended_version(experiment, members)
            label = f"{experiment.name} ({experiment.get_status_display().lower()})"
            choices.append((label, [(str(v.pk), self.label_from_instance(v, recommended=v == best)) for v in members]))
        return choices

    def label_from_instance(self, obj: ModelVersion, recommended: bool = False) -> str:
        shown: dict = {}
        if self.viewer is not None:
            from . import policy  # policy reads the models; forms load before them in admin

            if self._figures is None:
                self._figures = policy.version_figures(self.queryset)
            shown = policy.version_metrics(self.viewer, obj, self._figures[obj.pk])["mean"]
        # "recommended" first: a closed picker shows only the start of a long label.
        head = f"v{obj.version} (recommended)" if recommended else f"v{obj.version}"
        parts = [head, f"round {obj.round.number}", date_format(localtime(obj.created_at), "j M Y H:i")]
        for key, name in (("auroc", "AUROC"), ("accuracy", "accuracy")):
            value = shown.get(key)
            if isinstance(value, float) and value == value:
                parts.append(f"{name} {value:.3f}")
        return " · ".join(parts)


def feature_label(name: str) -> str:
    return FEATURE_LABELS.get(name, name.replace("_", " ").capitalize())


class PredictForm(forms.Form):
    """One patient's values, one text field per schema feature.

    The values are checked by the prediction service (aggregation.services.predict),
    not here, so the web form, the CSV upload and the API report the same errors.
    """

    def __init__(self, *args, versions, schema: Schema, viewer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"] = VersionChoiceField(
            queryset=versions, label="Model version", empty_label=None, viewer=viewer
        )
        for f in schema.features:
            unit = f" {f.unit}" if f.unit else ""
            bounds = f"Usual range {f.min:g} to {f.max:g}{unit}" if f.min is not None and f.max is not None else ""
            if f.hard_min is not None and f.hard_max is not None:  # what is refused as impossible
                bounds = f"{bounds}; accepted {f.hard_min:g} to {f.hard_max:g}{unit}".lstrip("; ")
            self.fields[f.name] = forms.CharField(
                label=f"{feature_label(f.name)}{f' ({f.unit})' if f.unit else ''}", required=False, help_text=bounds,
                widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
            )
        self.feature_names = schema.feature_names

    def feature_fields(self):
        return [self[name] for name in self.feature_names]


class PredictCsvForm(forms.Form):
    file = forms.FileField(
        label="CSV of patients",
        help_text="One row per patient with a header naming the features; other columns (an ID) are kept.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )

    def __init__(self, *args, versions, viewer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"] = VersionChoiceField(
            queryset=versions, label="Model version", empty_label=None, viewer=viewer
        )
        self.order_fields(["version", "file"])


def _dataset_choice(ds: Dataset) -> str:
    """A dataset as the coordinator's form lists it: figures only as the disclosure limits
    allow (clients/policy.py), and why a dataset too small to join cannot be chosen."""
    if join_problems(ds):
        return f"{ds.name} · {ds.row_count:,} rows · too small to join an experiment"
    return f"{ds.name} · {ds.row_count:,} rows · {ds.label_balance:.0%} healthy"
