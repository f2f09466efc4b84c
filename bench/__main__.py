"""Run every benchmark and print its ratios against the baseline measured in the same run.

    python -m bench                 # all
    python -m bench csv fedavg      # some (names: the bench_<name>.py files)
    python -m bench --quick         # smaller sizes, for a smoke run

Each benchmark runs as its own process (so peak-memory figures are not polluted by the
others) and writes JSON to bench/results/<name>.json; this prints one summary table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUICK_ARGS = {
    "agents": ["--agents", "5", "--rounds", "2", "--rows", "200"],
    "csv": ["--rows", "100000"],
    "upload": ["--rows", "100000", "--repeat", "1"],
    "dp": ["--rows", "5000", "--repeats", "2", "--no-utility"],
    "fedavg": ["--updates", "20"],
    "flower": ["--repeats", "1", "--rows", "1000"],
    "orchestration": ["--sites", "4", "--rows", "2000", "--rounds", "3"],
    "predict": ["--repeats", "5", "--requests", "500"],
    "quality": ["--seeds", "1", "--rounds", "5"],
    "scale": ["--sites", "4,8", "--rows", "100", "--rounds", "2"],
    "secagg": ["--params", "100000", "--rows", "500", "--repeats", "2"],
    "startup": ["--repeats", "3"],
}


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(available())})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    RESULTS.mkdir(exist_ok=True)
    summary = []
    for name in names:
        out = RESULTS / f"{name}.json"
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out)]
        if args.quick:
            cmd += QUICK_ARGS.get(name, [])
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        if proc.returncode != 0 or not out.exists():
            summary.append((name, "ERROR", {}, {}, time.monotonic() - started))
            continue
        data = json.loads(out.read_text())
        verdict = "PASS" if data.get("pass") else "MISS"
        summary.append((name, verdict, data.get("ratios", {}), data.get("targets", {}), time.monotonic() - started))
    print("\n=== summary (ratio vs target, measured in the same run)")
    for name, verdict, ratios, targets, seconds in summary:
        parts = [f"{k}={v:.3f} (target {targets.get(k, '-')})" for k, v in ratios.items() if isinstance(v, int | float)]
        print(f"{name:<14} {verdict:<5} {'; '.join(parts)}  [{seconds:.0f}s]")
    return 1 if any(v == "ERROR" for _, v, *_ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
