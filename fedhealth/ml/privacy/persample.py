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
    (Writing the rows' gradients straight into one flat matrix, to spare the optimizer its
    ``cat``, was measured slower: the strided writes cost more than the copy.)
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
    norm, an einsum and a sum per parameter. Opacus's noise
    draws, one ``torch.normal`` per parameter in order from the same generator, land in
    one flat buffer, so the gradients, the noise and the division are one vector each.
    """
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
    from opacus.optimizers.utils import params as group_params

    class FlatClipDPOptimizer(DPOptimizer):
        _flat: torch.Tensor | None = None  # this step's clipped sum, all parameters
        # Any: Opacus hangs grad_sample and summed_grad on the parameters at run time.
        _param_list: list[Any] | None = None
        _sizes: list[int] = []
        _shapes: list[torch.Size] = []
        _noise: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # buffer, its views

        @property
        def params(self) -> list[Any]:
            # Opacus rebuilds this list from the groups on every access (several times a
            # step); the groups never change here, so it is built once, with each
            # parameter's size and shape in the flat vectors.
            if self._param_list is None:
                self._param_list = group_params(self)
                self._sizes = [p.numel() for p in self._param_list]
                self._shapes = [p.shape for p in self._param_list]
            return self._param_list

        def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
            """Each parameter's part of ``flat``, shaped like it (one split, then a view
            of the matrices only: slicing each part out costs twice as much)."""
            return [
                part.view(shape) if len(shape) > 1 else part
                for part, shape in zip(flat.split_with_sizes(self._sizes), self._shapes, strict=True)
            ]

        def pre_step(self, closure=None) -> bool:
            """Opacus's ``pre_step`` without building the per-sample list first just to
            test it for emptiness (``clip_and_accumulate`` reads it anyway)."""
            if not self.params:
                return True
            self.clip_and_accumulate()
            if self._check_skip_next_step():
                self._is_last_step_skipped = True
                return False
            self.add_noise()
            self.scale_grad()
            if self.step_hook:
                self.step_hook(self)
            self._is_last_step_skipped = False
            return True

        def zero_grad(self, set_to_none: bool = False) -> None:
            """Opacus's ``zero_grad`` (per-sample and summed gradients always dropped);
            with ``set_to_none`` the gradients too, without torch's profiler record."""
            if not set_to_none:
                super().zero_grad(set_to_none)
                return
            skipped = self._is_last_step_skipped
            for p in self.params:
                p.grad_sample = None
                if not skipped:
                    p.summed_grad = None
                p.grad = None

        def _rows_matrix(self) -> torch.Tensor:
            """Every row's gradient over every parameter, ``(rows, parameters)``."""
            samples = [self._get_flat_grad_sample(p) for p in self.params]
            rows = len(samples[0])
            return torch.cat(
                [g.reshape(rows, n) for g, n in zip(samples, self._sizes, strict=True)], dim=1
            )

        def clip_and_accumulate(self) -> None:
            flat = self._rows_matrix()
            if len(flat):
                factor = (self.max_grad_norm / (flat.norm(2, dim=1) + 1e-6)).clamp(max=1.0)
                summed = factor @ flat
            else:  # an empty Poisson batch: nothing to sum, the noise still comes
                summed = flat.new_zeros(flat.shape[1])
            fresh = all(p.summed_grad is None for p in self.params)
            self._flat = summed if fresh else None
            for p, part in zip(self.params, self._views(summed), strict=True):
                _check_processed_flag(p.grad_sample)
                p.summed_grad = part if p.summed_grad is None else p.summed_grad + part
                _mark_as_processed(p.grad_sample)

        def add_noise(self) -> None:
            """Opacus's ``add_noise`` on the flat sum: each parameter's noise is the same
            ``torch.normal(0, sigma * C, size=p.shape, generator=...)`` draw, in the same
            order (so the same numbers for the same generator state), written into one flat
            buffer; then one addition, and each ``p.grad`` a view of the result."""
            flat = self._flat
            if flat is None or self.secure_mode:  # accumulated steps, or Opacus's secure noise
                super().add_noise()
                return
            std = self.noise_multiplier * self.max_grad_norm
            if std > 0:  # Opacus's _generate_noise returns zeros (no draw) at std 0
                if self._noise is None:  # one buffer for every step: its parts made once
                    buffer = torch.empty_like(flat)
                    self._noise = (buffer, self._views(buffer))
                noise, parts = self._noise
                for part in parts:
                    torch.normal(0, std, size=part.shape, generator=self.generator, out=part)
                flat = flat + noise
            else:  # a new tensor, as Opacus's sum with zeros is: .grad never aliases the sum
                flat = flat.clone()
            for p, grad in zip(self.params, self._views(flat), strict=True):
                _check_processed_flag(p.summed_grad)
                p.grad = grad
                _mark_as_processed(p.summed_grad)
            self._flat = flat

        def scale_grad(self) -> None:
            # Opacus's division, with the divisor computed once rather than per parameter,
            # on the flat gradient whose views the parameters' .grad are.
            if self.loss_reduction == "mean":
                divisor = self.expected_batch_size * self.accumulated_iterations
                if self._flat is not None and not self.secure_mode:
                    self._flat.div_(divisor)
                else:
                    torch._foreach_div_([p.grad for p in self.params], divisor)
            self._flat = None

    return FlatClipDPOptimizer(optimizer, **kwargs)
