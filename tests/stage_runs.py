"""The stages' `run` functions called the way the tests hand them a whole tiny Params: each adapter
passes the sections its stage reads, as dvc.yaml's cmd passes the paths."""

from __future__ import annotations

from pathlib import Path

from stages import base, download as download_stage, dpo, evaluate, filter as filter_stage, generate, judge
from stages import reward, scaling, score, sft, tokenize, tokenizer as tokenizer_stage

CHECKPOINTS = Path(".gptpipe/checkpoints")  # as dvc.yaml passes it


def download(cfg, seed, out_dir, metrics_path):
    return download_stage.run(cfg, seed, out_dir, metrics_path)


def run_tokenize(raw, out, metrics, cfg):
    """The tokenizer stage (into data/tokenizer beside `out`, as dvc.yaml lays it out), then tokenize."""
    tokenizer = Path(out).parent / "tokenizer"
    tokenizer_stage.run(cfg, raw, tokenizer, Path(metrics).parent / "tokenizer.json")
    return tokenize.run(cfg, raw, tokenizer, out, metrics)


def run_base(params, tokenized, out, metrics, plots):
    tokenizer = tokenized.parent / "tokenizer"  # run_tokenize's layout
    return base.run(params.shared, params.model, params.base, tokenizer, tokenized, out, metrics, plots, CHECKPOINTS)


def run_sft(params, tokenized, base_dir, out, metrics, plots, train_pairs=None, raw_test=None):
    # raw_test None: data without ground truth (dvc.yaml always passes data/raw/test.parquet).
    # The download's metrics (train.loss_on auto reads the format there) lie beside tokenized in the tests.
    subset = train_pairs or tokenized / "train.arrow"
    return sft.run(params.shared, params.train, subset, tokenized, raw_test, base_dir, out, metrics, plots, CHECKPOINTS,
                   tokenized.parent / "data.json")


def run_reward(params, tokenized, base_dir, out, metrics, plots):
    raw = tokenized.parent / "raw"
    return reward.run(params.shared, params.reward, tokenized, raw, base_dir, out, metrics, plots, CHECKPOINTS)


def run_score(params, raw, reward_dir, out, metrics, plots):
    return score.run(params.shared.device, params.score, params.reward.hf_max_length, raw, reward_dir, out, metrics, plots)


def run_filter(params, scored, tokenized, out, metrics):
    return filter_stage.run(params.filter, params.shared.seed, scored, tokenized, out, metrics)


def run_dpo(params, tokenized, sft_dir, out, metrics, plots):
    return dpo.run(params.shared, params.dpo, tokenized, sft_dir, out, metrics, plots, CHECKPOINTS)


def run_generate(params, name, raw_dir, models_root, out, metrics, progress=True):
    from gptpipe.evaluation.generate import model_folder

    folder = model_folder(name, models_root)
    return generate.run(params.shared.device, params.generate, name, raw_dir / "test.parquet", folder, out, metrics, progress)


def run_judge(params, name, answers, reward_dir, raw_test, out, metrics):
    return judge.run(params.shared.device, params.score, params.reward.hf_max_length, params.evaluate, name, answers, reward_dir, raw_test, out, metrics)


def run_evaluate(params, judged, generated, scored_test, raw_test, metrics, plots):
    return evaluate.run(params.generate.models, params.evaluate, judged, generated, scored_test, raw_test, metrics, plots)


def run_scaling(params, tokenized, out, metrics):
    tokenizer = tokenized.parent / "tokenizer"  # run_tokenize's layout
    return scaling.run(params.shared, params.model, params.scaling, params.data.source, tokenizer, tokenized, out, metrics,
                       CHECKPOINTS)
