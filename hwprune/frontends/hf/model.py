"""``hf:PATH`` and ``hf:NAME``: a Hugging Face transformers model, offline, as a module that takes its main input
and returns plain tensors, and saved back with ``save_pretrained`` once pruned."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import _one_line
from hwprune.frontends.hf.layout import conv1d_state, linear_from_conv1d, pruned_config

HF_TOKEN_SHAPE = (1, 128)  # batch, sequence: the example token ids of an hf: model


class HFModel(nn.Module):
    """A Hugging Face transformers model whose forward takes its main input (token ids, or a float image batch as
    ``pixel_values`` for a vision model such as ViT) and returns plain tensors: the logits of a model with a head,
    else the last hidden state (and the pooler's output where the model has a pooler, so that it stays in the
    traced graph). No cache; the attention mask of token ids is all ones: the whole sequence is read."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # transformers names a model with a head <Base>For<Task>: its output is logits (fidelity adds KL);
        # one that can generate is searched in prefill, and compile also measures its decode step (pipeline.decode)
        self.returns_logits = "For" in type(model).__name__ or "LMHead" in type(model).__name__  # GPT2LMHeadModel
        self.generates = bool(getattr(model, "can_generate", lambda: False)())
        self.pixels = hf_takes_pixels(type(model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.pixels:
            out = self.model(pixel_values=inputs, return_dict=True)
        else:
            kwargs = {"use_cache": False} if "use_cache" in self.model.config.to_dict() else {}
            if "attention_mask" in inspect.signature(self.model.forward).parameters:
                # an explicit all-ones mask: without one, transformers looks for packed sequences in the position
                # ids with torch.diff, which the ONNX exporter has no op for
                kwargs["attention_mask"] = torch.ones_like(inputs)
            out = self.model(input_ids=inputs, return_dict=True, **kwargs)
        if getattr(out, "logits", None) is not None:
            return out.logits
        pooled = getattr(out, "pooler_output", None)
        return out.last_hidden_state if pooled is None else (out.last_hidden_state, pooled)


def hf_takes_pixels(model_class: type) -> bool:
    """Whether a transformers model class's main input is an image batch (``pixel_values``), by its
    ``main_input_name`` or, where it has none, its forward's first parameter."""
    name = getattr(model_class, "main_input_name", None)
    if name is None and callable(getattr(model_class, "forward", None)):
        name = next((p for p in inspect.signature(model_class.forward).parameters if p != "self"), None)
    return name == "pixel_values"


def _check_hf_shape(pixels: bool, shape: tuple[int, ...] | None, spec: str) -> None:
    """``--input-shape`` must be BATCH,C,H,W for images, BATCH,SEQ for token ids: else a one-line error."""
    if shape is not None and len(shape) != (4 if pixels else 2):
        wanted = "BATCH,C,H,W for the image batch" if pixels else "BATCH,SEQ for the token ids"
        raise ModelSpecError(f"{spec}: --input-shape {','.join(map(str, shape))}: give {wanted}")


def hf_example(model: nn.Module, shape: tuple[int, ...] | None, spec: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """An example input for ``model``: a random normal image batch BATCH,C,H,W (default 1, num_channels,
    image_size, image_size) for a vision model, else random token ids BATCH,SEQ (default 1,128) below the
    vocabulary size."""
    config, pixels = model.config, hf_takes_pixels(type(model))
    _check_hf_shape(pixels, shape, spec)
    if pixels:
        size = getattr(config, "image_size", None)
        if shape is None and not isinstance(size, int):
            raise ModelSpecError(f"{spec}: its config has no single image_size; give --input-shape BATCH,C,H,W")
        return torch.randn(shape or (1, int(getattr(config, "num_channels", 3)), size, size), generator=generator)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise ModelSpecError(f"{spec}: its config has no vocab_size; hwprune feeds hf: models token ids or, where "
                             "the main input is pixel_values, images")
    return torch.randint(0, int(vocab), shape or HF_TOKEN_SHAPE, dtype=torch.long, generator=generator)


def _load_hf(target: str, weights: str | None, input_shape: tuple[int, ...] | None
             ) -> tuple[HFModel, torch.Tensor, str]:
    """A transformers model from a local folder (config.json and weights) or, by name, from the local Hugging
    Face cache only: offline (HF_HUB_OFFLINE, ``local_files_only``), eager attention, float32, eval mode.
    The example: :func:`hf_example` (token ids, or an image batch for a model whose main input is pixel_values)."""
    spec = f"hf:{target}"
    if weights is not None:
        raise ModelSpecError(f"{spec}: --weights does not apply; the weights are the folder's")
    if "://" in target:
        raise ModelSpecError(f"{spec}: hwprune never downloads; give a local folder or a model in the local "
                             "Hugging Face cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise ModelSpecError(f"{spec}: transformers is not installed (pip install 'hwprune[hf]')") from None
    folder = Path(target)
    local = folder.exists() or target.startswith((".", "/", "~")) or target.count("/") > 1
    if local and not folder.is_dir():
        raise ModelSpecError(f"{spec}: no such folder")
    if local and not (folder / "config.json").is_file():
        raise ModelSpecError(f"{spec}: the folder has no config.json (write one with save_pretrained)")
    source = str(folder) if local else target
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        where = "the folder's config.json is unreadable" if local else "not in the local Hugging Face cache " \
            "(hwprune never downloads; give a folder as hf:PATH)"
        raise ModelSpecError(f"{spec}: {where}: {_one_line(exc)[:200]}") from exc
    except ValueError as exc:
        raise ModelSpecError(f"{spec}: transformers does not know this config: {_one_line(exc)[:200]}") from exc
    architectures = config.architectures or []
    auto = None
    for arch in architectures:
        auto = getattr(transformers, arch, None)
        if auto is not None:
            break
    auto = auto or transformers.AutoModel
    model_class = auto if auto is not transformers.AutoModel else transformers.MODEL_MAPPING.get(type(config), None)
    if model_class is not None:  # a wrong shape fails before the weights load
        _check_hf_shape(hf_takes_pixels(model_class), input_shape, spec)
    try:
        model = auto.from_pretrained(source, local_files_only=True, attn_implementation="eager",
                                     dtype=torch.float32)
    except Exception as exc:  # missing or mismatched weights, unknown classes: one line
        raise ModelSpecError(f"{spec}: transformers could not load it: {_one_line(exc)[:300]}") from exc
    example = hf_example(model, input_shape, spec)
    linear_from_conv1d(model)  # GPT-2's projections, as the layers the analyzer and pruner know
    return HFModel(model.float().eval()), example, f"the transformers model {source}"


def save_hf(module: HFModel, folder: Path) -> None:
    """Write a pruned ``hf:`` model with ``save_pretrained`` into ``folder``, its config rewritten from the pruned
    modules (:func:`layout.pruned_config`: MLP width, layers, layer types, heads) and GPT-2's Linear
    layers saved as the ``Conv1D`` transformers builds. A field that differs between layers is a ModelSpecError
    saying why from_pretrained cannot reload it. The config is checked by building the model from it, loading the
    pruned weights strictly and running both on the same tokens (or image); the caller's model is not changed."""
    model = module.model
    rebuilt = type(model)(pruned_config(model)).eval()
    try:
        rebuilt.load_state_dict(conv1d_state(rebuilt, model.state_dict()), strict=True)
    except RuntimeError as exc:
        raise ModelSpecError(f"the pruned model does not fit its updated config: {_one_line(exc)[:200]}") from exc
    shape = None if module.pixels else (1, 8)  # a short sequence; images at the size the model was built for
    inputs = hf_example(model, shape, "the pruned model", torch.Generator().manual_seed(0))
    for a, b in zip(_eval_outputs(module, inputs), _eval_outputs(HFModel(rebuilt), inputs), strict=True):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())):
            raise ModelSpecError("the model rebuilt from the updated config computes something else (max abs "
                                 f"difference {float((a - b).abs().max()):.3g}), so from_pretrained cannot reload it")
    rebuilt.save_pretrained(folder)


def _eval_outputs(module: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``module``'s outputs on ``inputs`` in eval mode (no dropout), each submodule's own mode restored after."""
    modes = {m: m.training for m in module.modules()}
    try:
        with torch.no_grad():
            out = module.eval()(inputs)
    finally:
        for m, training in modes.items():
            m.training = training
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)
