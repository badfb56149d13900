"""DPO (gptpipe.train.dpo): each loss equals its formula, the policy at init is its reference (loss log 2,
zero margins) whichever way the reference is had, the cached and live references give the same
losses and gradients, a few steps teach the implicit reward to order unseen pairs, and the stage
writes a loadable model, metrics and plots, with LoRA too."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from gptpipe.data.batches import StepPlan, collate_pairs, eval_sample, pair_examples
from gptpipe.config import SharedConfig, parse_params
from gptpipe.train.dpo import DirectPreference, cache_reference, pair_losses, pair_stats, reference_logprobs
from stage_runs import run_dpo
from gptpipe.errors import UserError
from gptpipe.train.flops import ModelShape
from gptpipe.models.lora import LoRALinear, apply_lora
from gptpipe.models.gpt2 import build_scratch, save_model
from gptpipe.train.objectives import response_logprobs
from gptpipe.data.tokenizer import read_arrow
from gptpipe.train.loop import evaluate, train
from gptpipe.train.runtime import make_runtime
from tiny import TINY

BETA = 0.1
CPU = make_runtime(SharedConfig(device="cpu"))
# Picked log-probs of two pairs: (policy chosen, policy rejected, reference chosen, reference rejected).
PAIRS = [(-10.0, -12.0, -11.0, -11.5), (-20.0, -15.0, -18.0, -16.0)]
# By hand: h = (π_c − ref_c) − (π_r − ref_r) = (1 − (−0.5)) = 1.5 and (−2 − 1) = −3.
H = [1.5, -3.0]


def _ratios() -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.tensor([pc - rc for pc, _, rc, _ in PAIRS])
    rejected = torch.tensor([pr - rr for _, pr, _, rr in PAIRS])
    return chosen, rejected


def _dpo_params(**dpo):
    knobs = {"max_steps": 4, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 1, "eval_every": 2,
             "eval_samples": 8, "checkpoint_every": 50, "lr": 3e-3, **dpo}
    return parse_params({**TINY, "dpo": knobs})


@pytest.fixture(scope="module")
def pairs(tokenized):
    return {split: pair_examples(read_arrow(tokenized / f"{split}.arrow")) for split in ("train", "test")}


# -- 1. the losses are their formulas ---------------------------------------------------------------


def test_sigmoid_loss_is_minus_log_sigma_of_beta_h():
    losses = pair_losses(*_ratios(), beta=BETA, loss="sigmoid")
    expected = [-math.log(1 / (1 + math.exp(-BETA * h))) for h in H]  # 0.6201, 0.8544
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_label_smoothing_mixes_in_the_flipped_label():
    eps = 0.2
    losses = pair_losses(*_ratios(), beta=BETA, loss="sigmoid", label_smoothing=eps)
    sigma = [1 / (1 + math.exp(-BETA * h)) for h in H]
    expected = [-(1 - eps) * math.log(s) - eps * math.log(1 - s) for s in sigma]
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_ipo_loss_regresses_the_summed_log_ratio_onto_one_over_two_beta():
    losses = pair_losses(*_ratios(), beta=BETA, loss="ipo")
    expected = [(1.5 - 5.0) ** 2, (-3.0 - 5.0) ** 2]  # 1 / (2 * 0.1) = 5
    torch.testing.assert_close(losses, torch.tensor(expected))


def test_sigmoid_loss_stays_finite_where_sigma_underflows():
    # βh = ±2000: log σ(−2000) is −inf if computed as log(sigmoid(x)); the loss is 2000 and 0.1 * 2000.
    wrong_way = pair_losses(torch.tensor([-1000.0]), torch.tensor([1000.0]), beta=1.0)
    smoothed = pair_losses(torch.tensor([1000.0]), torch.tensor([-1000.0]), beta=1.0, label_smoothing=0.1)
    assert wrong_way.item() == pytest.approx(2000.0)
    assert smoothed.item() == pytest.approx(200.0)


def test_stats_are_sums_of_implicit_rewards_and_a_tie_counts_half():
    chosen, rejected = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-0.5, 1.0, 0.5])
    stats = pair_stats(chosen, rejected, BETA)
    assert stats["chosen_reward"].item() == pytest.approx(BETA * (1.0 - 2.0 + 0.5))
    assert stats["rejected_reward"].item() == pytest.approx(BETA * (-0.5 + 1.0 + 0.5))
    assert stats["margin"].item() == pytest.approx(BETA * (1.5 - 3.0 + 0.0))
    assert stats["accuracy"].item() == 1.5  # right, wrong, tie


@pytest.mark.parametrize("bad, named", [
    ({"loss": "hinge"}, "loss='hinge'"),
    ({"loss": "ipo", "label_smoothing": 0.1}, "applies to loss 'sigmoid' only"),
    ({"label_smoothing": 0.5}, r"must be in \[0, 0.5\)"),
])
def test_bad_loss_settings_are_refused_in_one_line(tiny_params, bad, named):
    with pytest.raises(ValueError, match=named):
        pair_losses(*_ratios(), beta=BETA, **bad)
    with pytest.raises(ValueError, match=named):
        DirectPreference(build_scratch(tiny_params.model, 0), beta=BETA, **bad)


def test_the_objective_computes_the_formula_from_the_models_log_probs(tiny_params, pairs):
    """Through the module: Σ over pairs of the sigmoid formula on response_logprobs and the cached refs."""
    reference = build_scratch(tiny_params.model, 0)
    examples = _with_refs(reference, pairs["test"][:6])
    policy = _perturbed(build_scratch(tiny_params.model, 0))
    batch = collate_pairs(examples)
    with torch.no_grad():
        logps = response_logprobs(policy, batch).tolist()
        loss, _ = DirectPreference(policy, beta=BETA)(batch)
    n = len(examples)
    hs = [(logps[i] - e.ref_chosen) - (logps[n + i] - e.ref_rejected) for i, e in enumerate(examples)]
    assert any(abs(h) > 0.1 for h in hs)  # the policy really differs from its reference
    assert loss.item() == pytest.approx(sum(math.log(1 + math.exp(-BETA * h)) for h in hs), rel=1e-5)


# -- 2. at step 0 the policy is its reference ------------------------------------------------------


@pytest.mark.parametrize("reference", ["cached", "live"])
@pytest.mark.parametrize("lora", [False, True])
def test_at_init_the_loss_is_log_2_and_every_margin_is_zero(tiny_params, pairs, reference, lora):
    model = build_scratch(tiny_params.model, 0)
    cfg = _dpo_params().dpo
    examples = eval_sample(pairs["test"], 12, seed=0)  # sorted by length, batched as evaluate() will
    if reference == "cached":
        examples = _with_refs(model, examples, batch_size=cfg.micro_batch_size)
    if lora:
        torch.manual_seed(0)
        apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=tiny_params.train.lora.targets)
    objective = DirectPreference(model, beta=BETA, reference=reference)
    figures = evaluate(objective, examples, cfg, CPU)
    # Exactly, not approximately: the same numbers meet in the same batches.
    assert figures["margin"] == figures["chosen_reward"] == figures["rejected_reward"] == 0.0
    assert figures["accuracy"] == 0.5
    assert figures["loss"] == pytest.approx(math.log(2), abs=1e-7)
    # A training forward (train mode, other batches than the cached ones) is log 2 up to float noise.
    loss, _ = objective.train()(collate_pairs(examples[::2]))
    assert loss.item() / len(examples[::2]) == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("reference", ["cached", "live"])
@pytest.mark.parametrize("lora", [False, True])
def test_a_model_with_dropout_trains_against_its_reference_without_it(tiny_params, pairs, reference, lora):
    # Hub GPT-2 has dropout 0.1 (attention, residual, embedding). The policy's training forward (train
    # mode) must see what the reference saw (eval mode): log-ratios exactly 0 at step 0.
    model = build_scratch(tiny_params.model.model_copy(update={"dropout": 0.1}), 0)
    examples = eval_sample(pairs["test"], 8, seed=0)
    if reference == "cached":
        examples = _with_refs(model, examples, batch_size=len(examples))  # the batch trained on below
    if lora:
        torch.manual_seed(0)
        apply_lora(model, rank=4, alpha=8.0, dropout=0.1, targets=tiny_params.train.lora.targets)
    objective = DirectPreference(model, beta=BETA, reference=reference).train()
    _, stats = objective(collate_pairs(examples))
    assert stats["chosen_reward"].item() == 0.0 and stats["rejected_reward"].item() == 0.0


# -- 3. cached and live references: the same losses and gradients ----------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_cached_and_live_references_give_the_same_losses_and_gradients(tiny_params, pairs, lora):
    model = build_scratch(tiny_params.model, 0)
    examples = _with_refs(model, pairs["train"][:8])
    if lora:
        torch.manual_seed(0)
        apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=tiny_params.train.lora.targets)
    live = DirectPreference(model, beta=BETA, reference="live")  # the reference is frozen here
    cached = DirectPreference(model, beta=BETA, reference="cached")  # the same policy
    _perturbed(model, only_lora=lora)  # so the policy is no longer its reference: h != 0
    batch = collate_pairs(examples)
    results = []
    for objective in (cached, live):
        model.zero_grad(set_to_none=True)
        loss, stats = objective.train()(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss, stats["margin"], grads))
    (loss_c, margin_c, grads_c), (loss_l, margin_l, grads_l) = results
    assert abs(margin_c.item()) > 0.01
    torch.testing.assert_close(loss_c, loss_l, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(margin_c, margin_l, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_l.keys() and len(grads_c) > 0
    assert all(name.endswith(("lora_A", "lora_B")) for name in grads_c) == lora
    for name in grads_c:
        torch.testing.assert_close(grads_c[name], grads_l[name], rtol=1e-4, atol=1e-6, msg=name)
    if not lora:  # a frozen copy, which stays in eval mode when the objective trains
        assert not any(p.requires_grad for p in live.reference.parameters()) and not live.reference.training
    else:  # no copy: the same model with its adapters off
        assert live.reference is None


def test_only_the_pairs_the_run_will_train_on_get_a_cached_reference(tiny_params, pairs):
    model = build_scratch(tiny_params.model, 0)
    plan = StepPlan(pairs["train"], 8, 4, seed=0)
    eval_sets = {"test": eval_sample(pairs["test"], 6, seed=0)}
    cached, sets = cache_reference(model, plan, eval_sets, 3, 8, CPU)
    steps = [cached.micro_batches(step) for step in range(3)]
    same_pairs = [[[(e.prompt, e.chosen) for e in micro] for micro in plan.micro_batches(step)] for step in range(3)]
    assert [[[(e.prompt, e.chosen) for e in micro] for micro in step] for step in steps] == same_pairs
    assert all(collate_pairs(micro).ref_logps is not None for step in steps for micro in step)
    assert sum(e.ref_chosen is not None for e in cached.examples) == 3 * 8  # not the other steps'
    assert [len(e) for e in cached.examples] == [len(e) for e in plan.examples]
    assert all(e.ref_chosen is not None for e in sets["test"]) and len(sets["test"]) == 6


def test_a_cached_objective_refuses_a_batch_without_reference_log_probs(tiny_params, pairs):
    objective = DirectPreference(build_scratch(tiny_params.model, 0), beta=BETA)
    with pytest.raises(ValueError, match="no reference log-probs"):
        objective(collate_pairs(pairs["test"][:2]))


def test_a_live_lora_reference_needs_fresh_adapters(tiny_params):
    model = apply_lora(build_scratch(tiny_params.model, 0), rank=2, alpha=2.0, dropout=0.0,
                       targets=tiny_params.train.lora.targets)
    _perturbed(model, only_lora=True)
    with pytest.raises(ValueError, match="already trained"):
        DirectPreference(model, beta=BETA, reference="live")


# -- 4. training orders unseen pairs ---------------------------------------------------------------


def test_a_few_steps_raise_test_accuracy_and_margin(tiny_params, pairs, tmp_path):
    """The synthetic data's rejected answers are worse in ways a model can see (rude, wrong, off
    topic): ten steps of DPO from a random init already order most held-out pairs."""
    cfg = _dpo_params(max_steps=10, eval_every=10, eval_samples=48, lr=3e-3).dpo
    model = build_scratch(tiny_params.model, 0)
    plan = StepPlan(pairs["train"], cfg.batch_size, cfg.micro_batch_size, seed=0)
    eval_sets = {"test": eval_sample(pairs["test"], cfg.eval_samples, seed=0)}
    plan, eval_sets = cache_reference(model, plan, eval_sets, cfg.max_steps, cfg.micro_batch_size, CPU)
    state, metrics = train(
        DirectPreference.from_config(model, cfg), plan, eval_sets, cfg, CPU, seed=0,
        checkpoint=tmp_path / "ckpt.pt", shape=ModelShape.from_config(model.config),
    )
    first, last = state.rows[0], state.rows[-1]
    assert first["test_accuracy"] == 0.5 and first["test_margin"] == 0.0
    assert last["test_accuracy"] >= 0.7
    assert last["test_margin"] > 0.1
    assert last["test_loss"] < math.log(2) - 0.03
    assert metrics["test_accuracy"] == last["test_accuracy"]


# -- 5. the stage -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lora_rank, reference", [(0, "cached"), (4, "live")])
def test_run_dpo_writes_a_loadable_model_metrics_and_plots(tiny_params, tokenized, tmp_path, lora_rank, reference):
    sft = tmp_path / "models" / "sft"
    save_model(build_scratch(tiny_params.model, 0), sft)
    params = _dpo_params(reference=reference, lora={"rank": lora_rank, "alpha": 8.0})
    out, metrics_path, plots = tmp_path / "models" / "dpo", tmp_path / "dpo.json", tmp_path / "plots"
    metrics = run_dpo(params, tokenized, sft, out, metrics_path, plots)

    assert json.loads(metrics_path.read_text()) == metrics
    assert metrics["test_accuracy_start"] == 0.5 and metrics["test_margin_start"] == 0.0
    assert metrics["test_margin"] != 0.0 and metrics["steps"] == 4
    assert (metrics["beta"], metrics["loss"], metrics["reference"], metrics["lora_rank"]) == (params.dpo.beta, "sigmoid", reference, lora_rank)
    assert (metrics["trainable_fraction"] < 0.1) == bool(lora_rank)
    rows = (plots / "loss.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert header[:4] == ["step", "tokens", "flops", "lr"]
    assert {"train_loss", "test_loss", "test_accuracy", "test_margin", "test_chosen_reward"} <= set(header)
    assert [r.split("\t")[0] for r in rows[1:]] == ["0", "2", "4"]
    assert (plots / "curves.png").read_bytes()[:4] == b"\x89PNG"

    trained = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, LoRA merged in
    start = AutoModelForCausalLM.from_pretrained(sft)
    assert not any(isinstance(m, LoRALinear) for m in trained.modules())
    changed = [n for (n, p), q in zip(trained.named_parameters(), start.parameters(), strict=True) if not torch.equal(p, q)]
    assert changed  # it trained, and the trained weights are what was saved
    assert (out / "adapter").is_dir() == bool(lora_rank)


def test_run_dpo_without_an_sft_model_names_the_stage_to_run(tiny_params, tokenized, tmp_path):
    with pytest.raises(UserError, match="run the sft stage"):
        run_dpo(_dpo_params(), tokenized, tmp_path / "missing", tmp_path / "out", tmp_path / "m.json", tmp_path / "p")
    assert not (tmp_path / "out").exists()


# -- helpers ----------------------------------------------------------------------------------------


def _with_refs(model, examples, batch_size: int = 8):
    """The examples carrying `model`'s log-probs as their cached reference."""
    refs = reference_logprobs(model, examples, batch_size, CPU)
    return [type(e)(e.prompt, e.chosen, e.rejected, c, r) for e, (c, r) in zip(examples, refs, strict=True)]


def _perturbed(model, only_lora: bool = False):
    """In place: seeded noise on the trainable weights (on B too, which LoRA starts at 0)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only_lora and not name.endswith(("lora_A", "lora_B")):
                continue
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model
