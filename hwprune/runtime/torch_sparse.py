"""2:4 linear weights on PyTorch's semi-structured sparse kernels (``torch.sparse.to_sparse_semi_structured``:
cuSPARSELt, or CUTLASS where ``SparseSemiStructuredTensor._FORCE_CUTLASS`` is set), so that a 2:4 layer timed
through the torch runtime on CUDA runs the sparse kernel its price claims.

When the torch runtime loads a module or a graph, every linear weight that is already 2:4 along its input
channels (a plan's N:M layer, an N:M single-op graph of a latency table) goes on the sparse kernel, as
TensorRT with sparse weights enabled picks sparse tactics for 2:4 weights. One that PyTorch's rules refuse
(:func:`refusal`: one function says why) stays on the dense kernel and is recorded with the reason, never
named sparse. PyTorch's semi-structured kernels take 2-D weights, so convolutions never take them here. The
shape limits are read from PyTorch's own tables. torch is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, dtype, nn

Refuse = Callable[[str, tuple[int, int]], "str | None"]  # (op, weight shape) -> why not, for one layer

PATTERN = "2:4"  # the one pattern sparse tensor cores run
MIN_CAPABILITY = (8, 0)  # sparse tensor cores arrived with Ampere (sm_80)


@dataclass
class SemiStructured:
    """What a load did with the 2:4 linear weights it found: those on the sparse kernel, those left dense
    (with why)."""

    sparse: list[str] = field(default_factory=list)
    dense: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"sparse_kernel": list(self.sparse), "dense_kernel": dict(self.dense)}


def capability() -> tuple[int, int] | None:
    """The visible GPU's compute capability; None without one."""
    import torch

    return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None


def _backend():
    """The semi-structured tensor class ``to_sparse_semi_structured`` converts to in this build; None where
    that is cuSPARSELt and the build lacks it."""
    import torch
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        return torch.sparse.SparseSemiStructuredTensorCUTLASS
    return SparseSemiStructuredTensorCUSPARSELT if torch.backends.cusparselt.is_available() else None


def refusal(pattern: str, op: str | None, shape: tuple[int, int] | None, dtype: dtype, device: str,
            gpu: tuple[int, int] | None) -> str | None:
    """Why PyTorch would not run ``pattern`` on a semi-structured sparse kernel for a layer (``op``, its
    weight's (out, in) ``shape``; both None to ask of every layer), at ``dtype`` on ``device`` with a GPU of
    compute capability ``gpu``; None where it would. The dense operand (the layer's input) is padded by
    PyTorch to its kernel's multiples, so its size refuses no layer; the padding is part of what is timed."""
    if pattern != PATTERN:
        return f"PyTorch's semi-structured sparse kernels run {PATTERN} only, not {pattern}"
    if device != "cuda":
        return f"PyTorch runs semi-structured sparse kernels on CUDA GPUs only, not on the {device}"
    if gpu is None or tuple(gpu) < MIN_CAPABILITY:
        found = "none visible" if gpu is None else ".".join(map(str, gpu))
        return f"semi-structured sparse kernels need a GPU of compute capability 8.0 or later (here: {found})"
    backend = _backend()
    if backend is None:
        return ("this PyTorch build has no cuSPARSELt (torch.backends.cusparselt), which "
                "to_sparse_semi_structured uses unless SparseSemiStructuredTensor._FORCE_CUTLASS is set")
    limits = backend._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if limits is None:
        taken = ", ".join(sorted(map(str, backend._DTYPE_SHAPE_CONSTRAINTS)))
        return f"PyTorch's {backend.BACKEND} sparse kernels take {taken}, not {dtype}"
    if op is None:
        return None
    if op != "linear" or shape is None or len(shape) != 2:
        return f"PyTorch's semi-structured sparse kernels take linear layers (a 2-D weight), not {op}"
    rows, cols = shape
    low_rows, low_cols = limits.sparse_min_rows, limits.sparse_min_cols
    if rows < low_rows or rows % low_rows or cols < low_cols or cols % low_cols:
        return (f"a {rows}x{cols} (out x in) weight: PyTorch's {backend.BACKEND} kernels at {dtype} take multiples "
                f"of {low_rows}x{low_cols}")
    return None


def to_semi_structured(weight: Tensor) -> Tensor:
    """``weight`` (out x in, 2:4 along in) as a semi-structured sparse tensor: PyTorch's conversion."""
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured(weight.detach().contiguous())


def _is_24(weight: Tensor) -> bool:
    from hwprune.sparsity.masks import is_nm

    return weight.dim() == 2 and is_nm(weight, 2, 4)


def sparsify_module(module: nn.Module, refuse: Refuse) -> SemiStructured:
    """``module``'s 2:4 linear weights (module on its device, at its precision) put on the sparse kernel in
    place, except where ``refuse`` (:func:`refusal` on the runtime's device) says why not."""
    from torch import nn

    found = SemiStructured()
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.Linear) or not _is_24(layer.weight):
            continue
        reason = refuse("linear", tuple(layer.weight.shape))
        if reason is not None:
            found.dense[name] = reason
            continue
        layer.weight = nn.Parameter(to_semi_structured(layer.weight), requires_grad=False)
        found.sparse.append(name)
    return found


def sparsify_program(program, refuse: Refuse) -> SemiStructured:
    """The same for an ONNX graph rebuilt as torch ops (``torch_onnx.OnnxProgram``): each MatMul by a
    constant 2:4 weight (in x out, the layout ``cost.onnx_ops`` and linear exports write) multiplies by the
    semi-structured tensor's transpose, which PyTorch's sparse matmul takes."""
    import torch

    found = SemiStructured()
    weights = {names[1] for op, names, _ in program.steps if op is torch.matmul and len(names) == 2}
    for name in sorted(weights & set(program.tensors)):
        weight = program.tensors[name]
        if not weight.is_floating_point() or not _is_24(weight.t()):
            continue
        reason = refuse("linear", tuple(weight.t().shape))
        if reason is not None:
            found.dense[name] = reason
            continue
        program.tensors[name] = to_semi_structured(weight.t()).t()
        found.sparse.append(name)
    return found
