"""The llama variant (model.arch: llama): transformers' LlamaForCausalLM at a tiny shape, held to a
hand-written reference (RMSNorm, RoPE, GQA, SwiGLU), to AutoModelForCausalLM after a save, to PEFT's
LoRA, to itself without a KV cache, across a kill and resume, and across two FSDP processes."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from gptpipe.config import ARCH_LORA_TARGETS, ModelConfig, ParamsError, parse_params
from gptpipe.evaluation.generate import Sampling, _generate_batch
from gptpipe.models.gpt2 import build_scratch, save_model
from gptpipe.models.lora import apply_lora, lora_state_dict
from gptpipe.train.flops import ModelShape, count_params
from test_distributed_stage import _base_stage
from test_train import _worker

TINY = ModelConfig(arch="llama", n_layer=2, n_embd=32, n_head=4, n_kv_head=2, n_positions=64)


@pytest.fixture(scope="module")
def model():
    return build_scratch(TINY, seed=0).eval()


# -- the reference: a few lines of torch each ---------------------------------------------------


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x, theta=10000.0):  # x (B, H, T, hd); positions 0..T-1, the half-split (rotate_half) layout
    hd, t = x.shape[-1], x.shape[-2]
    angles = torch.arange(t)[:, None] * theta ** (-torch.arange(0, hd, 2) / hd)[None]  # (T, hd/2)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def swiglu(x, mlp):
    return F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T) @ mlp.down_proj.weight.T


def gqa(x, attn, n_head, n_kv):  # x (B, T, d)
    b, t, d = x.shape
    hd = d // n_head
    q = (x @ attn.q_proj.weight.T).view(b, t, n_head, hd).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(b, t, n_kv, hd).transpose(1, 2)  # (B, KV, T, hd)
    v = (x @ attn.v_proj.weight.T).view(b, t, n_kv, hd).transpose(1, 2)
    q, k = rope(q), rope(k)
    k, v = (z.repeat_interleave(n_head // n_kv, dim=1) for z in (k, v))  # query heads h*g..h*g+g-1 share h
    scores = q @ k.transpose(-1, -2) / hd**0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return out @ attn.o_proj.weight.T


def reference_logits(model, ids):
    eps = model.config.rms_norm_eps
    h = model.model.embed_tokens.weight[ids]
    for layer in model.model.layers:
        h = h + gqa(rms_norm(h, layer.input_layernorm.weight, eps), layer.self_attn, TINY.n_head, TINY.n_kv_head)
        h = h + swiglu(rms_norm(h, layer.post_attention_layernorm.weight, eps), layer.mlp)
    return rms_norm(h, model.model.norm.weight, eps) @ model.model.embed_tokens.weight.T  # tied head


def ids(batch=2, length=12, seed=1):
    return torch.randint(0, 50257, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_the_shape_is_the_configured_one(model):
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (TINY.n_kv_head * 8, 32)  # GQA: K, V at 2 heads of 8, Q at 4
    assert attn.q_proj.weight.shape == (32, 32)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (96, 32)  # 8 * 32 / 3 = 85.3 -> 96
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert count_params(ModelShape.from_config(model.config)) == sum(p.numel() for p in model.parameters())


@torch.no_grad()
def test_rmsnorm_rope_and_swiglu_each_equal_the_reference(model):
    layer = model.model.layers[0]
    torch.nn.init.normal_(layer.input_layernorm.weight)  # a gain that is not all ones
    x = torch.randn(2, 12, 32)
    torch.testing.assert_close(layer.input_layernorm(x), rms_norm(x, layer.input_layernorm.weight, 1e-5))
    torch.testing.assert_close(layer.mlp(x), swiglu(x, layer.mlp))
    q, k = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8)
    cos, sin = model.model.rotary_emb(x, torch.arange(12)[None])
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(q_rot, rope(q))
    torch.testing.assert_close(k_rot, rope(k))


@torch.no_grad()
def test_the_whole_model_equals_the_reference_with_grouped_heads(model):
    x = ids()
    torch.testing.assert_close(model(x).logits, reference_logits(model, x), atol=1e-4, rtol=1e-4)


def test_gpt2_and_pretrained_llama_are_refused_in_one_line():
    with pytest.raises(ParamsError, match=r"model.arch: llama is built from scratch only") as err:
        parse_params({"model": {"arch": "llama", "init": "pretrained"}})
    assert "\n" not in str(err.value)
    with pytest.raises(ParamsError, match=r"model.n_kv_head: 2 applies to arch llama only"):
        parse_params({"model": {"n_kv_head": 2}})
    with pytest.raises(ParamsError, match=r"model.n_kv_head: 3 does not divide n_head=4"):
        parse_params({"model": {"arch": "llama", "n_kv_head": 3}})
    with pytest.raises(ParamsError, match=r"train.lora.targets: attn.c_attn.* are not model.arch=llama projections"):
        parse_params({"model": {"arch": "llama"}, "train": {"lora": {"rank": 4}}})


@torch.no_grad()
def test_a_saved_variant_reloads_with_automodel_and_gives_the_same_logits(model, tmp_path):
    save_model(model, tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert type(again).__name__ == "LlamaForCausalLM"
    x = ids()
    torch.testing.assert_close(again(x).logits, model(x).logits, atol=1e-5, rtol=0)


def test_lora_on_the_variant_equals_peft():
    targets = ARCH_LORA_TARGETS["llama"]
    ours = apply_lora(build_scratch(TINY, 0), rank=4, alpha=8.0, dropout=0.0, targets=targets)
    theirs = peft.get_peft_model(build_scratch(TINY, 0), peft.LoraConfig(
        r=4, lora_alpha=8.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(2)
    names = list(lora_state_dict(ours))
    theirs_params = dict(theirs.named_parameters())
    assert {f"base_model.model.{n}.default.weight" for n in names} == {n for n, p in theirs_params.items() if p.requires_grad}
    with torch.no_grad():
        for name, p in dict(ours.named_parameters()).items():
            if "lora_" in name:
                p.normal_(0, 0.1)
                theirs_params[f"base_model.model.{name}.default.weight"].copy_(p)
    x = ids()
    a, b = ours(x, labels=x), theirs(input_ids=x, labels=x)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    a.loss.backward(), b.loss.backward()
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, theirs_params[f"base_model.model.{name}.default.weight"].grad, atol=1e-5, rtol=0)


@torch.no_grad()
def test_generation_with_the_cache_equals_generation_without():
    model = build_scratch(TINY, seed=0).eval()
    for p in model.parameters():  # transformers' 0.02 init answers one token over and over
        p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    prompts = [ids(1, 5, seed=3)[0].tolist(), ids(1, 9, seed=4)[0].tolist()]  # left-padded to 9
    sampling = Sampling(max_new_tokens=6, temperature=0.0, top_p=1.0, top_k=0)
    answers = _generate_batch(model, prompts, sampling, [0, 1])
    for prompt, answer in zip(prompts, answers, strict=True):
        seq = list(prompt)
        for _ in range(len(answer.ids)):  # greedy, no cache, the whole sequence each step
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert tuple(seq[len(prompt):]) == answer.ids
    assert len({t for a in answers for t in a.ids}) > 2  # not one token repeated: the positions matter


# -- the loop: resume and FSDP (the workers GPT-2's tests use, at arch llama) -----------------------


def test_a_killed_llama_run_resumes_to_the_uninterrupted_result(tokenized, tmp_path):
    arch = ("--arch", "llama", "--n-kv-head", "1")  # the tiny shape's 2 query heads share one K/V head
    whole = _worker(tokenized, tmp_path / "whole.json", tmp_path / "whole.ckpt", *arch)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _worker(tokenized, tmp_path / "resumed.json", tmp_path / "resumed.ckpt", "--kill-at-step", "10", *arch)
    assert killed.returncode == -9
    resumed = _worker(tokenized, tmp_path / "resumed.json", tmp_path / "resumed.ckpt", *arch)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "at step 8" in resumed.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "resumed"))
    assert a["rows"] == b["rows"] and a["rows"][-1]["test_loss"] < a["rows"][0]["test_loss"]
    wa, wb = (torch.load(tmp_path / f"{n}.pt") for n in ("whole", "resumed"))
    assert any("self_attn.k_proj" in k for k in wa)  # it was the variant that ran
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp_over_two_processes_equals_one_process_for_the_variant(tiny_params, tokenized, tmp_path):
    llama = tiny_params.model_copy(update={"model": tiny_params.model.model_copy(update={"arch": "llama", "n_kv_head": 1})})
    one = _base_stage(llama, tokenized, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _base_stage(llama, tokenized, tmp_path / "two", 2, strategy="fsdp", checkpoint_every=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / root / "base.json").read_text()) for root in ("one", "two"))
    assert a["steps"] == b["steps"] and b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
    assert b["memory"]["parameters_bytes"] == pytest.approx(a["memory"]["parameters_bytes"] / 2, rel=0.02)
    first, second = (AutoModelForCausalLM.from_pretrained(tmp_path / root / "model") for root in ("one", "two"))
    assert type(second).__name__ == "LlamaForCausalLM" and second.lm_head.weight is second.model.embed_tokens.weight
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(q, p, atol=2e-3, rtol=0, msg=name)


def test_step_flops_equal_torch_flop_counter_on_the_variant():
    # FlopCounterMode counts every matmul LlamaForCausalLM runs, forward and backward: SwiGLU's three
    # matrices and GQA's narrower K and V (2 of 4 heads here) must be what flops.step_flops charges.
    from torch.utils.flop_counter import FlopCounterMode

    from gptpipe.train.flops import step_flops

    # Eager attention: the counter sees its matmuls (on the CPU it counts no SDPA kernel at all).
    model = AutoModelForCausalLM.from_config(build_scratch(TINY, seed=0).config, attn_implementation="eager")
    x = ids(2, 16)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=x).logits.sum().backward()
    shape = ModelShape.from_config(model.config)
    assert shape.kv_width == 16 and shape.ffw_size == 96
    assert counter.get_total_flops() == step_flops(shape, [16, 16], 32)


def test_the_reward_stage_trains_and_saves_a_scalar_head_on_the_variant(tiny_params, tokenized, tmp_path):
    # Regression: the stage named its judge from GPT-2's config fields (n_layer) and failed after
    # training on a llama base, in the architecture study's second point.
    from gptpipe.models.reward import load_scorer
    from stage_runs import run_base, run_reward

    llama = tiny_params.model.model_copy(update={"arch": "llama", "n_kv_head": 1})
    short = {"max_steps": 2, "eval_every": 2, "checkpoint_every": 2}
    params = tiny_params.model_copy(update={"model": llama, "base": tiny_params.base.model_copy(update=short),
                                            "reward": tiny_params.reward.model_copy(update=short)})
    run_base(params, tokenized, tmp_path / "base", tmp_path / "base.json", tmp_path / "bp")
    metrics = run_reward(params, tokenized, tmp_path / "base", tmp_path / "reward", tmp_path / "r.json", tmp_path / "rp")
    assert metrics["name"] == "llama 1x32 from models/base + scalar head"
    scorer = load_scorer(tmp_path / "reward", batch_size=4, device=torch.device("cpu"))
    assert scorer.model.config.model_type == "llama" and scorer.model.config.num_key_value_heads == 1
