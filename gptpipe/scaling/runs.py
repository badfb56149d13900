"""The compute-optimal study's runs: each model size at each FLOP budget, trained through the one
loop for D = C / 6N tokens from the same data; `gptpipe.scaling.fit` plans the grid and fits the
isoFLOP profiles. Apart from lm.py so that the pretraining and fine-tuning stages do not depend on
the fitting and report code.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gptpipe.data.batches import StepPlan, eval_sample, lm_examples
from gptpipe.config import Params
from gptpipe.errors import UserError
from gptpipe.files import write_json
from gptpipe.train.flops import GPT2_SHAPES, ModelShape
from gptpipe.train.language_model import CHECKPOINT_DIR, read_tables
from gptpipe.models.gpt2 import build_scratch, load_pretrained
from gptpipe.train.objectives import LanguageModelling
from gptpipe.scaling.fit import plan_runs, write_scaling_report
from gptpipe.train.loop import make_runtime, train


def run_scaling(params: Params, tokenized: Path, out_dir: Path, metrics_path: Path) -> dict:
    """isoFLOP profiles through the same loop: each size at each budget, then the fits and tables."""
    runtime = make_runtime(params.shared)
    scaling = params.scaling
    pretrained = params.model.init == "pretrained"
    shapes = {_scaling_shape(name, scaling.head_dim): name for name in scaling.models}
    plans = plan_runs(list(shapes), scaling.budgets)
    tables = read_tables(tokenized)
    # Scratch shapes are pretrained on whole dialogues; hub weights are fine-tuned on responses.
    loss_on, responses = ("response", ("chosen",)) if pretrained else ("all", ("chosen", "rejected"))
    data = {name: lm_examples(t, loss_on, responses) for name, t in tables.items()}
    mean_len = sum(len(e) for e in data["train"]) / len(data["train"])
    base_cfg = params.base  # its optimizer knobs; with hub models the base stage itself ignores them
    if scaling.batch_size is not None:
        base_cfg = base_cfg.model_copy(update={"batch_size": scaling.batch_size, "micro_batch_size": scaling.batch_size})
    rows = []
    for plan in plans:
        steps = max(1, round(plan.tokens / (base_cfg.batch_size * mean_len)))
        cfg = base_cfg.model_copy(update={
            "max_steps": steps, "warmup_steps": min(base_cfg.warmup_steps, steps // 5),
            "eval_every": steps, "eval_samples": scaling.eval_samples, "checkpoint_every": steps + 1,
        })
        name = shapes[plan.shape]
        model = load_pretrained(name) if pretrained else build_scratch(_scratch_config(params, plan.shape), params.shared.seed)
        seed = params.shared.seed
        state, metrics = train(
            LanguageModelling(model), StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, seed),
            {"test": eval_sample(data["test"], cfg.eval_samples, seed)}, cfg, runtime, seed=seed,
            checkpoint=CHECKPOINT_DIR / f"scaling-{plan.label}-{plan.budget:.3g}.pt",
            shape=plan.shape, desc=f"{plan.label} @ {plan.budget:.2g} FLOPs",
        )
        rows.append({"label": plan.label, "n_params": plan.n_params, "budget": plan.budget,
                     "tokens": state.tokens, "planned_tokens": plan.tokens, "steps": steps,
                     "flops_counted": state.flops, "test_loss": metrics["test_loss"],
                     "tokens_per_s": metrics["tokens_per_s"]})
    regime = (f"full study: {', '.join(scaling.models)} fine-tuned from hub weights" if pretrained else
              f"embedded default: scratch GPT-2 shapes {', '.join(scaling.models)} pretrained on "
              f"{params.data.source} dialogues, {runtime.device.type.upper()}")
    summary = write_scaling_report(pd.DataFrame(rows), out_dir, regime=regime)
    write_json(metrics_path, summary)
    return summary


def _scaling_shape(name: str, head_dim: int) -> ModelShape:
    if name in GPT2_SHAPES:
        return GPT2_SHAPES[name]
    layers, _, width = name.partition("x")
    if not (layers.isdigit() and width.isdigit()) or int(width) % head_dim:
        raise UserError(
            f"scaling.models: {name!r} is neither <layers>x<width> (width a multiple of "
            f"scaling.head_dim={head_dim}) nor one of {', '.join(GPT2_SHAPES)}"
        )
    return ModelShape(n_layer=int(layers), n_embd=int(width), n_head=int(width) // head_dim)


def _scratch_config(params: Params, shape: ModelShape):
    return params.model.model_copy(update={"n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head})
