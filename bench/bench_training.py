"""Throughput of ``train_local`` against a bare PyTorch loop on the same model and data.

Usage: ``python bench/bench_training.py [--json PATH] [--rows N] [--epochs E] [--repeats R]``

Both contenders train the same ``HealthNet`` (default 64-32-16, dropout 0.2) from the same
initial weights on the same synthetic rows (default 20,000 x 4 normalised features), with
the same batch size, epochs, Adam and ``BCEWithLogitsLoss``. The bare loop shuffles with a
``randperm`` and slices mini-batches by index, with nothing else. ``train_local`` also does
its input checks, learning-rate schedule, seeded dropout, last-epoch loss bookkeeping and
the final evaluation on the training data, all inside the timed region. Both use
``torch.optim.Adam(fused=True)``, the implementation ``train_local`` uses, so the ratio
measures ``train_local``'s own overhead; a third row, ``bare_default_adam`` (torch's default
per-parameter Adam), is informational and shows what the fused optimiser buys.

Both run with ``torch.set_num_threads(1)`` to reduce timing noise from thread scheduling
(the model is far too small to gain from intra-op threads). Each is run once to warm up,
then timed ``--repeats`` times, interleaved; the best time counts. Throughput is samples per
second = rows x epochs / seconds. Target: train_local / bare >= 0.9. Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedhealth.ml.model import ModelConfig, build_model, init_weights, set_weights  # noqa: E402
from fedhealth.ml.training import TrainConfig, train_local  # noqa: E402

TARGET = 0.9


def make_data(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Gaussian features and logistic labels: X (rows, features) float32, y (rows,)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    logits = X @ rng.standard_normal(features) + 0.5 * X[:, 0] * X[:, 1]
    y = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    return X, y


def bare_loop(
    cfg: ModelConfig,
    weights: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    tc: TrainConfig,
    *,
    fused: bool = True,
) -> None:
    """The reference: plain PyTorch, no schedule, no checks, no evaluation.

    ``fused=True`` uses the same Adam implementation as ``train_local`` (the fair
    baseline for its overhead); ``fused=False`` is torch's default Adam, for information.
    """
    model = build_model(cfg)
    set_weights(model, weights)
    model.train()
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused
    )
    generator = torch.Generator().manual_seed(tc.seed)
    n = len(x_t)
    for _ in range(tc.epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, tc.batch_size):
            idx = perm[start : start + tc.batch_size]
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x_t[idx]), y_t[idx])
            loss.backward()
            optimizer.step()


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock duration of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results as JSON to this path")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    X, y = make_data(args.rows, args.features)
    cfg = ModelConfig(n_features=args.features)
    weights = init_weights(cfg, seed=0)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    contenders: dict[str, Callable[[], object]] = {
        "bare_loop": lambda: bare_loop(cfg, weights, X, y, tc),
        "train_local": lambda: train_local(cfg, weights, X, y, tc),
        "bare_default_adam": lambda: bare_loop(cfg, weights, X, y, tc, fused=False),
    }
    # One untimed warm-up run each (allocator, dispatcher caches), then interleave the
    # timed runs so slow drifts in machine load hit all contenders alike.
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(seconds(fn))

    samples = args.rows * args.epochs
    results = {
        name: {
            "best_seconds": min(ts),
            "samples_per_second": samples / min(ts),
            "all_seconds": ts,
        }
        for name, ts in times.items()
    }
    ratio = (
        results["train_local"]["samples_per_second"] / results["bare_loop"]["samples_per_second"]
    )
    passed = ratio >= TARGET

    print(
        f"training throughput: {args.rows} rows x {args.features} features, {args.epochs} epochs, "
        f"batch {args.batch_size}, model {cfg.hidden}, torch {torch.__version__}, 1 thread, "
        f"best of {args.repeats}"
    )
    print(f"{'contender':<20}{'best s':>10}{'samples/s':>14}")
    for name, r in results.items():
        print(f"{name:<20}{r['best_seconds']:>10.3f}{r['samples_per_second']:>14,.0f}")
    print(
        f"ratio train_local/bare = {ratio:.3f} (target >= {TARGET}): {'PASS' if passed else 'FAIL'}"
    )

    if args.json:
        report = {
            "name": "training_throughput",
            "config": {
                "rows": args.rows,
                "features": args.features,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "hidden": list(cfg.hidden),
                "repeats": args.repeats,
                "threads": 1,
                "torch": torch.__version__,
            },
            "results": results,
            "ratios": {"throughput": ratio},
            "targets": {"throughput": TARGET},
            "pass": passed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
