"""dpo: models/sft trained with DPO on the train preference pairs (sigmoid, IPO, label smoothing;
reference log-probs cached once or a live reference; full or LoRA) → models/dpo."""

import time
from pathlib import Path

from gptpipe.config import DpoConfig, SharedConfig, load_params
from gptpipe.data.batches import StepPlan, eval_sample, pair_examples
from gptpipe.data.tokenizer import load_tokenizer, read_splits
from gptpipe.entry import run_stage
from gptpipe.errors import UserError
from gptpipe.figures import dpo_curves
from gptpipe.files import write_json, write_tsv
from gptpipe.models.gpt2 import load_model
from gptpipe.models.lora import add_lora, save_finetuned
from gptpipe.train.checkpoint import discard, run_key
from gptpipe.train.dpo import DirectPreference, cache_reference, curves_title, dpo_metrics
from gptpipe.train.flops import ModelShape
from gptpipe.train.loop import train
from gptpipe.train.runtime import make_runtime
from gptpipe.train.sharding import full_weights
from gptpipe.train.memory_plan import check_host_memory


def run(shared: SharedConfig, dpo: DpoConfig, tokenized: Path, sft: Path, out: Path, metrics: Path,
        plots_dir: Path, checkpoints: Path) -> dict:
    runtime = make_runtime(shared)
    model = _load_sft(sft)
    _check_tokenized(tokenized)
    data = {name: pair_examples(table) for name, table in read_splits(tokenized).items()}
    plan = StepPlan(data["train"], dpo.batch_size, dpo.micro_batch_size, shared.seed)
    eval_sets = {name: eval_sample(examples, dpo.eval_samples, shared.seed) for name, examples in data.items()}
    started = time.perf_counter()
    if dpo.reference == "cached":  # computed before LoRA: adapters at B = 0 would change nothing
        plan, eval_sets = cache_reference(model, plan, eval_sets, dpo.max_steps, dpo.micro_batch_size, runtime)
    reference_seconds = time.perf_counter() - started
    add_lora(model, dpo.lora, shared.seed)
    inputs = [tokenized / "train.arrow", tokenized / "test.arrow", *sorted(sft.glob("*.safetensors"))]
    shape = ModelShape.from_config(model.config)
    checkpoint = checkpoints / f"dpo-{run_key('dpo', [shared, dpo], inputs)}.pt"
    state, trained = train(
        DirectPreference.from_config(model, dpo), plan, eval_sets, dpo, runtime, seed=shared.seed,
        checkpoint=checkpoint, shape=shape, desc="dpo",
    )
    figures = dpo_metrics(dpo, state.rows, trained, shape, plan, reference_seconds)
    with full_weights(model):  # a collective under FSDP: every rank gathers, the main one saves
        if runtime.is_main:
            save_finetuned(model, out, dpo.lora, load_tokenizer(sft))  # the SFT model's, passed on
            write_tsv(plots_dir / "loss.tsv", state.rows)
            dpo_curves(state.rows, plots_dir / "curves.png", curves_title(dpo))
            write_json(metrics, figures)
            discard(checkpoint)
    return figures


def _load_sft(sft: Path):
    if not (sft / "config.json").is_file():
        raise UserError(f"{sft}: holds no SFT model; run the sft stage first (dvc repro sft)")
    return load_model(sft)


def _check_tokenized(tokenized: Path) -> None:
    for split in ("train", "test"):
        if not (tokenized / f"{split}.arrow").is_file():
            raise UserError(f"{tokenized}/{split}.arrow: missing; run the tokenize stage first (dvc repro tokenize)")


def main(tokenized: Path, sft: Path, out: Path, metrics: Path, plots: Path, checkpoints: Path) -> None:
    params = load_params("params.yaml")
    check_host_memory(params, "dpo")  # before any work: a CPU run that cannot fit stops here
    run(params.shared, params.dpo, tokenized, sft, out, metrics, plots, checkpoints)


if __name__ == "__main__":
    run_stage(main, distributed=True)
