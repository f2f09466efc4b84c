"""Orchestration overhead: an experiment through Celery on Redis vs `simulate`'s loop.

    python bench/bench_orchestration.py [--sites 10] [--rows 5000] [--rounds 5] [--json PATH]

Both run the same experiment (same data, model, training and per-round evaluation on
every site's test rows) in the same run: (a) in one process with
``fedhealth.ml.federation.run_federated`` + ``evaluate_sites`` (what `simulate` does), and
(b) through the platform: a real `manage.py worker` process (concurrency 1, like the
single-process baseline) over Redis, SQLite database, file storage; clocked from
`start` until the last model version has every site's evaluation. The difference
divided by the rounds is the per-round overhead: dispatch, storage, database, CSV
re-reads at the sites.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("FEDHEALTH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def configure(tmp: Path) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test",
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "CELERY_BROKER_URL": REDIS_URL,
        "OMP_NUM_THREADS": "1",
        "FEDHEALTH_TORCH_THREADS": "1",
    }
    os.environ.update(env)
    return {**os.environ, **env}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="worker processes (1 = like for like with the single-process loop)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the worker under cProfile (pool solo) and write its stats to PATH")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fedhealth-bench-"))
    print(f"work folder: {tmp}")
    env = configure(tmp)
    import django

    django.setup()
    import redis
    import torch
    from django.core.management import call_command

    torch.set_num_threads(1)
    redis.Redis.from_url(REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)

    from aggregation import services
    from aggregation.models import Experiment, ModelVersion, Participant
    from clients.models import Site
    from clients.services import ingest_dataset
    from fedhealth.ml.federation import run_federated, split_site
    from fedhealth.ml.schema import DEFAULT_SCHEMA
    from fedhealth.ml.synthetic import generate_sites

    frames = generate_sites(args.sites, args.rows, seed=3)
    experiment = Experiment.objects.create(
        name="bench", schema=DEFAULT_SCHEMA.to_dict(), num_rounds=args.rounds, min_sites=args.sites, seed=3,
    )
    splits = []
    for name, frame in frames.items():
        site = Site.objects.create(name=name, slug=name)
        result = ingest_dataset(site, io.BytesIO(frame.to_csv(index=False).encode()), name=f"{name}.csv")
        Participant.objects.create(experiment=experiment, site=site, dataset=result.dataset)
        X = frame[DEFAULT_SCHEMA.feature_names].to_numpy("float32")
        y = frame[DEFAULT_SCHEMA.label].to_numpy("float32")
        splits.append(split_site(name, X, y, test_fraction=experiment.test_fraction, seed=experiment.seed))

    from aggregation.services.consent import record_acceptance

    for participant in experiment.participants.all():  # each site accepts the terms
        record_acceptance(participant)

    # (a) the in-process baseline, with the same per-round evaluation the platform does.
    # Both sides pay torch's one-off initialisation before the clock (the worker does
    # it at process start).
    from fedhealth.celery import warm_up_torch

    warm_up_torch()
    config = experiment.federated_config()
    t0 = time.perf_counter()
    evaluations = []
    run_federated(splits, config, on_round=lambda rec: evaluations.append(rec))
    baseline = time.perf_counter() - t0
    # run_federated already evaluates the global model on every site after each round.

    # (b) the platform: a real worker over Redis.
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115
    pool = "solo" if args.profile else os.environ.get("BENCH_WORKER_POOL", "prefork")
    profiler = [sys.executable, "-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else [sys.executable]
    worker = subprocess.Popen(
        [*profiler, "manage.py", "worker", "--concurrency", str(args.concurrency), "--pool", pool,
         "--loglevel", os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        time.sleep(1.0)
        _wait_ready(worker, tmp)
        t0 = time.perf_counter()
        services.start_experiment(experiment.pk)
        while True:
            experiment.refresh_from_db()
            if experiment.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
                raise SystemExit(f"experiment {experiment.status}: {experiment.failure_reason}")
            last = ModelVersion.objects.filter(experiment=experiment, version=args.rounds).first()
            if last is not None and last.metrics.get("sites_reported") == args.sites:
                break
            if worker.poll() is not None:
                raise SystemExit((tmp / "worker.log").read_text()[-3000:])
            time.sleep(0.05)
        platform = time.perf_counter() - t0
    finally:
        _stop(worker, graceful=bool(args.profile))
        log.close()

    rounds = list(experiment.rounds.order_by("number"))
    round_seconds = [(r.completed_at - r.started_at).total_seconds() for r in rounds]
    ratio = platform / baseline
    overhead_ms = (platform - baseline) / args.rounds * 1000
    print(f"{args.sites} sites x {args.rows} rows x {args.rounds} rounds, worker concurrency {args.concurrency}, "
          "one torch thread per process")
    print(f"{'in-process (simulate loop)':<30} {baseline:8.2f} s")
    print(f"{'platform (Celery + Redis)':<30} {platform:8.2f} s")
    print(f"wall-time ratio platform/in-process: {ratio:.3f} (target <= 1.3)")
    print(f"orchestration overhead per round: {overhead_ms:.0f} ms "
          f"(round durations {', '.join(f'{s:.2f}' for s in round_seconds)} s)")
    result = {
        "name": "orchestration_overhead",
        "results": {"concurrency": args.concurrency, "sites": args.sites, "rows": args.rows, "rounds": args.rounds, "baseline_s": baseline,
                    "platform_s": platform, "overhead_ms_per_round": overhead_ms, "round_seconds": round_seconds},
        "ratios": {"wall_time": ratio},
        "targets": {"wall_time": 1.3},
        "pass": ratio <= 1.3,
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    redis.Redis.from_url(REDIS_URL).flushdb()
    return 0


def _stop(worker: subprocess.Popen, *, graceful: bool) -> None:
    """Kill the worker's process group; with ``graceful`` (profiling) let it shut down
    warm first so cProfile writes its stats."""
    if graceful:
        os.killpg(worker.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=60)
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def _wait_ready(worker: subprocess.Popen, tmp: Path) -> None:
    """Wait until the worker answers a ping, so start-up is not on the clock."""
    from fedhealth.celery import app

    for _ in range(120):
        if worker.poll() is not None:
            raise SystemExit((tmp / "worker.log").read_text()[-3000:])
        if app.control.ping(timeout=0.5):
            return
    raise SystemExit("worker did not start")


if __name__ == "__main__":
    sys.exit(main())
