"""Tokens per byte of a tokenizer on some texts, with the round trip checked: the tokenizer stage's
comparison of GPT-2's BPE and a trained one on the test split and on two passages kept here (an
English and a Chinese one, written for this repo), as in the seed's 938-vs-185 / 113-vs-306 table.
"""

from __future__ import annotations

from importlib import resources

from gptpipe.data.tokenizer import Tokenizer
from gptpipe.errors import UserError

PASSAGES = ("english", "chinese")


class RoundTripError(UserError):
    """decode(encode(text)) is not the text: the tokenizer would change what it reads."""


def passages() -> dict[str, str]:
    folder = resources.files("gptpipe.data") / "passages"
    return {name: (folder / f"{name}.txt").read_text(encoding="utf-8") for name in PASSAGES}


def tokens_per_byte(tokenizer: Tokenizer, texts: list[str], corpus: str) -> dict[str, float]:
    """Tokens, UTF-8 bytes and their ratio over texts; every text must decode back to itself."""
    rows = tokenizer.encode_batch(texts)
    for text, ids in zip(texts, rows, strict=True):
        if tokenizer.decode(ids) != text:
            raise RoundTripError(f"{tokenizer.name} tokenizer: {corpus} text {text[:40]!r}... does not decode "
                                 "back to itself; retrain it (dvc repro tokenizer)")
    tokens, n_bytes = sum(len(ids) for ids in rows), sum(len(t.encode("utf-8")) for t in texts)
    return {"tokens": tokens, "bytes": n_bytes, "tokens_per_byte": round(tokens / max(n_bytes, 1), 4)}


def compare(tokenizers: list[Tokenizer], corpora: dict[str, list[str]]) -> dict[str, dict]:
    """{tokenizer name: {corpus: tokens, bytes, tokens_per_byte}}, round trips checked."""
    return {tok.name: {corpus: tokens_per_byte(tok, texts, corpus) for corpus, texts in corpora.items()}
            for tok in tokenizers}
