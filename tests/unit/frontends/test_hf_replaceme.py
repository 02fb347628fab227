"""ReplaceMe on a Hugging Face decoder: a replaced run goes, its map folds into the layer before (the model
reloads with from_pretrained), and the joint search weighs it against the plain removal of the same layer."""

import io

import pytest
import torch
from rich.console import Console

from hwprune.cost.model_latency import analytic_predictor
from hwprune.errors import PlanError
from hwprune.frontends import load_model, save_native
from hwprune.graph.analyze import analyze
from hwprune.importance.option_costs import depth_costs
from hwprune.importance.scores import score_groups
from hwprune.pipeline.prepare import offer_replacements
from hwprune.pipeline.score import TAKING
from hwprune.plan import DroppedBlock
from hwprune.search.joint import search_joint, units
from hwprune.targets import load_target
from hwprune.transform.rewrite import unmerged
from tests.hf_models import tiny_config

transformers = pytest.importorskip("transformers")
P = "model.model.layers"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(tiny_config("llama", vocab_size=500, num_hidden_layers=4)).save_pretrained(folder)
    return folder


def _tokens(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 500, (4, 16), generator=generator) for _ in range(count)]


def _hidden(model, layer, batches) -> torch.Tensor:
    """``layer``'s output hidden states on ``batches``."""
    seen = []
    handle = layer.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    return torch.cat(seen)


def test_a_replaced_run_goes_its_map_folds_and_the_model_reloads(llama_dir, tmp_path):
    loaded = load_model(f"hf:{llama_dir}", (1, 16))
    model, x = loaded.module, loaded.example_input
    fold = f"{P}.0.mlp.down_proj"
    entries = [DroppedBlock(f"{P}.1", None, fold), DroppedBlock(f"{P}.2", None, fold)]
    original = model.get_submodule(fold).weight.detach().clone()
    calibration = _tokens(6)
    replaced = unmerged(model, x, [], entries, calibration)
    plain = unmerged(model, x, [], [DroppedBlock(e.block, None) for e in entries])
    assert len(replaced.model.model.layers) == 2 and replaced.model.config.num_hidden_layers == 2
    assert torch.equal(model.get_submodule(fold).weight, original)  # the caller's model is untouched
    assert not torch.equal(replaced.get_submodule(fold).weight, original)
    # on the tokens it was fitted on, layer 0 now hands on nearer what layer 2 handed on than removal does
    target = _hidden(model, model.model.model.layers[2], calibration)
    fitted = (_hidden(replaced, replaced.model.model.layers[0], calibration) - target).norm()
    removed = (_hidden(plain, plain.model.model.layers[0], calibration) - target).norm()
    assert fitted < 0.9 * removed
    assert save_native(replaced, loaded.name, tmp_path) == "pruned_hf"
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned_hf", attn_implementation="eager")
    assert again.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.allclose(again(x, use_cache=False).logits, replaced(x), atol=1e-5)
    with pytest.raises(PlanError, match="calibration data"):
        unmerged(model, x, [], entries)


def test_replacement_is_offered_beside_each_drop_and_the_search_takes_the_cheaper(llama_dir):
    loaded = load_model(f"hf:{llama_dir}", (1, 16))
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    target = load_target("jetson-orin-nano")
    predictor = analytic_predictor(analysis, target)
    offer_replacements(analysis, predictor, Console(file=io.StringIO()))
    assert sorted(k for k in predictor.options if k.startswith("replace:")) == [f"replace:{P}.{i}" for i in (1, 2, 3)]
    drop, replace = predictor.options[f"drop:{P}.2"], predictor.options[f"replace:{P}.2"]
    assert replace.choice == DroppedBlock(f"{P}.2", None, f"{P}.1.mlp.down_proj") and replace.removes == drop.removes
    assert [frozenset(), {drop.key}, {replace.key}] in units(predictor.options.values())  # one layer, one unit
    batches = _tokens(4)
    measured = depth_costs(analysis.model, loaded.example_input, [drop, replace], batches[0], training=batches[1:],
                           taking=TAKING)
    assert all(0 < cost < 2 for cost in measured.values())
    full = predictor.predict({}).total_ms
    budget = (predictor.with_depth(frozenset({drop.key})).predict({}).total_ms + full) / 2  # one layer must go
    importance = score_groups(analysis, "l1")
    for cheaper in (replace.key, drop.key):
        costs = {key: 0.1 if key == cheaper else 1.0 for key in predictor.options}
        result = search_joint(analysis, predictor, importance, target.channel_alignment, budget, 0.1, None, costs,
                              widths=False)
        assert result.depth == {cheaper}
