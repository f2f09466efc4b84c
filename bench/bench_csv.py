"""Benchmark: CSV validation + loading against a plain ``pandas.read_csv`` of the same file.

Usage: ``python bench/bench_csv.py [--rows 1000000] [--repeat 3] [--json PATH]``

Writes a valid four-vital CSV to a temporary directory, then runs (a) ``pandas.read_csv(path)``
and (b) ``validate_csv(path, DEFAULT_SCHEMA)`` each ``--repeat`` times, every run in a fresh
subprocess so that peak RSS is clean. A child measures its wall time and its peak RSS
(``ru_maxrss``) above its own baseline taken after the imports. Reported figures are the best
(minimum) wall time and the minimum peak-RSS increase over the runs. Targets: validation at
most 1.5x the time and 2.0x the peak memory of plain ``read_csv``. The script reports, it does
not gate: the exit code is 0 even when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"time": 1.5, "memory": 2.0}

# Both modes import the same modules before the baseline, so only the work itself is measured.
CHILD = """
import gc, json, resource, sys, time
import numpy as np, pandas as pd
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.validation import validate_csv
mode, path = sys.argv[1], sys.argv[2]
gc.collect()
base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu = time.perf_counter(), time.process_time()
if mode == "read_csv":
    rows = len(pd.read_csv(path))
else:
    result = validate_csv(path, DEFAULT_SCHEMA)
    assert result.report.ok and result.data is not None, result.report.format()
    rows = len(result.data.y)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak_kib / 1024, "rows": rows}))
"""


# Valid rows of the default schema, every value inside its range.
WRITER = """
import sys
import numpy as np, pandas as pd
path, rows = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
pd.DataFrame({
    "heart_rate": rng.uniform(50, 120, rows).round(1),
    "systolic_bp": rng.integers(90, 161, rows),
    "diastolic_bp": rng.integers(60, 101, rows),
    "spo2": rng.uniform(90, 100, rows).round(1),
    "healthy": rng.integers(0, 2, rows),
}).to_csv(path, index=False)
"""


def python(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter that can import ``fedhealth``; return its stdout.

    Everything heavy runs in children: Linux carries the parent's peak RSS into
    ``ru_maxrss`` of a forked and exec'd child, so a fat parent would hide the child's peak.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    return done.stdout


def run_child(mode: str, path: Path) -> dict[str, float]:
    """One measurement in a fresh interpreter: wall seconds and peak RSS increase (MiB)."""
    return json.loads(python(CHILD, mode, str(path)).strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fedhealth-bench-") as tmp:
        path = Path(tmp) / "vitals.csv"
        python(WRITER, str(path), str(args.rows))
        size_mib = path.stat().st_size / 2**20
        runs: dict[str, list[dict[str, float]]] = {"read_csv": [], "validate_csv": []}
        for _ in range(args.repeat):  # interleaved, so that machine drift hits both alike
            for mode in runs:
                runs[mode].append(run_child(mode, path))

    results = {
        mode: {
            "best_seconds": min(r["seconds"] for r in rs),
            "peak_mib": min(r["peak_mib"] for r in rs),
            "rows": int(rs[0]["rows"]),
        }
        for mode, rs in runs.items()
    }
    base, ours = results["read_csv"], results["validate_csv"]
    ratios = {
        "time": ours["best_seconds"] / base["best_seconds"],
        "memory": ours["peak_mib"] / base["peak_mib"],
    }
    passed = all(ratios[k] <= TARGETS[k] for k in TARGETS)

    print(f"csv_validation: {args.rows} rows, {size_mib:.1f} MiB, best of {args.repeat}")
    print(f"{'':<14}{'seconds':>10}{'peak MiB':>10}")
    for mode, r in results.items():
        print(f"{mode:<14}{r['best_seconds']:>10.3f}{r['peak_mib']:>10.1f}")
    for key in ("time", "memory"):
        verdict = "ok" if ratios[key] <= TARGETS[key] else "MISSED"
        print(f"{key} ratio {ratios[key]:.2f} (target <= {TARGETS[key]}) {verdict}")

    if args.json:
        payload = {
            "name": "csv_validation",
            "rows": args.rows,
            "file_mib": round(size_mib, 2),
            "results": results,
            "ratios": ratios,
            "targets": TARGETS,
            "pass": passed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
