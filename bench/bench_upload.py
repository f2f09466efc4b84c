"""Benchmark: a big site's CSV uploaded through the web page and through the API, against
``pandas.read_csv`` (memory) and the validator alone (time), then one epoch of training on it.

Usage: ``python bench/bench_upload.py [--rows 1000000] [--repeat 2] [--json PATH] [--no-train]``

Writes a valid four-vital CSV (bench_csv's writer) to a temporary directory, then, each in a
fresh process, interleaved ``--repeat`` times:

- ``read_csv`` and ``validate_csv``: bench_csv's child (peak RSS above the child's own
  baseline taken after its imports, ``ru_maxrss``; wall and CPU seconds).
- ``web`` and ``api``: a fresh gunicorn (one sync worker, ``fedhealth.settings`` with
  DEBUG off, SQLite, file storage) serving a migrated database with one hosted site. The
  client signs in (session cookie and CSRF token, as a browser does) or uses a token, warms
  the worker up with a 1,000-row upload (so imports are not counted), then the worker's peak
  RSS is reset (``/proc/<pid>/clear_refs``) and the big file is posted, streamed from a
  multipart body prepared on disk. Figures: the worker's peak RSS above its RSS before the
  request (``VmHWM - VmRSS``), the client's wall time for the whole request (sending 18 MiB
  over loopback included) and the worker's CPU seconds.

Targets (issue 15, item 5): peak memory at most 2x ``read_csv``'s, time at most 1.5x the
validator's alone. Then, unless ``--no-train``, one hosted training task on the uploaded
dataset (one local epoch, the default model and batch) in a fresh process: its peak RSS
above the process's baseline after imports, and its wall and CPU seconds (reported; the
issue asks that memory stay bounded). The script reports, it does not gate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_csv import WRITER, python, run_child  # noqa: E402

# "cpu" is the time target applied to CPU seconds, which a loaded shared machine disturbs less.
TARGETS = {"memory": 2.0, "time": 1.5, "cpu": 1.5}
PASSWORD = "bench-only-password-8c1f"

SETUP = """
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from clients.models import ApiToken, Membership, Site
site = Site.objects.create(name="Bench", slug="bench")
user = get_user_model().objects.create_user("member", password=sys.argv[1])
Membership.objects.create(user=user, site=site, role="member")
print(json.dumps({"token": ApiToken.issue(user=user)[1]}))
"""

# One hosted training task on the newest dataset: the experiment is started here, the
# task runs in TRAIN (a fresh process) so that its peak is its own.
START = """
import json
import django
django.setup()
from aggregation import services
from aggregation.models import Experiment, Participant
from aggregation.services.consent import record_acceptance
from clients.models import Dataset
from fedhealth.ml.schema import DEFAULT_SCHEMA
ds = Dataset.objects.filter(status="ready").latest("pk")
exp = Experiment.objects.create(name="big", schema=DEFAULT_SCHEMA.to_dict(), num_rounds=1, local_epochs=1,
                                min_sites=1)
record_acceptance(Participant.objects.create(experiment=exp, site=ds.site, dataset=ds))
services.start_experiment(exp.pk)
print(json.dumps({"update": exp.rounds.get().updates.get().pk, "rows": ds.row_count}))
"""

TRAIN = """
import json, resource, sys, time
import django
django.setup()
import torch
from aggregation.models import ClientUpdate
from aggregation.services.sitework import train_hosted_update
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
wall, cpu = time.perf_counter(), time.process_time()
outcome = train_hosted_update(int(sys.argv[1]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
update = ClientUpdate.objects.get(pk=int(sys.argv[1]))
print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "peak_mib": peak / 1024, "outcome": str(outcome),
                  "status": update.status, "samples": update.num_samples}))
"""


def environment(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DJANGO_"))}
    rate = "100000000/min"
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "fedhealth.settings",
            "SECRET_KEY": "bench-only-secret-key-0123456789abcdef-0123456789abcdef",
            "SECURE_SSL_REDIRECT": "0",  # plain HTTP on 127.0.0.1
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "DEBUG": "0",
            "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
            "MEDIA_ROOT": str(tmp / "media"),
            "STATIC_ROOT": str(tmp / "static"),
            "CELERY_BROKER_URL": "filesystem://",
            "CELERY_FILESYSTEM_BROKER_DIR": str(tmp / "broker"),
            "LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",
            "API_THROTTLE_RATE": rate,
            "API_UPLOAD_THROTTLE_RATE": rate,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def multipart(path: Path, csv: Path, fields: dict[str, str]) -> str:
    """Write a multipart/form-data body (fields, then the file) to ``path``; return its
    Content-Type. Built once on disk so that the client streams it, as a browser does."""
    boundary = uuid.uuid4().hex
    with open(path, "wb") as out:
        for key, value in fields.items():
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{csv.name}"\r\n'
            "Content-Type: text/csv\r\n\r\n".encode()
        )
        with open(csv, "rb") as fh:
            while chunk := fh.read(1 << 20):
                out.write(chunk)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and CPU seconds (user + system) of a process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    fields["cpu"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return fields


class Server:
    """A gunicorn with one sync worker on a free port (fresh per measurement)."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(tmp / "gunicorn.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "fedhealth.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--timeout", "600"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        for _ in range(600):
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            self.stop()
            raise SystemExit(f"gunicorn did not start:\n{(tmp / 'gunicorn.log').read_text()[-3000:]}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        [self.worker] = [int(c) for c in children]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def upload(mode: str, tmp: Path, env: dict[str, str], token: str, warm: Path, big: Path) -> dict[str, float]:
    """One upload of ``big`` through ``mode`` (web or api) into a fresh server."""
    server = Server(tmp, env)
    try:
        with requests.Session() as http:
            if mode == "web":
                http.get(f"{server.url}/login/", timeout=60)
                answer = http.post(f"{server.url}/login/", data={"username": "member", "password": PASSWORD},
                                   headers={"X-CSRFToken": http.cookies["csrftoken"], "Referer": f"{server.url}/login/"},
                                   timeout=60, allow_redirects=False)
                assert answer.status_code == 302, answer.status_code
                http.get(f"{server.url}/datasets/upload/", timeout=60)
                url, headers = f"{server.url}/datasets/upload/", {
                    "X-CSRFToken": http.cookies["csrftoken"], "Referer": f"{server.url}/datasets/upload/"}
                fields = {"name": "big", "policy": "reject"}
                expected = 302
            else:
                url, headers = f"{server.url}/api/v1/datasets/", {"Authorization": f"Token {token}"}
                fields = {"name": "big", "policy": "reject"}
                expected = 201

            def post(csv: Path) -> requests.Response:
                body = tmp / f"{mode}-{csv.stem}.body"
                content_type = multipart(body, csv, fields)
                with open(body, "rb") as fh:
                    return http.post(url, data=fh, headers={**headers, "Content-Type": content_type},
                                     timeout=600, allow_redirects=False)

            answer = post(warm)  # imports and first-use costs, not counted
            assert answer.status_code == expected, (answer.status_code, answer.text[:500])
            before = proc_status(server.worker)
            Path(f"/proc/{server.worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
            start = time.perf_counter()
            answer = post(big)
            seconds = time.perf_counter() - start
            after = proc_status(server.worker)
            assert answer.status_code == expected, (answer.status_code, answer.text[:500])
    finally:
        server.stop()
    return {"seconds": seconds, "cpu_seconds": after["cpu"] - before["cpu"],
            "peak_mib": (after["VmHWM"] - before["VmRSS"]) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="skip the training epoch")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    with tempfile.TemporaryDirectory(prefix="fedhealth-bench-upload-") as tmp_name:
        tmp = Path(tmp_name)
        csv, warm = tmp / "vitals.csv", tmp / "warm.csv"
        python(WRITER, str(csv), str(args.rows))
        python(WRITER, str(warm), "1000")
        size_mib = csv.stat().st_size / 2**20
        env = environment(tmp)
        (tmp / "static").mkdir()
        for command in (["migrate"], ["collectstatic"]):  # pages need the static manifest (DEBUG off)
            subprocess.run([sys.executable, "manage.py", *command, "--no-input", "-v", "0"], cwd=ROOT, env=env,
                           check=True)
        token = json.loads(subprocess.run([sys.executable, "-c", SETUP, PASSWORD], cwd=ROOT, env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])["token"]

        runs: dict[str, list[dict[str, float]]] = {"read_csv": [], "validate_csv": [], "web": [], "api": []}
        for _ in range(args.repeat):  # interleaved, so that machine drift hits every mode alike
            for mode in ("read_csv", "validate_csv"):
                runs[mode].append(run_child(mode, csv))
            for mode in ("web", "api"):
                runs[mode].append(upload(mode, tmp, env, token, warm, csv))

        training = None
        if not args.no_train:
            started = json.loads(subprocess.run([sys.executable, "-c", START], cwd=ROOT, env=env, check=True,
                                                capture_output=True, text=True).stdout.strip().splitlines()[-1])
            training = json.loads(subprocess.run([sys.executable, "-c", TRAIN, str(started["update"])], cwd=ROOT,
                                                 env=env, check=True, capture_output=True,
                                                 text=True).stdout.strip().splitlines()[-1])
            training["rows"] = started["rows"]

    results = {
        mode: {
            "best_seconds": min(r["seconds"] for r in rs),
            "cpu_seconds": min(r.get("cpu_seconds", float("nan")) for r in rs),
            "peak_mib": min(r["peak_mib"] for r in rs),
            "all_seconds": [round(r["seconds"], 3) for r in rs],
            "all_peak_mib": [round(r["peak_mib"], 1) for r in rs],
        }
        for mode, rs in runs.items()
    }
    base_mem, base_time = results["read_csv"]["peak_mib"], results["validate_csv"]["best_seconds"]
    base_cpu = results["validate_csv"]["cpu_seconds"]
    ratios = {}
    for mode in ("web", "api"):
        ratios[f"{mode}_memory"] = results[mode]["peak_mib"] / base_mem
        ratios[f"{mode}_time"] = results[mode]["best_seconds"] / base_time
        ratios[f"{mode}_cpu"] = results[mode]["cpu_seconds"] / base_cpu
    passed = all(ratios[k] <= TARGETS[k.split("_")[1]] for k in ratios)
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    print(f"upload: {args.rows} rows, {size_mib:.1f} MiB, best of {args.repeat}; "
          f"load average {' '.join(load_before)} before, {' '.join(load_after)} after")
    print(f"{'':<14}{'seconds':>10}{'cpu s':>10}{'peak MiB':>10}")
    for mode, r in results.items():
        print(f"{mode:<14}{r['best_seconds']:>10.3f}{r['cpu_seconds']:>10.3f}{r['peak_mib']:>10.1f}")
    for key, value in ratios.items():
        target = TARGETS[key.split("_")[1]]
        print(f"{key} ratio {value:.2f} (target <= {target}) {'ok' if value <= target else 'MISSED'}")
    if training:
        print(f"training one epoch on {training['rows']} rows ({training['samples']} trained): "
              f"{training['seconds']:.1f} s wall, {training['cpu_seconds']:.1f} s CPU, peak "
              f"{training['peak_mib']:.1f} MiB above baseline, update {training['status']}")

    if args.json:
        payload = {"name": "upload", "rows": args.rows, "file_mib": round(size_mib, 2), "results": results,
                   "ratios": ratios, "targets": {k: TARGETS[k.split("_")[1]] for k in ratios}, "pass": passed, "training": training,
                   "loadavg": {"before": load_before, "after": load_after}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
