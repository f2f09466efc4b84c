"""The agent runs at a hospital with only the core: importing it loads no Django."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_agent_imports_neither_django_nor_celery():
    code = (
        "import sys, fedhealth.agent.cli, fedhealth.agent.loop, fedhealth.agent.client, fedhealth.agent.data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'celery', 'rest_framework', 'kombu'})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_dash_m_runs_the_cli():
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "fedhealth.agent", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert (
        result.returncode == 0
        and "--server" in result.stdout
        and "--poll-interval" in result.stdout
    )


def test_an_invalid_csv_stops_the_agent_before_any_request(tmp_path):
    bad = tmp_path / "local.csv"
    bad.write_text("heart_rate;systolic_bp\n1;2\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "FEDHEALTH_AGENT_TOKEN": "fhs_x_y"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedhealth.agent",
            "--server",
            "http://127.0.0.1:9",
            "--data",
            str(bad),
            "--once",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2 and "wrong_delimiter" in result.stderr
