"""Adaptive profiling: a coarse pass over each layer's widths, then only the stretches that a line through it
misses; the predictor reads the gaps on that line. Two passes, two batches (two round trips to a device)."""

import pytest

from hwprune.cost.layers import model_layers
from hwprune.cost.predictor import _on_axis
from hwprune.cost.signature import OpSignature
from hwprune.cost.space import UNSURE, Sweep, sweeps
from hwprune.graph.analyze import analyze
from tests.data.small_models import small_resnet


def sweep_of(counts):
    base = OpSignature("conv", 1, 64, 128, 16, 16, 3, 1, 1)
    return Sweep(tuple(counts), tuple(base.with_channels(64, c) for c in counts))


def test_the_first_pass_takes_every_stride_th_width_and_the_last():
    sweep = sweep_of(range(16, 2049, 16))  # 128 widths: stride 16, four segments, each with its check point
    assert sweep.stride() == 16
    first = [s.c_out for s in sweep.first_pass()]
    assert first[:3] == [16, 272, 528] and first[-1] == 2048 and len(first) == 9
    assert sweep_of(range(16, 257, 16)).stride() == 2  # 16 widths: every other one
    assert sweep_of(range(16, 129, 16)).stride() == 1  # 8 widths: every one


def test_the_second_pass_fills_only_where_the_line_misses_its_check_point():
    sweep = sweep_of(range(16, 2049, 16))
    straight = {c: 0.01 * c for c in sweep.counts}
    assert sweep.second_pass({c: straight[c] for c in (s.c_out for s in sweep.first_pass())}) == []
    kinked = dict(straight)
    kinked[272] = straight[272] * (1 + 2 * UNSURE)  # a check point off the line through 16 and 528
    filled = [s.c_out for s in sweep.second_pass({c: kinked[c] for c in (s.c_out for s in sweep.first_pass())})]
    assert filled == [c for c in range(32, 528, 16) if c != 272]


def test_the_predictor_reads_a_gap_on_the_line_and_a_measured_point_as_it_is():
    axis = {16: 1.0, 80: 2.0, 144: 2.5}
    assert _on_axis(axis, 80, "l") == 2.0
    assert _on_axis(axis, 48, "l") == pytest.approx(1.5)
    assert _on_axis(axis, 8, "l") == 1.0  # below the smallest measured width: that width's time


def test_every_layer_axis_is_swept_once():
    model, x = small_resnet()
    analysis = analyze(model, x, "small_resnet")
    layers = model_layers(analysis)
    found = sweeps(layers, {g.id: g for g in analysis.groups}, 16)
    keys = [tuple(s.key() for s in sweep.signatures) for sweep in found]
    assert len(keys) == len(set(keys)) and all(list(s.counts) == sorted(s.counts) for s in found)
    full = {layer.signature.key() for layer in layers}
    assert all(sweep.signatures[-1].key() in full for sweep in found)  # each axis ends at the layer's own width
