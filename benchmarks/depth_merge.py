"""Depth and merge joint with width: what the joint search buys, on a launch-bound target, on a
published span table, and measured on this CPU.

    python benchmarks/depth_merge.py [--parts fixedcost,jetson,spantable,cpu,digits] [--json FILE]

- ``fixedcost``: the per-layer fixed cost a launch-bound target charges, fitted on real TensorRT
  measurements: on the RTX 2080 Ti span table (``gpu_analytic_check.py``'s fit: one constant per
  timed layer beside the analytic op time), and on the whole-model torch2trt fp16 latencies of 29
  torchvision models on Jetson Xavier and Nano (``../shared/data/jetson-trt-fp16-torchvision``):
  latency = a x GFLOPs + b x activation MB + c x conv/linear layers, by non-negative least squares
  on relative errors, over the models without channel concatenation or splits (DenseNet,
  SqueezeNet and ShuffleNet pay for copies that no term here sees).

- ``jetson``: ``compile torchvision:mobilenet_v2 --target jetson-orin-nano --latency 0.5`` with
  calibrated random weights (BatchNorm statistics set on noise, so outputs are not degenerate),
  ``--search width`` against ``--search joint``: parameters kept, conv/linear layers, merges and
  drops, and output cosine on held-out noise. Predicted by the analytic model (no TensorRT here),
  once with the profile's per-layer cost as shipped (``launch_overhead_us``: fitted on the Xavier
  rows, as ``fixedcost`` shows; the Orin Nano is measured nowhere here) and once with the 10 us the
  profile assumed before, to show how much the result rests on that number.
- ``spantable``: the span DP (``search.spandp``) on the published TensorRT span table of
  MobileNetV2-1.0 (RTX 2080 Ti, ``../shared/data/trt-rtx2080ti-mobilenetv2``), with each span's
  importance measured here (1 - output cosine with its activations removed and its padding moved,
  on a MobileNetV2 with calibrated random weights): the spans chosen at the paper's two budgets
  (1.41x and 1.95x of the table's unmerged latency), their summed table latency, the solve time.
  Only spans hwprune can merge are offered (its chains stop at residual adds; a span covering a
  whole residual block folds the skip); the rest of the table is left out and counted.
- ``cpu``: ``--search width|depth|joint`` at 0.5 and 0.7 on resnet34, mobilenet_v2, efficientnet_b0
  (calibrated random weights) and a residual CNN built in code: measured latency fraction (each
  compile refines to within 5% of the request, so the three are at equal measured latency within
  that), held-out output cosine, merges and drops, joint search time per round.
- ``digits``: the same three searches on a CNN trained here on scikit-learn's digits, 0.5 and 0.7,
  with the training images as calibration data: held-out accuracy.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hwprune.config import Budget, Options
from hwprune.cost.layers import model_layers
from hwprune.cost.structural import depth_options, merge_key
from hwprune.evaluate.calibration import fidelity
from hwprune.frontends import LoadedModel, load_model
from hwprune.graph.analyze import analyze
from hwprune.graph.spans import depth_candidates
from hwprune.importance.option_costs import depth_costs
from hwprune.pipeline.compile import compile_model
from hwprune.pipeline.score import TAKING
from hwprune.runtime.ort import OnnxRuntime
from hwprune.search.spandp import span_dp
from hwprune.targets import load_target

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from budget_accuracy import OnnxModule, held_out_batches  # noqa: E402

from tests.zoo import ZOO, randomize_model  # noqa: E402

SPAN_TABLE = ROOT / ".." / "shared" / "data" / "trt-rtx2080ti-mobilenetv2" / "time_fish_gpu1_1228.csv"
CPU_MODELS = ("resnet34", "mobilenet_v2", "efficientnet_b0", "zoo:resnet_basic")
SEARCHES = ("width", "depth", "joint")


def calibrated(spec: str) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """The model with seeded random weights, BatchNorm statistics set on seeded noise."""
    torch.manual_seed(0)
    if spec.startswith("zoo:"):
        model, x = ZOO[spec[4:]]()
        name = spec
    else:
        loaded = load_model(f"torchvision:{spec}")
        model, x, name = loaded.module, loaded.example_input, loaded.name
    with torch.no_grad():
        model = randomize_model(model, torch.randn((16, *x.shape[1:]))).eval()
    return name, model, x


def compile_one(name: str, model: torch.nn.Module, x: torch.Tensor, target, budget: float, search: str,
                out: Path, calib: str | None = None) -> dict:
    started = time.perf_counter()
    target = load_target(target) if isinstance(target, str) else target
    try:
        report = compile_model(LoadedModel(name, copy.deepcopy(model), x, "re-initialised by the benchmark", None),
                               Options(target, Budget("latency", budget), calib_data=calib,
                                       search=search), out, Console(quiet=True)).report
    except Exception as exc:  # a search that cannot reach the budget is a result here
        return {"search": search, "error": str(exc).splitlines()[0]}
    depth = report.depth
    rounds = [a.search_seconds for a in report.search.attempts]
    return {"search": search, "strategy": report.search.strategy, "params": report.pruned.params,
            "params_before": report.baseline.params, "predicted": 1 / report.speedup.predicted,
            "measured": None if report.speedup.measured is None else 1 / report.speedup.measured,
            "layers": (depth["layers_before"], depth["layers_after"]), "merged": len(depth["merged"]),
            "dropped": len(depth["dropped"]), "search_seconds": max(rounds), "seconds": time.perf_counter() - started}


JETSON_DATA = ROOT / ".." / "shared" / "data" / "jetson-trt-fp16-torchvision"
ASSUMED_BEFORE_US = 10.0  # the Jetson profiles' per-layer cost before it was fitted: the sensitivity check
# Channel concatenation and splits cost copies that neither FLOPs nor layer counts see: left out of the fit.
CONCAT_MODELS = ("densenet", "squeezenet", "shufflenet")


def fixed_cost(console: Console) -> dict:
    """Per-layer fixed cost fitted on the span table and on the Jetson whole-model rows."""
    from gpu_analytic_check import DEFAULT_DATA, TIMES, harness_ms, load_rows, mapped_layers

    from hwprune.cost.predictor import nonnegative_least_squares
    from hwprune.pipeline.finish import count_flops

    rows = load_rows(DEFAULT_DATA / TIMES)
    layers, _ = mapped_layers(rows)
    spans = harness_ms(rows, layers, load_target("rtx-2080ti-trt84-fp32"))
    singles = sum(r["ms"] for r in rows if r["end"] - r["st"] == 1)
    result = {"rtx2080ti_span_table_ms": spans, "rtx2080ti_share_of_layer_sum": 50 * spans / singles}
    console.print(f"RTX 2080 Ti span table (TensorRT 8.4 fp32, batch 128): {spans:.3f} ms per timed layer, "
                  f"{100 * result['rtx2080ti_share_of_layer_sum']:.0f}% of the 50 layers' summed time")
    shapes: dict[str, tuple[float, float, int]] = {}
    for device in ("xavier", "nano"):
        table = list(csv.DictReader((JETSON_DATA / f"jetson_{device}.csv").open()))
        features, measured = [], []
        for row in table:
            name = row["model"]
            if name.startswith(CONCAT_MODELS):
                continue
            if name not in shapes:
                model = load_model(f"torchvision:{name}").module.eval()
                x = torch.zeros(1, 3, 224, 224)
                activations: list[int] = []

                def record(_module, _inputs, output, into=activations) -> None:
                    into.append(output.numel())

                hooks = [m.register_forward_hook(record) for m in model.modules()
                         if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
                flops = count_flops(model, x)
                for hook in hooks:
                    hook.remove()
                shapes[name] = (flops / 1e9, 2 * sum(activations) / 1e6, len(hooks))
            features.append(shapes[name])
            measured.append(float(row["latency_ms_tensorrt"]))
        import numpy

        columns, targets = numpy.array(features), numpy.array(measured)
        # relative errors: every model's latency counts alike, whatever its size
        a, b, c = nonnegative_least_squares(columns / targets[:, None], numpy.ones_like(targets))
        error = numpy.abs(columns @ numpy.array([a, b, c]) - targets) / targets
        result[device] = {"ms_per_gflop": a, "ms_per_activation_mb": b, "us_per_layer": 1e3 * c,
                          "mape": float(error.mean()), "models": len(targets)}
        console.print(f"Jetson {device} (torch2trt fp16, batch 1, {len(targets)} models): {1e3 * c:.1f} us per "
                      f"conv/linear layer, {a:.3f} ms/GFLOP, {b:.4f} ms/activation MB; fit MAPE "
                      f"{100 * error.mean():.0f}%")
    return result


def jetson(console: Console, overhead_us: float | None = None) -> list[dict]:
    from dataclasses import replace

    name, model, x = calibrated("mobilenet_v2")
    target = load_target("jetson-orin-nano")
    if overhead_us is not None:
        target = replace(target, analytic=replace(target.analytic, launch_overhead_us=overhead_us))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for search in ("width", "joint"):
            row = compile_one(name, model, x, target, 0.5, search, Path(tmp) / search)
            row["launch_overhead_us"] = target.analytic.launch_overhead_us
            if "error" not in row:
                threads, level = OnnxRuntime(load_target("cpu")).settings
                quality = fidelity(model, OnnxModule(Path(tmp) / search / "pruned.onnx", threads, level),
                                   held_out_batches(x))
                row["cosine"] = quality.cosine
            rows.append(row)
            console.print(f"jetson-orin-nano mobilenet_v2 0.5 {search} ({target.analytic.launch_overhead_us:.1f} us "
                          f"per layer): {row}")
    return rows


def span_table(console: Console) -> dict:
    """The span DP on the published table with importance measured here."""
    rows = list(csv.DictReader(SPAN_TABLE.open()))
    times = {(int(r["st"]), int(r["end"])): float(r["time"]) for r in rows}
    name, model, x = calibrated("mobilenet_v2")
    analysis = analyze(model, x, name, strict=False)
    numbered = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][1:-1]  # stem, last: unnumbered
    n = len(numbered)
    found = depth_candidates(model)
    options = {o.key: o for o in depth_options(analysis, found, model_layers(analysis))}
    offered, keys = {}, {}
    for (start, end), ms in times.items():
        if end - start == 1:
            offered[(start, end)] = ms
            continue
        convs = tuple(numbered[start:end])
        span = found.span(convs) or next((s for s in found.spans if s.convs == convs and s.skip), None)
        if span is not None and merge_key(span) in options:
            offered[(start, end)], keys[(start, end)] = ms, merge_key(span)
    batch = torch.randn((8, *x.shape[1:]), generator=torch.Generator().manual_seed(7))
    started = time.perf_counter()
    costs = depth_costs(model, x, [options[k] for k in set(keys.values())], batch, taking=TAKING)
    importance_seconds = time.perf_counter() - started
    values = {span: -costs[key] for span, key in keys.items()}
    unmerged = sum(times[(p, p + 1)] for p in range(n))
    result = {"rows": len(times), "offered": len(offered), "importance_seconds": importance_seconds,
              "unmerged_ms": unmerged, "budgets": {}}
    for speedup in (1.41, 1.95):
        budget = unmerged / speedup
        started = time.perf_counter()
        cut = span_dp(offered, values, n, budget)
        seconds = time.perf_counter() - started
        merged = [s for s in cut.spans if s[1] - s[0] > 1] if cut else []
        result["budgets"][str(speedup)] = {
            "budget_ms": budget, "latency_ms": cut.latency if cut else None, "merged": merged,
            "cost": -cut.value if cut else None, "solve_seconds": seconds}
        console.print(f"span table, {speedup}x ({budget:.2f} ms of {unmerged:.2f}): "
                      + (f"{len(merged)} spans merged {merged}, table latency {cut.latency:.2f} ms, summed cost "
                         f"{-cut.value:.4f}, solved in {seconds:.2f} s" if cut else "no cut fits"))
    return result


def cpu(console: Console, models: list[str], budgets: list[float]) -> list[dict]:
    rows = []
    threads, level = OnnxRuntime(load_target("cpu")).settings
    for spec in models:
        name, model, x = calibrated(spec)
        batches = held_out_batches(x)
        for budget in budgets:
            with tempfile.TemporaryDirectory() as tmp:
                for search in SEARCHES:
                    row = compile_one(name, model, x, "cpu", budget, search, Path(tmp) / search)
                    if "error" not in row:
                        quality = fidelity(model, OnnxModule(Path(tmp) / search / "pruned.onnx", threads, level),
                                           batches)
                        row["cosine"] = quality.cosine
                    rows.append({"model": spec, "budget": budget, **row})
                    console.print(rows[-1])
    return rows


def digits(console: Console, budgets: list[float]) -> list[dict]:
    from tests.data import digits as data

    trained = data.fit()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "digits.pt"
        torch.save(trained.state_dict(), weights)
        import os

        os.environ["DIGITS_WEIGHTS"] = str(weights)
        spec = f"{ROOT / 'tests' / 'data' / 'digits.py'}:digits_cnn"
        loaded = load_model(spec)
        _, _, test_x, test_y = data._split()

        def accuracy(model: torch.nn.Module) -> float:
            with torch.no_grad():
                return float((model(test_x).argmax(1) == test_y).float().mean())

        rows = [{"model": "digits", "budget": None, "search": "unpruned", "accuracy": accuracy(loaded.module)}]
        for budget in budgets:
            for search in SEARCHES:
                out = Path(tmp) / f"{search}-{budget}"
                row = compile_one(spec, loaded.module, loaded.example_input, "cpu", budget, search, out,
                                  calib=f"{ROOT / 'tests' / 'data' / 'digits.py'}:calib")
                if "error" not in row:
                    from hwprune.plan import load_plan
                    from hwprune.transform.realise import realise

                    plan = load_plan(out / "plan.json")
                    model = realise(plan, analyze(loaded.module, loaded.example_input, spec, strict=False))
                    model.load_state_dict(torch.load(out / "pruned.pt", weights_only=True))
                    row["accuracy"] = accuracy(model.eval())
                rows.append({"model": "digits", "budget": budget, **row})
                console.print(rows[-1])
    return rows


def show(console: Console, title: str, rows: list[dict], quality: str) -> None:
    table = Table(title=title)
    for column in ("model", "budget", "search", "measured", "predicted", quality, "params kept", "layers",
                   "merged", "dropped", "allocation", "search s/round"):
        table.add_column(column, justify="left" if column in ("model", "search", "allocation") else "right")
    for r in rows:
        if "error" in r or r.get("search") == "unpruned":
            table.add_row(r["model"], str(r.get("budget")), r["search"], r.get("error", "")[:60] or
                          f"{100 * r['accuracy']:.1f}%")
            continue
        measured = "-" if r["measured"] is None else f"{r['measured']:.3f}"
        value = r.get(quality)
        table.add_row(r["model"], f"{r['budget']}", r["search"], measured, f"{r['predicted']:.3f}",
                      "-" if value is None else (f"{100 * value:.1f}%" if quality == "accuracy" else f"{value:.4f}"),
                      f"{r['params'] / r['params_before']:.2f}", f"{r['layers'][0]}->{r['layers'][1]}",
                      str(r["merged"]), str(r["dropped"]), r["strategy"], f"{r['search_seconds']:.2f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="fixedcost,jetson,spantable,cpu,digits")
    parser.add_argument("--models", default=",".join(CPU_MODELS))
    parser.add_argument("--budgets", default="0.5,0.7")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console(width=200)
    parts = args.parts.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    results: dict = {}
    if "fixedcost" in parts:
        results["fixedcost"] = fixed_cost(console)
    if "jetson" in parts:
        results["jetson"] = jetson(console) + jetson(console, ASSUMED_BEFORE_US)
        show(console, "mobilenet_v2 on jetson-orin-nano at 0.5 (analytic, predicted; per-layer cost as shipped, "
                      "fitted on Xavier, then the 10 us assumed before)",
             [{"model": f"mobilenet_v2 ({r['launch_overhead_us']:.1f} us)", "budget": 0.5, **r}
              for r in results["jetson"]], "cosine")
    if "spantable" in parts:
        results["spantable"] = span_table(console)
    if "cpu" in parts:
        results["cpu"] = cpu(console, args.models.split(","), budgets)
        show(console, "cpu (onnxruntime, measured): width vs depth vs joint, calibrated random weights",
             results["cpu"], "cosine")
    if "digits" in parts:
        results["digits"] = digits(console, budgets)
        show(console, "cpu: a CNN trained on digits, held-out accuracy", results["digits"], "accuracy")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
