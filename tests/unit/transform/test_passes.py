"""Transform passes: checks before (the model untouched on a bad plan) and after, applied from a Plan."""

from dataclasses import replace

import pytest
import torch

from hwprune.errors import PlanError
from hwprune.graph.analyze import analyze
from hwprune.plan import DroppedBlock, NMLayer, Sparsity, WidthDecision
from hwprune.transform.passes import Pass, Surgery, TransformError, run_passes
from hwprune.transform.prune import PruneChannels
from hwprune.transform.realise import apply_plan
from tests.data.small_models import small_resnet
from tests.pruning_helpers import plan_of


def setup():
    model, x = small_resnet()
    return analyze(model, x, "small_resnet")


def test_a_plan_that_does_not_fit_fails_before_any_layer_changes():
    analysis = setup()
    before = {k: v.clone() for k, v in analysis.model.state_dict().items()}
    gid = analysis.prunable()[0].id
    wrong = WidthDecision(2, analysis.group(gid).channels + 1, [0, 1])
    with pytest.raises(PlanError, match="made for"):
        run_passes([PruneChannels()], Surgery(analysis, {gid: wrong}))
    after = analysis.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_prune_channels_ensures_the_planned_widths_and_says_it_changed_the_model():
    analysis = setup()
    group = analysis.prunable()[0]
    results = run_passes([PruneChannels()], Surgery(analysis, {group.id: WidthDecision(8, group.channels,
                                                                                        list(range(8)))}))
    assert [(r.name, r.modified) for r in results] == [("prune-channels", True)]
    assert analysis.model.get_submodule(group.id).weight.shape[0] == 8
    untouched = setup()
    whole = WidthDecision(group.channels, group.channels, list(range(group.channels)))
    assert not run_passes([PruneChannels()], Surgery(untouched, {group.id: whole}))[0].modified


def test_a_pass_that_breaks_its_promise_is_a_transform_error():
    class Broken(Pass):
        name = "broken"

        def call(self, surgery):
            return False

        def ensures(self, surgery):
            raise TransformError("promise broken")

    with pytest.raises(TransformError):
        run_passes([Broken()], Surgery(setup(), {}))


def test_sections_that_do_not_fit_are_refused_whole():
    analysis = setup()
    before = {k: v.clone() for k, v in analysis.model.state_dict().items()}
    group = analysis.prunable()[0]
    plan = plan_of(analysis, {group.id: list(range(group.channels // 2))})
    with pytest.raises(PlanError, match="not a droppable block"):
        apply_plan(replace(plan, depth=(DroppedBlock("no.such.block", None),)), analysis)
    with pytest.raises(PlanError, match="needs 0 < N < M"):
        apply_plan(replace(plan, sparsity=Sparsity("5:4", {"3.body.0": NMLayer(5, 4)})), analysis)
    with pytest.raises(PlanError, match="no layer no.such.layer"):
        apply_plan(replace(plan, sparsity=Sparsity("2:4", {"no.such.layer": NMLayer(2, 4)})), analysis)
    after = analysis.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
