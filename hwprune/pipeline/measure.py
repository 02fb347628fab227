"""The measurement half of the refinement loop: a round's plan realised (transform), exported and, where
this host runs the target's runtime, timed against the baseline, interleaved."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from hwprune.config import Options, Recalibrate
from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.evaluate.calibration import Calibration
from hwprune.export.onnx_export import ExportStyle, OnnxIO, export_onnx
from hwprune.graph.analyze import Analysis
from hwprune.pipeline.memory import release
from hwprune.plan import Plan
from hwprune.runtime import Runner, Runtime
from hwprune.runtime.timing import Comparison
from hwprune.search.decide import Decision
from hwprune.transform.realise import finish, realise_unmerged


class Realiser:
    """``transform.realise.realise`` that keeps the last plan's pruned model: an unconstrained round
    prices the copy ops of the very plan it returns, and measuring that plan would otherwise
    apply it to a fresh copy again (10 s each time on densenet169). A caller that looks (``keep``) gets
    a deep copy of the kept model; the last caller takes the kept model itself, which is then dropped (a
    large model's realisation is not held twice, nor kept once its round is measured). What it hands out
    shares the weights pruning left alone with the analysed model (``realise_unmerged``'s ``share``). BatchNorm is
    re-estimated on what is handed out, where asked. Linear maps (ReplaceMe) are fitted on
    ``calibration``, the user's calibration batches."""

    def __init__(self, analysis: Analysis, calibration: Sequence[torch.Tensor] = ()):
        self.analysis = analysis
        self.calibration = calibration
        self._last: tuple[tuple, nn.Module] | None = None

    def __call__(self, plan: Plan, recalibration: Sequence[torch.Tensor] = (), merge: bool = True,
                 keep: bool = True) -> nn.Module:
        """The realised plan; with ``merge`` False its spans still apart (BatchNorm re-estimated alike);
        ``keep`` False: the kept model itself, no longer kept."""
        key = plan.decisions()
        if self._last is None or self._last[0] != key:
            self._last = (key, realise_unmerged(plan, self.analysis, calibration=self.calibration, share=True))
        model = copy.deepcopy(self._last[1]) if keep else self._last[1]
        if not keep:
            self._last = None
        if not merge:
            if recalibration:
                recalibrate_batchnorm(model, recalibration)
            return model
        return finish(plan, self.analysis, model, recalibration)


@dataclass
class Realised:
    model: nn.Module | None  # None once a round nearer the request is kept instead (``compile``)
    onnx: Path
    comparison: Comparison | None


@dataclass
class Measurer:
    """Realises a round's plan, exports it and, where this host runs the target's runtime, times it
    against the baseline (interleaved): the measurement half of the refinement loop."""

    realise: Realiser
    options: Options
    runtime: Runtime
    stage: Path
    recalibration: list[torch.Tensor]  # empty: BatchNorm statistics stay as trained
    baseline: Runner | None  # None where this host cannot run the target's runtime; suspended between uses
    baseline_ms: float
    rounds: int = 0

    @classmethod
    def start(cls, realiser: Realiser, options: Options, runtime: Runtime, stage: Path, baseline_onnx: Path,
              calibration: Calibration) -> Measurer:
        recalibrate = options.recalibrate_bn == Recalibrate.ON or (options.recalibrate_bn == Recalibrate.AUTO
                                                                    and not calibration.random)
        batches = calibration.batches if recalibrate else []
        if runtime.unavailable_reason() is not None:
            return cls(realiser, options, runtime, stage, batches, None, float("nan"))
        baseline = runtime.load_model(realiser.analysis.model, (realiser.analysis.capture.example_input,),
                                      baseline_onnx)
        baseline_ms = runtime.time(baseline, 3, 10, 0.5).median_ms
        baseline.suspend()
        return cls(realiser, options, runtime, stage, batches, baseline, baseline_ms)

    @cached_property
    def io(self) -> OnnxIO:
        """The baseline file's input and output names, kept by every round's export (a user's ONNX file's)."""
        return OnnxIO.of(self.stage / "baseline.onnx")

    @cached_property
    def style(self) -> ExportStyle:
        """How rounds are exported: decided on the unpruned model, as the baseline's was."""
        return ExportStyle.of(self.realise.analysis.model)

    @property
    def measurable(self) -> bool:
        return self.baseline is not None

    def __call__(self, decision: Decision) -> tuple[float | None, Realised]:
        model = self.realise(decision.plan, self.recalibration, keep=False)
        release()  # what realising freed, before the exporter's copies of the weights
        path = export_onnx(model, self.realise.analysis.capture.example_input,
                           self.stage / f"pruned-round{self.rounds}.onnx", self.options.dynamic_batch, self.style,
                           self.io)
        self.rounds += 1
        release()  # and those copies, before the sessions load
        realised = Realised(model, path, None)
        if not self.measurable:
            return None, realised
        realised.comparison = self._against_baseline(realised, rounds=12)
        return realised.comparison.ratios[1], realised

    def final(self, realised: Realised, step: Callable) -> Comparison | None:
        if not self.measurable:
            return None
        with step("measure baseline vs pruned (interleaved)"):
            comparison = self._against_baseline(realised, rounds=30)
        self.baseline.close()
        return comparison

    def _against_baseline(self, realised: Realised, rounds: int) -> Comparison:
        """The realised model timed against the baseline in what the runtime loads: the exported ONNX
        file (onnxruntime, TensorRT) or the module itself (torch)."""
        pruned = self.runtime.load_model(realised.model, (self.realise.analysis.capture.example_input,), realised.onnx)
        try:
            return self.runtime.interleaved([self.baseline, pruned], rounds=rounds)
        finally:
            pruned.close()
            self.baseline.suspend()  # a large baseline is not held through the next round's realisation
