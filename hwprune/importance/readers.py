"""How much each group channel contributes to each dense layer that reads it, on real inputs.

|weight column| (L1) x |input channel| (L2 over a batch and the feature map): the Wanda
criterion. A weight norm alone ignores how large a channel's activations are, which its
producers' weights and BatchNorm set; this reads both where they meet. Unconstrained pruning
ranks each reader's channels by it, and the ``activation`` importance sums it over a group's
readers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.graph.segments import Segment


def reader_scores(analysis: Analysis, segments: Sequence[Segment], batches: Sequence[torch.Tensor]
                  ) -> dict[str, dict[str, np.ndarray]]:
    """Per segment, per reader: each group channel's contribution to the reader's output on ``batches``.
    The model runs one batch at a time (a model exported at a fixed batch takes no other) and the input
    norms are those over all batches together."""
    layers = {r.layer for s in segments for r in s.readers}
    per_batch = [_input_norms(analysis.model, layers, batch) for batch in batches]
    norms = {name: torch.stack([n[name] for n in per_batch]).square().sum(dim=0).sqrt() for name in per_batch[0]}
    scores = {}
    for segment in segments:
        per_reader = {}
        for reader in segment.readers:
            columns = analysis.model.get_submodule(reader.layer).weight.detach().abs()
            contribution = columns.transpose(0, 1).reshape(columns.shape[1], -1).sum(dim=1) * norms[reader.layer]
            channel_scores = np.zeros(segment.channels)
            for channel, indices in reader.inputs.items():
                channel_scores[channel] = float(contribution[indices].sum())
            per_reader[reader.layer] = channel_scores
        scores[segment.group] = per_reader
    return scores


def _input_norms(model: nn.Module, layers: set[str], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer, the L2 norm of each input channel (conv) or feature (linear) over ``batch``."""
    norms: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def record(module: nn.Module, inputs: tuple, _output: object) -> None:
            x = inputs[0].detach()
            dim = x.dim() - 1 if isinstance(module, nn.Linear) else 1
            norms[name] = x.transpose(0, dim).reshape(x.shape[dim], -1).norm(dim=1)
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook_for(name)) for name in layers]
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    return norms
