"""A small byte-level BPE tokenizer in Qwen2's format, built locally (no hub).

transformers 5 loads the tokenizer of any ``qwen2`` model directory as ``Qwen2Tokenizer``,
which rebuilds a byte-level BPE pipeline (Qwen's split regex, ByteLevel pre-tokenizer and
decoder) from the saved vocab and merges. This tokenizer uses exactly that pipeline, so
``build_tokenizer()``, ``AutoTokenizer.from_pretrained(model_dir)`` and vLLM all tokenize
alike. Vocabulary: the 256 byte symbols (every string encodes; no unknown token is ever
produced), merges that make ``reverse`` and the chat role names one token each, and
ChatML-style special tokens.
Digits are always single tokens, so ``"reverse:31415="`` is 8 tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from apo_pipeline.task.synthetic import INSTRUCTION

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Qwen2's pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PAD = "<|endoftext|>"  # also the unknown token, as in Qwen2 (never produced: bytes cover all text)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
EOS = IM_END
SPECIAL_TOKENS: tuple[str, ...] = (PAD, IM_START, IM_END)
MODEL_MAX_LENGTH = 128
WHOLE_WORDS: tuple[str, ...] = (INSTRUCTION, "system", "user", "assistant")

# ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build ``word`` (ASCII letters) into one token."""
    return [(word[:i], word[i]) for i in range(1, len(word))]


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [m for word in WHOLE_WORDS for m in _word_merges(word)]
    tokens = [*SPECIAL_TOKENS, *symbols, *(a + b for a, b in merges)]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_core() -> Tokenizer:
    """The task tokenizer's `tokenizers` pipeline, special tokens included (no transformers import:
    preflight checks it in a fraction of a second)."""
    vocab, merges = _vocab_and_merges()
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS]
    )
    return core


def build_tokenizer() -> "PreTrainedTokenizerFast":
    """The task tokenizer (281 tokens): pad ``<|endoftext|>``, eos ``<|im_end|>``, chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_core(),
        pad_token=PAD,
        unk_token=PAD,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
