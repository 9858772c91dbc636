"""A character-level tokenizer built locally with ``tokenizers``, loadable as ``PreTrainedTokenizerFast``.

The tiny CPU preset cannot download a tokenizer, so it builds one: one token per printable ASCII character
(``string.printable`` without the rare whitespace characters ``\\t \\r \\x0b \\x0c``) plus four special
tokens. Ids are fixed by construction (``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3, then the
characters in ``string.printable`` order), so a saved run and a freshly built tokenizer always agree.

Design notes:

* ``WordLevel`` model over single characters, with a ``Split(".")`` pre-tokenizer (every character is its own
  piece) and a ``Fuse`` decoder (tokens are joined without spaces), so ``decode(encode(s)) == s`` for any
  string of these characters.
* No BOS/EOS is added by ``__call__``: the trainer appends EOS to supervised targets itself and the sampler
  stops on EOS. Prompts are left-padded for generation (``padding_side="left"``).
* Save with ``save_pretrained`` and load with :func:`load_char_tokenizer` (``PreTrainedTokenizerFast``). Do not
  use ``AutoTokenizer`` on a folder that also holds a model config: it may pick another tokenizer class, with
  other ids, from that config.

``transformers`` is imported inside the functions, so ``import bandpo`` stays light.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Union

__all__ = ["CHARS", "SPECIAL_TOKENS", "build_char_tokenizer", "load_char_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens, in id order: pad = 0, bos = 1, eos = 2, unk = 3."""

CHARS = tuple(c for c in string.printable if c not in "\t\r\x0b\x0c")
"""The 96 characters with their own token (digits, letters, punctuation, space and newline)."""


def _vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}


def build_char_tokenizer(save_dir: Union[str, Path, None] = None) -> Any:
    """Build the character tokenizer (100 tokens) and optionally save it to ``save_dir``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with pad/bos/eos/unk set and ``padding_side="left"``.

    Examples:
        >>> tok = build_char_tokenizer()
        >>> ids = tok("12+34=").input_ids
        >>> ids, tok.decode(ids), tok.eos_token_id, len(tok)
        ([5, 6, 76, 7, 8, 84], '12+34=', 2, 100)
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(_vocab(), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok


def load_char_tokenizer(path: Union[str, Path]) -> Any:
    """Load a tokenizer saved by :func:`build_char_tokenizer` (``PreTrainedTokenizerFast.from_pretrained``)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = "left"
    return tok
