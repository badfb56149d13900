"""SFT training throughput: gptpipe's loop against Hugging Face `Trainer`, in one process.

Both sides train a fresh copy of the same scratch GPT-2 (same seed, so the same initial weights) with
the same batch and micro-batch sizes, AdamW settings, warmup + cosine schedule and gradient clipping.
The HF side is Trainer's fastest usual setup: dynamic padding to the longest sequence of each batch,
`train_sampling_strategy="group_by_length"`, fp32, its default optimizer (fused AdamW for torch >= 2.8),
no evaluation, no saving.

Same batches: Trainer runs first, on the SFT sequences (prompt + chosen response, loss where
`train.loss_on` says), drawing batches with its own sampler; gptpipe's real `train()` then replays
exactly those steps, in that order, through a `StepPlan`. Their own samplers would hand them different
batches: LengthGroupedSampler sorts each 50-step chunk longest first, so a short run sees only the
longest sequences, and gptpipe's speed depends on how much of a sequence is response (where its LM
head runs). Identical batches make the ratio a ratio of times for the same work.

Timing: wall clock over whole loop iterations after WARMUP_STEPS steps, so it includes everything a
loop does between steps (fetching and collating the batch, forward, backward, clipping, the optimizer,
bookkeeping, the progress bar). For HF that is from the end of step 2 to the end of the last step
(`TrainerCallback.on_step_end`); for gptpipe from the start of step 2 to the start of the step after
the last timed one (train() asks its StepPlan for a step's batches first thing in the step; gptpipe
therefore runs one untimed extra step). train()'s own `tokens_per_s` would not do: its timer counts
the warm-up steps too. Evaluation runs only at step 0 and at the end, outside the timed span.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from gptpipe.train import flops
from gptpipe.data.batches import IGNORE, LMExample, StepPlan, collate, eval_sample, lm_examples
from gptpipe.config import Params, LoopConfig
from gptpipe.errors import UserError
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.objectives import LanguageModelling
from gptpipe.train.optim import learning_rate
from gptpipe.data.tokenizer import EOT_ID, encode, read_arrow
from gptpipe.data.loss_targets import loss_on_for_data
from gptpipe.data.turns import TurnMarkers
from gptpipe.train.loop import train
from gptpipe.train.runtime import Runtime, make_runtime

# Untimed steps first: the first steps allocate the optimizer state, grow the allocator's pools and
# (in HF) take the longest batch, which LengthGroupedSampler puts first on purpose.
DATA_METRICS = Path("metrics/data.json")  # the download stage's record: the data's format (train.loss_on auto)
WARMUP_STEPS = 2
# Batches on which the two losses are compared before training.
PARITY_BATCHES = 3
# eval_every / checkpoint_every beyond any benchmark: train() then evaluates at step 0 and at the end.
NEVER = 10**9
# Sequences in gptpipe's (untimed) step-0 and final loss estimates: enough to run the code path.
EVAL_SEQUENCES = 32


# -- what each side did ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCount:
    """The work of one micro-batch, counted the same way on both sides."""

    seq_lens: list[int]  # real tokens of each sequence
    loss_positions: int  # positions whose next-token loss is counted
    padded_width: int  # the batch's tensor width (longest sequence)

    @property
    def tokens(self) -> int:
        return sum(self.seq_lens)

    @property
    def padded_tokens(self) -> int:
        return self.padded_width * len(self.seq_lens)


@dataclass(frozen=True)
class SideResult:
    side: str
    steps: int
    sequences: int
    tokens: int  # real (non-pad) tokens of the timed steps
    padded_tokens: int  # batch tensor elements, padding included
    loss_positions: int
    seconds: float
    model_flops: float  # the FLOPs the loss requires, flops.step_flops (same count for both sides)
    peak_flops: float
    step_tokens: list[int]  # real tokens of each timed step
    step_seconds: list[float]  # wall time of each timed step

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def mfu(self) -> float:
        return flops.mfu(self.model_flops / self.seconds, self.peak_flops)

    def report(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 1), "mfu": round(self.mfu, 5)}


def summed(
    side: str, steps: Sequence[Sequence[StepCount]], marks: Sequence[float], shape: flops.ModelShape, peak: float
) -> SideResult:
    """A side's timed steps (each a list of micro-batches) and the clock marks around them, totalled."""
    if len(marks) != len(steps) + 1:
        raise ValueError(f"{side}: {len(marks)} clock marks for {len(steps)} steps")
    step_seconds = [b - a for a, b in zip(marks, marks[1:])]
    counts = [c for step in steps for c in step]
    # MFU's numerator is the model FLOPs of the loss, charged identically for both sides: the body at
    # each real token and the LM head only at loss positions. HF computes the head at every padded
    # position too, but that extra work is its choice, not work the model needs, so it is not credited.
    return SideResult(
        side=side,
        steps=len(steps),
        sequences=sum(len(c.seq_lens) for c in counts),
        tokens=sum(c.tokens for c in counts),
        padded_tokens=sum(c.padded_tokens for c in counts),
        loss_positions=sum(c.loss_positions for c in counts),
        seconds=marks[-1] - marks[0],
        model_flops=sum(flops.step_flops(shape, c.seq_lens, c.loss_positions) for c in counts),
        peak_flops=peak,
        step_tokens=[sum(c.tokens for c in step) for step in steps],
        step_seconds=step_seconds,
    )


# -- the data, as each side receives it -----------------------------------------------------------


def sft_examples(tokenized: Path, loss_on: str) -> list[LMExample]:
    path = tokenized / "train.arrow"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `gptpipe tokenize` (or `dvc repro tokenize`) first")
    return lm_examples(read_arrow(path), loss_on, ("chosen",), TurnMarkers.encoded_by(encode))


def hf_features(example: LMExample) -> dict[str, list[int]]:
    """What an HF SFT dataset row holds: the ids, and labels with -100 where the loss does not count."""
    return {"input_ids": example.ids, "labels": example.labels()}


def hf_dataset(examples: Sequence[LMExample]) -> datasets.Dataset:
    rows = [hf_features(e) for e in examples]
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "labels")})


@dataclass
class PadToLongest:
    """HF's dynamic padding (as DataCollatorForSeq2Seq(padding="longest")): ids padded with EOT,
    labels with -100, an attention mask; it also records each batch's work, in the order built."""

    counts: list[StepCount] = field(default_factory=list)
    batches: list[list[LMExample]] = field(default_factory=list)

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        input_ids = torch.full((len(features), width), EOT_ID, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (feature, n) in enumerate(zip(features, lengths, strict=True)):
            input_ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            attention_mask[row, :n] = 1
        # The model shifts labels by one: a label at position 0 is never scored.
        counted = int((labels[:, 1:] != IGNORE).sum())
        self.counts.append(StepCount(lengths, counted, width))
        self.batches.append([as_example(f) for f in features])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def as_example(feature: dict[str, list[int]]) -> LMExample:
    """hf_features undone."""
    return LMExample.from_labels(list(feature["input_ids"]), feature["labels"])


def gptpipe_count(micro_batch: Sequence[LMExample]) -> StepCount:
    lengths = [len(e) for e in micro_batch]
    return StepCount(lengths, sum(e.n_targets for e in micro_batch), max(lengths))


# -- loss parity ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityRow:
    gptpipe_loss: float  # LanguageModelling's summed loss / batch.weight
    hf_loss: float  # model(input_ids, attention_mask, labels).loss
    relative_diff: float
    grad_relative_diff: float  # max |Δ grad| over max |grad|, all parameters
    gptpipe_tokens: int
    hf_tokens: int  # attention_mask.sum()
    gptpipe_loss_positions: int
    hf_loss_positions: int  # labels[:, 1:] != -100


def loss_parity(
    gptpipe_model: PreTrainedModel, hf_model: PreTrainedModel, batches: Sequence[Sequence[LMExample]]
) -> list[ParityRow]:
    """gptpipe's objective and HF's own loss, with their gradients, on identical batches.

    The two models must hold the same weights. Eval mode only switches dropout off (so the two
    forwards are deterministic); gradients are still taken.
    """
    objective = LanguageModelling(gptpipe_model).eval()
    hf_model.eval()
    rows = []
    for examples in batches:
        batch = collate(examples)
        hf_batch = PadToLongest()
        inputs = hf_batch([hf_features(e) for e in examples])
        ours = objective(batch)[0] / batch.weight
        theirs = hf_model(**inputs).loss
        ours.backward()
        theirs.backward()
        rows.append(
            ParityRow(
                gptpipe_loss=ours.item(),
                hf_loss=theirs.item(),
                relative_diff=abs(ours.item() - theirs.item()) / abs(theirs.item()),
                grad_relative_diff=_grad_relative_diff(gptpipe_model, hf_model),
                gptpipe_tokens=batch.n_tokens,
                hf_tokens=int(inputs["attention_mask"].sum()),
                gptpipe_loss_positions=batch.weight,
                hf_loss_positions=hf_batch.counts[0].loss_positions,
            )
        )
        gptpipe_model.zero_grad(set_to_none=True)
        hf_model.zero_grad(set_to_none=True)
    return rows


def _grad_relative_diff(a: PreTrainedModel, b: PreTrainedModel) -> float:
    diffs, scale = [], []
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.grad is None or pb.grad is None:
            raise AssertionError(f"{name}: no gradient on one side")
        diffs.append((pa.grad - pb.grad).abs().max())
        scale.append(pb.grad.abs().max())
    return (torch.stack(diffs).max() / torch.stack(scale).max()).item()


# -- gptpipe's side: the real train() -------------------------------------------------------------


class ReplayPlan(StepPlan):
    """A StepPlan that hands train() given steps (HF's, so both sides train on identical batches)
    and notes when each step starts: train() asks for a step's batches first thing in the step."""

    def __init__(self, steps: Sequence[list[list[LMExample]]], cfg: LoopConfig, seed: int, device: torch.device):
        super().__init__(flatten(steps), cfg.batch_size, cfg.micro_batch_size, seed)
        self.replayed = list(steps)
        self.device = device
        self.starts: list[float] = []
        self.counts: list[list[StepCount]] = []

    def micro_batches(self, step: int) -> list[list[LMExample]]:
        self.starts.append(_now(self.device))
        micro = self.replayed[step % len(self.replayed)]
        self.counts.append([gptpipe_count(m) for m in micro])
        return micro


def flatten(steps: Sequence[list[list[LMExample]]]) -> list[LMExample]:
    return [e for step in steps for micro in step for e in micro]


def bench_config(cfg: LoopConfig, max_steps: int) -> LoopConfig:
    """The SFT config for a short run: no mid-run evaluation or checkpoint; warmup fitted into it."""
    update = {
        "max_steps": max_steps,
        "warmup_steps": min(cfg.warmup_steps, max_steps - 1),
        "eval_every": NEVER,
        "checkpoint_every": NEVER,
    }
    return type(cfg).model_validate({**cfg.model_dump(), **update})  # model_copy would not validate


def run_gptpipe(
    params: Params, steps: Sequence[list[list[LMExample]]], timed_steps: int, runtime: Runtime
) -> tuple[SideResult, dict[str, Any]]:
    """gptpipe.train.loop.train() with the LanguageModelling objective, as the sft stage runs it, on `steps`."""
    seed = params.shared.seed
    cfg = bench_config(params.train, WARMUP_STEPS + timed_steps + 1)  # +1: its start ends the last timed step
    plan = ReplayPlan(steps, cfg, seed, runtime.device)
    model = build_scratch(params.model, seed)
    shape = flops.ModelShape.from_config(model.config)
    eval_sets = {"train": eval_sample(flatten(steps), EVAL_SEQUENCES, seed)}
    with tempfile.TemporaryDirectory() as tmp:
        _, metrics = train(
            LanguageModelling(model), plan, eval_sets, cfg, runtime,
            seed=seed, checkpoint=Path(tmp) / "bench.pt", shape=shape, desc="gptpipe",
        )
    marks = plan.starts[WARMUP_STEPS : WARMUP_STEPS + timed_steps + 1]
    counts = plan.counts[WARMUP_STEPS : WARMUP_STEPS + timed_steps]
    return summed("gptpipe", counts, marks, shape, runtime.peak_flops), metrics


# -- HF's side: Trainer ---------------------------------------------------------------------------


class StepEnds(TrainerCallback):
    def __init__(self, device: torch.device):
        self.device = device
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        self.ends.append(_now(self.device))


def trainer_args(cfg: LoopConfig, seed: int, out: str, runtime: Runtime) -> TrainingArguments:
    # The schedule is gptpipe's: linear warmup, then cosine to lr * min_lr_ratio (HF's warmup ramp
    # starts at 0 where gptpipe's starts at lr/warmup: one step apart, no effect on speed).
    return TrainingArguments(
        output_dir=out,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        learning_rate=learning_rate(cfg),
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        adam_epsilon=cfg.eps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=runtime.device.type == "cpu",
        seed=seed,
    )


def run_trainer(
    params: Params, examples: Sequence[LMExample], timed_steps: int, runtime: Runtime
) -> tuple[SideResult, list[list[list[LMExample]]]]:
    """Trainer on the SFT examples; returns its figures and the steps it trained on, in order."""
    if params.train.optimizer != "adamw":
        raise UserError(f"train.optimizer: the Trainer comparison runs AdamW only, not {params.train.optimizer!r}")
    seed = params.shared.seed
    cfg = bench_config(params.train, WARMUP_STEPS + timed_steps)
    model = build_scratch(params.model, seed)
    shape = flops.ModelShape.from_config(model.config)
    collator, clock = PadToLongest(), StepEnds(runtime.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model=model,
            args=trainer_args(cfg, seed, tmp, runtime),
            train_dataset=hf_dataset(examples),
            data_collator=collator,
            callbacks=[clock],
        )
        trainer.train()
    # The collator sees the batches in training order (the loader may build one ahead, never out of
    # order), so its records cut into steps of grad_accum_steps micro-batches are the trained steps.
    per_step = cfg.grad_accum_steps
    steps = [range(s * per_step, (s + 1) * per_step) for s in range(cfg.max_steps)]
    counts = [[collator.counts[i] for i in step] for step in steps]
    trained = [[collator.batches[i] for i in step] for step in steps]
    marks = clock.ends[WARMUP_STEPS - 1 : WARMUP_STEPS + timed_steps]  # the end of step 2 starts step 3
    timed = counts[WARMUP_STEPS : WARMUP_STEPS + timed_steps]
    return summed("hf-trainer", timed, marks, shape, runtime.peak_flops), trained


# -- the comparison -------------------------------------------------------------------------------


def compare_with_trainer(params: Params, tokenized: Path, steps: int) -> dict[str, Any]:
    """Loss parity, then each side's timed run; prints a table and returns its figures."""
    if steps < 1:
        raise UserError(f"--steps: {steps}; give at least 1 timed step")
    runtime = make_runtime(params.shared)
    if runtime.autocast_dtype is not None:
        raise UserError("shared.dtype: the Trainer comparison is fp32 only; set shared.dtype=float32")
    examples = sft_examples(tokenized, loss_on_for_data(params.train.loss_on, DATA_METRICS))
    parity = loss_parity(*_twin_models(params), _parity_batches(params, examples))
    theirs, trained = run_trainer(params, examples, steps, runtime)
    ours, loop_metrics = run_gptpipe(params, trained, steps, runtime)
    result = {
        "machine": {**_machine(runtime), "matmul_flops": matmul_ceiling(runtime.device)},
        "model": params.model.model_dump(include={"n_layer", "n_embd", "n_head", "n_positions"}),
        "batch_size": params.train.batch_size,
        "micro_batch_size": params.train.micro_batch_size,
        "warmup_steps_untimed": WARMUP_STEPS,
        "gptpipe": ours.report(),
        "hf": theirs.report(),
        "ratio": round(ours.tokens_per_s / theirs.tokens_per_s, 3),
        "same_step_tokens": ours.step_tokens == theirs.step_tokens,
        # The same batch step by step, so a per-step ratio is meaningful; its median shrugs off a
        # step slowed by another process on a shared machine, which the total does not.
        "median_step_ratio": round(statistics.median(
            h / g for g, h in zip(ours.step_seconds, theirs.step_seconds, strict=True)
        ), 3),
        # train()'s own figure: its timer covers every step, the warm-up ones included.
        "gptpipe_loop_timer_tokens_per_s": loop_metrics["tokens_per_s"],
        "loss_parity": {
            "batches": len(parity),
            "max_relative_diff": max(r.relative_diff for r in parity),
            "max_grad_relative_diff": max(r.grad_relative_diff for r in parity),
            "same_tokens": all(r.gptpipe_tokens == r.hf_tokens for r in parity),
            "same_loss_positions": all(r.gptpipe_loss_positions == r.hf_loss_positions for r in parity),
            "rows": [asdict(r) for r in parity],
        },
    }
    print(format_table(result))
    return result


def _twin_models(params: Params) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Two separately built models, as each side gets: the seed alone must make them equal."""
    a, b = (build_scratch(params.model, params.shared.seed) for _ in range(2))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if not torch.equal(pa, pb):
            raise AssertionError(f"{name}: build_scratch gave different weights for the same seed")
    return a, b


def _parity_batches(params: Params, examples: Sequence[LMExample]) -> list[list[LMExample]]:
    plan = StepPlan(examples, params.train.batch_size, params.train.micro_batch_size, params.shared.seed)
    return [plan.micro_batches(step)[0] for step in range(min(PARITY_BATCHES, plan.steps_per_epoch))]


def _machine(runtime: Runtime) -> dict[str, Any]:
    return {
        "device": str(runtime.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_flops": runtime.peak_flops,
    }


def matmul_ceiling(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one square fp32 matrix product, the best of `repeats`: what this device's BLAS
    reaches at its most favourable shape. The datasheet peak MFU is quoted against can be far above
    it (2 AVX2 vCPUs: 0.2 TFLOP/s nominal, ~65 GFLOP/s measured in MKL's sgemm), so the bench gives
    the share of this figure too."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    a @ b  # warm-up: thread pool, cuBLAS handle
    best = float("inf")
    for _ in range(repeats):
        start = _now(device)
        a @ b
        best = min(best, _now(device) - start)
    return 2 * n**3 / best


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous; time the work, not its launch
    return time.perf_counter()


def format_table(result: dict[str, Any]) -> str:
    m, model, parity = result["machine"], result["model"], result["loss_parity"]
    lines = [
        f"machine: {m['device']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, peak {m['peak_flops']:.3g} FLOP/s (datasheet), "
        f"{m['matmul_flops']:.3g} FLOP/s measured (a 2048^3 fp32 matmul)",
        f"model: GPT-2 {model['n_layer']}x{model['n_embd']} ({model['n_head']} heads), "
        f"batch {result['batch_size']} (micro {result['micro_batch_size']}), "
        f"{result['warmup_steps_untimed']} untimed warm-up steps per side",
        f"{'side':<11} {'steps':>5} {'tokens':>8} {'pad %':>6} {'seconds':>8} {'tokens/s':>9} {'MFU %':>6} "
        f"{'of matmul %':>11}",
    ]
    for key in ("gptpipe", "hf"):
        r = result[key]
        pad = 100 * (1 - r["tokens"] / r["padded_tokens"])
        lines.append(
            f"{r['side']:<11} {r['steps']:>5} {r['tokens']:>8} {pad:>6.1f} {r['seconds']:>8.2f} "
            f"{r['tokens_per_s']:>9.0f} {100 * r['mfu']:>6.2f} "
            f"{100 * r['model_flops'] / r['seconds'] / m['matmul_flops']:>11.1f}"
        )
    lines += [
        f"ratio gptpipe/HF tokens/s: {result['ratio']:.2f}x, median per-step ratio "
        f"{result['median_step_ratio']:.2f}x "
        f"(identical batches: same real tokens in every timed step {result['same_step_tokens']})",
        f"loss parity on {parity['batches']} identical batches: max relative diff "
        f"{parity['max_relative_diff']:.2e} (gradients {parity['max_grad_relative_diff']:.2e}); "
        f"same tokens {parity['same_tokens']}, same loss positions {parity['same_loss_positions']}",
    ]
    return "\n".join(lines)
