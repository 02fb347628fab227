"""The plan's sparsity section: the layers the joint search gave N:M, and for each channel group
that feeds them the permutation that lets their masks keep most weight magnitude.

A permutation belongs to a group (its producers and every reader move together), so it is searched
on the group's kept channels over all its N:M readers at once: their weights (unpruned, restricted
to the kept output rows and input columns, in the order pruning leaves them) stacked row-wise, the
magnitude an N:M mask keeps maximised by ``sparsity.permutation``. Only readers that read the group
as their whole input take part (a concatenation or a flatten mixes groups in one run of M); a
group reordered for unconstrained pruning, or one the transform cannot permute exactly, is left in
place, its readers still masked. The identity's and the permutation's retained magnitude are kept
beside the order, for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from hwprune.cost.layers import Layer
from hwprune.cost.structural import StructuralOption
from hwprune.graph.analyze import Analysis
from hwprune.plan import NMLayer, PermutationGain, Sparsity, WidthDecision
from hwprune.sparsity.masks import columns, retained
from hwprune.sparsity.permutation import search_permutation

# Per group and round, a cut for a runaway search only: the search's own work budget (about half a second of
# one core) ends it first, so the order found is the same on any machine; at 0.5 s a busy CI runner cut it
# early and a golden plan's permutation differed.
PERMUTATION_SECONDS = 10.0


def nm_entries(chosen: Iterable[StructuralOption]) -> dict[str, NMLayer]:
    """The plan's N:M entry of each chosen layer, by magnitude (``Permutations.section`` adds the
    activation scale where it has one)."""
    return {o.name: NMLayer(o.choice.n, o.choice.m) for o in chosen}


@dataclass
class Permutations:
    """Orders found so far, keyed by (group, kept channels, readers): refinement rounds and frontier
    points that keep a group the same way reuse them."""

    permutable: Callable[[str], bool]  # the transform's exactness check, passed in (search never imports it)
    # Activation-aware masks: per layer, its input channels' activation norms on the unpruned model
    # (``importance.activation_norms``); empty: masks by magnitude alone.
    scales: dict[str, np.ndarray] = field(default_factory=dict)
    found: dict[tuple, tuple[list[int], PermutationGain]] = field(default_factory=dict)

    def section(self, analysis: Analysis, layers: Iterable[Layer], chosen: Iterable[StructuralOption],
                width: dict[str, WidthDecision]) -> Sparsity:
        """The plan's ``sparsity`` section for the N:M options ``chosen``."""
        chosen = sorted(chosen, key=lambda o: o.key)
        if not chosen:
            return Sparsity()
        by_name = {layer.name: layer for layer in layers}
        entries = nm_entries(chosen)
        readers: dict[str, list[Layer]] = {}
        for name in entries:
            layer = by_name[name]
            if len(layer.inputs) == 1 and layer.inputs[0].positions == layer.inputs[0].size == layer.signature.c_in:
                readers.setdefault(layer.inputs[0].group, []).append(layer)
        permutations, magnitude = {}, {}
        for gid, group_readers in sorted(readers.items()):
            decision = width.get(gid)
            if decision is not None and decision.readers is not None or not self.permutable(gid):
                continue
            key = (gid, tuple(decision.indices) if decision else None, tuple(r.name for r in group_readers))
            if key not in self.found:
                self.found[key] = _search(analysis, gid, group_readers, width, entries[group_readers[0].name],
                                          self.scales)
            order, stats = self.found[key]
            if stats.permuted > stats.identity:
                permutations[gid], magnitude[gid] = tuple(order), stats
        for name, entry in entries.items():
            scale = self._final_scale(analysis, by_name[name], width, permutations)
            if scale is not None:
                entries[name] = replace(entry, criterion="activation", scale=tuple(float(v) for v in scale))
        return Sparsity(f"{chosen[0].choice.n}:{chosen[0].choice.m}", entries, permutations, magnitude)

    def _final_scale(self, analysis: Analysis, layer: Layer, width: dict[str, WidthDecision],
                     permutations: dict[str, tuple[int, ...]]) -> np.ndarray | None:
        """The layer's activation norms in the order its input channels will have in the pruned,
        permuted model; None (magnitude alone) without norms, or where that order is not one group's."""
        norms = self.scales.get(layer.name)
        if norms is None:
            return None
        if not layer.inputs:  # the model input: never pruned or permuted
            return norms
        read = layer.inputs[0]
        if len(layer.inputs) > 1 or not read.positions == read.size == layer.signature.c_in:
            return None
        channels = analysis.group(read.group).channels
        kept = sorted(width[read.group].indices) if read.group in width else list(range(channels))
        order = permutations.get(read.group)
        if order is not None:
            kept = list(order[:len(kept)])
        return norms[kept]


def _search(analysis: Analysis, gid: str, readers: list[Layer], width: dict[str, WidthDecision], spec: NMLayer,
            scales: dict[str, np.ndarray]) -> tuple[list[int], PermutationGain]:
    channels = analysis.group(gid).channels
    kept = sorted(width[gid].indices) if gid in width else list(range(channels))
    blocks = []
    for layer in readers:
        weight = analysis.model.get_submodule(layer.name).weight.detach()
        if layer.out_group in width:
            weight = weight[sorted(width[layer.out_group].indices)]
        block = columns(weight[:, kept]).abs().float().numpy()
        blocks.append(block * scales[layer.name][kept] if layer.name in scales else block)
    matrix = np.concatenate(blocks).astype(np.float64)
    n, m = spec.n, spec.m
    order = search_permutation(matrix, n, m, seed=0, max_seconds=PERMUTATION_SECONDS)
    stats = PermutationGain(tuple(r.name for r in readers), float(matrix.sum()), retained(matrix, n, m),
                            retained(matrix[:, order], n, m),
                            "activation" if any(r.name in scales for r in readers) else "magnitude")
    kept_set = set(kept)
    full = [kept[int(i)] for i in order] + [c for c in range(channels) if c not in kept_set]
    return full, stats
