"""Does `hwprune compile` hit the requested speedup, and is it more faithful than uniform pruning?

For each model and latency budget on the ``cpu`` target: run the whole compile (cached latency
table, random weights, random calibration inputs; ``--search width``: this compares channel
allocation with uniform channel pruning, depth is ``depth_merge.py``'s) and read the measured
speedup from its report. Then prune the same weights with torch-pruning's uniform L1-magnitude pruning, with and
without ``round_to`` (the target's channel alignment), bisecting the pruning ratio until its
measured latency matches hwprune's (each measured against the same baseline ONNX, interleaved),
and compare fidelity to the unpruned model (mean cosine of outputs, top-1 agreement) on the same
held-out random inputs (seeded apart from the calibration inputs the compile used), hwprune's
read from its exported pruned.onnx.

Weights are random (none can be downloaded here), with norm parameters and BN statistics
re-drawn and calibrated (tests/zoo.py) so that outputs are not degenerate. Fidelity on random
weights and inputs is a proxy: it ranks pruning choices by how much of the computation they
preserve, not by accuracy on a task.

    python benchmarks/budget_accuracy.py [--models resnet18,resnet50] [--budgets 0.5,0.7] [--importance activation]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy
import torch
import torch_pruning as tp
from rich.console import Console
from rich.table import Table
from torch import nn

from hwprune.config import Budget, Options
from hwprune.evaluate.calibration import fidelity
from hwprune.export.onnx_export import export_onnx
from hwprune.frontends import LoadedModel, load_model
from hwprune.pipeline.compile import compile_model
from hwprune.runtime.ort import OnnxRuntime, make_session, random_feeds
from hwprune.runtime.timing import interleave
from hwprune.targets import load_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.zoo import randomize_model  # noqa: E402

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf")
BUDGETS = (0.5, 0.7)
BISECTION_STEPS = 7


def uniform_pruned(model: nn.Module, x: torch.Tensor, ratio: float, round_to: int | None) -> nn.Module:
    """torch-pruning's uniform (per-layer) L1 magnitude pruning; the classifier's outputs stay."""
    pruned = copy.deepcopy(model)
    classes = pruned(x).shape[-1]
    ignored = [m for m in pruned.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    pruner = tp.pruner.BasePruner(pruned, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to)
    pruner.step()
    return pruned.eval()


def measured_fraction(model: nn.Module, x: torch.Tensor, baseline_session, threads: int, level: str,
                      tmp: Path) -> float:
    path = export_onnx(model, x, tmp / "measured.onnx")
    session = make_session(str(path), threads, level)
    feeds = random_feeds(baseline_session)
    runs = [lambda: baseline_session.run(None, feeds), lambda: session.run(None, feeds)]
    return interleave(runs, rounds=12).ratios[1]


def matched_uniform(model, x, goal: float, round_to, baseline_session, threads, level, tmp) -> dict:
    """Bisect the pruning ratio for a measured latency fraction nearest ``goal``."""
    return bisect_latency(lambda ratio: uniform_pruned(model, x, ratio, round_to),
                          lambda pruned: measured_fraction(pruned, x, baseline_session, threads, level, tmp),
                          goal, 0.0, 0.9, faster_when_higher=True, steps=BISECTION_STEPS)


def bisect_latency(build: Callable[[float], nn.Module], measure: Callable[[nn.Module], float], goal: float,
                   low: float, high: float, faster_when_higher: bool, steps: int, first: float | None = None) -> dict:
    """Bisect a pruning knob in [low, high] (starting at ``first`` if given, else the middle) for the
    model whose measured latency fraction is nearest ``goal``: ``{"knob", "fraction", "model"}``."""
    best = None
    for step in range(steps):
        knob = first if step == 0 and first is not None else (low + high) / 2
        model = build(knob)
        fraction = measure(model)
        if best is None or abs(fraction - goal) < abs(best["fraction"] - goal):
            best = {"knob": knob, "fraction": fraction, "model": model}
        if (fraction > goal) == faster_when_higher:
            low = knob
        else:
            high = knob
    return best


def held_out_batches(x: torch.Tensor) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn((8, *x.shape[1:]), generator=generator) for _ in range(4)]


class OnnxModule(nn.Module):
    """An exported static-batch ONNX file run sample by sample, so it can be compared like a module."""

    def __init__(self, path: Path, threads: int, level: str):
        super().__init__()
        self.session = make_session(str(path), threads, level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.session.run(None, {"input": sample[None].numpy()})[0] for sample in x]
        return torch.from_numpy(numpy.concatenate(outputs))


def run(name: str, budget: float, target, importance: str, console: Console) -> dict:
    loaded = load_model(f"torchvision:{name}")
    x = loaded.example_input
    with torch.no_grad():  # random weights, with BN statistics calibrated so that outputs are not degenerate
        original = randomize_model(loaded.module, torch.randn((16, *x.shape[1:]))).eval()
    with tempfile.TemporaryDirectory(prefix="hwprune-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        model = LoadedModel(loaded.name, copy.deepcopy(original), x, "re-initialised by the benchmark", None)
        report = compile_model(model, Options(target, Budget("latency", budget), importance=importance,
                                              search="width"), tmp / "out",
                               Console(quiet=True)).report
        seconds = time.perf_counter() - started
        achieved = 1.0 / report.speedup.measured
        threads, level = OnnxRuntime(target).settings
        baseline_session = make_session(str(tmp / "out" / "baseline.onnx"), threads, level)
        batches = held_out_batches(x)
        ours = fidelity(original, OnnxModule(tmp / "out" / "pruned.onnx", threads, level), batches)
        row = {"model": name, "budget": budget, "requested": 1 / budget, "measured": report.speedup.measured,
               "predicted": report.speedup.predicted, "seconds": seconds,
               "hwprune": (ours.cosine, ours.top1_agreement)}
        for label, round_to in (("uniform", None), ("uniform_round", target.channel_alignment)):
            match = matched_uniform(original, x, achieved, round_to, baseline_session, threads, level, tmp)
            quality = fidelity(original, match["model"], batches)
            row[label] = (quality.cosine, quality.top1_agreement)
            row[f"{label}_fraction"] = match["fraction"]
            row[f"{label}_ratio"] = match["knob"]
    row["within"] = abs(row["measured"] / row["requested"] - 1) <= 0.10
    console.print(f"{name} @ {budget}: measured {row['measured']:.2f}x (requested {row['requested']:.2f}x), "
                  f"fidelity hwprune {row['hwprune'][0]:.4f} vs uniform {row['uniform'][0]:.4f} / "
                  f"rounded {row['uniform_round'][0]:.4f}")
    return row


def show(console: Console, rows: list[dict]) -> None:
    table = Table(title="hwprune compile on cpu: requested vs measured speedup; fidelity vs uniform pruning at the "
                        "same measured latency (cosine / top-1 agreement)")
    for column in ("model", "budget", "requested", "measured", "predicted", "within 10%", "hwprune",
                   "tp uniform (lat.)", "tp round_to (lat.)", "compile s"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def pair(values: tuple) -> str:
        return f"{values[0]:.4f} / {100 * values[1]:.0f}%"

    for r in rows:
        table.add_row(r["model"], f"{r['budget']:.1f}", f"{r['requested']:.2f}x", f"{r['measured']:.2f}x",
                      f"{r['predicted']:.2f}x", "yes" if r["within"] else "NO", pair(r["hwprune"]),
                      f"{pair(r['uniform'])} ({r['uniform_fraction']:.2f})",
                      f"{pair(r['uniform_round'])} ({r['uniform_round_fraction']:.2f})", f"{r['seconds']:.0f}")
    console.print(table)
    errors = [abs(r["measured"] / r["requested"] - 1) for r in rows]
    gains = [r["hwprune"][0] - max(r["uniform"][0], r["uniform_round"][0]) for r in rows]
    console.print(f"speedup within 10% of requested: {sum(r['within'] for r in rows)}/{len(rows)} (mean error "
                  f"{100 * statistics.mean(errors):.1f}%, worst {100 * max(errors):.1f}%); cosine hwprune minus the "
                  f"better uniform: mean {statistics.mean(gains):+.4f}, worst {min(gains):+.4f}; "
                  f"hwprune at least as faithful in {sum(g >= 0 for g in gains)}/{len(rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    parser.add_argument("--importance", default="activation", help="the compile's --importance (activation)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    console = Console(width=200)
    target = load_target("cpu")
    torch.manual_seed(0)
    rows = [run(name, float(b), target, args.importance, console) for name in args.models.split(",")
            for b in args.budgets.split(",")]
    show(console, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
