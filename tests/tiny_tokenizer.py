"""A tiny byte-level BPE tokenizer built offline with the `tokenizers` library.

Byte-level BPE survives transformers 5's save/reload (which rebuilds pre-tokenizers by model
type), unlike a WordLevel tokenizer; tests/test_fixtures.py checks the round trip.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. She walked home in the rain and made tea. "
    "He opened the letter at the kitchen table; the grade was good. Once upon a time, in a small village, "
    "there lived an old baker who rose before dawn. The capital of France is Paris. "
) * 4


def build(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([SAMPLE], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    return fast
