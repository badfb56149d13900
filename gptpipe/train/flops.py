"""Parameter and FLOP accounting for GPT-2 training, and model FLOPs utilisation (MFU).

Three ways of counting training compute live here, because they answer different questions:

* ``flops_6nd`` -- Kaplan et al. (2020), "Scaling Laws for Neural Language Models", Sec. 2.1:
  C ~= 6 N D. The usual yardstick, and what scaling-law plots are drawn against.
* ``chinchilla_forward_flops`` / ``chinchilla_training_flops`` -- Hoffmann et al. (2022),
  "Training Compute-Optimal Large Language Models", Appendix F: a per-operation count that also
  charges the embedding lookup (as a one-hot matmul), the attention scores and the softmax.
* ``training_flops_per_token`` / ``step_flops`` -- Chowdhery et al. (2022), "PaLM", Appendix B:
  the matmul FLOPs a token really costs (6 N + 12 L H Q T). This is the "model FLOPs" numerator
  of MFU, so it must count only work the model needs (no rematerialisation) and must follow
  what the training loop actually computes (e.g. logits only at loss positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Kaplan et al. (2020) eq. 2.1 / Chinchilla App. F: the backward pass costs twice the forward
# (one matmul for the input gradient, one for the weight gradient), so training = 3 x forward.
TRAINING_TO_FORWARD_RATIO = 3
# A matmul of an (m x k) by a (k x n) matrix costs 2 m k n FLOPs: one multiply and one add.
FLOPS_PER_MULTIPLY_ACCUMULATE = 2
# GPT-2's MLP is 4x wider than the residual stream (Radford et al. 2019; GPT2Config.n_inner=None).
MLP_EXPANSION = 4


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters of a GPT-2 (or the llama variant) that decide its parameter and FLOP counts.

    llama (LlamaForCausalLM, tied head): no biases, RMSNorm (a weight only), RoPE (no position
    table), SwiGLU (three d x ffn_hidden matrices) and n_kv_head key/value heads (K and V d -> d kv/h).
    """

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int = 50257
    n_positions: int = 1024
    arch: str = "gpt2"
    n_kv_head: int | None = None  # llama: None = n_head
    ffn_hidden: int | None = None  # llama: its SwiGLU width (required there)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.arch == "llama" and self.ffn_hidden is None:
            raise ValueError("a llama shape needs its ffn_hidden")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the shape from a ``GPT2Config`` or ``LlamaConfig`` (or anything with their names)."""
        if getattr(config, "model_type", "gpt2") == "llama":
            return cls(
                n_layer=config.num_hidden_layers, n_embd=config.hidden_size, n_head=config.num_attention_heads,
                vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, arch="llama",
                n_kv_head=config.num_key_value_heads, ffn_hidden=config.intermediate_size,
            )
        n_inner = getattr(config, "n_inner", None)
        if n_inner is not None and n_inner != MLP_EXPANSION * config.n_embd:
            # Every count below assumes the standard 4x MLP; refuse rather than miscount.
            raise ValueError(f"n_inner={n_inner} is not {MLP_EXPANSION} * n_embd; unsupported")
        return cls(
            n_layer=config.n_layer,
            n_embd=config.n_embd,
            n_head=config.n_head,
            vocab_size=config.vocab_size,
            n_positions=config.n_positions,
        )

    @property
    def ffw_size(self) -> int:
        return self.ffn_hidden if self.arch == "llama" else MLP_EXPANSION * self.n_embd

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def kv_width(self) -> int:
        """Width of K (and of V): d for GPT-2, d * n_kv_head / n_head under grouped-query attention."""
        return self.n_embd // self.n_head * self.kv_heads


# The four released OpenAI GPT-2 checkpoints (Radford et al. 2019, Table 2; HF model cards).
GPT2_SHAPES: dict[str, ModelShape] = {
    "gpt2": ModelShape(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": ModelShape(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": ModelShape(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": ModelShape(n_layer=48, n_embd=1600, n_head=25),
}


# --------------------------------------------------------------------------- parameters


def _embedding_params(shape: ModelShape) -> int:
    # Token embedding wte (V x d) and learned positions wpe (n_positions x d). The LM head is
    # tied to wte in GPT2LMHeadModel, so it adds no parameters of its own. llama: RoPE has no table.
    positions = 0 if shape.arch == "llama" else shape.n_positions
    return (shape.vocab_size + positions) * shape.n_embd


def _matmul_params_per_layer(shape: ModelShape) -> int:
    # c_attn d->3d, attn c_proj d->d, mlp c_fc d->4d, mlp c_proj 4d->d: 12 d^2 (Kaplan Table 1).
    d = shape.n_embd
    if shape.arch == "llama":  # q and o d->d, k and v d->kv_width; SwiGLU gate, up d->f, down f->d
        return 2 * d * d + 2 * d * shape.kv_width + 3 * d * shape.ffw_size
    return 3 * d * d + d * d + 2 * d * shape.ffw_size


def _bias_and_norm_params_per_layer(shape: ModelShape) -> int:
    # Biases 3d + d + 4d + d, plus ln_1 and ln_2 (weight and bias each): 13 d.
    d = shape.n_embd
    if shape.arch == "llama":
        return 2 * d  # no biases; input and post-attention RMSNorm weights
    return 3 * d + d + shape.ffw_size + d + 2 * 2 * d


def _final_norm_params(shape: ModelShape) -> int:
    return shape.n_embd if shape.arch == "llama" else 2 * shape.n_embd  # RMSNorm weight; ln_f weight and bias


def count_params(shape: ModelShape, *, include_embeddings: bool = True) -> int:
    """Exact parameter count of transformers' ``GPT2LMHeadModel`` (tied LM head counted once).

    ``include_embeddings=False`` gives Kaplan et al.'s non-embedding N (drops wte and wpe).
    """
    per_layer = _matmul_params_per_layer(shape) + _bias_and_norm_params_per_layer(shape)
    non_embedding = shape.n_layer * per_layer + _final_norm_params(shape)
    return non_embedding + (_embedding_params(shape) if include_embeddings else 0)


# --------------------------------------------------------------------------- 6ND


def flops_6nd(n_params: int, n_tokens: int) -> float:
    """Kaplan et al. (2020) Sec. 2.1: C = 6 N D (2 N forward + 4 N backward per token)."""
    return 6.0 * n_params * n_tokens


# --------------------------------------------------------------------------- Chinchilla App. F


def chinchilla_forward_flops(shape: ModelShape, seq_len: int) -> dict[str, float]:
    """Forward FLOPs of ONE sequence of ``seq_len`` tokens, per Hoffmann et al. (2022) App. F.

    Attention and dense terms are per layer in the paper and are multiplied by n_layer here.
    The paper charges the embedding as a dense (one-hot) matmul, separately from the logits.

    Note: the ratios printed in the paper's Table A4 (0.99-1.10 against 6ND) are reproduced only
    by the per-layer terms, i.e. ``total - embeddings - final_logits``; with both vocabulary
    terms included, its 73M model would be at 1.58. Both are available from this dict.
    """
    _check_seq_len(seq_len)
    d_model = float(shape.n_embd)
    vocab = float(shape.vocab_size)
    n_layer = float(shape.n_layer)
    key_size = d_model / shape.n_head
    attn_width = key_size * shape.n_head  # = d_model for GPT-2, kept to mirror the paper
    s = float(seq_len)

    parts = {
        "embeddings": 2 * s * vocab * d_model,
        "attention_qkv": n_layer * 2 * 3 * s * d_model * attn_width,
        "attention_logits": n_layer * 2 * s * s * attn_width,
        "attention_softmax": n_layer * 3 * shape.n_head * s * s,
        "attention_values": n_layer * 2 * s * s * attn_width,
        "attention_output": n_layer * 2 * s * attn_width * d_model,
        "dense": n_layer * 2 * s * (d_model * shape.ffw_size + d_model * shape.ffw_size),
        "final_logits": 2 * s * d_model * vocab,
    }
    parts["total"] = sum(parts.values())
    return parts


def chinchilla_training_flops(shape: ModelShape, seq_len: int, n_tokens: int) -> float:
    """Training FLOPs for ``n_tokens`` tokens in ``seq_len``-token sequences (App. F: 3 x fwd)."""
    per_sequence = chinchilla_forward_flops(shape, seq_len)["total"]
    return TRAINING_TO_FORWARD_RATIO * per_sequence * (n_tokens / seq_len)


# --------------------------------------------------------------------------- PaLM-style MFU


def _lm_head_training_flops(shape: ModelShape) -> float:
    # One d x V matmul per token whose logits are computed, forward + backward (x 2 x 3).
    return 6.0 * shape.n_embd * shape.vocab_size


def training_flops_per_token(shape: ModelShape, seq_len: int, *, lm_head: bool = True) -> float:
    """Matmul FLOPs (forward + backward) one token costs in training, as in PaLM App. B.

    6 N for the weight matmuls (N = 12 L d^2 non-embedding weights; biases, LayerNorms and the
    embedding lookup are not matmuls) plus 12 L d T for attention scores and values. Like PaLM,
    the attention term is NOT halved for the causal mask: that is what dense kernels compute.
    ``lm_head`` adds the tied LM head's 6 d V.
    """
    _check_seq_len(seq_len)
    weights = 6.0 * shape.n_layer * _matmul_params_per_layer(shape)
    attention = 12.0 * shape.n_layer * shape.n_embd * seq_len
    return weights + attention + (_lm_head_training_flops(shape) if lm_head else 0.0)


@dataclass(frozen=True)
class Charge:
    """What a training step runs besides a forward and a backward through trainable weights.

    A matmul's backward is two matmuls: the input's gradient and the weight's. A frozen weight (a
    LoRA base, its tied head) skips the second, so it costs 4 per parameter per token, not 6, while
    the adapters' own matrices cost the full 6. A live DPO reference adds one forward (2 per weight,
    attention's forward, and the head at the loss positions) that no gradient flows through.
    """

    frozen_base: bool = False  # the model's own weights get no gradient (LoRA)
    adapter_params: int = 0  # matmul parameters of the trainable adapters
    reference_forward: bool = False  # a frozen copy (or the base, adapters off) runs each step


FULL = Charge()


def charge_of(objective: torch.nn.Module) -> Charge:
    """The Charge of an objective, read off its parameters: adapters are the trainable `lora_`
    matrices, and the live reference is whatever the objective holds as `reference` (a frozen
    copy) or, for a LoRA policy in live mode, the same base run with the adapters off."""
    params = [(n, p) for n, p in objective.named_parameters() if not n.startswith("reference.")]
    adapters = sum(p.numel() for n, p in params if "lora_" in n and p.requires_grad)
    frozen = adapters > 0 and not any(p.requires_grad for n, p in params if "lora_" not in n)
    live = getattr(objective, "reference_mode", "cached") == "live"
    return Charge(frozen_base=frozen, adapter_params=adapters, reference_forward=live)


def step_flops(shape: ModelShape, seq_lens: Sequence[int], loss_positions: int, charge: Charge = FULL) -> float:
    """FLOPs of one optimiser step over sequences of the given lengths.

    Each sequence's attention term uses its own length (no padding is charged), and the LM head
    is charged only at the ``loss_positions`` where the training loop computes logits. ``charge``
    says what else runs (frozen weights, adapters, a live reference).
    """
    total_tokens = sum(seq_lens)
    if not 0 <= loss_positions <= total_tokens:
        raise ValueError(f"loss_positions must be in [0, {total_tokens}], got {loss_positions}")
    weights = shape.n_layer * _matmul_params_per_layer(shape)
    per_weight = 4.0 if charge.frozen_base else 6.0
    head = shape.n_embd * shape.vocab_size
    attention = sum(12.0 * shape.n_layer * shape.n_embd * n * n for n in seq_lens)
    total = (per_weight * weights + 6.0 * charge.adapter_params) * total_tokens + attention
    total += per_weight * head * loss_positions
    if charge.reference_forward:  # a forward only: a third of each term's training cost
        total += 2.0 * weights * total_tokens + attention / 3 + 2.0 * head * loss_positions
    return total


def mfu(flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation (PaLM Sec. 4.1): achieved model FLOP/s over the hardware peak."""
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak_flops_per_s must be positive, got {peak_flops_per_s}")
    if flops_per_s < 0:
        raise ValueError(f"flops_per_s must be non-negative, got {flops_per_s}")
    return flops_per_s / peak_flops_per_s


# --------------------------------------------------------------------------- peak FLOP/s

_CUDA_LOW_PRECISION = ("bfloat16", "float16")
_KNOWN_DTYPES = ("float32", *_CUDA_LOW_PRECISION)
_KNOWN_DEVICES = ("cpu", "cuda", "mps")


def default_peak_flops(device_type: str, dtype: str) -> float:
    """A default dense peak FLOP/s for MFU's denominator; override it for other hardware.

    Accepts ``torch.device(...).type`` strings ("cuda:0" is read as "cuda") and dtype names
    with or without the "torch." prefix.
    """
    device = device_type.split(":", 1)[0].lower()
    precision = dtype.removeprefix("torch.").lower()
    if device not in _KNOWN_DEVICES:
        raise ValueError(f"unknown device_type {device_type!r}; expected one of {_KNOWN_DEVICES}")
    if precision not in _KNOWN_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {_KNOWN_DTYPES}")

    if device == "cpu":
        # This project's nominal figure for its 2-core AMD EPYC (AVX2 + FMA): 2 cores x 2 FMA pipes
        # x 8 lanes x 2 FLOP x ~3 GHz. The machines are first-generation EPYC (family 23, model 1),
        # whose FMA pipes are 128 bits wide: an AVX2 FMA takes two of them, and large fp32 matmuls
        # measure 65-82 GFLOP/s (512^3 to 2048^3, MKL, idle; `gptpipe bench sft` prints its own), so
        # MFU against this tops out near 40%.
        # Kept as the denominator the project's figures were always reported against. AVX2 has no
        # native bf16/fp16 FMA, so the same figure serves every dtype.
        return 2.0e11
    if device == "mps":
        # Apple M1 8-core GPU: 2.6 TFLOP/s fp32 (Apple's M1 spec). Apple GPUs run fp16 at
        # about the fp32 rate, so one number for all dtypes; set the peak for bigger M-chips.
        return 2.6e12
    return cuda_peak_flops(torch.cuda.get_device_name() if torch.cuda.is_available() else "", precision)


# Dense peaks per card (NVIDIA datasheets; the sparse figures are twice these): (bf16/fp16 tensor
# cores, TF32 tensor cores). fp32 matmuls run as TF32 on CUDA here (runtime.cuda_settings), so TF32 is
# the fp32 peak. Matched by substring of torch.cuda.get_device_name(), first match wins.
CUDA_PEAKS = (
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 495e12),  # SXM and NVL
    ("H200", 989e12, 495e12),  # the H100's chip, more memory
    ("A100", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L40", 181e12, 90.5e12),  # before L4, which its name contains
    ("L4", 121e12, 60e12),
    ("A10G", 70e12, 35e12),
    ("A10", 125e12, 62.5e12),
    ("V100", 125e12, 15.7e12),  # fp16 only (no bf16, no TF32: fp32 is plain fp32)
    ("T4", 65e12, 8.1e12),  # likewise
)
# A card not in the table is measured against the H100's, and its name is in the metrics beside it.
FALLBACK_CARD = "H100"


def cuda_peak_flops(card: str, precision: str) -> float:
    """The dense peak FLOP/s of the named card at `precision` (bfloat16/float16 or float32)."""
    for name, low, tf32 in CUDA_PEAKS:
        if name.lower() in card.lower():
            return low if precision in _CUDA_LOW_PRECISION else tf32
    return cuda_peak_flops(FALLBACK_CARD, precision)


def _check_seq_len(seq_len: int) -> None:
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
