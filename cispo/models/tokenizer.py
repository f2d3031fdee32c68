"""A small character-level tokenizer built offline (no hub access needed).

Covers the built-in arithmetic task's alphabet; `\\boxed{` is one token so a prompt can end
with it. Saved and loaded as a normal `PreTrainedTokenizerFast` directory.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
BOXED = "\\boxed{"
ALPHABET = list("0123456789+-*=") + [" ", BOXED, "}"]
# model.tiny.tool_tokens: the tool-call tags of environments.tool_calls as single tokens, as real
# chat tokenizers have them (the short call form <tool_call>37%8</tool_call> needs no more)
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
TOOL_ALPHABET = ALPHABET + ["%"] + TOOL_TAGS  # %: the calc tasks are remainders


def build_char_tokenizer(alphabet: list[str] | None = None) -> PreTrainedTokenizerFast:
    symbols = alphabet or ALPHABET
    vocab = {tok: i for i, tok in enumerate(SPECIALS + symbols)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Multi-character symbols first, then any single character (unknown ones map to <unk>).
    multi = sorted((s for s in symbols if len(s) > 1), key=len, reverse=True)
    pattern = "|".join([_escape(s) for s in multi] + [r"[\s\S]"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", padding_side="left",
    )


def _escape(s: str) -> str:
    import re

    return re.escape(s)
