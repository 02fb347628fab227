"""Text as token ids, by an ``hf:`` model's own tokenizer (for ``text:FILE`` calibration data)."""

from __future__ import annotations

import torch

from hwprune.errors import ModelSpecError, first_line


def token_ids(folder: str, text: str, what: str) -> torch.Tensor:
    """``text`` tokenized (no special tokens) by the tokenizer saved in the model's ``folder``; a missing one is
    a ModelSpecError starting with ``what``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"{what}: hf:{folder} has no tokenizer to read text with ({first_line(exc, 200)})") \
            from exc
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
