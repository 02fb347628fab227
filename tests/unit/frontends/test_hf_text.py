"""--calib-data text:FILE for hf: models: the user's text through the model's own tokenizer, and perplexity."""

import json

import pytest
import torch

from hwprune.cli import main
from hwprune.errors import ModelSpecError
from hwprune.evaluate.calibration import load_calibration
from tests.hf_models import tiny_config

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the quick brown fox jumps over the lazy dog while a cat sleeps on the warm mat".split()


@pytest.fixture(scope="module")
def llama_with_tokenizer(tmp_path_factory):
    """A tiny Llama saved with a word-level tokenizer of its own (built here: nothing downloaded)."""
    folder = tmp_path_factory.mktemp("hf") / "llama"
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(WORDS))}}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = tiny_config("llama", vocab_size=len(vocab))
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    text = folder.parent / "corpus.txt"
    generator = torch.Generator().manual_seed(1)
    text.write_text(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (600,), generator=generator)))
    return folder, text


def test_text_is_tokenized_into_batches_of_the_example_shape(llama_with_tokenizer):
    folder, text = llama_with_tokenizer
    calibration = load_calibration(f"text:{text}", torch.zeros(2, 32, dtype=torch.long), model=f"hf:{folder}")
    assert not calibration.random and len(calibration.batches) == 600 // 32 // 2
    assert all(b.shape == (2, 32) and b.dtype == torch.long for b in calibration.batches)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    first = tokenizer(text.read_text(), add_special_tokens=False)["input_ids"][:32]
    assert calibration.batches[0][0].tolist() == first


@pytest.mark.parametrize("model, message", [("torchvision:resnet18", "text is for hf: models"),
                                            (None, "text is for hf: models")])
def test_text_needs_an_hf_model(llama_with_tokenizer, model, message):
    with pytest.raises(ModelSpecError, match=message):
        load_calibration(f"text:{llama_with_tokenizer[1]}", torch.zeros(1, 8, dtype=torch.long), model=model)


def test_a_model_without_a_tokenizer_is_a_one_line_error(tmp_path, llama_with_tokenizer):
    folder = tmp_path / "bare"
    transformers.LlamaForCausalLM(tiny_config("llama", vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
                                  ).save_pretrained(folder)
    with pytest.raises(ModelSpecError, match="no tokenizer"):
        load_calibration(f"text:{llama_with_tokenizer[1]}", torch.zeros(1, 8, dtype=torch.long), model=f"hf:{folder}")


@pytest.mark.e2e
def test_compile_reports_perplexity_on_the_users_text(llama_with_tokenizer, tmp_path, monkeypatch, capsys):
    folder, text = llama_with_tokenizer
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "build"
    code = main(["compile", f"hf:{folder}", "--input-shape", "1,64", "--target", "cpu", "--latency", "0.8",
                 "--refine", "0", "--calib-data", f"text:{text}", "--out", str(out)])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1]
    fidelity = json.loads((out / "report.json").read_text())["fidelity"]
    baseline, pruned = fidelity["perplexity"]["baseline"], fidelity["perplexity"]["pruned"]
    assert 1 < baseline < 10 * len(WORDS) and 1 < pruned and baseline != pruned  # near the vocabulary: random weights
    assert fidelity["inputs"].startswith("text:") and "Perplexity" in (out / "report.md").read_text()
