"""A concat torch-pruning cannot map refuses only the groups it carries: a conv that writes it meets it with its
output channels, and the group of its input channels (the branch before a detector's box conv) stays prunable."""

from hwprune.graph.analyze import analyze
from tests.zoo import ZOO


def test_the_branches_before_an_unmappable_concat_stay_prunable_and_its_writers_are_refused_by_name():
    model, x = ZOO["yolox_head"]()
    analysis = analyze(model, x, "yolox_head", strict=False)
    groups = {g.id: g for g in analysis.groups}
    assert all(groups[f"branch.{i}.0"].prunable for i in range(2))
    for i in range(2):
        assert not groups[f"box.{i}"].prunable
        assert groups[f"box.{i}"].reason.startswith(f"torch-pruning could not map channels at box.{i} (Conv2d)")
