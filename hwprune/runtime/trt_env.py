"""Whether this host can build and run TensorRT engines (TensorRT, Polygraphy, cuda-python, a GPU),
the GPU's name, and how Polygraphy is called: its log kept off stdout (the kit's answer is one JSON
line there) and its failures turned into one-line errors.

cuda-python is here only for what Polygraphy does not offer: counting the GPUs and naming the first.
Every import of tensorrt, polygraphy and cuda sits inside a function, so hwprune imports without them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import ModuleType

from hwprune.errors import HwpruneError

INSTALL = "pip install 'hwprune[trt]'"
NO_TENSORRT = f"TensorRT is not installed ({INSTALL} on a machine with an NVIDIA GPU)"
NO_POLYGRAPHY = f"Polygraphy is not installed (pip install polygraphy, or {INSTALL})"


def _cudart() -> ModuleType:
    """cuda-python's runtime bindings (the module moved in cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _checked(result: tuple) -> object:
    error, *values = result
    if int(error) != 0:
        raise HwpruneError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else values


def unavailable_reason() -> str | None:
    """Why engines cannot be built or run on this machine, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return NO_TENSORRT
    try:
        import polygraphy.backend.trt  # noqa: F401
    except ImportError:
        return NO_POLYGRAPHY
    try:
        runtime = _cudart()
    except ImportError:
        return f"cuda-python is not installed (pip install cuda-python, or {INSTALL})"
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        return "no CUDA GPU is visible"
    return None


def require(doing: str) -> None:
    """One line saying why ``doing`` (e.g. "build a TensorRT engine") cannot happen here, if it cannot."""
    reason = unavailable_reason()
    if reason is not None:
        raise HwpruneError(f"cannot {doing}: {reason}")


def tensorrt() -> ModuleType:
    """The tensorrt module, or the one-line error that names what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise HwpruneError(NO_TENSORRT) from None
    return trt


def gpu_name() -> str | None:
    """The first GPU's name, where engines can run here."""
    if unavailable_reason() is not None:
        return None
    name = _checked(_cudart().cudaGetDeviceProperties(0)).name
    return name.decode().rstrip("\x00") if isinstance(name, bytes) else str(name)


@contextlib.contextmanager
def polygraphy_call(what: str) -> Iterator[None]:
    """Run Polygraphy's loaders and runners with its log at errors only and on stderr, and a failure
    (Polygraphy logs it, then raises) as ``HwpruneError("WHAT: first line")``."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR), contextlib.redirect_stdout(sys.stderr):
            yield
    except PolygraphyException as exc:
        detail = str(exc).strip().splitlines()
        raise HwpruneError(f"{what}: {detail[0] if detail else type(exc).__name__}") from None
