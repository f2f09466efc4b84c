"""Creating and editing draft experiments: the one door behind the form, the API and the admin.

Every bound an experiment's configuration must respect is written here once
(``BOUNDS``, ``MAX_*``). The web form builds its fields and widgets from these
constants, the API serializer its OpenAPI minimum/maximum, and all three doors call
``create_experiment`` / ``update_experiment``, which check everything again, so no door
can store what another would refuse. Problems are reported together in one
``ExperimentInvalid`` naming each field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from audit import services as audit
from clients.models import Dataset, Site
from clients.policy import join_problems
from fedhealth.ml.config import DEFAULT_PERSONALIZE, PERSONALIZE_MODES
from fedhealth.ml.privacy import DP_TRAIN_DEFAULTS, MIN_SITE_DP_SITES
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema, SchemaError
from fedhealth.ml.secagg.federated import incompatibility
from fedhealth.ml.secagg.server import check_threshold
from fedhealth.ml.strategies import STRATEGIES, get_strategy, strategy_params

from ..models import Experiment, Participant
from .schema_fit import fit_problems


@dataclass(frozen=True)
class Bound:
    """Inclusive range of a numeric setting; ``integer`` settings take whole numbers only."""

    low: float
    high: float
    integer: bool = False


SEED_MAX = 2**31 - 1  # torch and numpy seeds; the round seed is derived from it
MAX_SITES = 1000
BOUNDS: dict[str, Bound] = {
    "num_rounds": Bound(1, 1000, integer=True),
    "local_epochs": Bound(1, 100, integer=True),
    "batch_size": Bound(1, 65536, integer=True),
    "lr": Bound(1e-6, 1.0),
    "weight_decay": Bound(0.0, 1.0),
    "dropout": Bound(0.0, 0.9),
    "min_sites": Bound(1, MAX_SITES, integer=True),
    "fraction_fit": Bound(0.01, 1.0),
    "test_fraction": Bound(0.05, 0.5),
    # Share of each site's training rows held out to select the best round (0: off).
    "validation_fraction": Bound(0.0, 0.5),
    # Seconds. A round shorter than a minute cannot wait for a worker to pick it up.
    "round_timeout": Bound(60, 7 * 24 * 3600, integer=True),
    "seed": Bound(0, SEED_MAX, integer=True),
    "outlier_factor": Bound(1.5, 1000.0),
    # Record-level DP (fedhealth.ml.privacy): epsilon per patient at each site over the
    # whole experiment, and the per-row gradient clip. Below 0.01 no model learns; above
    # 100 the guarantee means nothing.
    "dp_epsilon": Bound(0.01, 100.0),
    "dp_clip_norm": Bound(0.001, 1000.0),
}
DP_MODES = ("off", "record", "site")
# Platform early stopping: scored rounds without a better weighted validation loss
# before the experiment completes (None: off; needs a validation fraction above 0).
EARLY_STOPPING = Bound(1, 1000, integer=True)
# Personalisation at the end of the experiment (fedhealth.ml.personalize): "off" or a
# mode; "on" (or true) is the measured best, DEFAULT_PERSONALIZE (FedPer).
PERSONALIZE_CHOICES = ("off", *PERSONALIZE_MODES)
MAX_HIDDEN_LAYERS = 8
MAX_LAYER_WIDTH = 1024
MAX_NAME_LENGTH = 200  # Experiment.name's column
MAX_DESCRIPTION_LENGTH = 5000
# A strategy parameter is a small hyper-parameter (a learning rate, a fraction); the
# strategy itself checks its own range.
MAX_STRATEGY_PARAMS = 16

CONFIG_KEYS = (
    *BOUNDS, "hidden_layers", "strategy", "strategy_params", "dp_mode", "dp_delta",
    "secure_aggregation", "secagg_threshold", "personalize", "early_stopping",
)


class ExperimentInvalid(ValueError):
    """The experiment cannot be stored as given. ``errors`` maps each offending field
    (``name``, ``seed``, ``datasets``, ...) to messages naming the value."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        self.errors = {field: list(messages) for field, messages in errors.items()}
        super().__init__("; ".join(f"{f}: {m}" for f, ms in self.errors.items() for m in ms))


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:g}"


def _number(field: str, value: Any, bound: Bound) -> tuple[float | int | None, str | None]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a whole number" if bound.integer else "a number"
        return None, f"{field} must be {kind}, not {value!r}."
    if bound.integer and isinstance(value, float):
        if not value.is_integer():
            return None, f"{field} must be a whole number, not {value!r}."
        value = int(value)
    if not math.isfinite(value):
        return None, f"{field} must be a finite number, not {value!r}."
    if not bound.low <= value <= bound.high:
        return (
            None,
            f"{field} must be between {_show(bound.low)} and {_show(bound.high)}; got {_show(value)}.",
        )
    return value, None


def _text(field: str, value: Any, limit: int, *, required: bool) -> tuple[str | None, str | None]:
    if not isinstance(value, str):
        return None, f"{field} must be text."
    value = value.strip()
    if required and not value:
        return None, f"{field} is required."
    if len(value) > limit:
        return None, f"{field} is {len(value):,} characters long; the limit is {limit:,}."
    if "\x00" in value:
        return None, f"{field} must not contain NUL characters."
    return value, None


def _hidden_layers(value: Any) -> tuple[list[int] | None, str | None]:
    if not isinstance(value, list | tuple):
        return None, "hidden_layers must be a list of layer widths."
    if len(value) > MAX_HIDDEN_LAYERS:
        return None, f"hidden_layers has {len(value)} layers; at most {MAX_HIDDEN_LAYERS}."
    for width in value:
        if (
            isinstance(width, bool)
            or not isinstance(width, int)
            or not 1 <= width <= MAX_LAYER_WIDTH
        ):
            return (
                None,
                f"hidden_layers: each width must be a whole number from 1 to {MAX_LAYER_WIDTH}, not {width!r}.",
            )
    return list(value), None


def _strategy(name: Any, params: Any) -> tuple[tuple[str, dict[str, float]] | None, dict[str, str]]:
    if name not in STRATEGIES:
        return None, {"strategy": f"strategy must be one of {', '.join(STRATEGIES)}, not {name!r}."}
    if not isinstance(params, Mapping) or len(params) > MAX_STRATEGY_PARAMS:
        return None, {
            "strategy_params": "strategy_params must be an object of a few named numbers."
        }
    known = strategy_params(name)
    clean: dict[str, float] = {}
    for key, value in params.items():
        if key not in known:
            expected = ", ".join(known) or "none"
            return None, {
                "strategy_params": f"{key!r} is not a parameter of {name} (expected: {expected})."
            }
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return None, {"strategy_params": f"{key} must be a finite number, not {value!r}."}
        clean[key] = value
    try:
        get_strategy(name, **clean)
    except (ValueError, TypeError) as exc:  # the strategy's own message names the parameter
        return None, {"strategy_params": str(exc)}
    return (name, clean), {}


def _datasets(
    items: Iterable[Dataset | int], schema: dict[str, Any]
) -> tuple[list[Dataset], list[str]]:
    ids = [d.pk if isinstance(d, Dataset) else d for d in items]
    if not ids:
        return [], ["Choose a dataset for at least one site."]
    if len(ids) > MAX_SITES:
        return [], [f"at most {MAX_SITES} datasets."]
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        return [], ["datasets must be dataset ids."]
    found = {d.pk: d for d in Dataset.objects.filter(pk__in=ids).select_related("site")}
    problems: list[str] = []
    sites: set[int] = set()
    for pk in ids:
        ds = found.get(pk)
        if ds is None:
            problems.append(f"dataset {pk} does not exist")
            continue
        if ds.status != Dataset.Status.READY:
            problems.append(f"dataset {pk} is {ds.status}, not ready")
        elif not ds.site.is_active:
            problems.append(f"dataset {pk} belongs to site {ds.site.slug}, which is not active")
        elif fit := fit_problems(ds, schema):  # columns, and the experiment's hard limits
            problems.extend(fit)
        elif ds.site.mode == Site.Mode.AGENT and ds.file:
            # A file uploaded while the site was hosted: its agent trains on its own CSV,
            # so the stored file's statistics would not describe what is trained on.
            problems.append(
                f"dataset {pk} is a stored upload, but site {ds.site.slug} runs a site agent"
            )
        elif ds.site.mode == Site.Mode.HOSTED and not ds.file:
            problems.append(
                f"dataset {pk} is an agent's summary, but site {ds.site.slug} is hosted"
            )
        else:  # the disclosure limits (clients/policy.py)
            problems.extend(join_problems(ds))
        if ds.site_id in sites:
            problems.append(f"site {ds.site.slug} has more than one dataset in the list")
        sites.add(ds.site_id)
    return [found[pk] for pk in ids if pk in found], problems


def validate_experiment(
    *,
    name: Any,
    description: Any = "",
    datasets: Sequence[Dataset | int],
    schema: Any = None,
    **config: Any,
) -> dict[str, Any]:
    """Check a draft experiment's fields; return them cleaned (``datasets`` as Dataset rows,
    ``schema`` as a dict). Settings left out keep the model's defaults.

    Raises ``ExperimentInvalid`` with every problem found, by field.
    """
    errors: dict[str, list[str]] = {}

    def fail(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    unknown = sorted(set(config) - set(CONFIG_KEYS))
    for key in unknown:
        fail(key, f"{key} is not a setting of an experiment.")
    clean: dict[str, Any] = {}
    for field, value, limit, required in (
        ("name", name, MAX_NAME_LENGTH, True),
        ("description", description or "", MAX_DESCRIPTION_LENGTH, False),
    ):
        text, problem = _text(field, value, limit, required=required)
        if problem:
            fail(field, problem)
        clean[field] = text
    for field, bound in BOUNDS.items():
        if field in config:
            value, problem = _number(field, config[field], bound)
            if problem:
                fail(field, problem)
            clean[field] = value
    if "hidden_layers" in config:
        layers, problem = _hidden_layers(config["hidden_layers"])
        if problem:
            fail("hidden_layers", problem)
        clean["hidden_layers"] = layers
    if "strategy" in config or "strategy_params" in config:
        strategy, problems = _strategy(
            config.get("strategy", "fedavg"), config.get("strategy_params") or {}
        )
        for field, message in problems.items():
            fail(field, message)
        if strategy:
            clean["strategy"], clean["strategy_params"] = strategy

    if "dp_mode" in config:
        if config["dp_mode"] not in DP_MODES:
            fail("dp_mode", f"dp_mode must be one of {', '.join(DP_MODES)}, not {config['dp_mode']!r}.")
        else:
            clean["dp_mode"] = config["dp_mode"]
    if config.get("dp_delta") is not None:
        delta = config["dp_delta"]
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta):
            fail("dp_delta", f"dp_delta must be a number, not {delta!r}.")
        elif not 0 < delta < 1:
            fail("dp_delta", f"dp_delta must be above 0 and below 1; got {delta:g}.")
        else:
            clean["dp_delta"] = float(delta)
    elif "dp_delta" in config:
        clean["dp_delta"] = None

    _personalisation(config, clean, fail)

    try:
        schema_dict = (
            Schema.from_dict(schema).to_dict() if schema is not None else DEFAULT_SCHEMA.to_dict()
        )
    except (SchemaError, TypeError, AttributeError, KeyError) as exc:
        fail("schema", f"schema is not valid: {exc}")
        schema_dict = None
    clean["schema"] = schema_dict
    rows: list[Dataset] = []
    if schema_dict is not None:
        rows, problems = _datasets(datasets, schema_dict)
        for message in problems:
            fail("datasets", message)
    clean["datasets"] = rows

    # Rules across fields, each named by the field a person would change.
    n = len(rows)
    min_sites = clean.get("min_sites", Experiment._meta.get_field("min_sites").default)
    if n and isinstance(min_sites, int) and min_sites > n:
        fail("min_sites", f"min_sites is {min_sites}. Only {n} site{'' if n == 1 else 's'} take{'s' if n == 1 else ''} part.")
    if n and clean.get("strategy"):
        # A robust strategy (Krum) cannot aggregate fewer updates than it must outvote.
        required = getattr(
            get_strategy(clean["strategy"], **clean["strategy_params"]), "required", None
        )
        if callable(required) and n < required():
            fail(
                "strategy_params",
                f"{clean['strategy']} with these parameters needs at least "
                f"{required()} sites; {n} take part.",
            )
    site_dp = clean.get("dp_mode") == "site"
    if site_dp:
        _site_level_dp(clean, rows, fail)
        agents = [ds.site.slug for ds in rows if ds.site.mode == Site.Mode.AGENT]
        fraction = clean.get("fraction_fit", Experiment._meta.get_field("fraction_fit").default)
        quorum = min_sites if isinstance(min_sites, int) else 1
        selected = min(n, max(quorum, math.ceil(fraction * n))) if n else 0
        if config.get("secure_aggregation") is True and agents and selected < n:
            # Each site adds its own noise share before masking; an agent checks the
            # server's noise against the target at sampling rate 1 (it cannot see the
            # selection), so a noise derived for q = m / N < 1 is one it would refuse.
            fail("fraction_fit", f"site-level DP with secure aggregation and site agents "
                 f"({', '.join(agents)}) selects every site each round: an agent adds noise "
                 f"for sampling rate 1 (it cannot check the server's selection), and refuses "
                 f"the smaller noise of selecting {selected} of {n}. Set fraction_fit to 1.")
    if clean.get("dp_delta") and rows and not site_dp:
        # delta is a probability of failure per patient: at or above 1/rows it allows
        # releasing a whole row. Checked against each site's training rows.
        test_fraction = clean.get("test_fraction") or Experiment._meta.get_field("test_fraction").default
        for ds in rows:
            train_rows = ds.row_count - math.ceil(test_fraction * ds.row_count)
            if train_rows > 0 and clean["dp_delta"] >= 1 / train_rows:
                fail(
                    "dp_delta",
                    f"dp_delta must be below 1/rows = {1 / train_rows:.2g} for dataset {ds.pk} "
                    f"({train_rows:,} training rows); got {clean['dp_delta']:g}.",
                )
    _secure_aggregation(config, clean, rows, fail)
    if errors:
        raise ExperimentInvalid(errors)
    return clean


def _site_level_dp(clean: dict[str, Any], rows: list[Dataset], fail: Any) -> None:
    """Site-level DP (DP-FedAvg, fedhealth.ml.privacy.sitelevel): the unit is a site, so
    delta must be below 1/sites; at least ``MIN_SITE_DP_SITES`` sites (with fewer the
    noise that hides one swamps the model); the server's rule is DP-FedAvg's clipped,
    weight-1 sum, so only FedAvg or FedProx (whose extra term is local)."""
    strategy = clean.get("strategy", "fedavg")
    if strategy not in ("fedavg", "fedprox"):
        fail("strategy", f"site-level DP aggregates with DP-FedAvg: choose fedavg or fedprox, not {strategy}.")
    n = len(rows)
    if rows and n < MIN_SITE_DP_SITES:
        fail(
            "dp_mode",
            f"site-level DP needs at least {MIN_SITE_DP_SITES} sites; {n} take{'s' if n == 1 else ''} "
            "part. With so few, the noise that hides one site swamps the model: use record-level DP.",
        )
    delta = clean.get("dp_delta")
    if delta and rows and delta >= 1 / n:
        fail(
            "dp_delta",
            f"dp_delta must be below 1/sites = {1 / n:.2g} with site-level DP ({n} sites); "
            f"got {delta:g}. Leave it empty for 1e-05.",
        )


def _personalisation(config: Mapping[str, Any], clean: dict[str, Any], fail: Any) -> None:
    """The personalisation mode ("on" or true: the default mode; false or None: off)
    and early stopping's patience (None: off), which needs a validation slice."""
    if "personalize" in config:
        mode = config["personalize"]
        if mode is True or mode == "on":
            mode = DEFAULT_PERSONALIZE
        elif mode is False or mode is None:
            mode = "off"
        if not isinstance(mode, str) or mode not in PERSONALIZE_CHOICES:
            fail("personalize", f"personalize must be one of {', '.join(PERSONALIZE_CHOICES)}, not {mode!r}.")
        else:
            clean["personalize"] = mode
    if "early_stopping" not in config:
        return
    patience = config["early_stopping"]
    if patience is None:
        clean["early_stopping"] = None
        return
    value, problem = _number("early_stopping", patience, EARLY_STOPPING)
    if problem:
        fail("early_stopping", problem)
        return
    fraction = clean.get("validation_fraction", Experiment._meta.get_field("validation_fraction").default)
    if not fraction:
        fail("early_stopping", "early stopping needs a validation fraction above 0: the validation loss is what it watches.")
        return
    clean["early_stopping"] = value


def _secure_aggregation(config: Mapping[str, Any], clean: dict[str, Any], rows: list[Dataset], fail: Any) -> None:
    """Secure aggregation (docs/secure-aggregation.md): the server sees only the sum of the
    updates, so a rule that compares the sites' updates cannot run, and the threshold
    must be a majority of the sites, at least 2."""
    secure = config.get("secure_aggregation", False)
    threshold = config.get("secagg_threshold")
    if "secure_aggregation" in config:
        if not isinstance(secure, bool):
            fail("secure_aggregation", f"secure_aggregation must be true or false, not {secure!r}.")
            return
        clean["secure_aggregation"] = secure
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)):
        fail("secagg_threshold", f"secagg_threshold must be a whole number or empty, not {threshold!r}.")
        return
    if not secure:
        if threshold is not None:
            fail("secagg_threshold", "secagg_threshold applies only with secure_aggregation on.")
        elif "secagg_threshold" in config:
            clean["secagg_threshold"] = None
        return
    clean["secagg_threshold"] = threshold
    if "strategy" in config and "strategy" not in clean:
        return  # the strategy itself was refused: that message says enough
    strategy = get_strategy(clean.get("strategy", "fedavg"), **clean.get("strategy_params", {}))
    reason = incompatibility(strategy)
    if reason:
        fail("strategy", f"secure aggregation is on, and {reason}.")
    n = len(rows)
    if rows and n < 2:
        fail("secure_aggregation", f"secure aggregation needs at least 2 sites; {n} takes part.")
    elif rows and threshold is not None:
        try:
            check_threshold(threshold, n, None)
        except ValueError as exc:  # names the allowed range and the value
            fail("secagg_threshold", f"{exc}.")


def _participants(experiment: Experiment, datasets: list[Dataset]) -> None:
    """Invite one site per dataset (the dataset is a proposal: the site's admin chooses
    on acceptance, aggregation/services/consent.py). A site invited before keeps its row
    and decision; an acceptance of terms that changed since no longer counts (its hash
    differs), so the site is asked again."""
    wanted = {ds.site_id: ds for ds in datasets}
    experiment.participants.exclude(site_id__in=wanted).delete()
    existing = {p.site_id: p for p in experiment.participants.all()}
    for site_id, ds in wanted.items():
        p = existing.get(site_id)
        if p is None:
            Participant.objects.create(experiment=experiment, site=ds.site, dataset=ds)
        elif p.consent != Participant.Consent.ACCEPTED and p.dataset_id != ds.pk:
            p.dataset = ds
            p.save(update_fields=["dataset"])


def create_experiment(
    *,
    created_by: Any = None,
    name: str,
    description: str = "",
    datasets: Sequence[Dataset | int],
    schema: Any = None,
    **config: Any,
) -> Experiment:
    """Create a draft experiment over ``datasets`` (one ready dataset per site).

    ``config``: any of ``CONFIG_KEYS``; settings left out keep the model's defaults, except
    that a record-level DP experiment gets DP-SGD's measured batch size and learning rate
    (``DP_TRAIN_DEFAULTS``) where they are left out (site-level DP trains without
    DP-SGD: no change). Raises ``ExperimentInvalid``.
    """
    if config.get("dp_mode") == Experiment.DPMode.RECORD:
        config = {**DP_TRAIN_DEFAULTS, **config}
    clean = validate_experiment(
        name=name, description=description, datasets=datasets, schema=schema, **config
    )
    rows = clean.pop("datasets")
    user = created_by if getattr(created_by, "is_authenticated", False) else None
    with transaction.atomic():
        experiment = Experiment.objects.create(created_by=user, **clean)
        audit.record(audit.Kind.EXPERIMENT_CREATE, actor=user, target=f"experiment {experiment.pk}",
                     details={"name": experiment.name, "datasets": [ds.pk for ds in rows]})
        _participants(experiment, rows)
    return experiment


def update_experiment(
    experiment: Experiment,
    *,
    name: str,
    description: str = "",
    datasets: Sequence[Dataset | int],
    schema: Any = None,
    **config: Any,
) -> Experiment:
    """Change a draft experiment's configuration and participants (drafts only).

    Raises ``ExperimentInvalid`` (``status`` when the experiment has started).
    """
    schema = experiment.schema if schema is None else schema
    clean = validate_experiment(
        name=name, description=description, datasets=datasets, schema=schema, **config
    )
    rows = clean.pop("datasets")
    with transaction.atomic():
        # Under the row lock: a concurrent Start must not see half an edit, nor an edit
        # land on an experiment that has just started.
        locked = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if locked.status != Experiment.Status.DRAFT:
            raise ExperimentInvalid(
                {"status": [f"only a draft can be changed; this experiment is {locked.status}."]}
            )
        for field, value in clean.items():
            setattr(locked, field, value)
        locked.save()
        _participants(locked, rows)
    return locked


__all__ = [
    "BOUNDS",
    "CONFIG_KEYS",
    "DP_MODES",
    "EARLY_STOPPING",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_HIDDEN_LAYERS",
    "MAX_LAYER_WIDTH",
    "MAX_NAME_LENGTH",
    "MAX_SITES",
    "PERSONALIZE_CHOICES",
    "SEED_MAX",
    "Bound",
    "ExperimentInvalid",
    "create_experiment",
    "update_experiment",
    "validate_experiment",
]
