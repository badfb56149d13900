import pyarrow as pa
import pytest
from datasets import Dataset

from gptpipe.data import tokenizer
from gptpipe.config import TokenizeConfig
from gptpipe.data.tokenizer import EOT_ID, Gpt2Bpe, TokenizerFilesError, encode, fit_pair, read_arrow, tokenize_split


def test_real_gpt2_ids():
    assert encode("Shenzhen is a great city.") == [50, 831, 46732, 318, 257, 1049, 1748, 13]
    assert tokenizer.decode(encode("\n\nHuman: hi\n\nAssistant: ok")) == "\n\nHuman: hi\n\nAssistant: ok"


def test_endoftext_in_dialogue_text_is_not_a_control_token():
    assert EOT_ID not in encode("say <|endoftext|> now")


def test_bpe_files_with_another_hash_are_refused(monkeypatch):
    tokenizer.gpt2_encoding.cache_clear()
    monkeypatch.setattr(tokenizer, "VOCAB_BPE_SHA256", "0" * 64)
    try:
        with pytest.raises(TokenizerFilesError, match="vocab.bpe: sha256 .* differs"):
            tokenizer.gpt2_encoding()
    finally:
        tokenizer.gpt2_encoding.cache_clear()


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response():
    cfg = TokenizeConfig(max_length=16, min_prompt_tokens=4)
    prompt, chosen, rejected = list(range(100, 120)), [1, 2, 3], [4, 5, 6, 7, 8]
    p, c, r, prompt_cut, response_cut = fit_pair(prompt, chosen, rejected, cfg)
    assert (c, r) == (chosen, rejected)
    assert p == prompt[-11:]  # 16 - len(longer response): the end of the dialogue stays
    assert prompt_cut and not response_cut


def test_an_overlong_response_is_cut_to_leave_min_prompt():
    cfg = TokenizeConfig(max_length=16, min_prompt_tokens=4)
    p, c, r, prompt_cut, response_cut = fit_pair(list(range(10)), list(range(30)), [1], cfg)
    assert len(c) == 12 and c == list(range(12)) and len(p) == 4 and p == [6, 7, 8, 9]
    assert prompt_cut and response_cut


def test_tokenized_split_ends_responses_with_eot_and_loads_with_datasets(tmp_path):
    table = pa.table({
        "id": ["a", "b"],
        "prompt": ["\n\nHuman: Hi\n\nAssistant:", "\n\nHuman: " + "long " * 50 + "\n\nAssistant:"],
        "chosen": [" Hello.", " Sure."],
        "rejected": [" No.", " Never."],
    })
    out, counts = tokenize_split(table, TokenizeConfig(max_length=32, min_prompt_tokens=4), Gpt2Bpe())
    assert counts == {"prompts_cut": 1, "responses_cut": 0}
    assert out.column("chosen_ids").to_pylist()[0] == encode(" Hello.") + [EOT_ID]
    assert all(p + c for p, c in zip(out.column("prompt_len").to_pylist(), out.column("chosen_len").to_pylist()))
    assert max(p + max(c, r) for p, c, r in zip(*(out.column(k).to_pylist() for k in ("prompt_len", "chosen_len", "rejected_len")))) <= 32
    tokenizer.write_arrow(out, tmp_path / "train.arrow")
    assert read_arrow(tmp_path / "train.arrow").equals(out)
    loaded = Dataset.from_file(str(tmp_path / "train.arrow"))  # the datasets library reads it as is
    assert loaded["id"] == ["a", "b"]
