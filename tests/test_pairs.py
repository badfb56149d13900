"""Preference-pair batches and per-sequence response log-probs (shared by reward models and DPO)."""

import torch

from gptpipe.data.batches import IGNORE, PairExample, collate_pairs, pair_examples
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.objectives import response_logprobs
from gptpipe.data.tokenizer import read_arrow


def pairs() -> list[PairExample]:
    return [
        PairExample([5, 6, 7], [8, 9], [10], 1.0, 2.0),
        PairExample([11], [12, 13, 14, 15], [16, 17], 3.0, 4.0),
    ]


def test_pair_batch_puts_chosen_then_rejected_and_labels_only_responses():
    batch = collate_pairs(pairs())
    assert batch.input_ids.shape == (4, 5) and batch.n_pairs == 2
    assert batch.input_ids[0, :5].tolist() == [5, 6, 7, 8, 9]
    assert batch.input_ids[2, :4].tolist() == [5, 6, 7, 10]  # rejected of pair 0
    assert batch.labels[0].tolist() == [IGNORE] * 3 + [8, 9]
    assert batch.labels[3].tolist() == [IGNORE, 16, 17, IGNORE, IGNORE]
    assert batch.attention_mask.sum(1).tolist() == [5, 5, 4, 3]
    assert batch.ref_logps.tolist() == [1.0, 3.0, 2.0, 4.0]
    assert batch.response_tokens == 2 + 4 + 1 + 2


def test_a_missing_reference_leaves_the_batch_without_one(tokenized):
    examples = pair_examples(read_arrow(tokenized / "test.arrow"))
    assert collate_pairs(examples[:3]).ref_logps is None
    assert len(examples[0]) == 2 * len(examples[0].prompt) + len(examples[0].chosen) + len(examples[0].rejected)


def _reference_logprobs(model, batch) -> torch.Tensor:
    logp = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.log_softmax(-1)
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE
    picked = logp[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(1)


def test_response_logprobs_equal_the_full_softmax_and_its_gradients(tiny_params, monkeypatch):
    import gptpipe.train.objectives as objectives

    monkeypatch.setattr(objectives, "CHUNK_ROWS", 3)  # several chunks, one of them partial
    model = build_scratch(tiny_params.model, 0)
    batch = collate_pairs(pairs())
    ours = response_logprobs(model, batch)
    theirs = _reference_logprobs(model, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])  # rows weighted differently, as DPO does
    (ours * weights).sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (theirs * weights).sum().backward()
    for mine, reference in zip(ours_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=5e-5)  # fp32 summation order
