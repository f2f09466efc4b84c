"""Prediction through the REST API against calling the model directly, and single-record
latency under concurrent load.

Usage: ``python bench/bench_predict.py [--json PATH] [--batch N] [--repeats R]
[--requests N] [--connections C] [--max-seconds S]``

Starts its own server: a temporary SQLite database and media folder, ``migrate``, one
hosted site whose experiment runs one round in-process (so a real model version exists),
a coordinator token, then gunicorn (2 workers x 4 threads, as in docker-compose) on a
free loopback port. Throttle rates are raised so the limiter never answers 429 here.

1. Batch throughput: ``--batch`` records per ``POST /api/v1/models/{id}/predict/`` on one
   keep-alive connection, ``--repeats`` times, against the core's ``inference.predict``
   on the same rows in this process (the same weights and normaliser, downloaded from the
   API). The API does more: JSON both ways, token lookup, scoping, per-field checks of
   every value. Ratio = API records/s / direct records/s; target (issue 15) at least 0.3.
2. Single-record latency: a second process opens ``--connections`` keep-alive connections
   and sends one-record predictions until ``--requests`` are done or ``--max-seconds``
   pass; p50/p99 in ms; target (issue 15) p99 under 50 ms at 16 connections.

CPU is reported beside wall time, because the box is shared: gunicorn's CPU (master and
workers, from /proc) per batch and per single-record request, the load generator's CPU
per request, the direct call's CPU, and the load average at three points.

Always exits 0. The run fails only if a request errors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


SETUP = """
import io, json
import django
django.setup()
from clients.models import ApiToken, Membership, Site
from clients.services import ingest_dataset
from django.contrib.auth import get_user_model
from aggregation.models import Experiment, Participant
from aggregation.services.consent import record_acceptance
from aggregation import services
from aggregation.services.sitework import train_hosted_update
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.synthetic import generate_site

site = Site.objects.create(name="Bench", slug="bench")
csv = generate_site(2000, seed=0).to_csv(index=False).encode()
ds = ingest_dataset(site, io.BytesIO(csv), name="bench.csv").dataset
exp = Experiment.objects.create(name="bench", schema=DEFAULT_SCHEMA.to_dict(), num_rounds=1, local_epochs=1)
record_acceptance(Participant.objects.create(experiment=exp, site=site, dataset=ds))  # the site accepts
services.start_experiment(exp.pk)
for u in exp.rounds.get().updates.all():
    train_hosted_update(u.pk)
version = services.aggregate_round(exp.rounds.get().pk)
user = get_user_model().objects.create_user("bench")
Membership.objects.create(user=user, role="coordinator")
print(json.dumps({"token": ApiToken.issue(user=user)[1], "model": version.pk}))
"""


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of gunicorn's master ``pid`` and its live workers."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(n: int, seed: int = 1) -> list[dict[str, float]]:
    """Plausible vitals inside the default schema's ranges."""
    rng = np.random.default_rng(seed)
    return [
        {
            "heart_rate": round(float(rng.uniform(55, 115)), 1),
            "systolic_bp": round(float(rng.uniform(95, 155)), 1),
            "diastolic_bp": round(float(rng.uniform(62, 98)), 1),
            "spo2": round(float(rng.uniform(91, 99.9)), 1),
        }
        for _ in range(n)
    ]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str, dict]:
    """Migrate a fresh SQLite database, create a model version and a token, start gunicorn."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DJANGO_"))}
    rate = "100000000/min"
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "fedhealth.settings",
            "SECRET_KEY": "bench-only-secret-key-0123456789abcdef-0123456789abcdef",
            # Plain HTTP on 127.0.0.1: no redirect to HTTPS.
            "SECURE_SSL_REDIRECT": "0",
            "DEBUG": "0",
            "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
            "MEDIA_ROOT": str(tmp / "media"),
            "STATIC_ROOT": str(tmp / "static"),
            "CELERY_BROKER_URL": "filesystem://",
            "CELERY_FILESYSTEM_BROKER_DIR": str(tmp / "broker"),
            "LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",
            "API_THROTTLE_RATE": rate,
            "API_PREDICT_THROTTLE_RATE": rate,
        }
    )
    (tmp / "static").mkdir()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    setup = json.loads(out.stdout.strip().splitlines()[-1])
    port = free_port()
    log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115  (closed with the process)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "fedhealth.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--timeout",
            "120",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url, setup
        except requests.RequestException:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"gunicorn did not start:\n{(tmp / 'gunicorn.log').read_text()[-3000:]}")


def batch_api(
    url: str, token: str, model: int, batch: list[dict], repeats: int, server_pid: int
) -> tuple[list[float], float]:
    """Wall seconds per API batch, and gunicorn's CPU seconds per batch (after a warm-up
    request, which pays the worker's torch import and model build)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    path = f"{url}/api/v1/models/{model}/predict/"
    assert session.post(path, json={"records": batch}, timeout=60).status_code == 200  # warm-up
    times = []
    cpu = server_cpu(server_pid)
    for _ in range(repeats):
        started = time.perf_counter()
        response = session.post(path, json={"records": batch}, timeout=60)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200 and len(response.json()["labels"]) == len(batch), (
            response.text[:300]
        )
    return times, (server_cpu(server_pid) - cpu) / repeats


def batch_direct(
    url: str, token: str, model: int, batch: list[dict], repeats: int
) -> tuple[list[float], float]:
    """The core's predict in this process, on the same model, normaliser and rows:
    wall seconds per call, and CPU seconds per call (mean)."""
    from fedhealth.ml.inference import predict
    from fedhealth.ml.model import ModelConfig
    from fedhealth.ml.schema import DEFAULT_SCHEMA
    from fedhealth.ml.stats import Normalizer
    from fedhealth.ml.weights_io import weights_from_bytes

    headers = {"Authorization": f"Bearer {token}"}
    meta = requests.get(f"{url}/api/v1/models/{model}/", headers=headers, timeout=30).json()
    data = requests.get(
        f"{url}/api/v1/models/{model}/weights/", headers=headers, timeout=30
    ).content
    weights = weights_from_bytes(data, expected_sha256=meta["sha256"])
    cfg, normalizer = (
        ModelConfig.from_dict(meta["model_config"]),
        Normalizer.from_dict(meta["normalizer"]),
    )
    X = np.array([[r[f] for f in DEFAULT_SCHEMA.feature_names] for r in batch], dtype=np.float32)
    predict(cfg, weights, normalizer, X)
    times = []
    cpu = time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        predict(cfg, weights, normalizer, X)
        times.append(time.perf_counter() - started)
    return times, (time.process_time() - cpu) / repeats


def load_worker(
    url: str,
    token: str,
    model: int,
    total: int,
    connections: int,
    max_seconds: float,
    server_pid: int,
) -> dict:
    """Run in the second process: ``connections`` threads, one keep-alive connection each."""
    path = f"{url}/api/v1/models/{model}/predict/"
    bodies = [{"record": r} for r in records(256, seed=7)]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    remaining = [total]
    deadline = [0.0]  # set once every connection is warm

    ready = threading.Barrier(connections + 1)

    def run(i: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        # Warm-up, not timed: a few requests per connection, so that every gunicorn
        # worker has imported torch and built the model (a worker's first prediction
        # pays both, ~3 s; web processes no longer import torch at start).
        for j in range(3):
            session.post(path, json=bodies[(i + j) % len(bodies)], timeout=60)
        ready.wait()
        k = i
        while time.monotonic() < deadline[0]:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                ok = session.post(path, json=bodies[k % len(bodies)], timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed) if ok else None
                errors[0] += not ok
            k += connections

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + max_seconds
    server0 = server_cpu(server_pid)
    ready.wait()
    started, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, client_cpu = time.perf_counter() - started, time.process_time() - cpu0
    server = server_cpu(server_pid) - server0
    ms = sorted(x * 1000 for x in latencies)
    pick = (lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]) if ms else (lambda q: float("nan"))
    return {
        "requests": len(ms),
        "errors": errors[0],
        "seconds": wall,
        "requests_per_second": len(ms) / wall,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "connections": connections,
        "client_cpu_ms_per_request": client_cpu * 1000 / max(1, len(ms) + errors[0]),
        "server_cpu_ms_per_request": server * 1000 / max(1, len(ms) + errors[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results as JSON to this path")
    parser.add_argument("--batch", type=int, default=1000, help="records per batch request")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--requests", type=int, default=3000, help="single-record requests under load"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="time bound of the load phase"
    )
    parser.add_argument(
        "--load-worker", nargs=4, metavar=("URL", "TOKEN", "MODEL", "PID"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.load_worker:
        url, token, model, pid = args.load_worker
        print(
            json.dumps(
                load_worker(
                    url,
                    token,
                    int(model),
                    args.requests,
                    args.connections,
                    args.max_seconds,
                    int(pid),
                )
            )
        )
        return 0

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        server, url, setup = start_server(Path(tmp))
        try:
            batch = records(args.batch)
            load = [os.getloadavg()[0]]
            api_times, batch_server_cpu = batch_api(
                url, setup["token"], setup["model"], batch, args.repeats, server.pid
            )
            direct_times, direct_cpu = batch_direct(
                url, setup["token"], setup["model"], batch, args.repeats
            )
            load.append(os.getloadavg()[0])
            loader = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--load-worker",
                    url,
                    setup["token"],
                    str(setup["model"]),
                    str(server.pid),
                    "--requests",
                    str(args.requests),
                    "--connections",
                    str(args.connections),
                    "--max-seconds",
                    str(args.max_seconds),
                ],
                capture_output=True,
                text=True,
                timeout=args.max_seconds + 120,
                check=True,
            )
            latency = json.loads(loader.stdout.strip().splitlines()[-1])
            load.append(os.getloadavg()[0])
        finally:
            server.terminate()
            server.wait(timeout=30)

    results = {
        name: {
            "best_seconds": min(ts),
            "median_seconds": statistics.median(ts),
            "records_per_second": args.batch / statistics.median(ts),
            "all_seconds": ts,
        }
        for name, ts in (("batch_api", api_times), ("batch_direct", direct_times))
    }
    results["single_record_under_load"] = latency
    results["batch_api"]["server_cpu_ms_per_batch"] = batch_server_cpu * 1000
    results["batch_direct"]["cpu_ms_per_batch"] = direct_cpu * 1000
    results["load_average"] = load
    ratio = (
        results["batch_api"]["records_per_second"] / results["batch_direct"]["records_per_second"]
    )
    passed = latency["errors"] == 0
    targets = {"batch_throughput_min": 0.3, "single_record_p99_ms_max": 50.0}
    met = {
        "batch_throughput": ratio >= targets["batch_throughput_min"],
        "single_record_p99": latency["p99_ms"] < targets["single_record_p99_ms_max"],
    }

    print(
        f"prediction: batches of {args.batch} x {args.repeats} (median), then {args.requests} single records "
        f"over {args.connections} connections from a second process; gunicorn 2 workers x 4 threads"
    )
    for name in ("batch_api", "batch_direct"):
        r = results[name]
        print(
            f"{name:<14}{r['median_seconds'] * 1000:>10.1f} ms/batch {r['records_per_second']:>14,.0f} records/s"
        )
    print(
        f"batch CPU: server {batch_server_cpu * 1000:.1f} ms per API batch (gunicorn, all processes), "
        f"direct {direct_cpu * 1000:.2f} ms"
    )
    print(
        f"single record under load: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms, "
        f"{latency['requests_per_second']:.0f} req/s, {latency['errors']} errors; "
        f"server CPU {latency['server_cpu_ms_per_request']:.2f} ms per request, "
        f"client CPU {latency['client_cpu_ms_per_request']:.2f} ms per request"
    )
    print(
        "load average (1 min) at start, after the batches, after the load phase: "
        + ", ".join(f"{x:.1f}" for x in load)
    )
    print(
        f"ratio api/direct = {ratio:.3f} (target >= 0.3: {'met' if met['batch_throughput'] else 'not met'}); "
        f"p99 target < 50 ms: {'met' if met['single_record_p99'] else 'not met'}; "
        f"{'no errors' if passed else 'ERRORS'}"
    )
    if args.json:
        report = {
            "name": "prediction_api",
            "config": {
                "batch": args.batch,
                "repeats": args.repeats,
                "requests": args.requests,
                "connections": args.connections,
                "max_seconds": args.max_seconds,
                "server": "gunicorn 2 workers x 4 threads, SQLite",
                "torch": torch.__version__,
            },
            "results": results,
            "ratios": {"batch_throughput": ratio},
            "targets": targets,
            "met": met,
            "pass": passed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
