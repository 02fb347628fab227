"""Random-weight specs are seeded: the same spec and seed give the same weights, digest and input."""

import pytest
import torch

from hwprune.cli import DEFAULT_SEED
from hwprune.frontends import DEFAULT_SEED as MODELS_DEFAULT_SEED
from hwprune.frontends import load_model, state_digest


def test_the_same_spec_and_seed_give_the_same_model_and_another_seed_another():
    first, second = (load_model("torchvision:mobilenet_v3_small") for _ in range(2))
    assert state_digest(first.module) == state_digest(second.module)
    assert torch.equal(first.example_input, second.example_input)
    assert first.seed == 0 and first.weights == "random, seed 0"
    other = load_model("torchvision:mobilenet_v3_small", seed=1)
    assert state_digest(other.module) != state_digest(first.module)


def test_loading_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("torchvision:mobilenet_v3_small")
    assert torch.equal(torch.rand(3), expected)


def test_the_digest_sees_one_changed_value():
    model = load_model("torchvision:mobilenet_v3_small").module
    before = state_digest(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert state_digest(model) != before


@pytest.mark.parametrize("seed", [DEFAULT_SEED])
def test_the_cli_default_seed_is_the_loaders(seed):
    assert seed == MODELS_DEFAULT_SEED
