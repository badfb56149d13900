"""Data quality by reward: the reward stage (train or fetch the judge), the score stage (every train and
test pair scored) and the filter stage (the top-N train pairs by a criterion, or a random N as control).

On synthetic data the ground truth says which chosen responses are flawed, so the scores can be checked:
the AUC is the probability that a sound chosen response outscores a flawed one (0.5 = no signal).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gptpipe import figures as plots
from gptpipe.data.batches import StepPlan, eval_sample, pair_examples
from gptpipe.config import Params
from gptpipe.errors import UserError
from gptpipe.files import atomic_path, write_json, write_tsv
from gptpipe.train.flops import ModelShape
from gptpipe.train.language_model import CHECKPOINT_DIR, read_tables, run_key
from gptpipe.models.reward import BradleyTerry, load_hub_classifier, load_scorer, reward_model_from, save_reward_model
from gptpipe.data.tokenizer import read_arrow, write_arrow
from gptpipe.train.loop import evaluate, make_runtime, train

SERIES_COLUMNS = ("step", "tokens", "flops", "lr", "train_loss", "test_loss", "train_accuracy", "test_accuracy")


# -- reward stage -------------------------------------------------------------------------------


def run_reward(params: Params, tokenized: Path, base: Path, out: Path, metrics_path: Path, plots_dir: Path) -> dict:
    """models/reward: a Bradley-Terry reward model trained here, or the configured hub classifier."""
    cfg = params.reward
    if cfg.backend == "hf":
        model, tokenizer = load_hub_classifier(cfg.name)
        save_reward_model(model, out, {"backend": "hf", "name": cfg.name}, tokenizer)
        metrics = {"backend": "hf", "name": cfg.name, "parameters": model.num_parameters()}
        write_json(metrics_path, metrics)
        return metrics
    runtime = make_runtime(params.shared)
    seed = params.shared.seed
    data = {split: pair_examples(table) for split, table in read_tables(tokenized).items()}
    torch.manual_seed(seed)  # the scalar head's init: the same params give the same reward model
    model = reward_model_from(base)
    key = run_key("reward", params, [tokenized / "train.arrow", tokenized / "test.arrow", *sorted(base.glob("*.safetensors"))])
    objective = BradleyTerry(model)
    state, metrics = train(
        objective, StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, seed),
        {split: eval_sample(examples, cfg.eval_samples, seed) for split, examples in data.items()},
        cfg, runtime, seed=seed, checkpoint=CHECKPOINT_DIR / f"reward-{key}.pt",
        shape=ModelShape.from_config(model.config), desc="reward",
    )
    # The loop's estimates use a 200-pair sample; the stage's headline is every test pair.
    full_test = evaluate(objective, sorted(data["test"], key=len), cfg, runtime)
    metrics = {
        "backend": "trained",
        "name": f"gpt2 {model.config.n_layer}x{model.config.n_embd} from models/base + scalar head",
        "test_pairs": len(data["test"]),
        "test_accuracy_all_pairs": full_test["accuracy"],
        "test_loss_all_pairs": full_test["loss"],
        **metrics,
    }
    if runtime.is_main:
        save_reward_model(model.cpu(), out, {"backend": "trained", "name": metrics["name"]})
        write_tsv(plots_dir / "loss.tsv", [{c: r[c] for c in SERIES_COLUMNS} for r in state.rows])
        plots.reward_curves(state.rows, plots_dir / "curves.png", "reward model: Bradley-Terry loss and pair accuracy")
        write_json(metrics_path, metrics)
    return metrics


# -- score stage --------------------------------------------------------------------------------


def run_score(params: Params, raw: Path, reward: Path, out_dir: Path, metrics_path: Path, plots_dir: Path) -> dict:
    """data/scored/<split>.parquet: the reward of every pair's chosen and rejected response."""
    runtime = make_runtime(params.shared)
    scorer = load_scorer(reward, params.reward.score_batch_size, runtime.device, params.reward.hf_max_length)
    frames: dict[str, pd.DataFrame] = {}
    metrics: dict[str, Any] = {"scorer": scorer.name}
    for split in ("train", "test"):
        pairs = pq.read_table(raw / f"{split}.parquet").to_pandas()
        frames[split] = score_pairs(pairs, scorer, split)
        metrics[split] = summarise_scores(frames[split])
    metrics["sequences_per_s"] = round(scorer.speed.per_s, 1)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, frame in frames.items():
            frame.to_parquet(tmp / f"{split}.parquet", index=False)
    plots.reward_histograms(frames["train"], plots_dir / "rewards.png", f"train rewards by {scorer.name}")
    write_json(metrics_path, metrics)
    return metrics


def score_pairs(pairs: pd.DataFrame, scorer, split: str) -> pd.DataFrame:
    prompts = pairs["prompt"].tolist()
    chosen = scorer.score(prompts, pairs["chosen"].tolist(), desc=f"{split} chosen")
    rejected = scorer.score(prompts, pairs["rejected"].tolist(), desc=f"{split} rejected")
    frame = pd.DataFrame({
        "id": pairs["id"], "chosen_reward": chosen, "rejected_reward": rejected,
        "margin": chosen - rejected, "scorer": scorer.name,
    })
    if "flawed" in pairs:  # synthetic ground truth: is the chosen response itself flawed?
        frame["chosen_flawed"] = pairs["flawed"].to_numpy()
    return frame


def summarise_scores(frame: pd.DataFrame) -> dict[str, Any]:
    summary = {
        "pairs": len(frame),
        "pairwise_accuracy": float((frame["margin"] > 0).mean()),
        "mean_chosen_reward": float(frame["chosen_reward"].mean()),
        "mean_rejected_reward": float(frame["rejected_reward"].mean()),
    }
    if "chosen_flawed" in frame:
        flawed = frame["chosen_flawed"].to_numpy(bool)
        summary["sound_vs_flawed_chosen_auc"] = auc(frame["chosen_reward"][~flawed], frame["chosen_reward"][flawed])
    return summary


def auc(positives, negatives) -> float | None:
    """P(a positive outscores a negative), ties counting half (the Mann-Whitney U statistic)."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if not len(pos) or not len(neg):
        return None
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()  # average ranks for ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


# -- filter stage -------------------------------------------------------------------------------


def run_filter(params: Params, scored: Path, tokenized: Path, out_dir: Path, metrics_path: Path) -> dict:
    """data/subsets/train.arrow: the train pairs SFT trains on (top N by the criterion, or random N)."""
    cfg = params.filter
    frame = pd.read_parquet(scored / "train.parquet")
    table = read_arrow(tokenized / "train.arrow")
    if frame["id"].tolist() != table.column("id").to_pylist():
        raise UserError(f"{scored}/train.parquet: its pairs differ from {tokenized}/train.arrow; rerun the score stage")
    size = cfg.keep if cfg.keep is not None else len(frame)
    if size > len(frame):
        raise UserError(f"filter.keep: {cfg.keep} exceeds the {len(frame)} train pairs; use at most {len(frame)} or null")
    kept = select(frame, size, cfg.by, params.shared.seed)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_arrow(table.take(pa.array(sorted(kept))), tmp / "train.arrow")
    metrics = filter_metrics(frame, kept, cfg.by)
    write_json(metrics_path, metrics)
    return metrics


def select(frame: pd.DataFrame, size: int, by: str, seed: int) -> np.ndarray:
    """Row positions of the pairs kept: the `size` highest by `by` (ties broken by position), or random."""
    if by == "random":
        return np.array(sorted(random.Random(f"filter-{seed}").sample(range(len(frame)), size)), dtype=int)
    order = np.argsort(-frame[by].to_numpy(), kind="stable")
    return np.sort(order[:size])


def filter_metrics(frame: pd.DataFrame, kept: np.ndarray, by: str) -> dict[str, Any]:
    mask = np.zeros(len(frame), bool)
    mask[kept] = True
    metrics: dict[str, Any] = {
        "by": by, "kept": int(mask.sum()), "total": len(frame),
        "threshold": None if by == "random" else float(frame[by][mask].min()),
    }
    for column in ("chosen_reward", "margin"):
        metrics[f"mean_{column}_kept"] = float(frame[column][mask].mean())
        metrics[f"mean_{column}_dropped"] = float(frame[column][~mask].mean()) if (~mask).any() else None
    if "chosen_flawed" in frame:  # how much of the filtered set is flawed, by the ground truth
        flawed = frame["chosen_flawed"].to_numpy(bool)
        metrics["flawed_fraction_kept"] = float(flawed[mask].mean())
        metrics["flawed_fraction_dropped"] = float(flawed[~mask].mean()) if (~mask).any() else None
    return metrics
