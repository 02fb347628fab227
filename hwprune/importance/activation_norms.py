"""Activation-aware N:M: each input channel's activation norm at a layer, the weight an N:M mask
multiplies into the weights' magnitudes (a weight that meets large inputs matters more; the
criterion of Wanda-style pruning, applied within each run of M)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


@torch.no_grad()
def input_norms(model: nn.Module, layers: Sequence[str], batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per named layer, the L2 norm of each input channel over ``batches`` (conv: over batch and
    positions; linear: over every leading dimension)."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float()
            squares = x.pow(2).transpose(0, 1).reshape(x.shape[1], -1).sum(1) if x.dim() == 4 else (
                x.pow(2).reshape(-1, x.shape[-1]).sum(0))
            sums[name] = sums.get(name, 0) + squares
        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in layers]
    try:
        model.eval()
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.sqrt() for name, total in sums.items()}
