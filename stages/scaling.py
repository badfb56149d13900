"""scaling: the compute-optimal study (Chinchilla approach 2). Each size in scaling.models trains at
each FLOP budget C for D = C / 6N tokens through the one loop; isoFLOP parabolas give the best size
per budget, and N_opt ∝ C^a, D_opt ∝ C^b over the budgets whose optimum lies inside the sizes run."""

from dataclasses import replace
from pathlib import Path

import pandas as pd

from gptpipe.config import LoraConfig, ModelConfig, ScalingConfig, SharedConfig, load_params
from gptpipe.data.batches import StepPlan, eval_sample, lm_examples
from gptpipe.data.tokenizer import load_tokenizer, read_splits
from gptpipe.entry import run_stage
from gptpipe.files import write_json
from gptpipe.models.gpt2 import build_scratch, load_pretrained
from gptpipe.scaling.fit import plan_runs
from gptpipe.scaling.summary import write_scaling_report
from gptpipe.scaling.runs import run_config, scaling_shape, scratch_config
from gptpipe.train.memory_plan import check_host_memory
from gptpipe.train.checkpoint import discard, run_key
from gptpipe.train.loop import train
from gptpipe.train.objectives import LanguageModelling
from gptpipe.train.memory_plan import Card, Job, fitted
from gptpipe.train.runtime import make_runtime


def run(shared: SharedConfig, model: ModelConfig, scaling: ScalingConfig, data_source: str, tokenizer: Path,
        tokenized: Path, out: Path, metrics: Path, checkpoints: Path) -> dict:
    runtime = make_runtime(shared)
    # Saved weights are fine-tuned on responses; scratch shapes are trained on whole dialogues, so
    # every FLOP a model has seen is counted (the compute-optimal question needs that).
    pretrained = scaling.fine_tunes
    vocab = load_tokenizer(tokenizer)  # scratch shapes take the run's vocabulary (params refuse hub weights with a trained one)
    shapes = {scaling_shape(name, scaling.head_dim, None if pretrained else model): name for name in scaling.models}
    if not pretrained:
        shapes = {replace(shape, vocab_size=vocab.vocab_size): name for shape, name in shapes.items()}
    loss_on, responses = ("response", ("chosen",)) if pretrained else ("all", ("chosen", "rejected"))
    data = {split: lm_examples(t, loss_on, responses) for split, t in read_splits(tokenized).items()}
    mean_len = sum(len(e) for e in data["train"]) / len(data["train"])
    longest = max(len(e) for e in data["train"])
    card = Card.current() if runtime.device.type == "cuda" else None
    key = run_key("scaling", [shared, model, scaling], [tokenized / "train.arrow", tokenized / "test.arrow"])
    rows, finished = [], []
    for plan in plan_runs(list(shapes), scaling.budgets):
        steps = max(1, round(plan.tokens / (scaling.batch_size * mean_len)))
        # Each size its own micro-batch on a GPU (one batch_size, more accumulation where it must).
        job = Job("scaling", plan.label, plan.shape, run_config(scaling, steps), LoraConfig(), shared.dtype, longest)
        cfg = fitted(job, card)
        net = load_pretrained(shapes[plan.shape]) if pretrained else build_scratch(scratch_config(model, plan.shape), shared.seed, vocab.vocab_size, vocab.eot_id)
        state, trained = train(
            LanguageModelling(net), StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, shared.seed),
            {"test": eval_sample(data["test"], cfg.eval_samples, shared.seed)}, cfg, runtime, seed=shared.seed,
            checkpoint=(checkpoint := checkpoints / f"scaling-{key}-{plan.label}-{plan.budget:.3g}.pt"),
            shape=plan.shape, desc=f"{plan.label} @ {plan.budget:.2g} FLOPs",
            evaluate_start=False,  # a run's final test loss is all the fit reads
        )
        finished.append(checkpoint)
        rows.append({"label": plan.label, "n_params": plan.n_params, "budget": plan.budget,
                     "tokens": state.tokens, "planned_tokens": plan.tokens, "steps": steps,
                     "flops_counted": state.flops, "test_loss": trained["test_loss"],
                     "tokens_per_s": trained["tokens_per_s"]})
    study = "embedded default" if data_source == "synthetic" else "full study"
    regime = (f"{study}: {', '.join(scaling.models)} fine-tuned from saved weights (fine-tuning FLOPs only)" if pretrained else
              f"{study}: scratch {'GPT-2' if model.arch == 'gpt2' else 'llama-variant'} shapes {', '.join(scaling.models)} pretrained on "
              f"{data_source} dialogues, {runtime.device.type.upper()}")
    summary = write_scaling_report(pd.DataFrame(rows), out, regime=regime)
    write_json(metrics, summary)
    for checkpoint in finished:  # kept until now: a killed sweep resumes each run from its last one
        discard(checkpoint)
    return summary


def main(tokenizer: Path, tokenized: Path, out: Path, metrics: Path, checkpoints: Path) -> None:
    params = load_params("params.yaml")
    check_host_memory(params, "scaling")  # before any work: a size that cannot fit stops the sweep here
    run(params.shared, params.model, params.scaling, params.data.source, tokenizer, tokenized, out, metrics, checkpoints)


if __name__ == "__main__":
    run_stage(main)
