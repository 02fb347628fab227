"""The decode phase of an ``hf:`` decoder's compile: per-token latency with a KV cache, baseline against pruned.

The compile searches and measures prefill (the prompt in one forward). Generation is then one token at a
time against the cache, where the weights and the cache are read for one token's arithmetic, so the same
pruning may speed it by another factor. After the search, both models' decode steps (built by the model's
frontend) are exported (:mod:`hwprune.export.kv_step`), each checked against PyTorch, and timed interleaved like
the prefill. This is evidence for the report only, never an input to the search; any failure is the section's one-line
reason and the compile goes on, its prefill result untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from hwprune.errors import first_line
from hwprune.export.kv_step import DecodeExport, export_decode
from hwprune.export.onnx_export import ExportStyle
from hwprune.frontends.base import StepModule
from hwprune.pipeline.memory import release
from hwprune.report import DecodeSection, LatencyStats
from hwprune.runtime import Runtime
from hwprune.runtime.timing import Comparison, Timing

DECODE_FILES = ("baseline_decode.onnx", "pruned_decode.onnx")
ROUNDS = 30  # as the prefill's final measurement


def decode_section(make_step: Callable[[nn.Module, int, int], StepModule], baseline: nn.Module, pruned: nn.Module,
                   runtime: Runtime, stage: Path, batch: int, past_length: int, style: ExportStyle, atol: float,
                   rtol: float) -> DecodeSection:
    """Export, verify and time (interleaved, :data:`ROUNDS` rounds) the decode steps ``make_step`` (the
    frontend's capability) builds of ``baseline`` and ``pruned`` with a cache of ``past_length`` positions at
    ``batch``, into ``stage``."""
    section = DecodeSection(batch, past_length, False, None, None, None, None, None, ROUNDS, {}, {}, [])
    exports: dict[str, DecodeExport] = {}
    for (name, model), file in zip((("baseline", baseline), ("pruned", pruned)), DECODE_FILES, strict=True):
        try:
            step = make_step(model, batch, past_length)
            exports[name] = export_decode(step.module, step.past, step.vocab, stage / file, style, atol, rtol)
        except Exception as exc:  # an unforeseen model is a line in the report, never a failed compile
            section.reason = f"the {name} model's decode step was not exported and verified: {first_line(exc, 300)}"
            return section
        release()  # the exporter's copies of the weights, before the next export or the timing sessions
        section.past_shapes[name] = [list(shape) for shape in exports[name].past]
        section.verify[name] = exports[name].verification.to_json()
        section.files.append(file)
    unavailable = runtime.unavailable_reason()
    if unavailable is not None:
        section.reason = f"{runtime.name} cannot run here: {unavailable}"
        return section
    try:
        comparison = _interleaved(runtime, [exports["baseline"].path, exports["pruned"].path])
    except Exception as exc:
        section.reason = f"the decode steps were exported and verified but not timed: {first_line(exc, 300)}"
        return section
    section.measured = True
    section.baseline_ms, section.pruned_ms = (_stats(t) for t in comparison.timings)
    section.ratio, section.ratio_spread = comparison.ratios[1], comparison.ratio_spread[1]
    return section


def decode_summary(section: DecodeSection) -> str:
    """One line: per-token time baseline -> pruned, or why there is none."""
    if not section.measured:
        return f"decode not measured: {section.reason}"
    return (f"decode {section.baseline_ms.median:.3g} ms -> {section.pruned_ms.median:.3g} ms/token "
            f"({section.speedup:.2f}x, cache of {section.past_length} positions x batch {section.batch})")


def _interleaved(runtime: Runtime, paths: list[Path]) -> Comparison:
    runners = []
    try:
        for path in paths:
            runners.append(runtime.load(path))
        return runtime.interleaved(runners, rounds=ROUNDS)
    finally:
        for runner in runners:
            runner.close()


def _stats(timing: Timing) -> LatencyStats:
    return LatencyStats(timing.median_ms, timing.p90_ms, timing.p99_ms, timing.spread)
