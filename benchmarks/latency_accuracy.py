"""Predicted vs measured end-to-end latency on the ``cpu`` target, unpruned and randomly pruned.

For each model: profile its search space into two latency tables, one adaptively (hwprune's default:
a coarse pass over each layer's widths, then the stretches a line through it misses) and one at every
width, counting the measurements each took; then for the unpruned model and two random pruning
levels (each prunable group keeps a random allowed channel count around 70% and 40%), predict the
latency from each table and measure the exported ONNX model once with onnxruntime (the cpu profile's
threads and optimisation level, median of timed runs). Prints a table, and per table the mean
absolute percentage error (MAPE) and the worst error.

The predictor is calibrated at profile time on three whole-model measurements (the unpruned
model, and every group at about half and a quarter of its width), so the unpruned rows' error is
run-to-run noise; the pruned rows (random widths per group, not the anchors' uniform ones) test
the predictor.
The run-to-run spread is printed too (each unpruned model is measured again at the end), so a
reader can tell noise from error.

    python benchmarks/latency_accuracy.py [--models resnet18,mobilenet_v2] [--seed 0] [--tables DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

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
KINDS = ("adaptive", "every-width")  # how each table was profiled (pipeline.profiling.profile_model)


def random_counts(analysis, alignment: int, level: float, rng: random.Random) -> dict[str, int]:
    """Per prunable group, an allowed keep count near ``level`` of its channels (jittered +-0.15)."""
    counts = {}
    for group in analysis.prunable():
        choices = channel_choices(group, alignment)
        wanted = min(1.0, max(0.05, level + rng.uniform(-0.15, 0.15))) * group.channels
        counts[group.id] = min(choices, key=lambda c: abs(c - wanted))
    return counts


def evaluate(name: str, level: float, target, tables: dict, rng: random.Random) -> dict:
    """One configuration measured once and predicted from each table."""
    loaded = load_model(f"torchvision:{name}")
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    predictors = {kind: predictor_for(analysis, table, target) for kind, table in tables.items()}
    counts = {} if level == 1.0 else random_counts(analysis, target.channel_alignment, level, rng)
    predictions = {kind: predictor.predict(counts) for kind, predictor in predictors.items()}
    model = prune(analysis, {g: leading_channels(analysis.group(g), n) for g, n in counts.items()})
    measured = measure_model(model, loaded.example_input, target)
    params = sum(p.numel() for p in model.parameters()) / analysis.capture.params
    return {"model": name, "level": level, "params": params, "measured": measured.median_ms,
            "spread": measured.spread,
            "predicted": {kind: p.total_ms for kind, p in predictions.items()},
            "source": {kind: p.source for kind, p in predictions.items()},
            "error": {kind: (p.total_ms - measured.median_ms) / measured.median_ms for kind, p in predictions.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables", type=Path, default=None,
                        help="folder for the two tables, adaptive.json and every-width.json (default: a temporary "
                             "folder; a rerun with the same folder times nothing twice)")
    args = parser.parse_args()
    console = Console()
    target = load_target("cpu")
    folder = args.tables or Path(tempfile.mkdtemp(prefix="latency-accuracy-"))
    folder.mkdir(parents=True, exist_ok=True)
    tables = {kind: open_table(target, folder / f"{kind}.json", create=True) for kind in KINDS}
    names = args.models.split(",")
    started = time.perf_counter()
    counts = {kind: 0 for kind in KINDS}
    with Progress(console=console, transient=True) as progress:
        for name in names:
            loaded = load_model(f"torchvision:{name}")
            analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
            for kind, (table, path) in tables.items():
                before = time.perf_counter()
                measured = profile_model(analysis, target, table, progress, every_width=kind == "every-width")
                table.save(path)
                counts[kind] += measured
                console.print(f"profiled {name} ({kind}): {len(model_layers(analysis))} layers, {measured} new "
                              f"measurements in {time.perf_counter() - before:.0f} s")
    rng = random.Random(args.seed)
    rows = [evaluate(name, level, target, {k: t for k, (t, _) in tables.items()}, rng)
            for name in names for level in LEVELS]
    repeats = {name: measure_model(*_unpruned(name), target).median_ms for name in names}
    show(console, rows, repeats, tables["adaptive"][0].provenance, time.perf_counter() - started, counts)


def _unpruned(name: str):
    loaded = load_model(f"torchvision:{name}")
    return loaded.module, loaded.example_input


def show(console: Console, rows: list[dict], repeats: dict[str, float], provenance: dict, seconds: float,
         counts: dict[str, int]) -> None:
    table = Table(title=f"predicted vs measured latency, cpu target (onnxruntime {provenance['runtime_version']}, "
                        f"{provenance['threads']} thread, {provenance['graph_optimization_level']})")
    for column in ("model", "keep level", "params kept", "measured ms", "spread",
                   *(f"{kind} predicted ms" for kind in KINDS), *(f"{kind} error" for kind in KINDS)):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], f"{row['level']:.1f}", f"{100 * row['params']:.0f}%", f"{row['measured']:.2f}",
                      f"{100 * row['spread']:.0f}%", *(f"{row['predicted'][k]:.2f}" for k in KINDS),
                      *(f"{100 * row['error'][k]:+.1f}%" for k in KINDS))
    console.print(table)
    for kind in KINDS:
        errors = [abs(r["error"][kind]) for r in rows]
        pruned = [abs(r["error"][kind]) for r in rows if r["level"] < 1.0]
        console.print(f"{kind}: {counts[kind]} single-op and whole-model measurements; MAPE all "
                      f"{100 * statistics.mean(errors):.1f}% (worst {100 * max(errors):.1f}%), pruned only "
                      f"{100 * statistics.mean(pruned):.1f}% (worst {100 * max(pruned):.1f}%), "
                      f"{len(rows)} configurations")
    noise = [abs(repeats[r["model"]] - r["measured"]) / r["measured"] for r in rows if r["level"] == 1.0]
    console.print(f"run-to-run spread of the unpruned models (same model measured twice): mean "
                  f"{100 * statistics.mean(noise):.1f}%, worst {100 * max(noise):.1f}%; total {seconds:.0f} s")


if __name__ == "__main__":
    main()
