"""Training data for recovery: where it comes from, how it is batched and split across processes.

``--data SPEC`` is ``module:fn`` or ``path/to/file.py:fn`` returning a torch ``Dataset`` (items are
an input, or (input, target) pairs) or an iterable of batches (tensors, or (input, target) pairs),
or ``folder:PATH``: an ImageFolder tree (one folder per class), resized to the model's input and
normalised with ``--mean``/``--std`` (by default as the model spec's own preprocessing does).
Every process sees the same global order (one seeded permutation) and takes its share of each
global batch, so the loss curve of N processes follows the one-process curve for the same global
batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hwprune.errors import ModelSpecError
from hwprune.frontends import user_function

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor | None


@dataclass
class TrainingData:
    """Batches of one process's share, epoch by epoch; ``samples`` counts the whole data set."""

    spec: str
    samples: int
    labelled: bool
    _loader: DataLoader | None = None
    _batches: list[Batch] | None = None
    _sampler: DistributedSampler | None = None
    _share: tuple[int, int] = (0, 1)

    def epoch(self, number: int) -> Iterator[Batch]:
        if self._loader is not None:
            self._sampler.set_epoch(number)
            for item in self._loader:
                yield _as_batch(item, self.spec)
            return
        rank, world = self._share
        for batch in self._batches:  # an iterable of batches: each process takes its rows of each batch
            yield Batch(batch.inputs[rank::world], None if batch.targets is None else batch.targets[rank::world])

    def __len__(self) -> int:
        return len(self._loader) if self._loader is not None else len(self._batches)


def spec_normalisation(spec: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a model spec's own preprocessing uses on [0, 1] pixels: none for Ultralytics
    (it feeds pixels / 255), ImageNet's for other 3-channel models (torchvision's and timm's weights),
    none for any other channel count."""
    if channels == 3 and not spec.startswith("ultralytics:"):
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.0,) * channels, (1.0,) * channels


def open_data(spec: str, example_input: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1,
              mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
              shuffle: bool = True) -> TrainingData:
    """The data named by ``spec``, checked against the model's input; ``batch_size`` is the global batch."""
    if batch_size < world:
        raise ModelSpecError(f"--batch-size {batch_size}: needs at least one sample per process ({world} processes)")
    if spec.startswith("folder:"):
        dataset = _image_folder(spec, example_input, mean, std)
    elif ":" in spec:
        source, name = spec.rsplit(":", 1)
        try:
            dataset = user_function(source, name)()
        except ModelSpecError:
            raise
        except Exception as exc:  # arbitrary user code
            raise ModelSpecError(f"--data {spec}: failed: {type(exc).__name__}: {exc}") from exc
    else:
        raise ModelSpecError(f"--data {spec!r}: use folder:PATH, module:function or path/to/file.py:function")
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        data = _from_dataset(spec, dataset, batch_size, seed, rank, world, shuffle)
    else:
        data = _from_batches(spec, dataset, rank, world)
    _check(data, example_input)
    return data


def _from_dataset(spec: str, dataset: Dataset, batch_size: int, seed: int, rank: int, world: int,
                  shuffle: bool) -> TrainingData:
    if len(dataset) == 0:
        raise ModelSpecError(f"--data {spec}: the data set is empty")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, num_workers=0)
    first = dataset[0]
    labelled = isinstance(first, tuple | list) and len(first) > 1
    return TrainingData(spec, len(dataset), labelled, loader, None, sampler, (rank, world))


def _from_batches(spec: str, iterable: object, rank: int, world: int) -> TrainingData:
    try:
        batches = [_as_batch(item, spec) for item in iterable]
    except TypeError as exc:
        raise ModelSpecError(f"--data {spec}: returned {type(iterable).__name__}, not a Dataset or an iterable of "
                             "batches") from exc
    if not batches:
        raise ModelSpecError(f"--data {spec}: yielded no batches")
    small = [len(b.inputs) for b in batches if len(b.inputs) < world]
    if small:
        raise ModelSpecError(f"--data {spec}: a batch of {small[0]} cannot be shared by {world} processes")
    labelled = all(b.targets is not None for b in batches)
    return TrainingData(spec, sum(len(b.inputs) for b in batches), labelled, None, batches, None, (rank, world))


def _as_batch(item: object, spec: str) -> Batch:
    if isinstance(item, torch.Tensor):
        return Batch(item, None)
    if isinstance(item, tuple | list) and item and isinstance(item[0], torch.Tensor):
        target = item[1] if len(item) > 1 else None
        if target is not None and not isinstance(target, torch.Tensor):
            target = torch.as_tensor(target)
        return Batch(item[0], target)
    raise ModelSpecError(f"--data {spec}: yields {type(item).__name__}, not a tensor or an (input, target) pair")


def _check(data: TrainingData, example_input: torch.Tensor) -> None:
    """Inputs of the model's input shape (any batch size); targets one per sample."""
    batch = next(iter(data.epoch(0)))
    if tuple(batch.inputs.shape[1:]) != tuple(example_input.shape[1:]):
        raise ModelSpecError(f"--data {data.spec}: inputs of shape {list(batch.inputs.shape)}; the model takes "
                             f"(N, {', '.join(str(d) for d in example_input.shape[1:])})")
    if batch.targets is not None and batch.targets.shape[:1] != batch.inputs.shape[:1]:
        raise ModelSpecError(f"--data {data.spec}: {len(batch.targets)} targets for {len(batch.inputs)} inputs")


def _image_folder(spec: str, example_input: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    from pathlib import Path

    from torchvision import datasets, transforms

    root = Path(spec.split(":", 1)[1])
    if not root.is_dir():
        raise ModelSpecError(f"--data {spec}: no such folder")
    if example_input.dim() != 4:
        raise ModelSpecError(f"--data {spec}: image folders feed image models (N, C, H, W); this one takes "
                             f"{list(example_input.shape)}")
    channels, height, width = example_input.shape[1:]
    if len(mean) != channels or len(std) != channels:
        raise ModelSpecError(f"--data {spec}: --mean/--std need {channels} values, one per input channel")
    mode = {1: "L", 3: "RGB"}.get(int(channels))
    if mode is None:
        raise ModelSpecError(f"--data {spec}: the model takes {channels} channels; image folders give 1 or 3")
    transform = transforms.Compose([transforms.Lambda(lambda image: image.convert(mode)),
                                    transforms.Resize((int(height), int(width))), transforms.ToTensor(),
                                    transforms.Normalize(mean, std)])
    try:
        return datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, OSError) as exc:  # no class folders, or none with images
        raise ModelSpecError(f"--data {spec}: {exc}") from exc
