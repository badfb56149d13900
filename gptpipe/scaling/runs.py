"""The compute-optimal sweep's runs: which shape a name means, and the loop each (shape, budget)
run gets. The scaling stage trains them through the one loop; `gptpipe.scaling.fit` plans the grid
and fits the isoFLOP profiles.
"""

from __future__ import annotations

from pathlib import Path

from gptpipe.config import LoopConfig, ModelConfig, ScalingConfig
from gptpipe.errors import UserError
from gptpipe.models.architecture import ffn_width
from gptpipe.train.flops import GPT2_SHAPES, ModelShape

RUN_CHECKPOINTS = 4  # a killed sweep resumes each run from its last quarter or better


def scaling_shape(name: str, head_dim: int, model: ModelConfig | None = None) -> ModelShape:
    """A sweep entry's shape: a hub GPT-2 name, an absolute save_pretrained folder (offline copies
    of the hub's weights), or "<layers>x<width>" built from scratch as `model` builds it (its
    architecture and positions; GPT-2 at 1,024 positions without one)."""
    if name in GPT2_SHAPES:
        return GPT2_SHAPES[name]
    if Path(name).is_absolute():
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"scaling.models: {name} holds no saved model (no config.json); save_pretrained one there")
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(name))
    layers, _, width = name.partition("x")
    if not (layers.isdigit() and width.isdigit()) or int(width) % head_dim:
        raise UserError(
            f"scaling.models: {name!r} is neither <layers>x<width> (width a multiple of "
            f"scaling.head_dim={head_dim}), one of {', '.join(GPT2_SHAPES)}, nor an absolute model folder"
        )
    shape = ModelShape(n_layer=int(layers), n_embd=int(width), n_head=int(width) // head_dim)
    if model is None:
        return shape
    built = scratch_config(model, shape)
    return ModelShape(shape.n_layer, shape.n_embd, shape.n_head, n_positions=model.n_positions, arch=model.arch,
                      ffn_hidden=ffn_width(built) if model.arch == "llama" else None)


def scratch_config(model: ModelConfig, shape: ModelShape) -> ModelConfig:
    """The model section at a sweep shape's layers, width and heads. Its n_kv_head and ffn_hidden are
    set for its own width and heads, so a sweep shape takes the defaults: a K/V head per query head,
    and llama's FFN by the 2/3 rule at the shape's width."""
    return model.model_copy(update={"n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head,
                                    "n_kv_head": None, "ffn_hidden": None})


def run_config(scaling: ScalingConfig, steps: int) -> LoopConfig:
    """The loop of one run: AdamW at the sweep's lr for the steps its budget buys; one evaluation,
    at the end, on `eval_samples` test sequences."""
    return LoopConfig(
        optimizer="adamw", lr=scaling.lr, weight_decay=scaling.weight_decay,
        batch_size=scaling.batch_size, micro_batch_size=scaling.batch_size,
        max_steps=steps, warmup_steps=min(scaling.warmup_steps, steps // 5),
        eval_every=steps, eval_samples=scaling.eval_samples,
        checkpoint_every=max(1, steps // RUN_CHECKPOINTS),
    )
