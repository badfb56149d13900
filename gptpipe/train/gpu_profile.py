"""The full preset's training and generation code on a GPU, measured: `gptpipe bench gpu`.

What only a GPU shows, on GPT-2-shaped models with scratch weights (speed and memory do not depend on
the weights; the machines here reach no hub) and a tokenized HH split:

- throughput: SFT and DPO steps through the real `train()` loop, eager and compiled, bf16 autocast
  (the full preset) and fp32 (TF32), as tokens/s and MFU against the card's dense peak, with the
  number of graphs dynamo compiled (one per batch shape would mean recompiling every step);
- memory: peak `max_memory_allocated` of a training step per optimizer, per LoRA rank and per GPT-2
  size, beside the tensors the theory counts (parameters, gradients, optimizer state) and what is
  left for activations, per token and layer: the figures preflight's memory plan rests on;
- generation: gptpipe's decode loop against transformers' `generate`, greedy, on the same prompts.

Timing follows bench.py: wall clock between the starts of steps (train() asks its plan for a step's
batches first thing in the step), synchronised with the device, after untimed warm-up steps.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from gptpipe.config import LoopConfig, LoraConfig, ModelConfig, SharedConfig
from gptpipe.data.batches import LMExample, StepPlan, lm_examples, pair_examples
from gptpipe.data.tokenizer import EOT_ID, read_arrow
from gptpipe.evaluation.generate import Sampling, generate
from gptpipe.models.gpt2 import build_scratch
from gptpipe.models.lora import add_lora
from gptpipe.train import flops
from gptpipe.train.dpo import DirectPreference, cache_reference
from gptpipe.train.loop import train
from gptpipe.train.objectives import LanguageModelling
from gptpipe.train.runtime import Runtime, make_runtime

NEVER = 10**9  # eval_every / checkpoint_every beyond any profile run
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "galore")
LORA_RANKS = (1, 8, 64)


def model_config(size: str) -> ModelConfig:
    """A GPT-2 size by name, or "LxW" (layers x width, heads of 16: the tests' tiny models); with a
    "llama:" prefix, model.arch llama at that shape (its FFN width by the 2/3 rule, one K/V head per
    query head)."""
    if size.startswith("llama:"):
        return model_config(size.removeprefix("llama:")).model_copy(update={"arch": "llama"})
    if size in flops.GPT2_SHAPES:
        shape = flops.GPT2_SHAPES[size]
        n_layer, n_embd, n_head = shape.n_layer, shape.n_embd, shape.n_head
    else:
        n_layer, n_embd = (int(v) for v in size.split("x"))
        n_head = max(1, n_embd // 16)
    return ModelConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=1024, dropout=0.0)


class TimedPlan(StepPlan):
    """A StepPlan that notes when each step starts, and the step it handed out (counted afterwards,
    outside the timed steps)."""

    def __init__(self, examples, cfg: LoopConfig, seed: int, device: torch.device):
        super().__init__(examples, cfg.batch_size, cfg.micro_batch_size, seed)
        self.device = device
        self.starts: list[float] = []
        self.handed: list[list[list]] = []

    def micro_batches(self, step: int) -> list[list]:
        self.starts.append(_now(self.device))
        micro = super().micro_batches(step)
        self.handed.append(micro)
        return micro

    def work(self, steps: range, collate: Callable, shape: flops.ModelShape) -> tuple[int, float]:
        """(real tokens, model FLOPs) of the given steps, counted as train() counts them."""
        batches = [collate(m) for step in steps for m in self.handed[step]]
        return (sum(b.n_tokens for b in batches),
                sum(flops.step_flops(shape, b.seq_lens, b.head_positions) for b in batches))


def loop_config(batch: int, steps: int, optimizer: str = "adamw", checkpointing: bool = False) -> LoopConfig:
    return LoopConfig(
        optimizer=optimizer, lr=1e-5, weight_decay=0.0, max_steps=steps, batch_size=batch, micro_batch_size=batch,
        warmup_steps=1, eval_every=NEVER, checkpoint_every=NEVER, eval_samples=1,
        activation_checkpointing=checkpointing,
    )


# -- throughput -------------------------------------------------------------------------------------


def throughput(
    kind: str, tokenized: Path, shared: SharedConfig, size: str, batch: int, steps: int, warmup: int
) -> dict[str, Any]:
    """One SFT or DPO run of warmup + steps steps; figures over the timed steps only."""
    runtime = make_runtime(shared)
    torch._dynamo.reset()
    model = build_scratch(model_config(size), shared.seed)
    shape = flops.ModelShape.from_config(model.config)
    cfg = loop_config(batch, warmup + steps + 1)  # +1: its start ends the last timed step
    table = read_arrow(tokenized / "train.arrow")
    if kind == "sft":
        objective, examples = LanguageModelling(model), lm_examples(table, "response", ("chosen",))
    else:
        plan = StepPlan(pair_examples(table), batch, batch, shared.seed)
        plan, _ = cache_reference(model, plan, {}, cfg.max_steps, batch, runtime)
        objective, examples = DirectPreference(model, beta=0.1), plan.examples
    plan = TimedPlan(examples, cfg, shared.seed, runtime.device)
    graphs_before = _graphs()
    _reset_memory(runtime)
    train_plan(objective, plan, cfg, runtime, shared.seed, shape)
    seconds = plan.starts[warmup + steps] - plan.starts[warmup]
    tokens, done = plan.work(range(warmup, warmup + steps), objective.collate, shape)
    row = {
        "kind": kind, "size": size, "dtype": shared.dtype, "compile": shared.compile, "batch": batch,
        "timed_steps": steps, "tokens_per_s": round(tokens / seconds),
        "mfu": round(done / seconds / runtime.peak_flops, 4), "peak_flops": runtime.peak_flops,
        "ms_per_step": round(1000 * seconds / steps, 2), "peak_bytes": _peak_bytes(runtime),
        "compiled_graphs": _graphs() - graphs_before,
        **_step_spread(plan, range(warmup, warmup + steps), objective.collate),
    }
    _free(objective, model)
    return row


def _step_spread(plan: TimedPlan, steps: range, collate: Callable) -> dict[str, Any]:
    """The median step and the slowest three with their batches' widths: a mean over steps that
    hides one compile (a new kernel for a shape first seen late) reads as a slow steady state."""
    ms = {step: 1000 * (plan.starts[step + 1] - plan.starts[step]) for step in steps}
    slowest = sorted(ms, key=ms.get, reverse=True)[:3]
    return {
        "median_ms_per_step": round(statistics.median(ms.values()), 2),
        "slowest_steps": [{"step": step, "ms": round(ms[step], 1),
                           "widths": [collate(m).input_ids.shape[1] for m in plan.handed[step]]} for step in slowest],
    }


class ProfiledPlan(TimedPlan):
    """A TimedPlan that runs torch.profiler over steps [first, last)."""

    def __init__(self, *args, first: int, last: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.first, self.last = first, last
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)

    def micro_batches(self, step: int) -> list[list]:
        if step == self.first:
            self.profiler.__enter__()
        if step == self.last:
            _now(self.device)
            self.profiler.__exit__(None, None, None)
        return super().micro_batches(step)


def op_profile(tokenized: Path, shared: SharedConfig, size: str, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Where an SFT step's time goes: torch.profiler's top operators by device and by host time."""
    runtime = make_runtime(shared)
    model = build_scratch(model_config(size), shared.seed)
    shape = flops.ModelShape.from_config(model.config)
    cfg = loop_config(batch, warmup + steps + 1)
    examples = lm_examples(read_arrow(tokenized / "train.arrow"), "response", ("chosen",))
    plan = ProfiledPlan(examples, cfg, shared.seed, runtime.device, first=warmup, last=warmup + steps)
    train_plan(LanguageModelling(model), plan, cfg, runtime, shared.seed, shape)
    averages = plan.profiler.key_averages()
    device_key = "self_device_time_total" if runtime.device.type == "cuda" else "self_cpu_time_total"
    for key in (device_key, "self_cpu_time_total"):
        print(f"-- {shared.dtype}, top operators by {key} over {steps} steps --")
        print(averages.table(sort_by=key, row_limit=14, max_name_column_width=60))
    top = sorted(averages, key=lambda e: getattr(e, device_key), reverse=True)[:8]
    _free(model)
    return {
        "size": size, "dtype": shared.dtype, "batch": batch, "steps": steps,
        "top_device_ms": {e.key: round(getattr(e, device_key) / 1e3 / steps, 3) for e in top},
    }


# -- memory -----------------------------------------------------------------------------------------


def fixed_examples(n: int, width: int, seed: int) -> list[LMExample]:
    """n sequences of exactly `width` tokens, the second half counted: the same activations every step."""
    g = torch.Generator().manual_seed(seed)
    return [LMExample(torch.randint(0, EOT_ID, (width,), generator=g).tolist(), width // 2) for _ in range(n)]


def memory_row(
    shared: SharedConfig, size: str, optimizer: str = "adamw", lora_rank: int = 0, batch: int = 8, width: int = 512,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """Two steps of SFT on fixed-shape batches; the peak against the tensors the theory counts."""
    runtime = make_runtime(shared)
    with torch.device(runtime.device):  # built on the card: a 1.5B init on the CPU takes a minute
        model = build_scratch(model_config(size), shared.seed)
    add_lora(model, LoraConfig(rank=lora_rank), shared.seed)
    shape = flops.ModelShape.from_config(model.config)
    cfg = loop_config(batch, 2, optimizer, checkpointing)
    plan = StepPlan(fixed_examples(batch, width, shared.seed), batch, batch, shared.seed)
    _reset_memory(runtime)
    metrics = train_plan(LanguageModelling(model), plan, cfg, runtime, shared.seed, shape)
    memory = metrics["memory"]
    peak = _peak_bytes(runtime)
    static = memory["parameters_bytes"] + memory["gradients_bytes"] + memory["optimizer_state_bytes"]
    row = {
        "size": size, "optimizer": optimizer, "lora_rank": lora_rank, "checkpointing": checkpointing,
        "dtype": shared.dtype, "tokens": batch * width, "trainable": metrics["trainable_parameters"],
        **{k: memory[k] for k in ("parameters_bytes", "gradients_bytes", "optimizer_state_bytes")},
        "optimizer_state_bytes_theory": memory["optimizer_state_bytes_theory"],
        "peak_bytes": peak,
        # Gradients and activations do not peak together (activations are freed as gradients
        # appear), so what the peak holds beyond parameters, gradients and state bounds activations
        # from below.
        "beyond_static_bytes": peak - static,
        "beyond_static_per_token_layer": round((peak - static) / (batch * width * shape.n_layer)),
    }
    _free(model)
    return row


# -- generation -------------------------------------------------------------------------------------


def generation(tokenized: Path, shared: SharedConfig, size: str, n_prompts: int, batch: int, new_tokens: int) -> dict[str, Any]:
    """gptpipe's decode loop and transformers' generate, greedy, same model and prompts (fp32/TF32,
    as the generate stage runs): new tokens per second of each."""
    runtime = make_runtime(shared)
    model = build_scratch(model_config(size), shared.seed).to(runtime.device).eval()
    prompts = read_arrow(tokenized / "test.arrow").column("prompt_ids").to_pylist()[:n_prompts]
    sampling = Sampling(max_new_tokens=new_tokens, temperature=0.0)
    generate(model, prompts[:batch], sampling, batch_size=batch)  # warm-up: kernels, allocator pools
    start = _now(runtime.device)
    ours = generate(model, prompts, sampling, batch_size=batch)
    ours_s = _now(runtime.device) - start
    hf_tokens, hf_s = _hf_generate(model, prompts, batch, new_tokens, runtime.device)
    row = {
        "size": size, "prompts": len(prompts), "batch": batch, "max_new_tokens": new_tokens,
        "gptpipe_tokens": ours.new_tokens, "gptpipe_tokens_per_s": round(ours.new_tokens / ours_s),
        "hf_tokens": hf_tokens, "hf_tokens_per_s": round(hf_tokens / hf_s),
    }
    row["ratio"] = round(row["gptpipe_tokens_per_s"] / row["hf_tokens_per_s"], 2)
    _free(model)
    return row


def _hf_generate(model, prompts: Sequence[list[int]], batch: int, new_tokens: int, device: torch.device) -> tuple[int, float]:
    """model.generate on left-padded batches, longest prompts first as gptpipe batches them."""
    order = sorted(prompts, key=len, reverse=True)
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    _hf_batch(model, batches[0], new_tokens, device)  # warm-up
    start, made = _now(device), 0
    for rows in batches:
        made += _hf_batch(model, rows, new_tokens, device)
    return made, _now(device) - start


def _hf_batch(model, rows: list[list[int]], new_tokens: int, device: torch.device) -> int:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[EOT_ID] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
            pad_token_id=EOT_ID, eos_token_id=EOT_ID,
        )
    new = out[:, width:]
    # Each row's tokens up to and including its first end-of-text (what gptpipe counts too).
    ended = (new == EOT_ID).int().cumsum(dim=1)
    return int(((ended == 0) | ((ended == 1) & (new == EOT_ID))).sum())


# -- shared helpers ---------------------------------------------------------------------------------


def train_plan(objective, plan, cfg: LoopConfig, runtime: Runtime, seed: int, shape) -> dict[str, Any]:
    """The real training loop over `plan` (no evaluations, a throwaway checkpoint); its metrics.
    The benches time it through the plan (TimedPlan), not by a loop of their own."""
    with tempfile.TemporaryDirectory() as tmp:
        _, metrics = train(objective, plan, {}, cfg, runtime, seed=seed, checkpoint=Path(tmp) / "p.pt", shape=shape, desc="profile")
    return metrics


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_memory(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(runtime.device)


def _peak_bytes(runtime: Runtime) -> int:
    return torch.cuda.max_memory_allocated(runtime.device) if runtime.device.type == "cuda" else 0


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _free(*objects) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the whole profile ------------------------------------------------------------------------------


def plan(tokenized: Path, quick: bool) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """The profile's parts, cheapest and most wanted first (a run cut short keeps what it measured).
    quick: tiny shapes and a few steps, for a CPU check of the code path."""
    gpu = not quick
    size, big = ("gpt2", ("gpt2-medium", "gpt2-large", "gpt2-xl")) if gpu else ("1x32", ("2x32",))
    batch, steps, warmup = (16, 30, 8) if gpu else (4, 2, 1)
    width = 512 if gpu else 64
    bf16 = SharedConfig(device="auto", dtype="bfloat16" if gpu else "float32")
    fp32 = SharedConfig(device="auto", dtype="float32")
    compiled = bf16.model_copy(update={"compile": True})
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = []

    def add(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        parts.append((name, fn))

    for name, shared in (("fp32", fp32), ("bf16", bf16)):
        add(f"ops {name}", lambda c=shared: op_profile(tokenized, c, size, batch, 3, min(warmup, 5)))
    add("throughput sft fp32", lambda: throughput("sft", tokenized, fp32, size, batch, steps, warmup))
    for kind in ("sft", "dpo"):
        add(f"throughput {kind} eager", lambda k=kind: throughput(k, tokenized, bf16, size, batch, steps, warmup))
    for optimizer in OPTIMIZERS:
        add(f"memory {optimizer}", lambda o=optimizer: memory_row(bf16, size, o, width=width))
    for rank in LORA_RANKS:
        add(f"memory lora {rank}", lambda r=rank: memory_row(bf16, size, "adamw", r, width=width))
    for name in big:
        add(f"memory {name}", lambda n=name: memory_row(bf16, n, "adamw", batch=4, width=width))
    add(f"memory {big[-1]} checkpointing", lambda: memory_row(bf16, big[-1], "adamw", batch=4, width=width, checkpointing=True))
    add("generation", lambda: generation(tokenized, fp32, size, 256 if gpu else 6, 64 if gpu else 3, 128 if gpu else 5))
    for kind in ("sft", "dpo"):
        add(f"throughput {kind} compiled", lambda k=kind: throughput(k, tokenized, compiled, size, batch, steps, warmup))
    # Past the preset's batch: how far MFU climbs when each step holds more tokens (16 HH sequences
    # are ~2,800 tokens, too few to fill the card), and the llama variant at GPT-2's shape.
    for many in (64,) if gpu else (8,):
        for name, shared in (("eager", bf16), ("compiled", compiled)):
            add(f"throughput sft {name} batch {many}", lambda c=shared, b=many: throughput("sft", tokenized, c, size, b, steps, warmup))
    for name, shared in (("eager", bf16), ("compiled", compiled)):
        add(f"throughput sft {name} llama", lambda c=shared: throughput("sft", tokenized, c, f"llama:{size}", batch, steps, warmup))
    if gpu:
        add("throughput sft compiled gpt2-medium", lambda: throughput("sft", tokenized, compiled, "gpt2-medium", batch, steps, warmup))
    return parts


def run_profile(tokenized: Path, out: Path, quick: bool = False, only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every part in turn (or those whose names start with one of `only`), each row appended to
    `out` (JSON lines) as soon as it is measured."""
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    for name, part in plan(tokenized, quick):
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        started = time.perf_counter()
        try:
            row = {"part": name, **part()}
        except Exception as err:  # noqa: BLE001 (a part that fails, out of memory say, is a finding; the rest still run)
            traceback.print_exc()
            row = {"part": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            _free()
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(format_tables(rows, _card()))
    return rows


def _card() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    free, total = torch.cuda.mem_get_info()
    return f"{torch.cuda.get_device_name()}, {total / 2**30:.0f} GiB, torch {torch.__version__}"


def format_tables(rows: list[dict[str, Any]], card: str) -> str:
    gib = 2**30
    lines = [f"card: {card}", "", "| run | model | precision | compile | tokens/s | MFU | ms/step | median ms/step | slowest step | peak GiB | graphs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["part"].startswith("throughput") and "error" not in r:
            lines.append(
                f"| {r['part'].removeprefix('throughput ')} b{r['batch']} | {r['size']} | {r['dtype']} | {r['compile']} | {r['tokens_per_s']:,} | "
                f"{100 * r['mfu']:.1f}% | {r['ms_per_step']} | {r['median_ms_per_step']} | "
                f"{r['slowest_steps'][0]['ms']:,.0f} ms, step {r['slowest_steps'][0]['step']}, widths {r['slowest_steps'][0]['widths']} | "
                f"{r['peak_bytes'] / gib:.2f} | {r['compiled_graphs']} |"
            )
    lines += ["", "| memory run | trainable | params GiB | grads GiB | state GiB (theory) | peak GiB | beyond static per token·layer |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["part"].startswith("memory") and "error" not in r:
            lines.append(
                f"| {r['size']} {r['optimizer']} r{r['lora_rank']}{' ckpt' if r['checkpointing'] else ''} {r['tokens']} tok | "
                f"{r['trainable']:,} | {r['parameters_bytes'] / gib:.2f} | {r['gradients_bytes'] / gib:.2f} | "
                f"{r['optimizer_state_bytes'] / gib:.3f} ({r['optimizer_state_bytes_theory'] / gib:.3f}) | "
                f"{r['peak_bytes'] / gib:.2f} | {r['beyond_static_per_token_layer'] / 1e3:.1f} kB |"
            )
    for r in rows:
        if "error" in r:
            lines.append(f"{r['part']}: {r['error']}")
        if r["part"] == "generation":
            lines.append(
                f"generation {r['size']}, {r['prompts']} prompts, batch {r['batch']}, {r['max_new_tokens']} new: gptpipe "
                f"{r['gptpipe_tokens_per_s']:,} tok/s ({r['gptpipe_tokens']} tokens), transformers generate "
                f"{r['hf_tokens_per_s']:,} tok/s ({r['hf_tokens']}), ratio {r['ratio']}"
            )
    return "\n".join(lines)
