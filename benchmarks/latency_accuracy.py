"""Predicted vs measured end-to-end latency on the ``cpu`` target, unpruned and randomly pruned.

For each model: profile its search space into the latency table (cached across runs), then for
the unpruned model and two random pruning levels (each prunable group keeps a random allowed
channel count around 70% and 40%), predict the latency from the table and measure the exported
ONNX model with onnxruntime (the cpu profile's threads and optimisation level, median of timed
runs). Prints a table, the mean absolute percentage error (MAPE) and the worst error.

The predictor is calibrated at profile time on three whole-model measurements (the unpruned
model, and every group at about half and a quarter of its width), so the unpruned rows' error is
run-to-run noise; the pruned rows (random widths per group, not the anchors' uniform ones) test
the predictor.
The run-to-run spread is printed too (each unpruned model is measured again at the end), so a
reader can tell noise from error.

    python benchmarks/latency_accuracy.py [--models resnet18,mobilenet_v2] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hwprune.cost.layers import model_layers
from hwprune.cost.model_latency import open_table, predictor_for
from hwprune.cost.space import channel_choices
from hwprune.frontends import load_model
from hwprune.graph.analyze import analyze
from hwprune.pipeline.profiling import measure_model, profile_model
from hwprune.targets import load_target
from hwprune.transform.prune import leading_channels, prune

MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
          "regnet_y_400mf", "mnasnet1_0", "squeezenet1_1", "googlenet")
LEVELS = (1.0, 0.7, 0.4)


def random_counts(analysis, alignment: int, level: float, rng: random.Random) -> dict[str, int]:
    """Per prunable group, an allowed keep count near ``level`` of its channels (jittered +-0.15)."""
    counts = {}
    for group in analysis.prunable():
        choices = channel_choices(group, alignment)
        wanted = min(1.0, max(0.05, level + rng.uniform(-0.15, 0.15))) * group.channels
        counts[group.id] = min(choices, key=lambda c: abs(c - wanted))
    return counts


def evaluate(name: str, level: float, target, table, rng: random.Random) -> dict:
    loaded = load_model(f"torchvision:{name}")
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    predictor = predictor_for(analysis, table, target)
    counts = {} if level == 1.0 else random_counts(analysis, target.channel_alignment, level, rng)
    prediction = predictor.predict(counts)
    model = prune(analysis, {g: leading_channels(analysis.group(g), n) for g, n in counts.items()})
    measured = measure_model(model, loaded.example_input, target)
    params = sum(p.numel() for p in model.parameters()) / analysis.capture.params
    return {"model": name, "level": level, "params": params, "predicted": prediction.total_ms,
            "source": prediction.source, "measured": measured.median_ms, "spread": measured.spread,
            "error": (prediction.total_ms - measured.median_ms) / measured.median_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    target = load_target("cpu")
    table, path = open_table(target, create=True)
    names = args.models.split(",")
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        for name in names:
            loaded = load_model(f"torchvision:{name}")
            analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
            before = time.perf_counter()
            measured = profile_model(analysis, target, table, progress)
            table.save(path)
            console.print(f"profiled {name}: {len(model_layers(analysis))} layers, {measured} new measurements "
                          f"in {time.perf_counter() - before:.0f} s")
    rng = random.Random(args.seed)
    rows = [evaluate(name, level, target, table, rng) for name in names for level in LEVELS]
    repeats = {name: measure_model(*_unpruned(name), target).median_ms for name in names}
    show(console, rows, repeats, table.provenance, time.perf_counter() - started)


def _unpruned(name: str):
    loaded = load_model(f"torchvision:{name}")
    return loaded.module, loaded.example_input


def show(console: Console, rows: list[dict], repeats: dict[str, float], provenance: dict, seconds: float) -> None:
    table = Table(title=f"predicted vs measured latency, cpu target (onnxruntime {provenance['runtime_version']}, "
                        f"{provenance['threads']} thread, {provenance['graph_optimization_level']})")
    for column in ("model", "keep level", "params kept", "predicted ms", "source", "measured ms", "spread",
                   "error"):
        table.add_column(column, justify="left" if column in ("model", "source") else "right")
    for row in rows:
        table.add_row(row["model"], f"{row['level']:.1f}", f"{100 * row['params']:.0f}%", f"{row['predicted']:.2f}",
                      row["source"], f"{row['measured']:.2f}", f"{100 * row['spread']:.0f}%",
                      f"{100 * row['error']:+.1f}%")
    console.print(table)
    errors = [abs(r["error"]) for r in rows]
    pruned = [abs(r["error"]) for r in rows if r["level"] < 1.0]
    console.print(f"MAPE all {100 * statistics.mean(errors):.1f}% (worst {100 * max(errors):.1f}%), "
                  f"pruned only {100 * statistics.mean(pruned):.1f}% (worst {100 * max(pruned):.1f}%), "
                  f"{len(rows)} configurations")
    noise = [abs(repeats[r["model"]] - r["measured"]) / r["measured"] for r in rows if r["level"] == 1.0]
    console.print(f"run-to-run spread of the unpruned models (same model measured twice): mean "
                  f"{100 * statistics.mean(noise):.1f}%, worst {100 * max(noise):.1f}%; total {seconds:.0f} s")


if __name__ == "__main__":
    main()
