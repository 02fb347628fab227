"""``hwprune apply``: re-apply a plan.json to its model without searching, verified and exported."""

from __future__ import annotations

import argparse
import sys

from hwprune.cli.common import DEFAULT_SEED, Subparsers, add_model_arguments
from hwprune.errors import HwpruneError


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("apply", help="re-apply a plan.json to its model without searching; verified")
    parser.add_argument("plan", metavar="PLAN", help="plan.json written by hwprune compile")
    add_model_arguments(parser, optional=True)
    parser.add_argument("--calib-data", metavar="SPEC",
                        help="the calibration data the compile used, needed when the plan recalibrated BatchNorm")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis")
    parser.add_argument("--atol", type=float, default=1e-4, help="ONNX verification absolute tolerance (1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="ONNX verification relative tolerance (1e-3)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (pruned.onnx, pruned.pt)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hwprune.frontends import load_model, parse_input_shape
    from hwprune.pipeline.apply import apply_plan_file
    from hwprune.plan import load_plan

    if args.atol < 0 or args.rtol < 0:
        raise HwpruneError("--atol and --rtol must be >= 0")
    plan = load_plan(args.plan)
    made_for = plan.provenance
    spec = args.model or made_for.model
    shape = parse_input_shape(args.input_shape) if args.input_shape else tuple(made_for.input_shape)
    seed = args.seed if args.seed is not None else (made_for.seed if made_for.seed is not None else DEFAULT_SEED)
    loaded = load_model(spec, shape, args.weights, seed, args.trust_pickle)
    applied = apply_plan_file(plan, args.plan, loaded, args.calib_data, Path(args.out), args.atol, args.rtol,
                              args.dynamic_batch)
    after = sum(p.numel() for p in applied.model.parameters())
    print(f"applied {args.plan} ({len(plan.groups())} groups) to {loaded.name}: params "
          f"{applied.params_before / 1e6:.2f}M -> {after / 1e6:.2f}M; "
          f"verify max abs err {applied.verification.max_abs_err:.2g}; "
          f"wrote {args.out}/: pruned.onnx, pruned.pt")
    if plan.recovery:
        print(f"note: {args.plan} records a recovery (distillation on {plan.recovery.data}); the plan alone "
              "rebuilds the pruned model, not the recovered weights (recovered.pt in its build folder)",
              file=sys.stderr)
    return 0
