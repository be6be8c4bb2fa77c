"""The test fixtures themselves: the tiny tokenizer survives transformers 5's save/reload beside
each family's config (DESIGN.md's gotcha: a WordLevel tokenizer silently changes there)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

TEXT = "The quick brown fox, 42 times: she walked home in the rain!"


@pytest.mark.parametrize("family", ["qwen2", "llama", "rwkv", "mamba", "gemma3"])
def test_tiny_tokenizer_round_trip(family, tiny_dir_factory, tiny_tok):
    reloaded = AutoTokenizer.from_pretrained(tiny_dir_factory(family))
    assert reloaded(TEXT).input_ids == tiny_tok(TEXT).input_ids
    assert reloaded.decode(reloaded(TEXT).input_ids) == TEXT
