"""The stages after the search: keep the chosen round's model, verify it (ONNX against PyTorch, N:M in
the exported weights, fidelity), measure it against the baseline (and a decoder's decode step), build
engines, count the exports' copy ops and the model's size. Each returns what the report is built from."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwprune.config import Options
from hwprune.errors import HwpruneError, ModelSpecError
from hwprune.evaluate.boxes import box_agreement
from hwprune.evaluate.calibration import Calibration, fidelity
from hwprune.export.copies import copy_ops
from hwprune.export.nm_check import nm_weights
from hwprune.export.onnx_export import ExportStyle, export_onnx
from hwprune.export.verify import check_inputs, verified
from hwprune.frontends import LoadedModel, save_native
from hwprune.graph.analyze import Analysis
from hwprune.pipeline.decode import decode_section, decode_summary
from hwprune.pipeline.measure import Measurer, Realised
from hwprune.pipeline.memory import release
from hwprune.pipeline.steps import Step
from hwprune.report import Built, Checked, Measured
from hwprune.runtime import Runtime, runtime_for
from hwprune.runtime.onnx_files import move_model, remove_model
from hwprune.search.decide import Decision
from hwprune.search.refine import Round
from hwprune.search.verdict import judge
from hwprune.transform.realise import realise


def keep_chosen(chosen: Round[Decision, Realised], rounds: list[Round], measurer: Measurer, loaded: LoadedModel,
                stage: Path, console: Console) -> None:
    """``pruned.onnx`` and ``pruned.pt`` of the chosen round (the other rounds' exports removed), its spans
    apart in ``pruned_unmerged.pt`` where merged (what recovery trains), and the framework's format."""
    move_model(chosen.realised.onnx, stage / "pruned.onnx")
    for attempt in rounds:
        remove_model(attempt.realised.onnx)
    chosen.realised.onnx = stage / "pruned.onnx"
    plan = chosen.decision.plan
    torch.save(chosen.realised.model.state_dict(), stage / "pruned.pt")
    if plan.merge:
        torch.save(measurer.realise(plan, measurer.recalibration, merge=False, keep=False).state_dict(),
                   stage / "pruned_unmerged.pt")
    try:
        native = save_native(chosen.realised.model, loaded.name, stage)
    except ModelSpecError as exc:  # e.g. an hf: model pruned to different widths per layer
        native = None
        console.print(f"  [yellow]note:[/yellow] not saved in its framework's format: {exc}")
    if native:
        console.print(f"  {native}: the pruned model in its framework's format")
    release()  # what saving copied, before verification loads the export


def check(loaded: LoadedModel, analysis: Analysis, chosen: Round[Decision, Realised], calibration: Calibration,
          options: Options, stage: Path, step: Step, console: Console) -> Checked:
    """The export against the pruned module, the module as a torch target runs it (its precision and mode)
    against it in fp32, its N:M layers in the exported weights, and fidelity to the unpruned model (and,
    for a detector on the user's images, box agreement)."""
    model, x = chosen.realised.model, analysis.capture.example_input
    with step("verify"):
        verification = verified(model, stage / "pruned.onnx", x, options.dynamic_batch, options.atol, options.rtol)
        release()  # the session that checked the export, before fidelity runs both models
        runs = runtime_for(options.target).check_module(model, check_inputs(x), options.atol, options.rtol)
        if runs is not None:
            line = (f"{runs['runtime']} {runs['mode']} on {runs['device']} at {runs['precision']} against the fp32 "
                    f"module: max abs err {runs['max_abs_err']:.3g} (atol {runs['atol']:g}"
                    f"{' x output scale' if runs['output_scaled_atol'] else ''}, rtol {runs['rtol']:g})")
            if not runs["ok"]:
                raise HwpruneError(f"the pruned model as the target runs it does not match it: {line}")
            console.print(f"  {line}")
        quality = fidelity(analysis.model, model, calibration.batches, text=not calibration.random)
        detector = loaded.capabilities
        if detector.detections and not calibration.random:  # boxes on the user's images
            quality.box_agreement = box_agreement(analysis.model, model, calibration.batches, detector.detections)
        elif detector.boxes_unmeasured and not calibration.random:
            console.print(f"  box agreement not measured: {escape(detector.boxes_unmeasured)}")
        if quality.caveat:
            console.print(f"  [yellow]warning:[/yellow] fidelity: {quality.caveat} (random weights?)")
        onnx_nm = nm_weights(stage / "pruned.onnx", chosen.decision.plan.sparsity.layers, model)
        if not all(found["nm"] for found in onnx_nm.values()):
            raise HwpruneError("exported weights are not N:M in " + ", ".join(
                name for name, found in onnx_nm.items() if not found["nm"]))
    return Checked(verification, quality, calibration.source, onnx_nm)


def measure(measurer: Measurer, loaded: LoadedModel, analysis: Analysis, realised: Realised, runtime: Runtime,
            options: Options, requested: float, stage: Path, step: Step, console: Console) -> Measured:
    """The chosen model against the baseline, interleaved, where this host runs the target, and the verdict
    on every pair measured on it against the ``requested`` latency fraction; an ``hf:`` decoder's decode step
    too."""
    final, model = measurer.final(realised, step), realised.model
    decode = None
    x = analysis.capture.example_input
    if loaded.capabilities.decode_step:  # an hf: decoder: its per-token latency, after prefill's
        with step("decode step with a KV cache: export, verify, measure (interleaved)"):
            decode = decode_section(loaded.capabilities.decode_step, analysis.model, model, runtime, stage,
                                    x.shape[0], x.shape[1], ExportStyle.of(analysis.model), options.atol, options.rtol)
            console.print(f"  {escape(decode_summary(decode))}")
    method = None if final is None else {**runtime.measurement(), "rounds": 30}
    pairs = [] if final is None else [*realised.comparison.round_ratios[1], *final.round_ratios[1]]
    verdict = judge(pairs, requested, options.tolerance)
    return Measured(final, method, runtime.unavailable_reason(), runtime.fingerprint(), verdict, decode)


def build(runtime: Runtime, chosen: Round[Decision, Realised], analysis: Analysis, options: Options,
          baseline_source: str, stage: Path, step: Step) -> Built:
    """Engines where the runtime builds them, the copy ops of the exports, and the pruned model's size."""
    x, plan, model = analysis.capture.example_input, chosen.decision.plan, chosen.realised.model
    style = ExportStyle.of(analysis.model)
    sparse = bool(plan.sparsity.layers)
    with step("engines"):
        engine_path, engine_note = runtime.engines(stage, ("baseline", "pruned"), tuple(x.shape),
                                                   8 * x.shape[0] if options.dynamic_batch else None,
                                                   sparse=("pruned",) if sparse else ())
    copies = {"baseline": copy_ops(stage / "baseline.onnx"), "pruned": copy_ops(stage / "pruned.onnx"),
              "pruned_without_reordering": None}
    if any(d.readers is not None for d in plan.groups().values()):  # the export reordering improves on
        path = export_onnx(realise(plan, analysis, reorder=False), x, stage / "naive-order.onnx",
                           options.dynamic_batch, style)
        copies["pruned_without_reordering"] = copy_ops(path)
        remove_model(path)
    return Built(engine_path, engine_note, runtime.sparse_layers(stage / "pruned.engine"), copies,
                 count_flops(model, x), sum(p.numel() for p in model.parameters()), baseline_source, style.exporter,
                 style.opset, style.slim)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())
