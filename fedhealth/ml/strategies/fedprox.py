"""FedProx: FedAvg aggregation plus a proximal term in each site's local objective.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith (2020), "Federated Optimization in Heterogeneous
Networks", MLSys. https://arxiv.org/abs/1812.06127

Sites minimise ``local_loss(w) + mu / 2 * ||w - w_global||^2``, which keeps heterogeneous
hospitals (different case mix, different amounts of local work) from drifting apart. The server
side is unchanged from FedAvg; only ``configure_fit`` differs, sending ``proximal_mu`` to the
sites' training loop.
"""

from __future__ import annotations

from typing import ClassVar

from fedhealth.ml.strategies.base import check_param
from fedhealth.ml.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg whose round config asks the sites for a proximal term.

    Args:
        proximal_mu: weight ``mu >= 0`` of the proximal term (0 is plain FedAvg). The paper
            tunes it in {0.001, 0.01, 0.1, 1}; 0.1 is a moderate default.
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.1) -> None:
        self.proximal_mu = check_param("proximal_mu", proximal_mu, low=0.0)

    def configure_fit(self, round_number: int) -> dict[str, float]:
        """``{"proximal_mu": mu}`` for every round."""
        return {"proximal_mu": self.proximal_mu}

    def params(self) -> dict[str, float]:
        """``{"proximal_mu": mu}``."""
        return {"proximal_mu": self.proximal_mu}
