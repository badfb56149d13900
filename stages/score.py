"""score: the reward of every train and test pair's chosen and rejected response (batched by length,
with progress and sequences/s); pairwise accuracy, and on synthetic data the AUC of sound against
flawed chosen responses."""

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from gptpipe import figures as plots
from gptpipe.config import ScoreConfig, load_params
from gptpipe.entry import run_stage
from gptpipe.errors import reading
from gptpipe.evaluation.scores import score_pairs, summarise_scores
from gptpipe.files import atomic_path, write_json
from gptpipe.models.reward import load_scorer
from gptpipe.train.runtime import inference_device


def run(device: str, score: ScoreConfig, hf_max_length: int, raw: Path, reward: Path, out: Path, metrics: Path, plots_dir: Path) -> dict:
    scorer = load_scorer(reward, score.batch_size, inference_device(device), hf_max_length)
    frames: dict[str, pd.DataFrame] = {}
    figures: dict[str, Any] = {"scorer": scorer.name}
    for split in ("train", "test"):
        with reading(raw / f"{split}.parquet", "Parquet table"):
            pairs = pq.read_table(raw / f"{split}.parquet").to_pandas()
        frames[split] = score_pairs(pairs, scorer, split)
        figures[split] = summarise_scores(frames[split])
    figures["sequences_per_s"] = round(scorer.speed.per_s, 1)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, frame in frames.items():
            frame.to_parquet(tmp / f"{split}.parquet", index=False)
    plots.reward_histograms(frames["train"], plots_dir / "rewards.png", f"train rewards by {scorer.name}")
    write_json(metrics, figures)
    return figures


def main(raw: Path, reward: Path, out: Path, metrics: Path, plots: Path) -> None:
    params = load_params("params.yaml")
    run(params.shared.device, params.score, params.reward.hf_max_length, raw, reward, out, metrics, plots)


if __name__ == "__main__":
    run_stage(main)
