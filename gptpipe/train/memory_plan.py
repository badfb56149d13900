"""How much GPU memory each training stage needs, and the micro-batch or checkpointing that fits it.

The model, measured on an H200 with `gptpipe bench gpu` (2026-11-26; GPT-2 124M…1.5B with scratch
weights, SFT on fixed 512-token sequences, AdamW, bf16 autocast, eager, PyTorch SDPA):

    peak = parameters + optimizer state + bf16 copies of the trainable weights (autocast's cache,
           2 bytes each) + the LM head's fp32 gradient buffer (gptpipe.train.lm_head)
         + tokens x layers x (87 * n_embd + 2,900) bytes of activations

The activation term fits the four sizes within 1.2% (70.0 / 91.3 / 114.3 / 142.7 kB per token and
layer measured, against 69.7 / 92.2 / 114.5 / 142.1). With activation checkpointing the peak moves to
the end of the backward pass: gradients + 21 * n_embd bytes per token and layer (gpt2-xl, measured).
fp32 (no autocast) holds 1.32x bf16's activations and no copies (GPT-2 124M on real HH batches).
Gradients are not in the bf16 peak: they are freed after every step (zero_grad(set_to_none)) and
appear as the activations are released. Parameters, gradients and optimizer state are counted
exactly from the model built on the meta device with the real code (LoRA adapters included).

`plan` tries the configured micro-batch, then smaller ones (the same batch, more accumulation), then
the same with activation checkpointing, and otherwise names what would fit: LoRA, GaLore, FSDP over
several cards, a larger card. Under FSDP each process holds 1/processes of the weights, gradients and
optimizer state, plus the weights it has gathered (the root's, and two blocks').
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
from transformers import AutoModelForCausalLM

from gptpipe.config import LoopConfig, LoraConfig, ModelConfig, Params, is_scratch_shape
from gptpipe.data.tokenizer import EOT_ID, GPT2_VOCAB_SIZE
from gptpipe.errors import UserError
from gptpipe.models.architecture import blocks, ffn_width, scratch_config
from gptpipe.models.lora import add_lora
from gptpipe.train.flops import ModelShape
from gptpipe.train.optim import hidden_matrices, theoretical_state_bytes

ACTIVATION_BYTES_PER_WIDTH = 87  # per token, layer and unit of n_embd (bf16 autocast)
ACTIVATION_BYTES_BASE = 2_900
CHECKPOINTED_BYTES_PER_WIDTH = 21
FP32_ACTIVATION_FACTOR = 1.32
# What a run may plan to use: the allocator's fragmentation, the CUDA context and cuBLAS workspaces
# take the rest.
USABLE_FRACTION = 0.9
GB = 1e9


class MemoryPlanError(UserError):
    """A stage that fits the card in no setting tried; the message names what would."""


# Triton, which torch.compile generates its GPU kernels with, supports Volta (7.0) and newer.
TRITON_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Card:
    name: str
    total_bytes: int
    bf16: bool  # native bf16 (compute capability 8.0 and up); older cards emulate it, slowly
    count: int = 1  # cards of this kind in the machine (what FSDP could shard over)
    capability: tuple[int, int] = (8, 0)  # CUDA compute capability (P100 6.0, T4 7.5, A100 8.0, H100 9.0)

    @property
    def usable_bytes(self) -> int:
        return int(self.total_bytes * USABLE_FRACTION)

    @property
    def triton(self) -> bool:
        """Whether torch.compile's code generator (Triton) runs here: compute capability 7.0 and up."""
        return self.capability >= TRITON_CAPABILITY

    @classmethod
    def current(cls) -> Card | None:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return cls(props.name, props.total_memory, props.major >= 8, torch.cuda.device_count(), (props.major, props.minor))


@dataclass(frozen=True)
class Job:
    """One training run of a stage: its model, loop settings and batch geometry."""

    stage: str  # the params section that sets it: train, dpo, reward, scaling
    label: str  # the model, as the user names it (gpt2-xl, 12x768, a folder)
    shape: ModelShape
    loop: LoopConfig
    lora: LoraConfig
    dtype: str
    max_length: int  # tokens per sequence, worst case
    sequences_per_example: int = 1  # 2 for preference pairs (chosen and rejected in one pass)
    frozen_copy: bool = False  # DPO's live reference without LoRA: a second, frozen model
    shards: int = 1  # FSDP processes holding a slice each of weights, gradients and optimizer state


@dataclass(frozen=True)
class Need:
    job: Job
    micro_batch_size: int
    checkpointing: bool
    parts: dict[str, int]

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())


def jobs(params: Params) -> list[Job]:
    """The training runs `dvc repro` will make with these params, each at its worst-case length."""
    from gptpipe.scaling.runs import run_config, scaling_shape

    m, dtype, length = params.model, params.shared.dtype, params.tokenize.max_length
    # A trained tokenizer's vocabulary is at most tokenize.vocab_size (hub weights keep GPT-2's).
    vocab = params.tokenize.vocab_size if params.tokenize.tokenizer == "trained" else GPT2_VOCAB_SIZE
    if m.init == "scratch":
        shape = ModelShape(m.n_layer, m.n_embd, m.n_head, vocab, n_positions=m.n_positions, arch=m.arch,
                           n_kv_head=m.n_kv_head, ffn_hidden=ffn_width(m) if m.arch == "llama" else None)
        label = f"{m.n_layer}x{m.n_embd}" + ("" if m.arch == "gpt2" else f" {m.arch}")
    else:
        label, shape = m.name, scaling_shape(m.name, params.scaling.head_dim)
    shards = params.shared.processes if params.shared.strategy == "fsdp" else 1  # the distributed stages
    found = []
    if m.init == "scratch":
        found.append(Job("base", label, shape, params.base, LoraConfig(), dtype, length, shards=shards))
    found.append(Job("train", label, shape, params.train, params.train.lora, dtype, length, shards=shards))
    if params.reward.backend == "trained":
        found.append(Job("reward", label, shape, params.reward, LoraConfig(), dtype, length, 2, shards=shards))
    dpo = params.dpo
    live_copy = dpo.reference == "live" and not dpo.lora.rank
    found.append(Job("dpo", label, shape, dpo, dpo.lora, dtype, length, 2, live_copy, shards=shards))
    for name in params.scaling.models:
        sweep = run_config(params.scaling, 1)
        sized = scaling_shape(name, params.scaling.head_dim, m if is_scratch_shape(name) else None)
        sized = replace(sized, vocab_size=vocab) if is_scratch_shape(name) else sized
        found.append(Job("scaling", name, sized, sweep, LoraConfig(), dtype, length))
    return found


def model_bytes(job: Job) -> dict[str, int]:
    """Parameters, gradients, optimizer state and bf16 copies, counted on the model built on meta."""
    params, trainable, block, hidden = _meta_parameters(job.shape, job.lora.model_dump_json())
    n_all, n_trainable = sum(p.numel() for p in params), sum(p.numel() for p in trainable)
    copies = 2 if job.frozen_copy else 1
    parts = {
        "parameters": 4 * n_all * copies // job.shards,  # fp32 master weights
        "gradients": 4 * n_trainable // job.shards,
        "optimizer_state": theoretical_state_bytes(job.loop, trainable, hidden=hidden) // job.shards,
        # Autocast's bf16 copy of every weight a matmul reads, kept for the backward pass: cached for
        # trainable weights, saved by autograd for frozen ones (LoRA: measured 2% under this).
        "bf16_copies": 2 * n_all if job.dtype != "float32" else 0,  # bf16 or fp16: 2 bytes
        # The fused LM head keeps dW in fp32 through the forward pass when the head trains.
        "lm_head_buffer": 4 * job.shape.vocab_size * job.shape.n_embd if not job.lora.rank else 0,
    }
    if job.shards > 1:
        # FSDP gathers the root's weights (embeddings, the tied head) for the whole step, and a block's
        # while it runs, the next one's prefetched beside it.
        root = n_all - job.shape.n_layer * block
        parts["gathered_weights"] = 4 * (root + 2 * block) * copies
    return parts


@functools.lru_cache(maxsize=64)
def _meta_parameters(shape: ModelShape, lora_json: str) -> tuple[list, list, int, list]:
    """The model's parameters on the meta device (real code, no memory), its trainable ones, one
    block's parameter count and its hidden matrices (Muon's). Cached: plans try many settings."""
    config = scratch_config(ModelConfig(
        arch=shape.arch, n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head,
        n_kv_head=shape.n_kv_head, ffn_hidden=shape.ffn_hidden, n_positions=shape.n_positions,
    ), EOT_ID, shape.vocab_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        add_lora(model, LoraConfig.model_validate_json(lora_json), 0)
    params = list(model.parameters())
    block = sum(p.numel() for p in blocks(model.base_model)[0].parameters())
    return params, [p for p in params if p.requires_grad], block, hidden_matrices(model)


def need(job: Job, micro_batch_size: int, checkpointing: bool) -> Need:
    parts = model_bytes(job)
    tokens = micro_batch_size * job.sequences_per_example * job.max_length
    d, layers = job.shape.n_embd, job.shape.n_layer
    if checkpointing:
        parts["activations"] = tokens * layers * CHECKPOINTED_BYTES_PER_WIDTH * d
    else:
        parts["activations"] = tokens * layers * (ACTIVATION_BYTES_PER_WIDTH * d + ACTIVATION_BYTES_BASE)
        parts["gradients"] = 0  # not held at the peak (see the module's docstring)
    if job.dtype == "float32":
        parts["activations"] = int(parts["activations"] * FP32_ACTIVATION_FACTOR)
    return Need(job, micro_batch_size, checkpointing, parts)


def plan(job: Job, card: Card) -> Need:
    """The configured micro-batch if it fits, else the largest that does (then with checkpointing)."""
    configured = need(job, job.loop.micro_batch_size, job.loop.activation_checkpointing)
    if configured.bytes <= card.usable_bytes:
        return configured
    # Smaller micro-batches first (the same compute, less parallel), then checkpointing (a third more).
    for checkpointing in sorted({job.loop.activation_checkpointing, True}):
        for micro in _divisors(job.loop.batch_size, job.loop.micro_batch_size):
            candidate = need(job, micro, checkpointing)
            if candidate.bytes <= card.usable_bytes:
                return candidate
    raise MemoryPlanError(_no_fit(job, card, configured))


def fitted(job: Job, card: Card | None) -> LoopConfig:
    """The job's loop with the planned micro-batch and checkpointing on `card` (as set on a CPU)."""
    if card is None:
        return job.loop
    chosen = plan(job, card)
    update = {"micro_batch_size": chosen.micro_batch_size, "activation_checkpointing": chosen.checkpointing}
    return job.loop.model_copy(update=update)


def advice(chosen: Need, card: Card) -> str | None:
    """One line telling the user which settings make the job fit, or None when it fits as set."""
    job = chosen.job
    if (chosen.micro_batch_size, chosen.checkpointing) == (job.loop.micro_batch_size, job.loop.activation_checkpointing):
        return None
    settings = f"{job.stage}.micro_batch_size={chosen.micro_batch_size}"
    if chosen.checkpointing and not job.loop.activation_checkpointing:
        settings += f" {job.stage}.activation_checkpointing=true"
    configured = need(job, job.loop.micro_batch_size, job.loop.activation_checkpointing)
    return (
        f"{job.stage}: {_what(job)} needs {configured.bytes / GB:.1f} GB at micro_batch_size "
        f"{job.loop.micro_batch_size} x {job.max_length} tokens; {card.name} has {card.usable_bytes / GB:.1f} GB "
        f"usable; set {settings} ({chosen.bytes / GB:.1f} GB, same batch_size {job.loop.batch_size})"
    )


def _no_fit(job: Job, card: Card, configured: Need) -> str:
    smallest = need(job, 1, True)
    options = [f"{o} ({trial.bytes / GB:.1f} GB at micro-batch 1, checkpointed)" for o, trial in _lighter(job) if trial.bytes <= card.usable_bytes]
    if job.stage == "scaling":
        options.append(f"{job.label} dropped from scaling.models")
    elif job.shards == 1 and (cards := _cards_to_shard_over(job, card)):
        sharded = need(replace(job, shards=cards), 1, True)
        options.append(f"shared.strategy=fsdp shared.processes={cards} on {cards} such cards "
                       f"({sharded.bytes / GB:.1f} GB each at micro-batch 1, checkpointed)")
    options.append(f"a card with {smallest.bytes / USABLE_FRACTION / GB:.0f} GB or more")
    return (
        f"{job.stage}: {_what(job)} needs {configured.bytes / GB:.1f} GB as set and still "
        f"{smallest.bytes / GB:.1f} GB at micro-batch 1 with activation checkpointing; {card.name} has "
        f"{card.usable_bytes / GB:.1f} GB usable; it fits with {' or '.join(options)}"
    )


def _lighter(job: Job) -> list[tuple[str, Need]]:
    """The settings of the job's own section that shrink training state: LoRA (SFT and DPO), GaLore."""
    if job.stage == "scaling":  # the sweep compares full fine-tuning with AdamW: no other setting
        return []
    found = []
    if job.stage in ("train", "dpo") and not job.lora.rank:
        found.append((f"{job.stage}.lora.rank=16", replace(job, lora=LoraConfig(rank=16), frozen_copy=False)))
    if job.loop.optimizer != "galore":
        found.append((f"{job.stage}.optimizer=galore", replace(job, loop=job.loop.model_copy(update={"optimizer": "galore"}))))
    return [(label, need(changed, 1, True)) for label, changed in found]


def _cards_to_shard_over(job: Job, card: Card, most: int = 64) -> int | None:
    """The fewest cards of this kind over which FSDP fits the job (at micro-batch 1, checkpointed)."""
    return next((k for k in range(2, most + 1) if need(replace(job, shards=k), 1, True).bytes <= card.usable_bytes), None)


def _what(job: Job) -> str:
    tuning = f"LoRA r={job.lora.rank}" if job.lora.rank else "full fine-tuning"
    return f"{job.label} {tuning} ({job.loop.optimizer}, {job.dtype})"


def _divisors(batch: int, micro: int) -> list[int]:
    """Micro-batch sizes up to `micro` that divide the batch, largest first."""
    return [m for m in range(micro, 0, -1) if batch % m == 0]


# -- The CPU's RAM ---------------------------------------------------------------------------------
# On a CPU the peak is resident memory (RSS), measured with tests/cpu_peak.py (ru_maxrss of one
# process taking two AdamW steps of the real objective, fp32, eager, PyTorch SDPA; 2026-12-02):
#
#     peak = the process (Python, torch, transformers loaded) + parameters + gradients + optimizer
#          state + tokens x layers x (CPU_ACTIVATION_BYTES_PER_WIDTH * n_embd + CPU_ACTIVATION_BYTES_BASE)
#          + CPU_HEAD_BYTES (the LM head's chunked logits and glibc's arenas around them)
#
# fitted on four SFT (LanguageModelling) steps: 2x256 and 4x512 at 256 and 2,048 tokens a pass.
# Gradients stay in the CPU peak (RSS does not shrink when the allocator frees them). CPU activations
# are 2.2x the GPU's at GPT-2 124M: SDPA's CPU kernel materialises the attention weights, and the
# allocator keeps freed blocks resident. bf16 autocast on a CPU is planned as fp32 plus the bf16
# copies (not measured: the default and the CPU runs are fp32).
CPU_PROCESS_BYTES = 400_000_000
CPU_ACTIVATION_BYTES_PER_WIDTH = 234
CPU_ACTIVATION_BYTES_BASE = 25_000
CPU_HEAD_BYTES = 150_000_000
# DPO's log-probs take the head another way (objectives.response_logprobs: per-token log-probs in
# checkpointed chunks of 128 rows, not the fused summed loss), and its peak holds about this many
# logits rows (vocab x 4 bytes) per token of the micro-batch beyond what the SFT fit counts: fitted
# through the origin on four cached-reference DPO jobs (2x256, 2x384 and 4x512; 1,024 and 4,096
# tokens a pass; 2026-12-04), their excess over the SFT model 134-677 MB. The live-reference jobs
# were held out: -5% to +11% of the plan (tests/test_host_memory.py checks two at CPU_TOLERANCE).
CPU_DPO_LOGIT_ROWS_PER_TOKEN = 0.8
CPU_TOLERANCE = 0.15  # held-out runs (DPO with a live reference, a shape the fit never saw) lie within
# The host keeps this much for the kernel, page cache and whatever else runs: total minus a margin,
# not psutil's "available", so the same params get the same verdict on the same machine whatever
# else happens to run at that moment.
RAM_MARGIN_FRACTION = 0.10
RAM_MARGIN_MIN_BYTES = 2 * 2**30
GIB = 2**30


@dataclass(frozen=True)
class Host:
    """The CPU's RAM, as a budget for a training run on the CPU."""

    total_bytes: int

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes - max(RAM_MARGIN_MIN_BYTES, int(self.total_bytes * RAM_MARGIN_FRACTION))

    @classmethod
    def current(cls) -> Host:
        import psutil

        return cls(psutil.virtual_memory().total)


def cpu_need(job: Job, micro_batch_size: int, checkpointing: bool) -> Need:
    """Peak resident memory of the job on a CPU (see the block above for the measurement)."""
    parts = model_bytes(job)
    parts.pop("lm_head_buffer")  # inside CPU_HEAD_BYTES: the fit measured the fused head as it runs
    parts["process"] = CPU_PROCESS_BYTES + CPU_HEAD_BYTES
    tokens = micro_batch_size * job.sequences_per_example * job.max_length
    per_layer = CPU_ACTIVATION_BYTES_PER_WIDTH * job.shape.n_embd + CPU_ACTIVATION_BYTES_BASE
    if checkpointing:  # only each block's input is kept; one block's activations are live again
        per_layer = CHECKPOINTED_BYTES_PER_WIDTH * job.shape.n_embd * FP32_ACTIVATION_FACTOR
        parts["recomputed_block"] = tokens * (CPU_ACTIVATION_BYTES_PER_WIDTH * job.shape.n_embd + CPU_ACTIVATION_BYTES_BASE)
    parts["activations"] = int(tokens * job.shape.n_layer * per_layer)
    if job.stage == "dpo":
        parts["preference_logits"] = int(CPU_DPO_LOGIT_ROWS_PER_TOKEN * tokens * job.shape.vocab_size * 4)
    return Need(job, micro_batch_size, checkpointing, parts)


def check_host_memory(params: Params, stage: str) -> None:
    """First thing in a training stage: on the CPU (shared.device cpu, or auto without CUDA), its
    peak resident memory fits this host's RAM, or the stage stops in one line naming what fits."""
    if not (params.shared.device == "cpu" or (params.shared.device == "auto" and not torch.cuda.is_available())):
        return
    check_stage(params, stage, Host.current())


def check_stage(params: Params, stage: str, host: Host) -> Need | None:
    """The stage's jobs (the sweep has one a size) fit the host's RAM as set (the last one's Need), or a
    MemoryPlanError naming what fits. None for a stage that trains nothing with these params (base
    from hub weights, a hub judge)."""
    found = None
    for job in (j for j in jobs(params) if j.stage == stage):
        found = _check_job(job, host)
    return found


def host_problems(params: Params, host: Host) -> list[str]:
    """Every training stage's RAM check at once (`gptpipe repro` on a CPU): one line per stage that
    cannot fit, before the first stage runs rather than when the last one starts."""
    problems = []
    for stage in dict.fromkeys(j.stage for j in jobs(params)):
        try:
            check_stage(params, stage, host)
        except MemoryPlanError as err:
            problems.append(str(err))
    return problems


def _check_job(job: Job, host: Host) -> Need:
    configured = cpu_need(job, job.loop.micro_batch_size, job.loop.activation_checkpointing)
    if configured.bytes <= host.usable_bytes:
        return configured
    fix = f"set {' or '.join(options)}" if (options := _host_options(job, host)) else f"no micro-batch fits; use a GPU or a host with {need_gib(job):.0f} GiB"
    if job.stage == "scaling":  # the sweep has no micro-batch of its own: a size goes, or the batch shrinks
        fix = f"drop {job.label} from scaling.models, or lower scaling.batch_size"
    sequences = f"{job.sequences_per_example} x {job.loop.micro_batch_size}" if job.sequences_per_example > 1 else f"{job.loop.micro_batch_size}"
    reference = ", a live reference copy" if job.frozen_copy else ""
    raise MemoryPlanError(
        f"{job.stage} needs {configured.bytes / GB:.1f} GB of RAM at {job.stage}.micro_batch_size="
        f"{job.loop.micro_batch_size} ({sequences} sequences of {job.max_length} tokens, {_what(job)}{reference}); "
        f"this host has {host.total_bytes / GIB:.0f} GiB ({host.usable_bytes / GB:.1f} GB usable): {fix}"
    )


def _host_options(job: Job, host: Host) -> list[str]:
    """The settings that fit: the largest smaller micro-batch, checkpointing alone, or, when neither
    does, the largest micro-batch that fits checkpointed."""
    divisors, on = _divisors(job.loop.batch_size, job.loop.micro_batch_size), job.loop.activation_checkpointing
    options = [f"{job.stage}.micro_batch_size={t.micro_batch_size} ({t.bytes / GB:.1f} GB)"
               for t in (cpu_need(job, m, on) for m in divisors) if t.bytes <= host.usable_bytes][:1]
    if not on and (checkpointed := cpu_need(job, job.loop.micro_batch_size, True)).bytes <= host.usable_bytes:
        options.append(f"{job.stage}.activation_checkpointing=true ({checkpointed.bytes / GB:.1f} GB)")
    if not options and not on:
        options = [f"{job.stage}.micro_batch_size={t.micro_batch_size} {job.stage}.activation_checkpointing=true ({t.bytes / GB:.1f} GB)"
                   for t in (cpu_need(job, m, True) for m in divisors) if t.bytes <= host.usable_bytes][:1]
    return options


def need_gib(job: Job) -> float:
    smallest = cpu_need(job, 1, True).bytes
    return (smallest + max(RAM_MARGIN_MIN_BYTES, smallest * RAM_MARGIN_FRACTION)) / GIB
