"""Does timing a layer's per-channel constant Mul/Add epilogue with the layer change the ``cpu`` predictions?

First, three single ops are timed bare and with a Mul and an Add after them: which epilogues onnxruntime
folds into the op. Then two models built here: a CNN as a converter leaves it (every conv's BatchNorm a Mul
and an Add of per-channel constants) and token-MLP blocks with a layer scale (``x + gamma * fc2(gelu(fc1(x) *
s + t))``, CaiT-style). For each, one table is profiled at every width with the layers' signatures both with
their epilogue (what hwprune profiles now) and without (what it profiled before). Two predictors share the
whole-model anchors: *before*, whose layers are timed bare, the epilogues left to the fitted rest (f + r x
activations); *now*, whose layers are timed with their epilogues. The unpruned model and four pruned ones
(uniform keep 0.75 and 0.375, random per group around 0.6 and 0.35; never an anchor's half or quarter) are
measured in one interleaved run with the two anchors (onnxruntime, the cpu profile's one thread, medians of
rounds); both predictors are fitted on that run's anchors (profiling times each whole model once, and a slow
phase of this shared machine doubled one), and each prediction is compared with the measurement, absolute
and as a ratio to the unpruned model. The analytic model (the cpu profile's roofline) is compared too, as
ratios, with and without the epilogues' traffic.

    OMP_NUM_THREADS=1 python benchmarks/epilogue_pricing.py [--rounds 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hwprune.cost.analytic import predict_ms
from hwprune.cost.layers import Layer, model_layers
from hwprune.cost.lut import LatencyTable
from hwprune.cost.model_latency import (
    ANCHOR_FRACTIONS,
    analytic_predictor,
    anchor_counts,
    anchor_key,
    model_key,
    open_table,
    predictor_for,
)
from hwprune.cost.onnx_ops import input_shape, single_op_model
from hwprune.cost.op_timing import profile
from hwprune.cost.predictor import Anchor, TablePredictor, op_ms
from hwprune.cost.signature import OpSignature
from hwprune.cost.space import channel_choices, profile_signatures
from hwprune.export.onnx_export import export_onnx
from hwprune.graph.analyze import Analysis, analyze
from hwprune.pipeline.profiling import profile_model
from hwprune.runtime import runtime_for
from hwprune.runtime.timing import Timing
from hwprune.targets import Target, load_target
from hwprune.transform.prune import leading_channels, pruned_copy


class ConvertedCNN(nn.Module):
    """Convs whose BatchNorms a converter wrote as a Mul and an Add of (1, C, 1, 1) constants."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 64, 128, 128), strides: tuple[int, ...] = (2, 1, 2, 1, 2)):
        super().__init__()
        self.convs = nn.ModuleList()
        for i, (c_in, c_out, stride) in enumerate(zip((3, *widths), widths, strides, strict=False)):
            self.convs.append(nn.Conv2d(c_in, c_out, 3, stride, 1))
            self.register_buffer(f"scale{i}", torch.rand(1, c_out, 1, 1) + 0.5)
            self.register_buffer(f"shift{i}", torch.randn(1, c_out, 1, 1) * 0.1)
        self.head = nn.Linear(widths[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x) * getattr(self, f"scale{i}") + getattr(self, f"shift{i}"))
        return self.head(x.mean((2, 3)))


class LayerScaleMLP(nn.Module):
    """A patch embedding, then token-MLP blocks: a converted norm (Mul, Add) after fc1, a layer scale after fc2."""

    def __init__(self, patch: int = 48, dim: int = 192, hidden: int = 384, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(patch, dim)
        self.fc1 = nn.ModuleList(nn.Linear(dim, hidden) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, dim) for _ in range(depth))
        self.scale = nn.ParameterList(nn.Parameter(torch.rand(hidden) + 0.5) for _ in range(depth))
        self.shift = nn.ParameterList(nn.Parameter(torch.randn(hidden) * 0.1) for _ in range(depth))
        self.gamma = nn.ParameterList(nn.Parameter(torch.full((dim,), 0.1)) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for fc1, fc2, scale, shift, gamma in zip(self.fc1, self.fc2, self.scale, self.shift, self.gamma, strict=True):
            x = x + gamma * fc2(nn.functional.gelu(fc1(x) * scale + shift))
        return self.head(x.mean(1))


MODELS = {"converted_cnn": (ConvertedCNN, (1, 3, 96, 96)), "layer_scale_mlp": (LayerScaleMLP, (1, 196, 48))}


def bare(layers: list[Layer]) -> list[Layer]:
    """The layers as hwprune timed them before: without their epilogues."""
    return [replace(layer, signature=replace(layer.signature, epilogue="")) for layer in layers]


def configurations(analysis: Analysis, alignment: int, rng: random.Random) -> dict[str, dict[str, int]]:
    """Keep counts per prunable group: unpruned, the two anchors, two uniform levels and two random ones
    (jittered +-0.15)."""
    configs = {"unpruned": {}, **{f"anchor {f}": anchor_counts(analysis, alignment, f) for f in ANCHOR_FRACTIONS},
               "uniform 0.75": anchor_counts(analysis, alignment, 0.75),
               "uniform 0.375": anchor_counts(analysis, alignment, 0.375)}
    for level in (0.6, 0.35):
        configs[f"random ~{level}"] = {
            g.id: min(channel_choices(g, alignment),
                      key=lambda c, g=g, level=level: abs(c - (level + rng.uniform(-0.15, 0.15)) * g.channels))
            for g in analysis.prunable()}
    return configs


def measured_anchors(analysis: Analysis, table: LatencyTable, alignment: int, medians: dict[str, float]
                     ) -> list[Anchor]:
    """The anchors ``predictor_for`` fits on, with this run's interleaved medians written into ``table`` in place
    of profiling's (one whole-model timing each, which a slow phase of this shared machine can double)."""
    key = model_key(analysis.name, tuple(analysis.capture.example_input.shape))
    table.models[key] = medians["unpruned"]
    found = [Anchor({}, medians["unpruned"])]
    for fraction in ANCHOR_FRACTIONS:
        table.models[anchor_key(key, fraction)] = medians[f"anchor {fraction}"]
        found.append(Anchor(anchor_counts(analysis, alignment, fraction), medians[f"anchor {fraction}"]))
    return found


def analytic_bare(analysis: Analysis, layers: list[Layer], target: Target) -> TablePredictor:
    """The analytic model as it was before: its layers' roofline times without their epilogues."""
    table = LatencyTable({"runtime": "analytic"}, call_overhead_ms=0.0)
    groups = {g.id: g for g in analysis.groups}
    for sig in profile_signatures(bare(layers), groups, target.channel_alignment):
        ms = predict_ms(sig, target)
        table.put(sig, Timing(ms, ms, ms, 0.0, 1))
    return TablePredictor(bare(layers), table)


def epilogue_share(layers: list[Layer], table: LatencyTable) -> str:
    """What the epilogues add to their layers' single-op times at full width, in the table."""
    priced = [layer for layer in layers if layer.signature.epilogue]
    with_ = sum(op_ms(table, table.get(layer.signature).median_ms) for layer in priced)
    without = sum(op_ms(table, table.get(replace(layer.signature, epilogue="")).median_ms) for layer in priced)
    return (f"{len(priced)} of {len(layers)} layers have an epilogue; timed with it they take {with_:.3f} ms "
            f"against {without:.3f} ms bare ({100 * (with_ / without - 1):+.1f}%)")


SINGLE_OPS = (OpSignature("conv2d", 1, 64, 64, 28, 28, 3, 1, 1),
              OpSignature("conv_transpose2d", 1, 64, 64, 28, 28, 2, 2), OpSignature("linear", 1, 384, 384, 197, 1))


def single_ops(target: Target, rounds: int = 9) -> None:
    """Which ops' epilogues onnxruntime folds: each op alone and with a Mul and an Add, alternately."""
    runtime = runtime_for(target)
    print("one op, bare and with epilogue mul_add (onnxruntime, medians of alternating rounds):")
    for sig in SINGLE_OPS:
        pair = (sig, replace(sig, epilogue="mul_add"))
        times = [[runtime.time_graph(single_op_model(s), input_shape(s)).median_ms for s in pair]
                 for _ in range(rounds)]
        bare_ms, with_ms = (statistics.median(t[i] for t in times) for i in (0, 1))
        print(f"  {sig.op:<17} {bare_ms:.3f} ms bare, {with_ms:.3f} ms with it ({100 * (with_ms / bare_ms - 1):+.1f}%)")


def run(name: str, target: Target, folder: Path, rounds: int, rng: random.Random) -> None:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(shape)
    analysis = analyze(model, x, name)
    groups = {g.id: g for g in analysis.groups}
    table, path = open_table(target, folder / f"{name}.json", create=True)
    profile_model(analysis, target, table, every_width=True)
    layers = model_layers(analysis, target.default_dtype)
    profile(profile_signatures(bare(layers), groups, target.channel_alignment), table, target)
    table.save(path)
    configs = configurations(analysis, target.channel_alignment, rng)
    runtime = runtime_for(target)
    runners = []
    for i, counts in enumerate(configs.values()):
        pruned = pruned_copy(analysis, {g: leading_channels(analysis.group(g), n) for g, n in counts.items()})
        runners.append(runtime.load(export_onnx(pruned, x, folder / f"{name}-{i}.onnx")))
    measured = runtime.interleaved(runners, rounds)
    for runner in runners:
        runner.close()
    medians = {label: timing.median_ms for label, timing in zip(configs, measured.timings, strict=True)}
    before = TablePredictor(bare(layers), table, measured_anchors(analysis, table, target.channel_alignment, medians))
    now = predictor_for(analysis, table, target)
    print(f"\n{name}: {epilogue_share(layers, table)}")
    for label, predictor in (("before", before), ("now", now)):
        print(f"  {label}: f {predictor.fixed_ms:.3f} ms, k {predictor.layer_scale:.3f}, r {predictor.rest_ms:.3f} ms")
    print(f"  {'configuration':<15} {'measured ms':>11} {'ratio':>6} | {'before ms':>9} {'err':>6} {'ratio err':>9} "
          f"| {'now ms':>7} {'err':>6} {'ratio err':>9}")
    base = {label: p.predict({}).total_ms for label, p in (("before", before), ("now", now))}
    errors: dict[str, list[float]] = {"before": [], "now": []}
    for (label, counts), timing, ratio in zip(configs.items(), measured.timings, measured.ratios, strict=True):
        cells = []
        for kind, predictor in (("before", before), ("now", now)):
            ms = predictor.predict(counts).total_ms
            ratio_error = (ms / base[kind]) / ratio - 1
            if label.startswith(("uniform", "random")):
                errors[kind].append(abs(ratio_error))
            cells.append(f"{ms:>9.3f} {100 * (ms / timing.median_ms - 1):>+5.1f}% {100 * ratio_error:>+8.1f}%")
        print(f"  {label:<15} {timing.median_ms:>11.3f} {ratio:>6.3f} | {cells[0]} | {cells[1]}")
    print("  mean |ratio error| over the pruned ones that are no anchor: " + ", ".join(
        f"{kind} {100 * statistics.mean(values):.2f}%" for kind, values in errors.items()))
    analytic = {"before": analytic_bare(analysis, layers, target), "now": analytic_predictor(analysis, target)}
    ratio_errors = {kind: [abs(p.predict(counts).total_ms / p.predict({}).total_ms / ratio - 1)
                           for (label, counts), ratio in zip(configs.items(), measured.ratios, strict=True)
                           if label.startswith(("uniform", "random"))] for kind, p in analytic.items()}
    print("  analytic model (cpu profile): unpruned " + ", ".join(
        f"{kind} {p.predict({}).total_ms:.3f} ms" for kind, p in analytic.items())
        + f" (measured {medians['unpruned']:.3f}); mean |ratio error| " + ", ".join(
        f"{kind} {100 * statistics.mean(values):.2f}%" for kind, values in ratio_errors.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    target = load_target("cpu")
    rng = random.Random(args.seed)
    single_ops(target)
    with tempfile.TemporaryDirectory(prefix="epilogue-pricing-") as folder:
        for name in args.models.split(","):
            run(name, target, Path(folder), args.rounds, rng)


if __name__ == "__main__":
    main()
