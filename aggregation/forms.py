"""Forms of the experiment and prediction pages."""

from __future__ import annotations

from django import forms
from django.db import transaction

from clients.models import Dataset, Site
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.strategies import STRATEGIES, get_strategy, strategy_params

from .models import Experiment, ModelVersion, Participant

STRATEGY_INFO = {
    "fedavg": ("FedAvg", "Sample-weighted average of the sites' models."),
    "fedprox": ("FedProx", "FedAvg plus a proximal term that keeps local training near the global "
                           "model; for sites whose populations differ."),
    "fedadam": ("FedAdam", "An Adam step on the server over the averaged update."),
    "fedyogi": ("FedYogi", "Like FedAdam, with a more cautious second-moment update."),
    "fedadagrad": ("FedAdagrad", "An Adagrad step on the server over the averaged update."),
    "fedmedian": ("FedMedian", "Coordinate-wise median: robust to one faulty site."),
    "trimmed_mean": ("Trimmed mean", "Coordinate-wise mean without the extremes: robust to outliers."),
}
PARAM_LABELS = {
    "proximal_mu": "Proximal term weight (mu)",
    "eta": "Server learning rate (eta)",
    "beta_1": "Momentum decay (beta 1)",
    "beta_2": "Second-moment decay (beta 2)",
    "tau": "Adaptivity (tau)",
    "beta": "Fraction trimmed at each end (beta)",
}
FEATURE_LABELS = {
    "heart_rate": "Heart rate",
    "systolic_bp": "Systolic blood pressure",
    "diastolic_bp": "Diastolic blood pressure",
    "spo2": "SpO2 (oxygen saturation)",
}
MAX_LAYERS, MAX_WIDTH = 6, 1024


def strategy_label(name: str) -> str:
    return STRATEGY_INFO.get(name, (name, ""))[0]


def param_field_name(strategy: str, param: str) -> str:
    return f"{strategy}__{param}"


def _number(step: str, **attrs) -> forms.NumberInput:
    return forms.NumberInput(attrs={"step": step, **attrs})


class ExperimentForm(forms.ModelForm):
    """A draft experiment: which sites (and which of their datasets), model, strategy,
    training budget. The schema is the default vitals, the one uploads are checked against."""

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
    deadline_minutes = forms.IntegerField(
        label="Round deadline (minutes)", min_value=1, max_value=7 * 24 * 60, initial=30,
        help_text="A round closes after this long with the sites that reported, if at least the minimum did.",
    )

    class Meta:
        model = Experiment
        fields = ["name", "description", "num_rounds", "local_epochs", "batch_size", "lr", "weight_decay",
                  "dropout", "min_sites", "fraction_fit", "test_fraction", "seed"]
        labels = {
            "name": "Experiment name",
            "num_rounds": "Rounds",
            "local_epochs": "Local epochs per round",
            "batch_size": "Batch size",
            "lr": "Learning rate",
            "weight_decay": "Weight decay",
            "dropout": "Dropout",
            "min_sites": "Minimum sites per round",
            "fraction_fit": "Fraction of sites asked each round",
            "test_fraction": "Test fraction held out at each site",
            "seed": "Random seed",
        }
        help_texts = {
            "min_sites": "A round needs at least this many sites' updates.",
            "test_fraction": "Each site keeps this share of its rows to evaluate the models.",
        }
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "num_rounds": _number("1", min=1, max=1000),
            "local_epochs": _number("1", min=1, max=100),
            "batch_size": _number("1", min=1),
            "lr": _number("any", min="0.000001", max=1),
            "weight_decay": _number("any", min=0),
            "dropout": _number("any", min=0, max=0.9),
            "min_sites": _number("1", min=1),
            "fraction_fit": _number("any", min=0.01, max=1),
            "test_fraction": _number("any", min=0.05, max=0.5),
        }

    def __init__(self, *args, datasets, **kwargs):
        """``datasets``: the ready datasets the coordinator may choose from."""
        super().__init__(*args, **kwargs)
        self.site_fields: list[tuple[Site, str]] = []
        chosen = {p.site_id: p.dataset_id for p in self.instance.participants.all()} if self.instance.pk else {}
        by_site: dict[Site, list[Dataset]] = {}
        for ds in datasets.filter(status=Dataset.Status.READY, site__is_active=True).order_by("site__name", "-created_at"):
            by_site.setdefault(ds.site, []).append(ds)
        self.sites_without_data = list(Site.objects.filter(is_active=True).exclude(pk__in=[s.pk for s in by_site]))
        for site, options in by_site.items():
            name = f"site_{site.pk}"
            self.fields[name] = forms.TypedChoiceField(
                label=site.name, required=False, coerce=int, empty_value=None,
                choices=[("", "Not taking part")] + [
                    (ds.pk, f"{ds.name} · {ds.row_count:,} rows · {ds.label_balance:.0%} healthy") for ds in options
                ],
                initial=chosen.get(site.pk),
            )
            self.site_fields.append((site, name))
        self.param_groups: list[tuple[str, str, list[str]]] = []
        stored = self.instance.strategy_params if self.instance.pk else {}
        for strategy, defaults in ((s, strategy_params(s)) for s in STRATEGIES):
            names = []
            for param, default in defaults.items():
                name = param_field_name(strategy, param)
                current = stored.get(param, default) if self.instance.strategy == strategy else default
                self.fields[name] = forms.FloatField(
                    label=PARAM_LABELS.get(param, param), required=False, initial=current,
                    widget=_number("any"),
                )
                names.append(name)
            self.param_groups.append((strategy, STRATEGY_INFO.get(strategy, (strategy, ""))[1], names))
        if self.instance.pk:
            layers = list(self.instance.hidden_layers)
            self.initial.update({
                "model_kind": "mlp" if layers else "logistic",
                "hidden": ", ".join(map(str, layers)),
                "strategy": self.instance.strategy,
                "deadline_minutes": max(1, round(self.instance.round_timeout / 60)),
            })
        else:
            self.initial.setdefault("hidden", ", ".join(map(str, Experiment._meta.get_field("hidden_layers").default())))

    def site_bound_fields(self):
        return [(site, self[name]) for site, name in self.site_fields]

    def param_bound_groups(self):
        return [(strategy, strategy_label(strategy), about, [self[n] for n in names])
                for strategy, about, names in self.param_groups]

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

    def clean(self):
        cleaned = super().clean()
        self.participants = {
            site: cleaned[name] for site, name in self.site_fields if cleaned.get(name) is not None
        }
        if not self.participants:
            raise forms.ValidationError("Choose a dataset for at least one site.")
        min_sites = cleaned.get("min_sites")
        if min_sites and min_sites > len(self.participants):
            self.add_error("min_sites", f"Only {len(self.participants)} site(s) take part.")
        strategy = cleaned.get("strategy")
        if strategy:
            params = {
                param: cleaned[param_field_name(strategy, param)]
                for param in strategy_params(strategy)
                if cleaned.get(param_field_name(strategy, param)) is not None
            }
            try:
                get_strategy(strategy, **params)
            except ValueError as exc:
                self.add_error("strategy", str(exc))
            self.strategy_params = params
        return cleaned

    @transaction.atomic
    def save(self, commit: bool = True, *, user=None) -> Experiment:
        experiment = super().save(commit=False)
        experiment.schema = DEFAULT_SCHEMA.to_dict()
        experiment.hidden_layers = self.cleaned_data["hidden"]
        experiment.strategy = self.cleaned_data["strategy"]
        experiment.strategy_params = self.strategy_params
        experiment.round_timeout = self.cleaned_data["deadline_minutes"] * 60
        if user is not None and experiment.created_by_id is None:
            experiment.created_by = user
        experiment.save()
        experiment.participants.all().delete()
        Participant.objects.bulk_create(
            Participant(experiment=experiment, site=site, dataset_id=dataset_id)
            for site, dataset_id in self.participants.items()
        )
        return experiment


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ModelVersion) -> str:
        auroc = (obj.metrics.get("mean") or {}).get("auroc")
        score = f" · AUROC {auroc:.3f}" if isinstance(auroc, float) and auroc == auroc else ""
        return f"{obj.experiment.name} · version {obj.version}{score}"


def feature_label(name: str) -> str:
    return FEATURE_LABELS.get(name, name.replace("_", " ").capitalize())


class PredictForm(forms.Form):
    """One patient's values, one text field per schema feature.

    The values are checked by the prediction service (aggregation.services.predict),
    not here, so the web form, the CSV upload and the API report the same errors.
    """

    def __init__(self, *args, versions, schema: Schema, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"] = VersionChoiceField(queryset=versions, label="Model version", empty_label=None)
        for f in schema.features:
            unit = f" {f.unit}" if f.unit else ""
            bounds = f"Allowed: {f.min:g} to {f.max:g}{unit}" if f.min is not None and f.max is not None else ""
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

    def __init__(self, *args, versions, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"] = VersionChoiceField(queryset=versions, label="Model version", empty_label=None)
        self.order_fields(["version", "file"])
