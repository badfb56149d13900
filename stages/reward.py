"""reward: the judge. `trained`: models/base plus a scalar head trained on the train pairs with the
Bradley-Terry loss through the one loop (as InstructGPT initialises its reward model from the
policy); `hf`: a hub sequence classifier (the full study's OpenAssistant model), saved as it is."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gptpipe import figures as plots
from gptpipe.config import RewardConfig, SharedConfig, load_params
from gptpipe.data.batches import StepPlan, eval_indices, eval_sample, pair_examples
from gptpipe.data.tokenizer import load_tokenizer, read_splits
from gptpipe.entry import run_stage
from gptpipe.errors import reading
from gptpipe.files import write_json, write_tsv
from gptpipe.models.reward import HFScorer, load_hub_classifier, reward_model_from, save_no_judge, save_reward_model
from gptpipe.train.checkpoint import discard, run_key
from gptpipe.train.flops import ModelShape
from gptpipe.train.loop import evaluate, train
from gptpipe.train.runtime import inference_device, make_runtime
from gptpipe.train.sharding import full_weights
from gptpipe.train.objectives import BradleyTerry
from gptpipe.train.memory_plan import check_host_memory

SERIES_COLUMNS = ("step", "tokens", "flops", "lr", "train_loss", "test_loss", "train_accuracy", "test_accuracy")


def run(shared: SharedConfig, reward: RewardConfig, tokenized: Path, raw: Path, base: Path,
        out: Path, metrics: Path, plots_dir: Path, checkpoints: Path) -> dict:
    if reward.backend == "hf":
        return _fetch_hub_judge(shared, reward, raw, out, metrics, plots_dir)
    if reward.backend == "none":
        return _no_judge(out, metrics, plots_dir)
    runtime = make_runtime(shared)
    data = {split: pair_examples(table) for split, table in read_splits(tokenized).items()}
    torch.manual_seed(shared.seed)  # the scalar head's init: the same params give the same reward model
    model = reward_model_from(base)
    inputs = [tokenized / "train.arrow", tokenized / "test.arrow", *sorted(base.glob("*.safetensors"))]
    checkpoint = checkpoints / f"reward-{run_key('reward', [shared, reward], inputs)}.pt"
    objective = BradleyTerry(model)
    state, trained = train(
        objective, StepPlan(data["train"], reward.batch_size, reward.micro_batch_size, shared.seed),
        {split: eval_sample(examples, reward.eval_samples, shared.seed) for split, examples in data.items()},
        reward, runtime, seed=shared.seed, checkpoint=checkpoint,
        shape=ModelShape.from_config(model.config), desc="reward",
    )
    # The loop's estimates use a 200-pair sample; the stage's headline is every test pair.
    full_test = evaluate(objective, sorted(data["test"], key=len), reward, runtime)
    figures = {
        "backend": "trained",
        "name": f"{model.config.model_type} {model.config.num_hidden_layers}x{model.config.hidden_size} from models/base + scalar head",
        "test_pairs": len(data["test"]),
        "test_accuracy_all_pairs": full_test["accuracy"],
        "test_loss_all_pairs": full_test["loss"],
        **trained,
    }
    with full_weights(model):  # a collective under FSDP: every rank gathers, the main one saves
        if runtime.is_main:
            save_reward_model(model, out, {"backend": "trained", "name": figures["name"]}, load_tokenizer(base))
            write_tsv(plots_dir / "loss.tsv", [{c: r[c] for c in SERIES_COLUMNS} for r in state.rows])
            plots.reward_curves(state.rows, plots_dir / "curves.png", "reward model: Bradley-Terry loss and pair accuracy")
            write_json(metrics, figures)
            discard(checkpoint)
    return figures


def _fetch_hub_judge(shared: SharedConfig, reward: RewardConfig, raw: Path, out: Path,
                     metrics: Path, plots_dir: Path) -> dict:
    """The hub classifier saved as it is, and measured like a trained judge at its one "step": the
    Bradley-Terry loss and pair accuracy on the same fixed samples of train and test pairs."""
    model, tokenizer = load_hub_classifier(reward.name)
    save_reward_model(model, out, {"backend": "hf", "name": reward.name}, tokenizer)
    # The loaded classifier itself (not a second load from `out`), in micro-batches of the section's size.
    scorer = HFScorer(model, tokenizer, reward.name, reward.micro_batch_size, reward.hf_max_length,
                      inference_device(shared.device))
    row = {"step": 0, "tokens": 0, "flops": 0.0, "lr": 0.0}
    for split in ("train", "test"):
        with reading(raw / f"{split}.parquet", "Parquet table"):
            pairs = pd.read_parquet(raw / f"{split}.parquet")
        pairs = pairs[pairs["rejected"].notna()]  # single responses (SFT data) have no margin to measure
        if pairs.empty:
            row[f"{split}_loss"] = row[f"{split}_accuracy"] = None
            continue
        sample = pairs.iloc[sorted(eval_indices(len(pairs), reward.eval_samples, shared.seed))]
        prompts = sample["prompt"].tolist()
        margin = (scorer.score(prompts, sample["chosen"].tolist(), desc=f"{split} chosen")
                  - scorer.score(prompts, sample["rejected"].tolist(), desc=f"{split} rejected"))
        row[f"{split}_loss"] = float(-F.logsigmoid(torch.as_tensor(margin)).mean())
        row[f"{split}_accuracy"] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))  # a tie counts half
    figures = {"backend": "hf", "name": reward.name, "parameters": model.num_parameters(),
               "eval_pairs": reward.eval_samples,
               **{f"{split}_{m}": row[f"{split}_{m}"] for split in ("train", "test") for m in ("loss", "accuracy")}}
    write_tsv(plots_dir / "loss.tsv", [row])
    plots.reward_curves([row], plots_dir / "curves.png", f"reward model: {reward.name} (hub weights, not trained here)")
    write_json(metrics, figures)
    return figures


def _no_judge(out: Path, metrics: Path, plots_dir: Path) -> dict:
    """reward.backend=none: a marker instead of a model, and outputs that say so."""
    save_no_judge(out)
    figures = {"backend": "none", "name": "none"}
    write_tsv(plots_dir / "loss.tsv", [], columns=SERIES_COLUMNS)
    plots.reward_curves([], plots_dir / "curves.png", "no reward model (reward.backend=none)")
    write_json(metrics, figures)
    return figures


def main(tokenized: Path, raw: Path, base: Path, out: Path, metrics: Path, plots: Path, checkpoints: Path) -> None:
    params = load_params("params.yaml")
    check_host_memory(params, "reward")  # before any work: a CPU run that cannot fit stops here
    run(params.shared, params.reward, tokenized, raw, base, out, metrics, plots, checkpoints)


if __name__ == "__main__":
    run_stage(main, distributed=True)
