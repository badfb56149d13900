"""The compute-optimal sweep's runs: which shape a name means, and the loop each (shape, budget)
run gets. The scaling stage trains them through the one loop; `gptpipe.scaling.fit` plans the grid
and fits the isoFLOP profiles.
"""

from __future__ import annotations

from gptpipe.config import LoopConfig, ModelConfig, ScalingConfig
from gptpipe.errors import UserError
from gptpipe.train.flops import GPT2_SHAPES, ModelShape

RUN_CHECKPOINTS = 4  # a killed sweep resumes each run from its last quarter or better


def scaling_shape(name: str, head_dim: int) -> ModelShape:
    if name in GPT2_SHAPES:
        return GPT2_SHAPES[name]
    layers, _, width = name.partition("x")
    if not (layers.isdigit() and width.isdigit()) or int(width) % head_dim:
        raise UserError(
            f"scaling.models: {name!r} is neither <layers>x<width> (width a multiple of "
            f"scaling.head_dim={head_dim}) nor one of {', '.join(GPT2_SHAPES)}"
        )
    return ModelShape(n_layer=int(layers), n_embd=int(width), n_head=int(width) // head_dim)


def scratch_config(model: ModelConfig, shape: ModelShape) -> ModelConfig:
    """The model section with a sweep shape's layers, width and heads."""
    return model.model_copy(update={"n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head})


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
