"""N:M masks: in every run of M consecutive input channels of a conv or linear weight, keep the N
largest (by magnitude, or magnitude x the input channel's activation norm) and zero the rest.

The reduction (input-channel) dimension is the one sparse tensor cores group: TensorRT wants, for
each output channel and each kernel tap, at most 2 non-zeros in every 4 consecutive input
channels. A conv weight ``[O, I, kh, kw]`` is therefore seen as the matrix ``[O * kh * kw, I]``
(:func:`columns`), a linear weight ``[O, I]`` as itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def parse_pattern(text: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4); N and M positive with N < M."""
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"{text!r}: an N:M pattern is two integers, e.g. 2:4") from None
    if not 0 < n < m:
        raise ValueError(f"{text!r}: N:M needs 0 < N < M")
    return n, m


def columns(weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[rows, input channels]``: one row per output channel and kernel tap."""
    if weight.dim() == 2:
        return weight
    return weight.movedim(1, -1).reshape(-1, weight.shape[1])


def _uncolumns(matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 2:
        return matrix
    shape = (like.shape[0], *like.shape[2:], like.shape[1])
    return matrix.reshape(shape).movedim(-1, 1)


def nm_mask(weight: torch.Tensor, n: int, m: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of ``weight``'s shape keeping the ``n`` largest of every ``m`` consecutive input
    channels per row; ``scale`` (one non-negative value per input channel, e.g. its activation
    norm) weighs the magnitudes. Ties go to the lower channel, so the mask is deterministic."""
    matrix = columns(weight.detach()).abs().float()
    channels = matrix.shape[1]
    if channels % m:
        raise ValueError(f"{channels} input channels are not a multiple of M = {m}")
    if scale is not None:
        matrix = matrix * scale.detach().float().reshape(1, -1)
    blocks = matrix.reshape(matrix.shape[0], channels // m, m)
    # stable: equal magnitudes keep the lower channel
    order = torch.sort(blocks, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, order, True)
    return _uncolumns(keep.reshape(matrix.shape), weight)


def is_nm(weight: torch.Tensor | np.ndarray, n: int, m: int) -> bool:
    """Whether every run of ``m`` input channels of every row holds at most ``n`` non-zeros."""
    tensor = torch.as_tensor(weight)
    matrix = columns(tensor)
    if matrix.shape[1] % m:
        return False
    blocks = matrix.reshape(matrix.shape[0], -1, m)
    return bool(((blocks != 0).sum(-1) <= n).all())


def retained(matrix: np.ndarray, n: int, m: int, exact: bool = True) -> float:
    """Sum of the magnitudes an N:M mask keeps in ``matrix`` (``[rows, channels]``, channels a
    multiple of ``m``): the quantity a channel permutation maximises. ``exact`` sums correctly
    rounded (``math.fsum``), so the same kept values give the same sum in any column order; the
    fast float64 sum is for search loops that compare many orders."""
    blocks = np.abs(np.asarray(matrix, dtype=np.float64)).reshape(matrix.shape[0], -1, m)
    kept = np.sort(blocks, axis=-1)[..., m - n:]
    return math.fsum(kept.ravel().tolist()) if exact else float(kept.sum())
