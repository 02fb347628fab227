"""``torchvision:NAME``: a torchvision model, random weights or its hub weights from the local cache."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import DEFAULT_IMAGE_SHAPE


def _load_torchvision(name: str, weights: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelSpecError(f"torchvision:{name}: no such torchvision model (see torchvision.models.list_models())")
    shape = DEFAULT_IMAGE_SHAPE
    weight_enum = None
    try:
        weight_enum = torchvision.models.get_model_weights(name).DEFAULT
        crop = weight_enum.transforms().crop_size
        size = crop[0] if isinstance(crop, (list, tuple)) else crop
        shape = (1, 3, int(size), int(size))
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    if weights is None:
        return torchvision.models.get_model(name, weights=None), shape
    if weight_enum is None:
        raise ModelSpecError(f"torchvision:{name}: has no pretrained weights")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight_enum.url).name
    if not cached.exists():
        raise ModelSpecError(f"torchvision:{name}: weights not present at {cached} (hwprune never downloads)")
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return model, shape
