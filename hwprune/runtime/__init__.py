"""The runtime layer: the only code that knows one inference runtime from another.

A :class:`~hwprune.runtime.base.Runtime` loads a model for a target (an onnxruntime session, a
TensorRT engine, a PyTorch module run eagerly, in a CUDA graph or compiled), times it alone or
interleaved with others, times single-op graphs for latency tables, and fingerprints the host or
device a measurement was made on. ``latency/`` (cost models) and ``export/`` (artefacts) both stand
on it and never on each other. No module here imports torch at its top: the torch runtime
(``pytorch.py``, ``torch_onnx.py``) imports it inside its functions, when a torch target is timed, so
the layer imports without torch and the on-device kit that reaches it stays torch-free (the TensorRT
half runs on a bare JetPack, ``export/trt_build_and_time.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from hwprune.errors import DeviceError
from hwprune.runtime.base import Runner, Runtime
from hwprune.targets import Target

if TYPE_CHECKING:
    from hwprune.runtime.remote import RemoteSession

__all__ = ["Runner", "Runtime", "remote_device", "runtime_for"]

_REMOTE: list[RemoteSession] = []  # the device every runtime_for answers with, inside remote_device()


@contextmanager
def remote_device(address: str, ssh_config: str | None = None, accept_new_host_key: bool = False,
                  python: str = "python3") -> Iterator[RemoteSession]:
    """Inside this block every target is timed on the device at ``address`` over SSH (the kit copied
    there once, its work folder removed at the end, also on an error or Ctrl-C)."""
    from hwprune.runtime.remote import RemoteSession

    with RemoteSession(address, ssh_config, accept_new_host_key, python) as session:
        _REMOTE.append(session)
        try:
            yield session
        finally:
            _REMOTE.remove(session)


def runtime_for(target: Target) -> Runtime:
    """The runtime that times ``target`` (never another one in its place): on the device, inside
    :func:`remote_device`. A torch target is measured on this host or not at all: where it cannot run
    (``cuda`` without a GPU) this is the error that says why."""
    if target.runtime == "torch":
        if _REMOTE:
            raise DeviceError(f"target {target.name} times this host's {target.device} through PyTorch; --remote "
                              "times onnxruntime and TensorRT targets only")
        from hwprune.runtime.pytorch import TorchRuntime

        runtime = TorchRuntime(target)
        runtime.require("a torch target is measured on this host only, never predicted or timed elsewhere in its place")
        return runtime
    if _REMOTE:
        return _REMOTE[-1].runtime(target)
    if target.runtime == "onnxruntime":
        from hwprune.runtime.ort import OnnxRuntime

        return OnnxRuntime(target)
    if target.runtime == "tensorrt":
        from hwprune.runtime.trt import TensorRT

        return TensorRT(target)
    raise DeviceError(f"target {target.name}: unknown runtime {target.runtime!r}")
