"""`simulate` against Flower's simulation engine: the same job, data and hyper-parameters.

The job (issue 15): 10 sites x 5,000 generated rows (each split 75/25 with the product's
stratified split, written once as <site>-train.csv / <site>-test.csv), 5 rounds, 1 local
epoch, batch 32, HealthNet 64-32-16, FedAvg over every site, every site evaluating each
new global model. FedHealth runs it as a user would: ``manage.py simulate --site
NAME=TRAIN.csv:TEST.csv ... --no-baselines``; Flower runs bench/flower_job.py (a
``ClientApp``/``ServerApp`` pair from its PyTorch quickstart, ``run_simulation`` on Ray)
with the same files. Both are timed as whole processes, start-up included, interleaved
``--repeats`` times; the figure is the median wall time. Accuracy: the final global
model's accuracy averaged over the ten sites' test sets.

Flower lives in its own virtualenv, ``var/bench-flower-venv`` (created here on first use:
``python -m venv`` then ``pip install torch==2.13.0 "flwr[simulation]"``); it is a
benchmark tool, never a dependency of the product.

Targets: FedHealth's wall time at most 0.25x Flower's; accuracy at least Flower's - 0.005.

    python bench/bench_flower.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "var" / "bench-flower-venv"
DATA = ROOT / "var" / "bench-flower-data"
TIME_TARGET = 0.25
ACCURACY_MARGIN = 0.005


def flower_python() -> Path:
    python = VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run(
            [python, "-c", "import flwr, ray, torch"], capture_output=True
        ).returncode
        == 0
    ):
        return python
    print(
        f"creating {VENV} (torch 2.13.0 and flwr[simulation] from the package index) ...",
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "torch==2.13.0", "flwr[simulation]"], check=True
    )
    return python


def write_data(sites: int, rows: int, seed: int) -> tuple[list[str], str]:
    """The job's CSVs (written once per size); returns (feature names, label name)."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from fedhealth.ml.federation import split_site
    from fedhealth.ml.schema import DEFAULT_SCHEMA
    from fedhealth.ml.synthetic import generate_sites

    features = [f.name for f in DEFAULT_SCHEMA.features]
    label = DEFAULT_SCHEMA.label
    stamp = DATA / f"job-{sites}x{rows}-seed{seed}.json"
    if stamp.exists():
        return features, label
    DATA.mkdir(parents=True, exist_ok=True)
    for old in DATA.glob("*.csv"):
        old.unlink()
    for name, frame in generate_sites(sites, rows, seed=seed).items():
        split = split_site(
            name, frame[features].to_numpy(), frame[label].to_numpy(), test_fraction=0.25, seed=seed
        )
        for part, X, y in (
            ("train", split.X_train, split.y_train),
            ("test", split.X_test, split.y_test),
        ):
            out = pd.DataFrame(X, columns=features)
            out[label] = y
            out.to_csv(DATA / f"{name}-{part}.csv", index=False)
    stamp.write_text(json.dumps({"sites": sites, "rows": rows, "seed": seed}))
    return features, label


def run_fedhealth(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    sites = sorted(p.name.removesuffix("-train.csv") for p in DATA.glob("*-train.csv"))
    specs = [f"--site={s}={DATA / f'{s}-train.csv'}:{DATA / f'{s}-test.csv'}" for s in sites]
    cmd = [
        sys.executable,
        "manage.py",
        "simulate",
        *specs,
        "--rounds",
        str(args.rounds),
        "--local-epochs",
        "1",
        "--batch-size",
        "32",
        "--hidden",
        "64,32,16",
        "--seed",
        str(args.seed),
        "--no-baselines",
        "--verbosity",
        "0",
        "--json",
        str(out),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, json.loads(out.read_text())["federated"]["mean"]["accuracy"]


def run_flower(
    python: Path, args: argparse.Namespace, features: list[str], label: str
) -> tuple[float, float]:
    cmd = [
        str(python),
        str(ROOT / "bench" / "flower_job.py"),
        "--data",
        str(DATA),
        "--features",
        ",".join(features),
        "--label",
        label,
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
    ]
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    python = flower_python()
    features, label = write_data(args.sites, args.rows, args.seed)
    out = ROOT / "var" / "bench-flower-simulate.json"
    runs: dict[str, list[tuple[float, float]]] = {"fedhealth": [], "flower": []}
    for i in range(args.repeats):
        runs["flower"].append(run_flower(python, args, features, label))
        runs["fedhealth"].append(run_fedhealth(args, out))
        print(
            f"repeat {i + 1}: flower {runs['flower'][-1][0]:.1f} s (accuracy {runs['flower'][-1][1]:.4f}), "
            f"fedhealth {runs['fedhealth'][-1][0]:.1f} s (accuracy {runs['fedhealth'][-1][1]:.4f}), "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    accuracy = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    ratio = wall["fedhealth"] / wall["flower"]
    gap = accuracy["fedhealth"] - accuracy["flower"]
    passed = ratio <= TIME_TARGET and gap >= -ACCURACY_MARGIN
    print(
        f"wall time (median of {args.repeats}): fedhealth {wall['fedhealth']:.2f} s, flower {wall['flower']:.2f} s, "
        f"ratio {ratio:.3f} (target <= {TIME_TARGET})"
    )
    print(
        f"accuracy: fedhealth {accuracy['fedhealth']:.4f}, flower {accuracy['flower']:.4f}, "
        f"difference {gap:+.4f} (target >= -{ACCURACY_MARGIN})"
    )
    print("PASS" if passed else "MISS")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "wall_s": wall,
                    "accuracy": accuracy,
                    "runs": runs,
                    "pass": passed,
                    "ratios": {"time_vs_flower": ratio, "accuracy_difference": gap},
                    "targets": {
                        "time_vs_flower": f"<= {TIME_TARGET}",
                        "accuracy_difference": f">= -{ACCURACY_MARGIN}",
                    },
                    "load_average": os.getloadavg()[0],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
