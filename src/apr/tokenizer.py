"""A small tokenizer for the Countdown trace language, built with `tokenizers`.

Design: a character-level base vocabulary (every printable ASCII character and "\\n" is
one token) plus the fixed words of the trace language as added tokens, matched
longest-first before the text is split into characters. The decoder simply concatenates
tokens (`Fuse`), so decode(encode(t)) == t byte for byte.

Numbers come in two representations (`TOKENIZERS`, the names a config's `tokenizer` takes):
- `apr`: every digit is its own token (the published models' choice, and ours so far);
- `apr-num99` / `apr-num999`: every run of digits is cut into right-aligned chunks of 2 (3)
  digits, and every chunk is one token: 0..99 (0..999) are whole tokens, 6264 is `62` `64`,
  970299 is `970` `299`. Right alignment keeps a chunk's place value fixed (the last chunk is
  always units), so the same token means the same thing wherever it sits. Every digit string
  of length 1..w is in the vocabulary (leading zeros too: `05` in 1005), so any text round-trips.
Only the tokenization changes; the text is the published trace language either way.

The result is an ordinary `PreTrainedTokenizerFast` saved as tokenizer.json; nothing
downstream may depend on it: every other module takes any Hugging Face tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

from apr.errors import UserError

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# Fixed phrases of the trace language (see docs/FORMATS.md). Longest match wins, so overlapping
# phrases ("No solution found." / "No solution found in sub search") are both fine.
PHRASES = [
    "Current State:",
    "Operations:",
    "Exploring Operation:",
    "Resulting Numbers:",
    "Generated Node #",
    "Moving to Node #",
    "Operation:",
    "equal: Goal Reached",
    "unequal: No Solution",
    "No solution found.",
    "No solution found in sub search",
    "Start Sub Search at level",
    "Exit Sub Search at level",
    "<Calling Sub Searches>",
    "<End Calling Sub Searches>",
    "<Start Sub Search",
    "at level",
    "<Sub Searches>",
    "<End Sub Searches>",
    "<No Solution in Sub Search",
    "<Goal Reached in Sub Search",
    "at Node #",
    "Sub Call Budget:",
    "Token Budget:",
    ", ",
    "['",
    "']",
    "', '",
    "[]",
]

# Printable ASCII (space included) and newline: every character a trace can contain.
CHARS = sorted(set(string.printable) - set("\t\r\x0b\x0c"))


# Our tokenizers by name -> digits per number chunk (1: one token per digit).
TOKENIZERS = {"apr": 1, "apr-num99": 2, "apr-num999": 3}


def build_tokenizer(name: str = "apr"):
    """Build one of our trace tokenizers (`TOKENIZERS`) as a `PreTrainedTokenizerFast`.

    It adds BOS (no EOS) when called with add_special_tokens=True, like Llama-2's.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if name not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {name!r} (ours: {', '.join(TOKENIZERS)}; or a tokenizer folder)")
    width = TOKENIZERS[name]
    chunks = [str(n).zfill(w) for w in range(2, width + 1) for n in range(10**w)]  # "00".."99", ...
    vocab = {tok: i for i, tok in enumerate([UNK, BOS, EOS, PAD] + CHARS + chunks)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split everything not matched by an added token into single characters, except digit
    # runs: chunks of `width` digits counted from the right (the first chunk takes the rest).
    digits = rf"\d{{1,{width}}}(?=(?:\d{{{width}}})*(?!\d))|" if width > 1 else ""
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(digits + r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS, PAD)])
    tok.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in PHRASES])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # decode must give back the text exactly
    )


def load_tokenizer(dir_or_name: str | Path):
    """Load any Hugging Face tokenizer (a folder or a hub name); our names build ours."""
    if str(dir_or_name) in TOKENIZERS:
        return build_tokenizer(str(dir_or_name))
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(dir_or_name))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer: {str(e).splitlines()[0]}", str(dir_or_name)) from None
    if tok.pad_token is None:  # Llama-2 has none; padding never reaches the loss anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def tokenizer_fingerprint(tokenizer) -> str:
    """A short name for a tokenizer's vocabulary: equal fingerprints encode alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
    return f"vocab{len(vocab)}-{digest}"
