"""`gptpipe bench gpu`'s code path on the CPU: the figures it reports, checked against independent
counts (FlopCounterMode, the batches' own masks, the profiler's operator names)."""

import json

import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from gptpipe.cli import app
from gptpipe.config import SharedConfig
from gptpipe.data.batches import collate, lm_examples
from gptpipe.data.tokenizer import read_arrow
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train import flops
from gptpipe.train.gpu_profile import OPTIMIZERS, TimedPlan, loop_config, model_config, op_profile, train_plan
from gptpipe.train.objectives import LanguageModelling
from gptpipe.train.runtime import make_runtime

CPU = SharedConfig(device="cpu", dtype="float32")


def test_the_tokens_and_flops_it_attributes_are_what_ran(tokenized):
    # Two SFT steps through the real loop; then the same handed-out batches re-run under
    # FlopCounterMode (forward and backward) and their real tokens counted off the attention mask.
    runtime = make_runtime(CPU)
    model = build_scratch(model_config("2x64"), CPU.seed)
    shape = flops.ModelShape.from_config(model.config)
    cfg = loop_config(4, 3)
    plan = TimedPlan(lm_examples(read_arrow(tokenized / "train.arrow"), "response", ("chosen",)), cfg, CPU.seed, runtime.device)
    train_plan(LanguageModelling(model), plan, cfg, runtime, CPU.seed, shape)
    assert len(plan.starts) == len(plan.handed) == 3  # one start noted per step, before the step
    tokens, attributed = plan.work(range(1, 3), collate, shape)
    batches = [collate(m) for step in (1, 2) for m in plan.handed[step]]
    assert tokens == sum(int(b.attention_mask.sum()) for b in batches)
    # Eager attention for the count: FlopCounterMode has no formula for SDPA's CPU kernel.
    model.config._attn_implementation = "eager"
    # The head unfused, as a plain Linear on the counted positions: the fused head's in-place addmm_
    # has no formula in FlopCounterMode.
    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches:
            hidden = model.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            targets = batch.labels[:, 1:]
            counted = targets != -100
            logits = model.lm_head(hidden[:, :-1][counted])  # (M, V)
            torch.nn.functional.cross_entropy(logits, targets[counted], reduction="sum").backward()
    # The attribution charges each sequence at its own length; the counter also counts the batch's
    # pad positions, so it may only exceed the attribution, by the padding's share.
    padded = sum(b.input_ids.numel() for b in batches)
    ratio = attributed / counter.get_total_flops()
    assert tokens / padded - 0.05 <= ratio <= 1.0 + 1e-9, (ratio, tokens / padded)


def test_the_operator_table_holds_the_operators_an_sft_step_runs(tokenized, capsys):
    row = op_profile(tokenized, CPU, "2x64", batch=2, steps=1, warmup=1)
    top = row["top_device_ms"]
    # The fused LM head's matmuls (mm) are most of a tiny GPT-2's step; GPT-2's Conv1D layers run
    # addmm, which the printed table (14 rows of the same profile) holds.
    assert "aten::mm" in top and all(ms > 0 for ms in top.values())
    assert "aten::addmm" in capsys.readouterr().out


def test_memory_rows_count_each_optimizers_state(tokenized, tmp_path):
    out = tmp_path / "profile.jsonl"
    result = CliRunner().invoke(app, ["bench", "gpu", "--quick", "--tokenized", str(tokenized), "--out", str(out), "--only", "memory"])
    assert result.exit_code == 0, result.output
    rows = {r["part"]: r for r in map(json.loads, out.read_text().splitlines())}
    n = rows["memory adamw"]["trainable"]
    # State the optimizer really holds (measured from its tensors) against what each one keeps per
    # parameter, by the papers: none, a momentum buffer, two moments. Adam's step counters aside.
    copies = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}
    for optimizer in OPTIMIZERS:
        if optimizer in copies:
            assert abs(rows[f"memory {optimizer}"]["optimizer_state_bytes"] - 4 * copies[optimizer] * n) <= 8 * 200
    lora = [rows[f"memory lora {r}"]["trainable"] for r in (1, 8, 64)]
    assert lora[0] * 8 == lora[1] and lora[0] * 64 == lora[2]  # adapters grow linearly with rank


def test_missing_tokenized_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["bench", "gpu", "--quick", "--tokenized", str(tmp_path)])
    assert result.exit_code == 1 and "train.arrow is missing" in result.output


def test_the_step_spread_names_the_one_slow_step_and_its_widths(tokenized):
    # An H200 run's compiled SFT averaged 1.5 s a step over 30 steps: one 44.7 s step (the first batch
    # 512 wide) and 21.6 ms medians. The spread must find that step, not smear it into the mean.
    from gptpipe.train.gpu_profile import _step_spread

    plan = TimedPlan(lm_examples(read_arrow(tokenized / "train.arrow"), "response", ("chosen",)), loop_config(2, 6), CPU.seed, torch.device("cpu"))
    for step in range(6):
        plan.micro_batches(step)
    plan.starts = [0.0, 0.02, 0.04, 3.04, 3.06, 3.09, 3.11]  # step 2 took 3 s; the rest 20-30 ms
    spread = _step_spread(plan, range(1, 6), collate)
    assert spread["median_ms_per_step"] == 20.0
    slow = spread["slowest_steps"][0]
    assert (slow["step"], slow["ms"]) == (2, 3000.0) and spread["slowest_steps"][1]["step"] == 4
    assert slow["widths"] == [collate(m).input_ids.shape[1] for m in plan.handed[2]]
