"""At the end of an experiment: alone / global / personalised on this site's own rows.

Once per experiment the agent trains a local-only model (its rows alone, the
federation's budget) and its personalised model (the experiment's mode, from the
selected global version), scores them with the global model on its own test rows
(``fedhealth.ml.comparison.compare_at_site``, the call a hosted worker makes), keeps
both models in its state folder and sends only the figures
(``agent/experiments/<id>/comparison/``).

The state folder records each experiment's measurement before it is posted
(``comparisons/e<id>.json``): a restarted agent posts what it measured, it never
trains the two models again. The models are self-describing safetensors files
(``fedhealth.ml.load_model`` reads them) and never leave the folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedhealth.ml.comparison import compare_at_site
from fedhealth.ml.federation import FederatedConfig
from fedhealth.ml.metrics import json_safe
from fedhealth.ml.model import ModelConfig
from fedhealth.ml.model_file import describe
from fedhealth.ml.personalize import PERSONALIZE_MODES
from fedhealth.ml.schema import Schema, SchemaError
from fedhealth.ml.stats import Normalizer
from fedhealth.ml.training import TrainConfig
from fedhealth.ml.weights_io import save_weights, weights_from_bytes, write_atomic

from .client import ApiClient
from .data import LocalData

log = logging.getLogger("fedhealth.agent")

KINDS = ("alone", "global", "personalized")


class ComparisonStore:
    """``<state>/comparisons/``: one record per experiment and the two models."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "comparisons"

    def record_path(self, experiment: int) -> Path:
        return self.root / f"e{int(experiment)}.json"

    def model_path(self, experiment: int, kind: str) -> Path:
        return self.root / f"e{int(experiment)}-{kind}.safetensors"

    def load(self, experiment: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(experiment).read_text())
        except FileNotFoundError:
            return None

    def save(self, experiment: int, record: dict[str, Any]) -> None:
        """Write the record atomically (a temporary file, fsynced, then renamed), 0600."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.record_path(experiment), json.dumps(record, indent=1, sort_keys=True).encode())


def federated_config(raw: dict[str, Any]) -> FederatedConfig:
    """The fields of the experiment's configuration the comparison reads (budget, seeds,
    model, validation slice), as the server's assignment sends them."""
    return FederatedConfig(
        rounds=int(raw["rounds"]),
        model=ModelConfig.from_dict(raw["model"]),
        train=TrainConfig.from_dict(raw["train"]),
        seed=int(raw["seed"]),
        validation_fraction=float(raw.get("validation_fraction") or 0.0),
    )


def _figure(metrics: dict[str, Any] | None, name: str) -> str:
    value = (metrics or {}).get(name)
    return "n/a" if value is None else f"{value:.3f}"


class SiteComparer:
    """Measures, keeps and reports one site's comparison per experiment."""

    def __init__(self, client: ApiClient, data: LocalData, store: ComparisonStore | None) -> None:
        self.client, self.data, self.store = client, data, store

    def step(self, item: dict[str, Any], site: str) -> None:
        """Measure (once: the record in the state folder says so) and post the figures.

        Raises ValueError when this site's rows cannot give a comparison (too few to
        train alone); the loop logs it and does not try again in this run.
        """
        assert self.store is not None
        experiment = int(item["experiment"])
        record = self.store.load(experiment)
        if record is None:
            record = self.measure(item, site)
            self.store.save(experiment, record)  # before posting: a restart posts, never retrains
        else:
            log.info("experiment %d: comparison measured before, posting it again", experiment)
        answer = self.client.post_json(
            f"/agent/experiments/{experiment}/comparison/", record["figures"]
        )
        if not record.get("posted"):
            self.store.save(experiment, record | {"posted": True})
        figures = record["figures"]
        log.info(
            "experiment %d: comparison %s (v%s, mode %s) on %d local test rows, "
            "accuracy / balanced accuracy / AUROC: alone %s / %s / %s, global %s / %s / %s, "
            "personalised %s / %s / %s; the models stay in %s",
            experiment,
            "reported" if answer.get("recorded") else "already reported",
            figures.get("version"),
            figures.get("mode") or "none",
            record.get("test_rows", 0),
            *(
                _figure(figures.get(kind), name)
                for kind in KINDS
                for name in ("accuracy", "balanced_accuracy", "auroc")
            ),
            self.store.root,
        )

    def measure(self, item: dict[str, Any], site: str) -> dict[str, Any]:
        """Train the local-only and personalised models, keep them, return the record."""
        assert self.store is not None
        experiment = int(item["experiment"])
        meta = self.client.get_json(f"/models/{item['model']}/")
        data, _ = self.client.get_bytes(f"/models/{item['model']}/weights/")
        weights = weights_from_bytes(data, expected_sha256=item["sha256"])
        normalizer = Normalizer.from_dict(meta["normalizer"])
        config = federated_config(item["config"])
        mode = item.get("mode")
        if mode is not None and mode not in PERSONALIZE_MODES:
            log.warning(
                "experiment %d: personalisation mode %r is unknown to this agent; "
                "no personalised model", experiment, mode,
            )
            mode = None
        split = self.data.split(site, test_fraction=float(item["test_fraction"]), seed=int(item["seed"]))
        log.info(
            "experiment %d: training a local-only model%s on %d local rows (never uploaded)",
            experiment, f" and a {mode} personalised model" if mode else "", len(split.y_train),
        )
        result = compare_at_site(split, config, weights, normalizer, mode=mode)
        figures = json_safe({**result.figures, "version": int(item["version"])})
        try:
            schema = Schema.from_dict(meta["schema"]) if meta.get("schema") else self.data.schema
        except SchemaError:
            schema = self.data.schema
        self.store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = {}
        kept = [("local", result.local, result.local_normalizer, figures["alone"], None)]
        if result.personal is not None:
            kept.append(("personal", result.personal, normalizer, figures["personalized"], item["version"]))
        for kind, model_weights, norm, metrics, version in kept:
            path = self.store.model_path(experiment, kind)
            sha = save_weights(
                path,
                model_weights,
                describe(
                    schema=schema, normalizer=norm, model=config.model,
                    experiment={"id": experiment, "site": site, "model": kind, "mode": mode}
                    | ({"chosen": result.chosen} if kind == "personal" else {}),
                    round_number=version, metrics=metrics,
                ),
            )
            files[kind] = {"path": path.name, "sha256": sha}
        return {
            "experiment": experiment,
            "figures": figures,
            "files": files,
            "test_rows": int(len(split.y_test)),
            "posted": False,
        }


__all__ = ["ComparisonStore", "SiteComparer", "federated_config"]
