"""Typed, validated params: `params.yaml` → frozen config objects, one per section.

Everything is checked once, before any work: an unknown key, a wrong type, a value out of range or
an unknown choice is a `ParamsError` whose one line names the key, the value and what is allowed.
The defaults below are mirrored in `params.yaml`; nothing further down repeats them.

pydantic (a dvc dependency) coerces types: PyYAML reads `1e-4` as a string (DVC-NOTES 4), a float field fixes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptpipe.errors import UserError
from gptpipe.params_file import read_params_file

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "galore", "muon", "adafactor")
# Block projections LoRA may wrap, per model.arch (module-path suffixes; see gptpipe.models.lora).
ARCH_LORA_TARGETS = {"gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), "llama": (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj")}
LORA_TARGETS = ARCH_LORA_TARGETS["gpt2"] + ARCH_LORA_TARGETS["llama"]

# strict: `n_layer: yes` (YAML's true) or 2.5 is an error, not 1 layer or 2.
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ParamsError(UserError, ValueError):
    """A param that cannot work; its message is one line naming the key and the fix."""


class Section(BaseModel):
    # frozen: a config object is a record of what ran; extra=forbid: a misspelt key is an error,
    # not a silently ignored knob (nanoGPT's configurator pitfall).
    model_config = ConfigDict(frozen=True, extra="forbid")


class SharedConfig(Section):
    seed: NonNegativeInt = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bfloat16 and float16 mean autocast around the forward pass; weights and optimizer state stay
    # fp32. float16 (GPUs without native bf16: compute capability below 8.0) adds dynamic loss
    # scaling, since its gradients would underflow; bfloat16 has fp32's range and needs none.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    compile: bool = False
    # DDP processes for the training stages (base, reward, sft, dpo): above 1, `dvc repro` launches
    # each under torchrun itself (one process per GPU), so dvc.lock records the run like any other.
    processes: PositiveInt = 1
    # How those processes share the model: ddp gives each a whole replica (the fastest where the
    # model, gradients and optimizer state fit one card); fsdp shards all three across them (FSDP2),
    # for models that do not (gpt2-xl full fine-tuning: ~25 GB of them in fp32 with AdamW).
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @model_validator(mode="after")
    def _sharding_is_supported(self) -> SharedConfig:
        if self.strategy == "fsdp" and self.processes == 1:
            raise ValueError("strategy: fsdp shards across processes; set shared.processes to the number of GPUs (2 or more), or strategy: ddp")
        if self.strategy == "fsdp" and self.dtype == "float16":
            raise ValueError("strategy: fsdp with dtype float16 (loss scaling is not sharded here); use dtype bfloat16, or strategy: ddp")
        return self


class SyntheticConfig(Section):
    n_train: PositiveInt = 4000
    n_test: PositiveInt = 400
    flawed_fraction: Fraction = 0.3
    max_turns: PositiveInt = 3


class DataConfig(Section):
    source: Literal["synthetic", "dir", "hf"] = "synthetic"
    # Record format of dir/hf files, told by the first record's fields or stated (data/formats.py)
    format: Literal["auto", "hh", "prompt-completion", "preference", "messages", "alpaca", "sharegpt"] = "auto"
    # source hf: a hub dataset id, or an absolute folder datasets.load_dataset reads (Parquet, JSON Lines)
    hf_dataset: str = "Anthropic/hh-rlhf"
    # HH-RLHF division (helpful-base, harmless-base, ...): a folder under data.dir, or Anthropic/hh-rlhf's data_dir
    division: str = "helpful-base"
    # Absolute path of a folder in the hub layout <division>/{train,test}.jsonl[.gz] (source: dir).
    # Absolute, because dvc exp runs stages in a copy of the repo (DVC-NOTES 2).
    dir: str | None = None
    # When the folder holds one split only, this seeded fraction of that file becomes test and the
    # rest train, whichever split the file is: below 0.5, so the carved test side is the smaller.
    split_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    # Cap on pairs per split after parsing (null = all): a slice of the real data for a quick run.
    max_pairs: PositiveInt | None = None
    # A split dropping more than this fraction of its records is an error (the wrong file?). The real harmless-base
    # test split drops 9 of 2,312 (0.4%; 5 prompt mismatches, 4 empty responses); 1.0 turns the check off.
    max_drop_fraction: Fraction = 0.1
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _dir_needs_path(self) -> DataConfig:
        if self.source == "dir" and not self.dir:
            raise ValueError("dir: source 'dir' needs an absolute folder path in data.dir")
        if self.dir is not None and not Path(self.dir).is_absolute():
            raise ValueError(f"dir: {self.dir!r} is relative; give an absolute path "
                             "(dvc exp runs stages in a copy of the repo)")
        return self

    @model_validator(mode="after")
    def _division_is_a_folder_name(self) -> DataConfig:
        name = self.division
        if name in ("", ".", "..") or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
            raise ValueError(f"division: {self.division!r} is not a folder name; use letters, digits, '-', '_' "
                             "and '.' only, no path separators, not '.' or '..' (e.g. helpful-base)")
        return self


class TokenizeConfig(Section):
    # Prompt + response tokens. The prompt is cut from the left to fit; the response is kept.
    max_length: Annotated[int, Field(ge=16)] = 256
    # A response longer than max_length - min_prompt_tokens is cut from the right (counted).
    min_prompt_tokens: PositiveInt = 8
    # gpt2: GPT-2's 50,257-token BPE; trained: a byte-level BPE (bytes, EOT, merges) the tokenizer stage fits on train.
    tokenizer: Literal["gpt2", "trained"] = "gpt2"
    vocab_size: Annotated[int, Field(ge=258, le=65536)] = 4096  # trained only; 258: bytes + EOT + 1 merge


class ModelConfig(Section):
    # scratch: build the shape below and pretrain it here (base stage); pretrained: load `name`.
    init: Literal["scratch", "pretrained"] = "scratch"
    # gpt2: GPT2LMHeadModel. llama: LlamaForCausalLM (RMSNorm, RoPE, SwiGLU, no biases, GQA through
    # n_kv_head; gptpipe.models.architecture), scratch only: no hub weights of it at GPT-2 sizes.
    arch: Literal["gpt2", "llama"] = "gpt2"
    # Hub id (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or an absolute local folder (pretrained).
    name: str = "gpt2"
    n_layer: PositiveInt = 2
    n_embd: PositiveInt = 128
    n_head: PositiveInt = 4
    n_kv_head: PositiveInt | None = None  # llama: key/value heads (null = n_head); gpt2: null only
    ffn_hidden: PositiveInt | None = None
    n_positions: PositiveInt = 256
    dropout: Fraction = 0.0

    @model_validator(mode="after")
    def _shape_is_buildable(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head: {self.n_head} does not divide n_embd={self.n_embd}")
        given = [k for k in ("n_kv_head", "ffn_hidden") if getattr(self, k) is not None]
        if self.arch == "gpt2" and given:
            raise ValueError(f"{given[0]}: {getattr(self, given[0])} applies to arch llama only; set it to null for gpt2")
        if self.arch == "llama" and self.init == "pretrained":
            raise ValueError("arch: llama is built from scratch only (no hub weights of its class at GPT-2 sizes); "
                             "use init: scratch, or arch: gpt2")
        if self.arch == "llama" and self.n_head % (self.n_kv_head or self.n_head):
            raise ValueError(f"n_kv_head: {self.n_kv_head} does not divide n_head={self.n_head}")
        if self.arch == "llama" and (self.n_embd // self.n_head) % 2:  # RoPE turns pairs of dimensions
            raise ValueError(f"n_head: {self.n_head} gives heads of {self.n_embd // self.n_head} dimensions; RoPE needs an even head size")
        if self.arch == "llama" and self.dropout:  # Llama drops attention probabilities only: it would mean less
            raise ValueError(f"dropout: {self.dropout}; arch llama has no residual dropout here, use 0.0")
        return self


class LoopConfig(Section):
    """The one training loop's knobs. Each training section (base, train, reward, dpo) is one of these
    plus what that stage adds; params.yaml lists under base, reward and dpo only the knobs whose value
    differs from these defaults, which `train` (SFT) lists in full."""

    optimizer: Literal[OPTIMIZERS] = "adamw"  # type: ignore[valid-type]
    # null = the optimizer family's default (optim.DEFAULT_LR): SGD needs a far larger step than Adam.
    lr: PositiveFloat | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    eps: PositiveFloat = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_steps: PositiveInt = 150
    # Sequences per optimizer step, and per forward pass; accumulation = batch_size / micro_batch_size.
    batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 16
    warmup_steps: NonNegativeInt = 10
    # The cosine schedule ends at lr * min_lr_ratio.
    min_lr_ratio: Fraction = 0.1
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # 0 = no clipping
    eval_every: PositiveInt = 25
    # Train and test loss are estimated on fixed random samples of this many sequences.
    eval_samples: PositiveInt = 200
    checkpoint_every: PositiveInt = 50
    # galore (low-rank projected AdamW moments, Zhao et al. 2024): rank of the projection, steps
    # between projector refreshes (an SVD of the gradient), and the update scale (the paper's alpha).
    galore_rank: PositiveInt = 32
    galore_update_every: PositiveInt = 50
    galore_scale: PositiveFloat = 1.0
    # Keep each transformer block's input only and recompute the block in the backward pass: ~a
    # third more compute for a fraction of the activation memory (gptpipe.train.memory_plan).
    activation_checkpointing: bool = False

    @model_validator(mode="after")
    def _accumulation_divides(self) -> LoopConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size: {self.batch_size} is not a multiple of "
                             f"micro_batch_size={self.micro_batch_size}")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} must be below max_steps={self.max_steps}")
        return self

    @property
    def grad_accum_steps(self) -> int:
        return self.batch_size // self.micro_batch_size


class LoraConfig(Section):
    # 0 = full fine-tuning; r > 0 trains rank-r adapters on `targets` and freezes everything else.
    rank: NonNegativeInt = 0
    alpha: PositiveFloat = 16.0  # the update is scaled by alpha / rank
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    targets: tuple[Literal[LORA_TARGETS], ...] = ARCH_LORA_TARGETS["gpt2"]  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _some_target(self) -> LoraConfig:
        if self.rank and not self.targets:
            raise ValueError(f"targets: empty; choose from the arch's projections ({', '.join(LORA_TARGETS)})")
        return self


class BaseConfig(LoopConfig):
    """Pretraining a scratch model on the training dialogues, every token counted (the base stage);
    with hub weights (model.init: pretrained) only eval_samples and micro_batch_size are read."""

    # A 2x128 model from scratch takes a larger step than fine-tuning, and decay keeps it stable;
    # whole-dialogue evals cost the LM head at every position, so they come less often.
    lr: PositiveFloat | None = 0.003
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    eval_every: PositiveInt = 75


class SftConfig(LoopConfig):
    """Supervised fine-tuning on prompt -> chosen response (the sft stage): `train` in params.yaml."""

    # The embedded default learns its tables in 1,000 steps at 3e-3 (measured: 21% exact accuracy at
    # 250 steps, 65% at 750, 76% at 1,000; at AdamW's 1e-3 and 150 steps it answered 0.5%).
    lr: PositiveFloat | None = 0.003
    max_steps: PositiveInt = 1000
    warmup_steps: NonNegativeInt = 20
    eval_every: PositiveInt = 250
    checkpoint_every: PositiveInt = 200

    # Loss on the response, also earlier assistant turns, all tokens; auto: data/loss_targets.py
    loss_on: Literal["auto", "response", "assistant_turns", "all"] = "auto"
    lora: LoraConfig = LoraConfig()


class RewardConfig(LoopConfig):
    """The reward model of the reward stage: trained here (the loop's knobs), or a hub classifier."""

    # trained: a GPT-2 reward model trained here on the train pairs (Bradley-Terry), initialised from
    # models/base with a scalar head; hf: an AutoModelForSequenceClassification by hub id or folder;
    # none: no judge (SFT-only data, offline): nothing is scored, judge@ refuses.
    backend: Literal["trained", "hf", "none"] = "trained"
    # hf backend: hub id or absolute save_pretrained folder (with its tokenizer), one logit per (prompt, response)
    name: str = "OpenAssistant/reward-model-deberta-v3-large-v2"
    # hf backend: the classifier's tokenizer truncates (prompt, response) to this many tokens (a
    # property of the classifier, read wherever it scores: score, judge@, and here)
    hf_max_length: PositiveInt = 512
    lr: PositiveFloat | None = 1e-3
    eval_every: PositiveInt = 50  # a judge's estimate scores 800 sequences: 4 over its 150 steps


class ScoreConfig(Section):
    """How the reward model scores responses: the score stage (train and test pairs) and judge@."""

    batch_size: PositiveInt = 32  # sequences per scoring forward pass


class FilterConfig(Section):
    # Train pairs the SFT stage trains on: the top `keep` by `by` (null = all of them). `random`
    # draws `keep` pairs at random (seeded): the control that separates quality from quantity.
    # Not named `size`: DVC's run-cache key drops every key named `size` or `nfiles`, params
    # included (treeverse/dvc#10296), so changing it would restore a stale subset.
    keep: PositiveInt | None = None
    by: Literal["chosen_reward", "margin", "random"] = "chosen_reward"


class DpoConfig(LoopConfig):
    """DPO (Rafailov et al. 2023) from models/sft; its training knobs are the loop's."""

    # The DPO paper's 0.1 suits a pretrained policy at lr 1e-6 (the full preset); the embedded
    # default's tiny policy reaches higher test preference accuracy in fewer steps at 0.3.
    beta: PositiveFloat = 0.3
    # sigmoid: DPO; ipo: (h - 1/(2 beta))^2 on summed log-ratios (Azar et al. 2023).
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    # Conservative DPO: the preference label is flipped with this probability (sigmoid loss only).
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    # cached: reference log-probs computed once before training (the reference is then freed);
    # live: the frozen reference runs beside the policy every step.
    reference: Literal["cached", "live"] = "cached"
    lora: LoraConfig = LoraConfig()
    # 3e-4 once left DPO's exact accuracy 11.5 points under SFT's (answers turned wrong: the chosen
    # and rejected log-probs both fall and the mass moves elsewhere); 1e-4 kept it at SFT's.
    lr: PositiveFloat | None = 1e-4
    max_steps: PositiveInt = 40
    warmup_steps: NonNegativeInt = 4
    eval_every: PositiveInt = 20
    checkpoint_every: PositiveInt = 20

    @model_validator(mode="after")
    def _smoothing_is_for_sigmoid(self) -> DpoConfig:
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError(f"label_smoothing: {self.label_smoothing} applies to loss 'sigmoid' only")
        return self


class GenerateConfig(Section):
    models: tuple[Literal["base", "sft", "dpo"], ...] = ("base", "sft", "dpo")  # which answer
    n_prompts: PositiveInt = 200  # a fixed sample of test prompts
    seed: NonNegativeInt = 0  # picks the prompts and seeds the sampling
    max_new_tokens: PositiveInt = 64
    temperature: Annotated[float, Field(ge=0)] = 0.7  # 0 = greedy
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9
    top_k: NonNegativeInt = 0  # 0 = off
    batch_size: PositiveInt = 32


class EvaluateConfig(Section):
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95  # of the mean reward's interval


class ScalingConfig(Section):
    # Shapes to compare: "<n_layer>x<n_embd>" built from scratch (heads of head_dim), or hub names
    # (gpt2, gpt2-medium, gpt2-large, gpt2-xl) fine-tuned from their weights (model.init: pretrained).
    models: tuple[str, ...] = ("1x8", "1x16", "1x32")
    head_dim: PositiveInt = 8
    # FLOP budgets C; each model trains on D = C / 6N tokens (N with embeddings, as Chinchilla).
    budgets: tuple[PositiveFloat, ...] = (1.5e11, 2.25e11)
    eval_samples: PositiveInt = 100  # sequences for each run's final test loss
    # Sequences per optimizer step: a small budget gives a large model few steps at a large batch, more at a small one.
    batch_size: PositiveInt = 1
    # Each run's AdamW: steps follow from the budget; warmup is this, at most a fifth of them.
    lr: PositiveFloat = 0.02
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: NonNegativeInt = 10

    @model_validator(mode="after")
    def _enough_points(self) -> ScalingConfig:
        if len(self.models) < 3:
            raise ValueError(f"models: {len(self.models)} given; an isoFLOP parabola needs at least 3")
        if len(self.budgets) < 2:
            raise ValueError(f"budgets: {len(self.budgets)} given; a power law over budgets needs 2")
        scratch = [m for m in self.models if is_scratch_shape(m)]
        if scratch and len(scratch) < len(self.models):
            saved = [m for m in self.models if not is_scratch_shape(m)]
            raise ValueError(f"models: mixes scratch shapes ({', '.join(scratch)}) with saved models "
                             f"({', '.join(saved)}); an isoFLOP sweep compares like with like: list one kind")
        return self

    @property
    def fine_tunes(self) -> bool:
        """Saved weights fine-tuned (only the fine-tuning FLOPs counted), or shapes trained from scratch."""
        return not is_scratch_shape(self.models[0])


def is_scratch_shape(name: str) -> bool:
    """"<layers>x<width>": a GPT-2 shape trained from scratch (not a hub name or a folder)."""
    layers, _, width = name.partition("x")
    return layers.isdigit() and width.isdigit()


class Params(Section):
    shared: SharedConfig = SharedConfig()
    data: DataConfig = DataConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    base: BaseConfig = BaseConfig()
    train: SftConfig = SftConfig()
    reward: RewardConfig = RewardConfig()
    score: ScoreConfig = ScoreConfig()
    filter: FilterConfig = FilterConfig()
    dpo: DpoConfig = DpoConfig()
    generate: GenerateConfig = GenerateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    # The compute-optimal study: isoFLOP profiles over model sizes (the scaling stage).
    scaling: ScalingConfig = ScalingConfig()

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:  # sequences fit the model, adapters its projections, the filter its judge
        if self.model.init == "scratch" and self.tokenize.max_length > self.model.n_positions:
            raise ValueError(f"tokenize.max_length: {self.tokenize.max_length} exceeds model.n_positions={self.model.n_positions}")
        if self.model.arch == "llama" and not self.scaling.fine_tunes and self.scaling.head_dim % 2:
            raise ValueError(f"scaling.head_dim: {self.scaling.head_dim}; model.arch llama's RoPE needs an even head size")
        if self.model.init == "scratch" and self.generate.max_new_tokens >= self.model.n_positions:
            raise ValueError(f"generate.max_new_tokens: {self.generate.max_new_tokens} leaves no room for a prompt in model.n_positions={self.model.n_positions}; use fewer")
        hub = [k for k, on in (("model.init=pretrained", self.model.init == "pretrained"), ("scaling.models", self.scaling.fine_tunes)) if on]
        if self.tokenize.tokenizer == "trained" and hub:  # a trained tokenizer's ids mean nothing to GPT-2's embedding
            raise ValueError(f"tokenize.tokenizer: trained cannot feed hub weights ({hub[0]}): they read GPT-2's BPE ids; set tokenize.tokenizer=gpt2, or model.init=scratch and scratch scaling.models")
        allowed = ARCH_LORA_TARGETS[self.model.arch]
        for section, lora in (("train", self.train.lora), ("dpo", self.dpo.lora)):
            if lora.rank and (wrong := [t for t in lora.targets if t not in allowed]):
                raise ValueError(f"{section}.lora.targets: {', '.join(wrong)} are not model.arch={self.model.arch} "
                                 f"projections; use some of {', '.join(allowed)}")
        if self.reward.backend == "none" and self.filter.keep is not None and self.filter.by != "random":
            raise ValueError(f"filter.by: {self.filter.by} ranks by the judge's rewards and reward.backend=none scores "
                             "nothing; set filter.by=random (a seeded N) or filter.keep=null (all)")
        return self

    @property
    def trained_sections(self) -> list[str]:
        """The sections of the stages that train here, under torchrun when shared.processes > 1."""
        return ["train", "dpo"] + (["base"] if self.model.init == "scratch" else []) + (
            ["reward"] if self.reward.backend == "trained" else [])

    @model_validator(mode="after")
    def _processes_share_each_step(self) -> Params:
        # Checked here, before torchrun starts any process; the loop rechecks the micro-batch the GPU plan chooses.
        n = self.shared.processes
        for section in self.trained_sections if n > 1 else []:
            micro_batches = getattr(self, section).grad_accum_steps
            if micro_batches % n:
                raise ValueError(
                    f"{section}.batch_size / {section}.micro_batch_size = {micro_batches} micro-batches per step "
                    f"cannot be shared by shared.processes={n}; make it a multiple of {n}"
                )
        return self

    @model_validator(mode="after")
    def _optimizers_shard(self) -> Params:
        if self.shared.strategy == "fsdp":
            for section in self.trained_sections:
                if (optimizer := getattr(self, section).optimizer) in ("galore", "muon", "adafactor"):  # whole-matrix maths
                    raise ValueError(f"{section}.optimizer: {optimizer} needs whole matrices, and shared.strategy: fsdp "
                                     "gives each process a shard; use adamw there, or strategy: ddp")
        return self

    @model_validator(mode="after")
    def _fits_the_synthetic_data(self) -> Params:
        # Generated data's size is known before any work; a folder's or the hub's is checked on reading.
        if self.data.source == "synthetic":
            pairs = min(self.data.synthetic.n_train, self.data.max_pairs or self.data.synthetic.n_train)
            try:
                self.check_fits_data(pairs, "synthetic train pairs (data.synthetic.n_train, data.max_pairs)")
            except UserError as err:
                raise ValueError(str(err)) from None
        return self

    def check_fits_data(self, train_pairs: int, read: str = "train pairs read") -> None:
        """filter.keep and each training stage's batch_size against the train split, so that a
        subset or a batch larger than the data fails before base, reward and score have run."""
        check_keep_fits(self.filter.keep, train_pairs, read)
        dialogues = "train dialogues (a chosen and a rejected per pair)"
        # the scaling stage fine-tunes hub weights on responses, and pretrains scratch shapes on dialogues
        scaling_draws = ("chosen responses", train_pairs) if self.scaling.fine_tunes else (dialogues, 2 * train_pairs)
        sets = {  # section → (batch, what it draws from, how many of those there are)
            "reward": (self.reward.batch_size, read, train_pairs),
            "train": (self.train.batch_size, "pairs SFT trains on (filter.keep, or every train pair)",
                      self.filter.keep or train_pairs),
            "dpo": (self.dpo.batch_size, read, train_pairs),
            "scaling": (self.scaling.batch_size, *scaling_draws),
        }
        if self.model.init == "scratch":  # hub weights skip pretraining
            sets["base"] = (self.base.batch_size, dialogues, 2 * train_pairs)
        for section, (batch, what, available) in sets.items():
            if batch > available:
                raise UserError(f"{section}.batch_size: {batch} exceeds the {available} {what}; lower "
                                f"{section}.batch_size (and micro_batch_size) to at most {available}, or use more data")


def check_keep_fits(keep: int | None, train_pairs: int, read: str = "train pairs read") -> None:
    """filter.keep against the train split (the filter stage; the download stage via check_fits_data)."""
    if keep is not None and keep > train_pairs:
        raise UserError(f"filter.keep: {keep} exceeds the {train_pairs} {read}; use at most {train_pairs} or null")


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params; raise ParamsError with one line on the first problem."""
    path = Path(path)
    raw = read_params_file(path, ParamsError)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_params(raw, source=str(path))


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"{source}: {_first_error(err)}") from None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key (misspelt? see params.yaml for the allowed keys)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error":  # our validators name the field; prefix its section
        return f"{key}.{message}" if key else message
    return f"{key}: {first.get('input')!r}: {message}"


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
