"""Model quality on small, unlike sites: alone, federated, personalised, pooled.

    python -m bench quality                # 5 seeds, every case (docs/quality.md)
    python bench/bench_quality.py --seeds 1 --cases diabetes

For each case of ``bench/quality_cases.py`` and seed: every site trains alone (early
stopped on its validation slice), the federation runs FedAvg with validation-based
round selection, each personalisation mode builds one model per site, and a pooled
model is the reference. Every model is scored on each site's *own* test rows; the
figures are means over seeds per site, then the unweighted mean over sites (a metric
undefined at a site, AUROC at the single-class referral centre, is left out of that
site's mean and the mean says over how many sites it is).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality_cases import CASES  # noqa: E402
from fedhealth.ml.comparison import evaluate_alone, evaluate_personal  # noqa: E402
from fedhealth.ml.federation import (  # noqa: E402
    FederatedConfig,
    evaluate_sites,
    run_centralized,
    run_experiment,
)
from fedhealth.ml.metrics import json_safe  # noqa: E402
from fedhealth.ml.model import ModelConfig  # noqa: E402
from fedhealth.ml.personalize import DEFAULT_PERSONALIZE, PERSONALIZE_MODES  # noqa: E402

METRICS = ("accuracy", "balanced_accuracy", "auroc")
RESULTS = Path(__file__).resolve().parent / "results"


def quality_config(n_features: int, seed: int, rounds: int = 20) -> FederatedConfig:
    """The configuration measured: the product's model and training defaults, FedAvg,
    20 rounds, 20% of each site's training rows for validation."""
    return FederatedConfig(
        rounds=rounds, model=ModelConfig(n_features=n_features), seed=seed, validation_fraction=0.2
    )


def measure(case: str, seed: int, *, rounds: int = 20, modes=PERSONALIZE_MODES) -> dict[str, Any]:
    """``{option: {site: metrics}}`` for one case and seed; options: alone, federated,
    centralized and ``personalized:<mode>`` per mode."""
    schema, sites = CASES[case](seed)
    config = quality_config(len(schema.features), seed, rounds)
    out: dict[str, Any] = {"alone": evaluate_alone(sites, config)["per_site"]}
    federated = None
    for mode in modes:
        run = run_experiment(sites, replace(config, personalize=mode))
        if federated is None and mode != "fedper":  # FedPer's global model is not FedAvg's
            federated = run
        out[f"personalized:{mode}"] = evaluate_personal(
            config.model, run.personal, run.normalizer, sites
        )["per_site"]
    if federated is None:
        federated = run_experiment(sites, config)
    out["federated"] = evaluate_sites(config.model, federated.weights, federated.normalizer, sites)[
        "per_site"
    ]
    out["selected_round"] = federated.selected_round
    weights, normalizer = run_centralized(sites, config)
    out["centralized"] = evaluate_sites(config.model, weights, normalizer, sites)["per_site"]
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per option: per-site means over seeds and the mean over sites, per metric."""
    options = [k for k in runs[0] if k != "selected_round"]
    summary: dict[str, Any] = {}
    for option in options:
        sites = list(runs[0][option])
        per_site = {}
        for site in sites:
            per_site[site] = {}
            for metric in METRICS:
                values = [
                    r[option][site][metric] for r in runs if not math.isnan(r[option][site][metric])
                ]
                per_site[site][metric] = float(np.mean(values)) if values else math.nan
        mean = {}
        for metric in METRICS:
            defined = [v[metric] for v in per_site.values() if not math.isnan(v[metric])]
            mean[metric] = float(np.mean(defined)) if defined else math.nan
            mean[f"{metric}_sites"] = len(defined)
        summary[option] = {"per_site": per_site, "mean": mean}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--json", default=str(RESULTS / "quality.json"), help="where to write the results"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"seeds": args.seeds, "rounds": args.rounds, "cases": {}}
    for case in args.cases.split(","):
        started = time.perf_counter()
        runs = [measure(case, seed, rounds=args.rounds) for seed in range(args.seeds)]
        summary = summarise(runs)
        report["cases"][case] = {
            "summary": summary,
            "selected_rounds": [r["selected_round"] for r in runs],
            "seconds": time.perf_counter() - started,
        }
        print(f"\n{case} ({args.seeds} seeds, {time.perf_counter() - started:.0f} s)")
        print(
            f"| {'model':<22} | "
            + " | ".join(f"{m:>17}" for m in METRICS)
            + " | per site (balanced accuracy)"
        )
        for option, figures in summary.items():
            cells = " | ".join(f"{figures['mean'][m]:>17.3f}" for m in METRICS)
            sites = ", ".join(
                f"{s} {v['balanced_accuracy']:.3f}" for s, v in figures["per_site"].items()
            )
            print(f"| {option:<22} | {cells} | {sites}")
    report |= claims(report["cases"])
    print(f"\nclaims hold: {report['pass']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(json_safe(report), indent=2))
    return 0


def claims(cases: dict[str, Any], mode: str = DEFAULT_PERSONALIZE) -> dict[str, Any]:
    """docs/quality.md's claims as ratios (target > 1): federated over alone on mean
    balanced accuracy, personalised over federated on mean accuracy, and the worst
    site's personalised accuracy over (its accuracy alone - 2 points)."""
    ratios: dict[str, float] = {}
    for case, figures in cases.items():
        s = figures["summary"]
        personal = s[f"personalized:{mode}"]
        ratios[f"{case}_federated_vs_alone_bacc"] = (
            s["federated"]["mean"]["balanced_accuracy"] / s["alone"]["mean"]["balanced_accuracy"]
        )
        ratios[f"{case}_personalized_vs_federated_acc"] = (
            personal["mean"]["accuracy"] / s["federated"]["mean"]["accuracy"]
        )
        ratios[f"{case}_worst_site_vs_alone_minus_2pts"] = min(
            personal["per_site"][site]["accuracy"] / (alone["accuracy"] - 0.02)
            for site, alone in s["alone"]["per_site"].items()
        )
    return {
        "ratios": ratios,
        "targets": dict.fromkeys(ratios, "> 1"),
        "pass": all(r > 1 for r in ratios.values()),
    }


if __name__ == "__main__":
    raise SystemExit(main())
