"""DPO: the SFT model trained directly on preference pairs (Rafailov et al. 2023, arXiv:2305.18290).

The policy π starts as the SFT model, which is also the reference π_ref. For a pair, with each
response's log-probs summed over its tokens, h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) −
log π_ref(y_r)), and β·(log π − log π_ref) is the implicit reward of a response. Losses per pair:

- sigmoid: −log σ(βh) (the paper's Eq. 7); with label smoothing ε, the preference label is taken
  as flipped with probability ε: −(1−ε)·log σ(βh) − ε·log σ(−βh) (conservative DPO, Mitchell 2023).
  TRL's `sigmoid` ignores its label_smoothing (HF-NOTES 7): ours does not.
- ipo: (h − 1/(2β))² (Azar et al. 2023, arXiv:2310.12036, Eq. 17 with τ = β) on the summed log-probs
  the paper defines; TRL's `ipo` averages them over tokens instead, so its numbers differ from these.

The reference is either cached (its log-probs computed once, before training, and carried by the
examples) or live (run beside the policy at every step). A LoRA policy needs no copy of the model for
either: its adapters start at B = 0, so the policy at init is the reference; live, the reference is
the same model with its adapters switched off.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel

from gptpipe.data.batches import PairBatch, PairExample, StepPlan, collate_pairs
from gptpipe.config import DpoConfig
from gptpipe.train.flops import ModelShape, count_params
from gptpipe.models.lora import LoRALinear, adapters_disabled
from gptpipe.train.objectives import disable_dropout, response_logprobs
from gptpipe.train.runtime import Runtime, autocast

LOSSES = ("sigmoid", "ipo")
REFERENCES = ("cached", "live")


# -- the loss --------------------------------------------------------------------------------------


def pair_losses(
    chosen_logratio: torch.Tensor,
    rejected_logratio: torch.Tensor,
    *,
    beta: float,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Loss of each pair, from each response's log π − log π_ref (summed over its tokens): (pairs,)."""
    _check_loss(loss, label_smoothing)
    h = chosen_logratio - rejected_logratio
    if loss == "sigmoid":
        # logsigmoid, not log(sigmoid): σ(βh) rounds to 0 in fp32 once βh < −104 and the log is −inf.
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    # ipo regresses h onto 1/(2β) instead of pushing it without bound: it stays finite when a
    # preference is deterministic, where DPO's optimum drives π(y_r) to 0 (Azar et al., Sec. 4.2, 5).
    return (h - 1 / (2 * beta)) ** 2


def _check_loss(loss: str, label_smoothing: float) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose from {', '.join(LOSSES)}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
    if label_smoothing and loss != "sigmoid":
        raise ValueError(f"label_smoothing={label_smoothing}: applies to loss 'sigmoid' only")


def pair_stats(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Sums over pairs of the implicit rewards β·(log π − log π_ref), their margin and ordering.

    accuracy counts a tie as half: at step 0 every margin is exactly 0 (policy = reference), and the
    implicit reward model is then at chance, 0.5, not 0 (TRL counts a tie as wrong: HF-NOTES 7).
    """
    chosen, rejected = beta * chosen_logratio.detach(), beta * rejected_logratio.detach()
    margin = chosen - rejected
    ordered = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {
        "chosen_reward": chosen.sum(),
        "rejected_reward": rejected.sum(),
        "margin": margin.sum(),
        "accuracy": ordered.sum(),
    }


# -- the objective ----------------------------------------------------------------------------------


class DirectPreference(nn.Module):
    """The DPO objective around a policy (a GPT2LMHeadModel, with or without LoRA adapters).

    reference="cached": every batch must carry the reference log-probs (`reference_logprobs`).
    reference="live": the policy as it is now, when the objective is built, is frozen as the
    reference: a copy of the model, or for a LoRA policy the same model with its adapters off.
    """

    collate = staticmethod(collate_pairs)

    def __init__(
        self,
        policy: PreTrainedModel,
        *,
        beta: float,
        loss: str = "sigmoid",
        label_smoothing: float = 0.0,
        reference: str = "cached",
    ):
        super().__init__()
        if reference not in REFERENCES:
            raise ValueError(f"reference={reference!r}: choose from {', '.join(REFERENCES)}")
        _check_loss(loss, label_smoothing)
        self.policy = disable_dropout(policy)  # the reference's passes run without it too
        self.beta, self.loss, self.label_smoothing, self.reference_mode = beta, loss, label_smoothing, reference
        lora = any(isinstance(m, LoRALinear) for m in policy.modules())
        self.reference = None
        if reference == "live" and lora:
            _check_fresh_adapters(policy)
        elif reference == "live":
            # A registered submodule, so .to(device) and checkpoints carry it; frozen, so the
            # optimizer (which takes only trainable parameters) never touches it.
            self.reference = copy.deepcopy(policy).requires_grad_(False).eval()

    @classmethod
    def from_config(cls, policy: PreTrainedModel, cfg: DpoConfig) -> DirectPreference:
        return cls(policy, beta=cfg.beta, loss=cfg.loss, label_smoothing=cfg.label_smoothing, reference=cfg.reference)

    def forward(self, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ratios = response_logprobs(self.policy, batch) - self.reference_logps(batch)  # (2B,)
        chosen, rejected = ratios[: batch.n_pairs], ratios[batch.n_pairs :]
        losses = pair_losses(chosen, rejected, beta=self.beta, loss=self.loss, label_smoothing=self.label_smoothing)
        return losses.sum(), pair_stats(chosen, rejected, self.beta)

    def reference_logps(self, batch: PairBatch) -> torch.Tensor:
        """log π_ref of every row of the batch (chosen rows, then rejected), without gradient."""
        if self.reference_mode == "cached":
            if batch.ref_logps is None:
                raise ValueError(
                    "reference='cached' but the batch has no reference log-probs: build the examples "
                    "with gptpipe.train.dpo.reference_logprobs, or use reference='live'"
                )
            return batch.ref_logps
        with torch.no_grad():
            if self.reference is not None:
                return response_logprobs(self.reference, batch)
            with adapters_disabled(self.policy), _eval_mode(self.policy):
                return response_logprobs(self.policy, batch)

    def train(self, mode: bool = True) -> DirectPreference:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference is a fixed function: no dropout, ever
        return self


def _check_fresh_adapters(policy: nn.Module) -> None:
    """With adapters off the model is its base; that is the policy at init only while every B is 0."""
    if any(torch.count_nonzero(m.lora_B) for m in policy.modules() if isinstance(m, LoRALinear)):
        raise ValueError(
            "reference='live' with a LoRA policy: its adapters are already trained (some B != 0), so "
            "the model with adapters off is not the policy at init; merge_lora first, then apply_lora"
        )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# -- the cached reference ---------------------------------------------------------------------------


@torch.no_grad()
def reference_logprobs(
    model: PreTrainedModel, examples: Sequence[PairExample], batch_size: int, runtime: Runtime
) -> list[tuple[float, float]]:
    """(chosen, rejected) log-prob sums of each pair's responses under `model` in eval mode, in input order.

    Pairs are batched in length order (stable). A list already sorted by length, as an eval sample is,
    is thus batched exactly as `evaluate` batches it, so at step 0 the policy's log-probs there equal
    these bit for bit and every margin is exactly 0 (rather than float noise of either sign).
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    result: list[tuple[float, float]] = [(0.0, 0.0)] * len(examples)
    model.to(runtime.device)
    with _eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs", leave=False):
            picked = order[start : start + batch_size]
            batch = collate_pairs([examples[i] for i in picked]).to(runtime.device)
            with autocast(runtime):
                logps = response_logprobs(model, batch).tolist()
            for k, i in enumerate(picked):
                result[i] = (logps[k], logps[len(picked) + k])
    return result


def cache_reference(
    model: PreTrainedModel, plan: StepPlan, eval_sets: dict[str, list[PairExample]], steps: int,
    batch_size: int, runtime: Runtime,
) -> tuple[StepPlan, dict[str, list[PairExample]]]:
    """The plan and eval sets again, their pairs carrying `model`'s log-probs as the reference.

    Only the pairs the first `steps` steps will train on are scored (a 100-step run of 16 pairs
    touches 1,600 of the default's 4,000). Each eval set is scored on its own, in its own order
    (see reference_logprobs). Lengths are unchanged, so the new plan has the same steps.
    """
    planned = {id(e): e for step in range(steps) for micro in plan.micro_batches(step) for e in micro}
    refs = dict(zip(planned, reference_logprobs(model, list(planned.values()), batch_size, runtime), strict=True))
    train_examples = [_with_ref(e, refs[id(e)]) if id(e) in refs else e for e in plan.examples]
    cached = StepPlan(train_examples, plan.batch_size, plan.micro_batch_size, plan.seed)
    sets = {}
    for name, examples in eval_sets.items():
        scored = reference_logprobs(model, examples, batch_size, runtime)
        sets[name] = [_with_ref(e, ref) for e, ref in zip(examples, scored, strict=True)]
    return cached, sets


def _with_ref(example: PairExample, ref: tuple[float, float]) -> PairExample:
    return replace(example, ref_chosen=ref[0], ref_rejected=ref[1])


# -- the stage --------------------------------------------------------------------------------------


def dpo_metrics(
    cfg: DpoConfig, rows: list[dict[str, Any]], trained: dict[str, Any], shape: ModelShape, plan: StepPlan,
    reference_seconds: float,
) -> dict[str, Any]:
    """train()'s figures (final ones unsuffixed) beside the step-0 test figures and the DPO knobs."""
    start = {f"{key}_start": value for key, value in rows[0].items() if key.startswith("test_")}
    metrics = {
        "beta": cfg.beta,
        "loss": cfg.loss,
        "label_smoothing": cfg.label_smoothing,
        "reference": cfg.reference,
        "lora_rank": cfg.lora.rank,
        "parameters": count_params(shape),
        "train_pairs": len(plan.examples),
        "epochs": round(trained["steps"] / plan.steps_per_epoch, 3),
        **start,
        **trained,
        # Scoring the planned pairs with the reference once, outside train()'s timer (cached only).
        "reference_seconds": round(reference_seconds, 2),
    }
    metrics["trainable_fraction"] = round(metrics["trainable_parameters"] / metrics["parameters"], 6)
    return metrics


def curves_title(cfg: DpoConfig) -> str:
    lora = f", LoRA r={cfg.lora.rank}" if cfg.lora.rank else ""
    return f"dpo: {cfg.loss}, β={cfg.beta:g}, {cfg.reference} reference{lora}"
