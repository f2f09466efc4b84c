"""The binary health classifier: a small MLP over normalised tabular features.

``HealthNet`` maps ``(n, n_features)`` float32 inputs to ``(n,)`` *logits*; callers apply
the sigmoid (``training.predict_proba``) and train with ``BCEWithLogitsLoss``, which is
numerically stabler than a sigmoid followed by ``BCELoss``. With ``hidden=()`` the network
is plain logistic regression.

Parameter names are stable and independent of dropout: ``hidden.{i}.weight``,
``hidden.{i}.bias``, ``out.weight``, ``out.bias``, in that (``state_dict``) order.
Construction never touches torch's global RNG: parameters are initialised from a local
``torch.Generator``, so building a model is deterministic and thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedhealth.ml.config import ModelConfig  # here before it moved; still exported
from fedhealth.ml.types import Weights

__all__ = [
    "HealthNet",
    "ModelConfig",
    "build_model",
    "get_weights",
    "init_weights",
    "num_parameters",
    "set_weights",
    "weight_spec",
]


def _layer_shapes(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """``(prefix, in_features, out_features)`` per linear layer, in forward order."""
    widths = [cfg.n_features, *cfg.hidden]
    layers = [(f"hidden.{i}", widths[i], widths[i + 1]) for i in range(len(cfg.hidden))]
    layers.append(("out", widths[-1], 1))
    return layers


def _empty_linear(in_features: int, out_features: int) -> nn.Linear:
    # An nn.Linear with uninitialised parameters: its __init__ minus reset_parameters,
    # whose default init would draw from (and advance) torch's global RNG. Not
    # torch.nn.utils.skip_init: its meta-device round trip imports SymPy through
    # torch.fx (~0.5 s CPU at every process's first model). Exactly nn.Linear, so
    # Opacus recognises the layer.
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = in_features, out_features
    layer.weight = nn.Parameter(torch.empty(out_features, in_features))
    layer.bias = nn.Parameter(torch.empty(out_features))
    return layer


class HealthNet(nn.Module):
    """MLP ``n_features -> hidden... -> 1`` with ReLU and dropout; returns logits of shape (n,).

    ``generator``: when set, training-mode dropout masks are drawn from it instead of the
    global RNG, which keeps ``train_local`` deterministic without touching global state.
    """

    def __init__(self, cfg: ModelConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        *hidden, (_, last_width, _) = _layer_shapes(cfg)
        self.hidden = nn.ModuleList(_empty_linear(i, o) for _, i, o in hidden)
        self.out = _empty_linear(last_width, 1)
        self.generator: torch.Generator | None = None
        self.reset_parameters(torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """He-uniform weights for the ReLU layers, Glorot-uniform for the output; zero biases."""
        for layer in self.hidden:
            assert isinstance(layer, nn.Linear)
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.out.weight, generator=generator)
        nn.init.zeros_(self.out.bias)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.dropout
        if not self.training or p == 0.0:
            return x
        if self.generator is None:
            return F.dropout(x, p, training=True)
        # Same arithmetic as F.dropout on CPU (Bernoulli keep-mask scaled by 1/(1-p)),
        # but with an explicit generator.
        mask = torch.empty_like(x).bernoulli_(1.0 - p, generator=self.generator)
        return x * mask.div_(1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (n, n_features) float32 -> logits (n,) float32."""
        for layer in self.hidden:
            x = self._dropout(F.relu(layer(x)))
        return self.out(x).squeeze(-1)


def build_model(cfg: ModelConfig, *, seed: int = 0) -> HealthNet:
    """A fresh ``HealthNet`` initialised deterministically from ``seed``."""
    return HealthNet(cfg, seed=seed)


def init_weights(cfg: ModelConfig, seed: int) -> Weights:
    """Initial global weights for an experiment; same ``(cfg, seed)`` -> identical arrays."""
    return get_weights(build_model(cfg, seed=seed))


def get_weights(model: nn.Module) -> Weights:
    """Float32 NumPy copies of ``model.state_dict()``, in its order."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy ``weights`` into ``model`` in place.

    Raises:
        ValueError: naming the parameter, on a missing or unexpected key, a shape mismatch
            or a value that cannot be converted to float32.
    """
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"weights are missing parameter(s): {', '.join(missing)}")
    extra = [k for k in weights if k not in state]
    if extra:
        raise ValueError(f"weights have unexpected parameter(s): {', '.join(extra)}")
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        try:
            array = np.array(weights[name], dtype=np.float32)  # a copy: writable, owned
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameter {name!r} is not a float array: {exc}") from exc
        if array.shape != tuple(tensor.shape):
            raise ValueError(
                f"parameter {name!r} has shape {array.shape}, expected {tuple(tensor.shape)}"
            )
        arrays[name] = array
    # Validate everything first so a bad update never leaves the model half-written.
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(arrays[name]))


def weight_spec(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Expected parameter name -> shape, in ``state_dict`` order (for checking updates)."""
    spec: dict[str, tuple[int, ...]] = {}
    for prefix, in_features, out_features in _layer_shapes(cfg):
        spec[f"{prefix}.weight"] = (out_features, in_features)
        spec[f"{prefix}.bias"] = (out_features,)
    return spec


def num_parameters(cfg: ModelConfig) -> int:
    """Total number of scalar parameters of ``HealthNet(cfg)``."""
    return sum(math.prod(shape) for shape in weight_spec(cfg).values())
