"""Channel importance and group sensitivity kept in ``$HWPRUNE_CACHE/scores/``: one JSON file per (weights,
calibration batches, BatchNorm re-estimation batches, method), so a second compile of the same model on the same
inputs (another budget, another target) scores nothing again. The values round-trip exactly (each array with its
dtype), so a cached run decides what a fresh one would."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hwprune.importance.scores import Importance
from hwprune.io import write_text_atomic

FORMAT = "hwprune-scores/1"


def batches_digest(prefix: str, batches: Sequence[torch.Tensor]) -> str:
    """32 hex digits of the sha256 of ``prefix`` and each batch's shape and bytes: the name of a cache file
    kept per weights and inputs (here and ``option_costs.CostTable``)."""
    digest = hashlib.sha256(prefix.encode())
    for tensor in batches:
        digest.update(f"{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def scores_path(folder: Path, weights_digest: str, method: str, with_sensitivity: bool,
                batches: Sequence[torch.Tensor]) -> Path:
    """Where the scores of these weights on these batches (and with this method) are kept."""
    dtypes = ",".join(str(t.dtype) for t in batches)
    key = batches_digest(f"{FORMAT}|{weights_digest}|{method}|{with_sensitivity}|{dtypes}|", batches)
    return folder / f"{key}.json"


def cached_scores(path: Path | None, compute: Callable[[], tuple[Importance, dict[str, float]]]
                  ) -> tuple[Importance, dict[str, float], bool]:
    """The importance and sensitivity kept at ``path``, else ``compute()``'s, kept there (None: not kept);
    and whether they came from the cache."""
    if path is not None:
        try:
            data = json.loads(path.read_text())
            importance = Importance(data["method"], {gid: np.asarray(values, dtype=data["dtypes"][gid])
                                                     for gid, values in data["scores"].items()}, data["fallbacks"])
            return importance, {k: float(v) for k, v in data["sensitivity"].items()}, True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: scored again
    importance, sensitivity = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({
            "format": FORMAT, "method": importance.method, "fallbacks": importance.fallbacks,
            "scores": {gid: values.tolist() for gid, values in importance.scores.items()},
            "dtypes": {gid: str(values.dtype) for gid, values in importance.scores.items()},
            "sensitivity": sensitivity}) + "\n")
    return importance, sensitivity, False
