"""Adam through torch's fused CPU kernel, without ``torch.optim``'s machinery.

``FusedAdam`` performs exactly the update of ``torch.optim.Adam(params, lr=...,
weight_decay=..., fused=True)`` (Kingma & Ba 2015, "Adam: A Method for Stochastic
Optimization"; weight decay coupled as L2, as torch's Adam): the same state tensors, the
same ``torch._fused_adam_`` call, so weights are bit-identical (a test compares them step
by step). Why not the class itself:

* constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (its
  ``add_param_group`` is wrapped to disable the compiler), which costs about as much CPU
  as importing torch (1.3-1.8 s here), paid by every ``simulate``, agent and worker
  process before its first local step;
* ``Optimizer.step``'s per-call wrapper (hooks, profiler record, grad-mode switches,
  re-collecting the state lists) costs more than the kernel for HealthNet's ~3,000
  parameters at batch 32.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["FusedAdam"]


class FusedAdam:
    """Adam over ``params`` (CPU float32 leaf tensors) with the learning rate settable per step.

    Args:
        params: The tensors to optimise; those without a gradient at ``step`` are skipped
            (their moments are left untouched), as ``torch.optim.Adam`` skips them.
        lr: Learning rate; change ``self.lr`` between steps for a schedule.
        weight_decay: L2 coefficient added to the gradient (Adam's coupled form).
        betas, eps: Adam's moment decay rates and denominator term (torch's defaults).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        self._exp_avgs = [
            torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params
        ]
        self._exp_avg_sqs = [
            torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params
        ]
        # torch keeps a fused optimiser's step count as a float32 scalar tensor per parameter.
        self._steps = [torch.zeros((), dtype=torch.float32) for _ in self.params]

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none=True``)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):  # the usual case: no per-step list building
            params, exp_avgs, exp_avg_sqs, steps = (
                self.params,
                self._exp_avgs,
                self._exp_avg_sqs,
                self._steps,
            )
        else:
            live = [i for i, g in enumerate(grads) if g is not None]
            if not live:
                return
            params = [self.params[i] for i in live]
            exp_avgs = [self._exp_avgs[i] for i in live]
            exp_avg_sqs = [self._exp_avg_sqs[i] for i in live]
            steps = [self._steps[i] for i in live]
            grads = [grads[i] for i in live]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            grads,  # type: ignore[arg-type]
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
