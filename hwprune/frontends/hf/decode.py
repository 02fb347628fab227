"""One decode step of a transformers decoder with a KV cache, as a module of plain tensors (the ``hf:``
frontend's decode-step capability; ``export.kv_step`` exports and checks it).

A compile times the decoder's prefill (the whole prompt in one forward); generating then runs one token per
step against the keys and values cached for the tokens before it, a different shape of work (matrix-vector
products and a read of the whole cache per token), so pruning can change it by another factor. The step is the
model's own decode path: its forward with a transformers ``DynamicCache`` built from the past tensors, so the
RoPE positions, the mask and grouped-query attention are the model's; it returns the logits and every layer's
keys and values with the new token appended (what the next step reads).

The cache's shapes are read from the model, by running it with a cache on a prompt of the past length, never
from its config: a pruned model may have fewer layers than its config said and, per layer, fewer key/value
heads than ``num_key_value_heads`` says (heads pruning slices the projections only).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.frontends.base import StepModule


class DecodeStep(nn.Module):
    """``forward(input_ids, key_0, value_0, key_1, ...)``: the next token ids (batch, 1) and each cached layer's
    past keys and values -> (logits, new key_0, new value_0, ...), each new one holding one more position."""

    def __init__(self, model: nn.Module, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers
        self._cache_arg = cache_keyword(model)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        if len(past) != 2 * self.layers:
            raise HwpruneError(f"a decode step of {self.layers} cached layers takes {2 * self.layers} past tensors, "
                               f"got {len(past)}")
        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.layers)], config=self.model.config)
        # an explicit all-ones mask over past and new positions, as the compile's prefill reads the whole prompt
        mask = torch.ones(input_ids.shape[0], past[0].shape[-2] + input_ids.shape[1], dtype=torch.long)
        out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=True, return_dict=True,
                         **{self._cache_arg: cache})
        return (out.logits, *(t for layer in cache.layers for t in (layer.keys, layer.values)))


def past_shapes(model: nn.Module, batch: int, past_length: int) -> list[tuple[int, ...]]:
    """Per cached layer, the shape of its past keys after a prompt of ``past_length`` tokens: read from the cache
    the model fills on one (values have the same shape in every model hwprune exports a step of)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    tokens = torch.zeros(batch, past_length, dtype=torch.long)
    with torch.no_grad():
        model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=True,
              **{cache_keyword(model): cache})
    shapes = []
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is None or getattr(layer, "values", None) is None:
            raise HwpruneError(f"cache layer {i} ({type(layer).__name__}) holds no keys and values: a decode step "
                               "of plain key/value tensors cannot describe this model's cache")
        if layer.keys.shape != layer.values.shape:
            raise HwpruneError(f"cache layer {i}: keys {tuple(layer.keys.shape)} and values "
                               f"{tuple(layer.values.shape)} differ in shape")
        if layer.get_seq_length() != layer.keys.shape[-2]:  # a sliding window keeps the last positions only
            raise HwpruneError(f"cache layer {i} keeps {layer.keys.shape[-2]} of {past_length} past positions (a "
                               "sliding window): the token's position is not in its past tensors, so a step of "
                               "plain tensors cannot compute it; use a --input-shape SEQ below the window")
        shapes.append(tuple(layer.keys.shape))
    if not shapes:
        raise HwpruneError("the model filled no cache layer on a prompt: it keeps no KV cache")
    return shapes


def decode_step(model: nn.Module, batch: int, past_length: int) -> StepModule:
    """``model``'s (a transformers decoder's) decode step at a static ``batch`` and ``past_length``."""
    shapes = past_shapes(model, batch, past_length)
    return StepModule(DecodeStep(model, len(shapes)).eval(), shapes,
                      int(model.get_input_embeddings().num_embeddings))


def wrapped_decode_step(wrapper: nn.Module, batch: int, past_length: int) -> StepModule:
    """The decode step of the transformers model an ``hf:`` spec loaded (held by hwprune's wrapper)."""
    return decode_step(wrapper.model, batch, past_length)


def cache_keyword(model: nn.Module) -> str:
    """The keyword the model's forward takes its cache by: ``cache`` from transformers 5.x, ``past_key_values``
    before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
