"""DALL·E Mini / Mega's text tokenizer: text → BART token ids, exactly as min-dalle's TextTokenizer gives them.

min-dalle does not run the byte-level BPE the vocabulary was trained with. It spells emoji out by name, lower-cases,
drops every non-ASCII character (accents, non-Latin scripts), splits words at single spaces only (tabs and newlines
stay inside words, where the vocabulary has no entry for them) and byte-pair encodes each word behind a separate
'Ġ' word-start symbol, unknown symbols becoming <unk>. The `tokenizers` BPE model applies the merges of a
consistent merge table (every merge's parts and result in the vocabulary, as in trained files) in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

from emoji import demojize
from tokenizers.models import BPE

WORD_START = "Ġ"  # byte-level BPE's stand-in for the space before a word


class BartTokenizer:
    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.bpe = BPE(vocab, merges, unk_token="<unk>")
        self.bos, self.eos = vocab["<s>"], vocab["</s>"]

    @classmethod
    def from_files(cls, vocab_path: Path, merges_path: Path) -> BartTokenizer:
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf8"))
        # min-dalle skips the first line ("#version: 0.2") and the last (empty after the final newline).
        lines = Path(merges_path).read_text(encoding="utf8").split("\n")[1:-1]
        return cls(vocab, [tuple(line.split()) for line in lines])

    def encode(self, text: str) -> list[int]:
        """[<s>, word pieces …, </s>], not cut to any length."""
        text = demojize(text, delimiters=("", "")).lower().encode("ascii", errors="ignore").decode()
        pieces = [token.id for word in text.split(" ") if word for token in self.bpe.tokenize(WORD_START + word)]
        return [self.bos, *pieces, self.eos]
