"""The decode loop against references (unpadded, no cache), its sampling, its stops, and the stage."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from gptpipe.config import parse_params
from gptpipe.errors import UserError
from gptpipe.evaluation.generate import (
    Sampling, answer_of, filter_logits, generate, next_tokens, sample_prompts, stop_reason,
)
from gptpipe.models.gpt2 import build_scratch, save_model
from stage_runs import run_generate
from gptpipe.data.tokenizer import EOT_ID, encode
from tiny import TINY

GREEDY = Sampling(max_new_tokens=12, temperature=0)
SAMPLED = Sampling(max_new_tokens=12, temperature=1.0, top_p=1.0)
TEXTS = [
    "\n\nHuman: Hi\n\nAssistant:",
    "\n\nHuman: What is 2 + 2? Tell me quickly, please.\n\nAssistant:",
    "\n\nHuman: Spell cat backwards.\n\nAssistant: tac\n\nHuman: And dog?\n\nAssistant:",
    "\n\nHuman: Name a colour.\n\nAssistant:",
]


@pytest.fixture(autouse=True)
def one_thread():
    """The test machines' cores are shared: two torch threads then wait on each other, and a tiny
    forward pass takes 40x longer than on one. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lively_model(tiny_params, seed=0):
    """The tiny GPT-2 with its matrices redrawn at std 0.3: transformers' init (0.02) makes an
    untrained model repeat one token whatever the context, which would hide a wrong position or cache;
    at 0.3 each step's argmax depends on the context."""
    model = build_scratch(tiny_params.model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return model.eval()


def prompts():
    return [encode(t) for t in TEXTS]


def reference_greedy(model, prompt, max_new_tokens):
    """No cache, no padding: the whole sequence through the model at every step, argmax, EOT stops."""
    seq, new = list(prompt), []
    with torch.no_grad():
        while len(new) < max_new_tokens:
            token = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(token)
            new.append(token)
            if token == EOT_ID:
                break
    return tuple(new)


def with_early_stops(model, ps):
    """Alias end-of-text to a token the model picks in some rows, so that rows stop at different
    steps and others run to the length: the loop then drops finished rows from batch and cache."""
    wte = model.transformer.wte.weight
    original = wte.clone()
    for token in sorted({t for a in generate(model, ps, GREEDY).answers for t in a.ids}):
        with torch.no_grad():
            wte[EOT_ID] = 1.05 * original[token]  # EOT outscores the token wherever the token led
        answers = generate(model, ps, GREEDY).answers
        eot_steps = {a.tokens for a in answers if a.stopped == "eot"}
        if len(eot_steps) >= 2 and any(a.stopped == "length" for a in answers):
            return model
    raise AssertionError("no token gives the mix of stops the test needs")


def test_batched_greedy_equals_alone_and_the_no_cache_reference(tiny_params):
    ps = prompts()
    model = with_early_stops(lively_model(tiny_params), ps)
    batched = generate(model, ps, GREEDY, batch_size=len(ps)).answers
    alone = [generate(model, [p], GREEDY, batch_size=1).answers[0] for p in ps]
    assert len({len(p) for p in ps}) == len(ps)  # every row is padded differently
    assert batched == alone
    assert [a.ids for a in batched] == [reference_greedy(model, p, GREEDY.max_new_tokens) for p in ps]


def test_prompts_longer_than_the_room_are_cut_from_the_left(tiny_params):
    model = lively_model(tiny_params)
    room = tiny_params.model.n_positions - GREEDY.max_new_tokens
    long = encode(" ".join(["word"] * 300))
    assert len(long) > room
    cut = generate(model, [long], GREEDY).answers[0]
    assert cut == generate(model, [long[-room:]], GREEDY).answers[0]
    with pytest.raises(UserError, match="max_new_tokens"):
        generate(model, [long], Sampling(max_new_tokens=tiny_params.model.n_positions))


def test_sampling_is_seeded_per_prompt_and_independent_of_the_batch(tiny_params):
    model, ps = lively_model(tiny_params), prompts()
    first = generate(model, ps, SAMPLED, seeds=[1, 2, 3, 4], batch_size=4).answers
    assert generate(model, ps, SAMPLED, seeds=[1, 2, 3, 4], batch_size=4).answers == first
    other = generate(model, ps, SAMPLED, seeds=[5, 6, 7, 8], batch_size=4).answers
    assert all(a.ids != b.ids for a, b in zip(first, other))
    assert generate(model, ps, SAMPLED, seeds=[1, 2, 3, 4], batch_size=1).answers == first
    backwards = generate(model, ps[::-1], SAMPLED, seeds=[4, 3, 2, 1], batch_size=3).answers
    assert backwards[::-1] == first
    assert [a.ids for a in first] != [a.ids for a in generate(model, ps, GREEDY).answers]


def test_top_k_1_and_a_tiny_top_p_are_greedy(tiny_params):
    model, ps = lively_model(tiny_params), prompts()
    greedy = generate(model, ps, GREEDY).answers
    assert generate(model, ps, Sampling(12, temperature=1.5, top_p=1.0, top_k=1)).answers == greedy
    assert generate(model, ps, Sampling(12, temperature=1.5, top_p=1e-6)).answers == greedy


# Peaked logits put the nucleus within the 256 candidates filter_logits looks at first; flat ones
# (top 256 of 1000 hold ~30% of the mass) send it to the full sort.
@pytest.mark.parametrize("scale", [3.0, 0.05])
@pytest.mark.parametrize(("top_k", "top_p"), [(1, 1.0), (5, 1.0), (0, 0.5), (0, 0.9), (0, 1e-6), (20, 0.7)])
def test_filter_logits_keeps_what_transformers_warpers_keep(top_k, top_p, scale):
    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(top_k)) * scale
    logits[1] = logits[1] * 40 / scale  # one very peaked row beside the others
    logits[0, :4] = logits[0, 4]  # ties at the top
    expected = logits
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    kept = filter_logits(logits, top_k, top_p).isfinite()
    assert torch.equal(kept, expected.isfinite())
    assert kept.any(dim=-1).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert filter_logits(logits, top_p=0.8).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, top_p=0.81).isfinite().tolist() == [[True, True, True, False]]
    assert filter_logits(logits, top_p=0.3).isfinite().tolist() == [[True, False, False, False]]


@pytest.mark.parametrize(("top_p", "kept"), [(0.125, 128), (0.5, 512)])
def test_top_p_at_an_exact_boundary_keeps_just_enough(top_p, kept):
    # 1024 equal logits: each token holds exactly 2^-10, so the masses sum without rounding and a
    # set of `kept` tokens reaches p exactly. 0.125 is found among the first candidates, 0.5 by sort.
    logits = torch.zeros(1, 1024)
    assert int(filter_logits(logits, top_p=top_p).isfinite().sum()) == kept


def test_sampled_tokens_never_leave_the_top_k():
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(0))
    top = set(torch.topk(logits[0], 5).indices.tolist())
    sampling = Sampling(1, temperature=5.0, top_p=1.0, top_k=5)  # hot: without the filter, any token
    g = torch.Generator().manual_seed(0)
    drawn = {int(next_tokens(logits, sampling, [g])) for _ in range(400)}
    assert drawn == top


def test_draws_follow_the_softmax_at_the_temperature():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0):
        logits = (probs.log() * temperature)[None]  # dividing by the temperature gives probs back
        sampling = Sampling(1, temperature=temperature, top_p=1.0)
        drawn = torch.tensor([int(next_tokens(logits, sampling, [g])) for _ in range(4000)])
        freq = torch.bincount(drawn, minlength=4) / 4000
        assert torch.allclose(freq, probs, atol=0.025), freq


# -- stops ---------------------------------------------------------------------------------------


def scripted_model(tiny_params, successor: dict[int, int]):
    """A GPT-2 whose next token is successor[current token]: blocks and positions zeroed, so the
    last hidden state is LayerNorm(wte[token]); the LM head (untied here) scores successor[token]
    along that direction. The decode loop, its cache and its stops run unchanged on it."""
    model = build_scratch(tiny_params.model, 0).eval()
    d = model.config.n_embd
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        head = torch.nn.Parameter(model.transformer.wte.weight.clone())
        model.lm_head.weight = head  # untie, so the input embeddings can be set apart
        model.config.tie_word_embeddings = False
        for k, (token, nxt) in enumerate(successor.items()):
            basis = torch.zeros(d)
            basis[k] = 1.0
            model.transformer.wte.weight[token] = basis
            normed = model.transformer.ln_f(basis)
            head[nxt] += 50 * normed
    return model


def test_rows_stop_at_eot_at_human_or_at_the_length(tiny_params):
    sure, nl2, human, colon, ok, a, b = 10889, 628, 20490, 25, 12876, 257, 275
    eot_start, human_start, loop_start = 1000, 1001, 1002
    model = scripted_model(tiny_params, {
        eot_start: sure, human_start: ok, sure: EOT_ID,           # " Sure" then end-of-text
        ok: nl2, nl2: human, human: colon, colon: sure,          # " ok\n\nHuman:" spans 4 tokens
        loop_start: a, a: b, b: a,                               # never stops by itself
    })
    sampling = Sampling(max_new_tokens=6, temperature=0)
    answers = generate(model, [[5, eot_start], [human_start], [7, 8, loop_start]], sampling).answers
    assert answers[0] == answer_of([sure, EOT_ID], "eot")
    assert (answers[0].text, answers[0].tokens, answers[0].stopped) == (" Sure", 2, "eot")
    assert (answers[1].text, answers[1].tokens, answers[1].stopped) == (" ok", 4, "human")
    assert (answers[2].text, answers[2].tokens, answers[2].stopped) == (" a b a b a b", 6, "length")


def test_stop_string_found_across_and_inside_tokens():
    nl, nl2 = 198, 628  # "\n", "\n\n"
    # " Yes" "\n\n" "\n" "Human" ":": the stop text starts at the second newline, inside "\n\n".
    new = encode(" Yes") + [nl2, nl] + encode("Human: more")
    assert [stop_reason(new[:n], 10) for n in range(1, 5)] == [None] * 4  # no colon yet at 4
    assert stop_reason(new[:5], 10) == "human"
    assert answer_of(new[:5], "human").text == " Yes\n"
    assert answer_of(new[:5], "human").tokens == 5
    assert stop_reason(encode(" a b c"), 3) == "length"
    assert stop_reason(encode(" a b"), 3) is None
    assert stop_reason(encode(" a") + [EOT_ID], 3) == "eot"
    assert answer_of(encode(" a") + [EOT_ID], "eot").text == " a"


# -- the stage -----------------------------------------------------------------------------------


def stage_params(**generate):
    return parse_params({**TINY, "generate": {"models": ["base", "sft"], "n_prompts": 6,
                                              "max_new_tokens": 6, "batch_size": 4, **generate}})


@pytest.fixture
def models_root(tmp_path, tiny_params):
    root = tmp_path / "models"
    for seed, name in enumerate(("base", "sft")):
        save_model(lively_model(tiny_params, seed), root / name)
    return root


def generate_all(params, raw, models_root, out, metrics):
    return {name: run_generate(params, name, raw, models_root, out / f"{name}.jsonl", metrics / f"{name}.json",
                               progress=False)
            for name in ("base", "sft")}


def test_run_generate_writes_each_model_the_same_prompts_reproducibly(tmp_path, tokenized, models_root):
    raw = tokenized.parent / "raw"
    out, metrics_dir = tmp_path / "generated", tmp_path / "metrics"
    metrics = generate_all(stage_params(), raw, models_root, out, metrics_dir)
    expected_ids = [p["id"] for p in sample_prompts(raw / "test.parquet", 6, 0)]
    assert len(set(expected_ids)) == 6
    assert set(expected_ids) <= set(pq.read_table(raw / "test.parquet").column("id").to_pylist())
    assert sorted(p.name for p in out.iterdir()) == ["base.jsonl", "sft.jsonl"]
    first = {name: (out / f"{name}.jsonl").read_text() for name in ("base", "sft")}
    for name, text in first.items():
        rows = [json.loads(line) for line in text.splitlines()]
        assert [r["id"] for r in rows] == expected_ids
        assert all(r["prompt"].endswith("\n\nAssistant:") for r in rows)
        assert all(r["stopped"] in ("eot", "human", "length") and 1 <= r["tokens"] <= 6 for r in rows)
        assert metrics[name]["model"] == name
        assert metrics[name]["mean_tokens"] == round(sum(r["tokens"] for r in rows) / 6, 2)
        assert sum(metrics[name]["stopped"].values()) == pytest.approx(1)
        assert json.loads((metrics_dir / f"{name}.json").read_text()) == metrics[name]
    assert first["base"] != first["sft"]
    generate_all(stage_params(), raw, models_root, out, metrics_dir)
    assert {name: (out / f"{name}.jsonl").read_text() for name in first} == first
    generate_all(stage_params(seed=1), raw, models_root, tmp_path / "other", tmp_path / "om")
    other = [json.loads(x)["id"] for x in (tmp_path / "other" / "sft.jsonl").read_text().splitlines()]
    assert len(other) == 6 and other != expected_ids


def test_a_model_with_no_folder_names_its_stage(tmp_path, tokenized, models_root):
    out = tmp_path / "dpo.jsonl"
    out.write_text("earlier\n")
    with pytest.raises(UserError, match=r"'dpo': .*models/dpo holds no model; run the dpo stage first"):
        run_generate(stage_params(), "dpo", tokenized.parent / "raw", models_root, out, tmp_path / "m.json")
    assert out.read_text() == "earlier\n"  # earlier outputs left intact
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(UserError, match="'sfft' is unknown; known models: base, sft, dpo"):
        run_generate(stage_params(), "sfft", tokenized.parent / "raw", models_root, out, tmp_path / "m.json")
