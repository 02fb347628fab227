"""``timm:NAME``: a timm model with random weights."""

from __future__ import annotations

from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import DEFAULT_IMAGE_SHAPE


def _load_timm(name: str, weights: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import timm
    except ImportError:
        raise ModelSpecError(f"timm:{name}: timm is not installed (pip install 'hwprune[timm]')") from None
    if name not in timm.list_models():
        raise ModelSpecError(f"timm:{name}: no such timm model")
    if weights is not None:
        raise ModelSpecError(f"timm:{name}: loading timm weights is not supported offline; use a .py factory")
    model = timm.create_model(name, pretrained=False)
    return model, (1, *model.default_cfg.get("input_size", DEFAULT_IMAGE_SHAPE[1:]))
