"""Losses, each an nn.Module around the model(s) it trains: the training loop calls
`objective.collate(examples)` to build a batch and `objective(batch)` to get back (summed loss, stats).
The loop divides by the step's total weight, so the loss is a mean over the whole step however it is
cut into micro-batches. Stats are sums too (e.g. correctly ordered pairs); evaluation divides them by
the same weight.

Wrapping the model in its objective is what lets DDP see one module whose forward computes the
loss (DDP's gradient hooks need the forward to go through the wrapper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from dataclasses import replace

from gptpipe.data.batches import IGNORE, Batch, PairBatch, collate, collate_pairs
from gptpipe.models.reward import sequence_rewards
from gptpipe.train.lm_head import CHUNK_ROWS, linear_cross_entropy


class LanguageModelling(nn.Module):
    """Next-token cross-entropy on the counted positions (response tokens, or all).

    The LM head is applied only where the loss is counted: in a small GPT-2 the 50,257-way head is
    most of the compute, and on SFT data most positions are prompt tokens whose logits are unused.
    """

    collate = staticmethod(collate)

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        hidden = self.model.base_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state  # (B, T, d)
        targets = batch.labels[:, 1:]  # position t predicts token t + 1
        counted = targets != IGNORE  # (B, T-1)
        head = self.model.get_output_embeddings()
        if head.bias is not None:  # GPT-2's head has none; the fused path assumes that
            logits = head(hidden[:, :-1][counted])  # (M, V)
            return F.cross_entropy(logits.float(), targets[counted], reduction="sum"), {}
        loss_sum = linear_cross_entropy(hidden[:, :-1][counted], head.weight, targets[counted])
        return loss_sum, {}


def response_logprobs(model: PreTrainedModel, batch) -> torch.Tensor:
    """Σ log p(token | earlier tokens) over each row's labelled (response) tokens: (rows,).

    The per-token log-probs go through the 50,257-way head in chunks of CHUNK_ROWS rows, each under
    activation checkpointing: the chunk's logits are recomputed in the backward pass instead of kept,
    so memory stays at one chunk (the price: the head's forward runs twice). Unlike the summed loss of
    `linear_cross_entropy`, preference losses weight every sequence differently, so the gradient per
    row is not known in the forward pass and cannot be folded in early.
    """
    hidden = model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).last_hidden_state
    targets = batch.labels[:, 1:]
    counted = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[counted]
    h, t = hidden[:, :-1][counted], targets[counted]
    head = model.get_output_embeddings()
    pieces = []
    for start in range(0, h.shape[0], CHUNK_ROWS):
        chunk = (h[start : start + CHUNK_ROWS], t[start : start + CHUNK_ROWS])
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_token_logprobs, *chunk, head.weight, head.bias, use_reentrant=False))
        else:
            pieces.append(_token_logprobs(*chunk, head.weight, head.bias))
    token_logps = torch.cat(pieces) if pieces else h.new_zeros(0)
    return torch.zeros(targets.shape[0], dtype=torch.float32, device=h.device).index_add(0, rows, token_logps)


def _token_logprobs(h: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(h, weight, bias).float()
    return -F.cross_entropy(logits, t, reduction="none")


def disable_dropout(model: nn.Module) -> nn.Module:
    """Every dropout of the model at p = 0, in train mode too (what TRL's DPO and reward trainers do).

    A preference loss compares two forward passes: DPO the policy's log-probs with the reference's
    (computed in eval mode), the reward loss two responses' scores. With dropout on, each pass drops
    other units, so log π − log π_ref is noise summed over every response token, nonzero at step 0.
    Hub GPT-2 has dropout 0.1 (attention, residual, embedding); the saved config keeps it, so a model
    trained further from these weights gets the hub's regularisation back."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


class BradleyTerry(nn.Module):
    """−log σ(r(chosen) − r(rejected)) summed over pairs; stats: correctly ordered pairs, margins."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = disable_dropout(model)

    @staticmethod
    def collate(examples) -> PairBatch:
        # A scalar head, not the 50,257-way LM head: no head positions in the FLOP count.
        return replace(collate_pairs(examples), response_tokens=0)

    def forward(self, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rewards = sequence_rewards(self.model, batch.input_ids, batch.attention_mask)
        chosen, rejected = rewards[: batch.n_pairs], rewards[batch.n_pairs :]
        margin = chosen - rejected
        # A tie counts half, as in DPO's accuracy and the AUC: it orders the pair neither way.
        accuracy = (margin > 0).sum() + 0.5 * (margin == 0).sum()
        return bradley_terry_loss(chosen, rejected), {"accuracy": accuracy.detach(), "margin": margin.sum().detach()}


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Σ −log σ(r_chosen − r_rejected) over pairs (logsigmoid: no overflow for large margins)."""
    return -F.logsigmoid(chosen - rejected).sum()
