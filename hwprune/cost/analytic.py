"""Analytic (roofline) latency of one op on a device that cannot be measured here.

Model, per op signature ``sig`` on ``target``::

    padded    = sig with c_in, c_out rounded UP to target.channel_alignment   (tile quantization)
    compute   = padded.flops() / (peak[dtype] * efficiency[kind])
    memory    = padded.bytes_moved() / (bandwidth * memory_efficiency)
    epilogue  = padded.epilogue_bytes() / (bandwidth * memory_efficiency)   (0 for a conv2d: folded)
    latency   = max(compute, memory) + epilogue + launch_overhead

- ``kind`` is ``depthwise`` (groups == c_in == c_out > 1), ``pointwise`` (1x1 conv), ``conv``
  (any other conv, grouped convs included), ``linear`` or ``attention``; each but attention has its
  own efficiency in the profile's ``[analytic.efficiency]``. Attention's core is two batched
  matmuls (2 x 2·B·H·S_q·S_k·D FLOPs), run as GEMMs: it takes ``linear``'s efficiency; its memory
  traffic adds the S_q x S_k scores written, read and written by the softmax and read again
  (``OpSignature.bytes_moved``), as unfused ops move them (a fused kernel keeping them on chip is
  faster than this predicts). Its heads are whole units and are not padded. Depthwise convs do
  9 multiply-adds per 8 bytes moved (fp32, 3x3), far below a GPU's ridge point, so on the GPU
  profiles they come out memory bound (on the CPU profiles, whose assumed depthwise efficiency
  is low, compute bound).
- Tile quantization: the whole op is costed as if its channels were padded to the alignment,
  FLOPs and bytes alike (TensorRT's vectorised formats such as "channel % 8 == 0" fp16 pad the
  tensors too). 17 channels therefore cost as much as 32 when the alignment is 16: the
  staircase. Grouped convs pad to a multiple of ``groups`` that is at least the alignment, so
  the padded op still has whole groups; depthwise convs keep groups == channels.
- ``peak`` is the dense rate of the signature's dtype. A ``sig.sparsity == "2:4"`` op runs at the
  dense rate times the profile's ``[sparsity] layer_speedup`` where the device has a sparse rate
  for that dtype (Ampere and newer), the op runs on tensor cores (not depthwise) and both its
  channel counts reach ``min_channels``; everywhere else (any other N:M too) it costs the same as
  dense. The speedup is derated to public end-to-end evidence (about 1.15 on datacenter GPUs, 1.0
  on Jetson Orin), not the datasheet's 2x peak. Memory traffic is not reduced for 2:4.
- A layer's epilogue (per-channel constant Mul/Add ops after it, ``OpSignature.epilogue``) is costed as
  those ops run on their own: memory bound, each reading and writing the layer's output, after the layer;
  except a conv2d's, which is free: a per-channel scale and shift after a convolution is the convolution
  with scaled weights and a shifted bias, and onnxruntime folds it so (measured, with a ConvTranspose's and
  a MatMul's it does not fold: benchmarks/epilogue_pricing.py). A runtime that folds the others too runs
  them for less than this predicts.
- Everything is one op in isolation: no fusion, no caches, no concurrency between ops.

Every number this module returns is a *prediction by the analytic model*; callers label it so
and never present it as a measurement.

How far it can be trusted. The only real GPU data here is benchmarks/gpu_analytic_check.py:
TensorRT 8.4 fp32 timings of the 50 single layers of MobileNetV2-1.0 at batch 128 on an RTX 2080 Ti
(Kim et al., ICML 2023), each layer timed as its own engine. Every such timing carries a fixed
per-call cost of their harness (fitted: 0.247 ms on the even rows) that no per-op model has.
With the rtx-2080ti profile as shipped (efficiencies *assumed*, the same priors as every GPU
profile, not fitted on these rows) plus that constant:

- MAPE 16.8% on the held-out odd rows, 16.6% on all 50; the sum over the 50 layers is 8.7% low
  (30.75 ms predicted vs 33.67 ms measured). Fitting one global efficiency scale as well (0.963,
  even rows) changes nothing material: 17.3% held out, sum 7.7% low.
- The harness constant is 37% of the measured sum and flatters those numbers: against the op
  part alone (measured minus the constant) the per-op model's MAPE is 28%. 1x1 convs come out
  right on median (predicted/measured op time 1.04; per-row errors with the constant -13% to
  +34%). Depthwise convs are right at 112x112 and 56x56 (0.92-0.99x) but predicted too fast on
  small maps: 0.64x at 28x28, 0.4x at 14x14, 0.27x at 7x7 (TensorRT's fp32 depthwise kernels do
  not reach the memory roofline there).
- Without the constant the model sums to 18.4 ms, 45% below the per-layer timings: compare
  absolute predictions with whole-engine timings, never with one-engine-per-layer timings.

So: usable to rank candidate widths and to see the alignment staircase; expect tens of percent
per op on devices whose efficiencies are assumed (all of them), depthwise-heavy models predicted
too fast, and larger errors at batch 1 where the launch overhead (assumed, never measured here)
dominates. Measure on the device (a lookup table) before trusting a latency budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from hwprune.cost.signature import ATTENTION, OpSignature
from hwprune.errors import DeviceError
from hwprune.targets import Target

# Ops whose constant epilogue is folded into their weights, so it costs nothing (see the module docstring).
FOLDED_EPILOGUES = ("conv2d",)

__all__ = ["op_kind", "padded", "peak_tflops", "predict_ms", "scaled", "fit_efficiency"]


def op_kind(sig: OpSignature) -> str:
    """``linear``, ``attention``, ``depthwise``, ``pointwise`` or ``conv``: which efficiency factor applies
    (attention takes linear's)."""
    if sig.op in ("linear", ATTENTION):
        return sig.op
    if sig.op not in ("conv2d", "conv_transpose2d"):
        raise ValueError(f"the analytic model knows conv2d, conv_transpose2d, linear and attention, not {sig.op!r}")
    if sig.groups > 1 and sig.groups == sig.c_in == sig.c_out:
        return "depthwise"
    if sig.kernel == 1 and sig.groups == 1:
        return "pointwise"
    return "conv"


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def padded(sig: OpSignature, alignment: int) -> OpSignature:
    """``sig`` with its channel counts rounded up to the alignment (the tile the kernels work in); attention's
    channels are heads, never padded."""
    if alignment <= 1 or sig.op == ATTENTION:
        return sig
    if op_kind(sig) == "depthwise":
        channels = _round_up(sig.c_in, alignment)
        return replace(sig, c_in=channels, c_out=channels, groups=channels)
    if sig.groups > 1:
        step = sig.groups * -(-alignment // sig.groups)
        return replace(sig, c_in=_round_up(sig.c_in, step), c_out=_round_up(sig.c_out, step))
    return replace(sig, c_in=_round_up(sig.c_in, alignment), c_out=_round_up(sig.c_out, alignment))


def peak_tflops(sig: OpSignature, target: Target) -> float:
    """The rate the op can reach: the dense peak, times the profile's derated 2:4 speedup for a 2:4
    op the device's sparse tensor cores run."""
    if sig.dtype not in target.peak_tflops:
        raise DeviceError(f"target {target.name} has no peak rate for dtype {sig.dtype!r}")
    if (sig.sparsity == "2:4" and op_kind(sig) != "depthwise" and sig.dtype in target.peak_tflops_sparse
            and min(sig.c_in, sig.c_out) >= target.sparse_min_channels):
        return target.peak_tflops[sig.dtype] * target.sparse_layer_speedup
    return target.peak_tflops[sig.dtype]


def compute_ms(sig: OpSignature, target: Target) -> float:
    """Compute-bound time of the (padded) op, ms."""
    kind = op_kind(sig)
    efficiency = target.analytic.efficiency["linear" if kind == ATTENTION else kind]
    flops = padded(sig, target.channel_alignment).flops()
    return flops / (peak_tflops(sig, target) * 1e12 * efficiency) * 1e3


def memory_ms(sig: OpSignature, target: Target) -> float:
    """Bandwidth-bound time of the (padded) op, ms."""
    moved = padded(sig, target.channel_alignment).bytes_moved()
    return moved / (target.bandwidth_gbps * 1e9 * target.analytic.memory_efficiency) * 1e3


def epilogue_ms(sig: OpSignature, target: Target) -> float:
    """Bandwidth-bound time of the (padded) op's epilogue, ms (none without one, or where it is folded)."""
    if sig.op in FOLDED_EPILOGUES:
        return 0.0
    moved = padded(sig, target.channel_alignment).epilogue_bytes()
    return moved / (target.bandwidth_gbps * 1e9 * target.analytic.memory_efficiency) * 1e3


def predict_ms(sig: OpSignature, target: Target) -> float:
    """Roofline latency of one op and its epilogue on ``target`` in milliseconds (analytic, not measured)."""
    roofline = max(compute_ms(sig, target), memory_ms(sig, target))
    return roofline + epilogue_ms(sig, target) + target.analytic.launch_overhead_us * 1e-3


def scaled(target: Target, scale: float) -> Target:
    """``target`` with every efficiency (compute and memory) multiplied by ``scale``."""
    analytic = target.analytic
    return replace(target, analytic=replace(
        analytic, efficiency={kind: value * scale for kind, value in analytic.efficiency.items()},
        memory_efficiency=analytic.memory_efficiency * scale))


def fit_efficiency(samples: Iterable[tuple[OpSignature, float]], target: Target, *, fit_offset: bool = True,
                   scales: Sequence[float] | None = None) -> tuple[float, float]:
    """Fit one global efficiency scale (and a constant offset, ms) to measured ``(sig, ms)`` pairs.

    Every efficiency of the profile (compute and memory) is multiplied by the same ``scale``;
    ``offset`` (>= 0) is added to every prediction (a measuring harness's fixed per-call cost,
    for instance). Minimises the mean absolute percentage error over a log-spaced grid of scales
    (0.05 to 4 unless ``scales`` is given), with the offset chosen per scale by a weighted median.
    Returns ``(scale, offset_ms)``; predict with ``predict_ms(sig, scaled(target, scale)) + offset``.
    Report errors on samples the fit did not see.
    """
    pairs = [(sig, float(ms)) for sig, ms in samples]
    if not pairs or any(ms <= 0 for _, ms in pairs):
        raise ValueError("fit_efficiency needs at least one measurement, all positive")
    grid = list(scales) if scales is not None else [math.exp(math.log(0.05) + i * math.log(4 / 0.05) / 400)
                                                    for i in range(401)]
    best = (math.inf, 1.0, 0.0)
    for scale in grid:
        candidate = scaled(target, scale)
        predicted = [predict_ms(sig, candidate) for sig, _ in pairs]
        offset = max(0.0, _weighted_median([ms - p for p, (_, ms) in zip(predicted, pairs, strict=True)],
                                           [1 / ms for _, ms in pairs])) if fit_offset else 0.0
        error = sum(abs(p + offset - ms) / ms for p, (_, ms) in zip(predicted, pairs, strict=True)) / len(pairs)
        if error < best[0]:
            best = (error, scale, offset)
    return best[1], best[2]


def _weighted_median(values: list[float], weights: list[float]) -> float:
    """Minimiser of sum(w * |v - x|): the MAPE-optimal constant offset."""
    order = sorted(range(len(values)), key=values.__getitem__)
    half, running = sum(weights) / 2, 0.0
    for index in order:
        running += weights[index]
        if running >= half:
            return values[index]
    return values[order[-1]]
