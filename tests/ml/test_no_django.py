"""The core must run where Django is not installed: a site agent, a notebook, a benchmark."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    "fedhealth.ml." + ".".join(p.relative_to(ROOT / "fedhealth" / "ml").with_suffix("").parts)
    for p in (ROOT / "fedhealth" / "ml").rglob("*.py")
    if p.name != "__init__.py" and "tests" not in p.parts
)


def test_importing_the_core_loads_neither_django_nor_celery():
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'celery', 'rest_framework', 'kombu'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(MODULES) >= 10
