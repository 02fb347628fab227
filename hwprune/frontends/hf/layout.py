"""What a transformers config says about a model's shape, read back from the modules; GPT-2's ``Conv1D`` as Linear.

The analyzer, latency model and pruner know ``nn.Linear``; GPT-2's projections are transformers' ``Conv1D``
(weight stored (in, out), ``y = x @ W + b``), so an ``hf:`` model is loaded with each replaced by the Linear that
computes the same, and its weights are turned back when it is saved. ``save_pretrained`` writes a config from which
``from_pretrained`` rebuilds the model, so every shape the pruned modules hold must be in it: this module reads
those fields from the modules themselves (never from a plan, which need not say all that changed), and refuses a
field whose value differs between layers, since a config holds one. All of hwprune's knowledge of which module
holds which config field is here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwprune.errors import ModelSpecError

# families whose embedding width is ``hidden_size`` and whose attention reads ``getattr(config, "head_dim", ...)``
# (transformers 5.24), so a head width that is no longer hidden_size / heads can be written (Qwen2 has no such field)
HIDDEN_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
# the first projection of each layer's MLP (by module-name suffix) and the config field that holds its width
MLP_FIELDS = {"mlp.gate_proj": "intermediate_size", "mlp.up_proj": "intermediate_size",
              "intermediate.dense": "intermediate_size", "mlp.fc1": "intermediate_size", "mlp.c_fc": "n_inner"}


@dataclass(frozen=True)
class _Heads:
    """Where an attention module keeps its query (and key) projection and the width of one head."""

    query: str
    key: str | None  # None: as many key/value heads as query heads
    head_dim: str
    fused: int = 1  # q, k and v in one projection (GPT-2's c_attn): q holds 1/fused of its outputs


# Llama/Qwen/Mistral, BERT, GPT-2's cross-attention (before its c_attn, which there holds only k and v), GPT-2
_ATTENTIONS = (_Heads("q_proj", "k_proj", "head_dim"), _Heads("query", "key", "attention_head_size"),
               _Heads("q_attn", None, "head_dim"), _Heads("c_attn", None, "head_dim", fused=3))


def linear_from_conv1d(model: nn.Module) -> None:
    """Replace every transformers ``Conv1D`` in ``model`` by the ``nn.Linear`` computing the same: the weight
    transposed to (out, in), the same bias. No random init is drawn (the caller's seed stream is left alone)."""
    from transformers.pytorch_utils import Conv1D

    for name, conv in [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]:
        linear = nn.Linear(conv.nx, conv.nf, bias=conv.bias is not None, device="meta")
        linear.weight = nn.Parameter(conv.weight.detach().t().contiguous())
        if conv.bias is not None:
            linear.bias = conv.bias
        model.set_submodule(name, linear)


def conv1d_state(rebuilt: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (Linear weights, (out, in)) with the weight of every module that ``rebuilt`` holds as a ``Conv1D``
    transposed to Conv1D's (in, out), for loading into the model as transformers builds it."""
    from transformers.pytorch_utils import Conv1D

    state = dict(state)
    for name, module in rebuilt.named_modules():
        if isinstance(module, Conv1D):
            state[f"{name}.weight"] = state[f"{name}.weight"].t().contiguous()
    return state


def layer_stack(model: nn.Module) -> nn.ModuleList | None:
    """The model's stack of layers: its one ModuleList not inside another (Llama's ``model.layers``, GPT-2's
    ``transformer.h``, BERT's ``encoder.layer``, ViT's ``vit.layers``); None where there are several
    (encoder-decoder) or none."""
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    outer = [name for name in lists if not any(name.startswith(f"{other}.") for other in lists)]
    return model.get_submodule(outer[0]) if len(outer) == 1 else None


def pruned_config(model: nn.Module) -> Any:
    """A copy of ``model.config`` with every field the pruned modules' shapes hold set from them: hidden size,
    MLP width, number of layers, layer types, attention heads (and key/value heads, and head width)."""
    config = copy.deepcopy(model.config)
    if getattr(config, "model_type", None) in HIDDEN_FAMILIES:
        config.hidden_size = model.get_input_embeddings().embedding_dim
    for name, value in _mlp_width(model).items():
        setattr(config, name, value)
    stack = layer_stack(model)
    if stack is not None:
        _set_layers(config, stack)
    _set_heads(config, model)
    return config


def heads_fixed(model: nn.Module) -> str | None:
    """Why ``model``'s config cannot hold a pruned head count (None where it can: it has ``head_dim``, or its
    attention reads one where written)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "head_dim", None) is not None or _reads_head_dim(config):
        return None
    return (f"a {type(config).__name__} derives the head width from hidden_size / num_attention_heads, so "
            "from_pretrained could not reload pruned heads (--widths per-layer prunes them for ONNX)")


def _one(field: str, values: set) -> Any:
    """The one value of ``field`` across layers; several are a ModelSpecError naming it."""
    if len(values) > 1:
        raise ModelSpecError(f"the pruned {field} values differ between layers ({sorted(values)}); a transformers "
                             "config holds one, so from_pretrained cannot reload it (pruned.pt and pruned.onnx hold "
                             "it)")
    return values.pop()


def _mlp_width(model: nn.Module) -> dict[str, int]:
    """Each MLP width field with its one value, the output width of the MLP's first projection."""
    widths: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        field = next((f for suffix, f in MLP_FIELDS.items() if name.endswith(suffix)), None)
        if field is not None and isinstance(module, nn.Linear):
            widths.setdefault(field, set()).add(module.out_features)
    return {field: _one(field, values) for field, values in widths.items()}


def _layer_type(layer: nn.Module) -> str | None:
    """The type a layer was built as (``attention_type`` or, in most of transformers, its attention's
    ``layer_type``), or None where it does not say."""
    for module in layer.modules():
        for attribute in ("attention_type", "layer_type"):
            value = getattr(module, attribute, None)
            if isinstance(value, str):
                return value
    return None


def _set_layers(config: Any, stack: nn.ModuleList) -> None:
    """``num_hidden_layers`` from the stack's length and, where the config lists them, the kept layers' types."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        kept = [_layer_type(layer) for layer in stack]
        if None not in kept:
            types = kept
        elif len(types) != len(stack):
            raise ModelSpecError(f"layer_types: the config lists {len(types)} layer types, the pruned model has "
                                 f"{len(stack)} layers that do not say theirs, so from_pretrained cannot reload it")
    config.num_hidden_layers = len(stack)
    if types is not None:
        config.layer_types = types


def _set_heads(config: Any, model: nn.Module) -> None:
    """``num_attention_heads`` (and ``num_key_value_heads`` where the config has it) from each attention's q (and
    k) projection width over its head width. Where the config holds no ``head_dim``, transformers derives it as
    hidden_size / num_attention_heads: ``head_dim`` is written where the attention reads it (Qwen2), and elsewhere
    a head count that does not give back the modules' head width is refused."""
    heads: set[int] = set()
    kv_heads: set[int] = set()
    head_dims: set[int] = set()
    for module in model.modules():
        kind = next((a for a in _ATTENTIONS if isinstance(getattr(module, a.query, None), nn.Linear)
                     and isinstance(getattr(module, a.head_dim, None), int)), None)
        if kind is None:
            continue
        head_dim = getattr(module, kind.head_dim)
        count = getattr(module, kind.query).out_features // kind.fused // head_dim
        key = getattr(module, kind.key) if kind.key else None
        head_dims.add(head_dim)
        heads.add(count)
        kv_heads.add(key.out_features // head_dim if isinstance(key, nn.Linear) else count)
    if not heads:
        return
    count, head_dim = _one("num_attention_heads", heads), _one("head_dim", head_dims)
    derived = config.hidden_size == count * head_dim
    if getattr(config, "head_dim", None) is not None or (not derived and _reads_head_dim(config)):
        config.head_dim = head_dim
    elif not derived:
        raise ModelSpecError(f"num_attention_heads: the pruned attention has {count} heads of {head_dim}, but a "
                             f"{type(config).__name__} derives the head width from hidden_size / num_attention_heads, "
                             "so from_pretrained cannot reload it (pruned.pt and pruned.onnx hold it)")
    config.num_attention_heads = count
    if getattr(config, "num_key_value_heads", None) is not None:
        config.num_key_value_heads = _one("num_key_value_heads", kv_heads)


def _reads_head_dim(config: Any) -> bool:
    """Whether the model's attention takes its head width from a ``head_dim`` written into the config."""
    return getattr(config, "model_type", None) in HIDDEN_FAMILIES
