"""The tiny params every training test uses (each knob the stages read, shrunk), and a tiny run."""

from gptpipe.data.batches import StepPlan, eval_sample, lm_examples
from gptpipe.config import SharedConfig, LoopConfig
from gptpipe.train.flops import ModelShape
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.objectives import LanguageModelling
from gptpipe.data.tokenizer import encode, read_arrow
from gptpipe.data.loss_targets import loss_on_for
from gptpipe.data.turns import TurnMarkers
from gptpipe.train.loop import train
from gptpipe.train.runtime import make_runtime

TINY = {
    "data": {"synthetic": {"n_train": 300, "n_test": 60, "flawed_fraction": 0.3, "max_turns": 2}},
    "tokenize": {"max_length": 128},
    "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128},
    "base": {"max_steps": 12, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 2,
             "eval_every": 6, "eval_samples": 16, "checkpoint_every": 4, "lr": 0.01, "weight_decay": 0.0},
    "train": {"max_steps": 12, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 2,
              "eval_every": 6, "eval_samples": 16, "checkpoint_every": 4, "lr": 0.01},
    "reward": {"max_steps": 12, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 2,
               "eval_every": 6, "eval_samples": 16, "checkpoint_every": 4, "lr": 0.01},
    "dpo": {"max_steps": 6, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 1,
            "eval_every": 3, "eval_samples": 16, "checkpoint_every": 4},
    "generate": {"n_prompts": 8, "max_new_tokens": 12, "batch_size": 4},
    "scaling": {"models": ["1x16", "1x32", "1x48"], "head_dim": 16, "budgets": [3e9, 9e9], "eval_samples": 16,
                "lr": 0.01, "weight_decay": 0.0, "warmup_steps": 2},
}


def run_tiny(tiny_params, tokenized, tmp_path, cfg: LoopConfig, seed: int = 0, evaluate_start: bool = True):
    markers = TurnMarkers.encoded_by(encode)
    data = {s: lm_examples(read_arrow(tokenized / f"{s}.arrow"), loss_on_for(cfg.loss_on, "hh"), ("chosen",), markers) for s in ("train", "test")}
    model = build_scratch(tiny_params.model, seed)
    state, metrics = train(
        LanguageModelling(model), StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, seed),
        {n: eval_sample(e, cfg.eval_samples, seed) for n, e in data.items()}, cfg,
        make_runtime(SharedConfig(device="cpu")), seed=seed, checkpoint=tmp_path / "ckpt.pt",
        shape=ModelShape.from_config(model.config), evaluate_start=evaluate_start,
    )
    return model, state, metrics
