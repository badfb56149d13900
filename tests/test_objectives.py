import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from gptpipe.data.batches import IGNORE, LMExample, collate, epoch_plan
from gptpipe.train.lm_head import linear_cross_entropy
from gptpipe.train.objectives import LanguageModelling


def tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)  # no dropout: two forward passes must see the same network


def examples() -> list[LMExample]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for n_prompt, n_response in [(5, 3), (9, 4), (2, 7), (12, 1)]:
        ids = torch.randint(0, 300, (n_prompt + n_response,), generator=g).tolist()
        rows.append(LMExample(ids=ids, first_target=n_prompt))
    return rows


def test_collate_masks_every_prompt_token_and_padding():
    batch = collate(examples())
    for row, example in enumerate(examples()):
        labels = batch.labels[row].tolist()
        assert all(x == IGNORE for x in labels[: example.first_target])
        assert labels[example.first_target : len(example)] == example.ids[example.first_target :]
        assert all(x == IGNORE for x in labels[len(example) :])
        assert batch.attention_mask[row].sum().item() == len(example)
    assert batch.weight == sum(e.n_targets for e in examples())


def test_loss_counts_response_tokens_only():
    model = tiny_model()
    batch = collate(examples())
    loss_sum, _ = LanguageModelling(model)(batch)
    # Reference: full logits from the HF model, cross-entropy summed over response targets only.
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = 0.0
    for row, example in enumerate(examples()):
        for t in range(example.first_target, len(example)):
            expected += F.cross_entropy(logits[row, t - 1], torch.tensor(example.ids[t])).item()
    assert abs(loss_sum.item() - expected) < 1e-4 * batch.weight
    # And it equals transformers' own masked loss (a mean over the same tokens).
    hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    assert torch.allclose(loss_sum / batch.weight, hf, atol=1e-5)


def test_prompt_targets_do_not_change_the_loss_but_context_does():
    model = tiny_model()
    objective = LanguageModelling(model)
    base = collate(examples())
    loss, _ = objective(base)
    # Replacing the last prompt token changes the context of the first response token: loss moves.
    changed = [LMExample(e.ids[: e.first_target - 1] + [7] + e.ids[e.first_target - 1 :][1:], e.first_target) for e in examples()]
    assert not torch.allclose(objective(collate(changed))[0], loss)
    # Changing a prompt token's *target* role (making it the first response token) changes the
    # loss by exactly that token's cross-entropy: prompt targets contribute nothing.
    longer = [LMExample(e.ids, e.first_target - 1) for e in examples()]
    extra, _ = objective(collate(longer))
    logits = model(input_ids=base.input_ids, attention_mask=base.attention_mask).logits
    first = sum(
        F.cross_entropy(logits[row, e.first_target - 2], torch.tensor(e.ids[e.first_target - 1])).item()
        for row, e in enumerate(examples())
    )
    assert abs(extra.item() - loss.item() - first) < 1e-3


def test_fused_head_loss_and_gradients_equal_autograd():
    torch.manual_seed(0)
    hidden = torch.randn(300, 24, requires_grad=True)  # more rows than one chunk
    weight = torch.randn(500, 24, requires_grad=True)
    targets = torch.randint(0, 500, (300,))
    reference = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    ref_grads = torch.autograd.grad(reference * 0.3, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, targets)
    grads = torch.autograd.grad(fused * 0.3, (hidden, weight))
    assert torch.allclose(fused, reference, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5)


def test_fused_head_with_a_frozen_weight_gives_the_hidden_gradient_only():
    # LoRA freezes the tied embedding: dW is not built, dh is still autograd's.
    torch.manual_seed(1)
    hidden = torch.randn(300, 24, requires_grad=True)
    weight = torch.randn(500, 24)
    targets = torch.randint(0, 500, (300,))
    (want,) = torch.autograd.grad(F.cross_entropy(hidden @ weight.T, targets, reduction="sum"), (hidden,))
    fused = linear_cross_entropy(hidden, weight, targets)
    (got,) = torch.autograd.grad(fused, (hidden,))
    assert torch.allclose(got, want, atol=1e-5) and weight.grad is None


def test_fused_head_under_no_grad_gives_the_same_loss_and_keeps_no_graph():
    torch.manual_seed(2)
    hidden = torch.randn(300, 24, requires_grad=True)
    weight = torch.randn(500, 24, requires_grad=True)
    targets = torch.randint(0, 500, (300,))
    with_grad = linear_cross_entropy(hidden, weight, targets)
    with torch.no_grad():
        without = linear_cross_entropy(hidden, weight, targets)
    assert torch.allclose(without, with_grad.detach(), rtol=1e-6) and without.grad_fn is None


def test_fused_head_loss_stays_exact_where_the_target_probability_underflows():
    # Confident wrong predictions: p[target] = exp(-~200) is 0 in float32, the loss is ~200 per row,
    # not inf; the gradient is still softmax - onehot.
    torch.manual_seed(3)
    hidden = (torch.randn(300, 24) * 40).requires_grad_()
    weight = torch.randn(500, 24, requires_grad=True)
    targets = torch.randint(0, 500, (300,))
    logits = hidden @ weight.T
    assert (logits.softmax(-1)[torch.arange(300), targets] == 0).sum() > 50  # the case is exercised
    reference = F.cross_entropy(logits, targets, reduction="sum")
    ref_grads = torch.autograd.grad(reference, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, targets)
    grads = torch.autograd.grad(fused, (hidden, weight))
    assert torch.isfinite(fused) and torch.allclose(fused, reference, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("branch_free", [False, True])
def test_both_ways_of_handling_an_underflowed_target_give_the_exact_loss(branch_free):
    # The CPU tests for underflow and fixes those rows; CUDA (no host sync) selects between the two
    # losses for every row. Both must equal logsumexp - logit on rows on either side of the cut.
    from gptpipe.train.lm_head import _target_nll

    torch.manual_seed(4)
    logits = torch.randn(64, 300) * torch.linspace(1, 60, 64)[:, None]  # mild rows to ones far past it
    targets = torch.randint(0, 300, (64,))
    probs = logits.softmax(-1)[torch.arange(64), targets]
    assert (probs == 0).any() and (probs > 1e-3).any()
    want = F.cross_entropy(logits, targets, reduction="none")
    got = _target_nll(logits, probs, targets, branch_free=branch_free)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_objective_gradients_equal_transformers_loss_gradients():
    # The tied embedding gets gradient from both the input lookup and the fused head.
    ours, theirs = tiny_model(), tiny_model()
    batch = collate(examples())
    loss_sum, _ = LanguageModelling(ours)(batch)
    (loss_sum / batch.weight).backward()
    theirs(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss.backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_epoch_plan_uses_each_example_once_in_full_steps_with_little_padding():
    lengths = [int(x) for x in torch.randint(10, 200, (1000,), generator=torch.Generator().manual_seed(0))]
    plan = epoch_plan(lengths, batch_size=16, micro_batch_size=4, seed=0, epoch=0)
    seen = [i for step in plan for micro in step for i in micro]
    assert len(seen) == len(set(seen)) == 1000 // 16 * 16
    assert all(len(step) == 4 and all(len(m) == 4 for m in step) for step in plan)
    padded = sum(len(m) * max(lengths[i] for i in m) for step in plan for m in step)
    real = sum(lengths[i] for i in seen)
    assert padded / real < 1.05  # random batches of these lengths pad ~50%
    assert plan != epoch_plan(lengths, 16, 4, seed=0, epoch=1)  # a new order every epoch
    assert plan == epoch_plan(lengths, 16, 4, seed=0, epoch=0)  # and the same on a rerun
