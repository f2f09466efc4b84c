"""Per-row gradients of an all-linear model from one backward pass, for Opacus's optimizer.

DP-SGD needs each sampled row's gradient before clipping. Opacus's ``GradSampleModule``
gets them from backward hooks on every layer (and its ``functorch``/``ew`` modes from
vmap or expanded weights); on HealthNet's small layers that machinery, not the
arithmetic, is most of a DP step. ``RowGradients`` computes the same tensors with the
formula Opacus's own linear grad sampler uses (``opacus/grad_sample/linear.py``): for a
linear layer ``z = a W^T + b``, row ``i``'s gradient is ``dL_i/dz_i (outer) a_i`` for
``W`` and ``dL_i/dz_i`` for ``b``. The backprops ``dL/dz`` come from one
``torch.autograd.grad`` of the summed loss with respect to every layer's output (rows are
independent: no batch norm), read from forward hooks. The result goes into each
parameter's ``grad_sample``, where Opacus's ``DPOptimizer`` clips, noises and scales it
as before; ``FlatClipDPOptimizer`` only does that clipping in one flat matrix product.

Opacus is imported lazily (see ``accounting.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

__all__ = ["RowGradients", "flat_clip_optimizer"]


class RowGradients:
    """Wraps a model whose every parameter belongs to an ``nn.Linear`` used once per
    forward pass; ``backward(loss)`` leaves each row's gradient in ``p.grad_sample``.

    Call it like the model (``rows(x)``), compute the *summed* loss over the rows, then
    ``rows.backward(loss)``. ``p.grad`` is not touched. ``remove_hooks()`` when done.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        owned = {id(p) for layer in self.layers for p in layer.parameters()}
        stray = [name for name, p in model.named_parameters() if id(p) not in owned]
        if stray:
            raise ValueError(f"RowGradients handles linear layers only; also found {stray}")
        self._taps: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._handles = [layer.register_forward_hook(self._tap) for layer in self.layers]

    def _tap(
        self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        assert isinstance(layer, nn.Linear)
        self._taps.append((layer, inputs[0], output))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._taps.clear()
        out = self.model(x)
        if len({id(layer) for layer, _, _ in self._taps}) != len(self._taps):
            raise ValueError(
                "a linear layer ran twice in one forward pass: rows' gradients would mix"
            )
        return out

    def backward(self, loss: torch.Tensor) -> None:
        """Each row's gradient of ``loss`` (a sum over rows) into ``p.grad_sample``."""
        taps, self._taps = self._taps, []
        backprops = torch.autograd.grad(loss, [out for _, _, out in taps])
        with torch.no_grad():  # the per-row gradients are data, not part of any graph
            self._store(taps, backprops)

    @staticmethod
    def _store(taps, backprops) -> None:
        for (layer, activations, _), backprop in zip(taps, backprops, strict=True):
            if backprop.dim() == 2:  # (rows, out) x (rows, in): a batched outer product
                layer.weight.grad_sample = backprop.unsqueeze(2) * activations.unsqueeze(1)
                bias = backprop
            else:  # extra middle dimensions: summed, as Opacus's linear sampler does
                layer.weight.grad_sample = torch.einsum("n...i,n...j->nij", backprop, activations)
                bias = torch.einsum("n...k->nk", backprop)
            if layer.bias is not None:
                layer.bias.grad_sample = bias

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def flat_clip_optimizer(optimizer: torch.optim.Optimizer, **kwargs: Any) -> DPOptimizer:
    """Opacus's ``DPOptimizer`` (same arguments) whose clipping runs on one flat matrix.

    The arithmetic is Opacus's: each row's norm over all parameters, the factor
    ``min(1, C / (norm + 1e-6))``, the factor-weighted sum of the rows' gradients into
    ``p.summed_grad``; then Opacus's own noise and checks, and its scaling by the expected
    batch size in one call. One ``cat``, one norm and one matrix-vector product replace a
    norm, an einsum and a sum per parameter.
    """
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class FlatClipDPOptimizer(DPOptimizer):
        def clip_and_accumulate(self) -> None:
            samples = [self._get_flat_grad_sample(p) for p in self.params]
            rows = len(samples[0])
            flat = torch.cat(
                [g.reshape(rows, p.numel()) for g, p in zip(samples, self.params, strict=True)],
                dim=1,
            )
            if rows:
                factor = (self.max_grad_norm / (flat.norm(2, dim=1) + 1e-6)).clamp(max=1.0)
                summed = factor @ flat
            else:  # an empty Poisson batch: nothing to sum, the noise still comes
                summed = flat.new_zeros(flat.shape[1])
            offset = 0
            for p in self.params:
                _check_processed_flag(p.grad_sample)
                part = summed[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                p.summed_grad = part if p.summed_grad is None else p.summed_grad + part
                _mark_as_processed(p.grad_sample)

        def scale_grad(self) -> None:
            # Opacus's division, with the divisor computed once rather than per parameter.
            if self.loss_reduction == "mean":
                divisor = self.expected_batch_size * self.accumulated_iterations
                torch._foreach_div_([p.grad for p in self.params], divisor)

    return FlatClipDPOptimizer(optimizer, **kwargs)
