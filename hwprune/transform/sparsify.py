"""The plan's N:M sparsity applied: each permuted group's channels reordered (before pruning, an
exact symmetry, like the unconstrained reorder), then each named layer's weights masked.

A permutation belongs to a channel group: it moves the producers' output channels and every
reader's input channels together (``transform.permute``), so the masked layers see their input
channels in the order the search found keeps most magnitude. A group reordered for unconstrained
pruning is never also permuted for N:M (the search does not ask). Masks are taken by magnitude on
the final weights (after pruning and permutation), so re-applying a plan gives the same zeros;
recovery re-applies them after every step (:func:`sparsify`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.depgraph.index_maps import frozen_index_mapping
from hwprune.plan import NMLayer, WidthDecision
from hwprune.sparsity.masks import is_nm, nm_mask
from hwprune.transform.passes import Surgery, TransformError
from hwprune.transform.permute import permutable, permute_group
from hwprune.transform.reorder import ExactPermutation


class PermuteForSparsity(ExactPermutation):
    """Reorder each group the plan permutes; renumber its width decision to match."""

    name = "permute-for-sparsity"

    def __init__(self, permutations: Mapping[str, Sequence[int]]):
        self.permutations = permutations

    def requires(self, surgery: Surgery) -> None:
        for gid, order in self.permutations.items():
            reason = permutable(surgery.analysis, gid)
            if reason is not None:
                raise PlanError(f"sparsity: group {gid} cannot be permuted: {reason}")
            if sorted(order) != list(range(surgery.analysis.group(gid).channels)):
                raise PlanError(f"sparsity: the order of group {gid} is not a permutation of its channels")
            if gid in surgery.width and surgery.width[gid].readers is not None:
                raise PlanError(f"sparsity: group {gid} is reordered for unconstrained pruning; not also for N:M")
        super().requires(surgery)

    def call(self, surgery: Surgery) -> bool:
        with frozen_index_mapping(surgery.analysis.capture.dependency_graph):  # permuting changes no count
            for gid, order in self.permutations.items():
                permute_group(surgery.analysis, gid, order)
                if gid in surgery.width:
                    decision = surgery.width[gid]
                    position = {old: new for new, old in enumerate(order)}
                    surgery.width[gid] = WidthDecision(decision.keep, decision.of,
                                                       sorted(position[c] for c in decision.indices))
        return bool(self.permutations)



def check_layers(model: nn.Module, layers: Mapping[str, NMLayer]) -> None:
    """PlanError unless every N:M entry names a layer of ``model`` with weights and says N and M:
    run before any pass, so a plan that cannot be sparsified is refused whole."""
    for name, spec in layers.items():
        _pattern(name, spec)
        _weight(model, name)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    try:
        weight = model.get_submodule(name).weight
    except AttributeError:
        weight = None
    if weight is None:
        raise PlanError(f"sparsity: the model has no layer {name} with weights")
    return weight


def _pattern(name: str, spec: NMLayer) -> tuple[int, int]:
    n, m = spec.n, spec.m
    if not 0 < n < m:
        raise PlanError(f"sparsity: layer {name}: {n}:{m} needs 0 < N < M")
    return n, m


@torch.no_grad()
def sparsify(model: nn.Module, layers: Mapping[str, NMLayer]) -> None:
    """Mask each named layer's weight N:M along its input channels (by magnitude, or magnitude x the
    plan's per-input-channel activation scale), in place; checked after."""
    for name, spec in layers.items():
        weight = _weight(model, name)
        n, m = _pattern(name, spec)
        if weight.dim() < 2 or weight.shape[1] % m:
            raise PlanError(f"sparsity: {name} has {weight.shape[1] if weight.dim() > 1 else 0} input channels "
                            f"per group, not a multiple of {m}")
        scale = spec.scale
        if scale is not None and len(scale) != weight.shape[1]:
            raise PlanError(f"sparsity: {name} reads {weight.shape[1]} input channels; its activation scale has "
                            f"{len(scale)}")
        scale = None if scale is None else torch.tensor(scale, dtype=torch.float32)
        weight.data = weight * nm_mask(weight, n, m, scale).to(weight.dtype)  # rebound: a shared original stays
        if not is_nm(weight, n, m):
            raise TransformError(f"{name}: weights are not {n}:{m} after masking")
