"""The tokenizer stage: a byte-level BPE trained on the train split alone, round trips, its folder
loaded by transformers, models whose vocabulary is the tokenizer's, and bits per byte."""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from gptpipe.config import ParamsError, TokenizeConfig, parse_params
from gptpipe.data.batches import LMExample
from gptpipe.data.tokenizer import EOT, Gpt2Bpe, load_tokenizer
from gptpipe.data.tokenizer_comparison import passages
from gptpipe.evaluation.chat import run_chat
from gptpipe.evaluation.generate import Sampling, generate
from gptpipe.models.gpt2 import load_model
from gptpipe.train.bits_per_byte import bits_per_byte, counted_bytes
from gptpipe.train.language_model import add_bits_per_byte
from stage_runs import run_base, run_sft, run_tokenize
from stages import tokenizer as tokenizer_stage
from tiny import TINY

TRAINED = TokenizeConfig(max_length=TINY["tokenize"]["max_length"], tokenizer="trained", vocab_size=400)


@pytest.fixture(scope="module")
def raw(tokenized):
    return tokenized.parent / "raw"  # the conftest's tiny synthetic download


@pytest.fixture(scope="module")
def trained(raw, tmp_path_factory):
    """A trained tokenizer folder, data/tokenized made with it, and a base model trained on that."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(raw, root / "raw")
    shutil.copy(raw.parent / "data.json", root / "data.json")  # the download's record, beside tokenized as in run_sft
    run_tokenize(root / "raw", root / "tokenized", root / "tokenize.json", TRAINED)
    return root


def _random_texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    # Random bytes read as UTF-8 (invalid sequences become U+FFFD), and random code points of every
    # plane but the surrogates (which no UTF-8 string holds).
    from_bytes = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).decode("utf-8", "replace")
                  for _ in range(50)]
    points = [c for c in (rng.randrange(0x110000) for _ in range(5000)) if not 0xD800 <= c < 0xE000]
    return from_bytes + ["".join(map(chr, points[i : i + 40])) for i in range(0, len(points), 40)]


def test_any_text_round_trips_through_both_tokenizers(trained):
    texts = _random_texts(0) + list(passages().values()) + ["say <|endoftext|> now", "\n\nHuman: hi\n\nAssistant:"]
    for tok in (Gpt2Bpe(), load_tokenizer(trained / "tokenizer")):
        for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
            assert tok.decode(ids) == text, (tok.name, text[:20])
            assert tok.decode_bytes(ids) == text.encode("utf-8")
            assert tok.eot_id not in ids  # a literal "<|endoftext|>" in the text is text


def test_the_trained_tokenizer_is_the_one_asked_for_and_transformers_loads_it(trained):
    folder = trained / "tokenizer"
    ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == TRAINED.vocab_size == len(theirs)
    assert theirs.eos_token == EOT and theirs.eos_token_id == ours.eot_id
    text = passages()["english"]
    assert theirs(text)["input_ids"] == ours.encode_batch([text])[0]
    metrics = json.loads((trained / "tokenizer.json").read_text())
    assert metrics["vocab_size"] == 400 and len(metrics["merges"]["first"]) == 10
    rows = metrics["tokens_per_byte"]
    assert set(rows) == {"gpt2", "trained"} and set(rows["trained"]) == {"test", "english", "chinese"}
    # Trained on English-only dialogue, it has no merges of Chinese bytes: one token per byte.
    assert rows["trained"]["chinese"]["tokens_per_byte"] == 1.0 < 1 / rows["gpt2"]["chinese"]["tokens_per_byte"]


def test_the_tokenizer_never_sees_the_test_split(raw, tmp_path):
    def tokenizer_json(test_rows: slice, train_rows: slice = slice(None)) -> bytes:
        folder = tmp_path / f"raw-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        pq.write_table(pq.read_table(raw / "train.parquet")[train_rows], folder / "train.parquet")
        pq.write_table(pq.read_table(raw / "test.parquet")[test_rows], folder / "test.parquet")
        tokenizer_stage.run(TRAINED, folder, folder / "tokenizer", folder / "tokenizer-metrics.json")
        return (folder / "tokenizer" / "tokenizer.json").read_bytes()

    whole = tokenizer_json(slice(0, 60))
    assert tokenizer_json(slice(0, 5)) == whole
    assert tokenizer_json(slice(0, 60), slice(0, 100)) != whole  # the train split does count


def test_a_model_trained_with_it_has_its_vocabulary_and_carries_it(trained, tiny_params):
    base = trained / "models" / "base"
    metrics = run_base(tiny_params, trained / "tokenized", base, trained / "base.json", trained / "plots")
    tok = load_tokenizer(trained / "tokenizer")
    model = load_model(base)
    assert model.config.vocab_size == model.get_input_embeddings().num_embeddings == tok.vocab_size
    assert model.config.eos_token_id == tok.eot_id
    assert (base / "tokenizer.json").read_bytes() == (trained / "tokenizer" / "tokenizer.json").read_bytes()
    assert len(AutoTokenizer.from_pretrained(base)) == tok.vocab_size
    assert 0 < metrics["test_bpb"] < 3 * metrics["test_loss"]
    # Fine-tuned from it, the SFT model carries it on (and `gptpipe chat models/sft` reads it there).
    sft = run_sft(tiny_params, trained / "tokenized", base, trained / "models" / "sft", trained / "sft.json", trained / "sft-plots")
    assert (trained / "models" / "sft" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert load_tokenizer(trained / "models" / "sft").vocab_size == tok.vocab_size and sft["test_bpb"] > 0
    out = io.StringIO()
    conversation = run_chat(trained / "models" / "sft", io.StringIO("What is 2 + 2?\n"), out, Sampling(max_new_tokens=6, temperature=0))
    answer = conversation.exchanges[0].answer  # decoded with the folder's tokenizer, not GPT-2's
    if answer.stopped != "human":
        assert answer.text == tok.decode(list(answer.ids[:-1] if answer.stopped == "eot" else answer.ids))
    assert f"assistant> {answer.text.strip()}" in out.getvalue()
    # Generation stops on this tokenizer's end of text: a model that always says it stops at once.
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[tok.eot_id] = 1.0
        model.transformer.ln_f.bias.fill_(1.0)
    answer = generate(model, tok.encode_batch(["\n\nHuman: hi\n\nAssistant:"]), Sampling(temperature=0),
                      tokenizer=tok).answers[0]
    assert answer.stopped == "eot" and answer.ids == (tok.eot_id,)


def test_bits_per_byte_is_the_summed_loss_over_the_counted_bytes():
    # Two sequences; counted targets are ids from first_target on: [2, 3] and [1, 9].
    examples = [LMExample(ids=[0, 2, 3], first_target=1), LMExample(ids=[5, 5, 1, 9], first_target=2)]
    token_bytes = [1, 4, 2, 3, 0, 1, 0, 0, 0, 0]  # id 9 spells no bytes (an end of text)
    assert counted_bytes(examples, token_bytes) == 2 + 3 + 4 + 0
    # An earlier assistant turn counted in the prompt (loss_on: assistant_turns) counts its bytes too.
    turns = LMExample(ids=[0, 1, 2, 5, 3], first_target=4, prompt_spans=((1, 3),))
    assert counted_bytes([turns], token_bytes) == 4 + 2 + 3 and counted_bytes([turns], token_bytes) != 3
    # mean loss 1.5 nats over 4 counted tokens = 6 nats; over 9 bytes: 6 / (9 ln 2) bits per byte
    assert bits_per_byte(1.5, 4, 9) == pytest.approx(6 / (9 * math.log(2)))
    row = add_bits_per_byte({"test_loss": 1.5}, {"test": examples}, token_bytes)
    assert row["test_bpb"] == pytest.approx(0.9617966939259756)
    # GPT-2's table: every id spells its bytes, <|endoftext|> none.
    gpt2 = Gpt2Bpe().token_bytes()
    assert gpt2[Gpt2Bpe().eot_id] == 0 and sum(gpt2[i] for i in Gpt2Bpe().encode_batch(["héllo wörld"])[0]) == 13


def test_hub_weights_with_a_trained_tokenizer_are_refused_in_one_line():
    with pytest.raises(ParamsError) as err:
        parse_params({"model": {"init": "pretrained"}, "tokenize": {"tokenizer": "trained"}})
    message = str(err.value)
    assert "\n" not in message and "tokenize.tokenizer" in message and "model.init=pretrained" in message
    with pytest.raises(ParamsError, match="tokenize.vocab_size: 100000"):
        parse_params({"tokenize": {"vocab_size": 100000}})


def test_check_refuses_hub_weights_with_a_trained_tokenizer_before_any_work(tmp_path):
    (tmp_path / "params.yaml").write_text("tokenize:\n  tokenizer: trained\nmodel:\n  init: pretrained\n")
    gptpipe = str(__import__("pathlib").Path(sys.executable).parent / "gptpipe")
    result = subprocess.run([gptpipe, "check"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "tokenize.tokenizer" in result.stderr and "model.init=pretrained" in result.stderr
