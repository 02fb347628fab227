"""Removing channels that contribute nothing must leave the model's output unchanged.

For every prunable group whose removal can be exact (a LayerNorm's statistics over the channel
dim change with the channel count, so those groups are skipped), a random subset of channels is
made zero-contribution by zeroing its producer weights; removing exactly those channels must
then reproduce the zeroed model's output, and the model must really be smaller.
"""

import random

import pytest
import torch

from hwprune.graph.analyze import analyze
from hwprune.transform.prune import prune
from tests.pruning_helpers import max_abs_diff, random_keep, zero_dropped_channels
from tests.zoo import ZOO

TOLERANCE = 1e-4
COUPLINGS_SEEN: dict[str, set[str]] = {}  # filled by the exactness test, read by the coverage test


def prune_zeroed(name, model, example, seed=0, ratio=0.6):
    """Zero random channels of every exactly-removable group, prune them; return outputs and stats."""
    analysis = analyze(model, example, "zoo")
    COUPLINGS_SEEN[name] = {c for g in analysis.groups for c in g.couplings}
    rng = random.Random(seed)
    keep = {g.id: random_keep(g, rng, ratio) for g in analysis.prunable() if g.exact_removal}
    for group_id, kept in keep.items():
        zero_dropped_channels(analysis, analysis.group(group_id), kept)
    with torch.no_grad():
        reference = model(example)
    params_before = sum(p.numel() for p in model.parameters())
    pruned = prune(analysis, keep)
    with torch.no_grad():
        output = pruned(example)
    return analysis, reference, output, params_before, sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_removing_zeroed_channels_is_exact(name):
    model, example = ZOO[name]()
    analysis, reference, output, before, after = prune_zeroed(name, model, example)
    assert any(g.prunable and g.exact_removal for g in analysis.groups), "zoo model has nothing to prune"
    scale = max(1.0, float(reference.abs().max()))
    assert float(reference.abs().max()) > 1e-3, "degenerate reference output would hide errors"
    assert max_abs_diff(reference, output) <= TOLERANCE * scale
    assert after < before


def test_zoo_covers_every_coupling_kind():
    seen = set()
    for name, factory in ZOO.items():
        if name not in COUPLINGS_SEEN:  # run alone: analyse here
            COUPLINGS_SEEN[name] = {c for g in analyze(*factory()).groups for c in g.couplings}
        seen |= COUPLINGS_SEEN[name]
    assert {"residual", "concat", "split", "depthwise", "grouped", "flatten", "heads", "norm",
            "embedding"} <= seen
    assert len(ZOO) >= 15


def test_removing_nonzero_channels_changes_output():
    """The exactness check can fail: pruning channels that do contribute changes the output."""
    model, example = ZOO[sorted(ZOO)[0]]()
    analysis = analyze(model, example)
    group = analysis.prunable()[0]
    with torch.no_grad():
        reference = model(example)
    pruned = prune(analysis, {group.id: list(range(group.channels // 2))})
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(example)) > TOLERANCE
