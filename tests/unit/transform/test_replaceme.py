"""ReplaceMe: a run of decoder layers replaced by one least-squares linear map folded into the layer before it."""

import pytest
import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.plan import DroppedBlock, plan_from_json, plan_json
from hwprune.search.runs import as_runs
from hwprune.transform.linear_map import LeastSquares, Run, fit_maps, folded, replaced_runs
from tests.pruning_helpers import plan_of

P = "model.model.layers"


def test_least_squares_recovers_an_exact_map():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 300, 12, generator=generator)
    truth = torch.randn(12, 12, generator=generator, dtype=torch.float64)
    fit = LeastSquares(12)
    for chunk in x:  # accumulated batch by batch
        fit.add(chunk, chunk.double() @ truth)
    assert torch.allclose(fit.solve(ridge=0.0), truth, atol=1e-8)
    assert torch.allclose(fit.solve(), truth, atol=0.02)  # the default ridge barely pulls on well-spread data
    assert not torch.allclose(fit.solve(ridge=10.0), truth, atol=0.02)  # ...and a strong one pulls to identity


class _Before(nn.Module):
    """A residual layer whose MLP output the next layer reads (so the toy's run is exactly linear in it)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.down_proj = nn.Linear(dim, dim)
        self.attn = nn.Linear(dim, dim)
        self.seen: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = h + self.attn(h).tanh()
        self.seen = self.mlp.down_proj(r.tanh())
        return r + self.seen


class _Run(nn.Module):
    """Turns the layer before's MLP output m into m A: the stream leaves as r + m A."""

    def __init__(self, before: _Before, a: torch.Tensor):
        super().__init__()
        self.before, self.a = [before], a

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        m = self.before[0].seen
        return h - m + m @ self.a


def test_the_fitted_map_is_the_one_the_run_computes():
    torch.manual_seed(0)
    dim = 8
    before = _Before(dim)
    a = torch.randn(dim, dim) / dim ** 0.5
    model = nn.Sequential(nn.Linear(dim, dim), before, _Run(before, a))
    batches = [torch.randn(16, 10, dim) for _ in range(6)]
    run = Run("1.mlp.down_proj", "1", "2")
    assert torch.allclose(fit_maps(model, [run], batches, ridge=0.0)[run.fold].float(), a, atol=1e-4)
    # the default ridge moves only directions the MLP output barely takes: what the map computes stays near
    shrunk = fit_maps(model, [run], batches)[run.fold].float()
    m = model[1].mlp.down_proj(torch.randn(64, dim).tanh()).detach()
    assert float((m @ shrunk - m @ a).norm() / (m @ a - m).norm()) < 0.05


@pytest.mark.parametrize("bias", [True, False])
def test_the_fold_computes_the_projection_then_the_map(bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 8, bias=bias)
    transform = torch.randn(8, 8, dtype=torch.float64)
    x = torch.randn(5, 24)
    with torch.no_grad():
        assert torch.allclose(folded(linear, transform)(x), linear(x) @ transform.float(), atol=1e-5)
        assert folded(linear, transform).weight.shape == linear.weight.shape


def test_runs_are_consecutive_layers_right_after_their_fold():
    fold = f"{P}.1.mlp.down_proj"
    runs = replaced_runs([DroppedBlock(f"{P}.3", None, fold), DroppedBlock(f"{P}.2", None, fold),
                          DroppedBlock(f"{P}.0", None)])
    assert runs == [Run(fold, f"{P}.1", f"{P}.3")]
    with pytest.raises(PlanError, match="consecutive"):
        replaced_runs([DroppedBlock(f"{P}.2", None, fold), DroppedBlock(f"{P}.4", None, fold)])
    with pytest.raises(PlanError, match="right before"):
        replaced_runs([DroppedBlock(f"{P}.3", None, fold)])


def test_a_run_takes_the_choice_of_its_first_layer():
    fold = f"{P}.1.mlp.down_proj"
    replaced = as_runs([DroppedBlock(f"{P}.3", None), DroppedBlock(f"{P}.2", None, fold), DroppedBlock(f"{P}.6", None)])
    assert [e.fold for e in replaced] == [fold, fold, None]
    plain = as_runs([DroppedBlock(f"{P}.2", None), DroppedBlock(f"{P}.3", None, f"{P}.2.mlp.down_proj")])
    assert [e.fold for e in plain] == [None, None]


def test_the_fold_is_in_the_plan_json_only_where_there_is_one():
    plan = plan_of_depth((DroppedBlock(f"{P}.2", None, f"{P}.1.mlp.down_proj"), DroppedBlock(f"{P}.5", None)))
    data = plan_json(plan)
    assert data["depth"] == [{"block": f"{P}.2", "add": None, "fold": f"{P}.1.mlp.down_proj"},
                             {"block": f"{P}.5", "add": None}]
    assert plan_from_json(data) == plan


def plan_of_depth(depth):
    from dataclasses import replace

    return replace(plan_of(None, {}), depth=depth)
