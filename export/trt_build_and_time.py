"""On-device kit: build a TensorRT engine from an hwprune ONNX file and time it, without torch.

A Jetson has TensorRT but rarely a full Python ML stack, so this script uses only hwprune's
torch-free runtime layer (``hwprune/runtime/trt*.py``, the same code ``hwprune compile`` runs where
a GPU is present: NVIDIA Polygraphy's loaders build the engine, its ``TrtRunner`` times it) and the
device profiles. It needs TensorRT, Polygraphy and cuda-python there (``pip install polygraphy
cuda-python`` beside JetPack's TensorRT). Run it from a checkout (or with ``pip install --no-deps
hwprune``):

    python export/trt_build_and_time.py build/pruned.onnx --target jetson-orin-nano [--max-batch 8]

Prints one JSON line: the engine path and its inference time (``TrtRunner.last_inference_time``,
inputs on the GPU: median, p90, p99 ms). Exit 2 with one line when TensorRT, Polygraphy,
cuda-python or a GPU is missing. Written, not yet run on a device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwprune.errors import HwpruneError  # noqa: E402
from hwprune.runtime.kit import answer  # noqa: E402
from hwprune.runtime.trt import build_engine, engine_config, time_engine  # noqa: E402
from hwprune.targets import load_target  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--target", required=True, help="device profile, e.g. jetson-orin-nano")
    parser.add_argument("--input-shape", default="1,3,224,224", help="static input shape (default 1,3,224,224)")
    parser.add_argument("--max-batch", type=int, help="build an optimisation profile for batch 1..N")
    parser.add_argument("--sparse", action="store_true", help="enable 2:4 sparse weights")
    args = parser.parse_args(argv)
    return answer("trt_build_and_time", lambda: _built_and_timed(args), errors=(HwpruneError, ValueError))


def _built_and_timed(args: argparse.Namespace) -> dict:
    if not args.onnx.is_file():
        raise HwpruneError(f"{args.onnx}: file not found")
    shape = tuple(int(d) for d in args.input_shape.split(","))
    config = engine_config(load_target(args.target), args.onnx, args.onnx.with_suffix(".engine"), shape,
                           sparse=args.sparse, max_batch=args.max_batch)
    timing = time_engine(build_engine(config), shape)
    return {"engine": str(config.engine), "median_ms": timing.median_ms, "p90_ms": timing.p90_ms,
            "p99_ms": timing.p99_ms, "runs": timing.samples}

if __name__ == "__main__":
    sys.exit(main())
