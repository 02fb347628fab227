"""Unconstrained pruning with export-time reordering (UPSCALE) against the naive export and
against constrained pruning, measured on the ``cpu`` target.

For each model (torchvision, random weights with calibrated BN statistics as in
``budget_accuracy``; 224x224 input, batch 1):

1. every prunable group keeps ``--fraction`` of its channels (rounded down to multiples of 16);
   segments (groups read by dense layers only) get unconstrained masks: each reader keeps that
   many channels, those contributing most to its output on 8 random calibration inputs (seeded
   apart from the held-out ones), and the producers keep the union. The naive export reads each
   reader's channels in their original order, the reordered export in the order
   ``transform.reorder`` finds. Both are checked against the masked model (PyTorch)
   and their ONNX files against PyTorch; the copy ops (Gather, Slice, Concat: count and bytes
   written) are counted in each ONNX graph;
2. baseline, constrained (same counts), naive and reordered ONNX are timed in one interleaved run
   (onnxruntime, 1 thread, ORT_ENABLE_ALL; ratios of per-round medians to the baseline's);
3. the unconstrained fraction is bisected until its reordered export's measured latency matches
   the constrained model's, and fidelity (mean cosine of outputs to the original, top-1
   agreement) is compared on the same held-out random inputs: unconstrained against constrained
   pruning with group L1 scores, and against constrained pruning with the unconstrained masks'
   own criterion (each segment keeps the channels with the highest reader scores summed over its
   readers), so that the gain of lifting the constraint is told apart from the gain of the
   criterion.

    python benchmarks/upscale.py [--models resnet50,densenet121] [--fraction 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from hwprune.evaluate.calibration import fidelity
from hwprune.evaluate.mask import masked_readers
from hwprune.export.copies import copy_ops
from hwprune.export.onnx_export import export_onnx
from hwprune.export.verify import verify_onnx
from hwprune.frontends import load_model
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.segments import segments
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import score_groups, select
from hwprune.runtime.ort import OnnxRuntime, make_session, random_feeds
from hwprune.runtime.timing import interleave
from hwprune.search.readers import reader_masks
from hwprune.search.width import allowed_counts
from hwprune.targets import load_target
from hwprune.transform.prune import prune
from hwprune.transform.realise import apply_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_accuracy import bisect_latency, held_out_batches, measured_fraction  # noqa: E402  (also puts the repository root on the path)

from tests.pruning_helpers import plan_of  # noqa: E402
from tests.zoo import randomize_model  # noqa: E402

MODELS = ("resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf")
ALIGNMENT = 16
BISECTION_STEPS = 6


class Pruner:
    """One model's analysis, scores and segments, and pruned copies of it at any fraction."""

    def __init__(self, name: str, original: nn.Module, x: torch.Tensor):
        self.name, self.original, self.x = name, original, x
        self.analysis = analyze(copy.deepcopy(original), x, name, strict=False)
        self.segments = segments(self.analysis)
        self.importance = score_groups(self.analysis, "l1")
        self.options = allowed_counts(self.analysis, ALIGNMENT, 0.0)
        calibration = torch.randn((8, *x.shape[1:]), generator=torch.Generator().manual_seed(0))
        self.reader_scores = reader_scores(self.analysis, self.segments, calibration)

    def counts(self, fraction: float) -> dict[str, int]:
        return {gid: max([c for c in counts if c <= fraction * counts[-1]], default=counts[0])
                for gid, counts in self.options.items()}

    def keep(self, counts: dict[str, int], skip: set[str] = frozenset()) -> dict[str, list[int]]:
        return {gid: select(self.importance.scores[gid], n, self.analysis.group(gid).repeat)
                for gid, n in counts.items() if gid not in skip}

    def fresh(self) -> Analysis:
        return analyze(copy.deepcopy(self.original), self.x, self.name, strict=False)

    def constrained(self, fraction: float, by_readers: bool = False) -> nn.Module:
        """Constrained pruning at ``fraction``; ``by_readers``: segments keep the channels with the
        highest summed reader scores (the unconstrained masks' criterion), else group L1."""
        counts = self.counts(fraction)
        keep = self.keep(counts)
        if by_readers:
            for gid, per_reader in self.reader_scores.items():
                keep[gid] = select(sum(per_reader.values()), counts[gid])
        return prune(self.fresh(), keep).eval()

    def unconstrained(self, fraction: float, reorder: bool) -> tuple[nn.Module, dict, dict]:
        counts = self.counts(fraction)
        masks = reader_masks(self.reader_scores, counts)
        keep = self.keep(counts, set(masks))
        fresh = self.fresh()
        return apply_plan(plan_of(fresh, keep, masks), fresh, reorder).eval(), masks, keep


def run(name: str, fraction: float, threads: int, level: str, console: Console) -> dict:
    started = time.perf_counter()
    loaded = load_model(f"torchvision:{name}")
    x = loaded.example_input
    with torch.no_grad():
        original = randomize_model(loaded.module, torch.randn((16, *x.shape[1:]))).eval()
    pruner = Pruner(name, original, x)
    row = {"model": name, "fraction": fraction, "segments": len(pruner.segments),
           "multi_reader_segments": sum(len(s.readers) > 1 for s in pruner.segments)}
    with tempfile.TemporaryDirectory(prefix="hwprune-upscale-") as tmp:
        tmp = Path(tmp)
        naive, masks, keep = pruner.unconstrained(fraction, reorder=False)
        reordered, _, _ = pruner.unconstrained(fraction, reorder=True)
        constrained = pruner.constrained(fraction)
        reads = {gid: mask.reads for gid, mask in masks.items()}
        with masked_readers(pruner.analysis, pruner.segments, reads, keep) as masked, torch.no_grad():
            reference = masked(x)
        paths = {}
        for label, model in (("baseline", original), ("constrained", constrained), ("naive", naive),
                             ("reordered", reordered)):
            paths[label] = export_onnx(model, x, tmp / f"{label}.onnx")
            if label in ("naive", "reordered"):
                with torch.no_grad():
                    row[f"{label}_max_abs_err"] = float((model(x) - reference).abs().max())
                row[f"{label}_onnx_ok"] = verify_onnx(model, paths[label], [x]).ok
            row[f"{label}_copies"] = copy_ops(paths[label])
        sessions = [make_session(str(paths[label]), threads, level)
                    for label in ("baseline", "constrained", "naive", "reordered")]
        feeds = random_feeds(sessions[0])
        comparison = interleave([lambda s=s: s.run(None, feeds) for s in sessions], rounds=20)
        row["baseline_ms"] = comparison.timings[0].median_ms
        for i, label in enumerate(("constrained", "naive", "reordered"), start=1):
            row[f"{label}_fraction"] = comparison.ratios[i]
        row["reordered_over_naive"] = comparison.ratios[3] / comparison.ratios[2]
        matched = match_latency(pruner, fraction, row["constrained_fraction"], sessions[0], threads, level, tmp)
        batches = held_out_batches(x)
        for label, model in (("constrained", constrained),
                             ("constrained_by_readers", pruner.constrained(fraction, by_readers=True)),
                             ("unconstrained_same_counts", reordered), ("unconstrained_matched", matched["model"])):
            quality = fidelity(original, model, batches)
            row[f"{label}_fidelity"] = (quality.cosine, quality.top1_agreement)
        row["matched_unconstrained_keep_fraction"] = matched["knob"]
        row["matched_unconstrained_latency_fraction"] = matched["fraction"]
    row["seconds"] = time.perf_counter() - started
    console.print(f"{name}: constrained {row['constrained_fraction']:.3f}, naive {row['naive_fraction']:.3f}, "
                  f"reordered {row['reordered_fraction']:.3f} of the baseline; gathers "
                  f"{row['naive_copies']['Gather']['count']} -> {row['reordered_copies']['Gather']['count']}; "
                  f"cosine constrained {row['constrained_fidelity'][0]:.4f} (reader criterion "
                  f"{row['constrained_by_readers_fidelity'][0]:.4f}) vs unconstrained at the same latency "
                  f"{row['unconstrained_matched_fidelity'][0]:.4f} ({row['seconds']:.0f} s)")
    return row


def match_latency(pruner: Pruner, fraction: float, goal: float, baseline_session, threads: int, level: str,
                  tmp: Path) -> dict:
    """Bisect the unconstrained keep fraction (from ``fraction`` down) whose reordered export
    measures closest to ``goal``."""
    return bisect_latency(lambda keep: pruner.unconstrained(keep, reorder=True)[0],
                          lambda model: measured_fraction(model, pruner.x, baseline_session, threads, level, tmp),
                          goal, 0.0, fraction, faster_when_higher=False, steps=BISECTION_STEPS, first=fraction)


def show(console: Console, rows: list[dict]) -> None:
    table = Table(title="Unconstrained pruning on cpu (onnxruntime, 1 thread): naive vs reordered export, and fidelity "
                        "against constrained pruning at the same measured latency")
    for column in ("model", "gathers / slices (MB) naive", "reordered", "latency: constrained", "naive", "reordered",
                   "reordered / naive", "cosine / top-1: constrained, group L1", "constrained, reader criterion",
                   "unconstrained, same latency (keep)",
                   "max err"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def copies(found: dict) -> str:
        megabytes = (found["Gather"]["bytes"] + found["Slice"]["bytes"]) / 1e6
        return f"{found['Gather']['count']} / {found['Slice']['count']} ({megabytes:.2f})"

    def pair(values: tuple) -> str:
        return f"{values[0]:.4f} / {100 * values[1]:.0f}%"

    for r in rows:
        table.add_row(r["model"], copies(r["naive_copies"]), copies(r["reordered_copies"]),
                      *(f"{r[f'{label}_fraction']:.3f}" for label in ("constrained", "naive", "reordered")),
                      f"{r['reordered_over_naive']:.3f}", pair(r["constrained_fidelity"]),
                      pair(r["constrained_by_readers_fidelity"]),
                      f"{pair(r['unconstrained_matched_fidelity'])} ({r['matched_unconstrained_keep_fraction']:.2f})",
                      f"{max(r['naive_max_abs_err'], r['reordered_max_abs_err']):.1e}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--fraction", type=float, default=0.5, help="kept fraction of every group (0.5)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    console = Console(width=220)
    threads, level = OnnxRuntime(load_target("cpu")).settings
    torch.manual_seed(0)
    rows = [run(name, args.fraction, threads, level, console) for name in args.models.split(",")]
    show(console, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
