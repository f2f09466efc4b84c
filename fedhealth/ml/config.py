"""The configurations of the core: the model's architecture (``ModelConfig``), a site's
local training (``TrainConfig``) and a whole federated run (``FederatedConfig``).

Plain dataclasses that import neither torch nor anything that does (a test checks), so
that what only describes a run (the experiment model's defaults, forms, serializers, web
processes, ``manage.py check``) does not pay for torch's import (~2.5 s CPU). The modules
that use them re-export them under their old names (``fedhealth.ml.model.ModelConfig``,
``fedhealth.ml.training.TrainConfig``, ``fedhealth.ml.federation.FederatedConfig``).
The privacy settings they hold stay in ``fedhealth.ml.privacy`` (its accounting and
site-level modules import no torch either).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .privacy.accounting import PrivacySettings
from .privacy.sitelevel import SiteDPSettings

__all__ = [
    "DEFAULT_PERSONALIZE",
    "LR_SCHEDULES",
    "PERSONALIZE_MODES",
    "FederatedConfig",
    "ModelConfig",
    "PrivacySettings",
    "SiteDPSettings",
    "TrainConfig",
]

LR_SCHEDULES = ("cosine", "step", "constant")
#: Personalisation modes (``fedhealth.ml.personalize``).
PERSONALIZE_MODES = ("finetune", "ditto", "fedper")
#: The default mode, chosen by measurement on the cases in docs/quality.md (FedPer:
#: mean accuracy 0.981 / 0.759 / 0.893 against finetune's 0.962 / 0.767 / 0.890 and
#: Ditto's 0.973 / 0.747 / 0.892 on breast cancer / diabetes / generated sites).
DEFAULT_PERSONALIZE = "fedper"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of ``HealthNet``.

    Attributes:
        n_features: Number of input columns (after normalisation), >= 1.
        hidden: Widths of the hidden layers; ``()`` gives logistic regression.
        dropout: Drop probability after each hidden ReLU, in ``[0, 1)``. Default 0: in
            federated runs each site's independent dropout noise is averaged into the
            global model and slowed convergence measurably (IID, 4 sites x 2,000 rows,
            20 rounds: 0.2 left federated accuracy 1-2 points under centralized, 0.0
            within 0.5), while weight decay already regularises small sites.
    """

    n_features: int
    hidden: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, int):
            raise ValueError(f"n_features must be an int, got {self.n_features!r}")
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if not isinstance(self.hidden, tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden
        ):
            raise ValueError(f"hidden must be a tuple of ints >= 1, got {self.hidden!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise ValueError(f"dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"n_features": int, "hidden": [int, ...], "dropout": float}``."""
        return {
            "n_features": self.n_features,
            "hidden": list(self.hidden),
            "dropout": float(self.dropout),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; raises ``ValueError`` on unknown/missing keys or bad values."""
        if not isinstance(data, Mapping):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"n_features", "hidden", "dropout"}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        if "n_features" not in data:
            raise ValueError("model config is missing 'n_features'")
        kwargs: dict[str, Any] = {"n_features": data["n_features"]}
        if "hidden" in data:
            hidden = data["hidden"]
            if not isinstance(hidden, list | tuple):
                raise ValueError(f"hidden must be a list of ints, got {hidden!r}")
            kwargs["hidden"] = tuple(hidden)
        if "dropout" in data:
            kwargs["dropout"] = data["dropout"]
        return cls(**kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one site's local training in one round.

    Defaults target sites with hundreds to thousands of normalised rows and the default
    ``ModelConfig`` (64-32-16 MLP, no dropout):

    * ``epochs=2``: few local epochs limit client drift on non-IID sites (FedAvg uses
      1-5); more rounds beat more local epochs.
    * ``batch_size=32``: ~30-300 Adam steps per epoch at these site sizes; small batches
      regularise.
    * ``lr=3e-3``: a bit above Adam's 1e-3 because each round runs few steps and restarts
      the optimiser; the schedule anneals it within the round.
    * ``weight_decay=1e-4``: light L2 (Adam's coupled form) against overfitting small sites.
    * ``lr_schedule="cosine"``: per local step from ``lr`` down to 10% of ``lr``;
      ``"step"`` halves ``lr`` after each third of the steps; ``"constant"`` keeps it.
    * ``proximal_mu=0.0``: plain FedAvg; > 0 adds FedProx's ``mu/2 * ||w - w_global||^2``
      (0.001-0.1 typical for heterogeneous sites).
    * ``seed``: vary it per round and site (e.g. ``hash((experiment, round, site))``) so
      rounds do not replay the same shuffles.
    * ``positive``: not a hyper-parameter but how ``TrainResult.metrics`` are read: the
      label value of the schema's positive class (sensitivity, precision and F1 are its).
    """

    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    proximal_mu: float = 0.0
    lr_schedule: str = "cosine"
    positive: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        for name in ("lr", "weight_decay", "proximal_mu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed accepts
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}")
        if isinstance(self.positive, bool) or self.positive not in (0, 1):
            raise ValueError(f"positive must be the label value 0 or 1, got {self.positive!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; missing keys take defaults; raises ``ValueError`` otherwise."""
        if not isinstance(data, Mapping):
            raise ValueError(f"train config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class FederatedConfig:
    """Everything that defines an experiment's training, JSON-serialisable via ``to_dict``."""

    rounds: int = 20
    strategy: str = "fedavg"
    strategy_params: dict[str, float] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(n_features=4))
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    # Record-level DP at each site (DP-SGD); None: off. ``rounds`` must match.
    privacy: PrivacySettings | None = None
    # Site-level DP (DP-FedAvg at the server, ``privacy.sitelevel``); None: off. Its
    # ``rounds`` must match and its ``sites`` equal the number of sites. Not with ``privacy``.
    site_privacy: SiteDPSettings | None = None
    # Share of each site's training rows held out to select the best round (0: off,
    # the last round is the model) and, with ``early_stopping`` (rounds without
    # improvement), to stop the experiment early.
    validation_fraction: float = 0.0
    early_stopping: int | None = None
    # One model per site built from the federation (``personalize.PERSONALIZE_MODES``).
    personalize: str | None = None
    ditto_lambda: float = 0.1
    finetune_lr: float = 3e-4  # a tenth of the training lr: measured best of 3e-3, 1e-3, 3e-4

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.validation_fraction}")
        if self.early_stopping is not None:
            if self.early_stopping < 1:
                raise ValueError(f"early stopping must be at least 1 round, got {self.early_stopping}")
            if self.validation_fraction == 0.0:
                raise ValueError("early stopping needs a validation fraction above 0")
        if self.personalize is not None and self.personalize not in PERSONALIZE_MODES:
            raise ValueError(f"personalize must be one of {PERSONALIZE_MODES}, got {self.personalize!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "strategy": self.strategy,
            "strategy_params": dict(self.strategy_params),
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "seed": self.seed,
            "privacy": None if self.privacy is None else self.privacy.to_dict(),
            "site_privacy": None if self.site_privacy is None else self.site_privacy.to_dict(),
            "validation_fraction": self.validation_fraction,
            "early_stopping": self.early_stopping,
            "personalize": self.personalize,
        }
