"""The one seam to torch-pruning (``hwprune/graph/depgraph``): only it imports the library, it refuses a
release hwprune is not tested with in one line, and the translation of torch-pruning's dependency groups
into hwprune's is a table of small handlers per op type, each checked here on real autograd nodes."""

from types import SimpleNamespace

import pytest
import torch

from hwprune.errors import HwpruneError
from hwprune.graph.depgraph import OPTYPE, check_version
from hwprune.graph.groups import HANDLERS, Found
from tests.house.test_layering import MODULES, imports


def test_only_the_seam_imports_torch_pruning():
    importers = {name for name, path in MODULES.items()
                 if any(t.split(".")[0] == "torch_pruning" for t in imports(path))}
    assert importers == {"hwprune.graph.depgraph", "hwprune.graph.depgraph.index_maps",
                         "hwprune.graph.depgraph.pruners"}


def test_the_frontends_plugins_implement_the_seams_interface_without_torch_pruning():
    """transformers' layers are pruned through hwprune's own pruner interface, registered with torch-pruning's
    extension point (customized_pruners) by the seam; the plugin named for each library exists."""
    import importlib

    import transformers  # noqa: F401  (a plugin loads once its library is imported)

    from hwprune.graph import plugins
    from hwprune.graph.depgraph.pruners import ChannelPruner, as_customized

    for module in plugins.PLUGINS.values():
        assert isinstance(importlib.import_module(module).PLUGIN, plugins.Plugin)
    from transformers.models.llama import modeling_llama

    ends = plugins.end_pruners()
    assert {modeling_llama.LlamaAttention, modeling_llama.LlamaRMSNorm} <= set(ends)
    assert all(isinstance(p, ChannelPruner) for p in ends.values())
    wrapped = as_customized(ends)
    norm = modeling_llama.LlamaRMSNorm(8)
    assert wrapped[modeling_llama.LlamaRMSNorm].get_out_channels(norm) == 8
    wrapped[modeling_llama.LlamaRMSNorm].prune_out_channels(norm, [1, 5])
    assert norm.weight.shape == (6,)


def test_the_version_check_accepts_the_tested_releases_and_names_them_otherwise():
    assert check_version("1.6.1") == "1.6.1" and check_version("1.6.9") == "1.6.9"
    for wrong in ("1.6.0", "1.7.0", "2.0.0"):
        with pytest.raises(HwpruneError, match=r"torch-pruning .* not supported: hwprune is tested with >=1.6.1,<1.7"):
            check_version(wrong)


def _member(grad_fn=None, module=None, source="stem"):
    """A dependency as the handlers read it: its target node (op, autograd node, module) and source; the op was
    computed by the model's module ``crop`` (``graph.origins``)."""
    graph = SimpleNamespace(hwprune_origins={"op": "crop (Crop)"}, _module2name={})
    cap = SimpleNamespace(module_name=lambda module: getattr(module, "name", source), dependency_graph=graph)
    target = SimpleNamespace(grad_fn=grad_fn, module=module, name="op")
    return cap, SimpleNamespace(target=target, source=SimpleNamespace(module=SimpleNamespace(name=source)))


def _run(op, **member) -> Found:
    found = Found()
    cap, dep = _member(**member)
    HANDLERS[op](cap, dep, found)
    return found


def test_the_table_covers_the_op_types_that_tell_something():
    assert set(HANDLERS) == {OPTYPE.ELEMENTWISE, OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.UNBIND, OPTYPE.LN, OPTYPE.GN,
                             OPTYPE.EMBED, OPTYPE.SLICE}


def test_an_add_couples_a_residual_and_a_channel_mixing_op_refuses():
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    added = _run(OPTYPE.ELEMENTWISE, grad_fn=(x + x).grad_fn)
    assert added.couplings == {"residual"} and not added.reasons and added.exact
    mixed = _run(OPTYPE.ELEMENTWISE, grad_fn=torch.softmax(x, dim=1).grad_fn)
    assert mixed.reasons == ["unsupported op SoftmaxBackward0 (mixes channels) after stem, in crop (Crop)"]
    mean = _run(OPTYPE.ELEMENTWISE, grad_fn=x.mean(dim=1).grad_fn)  # a reduction over the channels
    assert mean.reasons and "MeanBackward1" in mean.reasons[0]
    spatial = _run(OPTYPE.ELEMENTWISE, grad_fn=x.mean(dim=(2, 3)).grad_fn)  # over height and width: fine
    assert not spatial.reasons


def test_concat_split_norm_and_embedding_say_what_they_couple():
    assert _run(OPTYPE.CONCAT).couplings == {"concat"}
    for op in (OPTYPE.SPLIT, OPTYPE.UNBIND):
        found = _run(op)
        assert found.couplings == {"split"} and "sizes are fixed in the model's code" in found.reasons[0]
    for op in (OPTYPE.LN, OPTYPE.GN):
        found = _run(op)
        assert found.couplings == {"norm"} and not found.exact and not found.reasons
    embedding = _run(OPTYPE.EMBED, module=SimpleNamespace(name="embed_tokens"))
    assert embedding.couplings == {"embedding"} and embedding.embeddings == ["embed_tokens"]


def test_a_slice_along_channels_refuses_and_one_along_height_does_not():
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    module = SimpleNamespace(start=0, end=4)
    channels = _run(OPTYPE.SLICE, grad_fn=x[:, :4].grad_fn, module=module)
    assert channels.reasons == ["passes a slice [:, 0:4] along channels fixed in the model's code, in crop (Crop)"]
    height = _run(OPTYPE.SLICE, grad_fn=x[:, :, :2].grad_fn, module=module)
    assert not height.reasons and not height.couplings
