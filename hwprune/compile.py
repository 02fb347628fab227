"""``hwprune compile``: analyze -> profile -> score -> search -> prune -> export -> verify -> measure.

The budget is a fraction of the baseline's latency on the target. The predictor is calibrated
at profile time, but a shared machine's speed drifts between then and now, so the fraction is
applied to the *predicted* baseline, and the result is checked by measuring baseline and pruned
ONNX files in one interleaved run. If the measured fraction misses the requested one by more
than ``tolerance``, the predicted budget is scaled by (requested / measured) and the search runs
again (at most ``refine`` times): the measurement, not the model, has the last word.

Artefacts are written to a staging folder inside ``out_dir`` and moved into place at the end,
``report.json`` last; a failed or interrupted compile leaves none that look finished.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwprune import __version__
from hwprune.calibration import fidelity, load_calibration
from hwprune.environment import fingerprint
from hwprune.errors import HwpruneError, PlanError
from hwprune.export.onnx_export import ONNX_OPSET, export_onnx, slim_available
from hwprune.export.verify import DEFAULT_ATOL, DEFAULT_RTOL, verify_onnx
from hwprune.graph.analyze import Analysis, analyze
from hwprune.importance.scores import Importance, score_groups
from hwprune.importance.sensitivity import group_sensitivity
from hwprune.io import write_text_atomic
from hwprune.latency.measure import Comparison, make_session, random_feeds, time_interleaved, time_session
from hwprune.latency.model_latency import open_table, predictor_for, profile_model
from hwprune.latency.predictor import TablePredictor
from hwprune.latency.profiler import runtime_settings
from hwprune.models import LoadedModel
from hwprune.plan import Plan, apply_plan, build_plan
from hwprune.report import markdown, write_plots
from hwprune.search.width import SearchResult, search_widths
from hwprune.targets import Target

ARTEFACTS = ("report.json", "report.md", "plan.json", "baseline.onnx", "pruned.onnx", "plots")


@dataclass(frozen=True)
class Budget:
    """``latency``: fraction of the baseline; ``speedup``: baseline / pruned; ``ms``: absolute."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind == "latency" and not 0 < self.value < 1:
            raise HwpruneError(f"--latency {self.value}: must be a fraction of the baseline in (0, 1)")
        if self.kind == "speedup" and not self.value > 1:
            raise HwpruneError(f"--speedup {self.value}: must be above 1")
        if self.kind == "ms" and not self.value > 0:
            raise HwpruneError(f"--budget-ms {self.value}: must be positive")
        if self.kind not in ("latency", "speedup", "ms"):
            raise HwpruneError(f"unknown budget kind {self.kind!r}")

    def fraction(self, baseline_ms: float) -> float:
        """The latency fraction of a baseline measured at ``baseline_ms`` that meets this budget."""
        if self.kind == "latency":
            return self.value
        if self.kind == "speedup":
            return 1.0 / self.value
        if self.value >= baseline_ms:
            raise HwpruneError(f"--budget-ms {self.value}: the unpruned model already runs in {baseline_ms:.3g} ms "
                               "here; nothing to prune")
        return self.value / baseline_ms


@dataclass
class Options:
    target: Target
    budget: Budget
    importance: str = "l1"
    calib_data: str | None = None
    min_keep: float = 0.1
    lut: Path | None = None
    refine: int = 2
    tolerance: float = 0.04
    exclude: tuple[str, ...] = ()
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    dynamic_batch: bool = False


@dataclass
class Attempt:
    search: SearchResult
    plan: Plan
    model: nn.Module
    onnx: Path
    comparison: Comparison

    @property
    def measured_fraction(self) -> float:
        return self.comparison.ratios[1]


def compile_model(loaded: LoadedModel, options: Options, out_dir: str | Path, console: Console | None = None) -> dict:
    """Run the whole pipeline; returns the report (also written to ``out_dir/report.json``)."""
    console = console or Console(stderr=True)
    out = _prepare(Path(out_dir))
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))
    try:
        report = _compile(loaded, options, stage, console)
        for name in ARTEFACTS[1:] + ARTEFACTS[:1]:  # report.json last: its presence means finished
            os.replace(stage / name, out / name)
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _prepare(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ARTEFACTS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise HwpruneError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK):
        raise HwpruneError(f"cannot write to {out}: permission denied")
    return out


def _compile(loaded: LoadedModel, options: Options, stage: Path, console: Console) -> dict:
    started = time.perf_counter()
    target, x = options.target, loaded.example_input
    step = partial(_step, console)
    calibration = load_calibration(options.calib_data, x)  # bad --calib-data fails before any work
    with step("analyze"):
        analysis = analyze(loaded.module, x, loaded.name, exclude=options.exclude, strict=False)
    if not analysis.prunable():
        raise PlanError(f"{loaded.name}: no prunable channel group (see hwprune analyze)")
    table, table_path = open_table(target, options.lut, create=True)
    with step("profile"), Progress(console=console, transient=True) as progress:
        new = profile_model(analysis, target, table, progress)
        table.save(table_path)
    console.print(f"  latency table {table_path}: {new} new measurements")
    predictor = predictor_for(analysis, table, target)
    with step("score"), Progress(console=console, transient=True) as progress:
        if calibration.random:
            console.print("  [yellow]warning:[/yellow] no --calib-data: importance and fidelity use random inputs")
        importance = score_groups(analysis, options.importance, calibration.batches)
        sensitivity = group_sensitivity(analysis, importance, calibration.batches[0], progress)
    with step("export baseline"):
        baseline_onnx = export_onnx(analysis.model, x, stage / "baseline.onnx", options.dynamic_batch,
                                    slim_available())
        baseline_session = _session(baseline_onnx, target)
        feeds = random_feeds(baseline_session)
        baseline_alone = time_session(baseline_session, feeds, warmup=3, min_runs=10, min_seconds=0.5)
    fraction = options.budget.fraction(baseline_alone.median_ms)
    baseline_predicted = predictor.predict({}).total_ms
    predicted_budget = fraction * baseline_predicted
    attempts: list[Attempt] = []
    for round_number in range(options.refine + 1):
        with step(f"search + prune + measure (round {round_number + 1}, predicted budget {predicted_budget:.3g} ms)"):
            try:
                attempt = _attempt(analysis, predictor, importance, sensitivity, options, predicted_budget,
                                   baseline_session, feeds, stage, round_number)
            except PlanError:
                if not attempts:
                    raise
                break
        attempts.append(attempt)
        console.print(f"  predicted {attempt.search.predicted_ms:.3g} ms; measured latency fraction "
                      f"{attempt.measured_fraction:.3f} (requested {fraction:.3f})")
        if abs(attempt.measured_fraction - fraction) <= options.tolerance * fraction:
            break
        predicted_budget *= fraction / attempt.measured_fraction
    chosen = _choose(attempts, fraction, options.tolerance)
    os.replace(chosen.onnx, stage / "pruned.onnx")
    for attempt in attempts:
        attempt.onnx.unlink(missing_ok=True)
    with step("verify"):
        verify_inputs = _verify_inputs(x, options.dynamic_batch)
        verification = verify_onnx(chosen.model, stage / "pruned.onnx", verify_inputs, options.atol, options.rtol)
        quality = fidelity(analysis.model, chosen.model, calibration.batches)
    if not verification.ok:
        raise HwpruneError(f"exported ONNX does not match the pruned model (max abs err "
                           f"{verification.max_abs_err:.3g}; worst {verification.worst})")
    with step("measure baseline vs pruned (interleaved)"):
        final = time_interleaved([baseline_session, _session(stage / "pruned.onnx", target)], [feeds, feeds],
                                 rounds=30)
    chosen.plan.save(stage / "plan.json")
    report = _report(loaded, analysis, options, chosen, final, verification, quality, calibration.source,
                     importance, attempts, fraction, table.provenance, time.perf_counter() - started)
    report["layers"] = _layer_rows(predictor, chosen.search.counts)
    report["groups"] = [{"id": gid, "keep": d.keep, "of": d.of, "sensitivity": sensitivity[gid]}
                        for gid, d in chosen.plan.groups.items()]
    report["search"]["baseline_predicted_ms"] = baseline_predicted
    report["export"] = {"opset": ONNX_OPSET, "dynamic_batch": options.dynamic_batch, "slimmed": slim_available()}
    report["fingerprint"] = fingerprint(target)
    report["engine"] = {"path": None, "reason": f"target {target.name} runs {target.runtime}, not TensorRT"}
    with step("plots and report.md"):
        write_plots(report, stage / "plots")
        write_text_atomic(stage / "report.md", markdown(report))
    write_text_atomic(stage / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def _attempt(analysis: Analysis, predictor: TablePredictor, importance: Importance, sensitivity: dict[str, float],
             options: Options, predicted_budget: float, baseline_session: object, feeds: dict, stage: Path,
             number: int) -> Attempt:
    target, x = options.target, analysis.capture.example_input
    result = search_widths(analysis, predictor, importance, target.channel_alignment, predicted_budget,
                           options.min_keep, weights=sensitivity)
    plan = build_plan(analysis, options.target.name, options.budget.kind, options.budget.value, result, importance,
                      predictor)
    fresh = analyze(copy.deepcopy(analysis.model), x, analysis.name, strict=False)
    model = apply_plan(plan, fresh).eval()
    onnx_path = export_onnx(model, x, stage / f"pruned-round{number}.onnx", options.dynamic_batch, slim_available())
    comparison = time_interleaved([baseline_session, _session(onnx_path, target)], [feeds, feeds], rounds=12)
    return Attempt(result, plan, model, onnx_path, comparison)


def _verify_inputs(x: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    """Fresh seeded inputs of the example's shape (and a batch of 3 when the batch axis is dynamic)."""
    if not x.is_floating_point():
        return [x]
    shapes = [tuple(x.shape)] * 3 + ([(3, *x.shape[1:])] if dynamic_batch else [])
    return [torch.randn(shape, generator=torch.Generator().manual_seed(n)) for n, shape in enumerate(shapes)]


def _layer_rows(predictor: TablePredictor, counts: dict[str, int]) -> list[dict]:
    before, after = predictor.predict({}).layers_ms, predictor.predict(counts).layers_ms
    return [{"name": name, "baseline_predicted_ms": before[name], "pruned_predicted_ms": after[name]}
            for name in before]


def _choose(attempts: list[Attempt], fraction: float, tolerance: float) -> Attempt:
    """The widest attempt within the budget's tolerance; if none, the fastest."""
    within = [a for a in attempts if a.measured_fraction <= fraction * (1 + tolerance)]
    if within:
        return max(within, key=lambda a: a.measured_fraction)
    return min(attempts, key=lambda a: a.measured_fraction)


def _session(path: Path, target: Target):
    threads, level = runtime_settings(target)
    return make_session(str(path), threads, level)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _report(loaded, analysis, options, chosen, final, verification, quality, calibration_source, importance,
            attempts, fraction, provenance, seconds) -> dict:
    x = analysis.capture.example_input
    base, pruned = final.timings
    threads, level = runtime_settings(options.target)

    def summary(timing, flops: int, params: int) -> dict:
        return {"latency_ms": {"median": timing.median_ms, "p90": timing.p90_ms, "p99": timing.p99_ms,
                               "spread": timing.spread}, "flops": flops, "params": params}

    params = sum(p.numel() for p in chosen.model.parameters())
    return {
        "hwprune": __version__,
        "model": loaded.name,
        "input_shape": list(x.shape),
        "target": options.target.name,
        "budget": {"kind": options.budget.kind, "value": options.budget.value, "latency_fraction": fraction},
        "baseline": summary(base, analysis.capture.flops, analysis.capture.params),
        "pruned": summary(pruned, count_flops(chosen.model, x), params),
        "speedup": {"predicted": chosen.search.baseline_predicted_ms / chosen.search.predicted_ms,
                    "measured": 1.0 / final.ratios[1], "measured_ratio_spread": final.ratio_spread[1]},
        "verify": verification.to_json(),
        "fidelity": {"cosine": quality.cosine, "top1_agreement": quality.top1_agreement, "samples": quality.samples,
                     "inputs": calibration_source},
        "search": {"importance": importance.method, "importance_fallbacks": importance.fallbacks,
                   "min_keep": options.min_keep, "groups": len(chosen.plan.groups),
                   "attempts": [{"predicted_budget_ms": a.plan.budget["predicted_ms"],
                                 "predicted_ms": a.search.predicted_ms, "measured_fraction": a.measured_fraction,
                                 "search_seconds": a.search.seconds, "knapsack_rounds": a.search.rounds}
                                for a in attempts]},
        "measurement": {"runtime": "onnxruntime CPUExecutionProvider", "threads": threads,
                        "graph_optimization_level": level, "method": "interleaved A/B rounds of 5 runs, 30 rounds; "
                        "speedup = 1 / median over rounds of (pruned round median / baseline round median)"},
        "latency_model": {"fingerprint": provenance.get("fingerprint"), "created": provenance.get("created"),
                          "host": provenance.get("host")},
        "seconds": seconds,
    }


@contextmanager
def _step(console: Console, name: str) -> Iterator[None]:
    """Print a pipeline step and, when it succeeds, how long it took."""
    started = time.perf_counter()
    console.print(f"[bold]{name}[/bold] ...")
    yield
    console.print(f"  done in {time.perf_counter() - started:.1f} s")
