"""``hwprune apply``: rebuild the model a plan was made for, check it is that model, apply the plan
and verify the export exactly as compile does.

A plan records its model spec, weights source, seed, input shape and a digest of the unpruned
state dict; a model whose weights differ would be pruned by the same indices into something else,
so that is an error naming both digests, never a silent different result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError, PlanError
from hwprune.evaluate.calibration import load_calibration
from hwprune.export.nm_check import nm_weights
from hwprune.export.onnx_export import ExportStyle, OnnxIO, export_onnx
from hwprune.export.verify import Verification, verified
from hwprune.frontends import NATIVE_FILES, LoadedModel, check_model, save_native
from hwprune.graph.analyze import analyze
from hwprune.io import staged
from hwprune.plan import Plan
from hwprune.runtime.onnx_files import data_file
from hwprune.transform.realise import realise

ARTEFACTS = ("pruned.onnx", data_file(Path("pruned.onnx")).name, "pruned.pt", *NATIVE_FILES)


@dataclass
class Applied:
    model: nn.Module
    params_before: int
    verification: Verification


def apply_plan_file(plan: Plan, plan_name: str, loaded: LoadedModel, calib_data: str | None, out: Path,
                    atol: float, rtol: float, dynamic_batch: bool = False) -> Applied:
    """Check, apply, export and verify; writes ``pruned.onnx`` and ``pruned.pt`` to ``out`` atomically."""
    check_model(plan, loaded, plan_name)
    x = loaded.example_input
    batches: list[torch.Tensor] = []
    fitted = any(entry.fold for entry in plan.depth)
    if plan.bn_recalibration or fitted:
        if not calib_data:
            what = "fitted linear maps" if fitted else "re-estimated BatchNorm statistics"
            raise PlanError(f"{plan_name}: the compile {what} on calibration data; pass the same --calib-data to "
                            "reproduce its model")
        batches = load_calibration(calib_data, x, model=loaded.name).batches
    analysis = analyze(loaded.module, x, loaded.name, exclude=plan.provenance.exclude, strict=False)
    before = sum(p.numel() for p in analysis.model.parameters())
    model = realise(plan, analysis, batches if plan.bn_recalibration else [], calibration=batches)
    with staged(out, ARTEFACTS) as stage:
        io = OnnxIO() if loaded.source_onnx is None else OnnxIO.of(loaded.source_onnx)  # a user's file's names
        export_onnx(model, x, stage / "pruned.onnx", dynamic_batch, ExportStyle.of(analysis.model), io)
        verification = verified(model, stage / "pruned.onnx", x, dynamic_batch, atol, rtol)
        wrong = [name for name, found in nm_weights(stage / "pruned.onnx", plan.sparsity.layers, model).items()
                 if not found["nm"]]
        if wrong:
            raise PlanError(f"exported weights are not N:M in {', '.join(wrong)}")
        torch.save(model.state_dict(), stage / "pruned.pt")
        try:
            save_native(model, loaded.name, stage)
        except ModelSpecError:  # an hf: model with per-layer widths: pruned.pt and pruned.onnx hold it
            pass
    return Applied(model, before, verification)
