"""The tiny Hugging Face configurations the tests build models from (random weights, nothing downloaded), each
family's written once; a test states only what it changes (more layers, a wider MLP, a sliding window)."""

from __future__ import annotations

from typing import Any

TINY: dict[str, dict[str, Any]] = {
    # grouped-query decoders: 4 query heads on 2 key/value heads of 16
    "llama": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=256),
    "qwen2": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=256),
    "mistral": dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64),
    "bert": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "gpt2": dict(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_inner=1024, n_positions=64),
    "vit": dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=256, num_labels=10),
}
CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "bert": "BertConfig",
           "gpt2": "GPT2Config", "vit": "ViTConfig"}


def tiny_config(family: str, **changes: Any):
    """``family``'s tiny configuration with ``changes`` applied."""
    import transformers

    return getattr(transformers, CONFIGS[family])(**{**TINY[family], **changes})
