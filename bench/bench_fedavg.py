"""Streaming FedAvg against a bare NumPy weighted sum, on updates loaded lazily from disk.

Usage: ``python bench/bench_fedavg.py [--updates 100] [--params 1000000] [--repeats 3]
[--json PATH]``

Writes ``--updates`` safetensors files of a ``--params``-parameter float32 model (six named
tensors, shaped like a small MLP) to a temporary directory, then, on the same files:

* baseline: load each file with ``safetensors.numpy.load_file`` and add ``n * w`` into a
  preallocated float64 buffer per tensor, divide by the total, cast to float32; no checks;
* fedavg: ``get_strategy("fedavg").aggregate(previous, generator)``, the generator loading
  each file lazily into an ``Update``; includes ``check_update`` (names, dtype, shape, NaN/Inf)
  on every update.

Time: best of ``--repeats``, interleaved, tracemalloc off. Memory: one more run of each under
tracemalloc (which sees NumPy's buffers); the peak above the starting point. Ratios: time
fedavg / baseline (target <= 1.5) and (peak fedavg - peak baseline) / model size in bytes
(target <= 3). Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedhealth.ml.strategies import get_strategy  # noqa: E402
from fedhealth.ml.types import Update, Weights  # noqa: E402

TARGETS = {"time": 1.5, "memory_model_sizes": 3.0}


def model_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """Shapes of an MLP-like model with about ``params`` parameters (at least 1 per tensor)."""
    hidden = 256
    fc2 = max(1, params // 4 // hidden)
    fc1 = max(1, (params - fc2 * hidden - 2 * hidden - 64) // hidden)
    shapes: dict[str, tuple[int, ...]] = {
        "fc1.weight": (hidden, fc1),
        "fc1.bias": (hidden,),
        "fc2.weight": (fc2, hidden),
        "fc2.bias": (fc2,),
        "out.weight": (1, 64),
        "out.bias": (1,),
    }
    return shapes


def write_updates(
    directory: Path, shapes: dict[str, tuple[int, ...]], count: int, seed: int
) -> list[tuple[Path, int]]:
    """Write ``count`` random float32 updates; return (path, num_samples) pairs."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        weights = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
        path = directory / f"update_{i:04d}.safetensors"
        save_file(weights, str(path))
        files.append((path, int(rng.integers(50, 5000))))
    return files


def baseline(previous: Weights, files: Sequence[tuple[Path, int]]) -> Weights:
    """Plain NumPy: preallocated float64 sums, ``acc += n * w`` per tensor, no checks."""
    acc = {k: np.zeros(a.shape, dtype=np.float64) for k, a in previous.items()}
    total = 0
    for path, n in files:
        for name, array in load_file(str(path)).items():
            acc[name] += n * array
        total += n
    return {k: (a / total).astype(np.float32) for k, a in acc.items()}


def fedavg(previous: Weights, files: Sequence[tuple[Path, int]]) -> Weights:
    """The strategy under test, fed by a generator that loads each update when asked."""

    def lazily() -> Iterator[Update]:
        for i, (path, n) in enumerate(files):
            yield Update(load_file(str(path)), num_samples=n, site=f"site-{i}")

    result = get_strategy("fedavg").aggregate(previous, lazily())
    assert result.weights is not None and len(result.accepted) == len(files)
    return result.weights


def best_time(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (tracemalloc) during ``fn()``, above what was live before."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    args = parser.parse_args(argv)

    shapes = model_shapes(args.params)
    previous = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    model_bytes = sum(a.nbytes for a in previous.values())
    n_params = model_bytes // 4

    with tempfile.TemporaryDirectory(prefix="bench_fedavg_") as tmp:
        files = write_updates(Path(tmp), shapes, args.updates, args.seed)
        # Same answer first: a benchmark of a wrong result is meaningless.
        expected, got = baseline(previous, files), fedavg(previous, files)
        max_diff = max(float(np.max(np.abs(expected[k] - got[k]))) for k in previous)
        times: dict[str, list[float]] = {"baseline": [], "fedavg": []}
        for _ in range(args.repeats):  # interleaved, so drift affects both alike
            times["baseline"] += best_time(lambda: baseline(previous, files), 1)
            times["fedavg"] += best_time(lambda: fedavg(previous, files), 1)
        peaks = {
            "baseline": peak_memory(lambda: baseline(previous, files)),
            "fedavg": peak_memory(lambda: fedavg(previous, files)),
        }

    best = {k: min(v) for k, v in times.items()}
    ratios = {
        "time": best["fedavg"] / best["baseline"],
        "memory_model_sizes": (peaks["fedavg"] - peaks["baseline"]) / model_bytes,
    }
    passed = all(ratios[k] <= TARGETS[k] for k in TARGETS)

    mib = 2**20
    print(f"FedAvg over {args.updates} updates of {n_params:,} float32 parameters "
          f"({model_bytes / mib:.1f} MiB, {len(shapes)} tensors); max |diff| = {max_diff:.2e}")  # fmt: skip
    print(f"{'':10} {'best s':>8} {'all runs s':>24} {'peak MiB':>9} {'peak / model':>13}")
    for name in ("baseline", "fedavg"):
        runs = " ".join(f"{t:.3f}" for t in times[name])
        print(
            f"{name:10} {best[name]:8.3f} {runs:>24} {peaks[name] / mib:9.1f} "
            f"{peaks[name] / model_bytes:12.2f}x"
        )
    print(f"time ratio fedavg/baseline: {ratios['time']:.2f} (target <= {TARGETS['time']})")
    print(
        f"memory above baseline: {ratios['memory_model_sizes']:.2f} model sizes "
        f"(target <= {TARGETS['memory_model_sizes']})"
    )
    print("PASS" if passed else "FAIL")

    if args.json:
        report = {
            "name": "fedavg_streaming",
            "results": {
                "updates": args.updates,
                "params": n_params,
                "model_bytes": model_bytes,
                "max_abs_diff": max_diff,
                "time_s": times,
                "best_time_s": best,
                "peak_bytes": peaks,
            },
            "ratios": ratios,
            "targets": TARGETS,
            "pass": passed,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
