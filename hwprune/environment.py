"""What a measurement was made on: host, runtime and library versions, and GPU/TensorRT/L4T where present.

Two latency numbers are comparable only when these agree (``hwprune bench`` checks the binding
ones). Optional pieces (CUDA, TensorRT, Jetson's L4T) are looked up only when asked, never at import.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

from hwprune.latency.lut import host_fingerprint
from hwprune.latency.profiler import runtime_settings
from hwprune.targets import Target


def fingerprint(target: Target) -> dict:
    """The settings and versions a measurement on ``target`` (on this host) depends on."""
    import onnxruntime as ort
    import torch

    threads, level = runtime_settings(target)
    found = {"target": target.name, "host": host_fingerprint(), "runtime": "onnxruntime",
             "runtime_version": ort.__version__, "providers": ["CPUExecutionProvider"], "threads": threads,
             "graph_optimization_level": level, "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["cuda"] = torch.version.cuda
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        found["tensorrt"] = tensorrt.__version__
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():
        found["l4t"] = tegra.read_text().splitlines()[0].strip()
    return found
