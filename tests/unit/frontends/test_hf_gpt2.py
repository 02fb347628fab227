"""GPT-2 through hf: (its Conv1D projections loaded as the equal nn.Linear) and save_pretrained configs written
from the pruned modules: MLP width, layer count, layer types and heads."""

import json

import pytest
import torch

from hwprune.cli import main
from hwprune.errors import ModelSpecError
from hwprune.frontends import load_model, save_native
from hwprune.frontends.hf.model import HFModel
from tests.hf_models import tiny_config

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _saved(tmp_path_factory, name, model_class, config):
    folder = tmp_path_factory.mktemp("hf") / name
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    config = tiny_config("gpt2", bos_token_id=0, eos_token_id=0)
    return _saved(tmp_path_factory, "gpt2", transformers.GPT2LMHeadModel, config)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    config = tiny_config("llama", num_hidden_layers=3, bos_token_id=0, eos_token_id=0)
    return _saved(tmp_path_factory, "llama", transformers.LlamaForCausalLM, config)


def _reloaded_logits(folder, tokens):
    again = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return again, again(tokens, use_cache=False).logits


def _close(a, b):
    return float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


def _linear(weight, bias=None):
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data = weight.clone()
    if bias is not None:
        layer.bias.data = bias.clone()
    return layer


def test_gpt2_conv1d_loads_as_the_same_linear(gpt2_dir):
    loaded = load_model(f"hf:{gpt2_dir}", (2, 16))
    assert isinstance(loaded.module, HFModel) and int(loaded.example_input.max()) < 1000
    original = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir, attn_implementation="eager").eval()
    assert not any(isinstance(m, Conv1D) for m in loaded.module.modules())
    fc, conv = loaded.module.model.transformer.h[0].mlp.c_fc, original.transformer.h[0].mlp.c_fc
    assert isinstance(fc, torch.nn.Linear) and (fc.in_features, fc.out_features) == (64, 1024)
    assert torch.equal(fc.weight, conv.weight.t()) and torch.equal(fc.bias, conv.bias)
    with torch.no_grad():
        expected = original(loaded.example_input, use_cache=False).logits
        assert _close(loaded.module(loaded.example_input), expected)


def test_gpt2_mlp_is_one_group_per_layer_attention_kept_whole(gpt2_dir):
    from hwprune.graph.analyze import analyze

    loaded = load_model(f"hf:{gpt2_dir}", (1, 16))
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    prunable = [g for g in analysis.groups if g.prunable]
    assert sorted(g.id for g in prunable) == [f"model.transformer.h.{i}.mlp.c_fc" for i in (0, 1)]
    for g in prunable:
        block = g.id.removesuffix(".c_fc")
        assert g.channels == 1024 and set(g.layers) == {f"{block}.c_fc", f"{block}.c_proj"}
    residual = next(g for g in analysis.groups if "model.transformer.h.0.attn" in g.layers)
    assert not residual.prunable and "GPT2Attention" in residual.reason


@pytest.mark.e2e
def test_gpt2_compiles_verifies_and_reloads(gpt2_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "build"
    # its attention core is timed and kept whole: this tiny model's floor is near 0.8 of its latency
    code = main(["compile", f"hf:{gpt2_dir}", "--input-shape", "1,32", "--target", "cpu", "--latency", "0.9",
                 "--refine", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["ok"] and report["pruned"]["params"] < report["baseline"]["params"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "pruned.onnx"))
    tokens = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(1))
    pruned = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: tokens.numpy()})[0])
    again, logits = _reloaded_logits(out / "pruned_hf", tokens)
    width = again.transformer.h[0].mlp.c_fc.nf
    assert isinstance(again.transformer.h[0].mlp.c_fc, Conv1D) and again.config.n_inner == width < 1024
    assert _close(logits, pruned)


def _drop_layer(layers, index):
    """What whole-layer removal does: the entry deleted, the rest's attention renumbered."""
    del layers[index]
    for i, layer in enumerate(layers):
        (layer.self_attn if hasattr(layer, "self_attn") else layer.attn).layer_idx = i


def test_llama_without_a_layer_saves_its_layer_count(llama_dir, tmp_path):
    loaded = load_model(f"hf:{llama_dir}", (1, 16))
    _drop_layer(loaded.module.model.model.layers, 1)
    assert save_native(loaded.module, loaded.name, tmp_path) == "pruned_hf"
    again, logits = _reloaded_logits(tmp_path / "pruned_hf", loaded.example_input)
    assert again.config.num_hidden_layers == 2 and loaded.module.model.config.num_hidden_layers == 3
    with torch.no_grad():
        assert _close(logits, loaded.module(loaded.example_input))


def test_gpt2_without_a_block_saves_n_layer_as_conv1d(gpt2_dir, tmp_path):
    loaded = load_model(f"hf:{gpt2_dir}", (1, 16))
    _drop_layer(loaded.module.model.transformer.h, 0)
    assert save_native(loaded.module, loaded.name, tmp_path) == "pruned_hf"
    assert json.loads((tmp_path / "pruned_hf" / "config.json").read_text())["n_layer"] == 1
    again, logits = _reloaded_logits(tmp_path / "pruned_hf", loaded.example_input)
    assert isinstance(again.transformer.h[0].attn.c_attn, Conv1D)
    assert isinstance(loaded.module.model.transformer.h[0].attn.c_attn, torch.nn.Linear)  # the caller's is kept
    with torch.no_grad():
        assert _close(logits, loaded.module(loaded.example_input))


def test_gpt2_widths_that_differ_name_n_inner(gpt2_dir, tmp_path):
    loaded = load_model(f"hf:{gpt2_dir}", (1, 16))
    mlp = loaded.module.model.transformer.h[0].mlp
    mlp.c_fc = _linear(mlp.c_fc.weight[:512], mlp.c_fc.bias[:512])
    mlp.c_proj = _linear(mlp.c_proj.weight[:, :512], mlp.c_proj.bias)
    with pytest.raises(ModelSpecError, match=r"n_inner values differ between layers \(\[512, 1024\]\)"):
        save_native(loaded.module, loaded.name, tmp_path)


def test_llama_heads_are_read_from_the_projections(llama_dir, tmp_path):
    """Head pruning (q heads 4 -> 2, key/value heads 2 -> 1, head width 16) is saved in the config's head counts."""
    loaded = load_model(f"hf:{llama_dir}", (1, 16))
    for layer in loaded.module.model.model.layers:
        attention = layer.self_attn
        for name, keep in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16)):
            setattr(attention, name, _linear(getattr(attention, name).weight[:keep]))
        attention.o_proj = _linear(attention.o_proj.weight[:, :32])
    save_native(loaded.module, loaded.name, tmp_path)
    again, logits = _reloaded_logits(tmp_path / "pruned_hf", loaded.example_input)
    config = again.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    with torch.no_grad():
        assert _close(logits, loaded.module(loaded.example_input))


def test_bert_heads_cannot_be_saved(tmp_path):
    """A BertConfig derives the head width from hidden_size / num_attention_heads: fewer heads cannot be written."""
    config = tiny_config("bert", num_hidden_layers=1, intermediate_size=128)
    module = HFModel(transformers.BertModel(config).eval())
    attention = module.model.encoder.layer[0].attention
    for name in ("query", "key", "value"):
        old = getattr(attention.self, name)
        setattr(attention.self, name, _linear(old.weight[:32], old.bias[:32]))
    attention.output.dense = _linear(attention.output.dense.weight[:, :32], attention.output.dense.bias)
    with pytest.raises(ModelSpecError, match="num_attention_heads: the pruned attention has 2 heads of 16"):
        save_native(module, "hf:bert", tmp_path)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """Qwen2 with layer types full, sliding, sliding (window 4, shorter than the 16 tokens it is run on)."""
    config = tiny_config("qwen2", intermediate_size=128, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                         bos_token_id=0, eos_token_id=0)
    return _saved(tmp_path_factory, "qwen2", transformers.Qwen2ForCausalLM, config)


def test_layer_types_are_the_kept_layers_own(qwen_dir, tmp_path):
    loaded = load_model(f"hf:{qwen_dir}", (1, 16))
    model = loaded.module.model
    _drop_layer(model.model.layers, 0)
    # Qwen2's forward picks each layer's mask from config.layer_types[i]: removal must update the live config
    model.config.layer_types, model.config.num_hidden_layers = model.config.layer_types[1:], 2
    save_native(loaded.module, loaded.name, tmp_path)
    again, logits = _reloaded_logits(tmp_path / "pruned_hf", loaded.example_input)
    assert again.config.layer_types == ["sliding_attention"] * 2
    with torch.no_grad():
        assert _close(logits, loaded.module(loaded.example_input))


def test_a_model_its_config_would_rebuild_differently_is_refused(qwen_dir, tmp_path):
    """Layers removed but the live config's layer_types left stale: the pruned model gives the kept sliding layer
    a full mask, which no saved config reproduces from the layers' own types, so nothing is written."""
    loaded = load_model(f"hf:{qwen_dir}", (1, 16))
    _drop_layer(loaded.module.model.model.layers, 0)
    with pytest.raises(ModelSpecError, match="rebuilt from the updated config computes something else"):
        save_native(loaded.module, loaded.name, tmp_path)
    assert not (tmp_path / "pruned_hf").exists()


def test_layer_types_that_the_layers_do_not_say_are_refused_once_layers_go(qwen_dir, tmp_path):
    loaded = load_model(f"hf:{qwen_dir}", (1, 16))
    _drop_layer(loaded.module.model.model.layers, 0)
    for layer in loaded.module.model.model.layers:
        del layer.self_attn.layer_type
    with pytest.raises(ModelSpecError, match="layer_types: the config lists 3 layer types, the pruned model has 2"):
        save_native(loaded.module, loaded.name, tmp_path)
