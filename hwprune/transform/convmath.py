"""Exact arithmetic on convolutions: fold a BatchNorm, merge a chain, fold a skip into the centre tap.

Merging rests on one identity: cross-correlating with ``W1`` then with ``W2`` is cross-correlating
with their full convolution (``K[c] = sum_{a + b = c} W1[a] W2[b]``), and the first conv's bias
reaches the output as ``W2``'s spatial sum times it. That holds where every position the second
conv reads was computed by the first, i.e. once the chain's padding has been moved to its first
conv (``move_padding``); the merge is then exact. Grouped convolutions are expanded to dense
block-diagonal weights for the sum, and the result is depthwise again when every input was.
Everything is computed in float64 and cast back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """``norm(conv(x))`` as one convolution with a bias (inference statistics, the norm's own eps)."""
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale + (norm.bias.double() if norm.bias is not None else 0.0)
    folded = _like(conv, conv.padding)
    folded.weight.data = (conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    folded.bias.data = (bias * scale + shift).to(conv.weight.dtype)
    return folded


def move_padding(convs: Sequence[nn.Conv2d]) -> list[nn.Conv2d]:
    """The chain with all its padding on the first conv (scaled by the strides before each pad;
    legal spans pad nothing after a stride), so every position a later conv reads is computed."""
    total, stride = [0, 0], [1, 1]
    for conv in convs:
        for d in (0, 1):
            total[d] += conv.padding[d] * stride[d]
            stride[d] *= conv.stride[d]
    moved = [_like(convs[0], tuple(total), convs[0])]
    moved += [_like(conv, (0, 0), conv) for conv in convs[1:]]
    return moved


def merge_convs(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One convolution computing the (padding-moved, activation-free) chain ``convs``."""
    first = convs[0]
    weight = _dense(first)
    bias = _bias(first)
    stride, padding = list(first.stride), list(first.padding)
    for conv in convs[1:]:
        w2 = _dense(conv)
        bias = _bias(conv) + w2.sum((2, 3)) @ bias
        if conv.kernel_size == (1, 1):
            weight = torch.einsum("om,mi...->oi...", w2[:, :, 0, 0], weight)
        else:
            kh, kw = conv.kernel_size
            weight = nn.functional.conv2d(weight.transpose(0, 1), w2.flip(2, 3), padding=(kh - 1, kw - 1)
                                          ).transpose(0, 1)
        for d in (0, 1):
            padding[d] += conv.padding[d] * stride[d]
            stride[d] *= conv.stride[d]
    depthwise = all(c.groups == c.in_channels == c.out_channels for c in convs)
    if depthwise:
        channels = torch.arange(weight.shape[0])
        weight = weight[channels, channels].unsqueeze(1)
    merged = nn.Conv2d(first.in_channels, convs[-1].out_channels, tuple(weight.shape[2:]), tuple(stride),
                       tuple(padding), groups=first.in_channels if depthwise else 1, bias=True)
    merged.weight.data = weight.to(first.weight.dtype)
    merged.bias.data = bias.to(first.weight.dtype)
    return merged.to(first.weight.device)


def fold_skip(conv: nn.Conv2d) -> nn.Conv2d:
    """``x + conv(x)`` as one conv: the identity added at the tap that reads each output's own
    position (the padding index; the conv keeps the input's size, so that tap exists)."""
    if conv.stride != (1, 1) or conv.in_channels != conv.out_channels or any(
            k != 2 * p + 1 for k, p in zip(conv.kernel_size, conv.padding, strict=True)):
        raise ValueError(f"a skip folds only into a size-keeping stride-1 conv, not {conv}")
    folded = _like(conv, conv.padding, conv)
    ph, pw = conv.padding
    channels = torch.arange(conv.out_channels)
    column = torch.zeros_like(channels) if conv.groups == conv.in_channels else channels
    if conv.groups not in (1, conv.in_channels):
        raise ValueError("a skip folds only into a dense or depthwise conv")
    folded.weight.data[channels, column, ph, pw] += 1
    return folded


def _like(conv: nn.Conv2d, padding: tuple[int, ...], source: nn.Conv2d | None = None) -> nn.Conv2d:
    """A conv of ``conv``'s shape with ``padding`` and a bias; with ``source``'s weights if given."""
    made = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                     groups=conv.groups, bias=True).to(device=conv.weight.device, dtype=conv.weight.dtype)
    if source is not None:
        made.weight.data = source.weight.detach().clone()
        made.bias.data = (source.bias.detach().clone() if source.bias is not None
                          else torch.zeros_like(made.bias))
    return made


def _dense(conv: nn.Conv2d) -> torch.Tensor:
    weight = conv.weight.detach().double()
    if conv.groups == 1:
        return weight
    out_per, in_per = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = weight.new_zeros(conv.out_channels, conv.in_channels, *conv.kernel_size)
    for g in range(conv.groups):
        dense[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] = weight[g * out_per:(g + 1) * out_per]
    return dense


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        return conv.weight.new_zeros(conv.out_channels, dtype=torch.float64)
    return conv.bias.detach().double()
