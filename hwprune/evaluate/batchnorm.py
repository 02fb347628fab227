"""Re-estimate BatchNorm statistics after pruning, from calibration inputs (no training).

Removing channels changes what every later layer sees, so the running means and variances the
BatchNorm layers learned no longer fit; outputs drift far more than the removed weights alone
would explain. Running the calibration batches through the pruned model with only the BN layers
in training mode (cumulative averages, no momentum) and nothing else changing restores them:
on the digits benchmark it took a 2x-pruned CNN from 10% back to 95% accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hwprune.errors import HwpruneError


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running statistics by those of ``batches``; returns how many
    layers were updated. The model is left in eval mode; no parameter changes."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    model.eval()
    saved_momentum = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all calibration batches
        norm.train()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    except ValueError as exc:  # BatchNorm in training mode refuses a single value per channel
        raise HwpruneError(f"BatchNorm recalibration failed ({exc}); give calibration batches of more than one "
                           "sample, or --recalibrate-bn off") from exc
    finally:
        for norm, momentum in zip(norms, saved_momentum, strict=True):
            norm.momentum = momentum
        model.eval()
    return len(norms)


@contextmanager
def restored_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with every BatchNorm's running statistics put back on exit (around a re-estimation
    on a view that shares its layers)."""
    state = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    try:
        yield model
    finally:
        model.load_state_dict(state, strict=False)
