"""A realisation that shares the analysed model's weights (what compile measures a large model with) leaves
that model whole through every pass that changes weights (permutation, N:M masks, BatchNorm re-estimation,
pruning), equals a realisation from a full copy, and is unshared before it is handed out."""

from dataclasses import replace

import torch

from hwprune.graph.analyze import analyze
from hwprune.pipeline.measure import Realiser
from hwprune.plan import NMLayer, Sparsity
from hwprune.transform.prune import unshared
from hwprune.transform.realise import realise
from tests.data.small_models import small_resnet
from tests.pruning_helpers import plan_of


def _storages(model: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}


def test_a_shared_realisation_leaves_the_analysed_model_whole_and_equals_a_copied_one():
    model, x = small_resnet()
    analysis = analyze(model.eval(), x)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    order = tuple(int(i) for i in torch.randperm(64, generator=torch.Generator().manual_seed(0)))
    plan = replace(plan_of(analysis, {"3.body.0": list(range(48))}),
                   sparsity=Sparsity("2:4", {"4.body.3": NMLayer(2, 4), "7": NMLayer(2, 4)}, {"4.body.0": order}))
    batches = [torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(1))]

    shared = Realiser(analysis)(plan, batches, keep=False)

    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed == []
    assert _storages(shared) & _storages(model)  # the stem, which no pass touches, is not copied
    copied = realise(plan, analyze(model, x), batches)
    with torch.no_grad():
        assert torch.equal(shared(x), copied(x))
        expected = shared(x)
        assert not _storages(unshared(shared, model)) & _storages(model)
        assert torch.equal(shared(x), expected)
