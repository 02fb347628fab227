"""``hwprune latency``: a model's predicted latency on a target, and with --measure its measured one."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from hwprune.cli.common import Subparsers, add_model_arguments, load_and_analyze, resolve_target


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("latency", help="predict (and with --measure, measure) a model's latency")
    add_model_arguments(parser)
    parser.add_argument("--target", default="cpu", help="device profile (default: cpu); jetson: jetson-orin-nano")
    parser.add_argument("--lut", metavar="FILE", help="latency table (default: the cache)")
    parser.add_argument("--measure", action="store_true", help="also measure on this host and print the error")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hwprune.cost.model_latency import host_predictor
    from hwprune.runtime import runtime_for

    target = resolve_target(args.target)
    runtime = runtime_for(target)
    if args.measure:  # says why this host cannot measure the target, before any work
        runtime.require("measure on the device, or drop --measure for the prediction")
    analysis = load_and_analyze(args)
    predictor = host_predictor(analysis, target, Path(args.lut) if args.lut else None)
    prediction = predictor.predict({})
    measured = None
    if args.measure:
        from hwprune.pipeline.profiling import measure_model

        measured = measure_model(analysis.model, analysis.capture.example_input, target).median_ms
    result = {"model": analysis.name, "target": target.name, "predicted_ms": prediction.total_ms,
              "source": prediction.source, "latency_model": asdict(predictor.provenance()), "measured_ms": measured,
              "layers": [{"name": n, "predicted_ms": ms} for n, ms in prediction.layers_ms.items()]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{analysis.name} on {target.name}: predicted {prediction.total_ms:.3f} ms ({prediction.source}; "
          f"{predictor.describe()})")
    if measured is not None:
        error = 100 * (prediction.total_ms - measured) / measured
        print(f"measured {measured:.3f} ms ({target.runtime}, this host); prediction error {error:+.1f}%")
    return 0
