"""Splits and chunks along channels: C2f-style pieces are coupled, not refused; fixed sizes are."""

import random

import pytest
import torch

from hwprune.errors import PlanError
from hwprune.evaluate.mask import silenced
from hwprune.graph.analyze import analyze
from hwprune.transform.prune import prune, validate_keep
from tests.pruning_helpers import max_abs_diff, random_keep
from tests.zoo import ZOO


def test_c2f_pieces_form_one_group_with_the_residual_stream():
    """cv1's output is chunked in two; the second piece runs through residual bottlenecks. One group
    holds both pieces (two blocks) and the bottleneck outputs added to the second piece; each reader
    holds what it reads: a bottleneck one piece, the closing conv every piece (the second one twice
    per bottleneck, as ``y`` and ``y + f(y)``)."""
    model, example = ZOO["yolo_style"]()
    analysis = analyze(model, example, "yolo", strict=False)
    group = analysis.group("c2f_a.cv1.0")
    assert group.prunable and group.repeat == 2 and {"split", "residual"} <= set(group.couplings)
    assert {"c2f_a.m.0.cv2.0", "c2f_a.m.1.cv2.0"} <= set(group.producers)
    assert group.positions["c2f_a.m.0.cv1.0"] == 16 and group.positions["c2f_a.cv2.0"] == 64
    plain = analysis.group("c2f_b.cv1.0")  # no residual: a piece read by the concat and a bottleneck
    assert plain.prunable and plain.repeat == 2 and plain.positions["c2f_b.m.0.cv1.0"] == 24


def test_pieces_shrink_evenly_and_removal_is_exact():
    model, example = ZOO["yolo_style"]()
    analysis = analyze(model, example, "yolo", strict=False)
    group = analysis.group("c2f_a.cv1.0")
    with pytest.raises(PlanError, match="same channel positions kept in every block"):
        validate_keep(group, list(range(16)))  # all of the first piece, none of the second
    keep = {group.id: random_keep(group, random.Random(0))}
    dropped = {group.id: sorted(set(range(group.channels)) - set(keep[group.id]))}
    with silenced(analysis, dropped) as masked, torch.no_grad():
        reference = masked(example).clone()
    pruned = prune(analysis, keep)
    assert pruned.c2f_a.cv1[0].out_channels == len(keep[group.id])
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(example)) <= 1e-4 * max(1.0, float(reference.abs().max()))


def test_split_with_sizes_fixed_in_code_is_refused_by_name():
    model, example = ZOO["cat_split"]()
    analysis = analyze(model, example, "cat_split", strict=False)
    for gid in ("branch_a.0", "branch_b.0"):
        group = analysis.group(gid)
        assert not group.prunable and "torch.split([6, 10]) along channels" in group.reason


def test_a_chunk_of_a_channel_shuffle_keeps_torch_prunings_split_node():
    """ShuffleNet chunks the output of its channel shuffle (a view reordering channels). That chunk is
    not traced as slices (the index walk through the view and back grew without end): the analysis
    finishes at once, with the groups behind the shuffle refused by name."""
    import torchvision

    model = torchvision.models.shufflenet_v2_x0_5().eval()
    analysis = analyze(model, torch.randn(1, 3, 64, 64), "shufflenet", strict=False)
    assert len(analysis.groups) == 40 and len(analysis.prunable()) == 18
    assert all(g.reason for g in analysis.groups if not g.prunable)
