"""Training a byte-level BPE on the train split's text (the tokenizer stage, tokenize.tokenizer: trained).

Hugging Face `tokenizers` rather than rustbpe + tiktoken (nanochat's pair): it is already installed
with transformers, its trainer is deterministic for the same text, and its one `tokenizer.json` is what
`PreTrainedTokenizerFast` / `AutoTokenizer.from_pretrained` load, so a model folder with it works with
plain transformers. The recipe is GPT-2's: the ByteLevel pre-tokenizer (GPT-2's split regex, then each
byte as one of 256 printable characters), every byte in the initial alphabet so that any UTF-8 text
encodes and decodes back without an unknown token, and `<|endoftext|>` as the one special token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from gptpipe.data.tokenizer import EOT, byte_chars

# One text per row and field: what pretraining reads (gptpipe.data.batches.lm_examples), so the
# merges follow the text the model sees. A null rejected (single-response data) is no text.
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def split_texts(table: pa.Table) -> Iterator[str]:
    for column in TEXT_COLUMNS:
        if column in table.column_names:
            yield from (text for text in table.column(column).to_pylist() if text)


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE of at most vocab_size ids: 256 bytes, <|endoftext|>, then merges by count.

    Fewer when the text runs out of pairs seen twice (min_frequency 2: a pair seen once is one
    word's spelling, not a pattern); the model's vocabulary is the tokenizer's actual size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return bpe


def save_trained(bpe, folder: Path) -> None:
    """tokenizer.json and the tokenizer_config.json that lets AutoTokenizer load it as it is."""
    folder = Path(folder)
    (folder / "tokenizer.json").write_text(bpe.to_str(pretty=True))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def learned_merges(folder: Path, n: int) -> dict[str, list[str]]:
    """The first and last n merges, each as the text of its two parts ("th" + "e" -> ["th", "e"])."""
    merges = json.loads((Path(folder) / "tokenizer.json").read_text())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    readable = [[_text(part) for part in pair] for pair in pairs]
    return {"first": readable[:n], "last": readable[-n:]}


def _text(token: str) -> str:
    # ByteLevel spells each byte as a printable character ("Ġ" is a space); undo it for the reader.
    to_byte = {char: byte for byte, char in enumerate(byte_chars())}
    return bytes(to_byte[c] for c in token).decode("utf-8", errors="backslashreplace")
