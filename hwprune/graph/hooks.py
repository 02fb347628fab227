"""One forward with forward hooks in place: how shapes, stack layers and layer scores are read off a model."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn


def run_hooked(model: nn.Module, example_input: torch.Tensor, hooks: Mapping[nn.Module, Callable],
               with_kwargs: bool = False) -> object:
    """``model``'s output on ``example_input`` (no grad) with each module's forward hook registered for
    that one call (``with_kwargs``: hooks also get the keyword arguments, as transformers passes them)."""
    handles = [module.register_forward_hook(hook, with_kwargs=with_kwargs) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            return model(example_input)
    finally:
        for handle in handles:
            handle.remove()
