"""The analytic roofline: monotone in width, flat within an alignment step and jumping at its edge,
2:4 faster only on hardware that has it, fp16 never slower than fp32 on GPUs, and a fit that
recovers known parameters."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprune.cost.analytic import compute_ms, fit_efficiency, memory_ms, op_kind, padded, predict_ms, scaled
from hwprune.cost.signature import OpSignature
from hwprune.targets import available_targets, load_target

GPUS = ("jetson-orin-nano", "jetson-orin-agx", "jetson-xavier-nx", "t4", "a10", "a100", "l4", "h100", "rtx-4090",
        "rtx-2080ti")
FAST = settings(max_examples=60, deadline=None)


@cache
def target(name: str):
    return load_target(name)


def conv(c_in=64, c_out=64, hw=28, kernel=3, stride=1, groups=1, batch=8, dtype="fp32", sparsity="dense"):
    return OpSignature(op="conv2d", batch=batch, c_in=c_in, c_out=c_out, h=hw, w=hw, kernel=kernel, stride=stride,
                       padding=kernel // 2, groups=groups, dtype=dtype, sparsity=sparsity)


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


shapes = st.fixed_dictionaries({
    "c_in": st.integers(1, 300), "c_out": st.integers(1, 300), "hw": st.sampled_from([7, 14, 28, 56]),
    "kernel": st.sampled_from([1, 3, 5]), "stride": st.sampled_from([1, 2]), "batch": st.sampled_from([1, 8, 64]),
    "dtype": st.sampled_from(["fp32", "fp16", "int8"])})
names = st.sampled_from(available_targets())


@FAST
@given(shape=shapes, name=names, extra=st.integers(1, 64))
def test_monotone_non_decreasing_in_c_out_and_c_in(shape, name, extra):
    device = target(name)
    base = conv(**shape)
    wider_out = replace(base, c_out=base.c_out + extra)
    wider_in = replace(base, c_in=base.c_in + extra)
    assert predict_ms(wider_out, device) >= predict_ms(base, device)
    assert predict_ms(wider_in, device) >= predict_ms(base, device)


@FAST
@given(shape=shapes, name=names)
def test_flat_within_an_alignment_step_and_jumps_past_it(shape, name):
    device = target(name)
    step = device.channel_alignment
    sig = conv(**shape)
    top = round_up(sig.c_out, step)
    # any width inside the step costs what the full step costs ...
    assert predict_ms(sig, device) == predict_ms(replace(sig, c_out=top), device)
    assert predict_ms(replace(sig, c_in=round_up(sig.c_in, step)), device) == predict_ms(sig, device)
    # ... and one channel more starts the next step, which costs strictly more
    assert predict_ms(replace(sig, c_out=top + 1), device) > predict_ms(replace(sig, c_out=top), device)


def test_staircase_17_costs_as_much_as_32_at_alignment_16():
    cpu = target("cpu")
    assert cpu.channel_alignment == 16
    costs = {c: predict_ms(conv(c_in=64, c_out=c), cpu) for c in range(1, 50)}
    assert len({costs[c] for c in range(17, 33)}) == 1
    assert costs[16] < costs[17] == costs[32] < costs[33]
    assert sorted(costs.values()) == [costs[c] for c in range(1, 50)]


@FAST
@given(channels=st.integers(2, 1000), hw=st.sampled_from([7, 14, 56, 112]), name=names)
def test_depthwise_keeps_groups_and_steps_with_channels(channels, hw, name):
    device = target(name)
    sig = conv(c_in=channels, c_out=channels, groups=channels, hw=hw)
    assert op_kind(sig) == "depthwise"
    pad = padded(sig, device.channel_alignment)
    assert pad.groups == pad.c_in == pad.c_out == round_up(channels, device.channel_alignment)
    assert predict_ms(sig.with_channels(channels + 1, channels + 1), device) >= predict_ms(sig, device)


@pytest.mark.parametrize("name", GPUS)
def test_depthwise_is_memory_bound_on_gpus(name):
    device = target(name)
    for hw in (7, 28, 112):
        sig = conv(c_in=256, c_out=256, groups=256, hw=hw, batch=32, dtype=device.default_dtype)
        assert memory_ms(sig, device) > compute_ms(sig, device)


def test_grouped_conv_pads_to_whole_groups():
    sig = conv(c_in=96, c_out=100, groups=4)
    pad = padded(sig, 16)
    assert pad.c_in % 4 == 0 and pad.c_out % 4 == 0 and pad.c_in % 16 == 0 and pad.c_out >= 100
    assert op_kind(sig) == "conv" and op_kind(conv(kernel=1)) == "pointwise"


def test_2_4_sparse_is_faster_only_where_the_profile_predicts_a_gain():
    """Faster by at most the profile's derated layer speedup, never the datasheet's 2x; no gain on
    Jetson Orin (its profiles predict none), below min_channels, or for another N:M pattern."""
    compute_bound = dict(c_in=512, c_out=512, hw=28, kernel=3, batch=32, dtype="fp16")
    for name in available_targets():
        device = target(name)
        dense = predict_ms(conv(**compute_bound), device)
        sparse = predict_ms(conv(**compute_bound, sparsity="2:4"), device)
        if device.sparse_24 and device.sparse_layer_speedup > 1:
            assert compute_ms(conv(**compute_bound), device) > memory_ms(conv(**compute_bound), device), name
            assert dense / device.sparse_layer_speedup <= sparse < dense, name
        else:
            assert sparse == dense, name
    assert target("jetson-orin-agx").sparse_24 and target("jetson-orin-agx").sparse_layer_speedup == 1
    a100 = target("a100")
    small = dict(compute_bound, c_in=128, c_out=128)
    assert predict_ms(conv(**small, sparsity="2:4"), a100) == predict_ms(conv(**small), a100)
    assert predict_ms(conv(**compute_bound, sparsity="1:4"), a100) == predict_ms(conv(**compute_bound), a100)
    # no fp32 sparse rate and no sparse depthwise kernels: same cost as dense
    fp32 = dict(compute_bound, dtype="fp32")
    assert predict_ms(conv(**fp32, sparsity="2:4"), a100) == predict_ms(conv(**fp32), a100)
    depthwise = dict(c_in=512, c_out=512, groups=512, hw=28, batch=32, dtype="fp16")
    assert predict_ms(conv(**depthwise, sparsity="2:4"), a100) == predict_ms(conv(**depthwise), a100)


@FAST
@given(shape=shapes, name=st.sampled_from(GPUS))
def test_fp16_never_slower_than_fp32_on_gpus(shape, name):
    device = target(name)
    sig = conv(**dict(shape, dtype="fp32"))
    assert predict_ms(replace(sig, dtype="fp16"), device) <= predict_ms(sig, device)
    assert predict_ms(replace(sig, dtype="int8"), device) <= predict_ms(replace(sig, dtype="fp16"), device)


def test_prediction_is_the_roofline_plus_launch_overhead():
    a100 = target("a100")
    sig = conv(c_in=256, c_out=256, hw=56, kernel=1, batch=16, dtype="fp16")  # already aligned
    flops = 2 * 16 * 256 * 256 * 56 * 56
    moved = (16 * 256 * 56 * 56 * 2 + 256 * 256) * 2
    compute = flops / (312e12 * a100.analytic.efficiency["pointwise"]) * 1e3
    memory = moved / (2039e9 * a100.analytic.memory_efficiency) * 1e3
    expected = max(compute, memory) + a100.analytic.launch_overhead_us / 1e3
    assert predict_ms(sig, a100) == pytest.approx(expected, rel=1e-12)


def test_linear_ops_are_costed():
    h100 = target("h100")
    small = OpSignature(op="linear", batch=8, c_in=768, c_out=768, h=197, w=1, dtype="fp16")
    big = replace(small, c_out=3072)
    assert op_kind(small) == "linear" and 0 < predict_ms(small, h100) < predict_ms(big, h100)
    with pytest.raises(ValueError, match="linear and attention"):
        predict_ms(replace(small, op="pool"), h100)


def test_attention_core_is_two_matmuls_and_its_scores_traffic():
    """B=8, 12 heads of 64, 197 tokens in fp16 on an A100: 2 x 2·B·H·S·S·D FLOPs at linear's efficiency; memory:
    Q, K, V, the output and the S x S scores moved four times; heads are not padded to the alignment (8)."""
    a100 = target("a100")
    sig = OpSignature("attention", 8, 12, 12, 197, 197, kernel=64, dtype="fp16")
    flops = 2 * 2 * 8 * 12 * 197 * 197 * 64
    moved = 8 * 12 * (4 * 197 * 64 + 4 * 197 * 197) * 2
    assert sig.flops() == flops and sig.bytes_moved() == moved and padded(sig, 8) == sig
    compute = flops / (312e12 * a100.analytic.efficiency["linear"]) * 1e3
    memory = moved / (2039e9 * a100.analytic.memory_efficiency) * 1e3
    expected = max(compute, memory) + a100.analytic.launch_overhead_us / 1e3
    assert predict_ms(sig, a100) == pytest.approx(expected, rel=1e-12)
    assert predict_ms(replace(sig, c_in=3, c_out=3), a100) < predict_ms(sig, a100)


def test_fit_recovers_a_known_scale_and_offset():
    device = target("rtx-2080ti")
    truth = scaled(device, 0.5)
    sigs = [conv(c_in=c, c_out=2 * c, hw=hw, kernel=k, batch=32) for c in (32, 96, 256) for hw in (14, 56)
            for k in (1, 3)]
    sigs += [conv(c_in=c, c_out=c, groups=c, hw=hw, batch=32) for c in (64, 384) for hw in (14, 56)]
    measured = [(sig, predict_ms(sig, truth) + 0.2) for sig in sigs]
    scale, offset = fit_efficiency(measured, device)
    assert scale == pytest.approx(0.5, rel=0.02) and offset == pytest.approx(0.2, abs=0.01)
    scale_only, zero = fit_efficiency([(s, predict_ms(s, truth)) for s in sigs], device, fit_offset=False)
    assert zero == 0.0 and scale_only == pytest.approx(0.5, rel=0.02)
    with pytest.raises(ValueError):
        fit_efficiency([], device)
