"""Run a whole federated experiment in one process: no server, no worker."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

# Start-up (docs/benchmarks.md, `startup`): only what the options need is imported here.
# The CSV validator and the sample generator (pandas) and the secure-aggregation
# protocol are imported where a run uses them, so `simulate --help` and a bad option
# answer without them.
from fedhealth.ml.comparison import evaluate_alone, evaluate_personal
from fedhealth.ml.federation import (
    FederatedConfig,
    RoundRecord,
    SiteSplit,
    evaluate_sites,
    run_centralized,
    run_experiment,
    run_federated,
    run_local,
    split_site,
    summarise,
)
from fedhealth.ml.metrics import json_safe
from fedhealth.ml.model import ModelConfig
from fedhealth.ml.model_file import describe
from fedhealth.ml.personalize import DEFAULT_PERSONALIZE, PERSONALIZE_MODES
from fedhealth.ml.privacy import (
    DEFAULT_CLIP_NORM,
    DEFAULT_EPSILON,
    DEFAULT_SITE_DELTA,
    PrivacySettings,
    SiteDPSettings,
)
from fedhealth.ml.schema import DEFAULT_SCHEMA, Schema
from fedhealth.ml.strategies import STRATEGIES, get_strategy
from fedhealth.ml.training import TrainConfig, evaluate
from fedhealth.ml.weights_io import save_weights

if TYPE_CHECKING:
    from fedhealth.ml.secagg.federated import SecureOptions
    from fedhealth.ml.validation import Dataset, Policy

# fedhealth.ml.validation.Policy's values (importing it imports pandas); a test checks
# they match.
POLICY_CHOICES = ("reject", "drop-invalid-rows")

_TRAIN_DEFAULTS = TrainConfig()
_FED_DEFAULTS = FederatedConfig()


def parse_hidden(text: str) -> tuple[int, ...]:
    """'64,32,16' -> (64, 32, 16); 'none' -> () (logistic regression)."""
    if text.strip().lower() in {"none", "", "logistic"}:
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CommandError(f"--hidden must be comma-separated integers or 'none', not {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise CommandError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def parse_site(spec: str) -> tuple[str, Path, Path | None]:
    """'NAME=TRAIN.csv[:TEST.csv]' -> (name, train path, test path or None)."""
    name, sep, files = spec.partition("=")
    if not sep or not name or not files:
        raise CommandError(f"--site must look like NAME=TRAIN.csv[:TEST.csv], not {spec!r}")
    train, _, test = files.partition(":")
    return name, Path(train), Path(test) if test else None


def _cell(value: Any) -> str:
    """A metric for the summary table: "n/a" where undefined, never "nan"."""
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


class Command(BaseCommand):
    help = "Run a federated experiment in-process and compare it with centralized and local training."
    # Core only: no project checks to run (manage.py runs it without the project's
    # settings: fedhealth/management/core.py).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--site", action="append", default=[], metavar="NAME=TRAIN.csv[:TEST.csv]")
        parser.add_argument("--generate", type=int, metavar="N", help="use N synthetic sites instead of --site")
        parser.add_argument("--rows", type=int, default=2000, help="rows per generated site")
        parser.add_argument("--non-iid", action="store_true", help="generated sites are non-IID")
        parser.add_argument("--features", help="comma-separated feature columns (default: the four vitals)")
        parser.add_argument("--label", default=None, help="label column (default: healthy)")
        parser.add_argument("--policy", choices=POLICY_CHOICES, default=POLICY_CHOICES[0])
        parser.add_argument("--test-fraction", type=float, default=0.25)
        parser.add_argument("--strategy", choices=sorted(STRATEGIES), default=_FED_DEFAULTS.strategy)
        parser.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE",
                            help="strategy hyperparameter, e.g. proximal_mu=0.1 (repeatable)")
        parser.add_argument("--rounds", type=int, default=_FED_DEFAULTS.rounds)
        parser.add_argument("--local-epochs", type=int, default=_TRAIN_DEFAULTS.epochs)
        parser.add_argument("--batch-size", type=int, default=_TRAIN_DEFAULTS.batch_size)
        parser.add_argument("--lr", type=float, default=_TRAIN_DEFAULTS.lr)
        parser.add_argument("--hidden", default=",".join(map(str, ModelConfig(n_features=1).hidden)))
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-baselines", action="store_true", help="skip centralized and local-only runs")
        parser.add_argument("--json", dest="json_path", help="write results as JSON to this path")
        parser.add_argument("--secure-aggregation", action="store_true",
                            help="aggregate with secure aggregation (Bonawitz et al. 2017): the server "
                                 "sees only the sum; FedAvg, FedProx and the FedOpt strategies only")
        parser.add_argument("--secagg-threshold", type=int, metavar="K",
                            help="sites needed to unmask a round (default: a majority, at least 2)")
        parser.add_argument("--secagg-dropout", type=float, default=0.0, metavar="F",
                            help="probability that a site drops after sharing keys, each round (simulated)")
        parser.add_argument("--secagg-degree", type=int, metavar="D",
                            help="SecAgg+: each site masks with D neighbours (even) instead of every site")
        parser.add_argument("--dp", choices=["off", "record", "site"], default="off",
                            help="record: record-level differential privacy (DP-SGD) at each site; "
                                 "site: site-level DP (DP-FedAvg: each site's whole contribution, "
                                 "at least 3 sites; with a few sites its epsilon is large)")
        parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                            help="with --dp: epsilon over all rounds (record: per patient at each site; "
                                 "site: per site)")
        parser.add_argument("--delta", type=float, default=None,
                            help="with --dp record: delta (default 1/(10 x rows) at each site; below 1/rows); "
                                 f"with --dp site: default {DEFAULT_SITE_DELTA:g}, below 1/sites")
        parser.add_argument("--clip", type=float, default=DEFAULT_CLIP_NORM,
                            help="with --dp record: per-row gradient clip norm; with --dp site: the L2 "
                                 "bound on each site's change per round")
        parser.add_argument("--dp-sweep", metavar="E1,E2,...",
                            help="run once without DP and once per epsilon; print and write (--json) "
                                 "the privacy-utility curve")
        parser.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                            help="share of each site's training rows held out to select the best round "
                                 "(default 0: the last round is the model)")
        parser.add_argument("--early-stopping", type=int, metavar="N",
                            help="stop after N rounds without a better validation loss (needs "
                                 "--validation-fraction)")
        parser.add_argument("--personalize", nargs="?", const=DEFAULT_PERSONALIZE, choices=PERSONALIZE_MODES,
                            metavar="MODE",
                            help=f"also build one model per site: {', '.join(PERSONALIZE_MODES)} "
                                 f"(default {DEFAULT_PERSONALIZE})")
        parser.add_argument("--save-model", metavar="PATH",
                            help="write the selected global model as a self-describing safetensors file "
                                 "(schema, normaliser, configuration, metrics: fedhealth.ml.load_model reads it)")
        parser.add_argument("--threads", type=int, default=1,
                            help="torch threads (default 1: this small model trains fastest single-threaded)")

    def handle(self, *args, **opts):
        if opts["threads"] < 1:
            raise CommandError("--threads must be at least 1")
        torch.set_num_threads(opts["threads"])
        schema = self._schema(opts["features"], opts["label"])
        sites = self._load_sites(schema, opts)
        config = self._config(schema, opts)
        secure = self._secure(opts, config, len(sites))
        config = self._privacy(opts, config, sites)
        if opts["dp_sweep"]:
            return self._sweep(opts, config, sites, secure)

        bar = tqdm(total=config.rounds, desc="rounds", unit="round", disable=opts["verbosity"] == 0)
        self.stdout.write(f"{'round':>5}  {'loss':>8}  {'accuracy':>8}  {'auroc':>8}  sites")

        def on_round(rec: RoundRecord) -> None:
            bar.update(1)
            bar.clear()
            self.stdout.write(
                f"{rec.round:>5}  {rec.loss:>8.4f}  {rec.accuracy:>8.4f}  {rec.auroc:>8.4f}  {len(rec.accepted)}"
                + (f"  rejected: {rec.rejected}" if rec.rejected else "")
                + (f"  no new model: {rec.refused}" if rec.refused else "")
            )
            bar.refresh()

        try:
            run = run_experiment(sites, config, on_round=on_round, secure=secure)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()
        weights, normalizer, history = run.weights, run.normalizer, run.history
        result: dict[str, Any] = {
            "config": config.to_dict() | {"sites": [s.name for s in sites], "schema": schema.to_dict()}
            | {"secure_aggregation": None if secure is None else secure.to_dict()},
            "history": [
                {"round": h.round, "loss": h.loss, "accuracy": h.accuracy, "auroc": h.auroc,
                 "train_loss": h.train_loss, "rejected": h.rejected, "accepted": h.accepted,
                 "refused": h.refused, "validation_loss": h.validation_loss}
                for h in history
            ],
            # The selected version: the best round by validation loss (or the last).
            "federated": evaluate_sites(config.model, weights, normalizer, sites, positive=config.train.positive)
            | {"selected_round": run.selected_round, "rounds_run": len(history)},
        }
        if config.validation_fraction > 0:
            stopped = " (stopped early)" if len(history) < config.rounds else ""
            self.stdout.write(f"selected round {run.selected_round} of {len(history)}{stopped} by validation loss")
        if run.personal:
            result["personalized"] = evaluate_personal(
                config.model, run.personal, normalizer, sites, positive=config.train.positive
            )
        if config.privacy is not None:
            result["privacy"] = {
                name: {k: spend[k] for k in ("epsilon_total", "delta", "noise_multiplier", "clip_norm")}
                for name, spend in history[-1].privacy.items()
            }
            for figures in result["privacy"].values():
                figures["epsilon"] = figures.pop("epsilon_total")
            self.stdout.write("privacy at each site (record-level, whole experiment):")
            self._print_privacy(result["privacy"])
        if config.site_privacy is not None:
            result["privacy"] = {
                name: {"level": "site", **{k: spend[k] for k in (
                    "epsilon", "delta", "noise_multiplier", "clip_norm", "sample_rate", "denominator")}}
                for name, spend in history[-1].privacy.items()
            }
            self.stdout.write("privacy of each site's whole contribution (site-level, DP-FedAvg):")
            self._print_privacy(result["privacy"])
        self._finish(opts, schema, config, run, result, sites)

    def _print_privacy(self, privacy: dict[str, dict[str, Any]]) -> None:
        for name, figures in privacy.items():
            self.stdout.write(
                f"  {name}: epsilon {figures['epsilon']:.3f}, delta {figures['delta']:.2g}, "
                f"noise multiplier {figures['noise_multiplier']:.3f}"
            )

    def _finish(self, opts, schema: Schema, config: FederatedConfig, run, result, sites) -> None:
        if opts["save_model"]:
            self._save_model(Path(opts["save_model"]), schema, config, run, result)
        if not opts["no_baselines"]:
            result |= self._baselines(sites, config)
        self._print_summary(result)
        if opts["json_path"]:
            path = Path(opts["json_path"])
            path.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
            self.stdout.write(f"results written to {path}")

    # -- option parsing -------------------------------------------------------------

    def _schema(self, features: str | None, label: str | None) -> Schema:
        if features is None:
            return DEFAULT_SCHEMA if label in (None, DEFAULT_SCHEMA.label) else Schema(
                DEFAULT_SCHEMA.features, label=label)
        names = [f.strip() for f in features.split(",") if f.strip()]
        try:
            return Schema.from_columns(names, label=label or DEFAULT_SCHEMA.label)
        except ValueError as exc:
            raise CommandError(f"invalid --features/--label: {exc}") from None

    def _config(self, schema: Schema, opts: dict[str, Any]) -> FederatedConfig:
        for key in ("rounds", "local_epochs", "batch_size"):
            if opts[key] < 1:
                raise CommandError(f"--{key.replace('_', '-')} must be at least 1")
        if opts["lr"] <= 0:
            raise CommandError("--lr must be positive")
        params: dict[str, float] = {}
        for item in opts["strategy_param"]:
            key, sep, value = item.partition("=")
            try:
                params[key] = float(value)
            except ValueError:
                raise CommandError(f"--strategy-param must look like KEY=NUMBER, not {item!r}") from None
            if not sep:
                raise CommandError(f"--strategy-param must look like KEY=NUMBER, not {item!r}")
        try:
            from fedhealth.ml.strategies import get_strategy

            get_strategy(opts["strategy"], **params)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        train = TrainConfig(
            epochs=opts["local_epochs"], batch_size=opts["batch_size"], lr=opts["lr"], seed=opts["seed"],
            positive=schema.positive_value,  # the figures are the schema's positive class's
        )
        model = ModelConfig(n_features=len(schema.features), hidden=parse_hidden(opts["hidden"]))
        try:
            return FederatedConfig(
                rounds=opts["rounds"], strategy=opts["strategy"], strategy_params=params,
                model=model, train=train, seed=opts["seed"],
                validation_fraction=opts["validation_fraction"], early_stopping=opts["early_stopping"],
                personalize=opts["personalize"],
            )
        except ValueError as exc:
            raise CommandError(f"--validation-fraction/--early-stopping/--personalize: {exc}") from None

    def _privacy(self, opts: dict[str, Any], config: FederatedConfig, sites: list[SiteSplit]) -> FederatedConfig:
        given = [k for k in ("epsilon", "delta", "clip") if opts[k] != {"epsilon": DEFAULT_EPSILON,
                 "delta": None, "clip": DEFAULT_CLIP_NORM}[k]]
        if opts["dp"] == "off":
            if given and not opts["dp_sweep"]:
                raise CommandError(f"--{given[0]} needs --dp record or --dp site")
            if not opts["dp_sweep"]:
                return config
        if opts["dp"] == "site":
            if opts["dp_sweep"]:
                raise CommandError("--dp-sweep runs record-level DP; leave out --dp site")
            try:
                site = SiteDPSettings(
                    epsilon=opts["epsilon"], clip_norm=opts["clip"], rounds=config.rounds, sites=len(sites),
                    delta=DEFAULT_SITE_DELTA if opts["delta"] is None else opts["delta"],
                )
            except ValueError as exc:
                raise CommandError(f"--dp site: {exc}") from None
            return replace(config, site_privacy=site)
        try:
            settings = PrivacySettings(epsilon=opts["epsilon"], delta=opts["delta"], clip_norm=opts["clip"],
                                       rounds=config.rounds)
            for site in sites:
                try:
                    settings.delta_for(len(site.y_train))
                except ValueError as exc:
                    raise ValueError(f"site {site.name}: {exc}") from None
        except ValueError as exc:
            raise CommandError(f"--dp record: {exc}") from None
        return replace(config, privacy=settings if opts["dp"] == "record" else None)

    def _sweep(self, opts, config: FederatedConfig, sites: list[SiteSplit], secure) -> None:
        """Federated accuracy and AUROC without DP and at each epsilon (the other DP
        settings as given)."""
        try:
            epsilons = [float(e) for e in opts["dp_sweep"].split(",") if e.strip()]
        except ValueError:
            raise CommandError(f"--dp-sweep must be comma-separated numbers, not {opts['dp_sweep']!r}") from None
        base = PrivacySettings(epsilon=opts["epsilon"], delta=opts["delta"], clip_norm=opts["clip"],
                               rounds=config.rounds)
        rows: list[dict[str, Any]] = []
        self.stdout.write(f"{'epsilon':>8}  {'accuracy':>8}  {'auroc':>8}  {'noise (mean)':>12}")
        for epsilon in [None, *epsilons]:
            try:
                privacy = None if epsilon is None else replace(base, epsilon=epsilon)
            except ValueError as exc:
                raise CommandError(f"--dp-sweep: {exc}") from None
            run = replace(config, privacy=privacy)
            weights, normalizer, history = run_federated(sites, run, secure=secure)
            mean = evaluate_sites(run.model, weights, normalizer, sites, positive=run.train.positive)["mean"]
            spends = history[-1].privacy
            noise = sum(s["noise_multiplier"] for s in spends.values()) / len(spends) if spends else 0.0
            row = {"epsilon": epsilon, "accuracy": mean["accuracy"], "auroc": mean["auroc"],
                   "noise_multiplier": noise,
                   "spent": max((s["epsilon_total"] for s in spends.values()), default=0.0)}
            rows.append(row)
            label = "no DP" if epsilon is None else f"{epsilon:g}"
            self.stdout.write(f"{label:>8}  {row['accuracy']:>8.4f}  {row['auroc']:>8.4f}  {noise:>12.3f}")
        if opts["json_path"]:
            path = Path(opts["json_path"])
            result = {"config": config.to_dict() | {"sites": [s.name for s in sites]},
                      "privacy": base.to_dict(), "dp_sweep": rows}
            path.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
            self.stdout.write(f"privacy-utility curve written to {path}")

    def _secure(self, opts: dict[str, Any], config: FederatedConfig, n_sites: int) -> SecureOptions | None:
        from fedhealth.ml.secagg.federated import SecureOptions, incompatibility

        secagg = {k: opts[k] for k in ("secagg_threshold", "secagg_degree") if opts[k] is not None}
        if opts["secagg_dropout"]:
            secagg["secagg_dropout"] = opts["secagg_dropout"]
        if not opts["secure_aggregation"]:
            if secagg:
                raise CommandError(f"--{next(iter(secagg)).replace('_', '-')} needs --secure-aggregation")
            return None
        try:
            secure = SecureOptions(threshold=opts["secagg_threshold"], dropout=opts["secagg_dropout"],
                                   degree=opts["secagg_degree"])
            secure.threshold_for(n_sites)
        except ValueError as exc:
            raise CommandError(f"--secure-aggregation: {exc}") from None
        reason = incompatibility(get_strategy(config.strategy, **config.strategy_params))
        if reason is not None:
            raise CommandError(f"--secure-aggregation: {reason}")
        return secure

    def _load_sites(self, schema: Schema, opts: dict[str, Any]) -> list[SiteSplit]:
        if not 0 < opts["test_fraction"] < 1:
            raise CommandError("--test-fraction must be between 0 and 1")
        if opts["generate"] is not None and opts["site"]:
            raise CommandError("use either --site or --generate, not both")
        from fedhealth.ml.synthetic import generate_sites
        from fedhealth.ml.validation import Policy, validate_frame

        policy = Policy(opts["policy"])
        sites: list[SiteSplit] = []
        if opts["generate"] is not None:
            if opts["generate"] < 1 or opts["rows"] < 20:
                raise CommandError("--generate must be at least 1 and --rows at least 20")
            if schema != DEFAULT_SCHEMA:
                raise CommandError("--generate makes the four default vitals; drop --features/--label")
            frames = generate_sites(opts["generate"], opts["rows"], seed=opts["seed"], non_iid=opts["non_iid"])
            for name, frame in frames.items():
                data = self._check(name, validate_frame(frame, schema, policy=policy))
                sites.append(self._split(name, data, opts))
            return sites
        if not opts["site"]:
            raise CommandError("give at least one --site NAME=TRAIN.csv[:TEST.csv], or --generate N")
        seen: set[str] = set()
        for spec in opts["site"]:
            name, train_path, test_path = parse_site(spec)
            if name in seen:
                raise CommandError(f"site {name!r} is given twice")
            seen.add(name)
            train = self._check(f"{name} ({train_path})", self._validate_path(train_path, schema, policy))
            if test_path is None:
                sites.append(self._split(name, train, opts))
            else:
                test = self._check(f"{name} ({test_path})", self._validate_path(test_path, schema, policy))
                sites.append(SiteSplit(name, train.X, train.y, test.X, test.y))
        return sites

    def _validate_path(self, path: Path, schema: Schema, policy: Policy):
        from fedhealth.ml.validation import validate_csv

        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        return validate_csv(path, schema, policy=policy)

    def _check(self, label: str, result) -> Dataset:
        if result.data is None:
            raise CommandError(f"{label}: the CSV is not valid\n{result.report.format()}")
        if result.report.rows_dropped:
            self.stderr.write(f"{label}: dropped {result.report.rows_dropped} invalid rows")
        return result.data

    def _split(self, name: str, data: Dataset, opts: dict[str, Any]) -> SiteSplit:
        try:
            return split_site(name, data.X, data.y, test_fraction=opts["test_fraction"], seed=opts["seed"])
        except ValueError as exc:
            raise CommandError(f"{name}: cannot hold out a stratified test set: {exc}") from None

    def _save_model(self, path: Path, schema: Schema, config: FederatedConfig, run, result) -> None:
        federated = result["federated"]
        metadata = describe(
            schema=schema, normalizer=run.normalizer, model=config.model,
            experiment={"name": "simulate", "strategy": config.strategy, "seed": config.seed,
                        "sites": len(federated["per_site"])},
            round_number=run.selected_round, metrics=federated["mean"],
            privacy=result.get("privacy"),
            validation={"fraction": config.validation_fraction, "selected_round": run.selected_round,
                        "loss": run.history[run.selected_round - 1].validation_loss},
        )
        try:
            save_weights(path, run.weights, metadata)
        except OSError as exc:
            raise CommandError(f"--save-model: cannot write {path}: {exc.strerror}") from None
        self.stdout.write(f"model written to {path}")

    # -- baselines and output -------------------------------------------------------

    def _baselines(self, sites: list[SiteSplit], config: FederatedConfig) -> dict[str, Any]:
        self.stdout.write("training baselines: centralized (pooled rows) and each site alone ...")
        c_weights, c_norm = run_centralized(sites, config)
        local: dict[str, Any] = {}
        for site in tqdm(sites, desc="local-only", unit="site", disable=len(sites) < 2):
            w, norm = run_local(site, config)
            # A site alone can only be judged on every site's test data with its own scaling.
            local[site.name] = summarise(
                {s.name: evaluate(config.model, w, norm.transform(s.X_test), s.y_test, positive=config.train.positive)
                 for s in sites}
            )
        # "alone": each site's own model on its own test rows, beside "federated".
        return {"centralized": evaluate_sites(config.model, c_weights, c_norm, sites, positive=config.train.positive),
                "local": local,
                "alone": evaluate_alone(sites, config)}

    def _print_summary(self, result: dict[str, Any]) -> None:
        keys = ("accuracy", "balanced_accuracy", "auroc", "f1")
        self.stdout.write("\nmean over sites' test sets:")
        self.stdout.write(f"{'model':<22}" + "".join(f"{k:>19}" for k in keys))
        rows = [("federated", result["federated"]["mean"])]
        if "personalized" in result:
            rows.append(("personalized", result["personalized"]["mean"]))
        if "alone" in result:
            rows.append(("alone (own test set)", result["alone"]["mean"]))
        if "centralized" in result:
            rows.append(("centralized", result["centralized"]["mean"]))
            rows += [(f"local: {name}", r["mean"]) for name, r in result["local"].items()]
        for name, metrics in rows:
            self.stdout.write(f"{name:<22}" + "".join(f"{_cell(metrics.get(k)):>19}" for k in keys))
        # A site whose test rows hold one class has no AUROC: say what a mean is over.
        defined, n_sites = result["federated"].get("defined", {}), len(result["federated"]["per_site"])
        partial = [k for k in keys if defined.get(k, n_sites) < n_sites]
        for k in partial:
            self.stdout.write(f"{k}: mean over {defined[k]} of {n_sites} sites (n/a where a site's test rows hold one class)")

