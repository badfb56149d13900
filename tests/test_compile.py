"""shared.compile: the transformer body is compiled once for every batch shape, the losses stay eager."""

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

from gptpipe.config import ModelConfig
from gptpipe.data.batches import LMExample, PairExample, collate, collate_pairs, pad_width
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.dpo import DirectPreference
from gptpipe.train import loop
from gptpipe.train.objectives import LanguageModelling, response_logprobs
from gptpipe.train.runtime import Runtime, compile_bodies
from tiny import run_tiny

SHAPE = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128)


def _examples(lengths, first_target=3):
    g = torch.Generator().manual_seed(0)
    return [LMExample(ids=torch.randint(0, 50257, (n,), generator=g).tolist(), first_target=first_target) for n in lengths]


def test_one_graph_serves_batches_of_every_width_and_response_count():
    torch._dynamo.reset()
    eager = LanguageModelling(build_scratch(SHAPE, 0))
    compiled = LanguageModelling(build_scratch(SHAPE, 0))
    counter = CompileCounter()
    assert compile_bodies(compiled, backend=counter) == 1
    # Widths and response-token counts that differ batch to batch, as SFT's do (the 377,
    # 397, 957, 1280 … response tokens each compiled a new graph when the whole objective was compiled).
    shapes = [[20, 31], [7, 64, 40], [100], [12, 13, 14, 15], [90, 3 + 2]]
    for lengths in shapes:
        batch = collate(_examples(lengths))
        want = eager(batch)[0]
        got = compiled(batch)[0]
        got.backward()
        torch.testing.assert_close(got, want)
    # dynamic shapes: a first graph, at most one recompile when a size first varies, never one per batch
    assert counter.frame_count <= 2 < len(shapes)
    torch._dynamo.reset()


def test_dpo_with_a_live_reference_compiles_both_bodies():
    torch._dynamo.reset()
    objective = DirectPreference(build_scratch(SHAPE, 0), beta=0.1, reference="live")
    assert compile_bodies(objective, backend=CompileCounter()) == 2  # the policy's and the reference's
    torch._dynamo.reset()


def test_padding_the_width_changes_no_loss_and_counts_no_pad():
    model = build_scratch(SHAPE, 0).eval()
    lm = collate(_examples([20, 37, 9]))
    wide = pad_width(lm, 16)
    assert wide.input_ids.shape[1] == 48 and lm.input_ids.shape[1] == 37
    assert (wide.weight, wide.n_tokens, wide.seq_lens) == (lm.weight, lm.n_tokens, lm.seq_lens)
    objective = LanguageModelling(model)
    torch.testing.assert_close(objective(wide)[0], objective(lm)[0])
    g = torch.Generator().manual_seed(1)
    pairs = [PairExample(*(torch.randint(0, 50257, (n,), generator=g).tolist() for n in lens)) for lens in ((5, 7, 3), (11, 2, 9))]
    batch = collate_pairs(pairs)
    assert pad_width(batch, 16).input_ids.shape[1] == 32  # longest: 11 + 9 tokens
    torch.testing.assert_close(response_logprobs(model, pad_width(batch, 16)), response_logprobs(model, batch))
    assert pad_width(wide, 16) is wide  # already a multiple: untouched


def test_the_loop_pads_only_compiled_runs(tiny_params, tokenized, tmp_path, monkeypatch):
    seen = []
    real = loop.pad_width
    monkeypatch.setattr(loop, "pad_width", lambda batch, m: seen.append(m) or real(batch, m))
    cfg = tiny_params.train.model_copy(update={"max_steps": 2})
    run_tiny(tiny_params, tokenized, tmp_path, cfg)
    assert seen == []
    objective = LanguageModelling(build_scratch(SHAPE, 0))
    compiled = Runtime(torch.device("cpu"), None, True, 1.0)
    assert loop._collate(objective, _examples([20, 37]), compiled).input_ids.shape[1] == 48
    assert seen == [loop.COMPILED_WIDTH_MULTIPLE]


def test_bf16_autocast_losses_are_fp32_within_bf16_rounding():
    # The full preset's precision (the rehearsal runs fp32 to fit CI: bf16 is emulated on these CPUs).
    model = build_scratch(SHAPE, 0).eval()
    batch = collate(_examples([20, 37, 9]))
    objective = LanguageModelling(model)
    want = objective(batch)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = objective(batch)[0]
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0)
    g = torch.Generator().manual_seed(1)
    pairs = [PairExample(*(torch.randint(0, 50257, (n,), generator=g).tolist() for n in lens)) for lens in ((5, 7, 3), (11, 2, 9))]
    dpo = DirectPreference(model, beta=0.1, reference="live")
    pair_batch = collate_pairs(pairs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = dpo(pair_batch)
    loss.backward()
    # policy = reference at init: every margin 0, the loss log 2 per pair, in bf16 as in fp32
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-3)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's width guards come from its Triton kernels: a GPU check")
def test_inductor_on_a_gpu_compiles_once_for_padded_widths_and_again_for_raw_ones():
    """Why the loop pads compiled batches: inductor (not dynamo, which the CPU test above counts)
    guards a dynamic width on how it divides (Triton's alignment hints), so widths 54, 169, 412 each
    compiled a new graph on an H200. Padded to COMPILED_WIDTH_MULTIPLE they share one; unpadded they
    must not (else the padding is dead weight and this test says so)."""
    widths = [54, 69, 112, 77, 100, 37, 121]

    def graphs(multiple: int) -> int:
        torch._dynamo.reset()
        objective = LanguageModelling(build_scratch(SHAPE, 0).cuda())
        counter = CompileCounterWithBackend("inductor")
        compile_bodies(objective, backend=counter)
        for width in widths:
            batch = pad_width(collate(_examples([width, width // 2 + 4])), multiple).to(torch.device("cuda"))
            with torch.autocast("cuda", torch.bfloat16):
                objective(batch)[0].backward()
        torch._dynamo.reset()
        return counter.frame_count

    padded, raw = graphs(loop.COMPILED_WIDTH_MULTIPLE), graphs(1)
    print(f"inductor graphs over {len(widths)} widths: padded {padded}, raw {raw}")
    assert padded <= 2 < raw
