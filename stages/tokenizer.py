"""tokenizer: the run's tokenizer folder (data/tokenizer) and how it compares with GPT-2's BPE.

tokenize.tokenizer: gpt2 writes a folder holding only a record that says so (GPT-2's BPE ships with
the code); trained trains a byte-level BPE on the train split's text alone (the test split is
measured, never learned from) and writes tokenizer.json + tokenizer_config.json, which the tokenize
stage, the base model and everything after read (gptpipe.data.tokenizer.load_tokenizer).
"""

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from gptpipe.config import TokenizeConfig, load_params
from gptpipe.data.bpe_training import learned_merges, save_trained, split_texts, train_bpe
from gptpipe.data.tokenizer import Gpt2Bpe, load_tokenizer
from gptpipe.data.tokenizer_comparison import compare, passages
from gptpipe.entry import run_stage
from gptpipe.errors import reading
from gptpipe.files import atomic_path, write_json

RECORD = "gptpipe_tokenizer.json"  # which tokenizer the folder is, for a reader (load_tokenizer needs none)
MERGES_SHOWN = 10


def run(tokenize: TokenizeConfig, raw: Path, out: Path, metrics: Path) -> dict:
    started = time.perf_counter()
    with reading(raw / "train.parquet", "Parquet table"):
        train = pq.read_table(raw / "train.parquet", columns=["prompt", "chosen", "rejected"])
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if tokenize.tokenizer == "trained":
            save_trained(train_bpe(split_texts(train), tokenize.vocab_size), tmp)
        tokenizer = load_tokenizer(tmp)
        (tmp / RECORD).write_text(json.dumps({"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size}) + "\n")
        figures = {"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                   "train_seconds": round(time.perf_counter() - started, 2)}
        if tokenizer.name == "trained":
            figures["merges"] = learned_merges(tmp, MERGES_SHOWN)
        figures["tokens_per_byte"] = _comparison(tokenizer, raw)
    write_json(metrics, figures)
    return figures


def _comparison(tokenizer, raw: Path) -> dict:
    with reading(raw / "test.parquet", "Parquet table"):
        test = pq.read_table(raw / "test.parquet", columns=["prompt", "chosen", "rejected"])
    corpora = {"test": list(split_texts(test)), **{name: [text] for name, text in passages().items()}}
    tokenizers = [Gpt2Bpe()] + ([tokenizer] if tokenizer.name == "trained" else [])
    return compare(tokenizers, corpora)


def main(raw: Path, out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    run(params.tokenize, raw, out, metrics)


if __name__ == "__main__":
    run_stage(main)
