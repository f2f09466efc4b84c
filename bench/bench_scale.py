"""Many hosted sites: the per-site-task overhead, and how a round's cost grows with sites.

    python bench/bench_scale.py [--sites 25,50,100] [--rows 200] [--rounds 3]
        [--database-url postgres://...] [--json PATH]

For each site count N, an experiment over the first N of the hosted sites (small data,
so the platform's own work dominates) runs (a) in `simulate`'s in-process loop and
(b) through one real `manage.py worker` process on Redis (see bench_orchestration).
Per-site-task overhead = (platform - loop) / (N x rounds), in wall and CPU time.
A round's cost (platform time / rounds) is fitted against N with a straight line; the
slope is the cost of one more site per round, the residuals say how far from linear.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_orchestration as orch  # noqa: E402

TARGET_MS = 10.0


def fit(xs: list[int], ys: list[float]) -> tuple[float, float, list[float]]:
    """Least-squares line ``y = a + b x``: (slope b, intercept a, residuals)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(b), float(a), [float(y - (a + b * x)) for x, y in zip(xs, ys, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="25,50,100", help="comma-separated site counts")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="an empty database to use instead of SQLite (migrated here)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.sites.split(",")})

    tmp = Path(tempfile.mkdtemp(prefix="fedhealth-bench-scale-"))
    print(f"work folder: {tmp}")
    env = orch.configure(tmp, args.database_url)
    orch.setup_django()
    import redis
    from django.db import connection

    from fedhealth.celery import warm_up_torch

    sites = orch.make_sites(max(counts), args.rows)
    warm_up_torch()
    load_before = orch.load_average()
    worker = orch.start_worker(tmp, env)  # after the sites exist: it consumes their queues
    rows = []
    try:
        for n in counts:
            experiment, splits = orch.make_experiment(sites[:n], args.rounds, name=f"scale-{n}")
            base_wall, base_cpu = orch.run_baseline(experiment, splits)
            wall, cpu = orch.run_platform(experiment, worker)
            tasks = n * args.rounds
            row = {
                "sites": n, "baseline_s": base_wall, "baseline_cpu_s": base_cpu,
                "platform_s": wall, "platform_cpu_s": cpu,
                "round_s": wall / args.rounds, "round_cpu_s": cpu / args.rounds,
                "overhead_ms_per_site_task": (wall - base_wall) / tasks * 1000,
                "overhead_cpu_ms_per_site_task": (cpu - base_cpu) / tasks * 1000,
                "round_seconds": orch.round_seconds(experiment), "load_average": orch.load_average(),
            }
            rows.append(row)
            print(f"{n:4d} sites: loop {base_wall:6.2f} s ({base_cpu:5.2f} CPU), platform {wall:6.2f} s "
                  f"({cpu:5.2f} CPU); overhead per site-task {row['overhead_ms_per_site_task']:5.1f} ms wall, "
                  f"{row['overhead_cpu_ms_per_site_task']:5.1f} ms CPU; load {row['load_average'][0]:.1f}", flush=True)
    finally:
        orch.stop_worker(worker, graceful=False)

    xs = [r["sites"] for r in rows]
    slope, intercept, residuals = fit(xs, [r["round_s"] for r in rows])
    cpu_slope, cpu_intercept, cpu_residuals = fit(xs, [r["round_cpu_s"] for r in rows])
    worst = max(rows, key=lambda r: r["sites"])
    overhead_cpu = worst["overhead_cpu_ms_per_site_task"]
    print(f"{args.rows} rows per site, {args.rounds} rounds, one worker process, {connection.vendor}; "
          f"load average {load_before} -> {orch.load_average()}")
    print(f"round cost vs sites, wall: {slope * 1000:.1f} ms per site + {intercept * 1000:.0f} ms; "
          f"residuals {', '.join(f'{r * 1000:+.0f}' for r in residuals)} ms")
    print(f"round cost vs sites, CPU:  {cpu_slope * 1000:.1f} ms per site + {cpu_intercept * 1000:.0f} ms; "
          f"residuals {', '.join(f'{r * 1000:+.0f}' for r in cpu_residuals)} ms")
    print(f"per-site-task overhead at {worst['sites']} sites: {worst['overhead_ms_per_site_task']:.1f} ms wall, "
          f"{overhead_cpu:.1f} ms CPU (target <= {TARGET_MS:.0f} ms)")
    result = {
        "name": "scale",
        "results": {"rows": args.rows, "rounds": args.rounds, "database": connection.vendor, "runs": rows,
                    "round_fit_wall": {"slope_s_per_site": slope, "intercept_s": intercept, "residuals_s": residuals},
                    "round_fit_cpu": {"slope_s_per_site": cpu_slope, "intercept_s": cpu_intercept,
                                      "residuals_s": cpu_residuals},
                    "load_average_before": load_before},
        "ratios": {"overhead_cpu_ms_per_site_task": overhead_cpu},
        "targets": {"overhead_cpu_ms_per_site_task": TARGET_MS},
        "pass": overhead_cpu <= TARGET_MS,
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    redis.Redis.from_url(orch.REDIS_URL).flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
