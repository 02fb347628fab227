"""Where ReplaceMe can fold a run's linear map in a Hugging Face decoder (``transform.linear_map``): the MLP
output projection of the layer before the run, in a pre-norm layer whose MLP output is added straight to
the residual stream (Llama, Qwen2, Qwen3, Mistral: ``mlp.down_proj``). A layer that normalises the MLP's
output before the add (Gemma's ``post_feedforward_layernorm``) has no such projection."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

PROJECTION = "mlp.down_proj"


def replacement_folds(model: nn.Module, layers: Sequence[str]) -> dict[str, str]:
    """Per stack layer of ``layers`` (``PARENT.INDEX`` paths) that has a layer before it with such a
    projection, that projection's path: where the map of a run starting at the layer folds."""
    folds = {}
    for path in layers:
        parent, _, index = path.rpartition(".")
        if not index.isdigit() or int(index) < 1:
            continue
        before = f"{parent}.{int(index) - 1}"
        layer = model.get_submodule(before)
        projection = getattr(getattr(layer, "mlp", None), "down_proj", None)
        if isinstance(projection, nn.Linear) and hasattr(layer, "post_attention_layernorm") and not hasattr(
                layer, "post_feedforward_layernorm"):
            folds[path] = f"{before}.{PROJECTION}"
    return folds
