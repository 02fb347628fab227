"""On-device kit: time one ONNX model, or several interleaved (A B A B ...), with the target's runtime.

    python export/time_models.py pruned.onnx --target cpu
    python export/time_models.py baseline.onnx pruned.onnx --target jetson-orin-nano --rounds 30

Prints one JSON line: ``timings`` (median, p90, p99 ms, spread, runs per model) and, for several
models, ``ratios`` (model i against the first: the median over rounds of the per-round ratio), their
spread and the per-round ratios themselves (``round_ratios``, what a verdict pools); exactly what
``hwprune compile`` and ``hwprune bench`` compute on a local runtime.
Exit 2 with one line when a model or the runtime is missing. Torch-free.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwprune.errors import HwpruneError  # noqa: E402
from hwprune.runtime import runtime_for  # noqa: E402
from hwprune.runtime.kit import answer  # noqa: E402
from hwprune.targets import load_target  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL.onnx")
    parser.add_argument("--target", required=True, help="device profile, e.g. cpu or jetson-orin-nano")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds for several models (15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs of one model (3)")
    parser.add_argument("--min-runs", type=int, default=10, help="timed runs of one model, at least (10)")
    parser.add_argument("--min-seconds", type=float, default=0.1, help="seconds of timed runs, at least (0.1)")
    args = parser.parse_args(argv)
    return answer("time_models", lambda: _timed(args))


def _timed(args: argparse.Namespace) -> dict:
    runners = []
    try:
        runtime = runtime_for(load_target(args.target))
        runtime.require("time it where the runtime is installed")
        for path in args.models:
            if not path.is_file():
                raise HwpruneError(f"{path}: file not found")
            try:
                runners.append(runtime.load(path))
            except HwpruneError:
                raise
            except Exception as exc:  # the runtime's own error types for a model it cannot load
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise HwpruneError(f"{path}: not a loadable ONNX model ({text[:200]})") from exc
        if len(runners) == 1:
            result = {"timings": [asdict(runtime.time(runners[0], args.warmup, args.min_runs, args.min_seconds))]}
        else:
            comparison = runtime.interleaved(runners, rounds=args.rounds)
            result = {"timings": [asdict(t) for t in comparison.timings], "ratios": comparison.ratios,
                      "ratio_spread": comparison.ratio_spread, "round_ratios": comparison.round_ratios}
        result["input_shapes"] = [[list(s) for s in r.input_shapes] for r in runners]
        return result
    finally:
        for runner in runners:
            runner.close()

if __name__ == "__main__":
    sys.exit(main())
