"""Head-prunable self-attention, swapped in for ``nn.MultiheadAttention`` before analysis.

``nn.MultiheadAttention`` packs q, k and v into one ``in_proj_weight`` whose width must equal the
embedding width, so a head cannot be removed from it. :class:`HeadAttention` computes the same
function with separate q/k/v/out projections; removing head ``h`` then means dropping its
``head_dim`` rows of q, k and v and the matching columns of the output projection (``graph.heads``
does it), which is exact when the head's value rows are zero. The projections are plain nn.Linear
layers, so the embedding width (their input columns and the output rows) is traced and pruned like any linear
layer; the inner width is only ever pruned in whole heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HeadAttention(nn.Module):
    """Self-attention with per-head projections; a drop-in for ``nn.MultiheadAttention`` calls."""

    # Read by nn.TransformerEncoder(Layer) to decide on its fused kernel; these values opt out,
    # because the fused kernel reads nn.MultiheadAttention's packed weights.
    _qkv_same_embed_dim = False
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, out_dim: int | None = None):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.batch_first = batch_first
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, out_dim or embed_dim, bias=bias)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> HeadAttention:
        """Copy an ``nn.MultiheadAttention`` (same embed dim for q, k, v) into a HeadAttention."""
        dim = mha.embed_dim
        has_bias = mha.in_proj_bias is not None
        new = cls(dim, mha.num_heads, mha.head_dim, bias=has_bias, batch_first=mha.batch_first,
                  dropout=mha.dropout)
        with torch.no_grad():
            for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                proj.weight.copy_(mha.in_proj_weight[i * dim:(i + 1) * dim])
                if has_bias:
                    proj.bias.copy_(mha.in_proj_bias[i * dim:(i + 1) * dim])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
            elif new.out_proj.bias is not None:
                new.out_proj.bias.zero_()
        return new.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError("HeadAttention does not return attention weights")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, _ = query.shape
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores + self._additive_mask(attn_mask, key_padding_mask, is_causal, scores)
        weights = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _additive_mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                       is_causal: bool, scores: torch.Tensor) -> torch.Tensor | float:
        mask: torch.Tensor | float = 0.0
        if attn_mask is None and is_causal:
            length = scores.shape[-1]
            attn_mask = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (batch * heads, L, S) as nn.MultiheadAttention takes it
                attn_mask = attn_mask.reshape(scores.shape[0], -1, *attn_mask.shape[-2:])
            mask = mask + _as_additive(attn_mask, scores.dtype)
        if key_padding_mask is not None:
            mask = mask + _as_additive(key_padding_mask, scores.dtype)[:, None, None, :]
        return mask


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def convert_multihead_attention(model: nn.Module) -> int:
    """Replace every self-attention ``nn.MultiheadAttention`` in ``model``; returns how many.

    An ``nn.TransformerEncoder`` reads the packed weights when it builds nested tensors from a
    padding mask, so that path is switched off on every encoder (it is an optimisation only).
    """
    replaced = 0
    for module in list(model.modules()):
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim:
                setattr(module, child_name, HeadAttention.from_multihead(child))
                replaced += 1
    return replaced
