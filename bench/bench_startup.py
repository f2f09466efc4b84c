"""Start-up: `manage.py simulate --help` against `python -c "import torch"`, same run.

Target (issue 15): ``simulate --help`` within 1.0 s of importing torch alone. Also timed:
``manage.py check`` (DEBUG=1, the whole project's import), for the record. Each command
runs ``--repeats`` times, interleaved, in a fresh interpreter; the figure is the median
wall time and the median CPU time (user + sys of the child, which a busy machine
distorts far less than wall time).

``--ref COMMIT`` also runs the same commands in a temporary git worktree of COMMIT
(var/bench-startup-<commit>), for a before/after measured in the same run.

    python bench/bench_startup.py [--repeats 7] [--ref 25fbeac] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 1.0
COMMANDS = {
    "import torch": ["-c", "import torch"],
    "simulate --help": ["manage.py", "simulate", "--help"],
    "manage.py check": ["manage.py", "check"],
}


def timed(args: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of the project's interpreter with ``args``."""
    env = dict(os.environ, DEBUG="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def worktree(ref: str) -> Path:
    path = ROOT / "var" / f"bench-startup-{ref}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), ref],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--ref", help="also time this commit (a git worktree), e.g. the code before a change"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    trees = {"now": ROOT} | ({f"at {args.ref}": worktree(args.ref)} if args.ref else {})
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for cwd in trees.values():  # warm the page cache and write .pyc files once
        for argv in COMMANDS.values():
            timed(argv, cwd)
    for _ in range(args.repeats):
        for tree, cwd in trees.items():
            for name, argv in COMMANDS.items():
                samples.setdefault((tree, name), []).append(timed(argv, cwd))

    figures: dict[str, dict[str, float]] = {}
    print(
        f"{'tree':<14} {'command':<18} {'wall (median)':>14} {'CPU (median)':>13}   load {os.getloadavg()[0]:.1f}"
    )
    for (tree, name), runs in samples.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        figures[f"{tree}: {name}"] = {"wall_s": wall, "cpu_s": cpu}
        print(f"{tree:<14} {name:<18} {wall:>13.2f}s {cpu:>12.2f}s")
    torch_, help_ = figures["now: import torch"], figures["now: simulate --help"]
    over_wall, over_cpu = help_["wall_s"] - torch_["wall_s"], help_["cpu_s"] - torch_["cpu_s"]
    ratios = {
        "help_over_torch_wall_s": over_wall,
        "help_over_torch_cpu_s": over_cpu,
        "help_vs_torch_wall": help_["wall_s"] / torch_["wall_s"],
    }
    if args.ref:
        ratios["check_now_vs_ref_cpu"] = (
            figures["now: manage.py check"]["cpu_s"]
            / figures[f"at {args.ref}: manage.py check"]["cpu_s"]
        )
        ratios["help_now_vs_ref_cpu"] = (
            help_["cpu_s"] / figures[f"at {args.ref}: simulate --help"]["cpu_s"]
        )
    passed = over_wall <= TARGET_SECONDS
    print(
        f"simulate --help over import torch: {over_wall:+.2f} s wall, {over_cpu:+.2f} s CPU "
        f"(target <= +{TARGET_SECONDS:.1f} s): {'PASS' if passed else 'MISS'}"
    )
    for key, value in ratios.items():
        if key.endswith("_vs_ref_cpu"):
            print(f"{key}: {value:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "figures": figures,
                    "ratios": ratios,
                    "pass": passed,
                    "targets": {"help_over_torch_wall_s": f"<= {TARGET_SECONDS}"},
                    "load_average": os.getloadavg()[0],
                    "repeats": args.repeats,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
