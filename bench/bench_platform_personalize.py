"""Personalisation as the platform does it: at the end, from the selected FedAvg version.

    python -m bench platform_personalize          # 5 seeds, every case
    python bench/bench_platform_personalize.py --seeds 1 --cases diabetes

The platform's rounds share the whole model (plain FedAvg, best round by validation
loss); at the end each site builds its personalised model from that selected version
with ``fedhealth.ml.comparison.choose_personal`` (finetune; fedper: the head retrained,
the whole model only when the site's validation slice favours it beyond its noise;
ditto: fine-tuning with a proximal pull). ``--first-seed 5`` runs seeds the design was
not chosen on. This measures those end-of-experiment modes on the cases of
``bench/quality_cases.py`` against alone and federated (the same figures as
``bench_quality``: per-site means over seeds, then the mean over sites), and the ratios
docs/quality.md claims for the default mode. ``simulate --personalize`` keeps FedPer's
head and Ditto's personal model at the site during the rounds instead, so its figures
differ; ``bench_quality`` measures that.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_quality import METRICS, RESULTS, claims, quality_config, summarise  # noqa: E402
from bench.quality_cases import CASES  # noqa: E402
from fedhealth.ml.comparison import choose_personal, evaluate_alone  # noqa: E402
from fedhealth.ml.federation import evaluate_sites, run_experiment, site_slices  # noqa: E402
from fedhealth.ml.metrics import json_safe  # noqa: E402
from fedhealth.ml.personalize import DEFAULT_PERSONALIZE, PERSONALIZE_MODES  # noqa: E402
from fedhealth.ml.training import evaluate  # noqa: E402


def measure(case: str, seed: int, *, rounds: int = 20) -> dict[str, Any]:
    """``{option: {site: metrics}}``: alone, federated and ``personalized:<mode>`` built
    at the end from the selected federated version; ``chosen``: ``{mode: {site: what
    choose_personal kept}}``."""
    schema, sites = CASES[case](seed)
    config = quality_config(len(schema.features), seed, rounds)
    run = run_experiment(sites, config)
    out: dict[str, Any] = {
        "alone": evaluate_alone(sites, config)["per_site"],
        "federated": evaluate_sites(config.model, run.weights, run.normalizer, sites)["per_site"],
        "selected_round": run.selected_round,
        "chosen": {},
    }
    norm = run.normalizer
    for mode in PERSONALIZE_MODES:
        per_site, chosen = {}, {}
        for site in sites:
            X_fit, y_fit, X_val, y_val = site_slices(site, config)
            choice = choose_personal(
                config, mode, run.weights, norm.transform(X_fit), y_fit, norm.transform(X_val), y_val
            )
            per_site[site.name] = evaluate(config.model, choice.weights, norm.transform(site.X_test), site.y_test)
            chosen[site.name] = choice.chosen
        out[f"personalized:{mode}"] = per_site
        out["chosen"][mode] = chosen
    return out


def per_seed(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per option, each seed's accuracy at each site and its mean over sites."""
    options = [k for k in runs[0] if k not in ("selected_round", "chosen")]
    return {
        option: [
            {"sites": {s: m["accuracy"] for s, m in r[option].items()},
             "mean": sum(m["accuracy"] for m in r[option].values()) / len(r[option])}
            for r in runs
        ]
        for option in options
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", default=str(RESULTS / "platform_personalize.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"seeds": args.seeds, "first_seed": args.first_seed, "rounds": args.rounds, "cases": {}}
    for case in args.cases.split(","):
        started, cpu = time.perf_counter(), time.process_time()
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = [measure(case, seed, rounds=args.rounds) for seed in seeds]
        summary = summarise([{k: v for k, v in r.items() if k != "chosen"} for r in runs])
        seeded = per_seed(runs)
        report["cases"][case] = {
            "summary": summary, "selected_rounds": [r["selected_round"] for r in runs],
            "seeds": list(seeds), "per_seed_accuracy": seeded, "chosen": [r["chosen"] for r in runs],
            "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
        }
        print(f"\n{case} ({args.seeds} seeds, {time.perf_counter() - started:.0f} s wall, "
              f"{time.process_time() - cpu:.0f} s CPU)")
        print(f"| {'model':<24} | " + " | ".join(f"{m:>17}" for m in METRICS) + " | worst site acc vs alone")
        alone = summary["alone"]["per_site"]
        for option, figures in summary.items():
            cells = " | ".join(f"{figures['mean'][m]:>17.3f}" for m in METRICS)
            worst = min(figures["per_site"][s]["accuracy"] - alone[s]["accuracy"] for s in alone)
            print(f"| {option:<24} | {cells} | {worst:+.3f}")
        print("mean accuracy per seed " + ", ".join(map(str, seeds)))
        for option, rows in seeded.items():
            print(f"  {option:<24} " + " ".join(f"{row['mean']:.3f}" for row in rows))
        for mode in PERSONALIZE_MODES:
            counts: dict[str, int] = {}
            for r in runs:
                for label in r["chosen"][mode].values():
                    counts[label] = counts.get(label, 0) + 1
            print(f"  kept by {mode}: {counts}")
    for mode in PERSONALIZE_MODES:
        report[f"claims:{mode}"] = claims(report["cases"], mode)
        print(f"claims hold with {mode}: {report[f'claims:{mode}']['pass']}")
    report |= claims(report["cases"], DEFAULT_PERSONALIZE)
    report["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(json_safe(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
