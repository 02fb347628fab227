"""Channel splits and chunks traced as one slice per piece.

torch-pruning records a ``split``/``chunk`` as one node and numbers its consumers in order as if
each read the next piece. When a piece has several consumers (C2f's ``y[-1]`` feeds both the
concat and the next bottleneck) or one consumer reads several pieces, the offsets it assigns are
wrong (yolov8n: sizes [384, 384, 128] for a 256-channel chunk in two) and every group through the
block is refused. Traced as slices, each piece is its own node with its own start and end, which
torch-pruning maps exactly and whose pruner moves start and end as channels go.

Only the trace sees slices; the model keeps its own code. So a piece's size at run time is what
that code computes: ``chunk(n)`` divides whatever width it is given (prunable, when every piece
loses the same number of channels), while ``split(sizes)`` uses sizes fixed in the code (its
pieces cannot shrink).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

CHANNEL_DIM = 1


@dataclass(frozen=True)
class Piece:
    """One piece of a traced channel split: which call (numbered in trace order), which piece, and
    whether the model's code recomputes the sizes from the width (``chunk``) or fixes them."""

    call: int
    index: int
    sizes: tuple[int, ...]
    adaptive: bool

    def describe(self) -> str:
        what = f"chunk({len(self.sizes)})" if self.adaptive else f"split({list(self.sizes)})"
        return f"a torch.{what} along channels"


@contextlib.contextmanager
def splits_as_slices(found: list[tuple[object, Piece]]) -> Iterator[None]:
    """While active, ``Tensor.split``/``Tensor.chunk``/``torch.chunk`` along channels return
    slices, and ``found`` collects (slice grad_fn, Piece) for every piece autograd records.

    Splits along other dims, of tensors of rank 3 (channels first or last is ambiguous there), of
    tensors outside autograd and of a view's output run unchanged: ShuffleNet chunks the output of
    its channel shuffle, a view that reorders channels, and traced as slices the index walk through
    that view and back grows without end (its groups are refused either way).
    """
    original_split, original_chunk, original_torch_chunk = torch.Tensor.split, torch.Tensor.chunk, torch.chunk
    calls = [0]

    def as_slices(tensor: torch.Tensor, pieces: tuple[torch.Tensor, ...], dim: int, adaptive: bool):
        if tensor.dim() in (0, 1, 3) or dim % tensor.dim() != CHANNEL_DIM or not tensor.requires_grad:
            return pieces
        if tensor.grad_fn is not None and tensor.grad_fn.name().startswith(("View", "UnsafeView", "Reshape")):
            return pieces
        sizes = tuple(int(p.shape[CHANNEL_DIM]) for p in pieces)
        calls[0] += 1
        out, start = [], 0
        for index, size in enumerate(sizes):
            piece = torch.ops.aten.slice.Tensor(tensor, CHANNEL_DIM, start, start + size)
            found.append((piece.grad_fn, Piece(calls[0], index, sizes, adaptive)))
            out.append(piece)
            start += size
        return tuple(out)

    def split(self: torch.Tensor, split_size, dim: int = 0):
        return as_slices(self, original_split(self, split_size, dim), dim, adaptive=False)

    def chunk(self: torch.Tensor, chunks: int, dim: int = 0):
        return as_slices(self, original_chunk(self, chunks, dim), dim, adaptive=True)

    torch.Tensor.split, torch.Tensor.chunk, torch.chunk = split, chunk, chunk
    try:
        yield
    finally:
        torch.Tensor.split, torch.Tensor.chunk, torch.chunk = original_split, original_chunk, original_torch_chunk
