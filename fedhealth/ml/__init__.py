"""The Django-free federated-learning core (see docs/architecture.md).

``from fedhealth.ml import load_model`` is the one name re-exported here: a predictor
from a downloaded model file alone (``fedhealth.ml.model_file``). It is imported lazily
so that importing a submodule does not pay for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from .model_file import load_model

        return load_model
    raise AttributeError(f"module 'fedhealth.ml' has no attribute {name!r}")
