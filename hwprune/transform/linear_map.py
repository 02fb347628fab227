"""ReplaceMe: a run of decoder layers replaced by one linear map, fitted on calibration activations by
least squares (no training) and folded into the MLP output projection of the last kept layer before
the run, so the pruned model has no op the plain removal does not.

A pre-norm decoder layer i hands on ``h_i = r_i + m_i``: the residual stream after its attention plus
its MLP's output ``m_i = down(act(gate(x)) * up(x))``. Removing layers i+1..j hands ``h_i`` on where
``h_j`` was. A map T on the MLP's output makes that ``r_i + m_i T``, so T is fitted to
``M T ~ H_j - R_i`` over every calibration token (``R_i = H_i - M_i``), and since
``m_i T = a W^T T + b T`` it folds into the projection: ``W' = T^T W``, ``b' = T^T b``. The sums
``M^T M`` and ``M^T (H_j - R_i)`` accumulate in float64 batch by batch, so memory does not grow with
the tokens. A ridge term shrinks T towards the identity (the plain removal), so a map fitted on few
tokens stays near what removal computes instead of fitting their noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.hooks import run_hooked
from hwprune.graph.stack import hidden_out
from hwprune.plan import DroppedBlock

RIDGE = 1e-3  # of the mean diagonal of M^T M: the pull towards the identity


@dataclass(frozen=True)
class Run:
    """One replaced run: the projection its map folds into, the kept layer that projection belongs to
    (its output is ``h_i``) and the run's last layer (its output ``h_j`` is the target)."""

    fold: str
    before: str
    last: str


def replaced_runs(entries: Sequence[DroppedBlock]) -> list[Run]:
    """The plan's replaced runs: its dropped layers grouped by ``fold``; each group must be consecutive
    layers of one stack, right after the layer ``fold`` belongs to (else a PlanError)."""
    by_fold: dict[str, list[str]] = {}
    for entry in entries:
        if entry.fold is not None:
            by_fold.setdefault(entry.fold, []).append(entry.block)
    runs = []
    for fold, blocks in sorted(by_fold.items()):
        parents = {b.rpartition(".")[0] for b in blocks}
        indices = sorted(int(b.rpartition(".")[2]) if b.rpartition(".")[2].isdigit() else -1 for b in blocks)
        parent = parents.pop()
        if parents or indices[0] < 1 or indices != list(range(indices[0], indices[0] + len(indices))):
            raise PlanError(f"the layers folded into {fold} ({', '.join(sorted(blocks))}) are not one run of "
                            "consecutive stack layers after the first")
        before = f"{parent}.{indices[0] - 1}"
        if not fold.startswith(f"{before}."):
            raise PlanError(f"{fold}: a run's map folds into the layer right before it, {before}")
        runs.append(Run(fold, before, f"{parent}.{indices[-1]}"))
    return runs


class LeastSquares:
    """Running float64 sums for ``X T ~ Y`` (rows are tokens), and T from them."""

    def __init__(self, dim: int):
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)
        self.cross = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        y = y.detach().reshape(-1, y.shape[-1]).double().cpu()
        self.gram += x.T @ x
        self.cross += x.T @ y

    def solve(self, ridge: float = RIDGE) -> torch.Tensor:
        """T minimising ``||X T - Y||^2 + ridge x mean(diag X^T X) x ||T - I||^2``."""
        eye = torch.eye(self.gram.shape[0], dtype=torch.float64)
        strength = ridge * float(self.gram.diagonal().mean())
        return torch.linalg.solve(self.gram + strength * eye, self.cross + strength * eye)


def fit_maps(model: nn.Module, runs: Sequence[Run], batches: Sequence[torch.Tensor], ridge: float = RIDGE
             ) -> dict[str, torch.Tensor]:
    """Per run's ``fold``, its map T (float64, hidden x hidden), fitted on ``model`` (all its layers) over
    ``batches``: one forward per batch serves every run."""
    paths = sorted({path for run in runs for path in (run.fold, run.before, run.last)})
    fits = {run.fold: LeastSquares(model.get_submodule(run.fold).out_features) for run in runs}
    seen: dict[str, torch.Tensor] = {}

    def record(path: str):
        def hook(_module: nn.Module, _args: tuple, _kwargs: dict, output: object) -> None:
            seen[path] = hidden_out(output)
        return hook

    for batch in batches:
        run_hooked(model, batch, {model.get_submodule(p): record(p) for p in paths}, with_kwargs=True)
        for run in runs:
            mlp = seen[run.fold]
            fits[run.fold].add(mlp, seen[run.last] - seen[run.before] + mlp)
    return {fold: fit.solve(ridge) for fold, fit in fits.items()}


def folded(linear: nn.Linear, transform: torch.Tensor) -> nn.Linear:
    """A new ``nn.Linear`` computing ``linear(x) @ transform``: weight ``T^T W``, bias ``T^T b``."""
    weight = linear.weight.detach()
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    t = transform.to(weight.device)
    with torch.no_grad():
        out.weight.copy_((t.T @ weight.double()).to(weight.dtype))
        if linear.bias is not None:
            out.bias.copy_((t.T @ linear.bias.detach().double()).to(weight.dtype))
    return out


def as_linear(transform: torch.Tensor, like: nn.Linear) -> nn.Linear:
    """The map as its own bias-free layer (``x @ T``): what the fold must compute, for checking it."""
    layer = nn.Linear(transform.shape[0], transform.shape[1], bias=False, device=like.weight.device,
                      dtype=like.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(transform.T.to(like.weight.dtype))
    return layer
