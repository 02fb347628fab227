"""Per-channel importance of every prunable group, aggregated over the group's coupled layers.

torch-pruning's group importances do the aggregation (every layer a group's channels touch:
producers, BN, consumers) for conv/linear groups; attention heads are scored here per unit
(``graph.heads``: a head, or a key/value head with its query heads) from its q/k/v rows and
output-projection columns. Each group's scores are divided by their mean, so a
score of 1 is "an average channel of this group" in every group: the search compares groups
of different sizes and weight scales on one axis.

    l1, l2   weight magnitude (p-norm)
    bn       |BN scale|; groups without a BN fall back to l1 (reported in ``fallbacks``)
    taylor   |weight x gradient| (first order), on calibration inputs; with no labels the loss is
             cross-entropy against the model's own prediction (or the output's squared norm for
             non-classifier outputs)
    activation  |weight column| x |input activation| summed over the dense layers reading the
             group (``importance.readers``), on up to 4 calibration batches; groups that are not
             segments (a depthwise or attention reader) and heads fall back to l1
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.evaluate.calibration import first_output
from hwprune.graph import depgraph as tp
from hwprune.graph.analyze import Analysis
from hwprune.graph.depgraph.index_maps import frozen_index_mapping, tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup
from hwprune.graph.heads import Heads, group_heads
from hwprune.graph.segments import segments
from hwprune.importance.readers import reader_scores

METHODS = ("l1", "l2", "bn", "taylor", "activation")
ACTIVATION_BATCHES = 4


@dataclass
class Importance:
    """Mean-normalised scores per prunable group, one per channel (or head)."""

    method: str
    scores: dict[str, np.ndarray]
    fallbacks: list[str] = field(default_factory=list)


def score_groups(analysis: Analysis, method: str, calibration: Iterable[torch.Tensor] = ()) -> Importance:
    """Score every prunable group of ``analysis``; ``calibration`` inputs are needed for taylor."""
    if method not in METHODS:
        raise HwpruneError(f"unknown importance {method!r}: use one of {', '.join(METHODS)}")
    model = analysis.model
    if method == "taylor":
        _accumulate_gradients(model, calibration)
    by_readers = _reader_totals(analysis, calibration) if method == "activation" else {}
    scores: dict[str, np.ndarray] = {}
    fallbacks = []
    try:
        with frozen_index_mapping(analysis.capture.dependency_graph):
            for group in analysis.prunable():
                if method == "activation":
                    raw = by_readers.get(group.id)
                    if raw is None:
                        fallbacks.append(group.id)
                        raw = _fallback_l1(analysis, group)
                elif group.kind == "heads":
                    raw = _head_scores(group_heads(model, group.id), method)
                else:
                    raw = _channel_scores(analysis, group.id, group.channels, method)
                    if raw is None or raw.shape != (group.channels,):
                        fallbacks.append(group.id)
                        raw = _fallback_l1(analysis, group)
                if raw is None or raw.shape != (group.channels,):
                    raise HwpruneError(f"group {group.id}: no {method} importance could be computed")
                scores[group.id] = _normalised(raw)
    finally:
        if method == "taylor":
            model.zero_grad(set_to_none=True)
    return Importance(method, scores, fallbacks)


def _fallback_l1(analysis: Analysis, group: ChannelGroup) -> np.ndarray | None:
    if group.kind == "heads":
        return _head_scores(group_heads(analysis.model, group.id), "l1")
    scores = _channel_scores(analysis, group.id, group.channels, "l1")
    if scores is None or scores.shape != (group.channels,):
        # torch-pruning scores no layer of the group, or not one score per channel (a layer that
        # reads each channel twice): the root layer's own rows
        root = analysis.model.get_submodule(group.id)
        weight = root.weight.detach().abs()
        if isinstance(root, nn.modules.conv._ConvTransposeNd):  # output channels in dim 1
            weight = weight.transpose(0, 1)
        scores = weight.reshape(weight.shape[0], -1).sum(dim=1).double().numpy()
    return scores


def _reader_totals(analysis: Analysis, calibration: Iterable[torch.Tensor]) -> dict[str, np.ndarray]:
    """Per segment, its readers' contribution scores summed (the activation importance)."""
    batches = list(calibration)[:ACTIVATION_BATCHES]
    if not batches:
        raise HwpruneError("activation importance needs calibration inputs")
    with torch.no_grad():
        per_group = reader_scores(analysis, segments(analysis), batches)
    return {gid: sum(per_reader.values()) for gid, per_reader in per_group.items()}


def _tp_importance(method: str) -> tp.importance.Importance:
    # normalizer=None: hwprune normalises itself (mean 1 per group) after any fallback.
    if method == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    if method == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    if method == "bn":
        return tp.importance.BNScaleImportance(normalizer=None)
    return tp.importance.GroupTaylorImportance(normalizer=None)


def _channel_scores(analysis: Analysis, group_id: str, channels: int, method: str) -> np.ndarray | None:
    graph = analysis.capture.dependency_graph
    root = analysis.model.get_submodule(group_id)
    pruner = graph.get_pruner_of_module(root)
    with tolerant_index_mapping(graph.hwprune_unmapped), torch.no_grad():
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(channels)))
        result = _tp_importance(method)(group)
    return None if result is None else result.detach().abs().double().numpy()


def _head_scores(heads: Heads, method: str) -> np.ndarray:
    """Per unit: the norm (or |w x grad|) of its q/k/v rows and its output-projection columns (each unit's
    rows are one contiguous block of every projection)."""

    def per_unit(weight: torch.Tensor, rows: bool) -> torch.Tensor:
        if method == "taylor":
            if weight.grad is None:
                raise HwpruneError("taylor importance: no gradient reached an attention layer")
            values = (weight * weight.grad).abs()
        elif method == "l2":
            values = weight.pow(2)
        else:  # l1, and bn (attention has no BN scale)
            values = weight.abs()
        values = values if rows else values.t()
        return values.reshape(heads.units, -1).sum(dim=1)

    with torch.no_grad():
        total = sum(per_unit(heads.layer(i).weight, rows=True) for i in range(3))
        total = total + per_unit(heads.layer(3).weight, rows=False)
    return total.double().numpy()


def _accumulate_gradients(model: nn.Module, calibration: Iterable[torch.Tensor]) -> None:
    """Sum the label-free loss's gradients over the calibration inputs into ``.grad``."""
    model.zero_grad(set_to_none=True)
    model.eval()
    batches = 0
    for inputs in calibration:
        output = first_output(model(inputs))
        if output.dim() == 2:
            loss = nn.functional.cross_entropy(output, output.detach().argmax(dim=1))
        else:
            loss = output.pow(2).mean()
        loss.backward()
        batches += 1
    if batches == 0:
        raise HwpruneError("taylor importance needs calibration inputs")


def _normalised(raw: np.ndarray) -> np.ndarray:
    raw = np.nan_to_num(np.abs(raw), nan=0.0, posinf=0.0)
    mean = raw.mean()
    return raw / mean if mean > 0 else np.ones_like(raw)


def select(scores: np.ndarray, count: int, repeat: int = 1) -> list[int]:
    """Indices of the ``count`` best channels; with ``repeat`` blocks (grouped convs), the same
    positions in every block, chosen by their summed score."""
    channels = len(scores)
    block = channels // repeat
    per_block = count // repeat
    position_scores = scores.reshape(repeat, block).sum(axis=0)
    # Stable: ties keep the lower index, so a plan is reproducible.
    best = np.argsort(-position_scores, kind="stable")[:per_block]
    return sorted(int(b * block + p) for b in range(repeat) for p in best)


def retained(scores: np.ndarray, repeat: int = 1) -> np.ndarray:
    """retained[k] = the summed score of the best k per-block positions (k = 0 .. block), x repeat units."""
    position_scores = np.sort(scores.reshape(repeat, -1).sum(axis=0))[::-1]
    return np.concatenate([[0.0], np.cumsum(position_scores)])
