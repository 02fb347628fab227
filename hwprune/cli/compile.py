"""``hwprune compile``: prune a model to a latency budget on a target, export and measure it (or a frontier)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hwprune.cli.common import (
    Subparsers,
    add_model_arguments,
    add_recovery_arguments,
    add_remote_arguments,
    load,
    recover_options,
    remote,
    resolve_target,
)
from hwprune.errors import HwpruneError

if TYPE_CHECKING:
    from hwprune.report import Report


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("compile",
                                   help="prune a model to a latency budget on a target, export and measure it")
    add_model_arguments(parser)
    parser.add_argument("--target", default="cpu", help="device profile (default: cpu); jetson: the module --remote "
                                                        "reaches, identified there (else jetson-orin-nano)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency", metavar="F[,F...]",
                        help="latency budget as a fraction of the baseline; several (0.4,0.5,0.6) compile a "
                             "frontier: one build folder per point under --out, sharing one analysis, latency "
                             "table and importance, and frontier.json / frontier.png (latency against fidelity)")
    budget.add_argument("--speedup", type=float, metavar="S", help="required speedup over the baseline")
    budget.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget in milliseconds")
    parser.add_argument("--importance", default="activation", choices=("l1", "l2", "bn", "taylor", "activation"),
                        help="channel importance (default: activation: weight x input activation norm summed "
                             "over the layers reading a group, on the calibration inputs; l1 where other layers "
                             "read it)")
    parser.add_argument("--calib-data", metavar="SPEC",
                        help="module:fn or file.py:fn returning input batches (default: random inputs, warned)")
    parser.add_argument("--min-keep", type=float, default=0.1, metavar="F",
                        help="smallest fraction of any group's channels to keep (default: 0.1)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="glob of layer names whose channels must stay (repeatable)")
    parser.add_argument("--refine", type=int, default=9, metavar="N",
                        help="at most N measured re-searches after the first round, while the measured latency is "
                             "more than 2/5 of --tolerance off the request (default: 9)")
    parser.add_argument("--refine-time", type=float, default=60.0, metavar="SECONDS",
                        help="time for those re-searches: one starts only if it should end within it, except that "
                             "a first round outside --tolerance is always corrected once (default: 60)")
    parser.add_argument("--tolerance", type=float, default=0.05, metavar="F",
                        help="the budget's band, relative to the request: met when the 95%% interval of the "
                             "measured latency fraction lies within it (default: 0.05)")
    parser.add_argument("--recalibrate-bn", choices=("auto", "on", "off"), default="auto",
                        help="re-estimate BatchNorm statistics of the pruned model on the calibration inputs "
                             "(auto: only with --calib-data)")
    parser.add_argument("--allocation", choices=("auto", "sensitivity", "structure", "uniform"), default="auto",
                        help="how the budget is shared among channel groups (auto: try each, keep the one whose "
                             "masked outputs stay closest to the original's on the calibration inputs)")
    parser.add_argument("--search", choices=("width", "depth", "joint"), default=None,
                        help="what the search decides: channel widths, depth (convolutions merged with the "
                             "activations between them removed, residual blocks dropped), or both in one "
                             "knapsack (default: joint, offered beside the width-only allocations, the most "
                             "faithful on the calibration inputs winning; width with --unconstrained)")
    parser.add_argument("--depth-distil-steps", type=int, default=0, metavar="N",
                        help="cost each depth option after N steps of distillation from the unpruned model on "
                             "the calibration inputs (LayerMerge's stronger proxy; a copy and N steps per "
                             "option) instead of by its output change alone (default 0)")
    parser.add_argument("--sparsity", default="auto", metavar="off|auto|N:M",
                        help="N:M sparsity per layer, an option of the joint search taken only where its "
                             "predicted or measured saving beats its fidelity cost (default auto: 2:4 where the "
                             "target's cost model predicts a gain; N:M: that pattern priced on any target, "
                             "profiled where this host runs it)")
    parser.add_argument("--sparsity-criterion", choices=("magnitude", "activation"), default="magnitude",
                        help="which weights an N:M mask keeps: the largest by magnitude (default) or by magnitude "
                             "x the input channel's activation norm on the calibration inputs")
    parser.add_argument("--widths", choices=("homogeneous", "per-layer"), default=None,
                        help="homogeneous: the groups with one role in every layer of a layer stack (each "
                             "transformer layer's MLP, its heads) keep one width, so a transformers config can "
                             "hold it and from_pretrained reloads the model; per-layer: each group its own "
                             "(default: homogeneous for hf: models, per-layer otherwise)")
    parser.add_argument("--unconstrained", action="store_true",
                        help="UPSCALE-style: every layer reading a shared tensor keeps its own input channels "
                             "(producers keep the union); exported with channels reordered to minimise gathers")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch axis")
    parser.add_argument("--atol", type=float, default=1e-4, help="ONNX verification absolute tolerance (1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="ONNX verification relative tolerance (1e-3)")
    parser.add_argument("--lut", metavar="FILE", help="latency table (default: the cache)")
    add_recovery_arguments(parser, prefix="recover-")
    add_remote_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from hwprune.config import Budget, Options
    from hwprune.pipeline.compile import compile_model

    fractions = _fractions(args.latency) if args.latency is not None else []
    if fractions:
        budget = Budget("latency", fractions[0])
    elif args.speedup is not None:
        budget = Budget("speedup", args.speedup)
    else:
        budget = Budget("ms", args.budget_ms)
    if len(fractions) > 1 and args.recover_data:
        raise HwpruneError("--recover-data recovers one build: run hwprune recover on the frontier point you pick")
    console = Console(stderr=True, soft_wrap=True)
    with remote(args) as device:
        target = resolve_target(args.target, device)
        options = Options(target, budget, args.importance, args.calib_data, args.min_keep,
                          Path(args.lut) if args.lut else None, args.refine, exclude=tuple(args.exclude),
                          atol=args.atol, rtol=args.rtol, dynamic_batch=args.dynamic_batch,
                          recalibrate_bn=args.recalibrate_bn, allocation=args.allocation, search=args.search,
                          depth_distil_steps=args.depth_distil_steps, sparsity=args.sparsity,
                          sparsity_criterion=args.sparsity_criterion, widths=args.widths,
                          unconstrained=args.unconstrained, refine_seconds=args.refine_time,
                          tolerance=args.tolerance,
                          recovery=recover_options(args, "recover_") if args.recover_data else None)
        if len(fractions) > 1:
            from hwprune.pipeline.compile import compile_frontier

            reports = compile_frontier(load(args), options, fractions, args.out, console)
        else:
            reports = [compile_model(load(args), options, args.out, console).report]
    for report in reports:
        print(_compile_summary(report))
    if len(fractions) > 1:
        print(f"wrote {args.out}/: latency-F/ per point ({', '.join(f'{f:g}' for f in fractions)}), frontier.json, "
              "frontier.png")
        return 0
    print(f"wrote {args.out}/: report.json, report.md, plan.json, baseline.onnx, pruned.onnx, pruned.pt, plots/"
          + (", build_engine.sh" if (Path(args.out) / "build_engine.sh").exists() else ""))
    return 0


def _fractions(text: str) -> list[float]:
    """``--latency 0.5`` or ``0.4,0.5,0.6``: each a fraction in (0, 1), no repeats, ascending."""
    from hwprune.config import Budget

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise HwpruneError(f"--latency {text}: give a fraction or comma-separated fractions (0.4,0.5)") from None
    for value in values:
        Budget("latency", value)  # checks the range
    if len(set(values)) != len(values):
        raise HwpruneError(f"--latency {text}: a fraction is repeated")
    return sorted(values)


def _compile_summary(report: Report) -> str:
    from hwprune.pipeline.decode import decode_summary
    from hwprune.render import verdict_line

    fid, speed = report.fidelity, report.speedup
    top1 = "n/a" if fid.top1_agreement is None else f"{100 * fid.top1_agreement:.1f}%"
    if speed.measured is not None:
        low, high = speed.measured_interval
        timing = (f"{report.baseline.latency_ms.median:.3g} ms -> {report.pruned.latency_ms.median:.3g} ms, measured "
                  f"speedup {speed.measured:.2f}x (95% interval {low:.2f}x .. {high:.2f}x; predicted "
                  f"{speed.predicted:.2f}x); {verdict_line(report.budget).replace('**', '').rstrip('.')}")
    else:
        timing = (f"predicted speedup {speed.predicted:.2f}x by the {speed.predicted_by} model, not measured "
                  f"({report.engine.reason})")
    return (f"{report.model} on {report.target}: {timing}; params {report.baseline.params / 1e6:.2f}M -> "
            f"{report.pruned.params / 1e6:.2f}M; verify max abs err {report.verify.max_abs_err:.2g}; "
            f"fidelity cosine {fid.cosine:.4f}, top-1 agreement {top1}"
            + ("" if fid.kl is None else f", KL {fid.kl:.3g} nats")
            + ("" if fid.box_agreement is None else f", box agreement {fid.box_agreement:.3f}")
            + ("" if not fid.perplexity else f", perplexity {fid.perplexity['baseline']:.4g} -> "
               f"{fid.perplexity['pruned']:.4g}")
            + ("" if report.decode is None else f"; {decode_summary(report.decode)}"))
