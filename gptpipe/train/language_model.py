"""Language-model stages: the base model (pretrained here from scratch, or hub weights) and SFT.

Both are the one training loop with the language-modelling objective; they differ in the sequences
(whole dialogues, good and bad answers alike, for pretraining; prompt → chosen response for SFT) and
in which tokens the loss counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedModel

from gptpipe import figures as plots
from gptpipe.data.batches import StepPlan, eval_sample, lm_examples
from gptpipe.config import LoraConfig, Params, TrainConfig
from gptpipe.files import atomic_path, write_json, write_tsv
from gptpipe.train.flops import ModelShape, count_params
from gptpipe.models.lora import apply_lora, merge_lora, save_adapter
from gptpipe.models.gpt2 import build_scratch, load_model, load_pretrained, save_model
from gptpipe.train.objectives import LanguageModelling
from gptpipe.data.tokenizer import read_arrow
from gptpipe.train.loop import Runtime, estimate_loss, make_runtime, train

CHECKPOINT_DIR = Path(".gptpipe/checkpoints")  # git-ignored, not a DVC output (DVC-NOTES 19)
SERIES_COLUMNS = ("step", "tokens", "flops", "lr", "train_loss", "test_loss")
OPTIONAL_SERIES = ("test_sound_loss",)  # SFT on data with ground truth


def run_base(params: Params, tokenized: Path, out: Path, metrics_path: Path, plots_dir: Path) -> dict:
    """models/base: hub GPT-2 as it is, or a scratch GPT-2 pretrained on the training dialogues."""
    runtime = make_runtime(params.shared)
    cfg = params.base
    tables = read_tables(tokenized)
    # Pretraining reads dialogues as web text does: the good and the bad answers alike.
    data = {name: lm_examples(t, cfg.loss_on, ("chosen", "rejected")) for name, t in tables.items()}
    if params.model.init == "pretrained":
        model = load_pretrained(params.model.name)
        return _measure_only(model, data, cfg, runtime, params, out, metrics_path, plots_dir)
    model = build_scratch(params.model, params.shared.seed)
    key = run_key("base", params, [tokenized / "train.arrow", tokenized / "test.arrow"])
    return _fit(model, data, cfg, runtime, params, key, out, metrics_path, plots_dir, "base")


def run_sft(
    params: Params, tokenized: Path, base: Path, out: Path, metrics_path: Path, plots_dir: Path,
    train_pairs: Path | None = None, raw_test: Path | None = None,
) -> dict:
    """models/sft: the base model fine-tuned on prompt → chosen response.

    train_pairs: the train pairs to fine-tune on (the filter stage's subset); default all of them.
    raw_test: the download stage's test pairs; where they carry the ground truth (synthetic data),
    the loss is also measured on the test pairs whose chosen response is sound (test_sound_loss).
    """
    runtime = make_runtime(params.shared)
    cfg = params.train
    train_pairs = train_pairs or tokenized / "train.arrow"
    tables = {"train": read_arrow(train_pairs), "test": read_arrow(tokenized / "test.arrow")}
    sound = sound_test_pairs(tables["test"], raw_test) if raw_test is not None else None
    if sound is not None:
        tables["test_sound"] = sound
    data = {name: lm_examples(t, cfg.loss_on, ("chosen",)) for name, t in tables.items()}
    model = load_model(base)
    add_lora(model, params.lora, params.shared.seed)
    inputs = [train_pairs, tokenized / "test.arrow", *([raw_test] if sound is not None else []),
              *sorted(base.glob("*.safetensors"))]
    key = run_key("sft", params, inputs)
    return _fit(model, data, cfg, runtime, params, key, out, metrics_path, plots_dir, "sft")


def _fit(
    model: PreTrainedModel,
    data: dict[str, list],
    cfg: TrainConfig,
    runtime: Runtime,
    params: Params,
    key: str,
    out: Path,
    metrics_path: Path,
    plots_dir: Path,
    stage: str,
) -> dict:
    seed = params.shared.seed
    plan = StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, seed)
    eval_sets = {name: eval_sample(examples, cfg.eval_samples, seed) for name, examples in data.items()}
    shape = ModelShape.from_config(model.config)
    state, metrics = train(
        LanguageModelling(model), plan, eval_sets, cfg, runtime,
        seed=seed, checkpoint=CHECKPOINT_DIR / f"{stage}-{key}.pt", shape=shape, desc=stage,
    )
    metrics = {
        "parameters": count_params(shape),
        "parameters_without_embeddings": count_params(shape, include_embeddings=False),
        "train_sequences": len(data["train"]),
        "epochs": round(state.step / plan.steps_per_epoch, 3),
        **metrics,
        "lora_rank": params.lora.rank if stage == "sft" else 0,
    }
    metrics["trainable_fraction"] = round(metrics["trainable_parameters"] / metrics["parameters"], 6)
    if runtime.is_main:
        save_finetuned(model, out, params.lora if stage == "sft" else None)
        _write_outputs(state.rows, metrics, metrics_path, plots_dir, stage)
    return metrics


def add_lora(model: PreTrainedModel, lora: LoraConfig, seed: int) -> None:
    """In place: LoRA adapters as the config says (none at rank 0), A drawn from `seed` so a
    rerun, or a resumed run, starts from the same adapters."""
    if lora.rank:
        torch.manual_seed(seed)
        apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets)


def save_finetuned(model: PreTrainedModel, out: Path, lora: LoraConfig | None) -> None:
    """save_pretrained weights (LoRA merged in, so plain transformers loads them) and, for LoRA,
    the adapter alone in out/adapter; all in a temp folder renamed at the end."""
    with atomic_path(out) as tmp:
        if lora is not None and lora.rank:
            save_adapter(model, tmp / "adapter", rank=lora.rank, alpha=lora.alpha,
                         dropout=lora.dropout, targets=lora.targets)
            model = merge_lora(model)
        model.save_pretrained(tmp)


def _measure_only(model, data, cfg, runtime, params, out, metrics_path, plots_dir) -> dict:
    """Hub weights are the base as they are: record their loss on this data as the curve's one point."""
    seed = params.shared.seed
    model.to(runtime.device)
    objective = LanguageModelling(model)
    row: dict[str, Any] = {"step": 0, "tokens": 0, "flops": 0.0, "lr": 0.0}
    for name, examples in data.items():
        row[f"{name}_loss"] = estimate_loss(objective, eval_sample(examples, cfg.eval_samples, seed), cfg, runtime)
    shape = ModelShape.from_config(model.config)
    metrics = {
        "init": "pretrained",
        "name": params.model.name,
        "parameters": count_params(shape),
        "train_loss": row["train_loss"],
        "test_loss": row["test_loss"],
    }
    save_model(model.cpu(), out)
    _write_outputs([row], metrics, metrics_path, plots_dir, "base")
    return metrics


def _write_outputs(rows: Sequence[dict], metrics: dict, metrics_path: Path, plots_dir: Path, stage: str) -> None:
    columns = [*SERIES_COLUMNS, *(c for c in OPTIONAL_SERIES if c in rows[0])]
    write_tsv(plots_dir / "loss.tsv", [{c: r[c] for c in columns} for r in rows])
    plots.loss_curves(rows, plots_dir / "loss.png", f"{stage}: loss per counted token")
    if stage == "sft":
        plots.memory_bars(metrics["memory"], plots_dir / "memory.png", f"{stage}: training memory ({metrics['optimizer']})")
    write_json(metrics_path, metrics)


def sound_test_pairs(test: pa.Table, raw_test: Path) -> pa.Table | None:
    """The tokenized test pairs whose chosen response is sound by the data's ground truth.

    The test loss on every chosen response rewards imitating the flawed ones too (30% of the
    synthetic data); this subset asks how well a model predicts the answers it should give.
    None where the data has no ground truth (HH), or no sound pair to measure on.
    """
    if "flawed" not in pq.read_schema(raw_test).names:
        return None
    truth = pq.read_table(raw_test, columns=["id", "flawed"])
    sound_ids = {i for i, flawed in zip(truth["id"].to_pylist(), truth["flawed"].to_pylist(), strict=True)
                 if not flawed}
    sound = test.filter(pa.array([i in sound_ids for i in test["id"].to_pylist()], pa.bool_()))
    return sound if sound.num_rows else None


def read_tables(tokenized: Path) -> dict:
    return {split: read_arrow(tokenized / f"{split}.arrow") for split in ("train", "test")}


def run_key(stage: str, params: Params, inputs: Sequence[Path]) -> str:
    """A hash of what determines the run: a checkpoint of other params or inputs is never resumed."""
    digest = hashlib.sha256(stage.encode())
    digest.update(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    for path in inputs:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]
