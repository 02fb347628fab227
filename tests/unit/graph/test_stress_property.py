"""The stress benchmark's property on a few random graphs with the couplings real models add
(per-channel buffers, bare parameters, a spatial map buffer, ConvTranspose, splits along height and
along channels):
every graph is pruned exactly and exported, or refused by name; never a crash, never a silent
mismatch. benchmarks/stress_graphs.py runs 1,000."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.graph_property import check_graph
from tests.random_dags import EXTRA_KINDS, random_dag_models


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=random_dag_models(heads=("gap",), extra=EXTRA_KINDS), seed=st.integers(0, 2**16))
def test_random_graphs_with_real_couplings_prune_exactly_or_are_refused_by_name(drawn, seed):
    outcome = check_graph(*drawn, seed)
    assert outcome.kind in ("ok", "refused"), outcome


def test_the_property_sees_a_wrong_removal():
    """The check can fail: a model whose pruned copy computes something else is a mismatch."""
    import torch
    from torch import nn

    import tests.graph_property as prop

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            h = self.c1(x)
            return self.c2(h + (1.0 if h.shape[1] < 8 else 0.0))  # differs once channels are removed

    model, x = Shifted().eval(), torch.randn(1, 3, 8, 8)
    assert prop.check_graph(model, x, 0).kind == "mismatch"


def test_a_height_swap_feeding_a_channel_concat_keeps_the_concat_offsets_right():
    """Found by the stress benchmark: torch-pruning counted a concat along height as the sum of its
    inputs' channels, so the channel concat after it got wrong offsets and removal was not exact."""
    from tests.random_dags import OpSpec, build_dag_model

    specs = [OpSpec("conv", (0,), 9, kernel=3, bias=True, with_relu=True),
             OpSpec("conv", (0,), 5, kernel=3, with_bn=True), OpSpec("conv", (0,), 12), OpSpec("hswap", (1,), 9),
             OpSpec("conv", (2,), 10, kernel=3, with_relu=True), OpSpec("conv", (5,), 10, kernel=3, with_bn=True),
             OpSpec("cchunk", (3,), 6)]
    model, x = build_dag_model(specs)
    assert [check_graph(model, x, seed).kind for seed in range(3)] == ["ok"] * 3


def test_a_spatial_map_buffer_is_left_whole_and_its_group_prunes_exactly():
    """A ``(1, 1, 8, 8)`` map multiplied into 8 channels holds no channels, but torch-pruning took its width
    for them and sliced it with the group (trial pruning then refused the group): both groups must prune."""
    from tests.random_dags import OpSpec, build_dag_model

    specs = [OpSpec("conv", (0,), 8, kernel=3, bias=True), OpSpec("smap", (1,), 8),
             OpSpec("conv", (2,), 6, kernel=3, with_relu=True)]
    model, x = build_dag_model(specs)
    outcomes = [check_graph(model, x, seed) for seed in range(3)]
    assert [(o.kind, o.groups) for o in outcomes] == [("ok", 2)] * 3, outcomes


def test_a_split_at_sizes_written_in_the_code_is_refused_by_name():
    """``t.split([2, 4], 1)`` in a model's code cannot follow a pruned width: its group is refused, naming it."""
    from hwprune.graph.analyze import analyze
    from tests.random_dags import OpSpec, build_dag_model

    model, x = build_dag_model([OpSpec("conv", (0,), 6, kernel=3), OpSpec("csplit", (1,), 6, first=2)])
    group = analyze(model, x, "csplit", strict=False).group("layers.0.0")
    assert not group.prunable and "split([2, 4])" in group.reason and "fixed in the model's code" in group.reason
    assert check_graph(model, x, 0).kind in ("ok", "refused")
