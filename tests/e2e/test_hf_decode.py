"""Decode with a KV cache for hf: decoders: the exported decode step is the model's own decode path, it follows
the pruned model's layers and key/value heads, and a compile measures it for the baseline and the pruned model."""

import json

import numpy as np
import pytest
import torch

from hwprune.cli import main
from hwprune.errors import HwpruneError
from hwprune.export.kv_step import export_decode
from hwprune.export.onnx_export import STREAMED_OPSET, ExportStyle
from hwprune.frontends import load_model
from hwprune.frontends.hf.decode import cache_keyword, decode_step
from hwprune.graph.heads import head_modules
from hwprune.graph.stack import without_layers
from hwprune.runtime.ort import VERIFY_SETTINGS, make_session
from tests.hf_models import tiny_config

transformers = pytest.importorskip("transformers")

PAST = 16


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=500)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _export(model, path, style=None):
    """``model``'s decode step at batch 1 and a cache of PAST positions, exported (the TorchScript exporter
    unless ``style`` says) and checked."""
    step = decode_step(model, 1, PAST)
    return export_decode(step.module, step.past, step.vocab, path, style or ExportStyle(), 1e-4, 1e-3)


def _prefill(model, tokens):
    """The model's own cache after reading ``tokens``, and its past keys and values as plain tensors."""
    cache = transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        model(tokens, use_cache=True, **{cache_keyword(model): cache})
    return cache, [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _run(path, tokens, past):
    session = make_session(path, *VERIFY_SETTINGS)
    names = [i.name for i in session.get_inputs()]
    return names, session.run(None, dict(zip(names, (t.numpy() for t in (tokens, *past)), strict=True)))


@pytest.mark.parametrize("style", [ExportStyle(), ExportStyle(streamed=True)], ids=["torchscript", "dynamo"])
def test_decode_step_onnx_is_the_models_own_decode(llama_dir, tmp_path, style):
    model = load_model(f"hf:{llama_dir}", (1, PAST)).module.model
    exported = _export(model, tmp_path / "decode.onnx", style)
    assert exported.verification.ok and exported.verification.inputs == 3
    assert exported.past == [(1, 2, PAST, 16)] * 2

    tokens = torch.randint(0, 500, (1, PAST + 1), generator=torch.Generator().manual_seed(1))
    cache, past = _prefill(model, tokens[:, :PAST])
    names, (logits, *present) = _run(exported.path, tokens[:, PAST:], past)
    assert names == ["input_ids", "past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    with torch.no_grad():  # the model's own next step with its cache, and the whole sequence without one
        own = model(tokens[:, PAST:], use_cache=True, **{cache_keyword(model): cache}).logits
        whole = model(tokens, use_cache=False).logits[:, -1:]
    np.testing.assert_allclose(logits, own.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(logits, whole.numpy(), atol=1e-4, rtol=1e-3)
    for got, layer in zip(present[::2], cache.layers, strict=True):  # new keys: the past and this token's
        assert got.shape == (1, 2, PAST + 1, 16)
        np.testing.assert_allclose(got, layer.keys.numpy(), atol=1e-5)


def test_decode_step_follows_dropped_layers_and_pruned_heads(llama_dir, tmp_path):
    loaded = load_model(f"hf:{llama_dir}", (1, PAST))
    dropped = without_layers(loaded.module, ["model.model.layers.0"]).model
    exported = _export(dropped, tmp_path / "dropped.onnx")
    tokens = torch.randint(0, 500, (1, PAST + 1), generator=torch.Generator().manual_seed(2))
    _, past = _prefill(dropped, tokens[:, :PAST])
    names, (logits, *_) = _run(exported.path, tokens[:, PAST:], past)
    assert names == ["input_ids", "past_key_0", "past_value_0"] and exported.verification.ok
    with torch.no_grad():
        np.testing.assert_allclose(logits, dropped(tokens, use_cache=False).logits[:, -1:].numpy(), atol=1e-4,
                                   rtol=1e-3)

    first = head_modules(loaded.module)["model.model.layers.0.self_attn"]
    first.keep([1])  # one of two key/value heads (the config still says two)
    pruned = _export(loaded.module.model, tmp_path / "heads.onnx")
    assert pruned.past == [(1, 1, PAST, 16), (1, 2, PAST, 16)] and pruned.verification.ok


def test_a_sliding_window_shorter_than_the_past_is_refused(tmp_path):
    config = tiny_config("mistral", sliding_window=8, attn_implementation="eager")
    with pytest.raises(HwpruneError, match="sliding window"):
        _export(transformers.MistralForCausalLM(config).eval(), tmp_path / "d.onnx")


def _compile(llama_dir, out, *extra):
    return main(["compile", "--refine", "2",
                 f"hf:{llama_dir}", "--input-shape", "1,64", "--target", "cpu", "--latency", "0.7",
                 "--out", str(out), *extra])


def _inputs(path):
    return [i.name for i in make_session(path, *VERIFY_SETTINGS).get_inputs()]


def test_compile_measures_decode_of_baseline_and_pruned(llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "build"
    assert _compile(llama_dir, out) == 0, capsys.readouterr().err.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    decode = report["decode"]
    assert decode["measured"] and decode["reason"] is None and decode["rounds"] == 30
    assert decode["baseline_ms"]["median"] > 0 and decode["pruned_ms"]["median"] > 0
    assert decode["ratio"] > 0 and (decode["batch"], decode["past_length"]) == (1, 64)
    assert all(v["ok"] for v in decode["verify"].values())
    shapes = decode["past_shapes"]
    assert len(shapes["pruned"]) <= len(shapes["baseline"]) == 2
    assert sum(s[1] for s in shapes["pruned"]) <= sum(s[1] for s in shapes["baseline"])
    baseline, pruned = _inputs(out / "baseline_decode.onnx"), _inputs(out / "pruned_decode.onnx")
    assert len(baseline) == 1 + 2 * len(shapes["baseline"]) and len(pruned) == 1 + 2 * len(shapes["pruned"])
    assert "both measured" in report["measurement"]["phase"]
    assert "**Decode**" in (out / "report.md").read_text()
    assert "ms/token" in capsys.readouterr().out


def test_a_failed_decode_export_is_one_line_and_the_compile_succeeds(llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))

    def fails(*args, **kwargs):
        raise RuntimeError("cannot trace this cache\nsecond line")

    monkeypatch.setattr("hwprune.pipeline.decode.export_decode", fails)
    out = tmp_path / "build"
    assert _compile(llama_dir, out, "--refine", "0") == 0, capsys.readouterr().err.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    decode = report["decode"]
    assert not decode["measured"] and decode["baseline_ms"] is None and decode["pruned_ms"] is None
    assert decode["reason"].endswith("RuntimeError: cannot trace this cache")
    assert report["measured"] and report["speedup"]["measured"] > 0  # prefill, unaffected
    assert "not measured (the baseline model's decode step" in report["measurement"]["phase"]
    assert not (out / "baseline_decode.onnx").exists()


def test_a_model_over_a_gibibyte_is_compiled_with_streamed_exports(llama_dir, tmp_path, monkeypatch, capsys):
    """The path of a decoder of 1 GiB of weights or more (docs/transformers.md), on the tiny one: the baseline,
    every round, the decode steps and the final model exported by the dynamo exporter as model and data file,
    each verified against PyTorch, timed, and reported as such; ``apply`` of its plan and ``recover`` alike."""
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("hwprune.export.onnx_export.LARGE_BYTES", 0)
    out = tmp_path / "build"
    assert _compile(llama_dir, out, "--refine", "0") == 0, capsys.readouterr().err.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert (report["export"]["exporter"], report["export"]["opset"], report["export"]["slimmed"]) == (
        "dynamo", STREAMED_OPSET, False)
    for name in ("baseline", "pruned", "baseline_decode", "pruned_decode"):
        assert (out / f"{name}.onnx.data").is_file(), name
    assert report["verify"]["ok"] and all(v["ok"] for v in report["decode"]["verify"].values())
    assert report["measured"] and report["decode"]["measured"]
    assert not list(out.glob(".*"))  # no export's folder left behind
    again = tmp_path / "applied"  # apply writes the pair too, and moves both out of its staging folder
    assert main(["apply", str(out / "plan.json"), f"hf:{llama_dir}", "--input-shape", "1,64", "--out", str(again)]) == 0
    assert (again / "pruned.onnx.data").is_file() and not list(again.glob(".*"))
    (tmp_path / "tokens.py").write_text("import torch\n\ndef batches():\n    g = torch.Generator().manual_seed(1)\n"
                                        "    return [torch.randint(0, 500, (2, 64), generator=g) for _ in range(4)]\n")
    assert main(["recover", str(out), "--data", f"{tmp_path / 'tokens.py'}:batches", "--epochs", "1"]) == 0
    assert json.loads((out / "report.json").read_text())["recovery"]["verify"]["ok"]
    assert (out / "recovered.onnx.data").is_file() and not list(out.glob(".*"))  # recover: the pair, as compile
