"""What `manage.py simulate` imports before it has work to do (start-up, issue 15).

`simulate --help` must answer without scikit-learn, SciPy, pandas, Plotly or DRF: each
costs start-up time and none is needed to print the options. Checked in a fresh
interpreter, since the test process itself has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedhealth.management.commands import simulate
from fedhealth.ml.validation import Policy

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "scipy", "pandas", "plotly", "rest_framework", "drf_spectacular")

PROBE = """
import io, json, sys, contextlib
sys.argv = ["manage.py", *ARGS]
import manage
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        manage.main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imports(*args: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.replace("ARGS", repr(list(args)))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_simulate_help_imports_nothing_heavy():
    result = _imports("simulate", "--help")

    assert result["code"] == 0
    assert "--generate" in result["out"] and "drop-invalid-rows" in result["out"]
    assert not set(HEAVY) & set(result["modules"]), sorted(set(HEAVY) & set(result["modules"]))


def test_simulate_bad_option_answers_without_heavy_imports():
    result = _imports("simulate", "--generate", "2", "--threads", "0")

    assert result["code"] == 1 and "--threads must be at least 1" in result["out"]
    assert not set(HEAVY) & set(result["modules"]), sorted(set(HEAVY) & set(result["modules"]))


def test_policy_choices_are_the_validators():
    assert tuple(p.value for p in Policy) == simulate.POLICY_CHOICES
    assert simulate.POLICY_CHOICES[0] == Policy.REJECT.value


TRAIN_PROBE = """
import json, sys
import numpy as np
from fedhealth.ml.model import ModelConfig, init_weights
from fedhealth.ml.training import TrainConfig, evaluate, train_local
cfg = ModelConfig(n_features=4)
X = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")
y = (X[:, 0] > 0).astype("float32")
result = train_local(cfg, init_weights(cfg, 0), X, y, TrainConfig(epochs=1))
evaluate(cfg, result.weights, X, y)
from fedhealth.ml.metrics import calibration_points, roc_points  # a site's evaluation curves
roc_points(y, np.linspace(0.0, 1.0, 200)), calibration_points(y, np.linspace(0.0, 1.0, 200))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} | {m for m in sys.modules if m.startswith("torch._")})))
"""


def test_local_training_imports_neither_the_compiler_nor_sympy():
    # torch.optim's constructor imports torch._dynamo and skip_init's meta-device round
    # trip imports SymPy: ~2 s CPU together at each process's first round (fedhealth/ml/adam.py).
    # The evaluation curves import no scikit-learn (~2.4 s in a worker's first evaluation).
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = set(json.loads(proc.stdout.strip().splitlines()[-1]))

    assert "torch" in modules
    assert not {"torch._dynamo", "sympy", "sklearn", "scipy", "pandas"} & modules


WEB_PROBE = """
import json, sys
from fedhealth.wsgi import application
from django.urls import get_resolver
get_resolver().url_patterns  # every view, serializer and service a request can reach
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_manage_check_and_web_processes_import_no_torch():
    # The experiment model's defaults come from fedhealth.ml.config (torch-free); the
    # services, views and API import the training, site-work and model-building code
    # (torch, ~2.5 s CPU) where they use it.
    env = {"DEBUG": "1", "DJANGO_SETTINGS_MODULE": "fedhealth.settings"}
    check = _imports("check", env=env)
    web = subprocess.run(
        [sys.executable, "-c", WEB_PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )

    assert check["code"] == 0 and "no issues" in check["out"], check["out"]
    assert "torch" not in check["modules"]
    modules = set(json.loads(web.stdout.strip().splitlines()[-1]))
    assert "django" in modules and "torch" not in modules


def test_the_configurations_keep_their_old_import_paths():
    from fedhealth.ml import config, federation, model, personalize, training

    assert model.ModelConfig is config.ModelConfig and training.TrainConfig is config.TrainConfig
    assert federation.FederatedConfig is config.FederatedConfig
    assert personalize.PERSONALIZE_MODES is config.PERSONALIZE_MODES
    assert personalize.DEFAULT_PERSONALIZE == config.DEFAULT_PERSONALIZE

