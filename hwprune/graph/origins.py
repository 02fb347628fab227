"""Which module made each op of a trace: so a refusal names the part of the user's model it is about.

torch-pruning names the ops it follows after autograd (``_Reshape_6()``, ``_ElementWiseOp_151(SubBackward0)``),
which tells a user nothing about their model. While the trace runs, every module's forward claims the
autograd nodes it created that no module inside it claimed first (forward hooks run innermost first), so
each op is told by the innermost module that computed it. A model converted from ONNX is one module per
ONNX node: it carries, as ``onnx_nodes``, each module's ONNX node name and op type as the user's file spells
them (``frontends.onnx``), and the op is named by those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def recording_origins(model: nn.Module, found: dict[int, tuple[object, str]]) -> Iterator[None]:
    """While active, ``found[id(grad_fn)] = (grad_fn, where)`` for every autograd node a named module's forward
    creates (the grad_fn is held so its id stays its own)."""
    names = {module: name for name, module in model.named_modules() if name}
    onnx_nodes: dict[str, tuple[str, str]] = getattr(model, "onnx_nodes", {})

    def claim(module: nn.Module, inputs: tuple, output: object) -> None:
        name = names[module]
        where = (f"ONNX node {onnx_nodes[name][0]} ({onnx_nodes[name][1]})" if name in onnx_nodes
                 else f"{name} ({type(module).__name__})")
        stop = {id(t.grad_fn) for t in _tensors(inputs) if t.grad_fn is not None}
        stack = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in stop or id(fn) in found:
                continue
            found[id(fn)] = (fn, where)
            stack.extend(next_fn for next_fn, _ in fn.next_functions)

    handles = [module.register_forward_hook(claim) for module in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []
