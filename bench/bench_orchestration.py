"""Orchestration overhead: an experiment through Celery on Redis vs `simulate`'s loop.

    python bench/bench_orchestration.py [--sites 10] [--rows 5000] [--rounds 5]
        [--concurrency 1] [--database-url postgres://...] [--profile PATH] [--json PATH]

Both run the same experiment (same data, model, training and per-round evaluation on
every site's test rows) in the same run: (a) in one process with
``fedhealth.ml.federation.run_federated`` (what `simulate` does; it evaluates the global
model on every site after each round), and (b) through the platform: a real
`manage.py worker` process (concurrency 1, like the single-process baseline) over
Redis, a database (SQLite in the work folder, or an empty PostgreSQL database given by
``--database-url``: it is migrated, never dropped here), file storage; clocked from
`start` until the last model version has every site's evaluation. The difference
divided by the site-tasks is the per-site-task overhead: claim, consent, storage,
database, dispatch.

Wall time and CPU time are both reported: the platform's CPU is the worker's process
group (read from /proc before and after) plus `start` in this process; the baseline's
is this process's. Redis's own CPU is in neither. The machine is shared, so CPU is the
steadier figure; the load average is printed with each run.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("FEDHEALTH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TARGET = 1.1


def configure(tmp: Path, database_url: str | None = None) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "fedhealth.settings_test",
        "DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "CELERY_BROKER_URL": REDIS_URL,
        "OMP_NUM_THREADS": "1",
        "FEDHEALTH_TORCH_THREADS": "1",
    }
    os.environ.update(env)
    return {**os.environ, **env}


def setup_django() -> None:
    import django

    django.setup()
    import redis
    import torch
    from django.core.management import call_command

    torch.set_num_threads(1)
    redis.Redis.from_url(REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)


def make_sites(n_sites: int, rows: int, *, seed: int = 3) -> list:
    """``n_sites`` hosted sites, each with a ready dataset of ``rows`` generated rows
    ingested through the real upload path. Returns ``[(site, dataset, frame)]``."""
    from clients.models import Site
    from clients.services import ingest_dataset
    from fedhealth.ml.synthetic import generate_sites

    made = []
    for name, frame in generate_sites(n_sites, rows, seed=seed).items():
        site = Site.objects.create(name=name, slug=name)
        result = ingest_dataset(site, io.BytesIO(frame.to_csv(index=False).encode()), name=f"{name}.csv")
        made.append((site, result.dataset, frame))
    return made


def make_experiment(sites: list, rounds: int, *, name: str = "bench", seed: int = 3, **fields):
    """An experiment over ``sites`` (from ``make_sites``), every site accepting its terms;
    returns it with each site's split for the in-process baseline."""
    from aggregation.models import Experiment, Participant
    from aggregation.services.consent import record_acceptance
    from fedhealth.ml.federation import split_site
    from fedhealth.ml.schema import DEFAULT_SCHEMA

    experiment = Experiment.objects.create(
        name=name, schema=DEFAULT_SCHEMA.to_dict(), num_rounds=rounds, min_sites=len(sites), seed=seed, **fields,
    )
    splits = []
    for site, dataset, frame in sites:
        Participant.objects.create(experiment=experiment, site=site, dataset=dataset)
        X = frame[DEFAULT_SCHEMA.feature_names].to_numpy("float32")
        y = frame[DEFAULT_SCHEMA.label].to_numpy("float32")
        splits.append(split_site(site.slug, X, y, test_fraction=experiment.test_fraction, seed=experiment.seed))
    for participant in experiment.participants.all():  # each site accepts the terms
        record_acceptance(participant)
    return experiment, splits


def run_baseline(experiment, splits) -> tuple[float, float]:
    """The same experiment in `simulate`'s in-process loop: (wall s, CPU s)."""
    from fedhealth.ml.federation import run_federated

    config = experiment.federated_config()
    w0, c0 = time.perf_counter(), time.process_time()
    run_federated(splits, config)
    return time.perf_counter() - w0, time.process_time() - c0


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path
    log: object

    def cpu(self) -> float:
        return group_cpu_seconds(self.proc.pid)


def start_worker(tmp: Path, env: dict[str, str], *, concurrency: int = 1, profile: str | None = None) -> Worker:
    """A real `manage.py worker` (all hosted sites' queues and the server's), ready."""
    log_path = tmp / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115
    pool = "solo" if profile else os.environ.get("BENCH_WORKER_POOL", "prefork")
    # CPU-time profile: on a shared machine a wall-clock profile charges other
    # processes' time to whatever was running.
    profiler = [sys.executable, "-c", PROFILE_WRAPPER, str(Path(profile).resolve())] if profile else [sys.executable]
    proc = subprocess.Popen(
        [*profiler, "manage.py", "worker", "--concurrency", str(concurrency), "--pool", pool,
         "--loglevel", os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    worker = Worker(proc, log_path, log)
    try:
        _wait_ready(worker)
    except BaseException:
        stop_worker(worker, graceful=False)
        raise
    return worker


PROFILE_WRAPPER = """
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
sys.argv = sys.argv[1:]
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def run_platform(experiment, worker: Worker) -> tuple[float, float]:
    """Start ``experiment`` and wait until its last version has every site's
    evaluation: (wall s, CPU s of the worker's processes plus `start` here)."""
    from aggregation import services
    from aggregation.models import Experiment, ModelVersion

    n_sites = experiment.participants.count()
    cpu0 = worker.cpu()
    w0, c0 = time.perf_counter(), time.process_time()
    services.start_experiment(experiment.pk)
    start_cpu = time.process_time() - c0
    while True:
        experiment.refresh_from_db()
        if experiment.status in (Experiment.Status.FAILED, Experiment.Status.CANCELLED):
            raise SystemExit(f"experiment {experiment.status}: {experiment.failure_reason}")
        last = ModelVersion.objects.filter(experiment=experiment, version=experiment.num_rounds).first()
        if last is not None and last.metrics.get("sites_reported") == n_sites:
            break
        if worker.proc.poll() is not None:
            raise SystemExit(worker.log_path.read_text()[-3000:])
        time.sleep(0.02)
    return time.perf_counter() - w0, worker.cpu() - cpu0 + start_cpu


def round_seconds(experiment) -> list[float]:
    return [(r.completed_at - r.started_at).total_seconds() for r in experiment.rounds.order_by("number")]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in a process group, plus what its
    reaped children used (a prefork pool's replaced children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid pgrp ... utime(12) stime(13) cutime(14) cstime(15)
        if int(fields[2]) == pgid:
            total += sum(int(v) for v in fields[11:15])
    return total / tick


def stop_worker(worker: Worker, *, graceful: bool) -> None:
    """Kill the worker's process group; with ``graceful`` (profiling) let it shut down
    warm first so cProfile writes its stats."""
    if graceful:
        os.killpg(worker.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=60)
    if worker.proc.poll() is None:
        os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    worker.log.close()


def _wait_ready(worker: Worker) -> None:
    """Wait until the worker answers a ping, so start-up is not on the clock."""
    from fedhealth.celery import app

    time.sleep(1.0)
    for _ in range(240):
        if worker.proc.poll() is not None:
            raise SystemExit(worker.log_path.read_text()[-3000:])
        if app.control.ping(timeout=0.5):
            return
    raise SystemExit("worker did not start")


def load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="worker processes (1 = like for like with the single-process loop)")
    parser.add_argument("--database-url", help="an empty database to use instead of SQLite (migrated here)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the worker under cProfile (pool solo) and write its stats to PATH")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fedhealth-bench-"))
    print(f"work folder: {tmp}")
    env = configure(tmp, args.database_url)
    setup_django()
    import redis
    from django.db import connection

    experiment, splits = make_experiment(make_sites(args.sites, args.rows), args.rounds)
    load_before = load_average()

    # (a) the in-process baseline. Both sides pay torch's one-off initialisation before
    # the clock (the worker does it at process start).
    from fedhealth.celery import warm_up_torch

    warm_up_torch()
    baseline, baseline_cpu = run_baseline(experiment, splits)

    # (b) the platform: a real worker over Redis.
    worker = start_worker(tmp, env, concurrency=args.concurrency, profile=args.profile)
    try:
        platform, platform_cpu = run_platform(experiment, worker)
    finally:
        stop_worker(worker, graceful=bool(args.profile))
    load_after = load_average()

    seconds = round_seconds(experiment)
    ratio = platform / baseline
    cpu_ratio = platform_cpu / baseline_cpu
    tasks = args.sites * args.rounds
    overhead_ms = (platform - baseline) / tasks * 1000
    overhead_cpu_ms = (platform_cpu - baseline_cpu) / tasks * 1000
    print(f"{args.sites} sites x {args.rows} rows x {args.rounds} rounds, worker concurrency {args.concurrency}, "
          f"{connection.vendor}, one torch thread per process; load average {load_before} -> {load_after}")
    print(f"{'':<30} {'wall':>8}   {'CPU':>8}")
    print(f"{'in-process (simulate loop)':<30} {baseline:8.2f} s {baseline_cpu:8.2f} s")
    print(f"{'platform (Celery + Redis)':<30} {platform:8.2f} s {platform_cpu:8.2f} s")
    print(f"ratio platform/in-process: wall {ratio:.3f}, CPU {cpu_ratio:.3f} (target <= {TARGET})")
    print(f"overhead per site-task: wall {overhead_ms:.1f} ms, CPU {overhead_cpu_ms:.1f} ms "
          f"(round durations {', '.join(f'{s:.2f}' for s in seconds)} s)")
    result = {
        "name": "orchestration_overhead",
        "results": {"concurrency": args.concurrency, "sites": args.sites, "rows": args.rows, "rounds": args.rounds,
                    "database": connection.vendor, "baseline_s": baseline, "platform_s": platform,
                    "baseline_cpu_s": baseline_cpu, "platform_cpu_s": platform_cpu,
                    "overhead_ms_per_site_task": overhead_ms, "overhead_cpu_ms_per_site_task": overhead_cpu_ms,
                    "round_seconds": seconds, "load_average": {"before": load_before, "after": load_after}},
        "ratios": {"wall_time": ratio, "cpu_time": cpu_ratio},
        "targets": {"wall_time": TARGET, "cpu_time": TARGET},
        "pass": ratio <= TARGET,
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    redis.Redis.from_url(REDIS_URL).flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
