"""Calibration inputs (for Taylor importance and fidelity) and the fidelity measures themselves.

``--calib-data SPEC`` names a function (``module:fn`` or ``path/to/file.py:fn``) returning an
iterable of input batches (tensors, or (input, label) pairs whose labels are ignored), or, for an
``hf:`` model, ``text:FILE``: the file's text tokenized with the model's own tokenizer (from its
folder or the local cache) and cut into batches of the example's shape. Without it, seeded random
batches shaped like the example input stand in (the caller warns): good enough for latency and
exactness, a weak proxy for what real data exercises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends import user_function

RANDOM_BATCHES = 4
RANDOM_BATCH_SIZE = 8


@dataclass
class Calibration:
    batches: list[torch.Tensor]
    source: str
    random: bool = False


def load_calibration(spec: str | Iterable | None, example_input: torch.Tensor, limit: int = 16,
                     model: str | None = None, fixed_batch: bool = False) -> Calibration:
    """Up to ``limit`` batches from ``spec`` (a spec, or the batches themselves: a DataLoader or any iterable of
    tensors or (input, label) pairs), or seeded random batches when it is None; ``model`` (the model spec)
    says where a ``text:`` spec's tokenizer is. A model whose batch is ``fixed_batch`` (an ONNX file exported
    at a static batch) runs batches of the example's size only."""
    batch = example_input.shape[0] if fixed_batch else None
    if spec is not None and not isinstance(spec, str):
        batches = _batches(lambda: spec, "the calibration data passed in", limit)
        _check_shapes(batches, example_input, "the calibration data passed in", batch)
        return Calibration(batches, "batches passed in by the caller")
    if spec is None:
        generator = torch.Generator().manual_seed(0)
        size = batch or RANDOM_BATCH_SIZE
        shape = (size, *example_input.shape[1:])
        if example_input.is_floating_point():
            batches = [torch.randn(shape, generator=generator) for _ in range(RANDOM_BATCHES)]
        else:
            high = int(example_input.max()) + 1
            batches = [torch.randint(0, high, shape, generator=generator, dtype=example_input.dtype)
                       for _ in range(RANDOM_BATCHES)]
        return Calibration(batches, f"random ({RANDOM_BATCHES} batches of {size}, seed 0)", random=True)
    if spec.startswith("text:"):
        return Calibration(_text_batches(spec, example_input, model, limit), spec)
    if ":" not in spec:
        raise ModelSpecError(f"--calib-data {spec!r}: use module:function or path/to/file.py:function")
    source, name = spec.rsplit(":", 1)
    batches = _batches(user_function(source, name), f"--calib-data {spec}", limit)
    _check_shapes(batches, example_input, f"--calib-data {spec}", batch)
    return Calibration(batches, spec)


def _batches(make: Callable[[], Iterable], what: str, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` input tensors from what ``make`` returns (tensors or (input, label) pairs); any
    failure of the user's code is a one-line ModelSpecError naming ``what``."""
    batches = []
    try:
        for item in make():
            batch = item[0] if isinstance(item, tuple | list) else item
            if not isinstance(batch, torch.Tensor):
                raise ModelSpecError(f"{what}: yields {type(batch).__name__}, not a tensor")
            batches.append(batch)
            if len(batches) == limit:
                break
    except ModelSpecError:
        raise
    except Exception as exc:  # arbitrary user code
        raise ModelSpecError(f"{what}: failed: {type(exc).__name__}: {exc}") from exc
    if not batches:
        raise ModelSpecError(f"{what}: yielded no batches")
    return batches


def _check_shapes(batches: list[torch.Tensor], example_input: torch.Tensor, what: str, batch: int | None = None
                  ) -> None:
    if any(b.shape[1:] != example_input.shape[1:] for b in batches):
        raise ModelSpecError(f"{what}: batches must have the example input's shape "
                             f"(N, {', '.join(str(d) for d in example_input.shape[1:])})")
    if batch is not None and any(b.shape[0] != batch for b in batches):
        raise ModelSpecError(f"{what}: the model's batch is fixed at {batch} (its ONNX file's input); give batches "
                             f"of {batch}")


def _text_batches(spec: str, example_input: torch.Tensor, model: str | None, limit: int) -> list[torch.Tensor]:
    """``text:FILE`` tokenized by the ``hf:`` model's tokenizer, in consecutive windows of the example's
    sequence length, ``example_input.shape[0]`` windows a batch (a short text gives fewer batches)."""
    path = Path(spec.removeprefix("text:"))
    if model is None or not model.startswith("hf:"):
        raise ModelSpecError(f"--calib-data {spec}: text is for hf: models (tokenized with their tokenizer)")
    if not path.is_file():
        raise ModelSpecError(f"--calib-data {spec}: no such file")
    from hwprune.frontends.hf.text import token_ids

    ids = token_ids(model.removeprefix("hf:"), path.read_text(), f"--calib-data {spec}")
    batch, length = example_input.shape[0], example_input.shape[1]
    windows = ids[:len(ids) // length * length].reshape(-1, length)
    batches = [windows[i:i + batch] for i in range(0, len(windows) - batch + 1, batch)][:limit]
    if not batches:
        raise ModelSpecError(f"--calib-data {spec}: {len(ids)} tokens, fewer than one batch of "
                             f"{batch} x {length}")
    return batches


@dataclass
class Fidelity:
    """How closely a pruned model follows the original on the same inputs (no labels needed)."""

    cosine: float
    top1_agreement: float | None
    samples: int
    # Why the numbers say little, when they do: the original's outputs are vanishingly small or
    # hardly depend on the input (common with random weights).
    caveat: str | None = None
    # Models with several outputs (a detector's box and class heads): the mean cosine of each, in
    # output order; ``cosine`` is the first one's. None for a single output.
    per_output: list[float] | None = None
    # Detectors, on the user's images: the share of boxes both models find (same class, IoU >= 0.5),
    # as F1 over all images (``boxes.box_f1``); None where the model has no box decode or neither model
    # detects anything.
    box_agreement: float | None = None
    # Models whose first output is logits (``returns_logits``: a transformers model with a head): the mean
    # KL divergence, in nats, from the unpruned model's distribution to the pruned one's at each position.
    kl: float | None = None
    # A language model on the user's text: perplexity of the next token, unpruned and pruned.
    perplexity: dict[str, float] | None = None

    @property
    def overall_cosine(self) -> float:
        """What the search weighs: every output alike (a detector's boxes and its classes)."""
        return sum(self.per_output) / len(self.per_output) if self.per_output else self.cosine


def fidelity(original: nn.Module, pruned: nn.Module, batches: list[torch.Tensor], text: bool = False) -> Fidelity:
    """Mean per-sample cosine similarity of the outputs, and (for N x classes outputs) the share
    of samples whose top-1 class agrees; for several outputs, also each one's cosine. For a model
    that returns logits (``returns_logits``), top-1 agreement and KL are taken at every position;
    for one that generates, on real ``text`` (token batches of the user's), both models' perplexity."""
    logits = getattr(original, "returns_logits", False)
    perplexities = logits and text and getattr(original, "generates", False)
    comparison, kl, agree, positions = Comparison(), 0.0, 0.0, 0
    nll = {"baseline": 0.0, "pruned": 0.0}
    tokens = 0
    with torch.no_grad():
        for batch in batches:  # one batch's outputs held at a time (an LM's logits: 622 MB a batch at 0.5B)
            reference = output_tensors(original(batch))
            output = output_tensors(pruned(batch))
            comparison.add(reference, output)
            if logits:
                a, b = reference[0], output[0]
                count = a.numel() // a.shape[-1]
                kl, positions = kl + logits_kl([a], [b]) * count, positions + count
                agree += float((a.argmax(-1) == b.argmax(-1)).double().sum())
                if perplexities:
                    for name, scores in (("baseline", a), ("pruned", b)):
                        total, count = next_token_nll(scores, batch)
                        nll[name] += total
                    tokens += count
            del reference, output
    quality = comparison.fidelity()
    if logits:
        quality.kl, quality.top1_agreement = kl / positions, agree / positions
        if perplexities:
            quality.perplexity = {name: math.exp(total / tokens) for name, total in nll.items()}
    return quality


# The measures below go one sample at a time in float64: a language model's logits over a large vocabulary
# are hundreds of MB a batch (8 x 128 positions x 151,936 tokens: 622 MB), and float64 copies of whole
# batches, several at once, took more memory than the model.


def next_token_nll(scores: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """One batch's summed cross-entropy of each next token under the logits before it, and how many tokens."""
    total = sum(float(nn.functional.cross_entropy(sample[:-1].double(), sample_ids[1:], reduction="sum"))
                for sample, sample_ids in zip(scores, ids, strict=True))
    return total, ids[:, 1:].numel()


def logits_kl(references: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Mean KL(softmax(reference) || softmax(output)) over every position (the last axis is the classes)."""
    total, positions = 0.0, 0
    for batch_a, batch_b in zip(references, outputs, strict=True):
        for a, b in zip(batch_a, batch_b, strict=True):
            p_log = torch.log_softmax(a.double(), dim=-1)
            per_position = (p_log.exp() * (p_log - torch.log_softmax(b.double(), dim=-1))).sum(dim=-1)
            total, positions = total + float(per_position.sum()), positions + per_position.numel()
    return total / positions


def sample_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each sample's cosine between ``a`` and ``b`` (batch first), in float64 (``cosine_similarity`` row by
    row: the same numbers as on the whole batch, without its float64 copies)."""
    rows = zip(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), strict=True)
    return torch.cat([nn.functional.cosine_similarity(x.double()[None], y.double()[None], dim=1) for x, y in rows])


def compare_all(references: list[list[torch.Tensor]], outputs: list[list[torch.Tensor]]) -> Fidelity:
    """``fidelity`` from every output already computed, per batch."""
    comparison = Comparison()
    for reference, output in zip(references, outputs, strict=True):
        comparison.add(reference, output)
    return comparison.fidelity()


class Comparison:
    """``compare_all`` built batch by batch, keeping per-sample numbers, not outputs: a caller can drop each
    batch's outputs once added (an LM's logits are hundreds of MB a batch)."""

    def __init__(self) -> None:
        self.cosines: list[list[torch.Tensor]] = []  # per output, per batch: each sample's cosine
        self.agreements: list[torch.Tensor] = []  # the first output's top-1 agreement, where it is (N, classes)
        self.spread = Spread()  # of the references' first output, for the caveat

    def add(self, reference: list[torch.Tensor], output: list[torch.Tensor]) -> None:
        self.cosines = self.cosines or [[] for _ in reference]
        self.spread.add(reference[0])
        for i, (a, b) in enumerate(zip(reference, output, strict=True)):
            self.cosines[i].append(sample_cosines(a, b))
            if i == 0 and a.dim() == 2:
                self.agreements.append((a.argmax(dim=1) == b.argmax(dim=1)).double())

    def fidelity(self) -> Fidelity:
        """Mean cosine of the first output (and of each, where there are several), top-1 agreement, and
        the caveat the references' first output calls for."""
        first = torch.cat(self.cosines[0])
        top1 = float(torch.cat(self.agreements).mean()) if self.agreements else None
        quality = Fidelity(float(first.mean()), top1, int(first.numel()), self.spread.caveat())
        if len(self.cosines) > 1:
            quality.per_output = [float(torch.cat(cosines).mean()) for cosines in self.cosines]
        return quality


def output_tensors(output: object) -> list[torch.Tensor]:
    """A model's outputs as a list of tensors, in order (nested tuples and lists flattened)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, tuple | list):
        return [t for item in output for t in output_tensors(item)]
    return []


class Spread:
    """How large the unpruned model's outputs are and how much they vary from sample to sample, gathered batch by
    batch: the largest magnitude and the largest difference from the first sample."""

    def __init__(self) -> None:
        self.scale, self.deviation, self.samples = 0.0, 0.0, 0
        self.first: torch.Tensor | None = None

    def add(self, batch: torch.Tensor) -> None:
        for x in batch.reshape(batch.shape[0], -1):
            self.first = x.double() if self.first is None else self.first
            self.scale = max(self.scale, float(x.abs().max()))
            self.deviation = max(self.deviation, float((x.double() - self.first).abs().max()))
            self.samples += 1

    def caveat(self) -> str | None:
        """Why cosine and top-1 against these outputs say little, if they do: vanishingly small, or hardly depending
        on the input (every sample within 1e-3 of the scale from the first)."""
        if self.scale < 1e-6:
            return (f"the unpruned model's outputs are vanishingly small (max {self.scale:.2g}), so cosine and top-1 "
                    "are noise")
        if self.samples > 1 and self.deviation / self.scale < 1e-3:
            return "the unpruned model's outputs hardly depend on the input, so cosine and top-1 say little"
        return None


def first_output(output: object) -> torch.Tensor:
    """A model's main output: the first element when it returns a tuple or list."""
    return output[0] if isinstance(output, tuple | list) else output
