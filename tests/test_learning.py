"""The embedded default teaches its tasks: a short run of the real stages (download, tokenize, base,
sft, generate, judge's exact-answer check) lifts exact accuracy on held-out test prompts above the
base model's, with intervals that do not overlap. A behaviour test, not a timing: the run is the
default's recipe (tables the model memorises, base then SFT at lr 3e-3) shrunk to a minute."""

from __future__ import annotations

import json

import pandas as pd

from gptpipe.config import parse_params
from gptpipe.data.answer_check import response_is_correct
from gptpipe.evaluation.stats import proportion_interval
from stage_runs import download, run_base, run_generate, run_sft, run_tokenize

SHORT = {
    "data": {"synthetic": {"n_train": 1200, "n_test": 120, "flawed_fraction": 0.3, "max_turns": 1}},
    "tokenize": {"max_length": 96},
    "model": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128},
    "base": {"max_steps": 40, "batch_size": 16, "micro_batch_size": 16, "warmup_steps": 4, "eval_every": 40,
             "eval_samples": 16, "checkpoint_every": 100},
    "train": {"max_steps": 300, "batch_size": 16, "micro_batch_size": 16, "warmup_steps": 10, "eval_every": 300,
              "eval_samples": 16, "checkpoint_every": 1000, "lr": 0.003},
    "generate": {"n_prompts": 120, "max_new_tokens": 24, "temperature": 0.0, "batch_size": 60},
}


def _accuracy(answers_path, raw_test) -> tuple[int, int]:
    truth = pd.read_parquet(raw_test).set_index("id")["answer"]
    answers = [json.loads(line) for line in answers_path.read_text().splitlines()]
    return sum(response_is_correct(a["response"], truth[a["id"]]) for a in answers), len(answers)


def test_a_short_run_of_the_default_recipe_answers_held_out_questions_the_base_cannot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints stay in the temp folder
    params = parse_params(SHORT)
    raw, tokenized, models = tmp_path / "raw", tmp_path / "tokenized", tmp_path / "models"
    download(params.data, params.shared.seed, raw, tmp_path / "data.json")
    run_tokenize(raw, tokenized, tmp_path / "tokenize.json", params.tokenize)
    run_base(params, tokenized, models / "base", tmp_path / "base.json", tmp_path / "plots")
    run_sft(params, tokenized, models / "base", models / "sft", tmp_path / "sft.json", tmp_path / "plots",
            raw_test=raw / "test.parquet")
    accuracy = {}
    for name in ("base", "sft"):
        run_generate(params, name, raw, models, tmp_path / f"{name}.jsonl", tmp_path / f"gen-{name}.json", progress=False)
        accuracy[name] = _accuracy(tmp_path / f"{name}.jsonl", raw / "test.parquet")
    base_high = proportion_interval(*accuracy["base"], 0.95)[1]
    sft_low = proportion_interval(*accuracy["sft"], 0.95)[0]
    assert sft_low > base_high, accuracy
