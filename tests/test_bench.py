"""Tests for gptpipe.train.bench: the two sides of the Trainer comparison do the same work.

No timing is asserted (machines are noisy); what is checked is what makes the timing a fair
comparison: the same losses and gradients on the same batches, the same tokens per step, and a
timed window that skips the warm-up steps on both sides.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from gptpipe.data.batches import IGNORE, StepPlan, collate
from gptpipe.train.bench import (
    PadToLongest,
    as_example,
    compare_with_trainer,
    hf_features,
    loss_parity,
    sft_examples,
)
from gptpipe.config import GenerateConfig, ModelConfig, Params, SharedConfig, SftConfig, TokenizeConfig
from gptpipe.models.gpt2 import build_scratch
from gptpipe.data.tokenizer import EOT_ID, write_arrow

TINY = Params(
    shared=SharedConfig(device="cpu"),
    tokenize=TokenizeConfig(max_length=64),
    model=ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64),
    # Two micro-batches per step, so the per-step grouping of HF's batches is exercised too.
    train=SftConfig(batch_size=4, micro_batch_size=2, max_steps=10, warmup_steps=1, eval_samples=8),
    generate=GenerateConfig(max_new_tokens=16),  # leaves the 64 positions room for a prompt
)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train.arrow of 48 pairs with prompts of 3-30 tokens and responses of 2-12 (EOT last)."""
    rng = random.Random(0)
    prompts = [[rng.randrange(50000) for _ in range(rng.randint(3, 30))] for _ in range(48)]
    chosen = [[rng.randrange(50000) for _ in range(rng.randint(1, 11))] + [EOT_ID] for _ in range(48)]
    ids = pa.list_(pa.int32())
    table = pa.table(
        {
            "id": [str(i) for i in range(48)],
            "prompt_ids": pa.array(prompts, ids),
            "chosen_ids": pa.array(chosen, ids),
            "rejected_ids": pa.array(chosen, ids),
        }
    )
    folder = tmp_path_factory.mktemp("tokenized")
    write_arrow(table, folder / "train.arrow")
    return folder


@pytest.mark.parametrize("loss_on", ["response", "assistant_turns", "all"])
def test_hf_batch_holds_gptpipe_batch(tokenized: Path, loss_on: str) -> None:
    """HF's collated labels mask exactly the positions gptpipe's loss skips; padding aside, same ids."""
    examples = sft_examples(tokenized, loss_on)
    batch = examples[:6]
    ours = collate(batch)
    theirs = PadToLongest()([hf_features(e) for e in batch])
    assert torch.equal(theirs["attention_mask"], ours.attention_mask)
    assert torch.equal(theirs["labels"], ours.labels)
    real = ours.attention_mask.bool()
    assert torch.equal(theirs["input_ids"][real], ours.input_ids[real])
    assert (ours.labels[:, 0] == IGNORE).all()  # HF's shift never scores position 0: nor must we
    assert [as_example(hf_features(e)) for e in batch] == batch  # the replay gets back the examples


@pytest.mark.parametrize("loss_on", ["response", "assistant_turns", "all"])
def test_loss_and_gradients_match_hf_on_identical_batches(tokenized: Path, loss_on: str) -> None:
    examples = sft_examples(tokenized, loss_on)
    plan = StepPlan(examples, 4, 4, seed=1)
    batches = [plan.micro_batches(step)[0] for step in range(4)]
    assert any(len({len(e) for e in b}) > 1 for b in batches)  # padding is present, and masked
    gptpipe_model, hf_model = build_scratch(TINY.model, 7), build_scratch(TINY.model, 7)

    rows = loss_parity(gptpipe_model, hf_model, batches)

    for row, batch in zip(rows, batches, strict=True):
        assert row.relative_diff < 1e-5
        assert row.grad_relative_diff < 1e-5
        assert row.gptpipe_tokens == row.hf_tokens == sum(len(e) for e in batch)
        assert row.gptpipe_loss_positions == row.hf_loss_positions == sum(e.n_targets for e in batch)
    # Near-uniform predictions of a fresh model: the per-token loss is about ln(vocab).
    assert rows[0].hf_loss == pytest.approx(torch.log(torch.tensor(50257.0)).item(), rel=0.05)


def test_parity_detects_a_different_model(tokenized: Path) -> None:
    examples = sft_examples(tokenized, "response")
    rows = loss_parity(build_scratch(TINY.model, 7), build_scratch(TINY.model, 8), [examples[:4]])
    assert rows[0].relative_diff > 1e-5 or rows[0].grad_relative_diff > 1e-5


def test_both_sides_time_the_same_steps_after_warmup(tokenized: Path, capsys: pytest.CaptureFixture) -> None:
    result = compare_with_trainer(TINY, tokenized, steps=3)

    ours, theirs = result["gptpipe"], result["hf"]
    assert ours["steps"] == theirs["steps"] == 3
    assert ours["sequences"] == theirs["sequences"] == 3 * TINY.train.batch_size
    # gptpipe replays HF's steps from step 0 and each side skips 2 warm-up steps: if either window were
    # off by a step, the per-step token counts would differ (the 48 sequences have varied lengths).
    assert result["same_step_tokens"]
    assert ours["step_tokens"] == theirs["step_tokens"]
    assert ours["loss_positions"] == theirs["loss_positions"]
    assert ours["model_flops"] == theirs["model_flops"]  # one FLOPs count for both MFUs
    assert len(ours["step_seconds"]) == len(theirs["step_seconds"]) == 3
    assert min(ours["step_seconds"] + theirs["step_seconds"]) > 0
    assert result["loss_parity"]["max_relative_diff"] < 1e-5
    assert "ratio gptpipe/HF" in capsys.readouterr().out


def test_a_sides_totals_equal_hand_counts_and_its_flops_the_flop_counters() -> None:
    """`summed` on work counted by hand, its FLOPs against FlopCounterMode on the real model."""
    from torch.utils.flop_counter import FlopCounterMode

    from gptpipe.train.bench import StepCount, summed
    from gptpipe.train.flops import ModelShape

    steps = [[StepCount([5, 3], 4, 5)], [StepCount([7], 6, 7), StepCount([2, 2], 2, 2)]]
    marks = [10.0, 10.5, 12.0]  # the clock at each step's start, and at the end
    model = build_scratch(TINY.model, 0)
    side = summed("gptpipe", steps, marks, ModelShape.from_config(model.config), peak=1e9)
    assert (side.steps, side.sequences, side.tokens, side.padded_tokens, side.loss_positions) == (2, 5, 19, 21, 12)
    assert side.step_tokens == [8, 11] and side.step_seconds == pytest.approx([0.5, 1.5])
    assert side.tokens_per_s == pytest.approx(19 / 2.0)
    # Ground truth: each sequence through the body alone (no padding), the head on the loss positions.
    model.config._attn_implementation = "eager"  # FlopCounterMode has no formula for SDPA's CPU kernel
    counter = FlopCounterMode(display=False)
    with counter:
        for count in (c for step in steps for c in step):
            hidden = torch.cat([model.transformer(input_ids=torch.zeros((1, n), dtype=torch.long)).last_hidden_state[0]
                                for n in count.seq_lens])  # (tokens, d)
            model.lm_head(hidden[: count.loss_positions]).sum().backward()
    assert side.model_flops == pytest.approx(counter.get_total_flops(), rel=1e-9)
    assert side.mfu == pytest.approx(counter.get_total_flops() / 2.0 / 1e9, rel=1e-9)
