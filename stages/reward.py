"""reward: the judge. `trained`: models/base plus a scalar head trained on the train pairs with the
Bradley-Terry loss through the one loop (as InstructGPT initialises its reward model from the
policy); `hf`: a hub sequence classifier (the full study's OpenAssistant model), saved as it is."""

from pathlib import Path

import torch

from gptpipe import figures as plots
from gptpipe.config import RewardConfig, SharedConfig, load_params
from gptpipe.data.batches import StepPlan, eval_sample, pair_examples
from gptpipe.data.tokenizer import read_splits
from gptpipe.entry import run_stage
from gptpipe.files import write_json, write_tsv
from gptpipe.models.reward import load_hub_classifier, reward_model_from, save_reward_model
from gptpipe.train.checkpoint import discard, run_key
from gptpipe.train.flops import ModelShape
from gptpipe.train.loop import evaluate, train
from gptpipe.train.runtime import make_runtime
from gptpipe.train.objectives import BradleyTerry

SERIES_COLUMNS = ("step", "tokens", "flops", "lr", "train_loss", "test_loss", "train_accuracy", "test_accuracy")


def run(shared: SharedConfig, reward: RewardConfig, tokenized: Path, base: Path, out: Path, metrics: Path,
        plots_dir: Path, checkpoints: Path) -> dict:
    if reward.backend == "hf":
        return _fetch_hub_judge(reward, out, metrics)
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
        "name": f"gpt2 {model.config.n_layer}x{model.config.n_embd} from models/base + scalar head",
        "test_pairs": len(data["test"]),
        "test_accuracy_all_pairs": full_test["accuracy"],
        "test_loss_all_pairs": full_test["loss"],
        **trained,
    }
    if runtime.is_main:
        save_reward_model(model.cpu(), out, {"backend": "trained", "name": figures["name"]})
        write_tsv(plots_dir / "loss.tsv", [{c: r[c] for c in SERIES_COLUMNS} for r in state.rows])
        plots.reward_curves(state.rows, plots_dir / "curves.png", "reward model: Bradley-Terry loss and pair accuracy")
        write_json(metrics, figures)
        discard(checkpoint)
    return figures


def _fetch_hub_judge(reward: RewardConfig, out: Path, metrics: Path) -> dict:
    model, tokenizer = load_hub_classifier(reward.name)
    save_reward_model(model, out, {"backend": "hf", "name": reward.name}, tokenizer)
    figures = {"backend": "hf", "name": reward.name, "parameters": model.num_parameters()}
    write_json(metrics, figures)
    return figures


def main(tokenized: Path, base: Path, out: Path, metrics: Path, plots: Path, checkpoints: Path) -> None:
    params = load_params("params.yaml")
    run(params.shared, params.reward, tokenized, base, out, metrics, plots, checkpoints)


if __name__ == "__main__":
    run_stage(main)
