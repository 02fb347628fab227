"""The runtime layer: the only code that knows one inference runtime from another.

A :class:`~hwprune.runtime.base.Runtime` loads a model for a target (an onnxruntime session, a
TensorRT engine), times it alone or interleaved with others, times single-op graphs for latency
tables, and fingerprints the host or device a measurement was made on. ``latency/`` (cost models)
and ``export/`` (artefacts) both stand on it and never on each other. Nothing here imports torch:
the TensorRT half runs on a bare JetPack (``export/trt_build_and_time.py``).
"""

from __future__ import annotations

from hwprune.errors import DeviceError
from hwprune.runtime.base import Runner, Runtime
from hwprune.targets import Target

__all__ = ["Runner", "Runtime", "runtime_for"]


def runtime_for(target: Target) -> Runtime:
    """The runtime that times ``target`` (never another one in its place)."""
    if target.runtime == "onnxruntime":
        from hwprune.runtime.ort import OnnxRuntime

        return OnnxRuntime(target)
    if target.runtime == "tensorrt":
        from hwprune.runtime.trt import TensorRT

        return TensorRT(target)
    raise DeviceError(f"target {target.name}: unknown runtime {target.runtime!r}")
