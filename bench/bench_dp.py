"""DP-SGD against the non-DP loop: training throughput, and federated utility at epsilon 3.

Usage: ``python bench/bench_dp.py [--json PATH] [--rows N] [--epochs E] [--repeats R]
[--no-utility] [--sites 4] [--site-rows 2000] [--rounds 20]``

(1) Throughput: ``train_local`` (the product's non-DP loop) and ``train_local_dp`` (Opacus
per-sample gradients, clipping, noise, Poisson sampling) train the same ``HealthNet``
(default 64-32-16) from the same weights on the same synthetic rows (default 20,000 x 4),
same batch size, epochs and Adam, one thread, each warmed up once and then timed
``--repeats`` times interleaved; best time counts. Samples per second = rows x epochs /
seconds (DP-SGD's Poisson batches process the same expected number of rows).
Target: DP / non-DP >= 0.33.

(2) Utility: ``run_federated`` on 4 generated IID sites (2,000 rows each, the product's
defaults: 20 rounds, 2 local epochs, batch 32) without DP and with record-level DP at
epsilon 3 (delta 1/(10 x rows), clip 1); mean test accuracy over the sites.
Target: DP within 3 points of no DP. Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_training import make_data, seconds  # noqa: E402
from fedhealth.ml.federation import (  # noqa: E402
    FederatedConfig,
    evaluate_sites,
    run_federated,
    split_site,
)
from fedhealth.ml.model import ModelConfig, init_weights  # noqa: E402
from fedhealth.ml.privacy import PrivacySettings, derive_noise, train_local_dp  # noqa: E402
from fedhealth.ml.synthetic import generate_sites  # noqa: E402
from fedhealth.ml.training import TrainConfig, train_local  # noqa: E402

TARGETS = {"throughput": 0.33, "accuracy_drop_points": 3.0}


def throughput(args) -> dict:
    X, y = make_data(args.rows, 4)
    cfg = ModelConfig(n_features=4)
    weights = init_weights(cfg, seed=0)
    tc = TrainConfig(epochs=args.epochs, batch_size=32)
    noise = derive_noise(PrivacySettings(epsilon=3.0, rounds=1), rows=args.rows, epochs=args.epochs, batch_size=32)
    contenders = {
        "non_dp": lambda: train_local(cfg, weights, X, y, tc),
        "dp_sgd": lambda: train_local_dp(cfg, weights, X, y, tc, noise_multiplier=noise, clip_norm=1.0, secret_seed=0),
    }
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(seconds(fn))
    samples = args.rows * args.epochs
    results = {n: {"best_seconds": min(t), "samples_per_second": samples / min(t), "all_seconds": t} for n, t in times.items()}
    ratio = results["dp_sgd"]["samples_per_second"] / results["non_dp"]["samples_per_second"]
    print(f"throughput: {args.rows} rows x 4 features, {args.epochs} epochs, batch 32, model {cfg.hidden}, "
          f"noise {noise:.3f}, 1 thread, best of {args.repeats}")
    for name, r in results.items():
        print(f"  {name:<8}{r['best_seconds']:>9.3f} s{r['samples_per_second']:>12,.0f} samples/s")
    print(f"  ratio dp/non-dp = {ratio:.3f} (target >= {TARGETS['throughput']})")
    return {"results": results, "ratio": ratio, "noise_multiplier": noise}


def utility(args) -> dict:
    frames = generate_sites(args.sites, args.site_rows, seed=0, non_iid=False)
    schema_cols = None
    sites = []
    for name, frame in frames.items():
        schema_cols = schema_cols or [c for c in frame.columns if c != "healthy"]
        sites.append(split_site(name, frame[schema_cols].to_numpy("float32"), frame["healthy"].to_numpy(),
                                test_fraction=0.25, seed=0))
    config = FederatedConfig(rounds=args.rounds, model=ModelConfig(n_features=len(schema_cols)))
    out = {}
    for label, privacy in (("no_dp", None), ("dp_eps3", PrivacySettings(epsilon=3.0, rounds=args.rounds))):
        started = time.perf_counter()
        weights, normalizer, history = run_federated(sites, replace(config, privacy=privacy))
        mean = evaluate_sites(config.model, weights, normalizer, sites)["mean"]
        out[label] = {"accuracy": mean["accuracy"], "auroc": mean["auroc"], "seconds": time.perf_counter() - started,
                      "privacy": history[-1].privacy}
    drop = 100 * (out["no_dp"]["accuracy"] - out["dp_eps3"]["accuracy"])
    spent = max(s["epsilon_total"] for s in out["dp_eps3"]["privacy"].values())
    print(f"utility: {args.sites} IID sites x {args.site_rows} rows, {args.rounds} rounds, defaults")
    for label, r in out.items():
        print(f"  {label:<8} accuracy {r['accuracy']:.4f}  auroc {r['auroc']:.4f}  ({r['seconds']:.0f} s)")
    print(f"  accuracy drop {drop:.2f} points at epsilon {spent:.3f} (target <= {TARGETS['accuracy_drop_points']})")
    return {"runs": out, "accuracy_drop_points": drop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-utility", action="store_true")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--site-rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    speed = throughput(args)
    ratios = {"throughput": speed["ratio"]}
    report = {"name": "dp", "throughput": speed, "targets": TARGETS, "torch": torch.__version__}
    if not args.no_utility:
        report["utility"] = utility(args)
        ratios["accuracy_drop_points"] = report["utility"]["accuracy_drop_points"]
    report["ratios"] = ratios
    report["pass"] = ratios["throughput"] >= TARGETS["throughput"] and (
        args.no_utility or ratios["accuracy_drop_points"] <= TARGETS["accuracy_drop_points"]
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
