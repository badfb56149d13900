"""Cross-entropy through the LM head, chunked, without keeping the logits.

In a small GPT-2 the 50,257-way head is most of the work and most of the memory: the logits of M
positions are an (M, V) fp32 tensor (880 positions: 177 MB), kept for the backward pass, allocated
and freed every step (on Linux glibc hands such blocks to mmap, and the page faults alone cost ~15%
of a step here). This computes the loss and its gradients chunk by chunk in the forward pass:
per chunk, logits = h Wᵀ, p = softmax(logits), loss = -log p[target], dlogits = p - onehot(target),
dh = dlogits W, dW += dlogitsᵀ h. The backward pass only scales the stored dh and dW. Same FLOPs as autograd
(2MdV forward, 4MdV backward), but peak memory of one chunk, reused across chunks and steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per chunk: 128 × 50,257 fp32 logits is 25.7 MB, below glibc's 32 MB mmap threshold cap, so
# the chunk's buffers are recycled from the heap instead of being mapped and unmapped.
CHUNK_ROWS = 128


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # hidden (M, d), weight (V, d), targets (M,) → summed loss ()
        # Only the gradients something will ask for: a frozen head (LoRA: the tied embedding) needs
        # no dW, which is half of the head's backward work.
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        needs_grad = wants_hidden or wants_weight
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants_weight else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            h = hidden[start : start + CHUNK_ROWS]
            t = targets[start : start + CHUNK_ROWS]
            logits = (h @ weight.T).float()  # (C, V)
            if not needs_grad:
                loss += F.cross_entropy(logits, t, reduction="sum")
                continue
            rows = torch.arange(t.shape[0], device=t.device)
            # One softmax gives both the loss (-log p[target]) and its gradient (p - onehot): half
            # the passes over the (C, V) block of cross_entropy followed by a softmax.
            probs = logits.softmax(dim=-1)
            loss += _target_nll(logits, probs[rows, t], t).sum()
            probs[rows, t] -= 1.0
            dlogits = probs.to(h.dtype)  # in bf16 autocast: the matmuls' dtype
            if wants_hidden:
                grad_hidden[start : start + CHUNK_ROWS] = dlogits @ weight
            if wants_weight:
                grad_weight.addmm_(dlogits.T.float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_h = grad_hidden * grad_loss if ctx.needs_input_grad[0] else None
        grad_w = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ cross_entropy(hidden @ weight.T, targets) over rows, with the gradients autograd would give."""
    if not torch.is_grad_enabled():
        # Evaluation: a Function's forward sees needs_input_grad from requires_grad alone, even under
        # no_grad, and would compute softmax, dh and dW for nothing (3x the work of the loss).
        return _chunked_loss(hidden, weight, targets)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets)


# Below this a float32 probability has lost its precision to underflow (the smallest normal is
# ~1.2e-38): such rows take their loss from logsumexp instead of the log of the softmax.
_SMALLEST_TRUSTED_PROB = 1e-30


def _target_nll(logits: torch.Tensor, target_probs: torch.Tensor, targets: torch.Tensor,
                branch_free: bool | None = None) -> torch.Tensor:
    """-log p[target] per row, from the softmax where it is exact and from the logits where the
    target's probability underflowed (a confident wrong prediction: the loss there is large, not inf).

    branch_free (default: on CUDA): take logsumexp over every row and select, instead of testing for
    underflow first. On a GPU the test would stop the host for a device sync at every chunk, which
    costs more than the extra pass; on the CPU the pass costs more than the test."""
    nll = -target_probs.log()
    underflowed = target_probs < _SMALLEST_TRUSTED_PROB
    if logits.is_cuda if branch_free is None else branch_free:
        exact = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)
        return torch.where(underflowed, exact, nll)
    if underflowed.any():
        rows = underflowed.nonzero().squeeze(1)
        exact = torch.logsumexp(logits[rows], dim=-1) - logits[rows, targets[rows]]
        nll = nll.index_put((rows,), exact)
    return nll


def _chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], CHUNK_ROWS):
        logits = (hidden[start : start + CHUNK_ROWS] @ weight.T).float()  # (C, V)
        loss += F.cross_entropy(logits, targets[start : start + CHUNK_ROWS], reduction="sum")
    return loss
