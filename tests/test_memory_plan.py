"""The GPU memory plan: calibrated on an H200, and what preflight tells a user of each card."""

from pathlib import Path

import pytest
import torch

from gptpipe.cli import _apply_preset
from gptpipe.config import LoopConfig, LoraConfig
from gptpipe.preflight import memory_report
from gptpipe.train.flops import GPT2_SHAPES
from gptpipe.train.memory_plan import Card, Job, MemoryPlanError, fitted, jobs, need, plan
from tiny import run_tiny

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
L4 = Card("NVIDIA L4", 24 * GIB, True)  # the course's 24 GB minimum
H100 = Card("NVIDIA H100 80GB HBM3", 80 * GIB, True)
T4 = Card("Tesla T4", 16 * GIB, False)


def full_preset(**changes):
    params, _ = _apply_preset(ROOT / "params.yaml", "full")
    for section, values in changes.items():
        part = getattr(params, section).model_copy(update=values)
        params = params.model_copy(update={section: part})
    return params


# Peak max_memory_allocated of two SFT steps (gptpipe bench gpu on an NVIDIA H200, 2026-11-26:
# scratch GPT-2, fixed 512-token sequences, AdamW, bf16 autocast, eager).
MEASURED = [
    ("gpt2", 8, False, 0, 5_336_466_432),
    ("gpt2-medium", 4, False, 0, 9_663_816_192),
    ("gpt2-large", 4, False, 0, 19_524_322_816),
    ("gpt2-xl", 4, False, 0, 36_154_390_016),
    ("gpt2-xl", 4, True, 0, 31_736_538_112),
    ("gpt2", 8, False, 8, 4_104_114_688),
    ("gpt2", 8, False, 64, 4_241_654_272),
]


@pytest.mark.parametrize("size,micro,checkpointing,rank,measured", MEASURED)
def test_the_model_predicts_the_measured_peaks(size, micro, checkpointing, rank, measured):
    loop = LoopConfig(batch_size=micro, micro_batch_size=micro, activation_checkpointing=checkpointing)
    job = Job("train", size, GPT2_SHAPES[size], loop, LoraConfig(rank=rank), "bfloat16", 512)
    assert need(job, micro, checkpointing).bytes == pytest.approx(measured, rel=0.03)


def test_a_24gb_card_runs_the_whole_preset_as_set():
    params = full_preset()
    planned = {(j.stage, j.label): plan(j, L4) for j in jobs(params)}
    assert planned[("train", "gpt2")].micro_batch_size == 16
    # 16 pairs = 32 sequences of 512 tokens: 15.6 GB (the H200 measured 15.5 GB on real HH batches)
    assert planned[("dpo", "gpt2")].micro_batch_size == 16
    assert {label for stage, label in planned if stage == "scaling"} == {"4x256", "6x384", "8x512", "12x768"}
    lines, problems = memory_report(params, L4)
    assert problems == [] and len(lines) == len(planned)


def test_a_fine_tuning_sweep_stops_at_gpt2_xl_on_24gb_in_one_line_naming_what_fits():
    params = full_preset(scaling={"models": ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")})
    lines, problems = memory_report(params, L4)
    assert any(line.startswith("scaling  gpt2-large") for line in lines)  # with a smaller micro-batch
    assert len(problems) == 1 and problems[0].startswith("scaling: gpt2-xl") and "\n" not in problems[0]
    assert "gpt2-xl dropped from scaling.models" in problems[0] and "a card with 32 GB" in problems[0]
    assert "galore" not in problems[0]  # the sweep has no such setting


def test_a_run_that_fits_only_smaller_is_told_the_setting():
    params = full_preset(model={"name": "gpt2-large"})
    _, problems = memory_report(params, L4)
    dpo = [p for p in problems if p.startswith("dpo:")]
    assert len(dpo) == 1 and "set dpo.micro_batch_size=" in dpo[0]


def test_gpt2_xl_fits_a_24gb_card_with_lora():
    params = full_preset(model={"name": "gpt2-xl"}, train={"lora": LoraConfig(rank=16)})
    sft = next(j for j in jobs(params) if j.stage == "train")
    assert plan(sft, L4).bytes <= L4.usable_bytes


def test_an_80gb_card_runs_every_size_and_plans_smaller_micro_batches_where_needed():
    params = full_preset(model={"name": "gpt2-xl"})
    for job in jobs(params):
        chosen = plan(job, H100)
        assert job.loop.batch_size % chosen.micro_batch_size == 0
        assert chosen.bytes <= H100.usable_bytes
        if chosen.checkpointing:  # only when no micro-batch fits without
            assert need(job, 1, False).bytes > H100.usable_bytes
    sft = next(j for j in jobs(params) if j.stage == "train")
    assert fitted(sft, H100).micro_batch_size < 16 and fitted(sft, None) == sft.loop


def test_no_fit_is_one_line_naming_model_and_memory():
    tiny_card = Card("Tiny GPU", 2 * GIB, True)
    job = Job("train", "gpt2-xl", GPT2_SHAPES["gpt2-xl"], LoopConfig(), LoraConfig(), "bfloat16", 512)
    with pytest.raises(MemoryPlanError, match=r"^train: gpt2-xl full fine-tuning \(adamw, bfloat16\) needs \d+\.\d GB") as err:
        plan(job, tiny_card)
    assert "\n" not in str(err.value) and "a card with" in str(err.value)
    roomier = Card("Mid GPU", 20 * GIB, True)
    with pytest.raises(MemoryPlanError, match="train.lora.rank=16 .* or train.optimizer=galore"):
        plan(job, roomier)


def test_bf16_on_a_card_without_it_is_a_problem():
    _, problems = memory_report(full_preset(), T4)
    assert any(p.startswith("shared.dtype=bfloat16: Tesla T4") for p in problems)
    assert memory_report(full_preset(), None) == ([], [])


def test_activation_checkpointing_gives_the_same_training(tiny_params, tokenized, tmp_path):
    common = {"max_steps": 2, "optimizer": "sgd", "lr": 0.5, "eval_every": 1}
    plain = tiny_params.train.model_copy(update=common)
    checked = plain.model_copy(update={"activation_checkpointing": True})
    a, state_a, _ = run_tiny(tiny_params, tokenized, tmp_path / "a", plain)
    b, state_b, _ = run_tiny(tiny_params, tokenized, tmp_path / "b", checked)
    assert b.transformer.gradient_checkpointing and not a.transformer.gradient_checkpointing
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert [r["train_loss"] for r in state_a.rows] == pytest.approx([r["train_loss"] for r in state_b.rows])


def test_fsdp_shards_the_training_state_and_is_named_where_one_card_cannot_hold_it():
    # gpt2-xl full fine-tuning with AdamW on 24 GB cards: ~25 GB of weights, gradients and moments.
    job = Job("train", "gpt2-xl", GPT2_SHAPES["gpt2-xl"], LoopConfig(batch_size=16, micro_batch_size=16),
              LoraConfig(), "bfloat16", 512)
    alone, over4 = need(job, 1, True), need(Job(**{**vars(job), "shards": 4}), 1, True)
    for part in ("parameters", "gradients", "optimizer_state"):
        assert over4.parts[part] == pytest.approx(alone.parts[part] / 4, abs=4)
    # What sharding does not divide: autocast's bf16 copies, the head's buffer, the gathered weights.
    assert over4.parts["bf16_copies"] == alone.parts["bf16_copies"] and "gathered_weights" not in alone.parts
    assert 0 < over4.parts["gathered_weights"] < alone.parts["parameters"] / 4
    with pytest.raises(MemoryPlanError, match=r"shared\.strategy=fsdp shared\.processes=(\d+) on \1 such cards") as err:
        plan(job, L4)
    cards = int(str(err.value).split("shared.processes=")[1].split()[0])
    # The named number of cards is the fewest that fit, and the preset set that way plans clean.
    params = full_preset(model={"name": "gpt2-xl"}, shared={"strategy": "fsdp", "processes": cards})
    sft = next(j for j in jobs(params) if j.stage == "train")
    assert sft.shards == cards and plan(sft, L4).bytes <= L4.usable_bytes
    fewer = full_preset(model={"name": "gpt2-xl"}, shared={"strategy": "fsdp", "processes": cards - 1})
    with pytest.raises(MemoryPlanError):
        plan(next(j for j in jobs(fewer) if j.stage == "train"), L4)


def test_more_processes_than_gpus_is_a_preflight_problem():
    _, problems = memory_report(full_preset(shared={"processes": 4}), Card(H100.name, H100.total_bytes, True, count=2))
    assert any(p.startswith("shared.processes=4: this machine has 2 NVIDIA H100") for p in problems)
    _, problems = memory_report(full_preset(shared={"processes": 2}), Card(H100.name, H100.total_bytes, True, count=2))
    assert not any(p.startswith("shared.processes") for p in problems)


@pytest.mark.parametrize("shared,section,message", [
    ({"strategy": "fsdp", "processes": 1}, None, "set shared.processes"),
    ({"strategy": "fsdp", "processes": 2, "dtype": "float16"}, None, "use dtype bfloat16"),
    ({"strategy": "fsdp", "processes": 2}, {"dpo": {"optimizer": "galore"}}, "dpo.optimizer: galore"),
    ({"strategy": "fsdp", "processes": 2}, {"train": {"optimizer": "adafactor"}}, "train.optimizer: adafactor"),
])
def test_settings_fsdp_cannot_run_fail_before_any_work(shared, section, message):
    from gptpipe.config import parse_params
    from tiny import TINY

    from dvc_project import merge

    halves = {s: {"micro_batch_size": 4} for s in ("base", "train", "reward", "dpo")}  # two per step
    with pytest.raises(Exception, match=message):
        parse_params(merge(merge(TINY, halves), {"shared": shared, **(section or {})}))


FITTED_SIZES = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]


@pytest.mark.parametrize("held_out", FITTED_SIZES)
def test_the_activation_line_fitted_without_a_size_predicts_that_sizes_peak(held_out, monkeypatch):
    # Leave one out: the plan's activation line (bytes per token and layer = a * n_embd + b) refitted
    # on the other three sizes' measured peaks, less what need() counts besides activations, must
    # predict the fourth size's measured peak within 3%.
    import numpy as np

    from gptpipe.train import memory_plan

    def job_of(size, micro):
        loop = LoopConfig(batch_size=micro, micro_batch_size=micro)
        return Job("train", size, GPT2_SHAPES[size], loop, LoraConfig(), "bfloat16", 512)

    rows = {size: (micro, peak) for size, micro, ckpt, rank, peak in MEASURED if not ckpt and not rank}
    widths, per_token_layer = [], []
    for size in FITTED_SIZES:
        if size == held_out:
            continue
        micro, peak = rows[size]
        planned = need(job_of(size, micro), micro, False)
        rest = planned.bytes - planned.parts["activations"]
        widths.append(GPT2_SHAPES[size].n_embd)
        per_token_layer.append((peak - rest) / (micro * 512 * GPT2_SHAPES[size].n_layer))
    a, b = np.polyfit(widths, per_token_layer, 1)
    monkeypatch.setattr(memory_plan, "ACTIVATION_BYTES_PER_WIDTH", a)
    monkeypatch.setattr(memory_plan, "ACTIVATION_BYTES_BASE", b)
    micro, peak = rows[held_out]
    assert need(job_of(held_out, micro), micro, False).bytes == pytest.approx(peak, rel=0.03)
