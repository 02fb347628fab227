"""``hwprune bench``: time an ONNX model (a torch target: also a ``.pt2`` program or a compile's build
folder); against a baseline, exit 1 on a latency regression."""

from __future__ import annotations

import argparse
import json

from hwprune.cli.common import Subparsers, add_remote_arguments, remote, resolve_target
from hwprune.errors import HwpruneError


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("bench",
                                   help="time an ONNX model; with a baseline, exit 1 on a latency regression")
    parser.add_argument("onnx", metavar="MODEL.onnx",
                        help="the model to time; a build folder (compile --out): its pruned.onnx; torch targets also "
                             "time a MODEL.pt2")
    parser.add_argument("--target", default="cpu", help="device profile (default: cpu); jetson: the module --remote "
                                                        "reaches, identified there (else jetson-orin-nano)")
    parser.add_argument("--save", metavar="FILE", help="write the measurement record (JSON) to FILE")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--baseline", metavar="FILE", help="compare with a saved record (same host and settings)")
    reference.add_argument("--baseline-model", metavar="OTHER.onnx",
                           help="compare with another model timed in the same interleaved run (robust on noisy CI)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="allowed slowdown before exit 1 (default: 0.05 = 5%%)")
    parser.add_argument("--allow-fingerprint-mismatch", action="store_true",
                        help="compare with a record from another host or settings anyway")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_remote_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import hwprune.gate as gate

    if not 0 <= args.tolerance < 10:
        raise HwpruneError(f"--tolerance {args.tolerance}: must be in [0, 10)")
    model = Path(args.onnx)
    if model.is_dir():  # a compile's build folder
        model = model / "pruned.onnx"
    verdict = None
    with remote(args) as device:
        target = resolve_target(args.target, device)
        if args.baseline_model:
            verdict = gate.compare_models(model, Path(args.baseline_model), target, args.tolerance)
            result = {"model": str(model), "baseline_model": args.baseline_model, **verdict.to_json()}
            if args.save:
                gate.save_record(result, Path(args.save))
        else:
            baseline = gate.load_record(Path(args.baseline)) if args.baseline else None
            current = gate.record(model, target)
            if args.save:
                gate.save_record(current, Path(args.save))
            result = dict(current)
            if baseline is not None:
                verdict = gate.compare_to_record(current, baseline, args.tolerance, args.allow_fingerprint_mismatch)
                result["comparison"] = verdict.to_json()
    if args.json:
        print(json.dumps(result, indent=2))
    elif verdict is None:
        print(f"{model}: median {result['median_ms']:.3f} ms, p90 {result['p90_ms']:.3f} ms, "
              f"spread {100 * result['spread']:.1f}% ({result['samples']} runs, {target.name}"
              + (f" on {device.label})" if device is not None else ")"))
    if verdict is not None and not args.json:
        status = "REGRESSION" if verdict.regressed else "ok"
        print(f"{status}: {model} {verdict.candidate_ms:.3f} ms vs baseline {verdict.baseline_ms:.3f} ms, ratio "
              f"{verdict.ratio:.3f} (tolerance {1 + verdict.tolerance:.2f}, {verdict.method})")
    return 1 if verdict is not None and verdict.regressed else 0
