"""Language modelling through the one loop: pretraining (every token of whole dialogues) and SFT
(prompt -> chosen response, prompt masked) differ only in the examples; hub weights are measured as
they are. The base, sft and scaling stages call these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from gptpipe.config import LoopConfig
from gptpipe.data.batches import LMExample, StepPlan, eval_sample
from gptpipe.train.bits_per_byte import bits_per_byte, counted_bytes, counted_tokens
from gptpipe.train.flops import ModelShape, count_params
from gptpipe.train.loop import RunState, estimate_loss, train
from gptpipe.train.runtime import Runtime
from gptpipe.train.objectives import LanguageModelling

SERIES_COLUMNS = ("step", "tokens", "flops", "lr", "train_loss", "test_loss", "train_bpb", "test_bpb")
OPTIONAL_SERIES = ("test_sound_loss", "test_sound_bpb")  # SFT on data with ground truth


def fit_language_model(
    model: PreTrainedModel,
    data: dict[str, list[LMExample]],
    cfg: LoopConfig,
    runtime: Runtime,
    *,
    seed: int,
    checkpoint: Path,
    desc: str,
    token_bytes: list[int],
) -> tuple[RunState, dict[str, Any]]:
    """Train on data["train"]; every other entry of `data` is a fixed evaluation sample's source.
    token_bytes (each id's UTF-8 length, the run's tokenizer's) puts bits per byte beside each loss."""
    plan = StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, seed)
    eval_sets = {name: eval_sample(examples, cfg.eval_samples, seed) for name, examples in data.items()}
    shape = ModelShape.from_config(model.config)
    state, trained = train(
        LanguageModelling(model), plan, eval_sets, cfg, runtime,
        seed=seed, checkpoint=checkpoint, shape=shape, desc=desc,
    )
    for row in state.rows:
        add_bits_per_byte(row, eval_sets, token_bytes)
    add_bits_per_byte(trained, eval_sets, token_bytes)
    metrics = {
        "parameters": count_params(shape),
        "parameters_without_embeddings": count_params(shape, include_embeddings=False),
        "train_sequences": len(data["train"]),
        "epochs": round(state.step / plan.steps_per_epoch, 3),
        **trained,
    }
    return state, metrics


def measure_language_model(
    model: PreTrainedModel, data: dict[str, list[LMExample]], cfg: LoopConfig, runtime: Runtime, seed: int,
    token_bytes: list[int],
) -> dict[str, Any]:
    """Hub weights are the base as they are: their loss on this data, as a curve's one point."""
    model.to(runtime.device)
    objective = LanguageModelling(model)
    row: dict[str, Any] = {"step": 0, "tokens": 0, "flops": 0.0, "lr": 0.0}
    samples = {name: eval_sample(examples, cfg.eval_samples, seed) for name, examples in data.items()}
    for name, sample in samples.items():
        row[f"{name}_loss"] = estimate_loss(objective, sample, cfg, runtime)
    return add_bits_per_byte(row, samples, token_bytes)


def add_bits_per_byte(row: dict[str, Any], samples: dict[str, list[LMExample]], token_bytes: list[int]) -> dict[str, Any]:
    """`<name>_bpb` beside each `<name>_loss` of a row, over that fixed sample's counted bytes."""
    for name, sample in samples.items():
        if f"{name}_loss" in row:
            loss = row[f"{name}_loss"]
            row[f"{name}_bpb"] = bits_per_byte(loss, counted_tokens(sample), counted_bytes(sample, token_bytes))
    return row


def series_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The columns of a language-model stage's loss.tsv."""
    columns = [*SERIES_COLUMNS, *(c for c in OPTIONAL_SERIES if c in rows[0])]
    return [{c: r[c] for c in columns} for r in rows]
