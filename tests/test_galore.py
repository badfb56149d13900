"""GaLoreAdamW: its state size, its AdamW core, Algorithm 2 step by step, the subspace of its updates,
convergence against AdamW and SGD, checkpoint/resume, and argument checks."""

from __future__ import annotations

import io
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptpipe.config import LoopConfig
from gptpipe.train.galore import GaLoreAdamW, adamw_state_elements, galore_state_elements
from gptpipe.train.optim import build_optimizer, memory_split

# The paper's refresh interval T and scale alpha (Zhao et al. 2024, Sec. 5), where a test does not
# set its own: GaLoreAdamW has no defaults for them (gptpipe.config.LoopConfig holds the pipeline's).
PAPER_UPDATE_EVERY, PAPER_SCALE = 200, 0.25


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These matrices are tiny: a second intra-op thread only adds synchronisation. On the shared
    2-core machine under load, 80 steps of the convergence model took 1.0 s on 1 thread, 13 s on 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt2(seed: int, vocab_size: int, n_embd: int, n_layer: int, n_positions: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # no dropout: runs compared step by step
        bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside these vocabularies
    )
    return GPT2LMHeadModel(config)


def factory_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The two groups optim.build_optimizer passes: matrices with weight decay, vectors without."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def lm_step(model: GPT2LMHeadModel, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def state_elements(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


# -- 1. state size ---------------------------------------------------------------------------------


def test_state_held_is_what_galore_state_elements_predicts_and_under_a_third_of_adamw():
    model = tiny_gpt2(0, vocab_size=500, n_embd=64, n_layer=2, n_positions=64)
    optimizer = GaLoreAdamW(factory_groups(model, 0.1), lr=1e-3, rank=16, update_every=PAPER_UPDATE_EVERY,
                            scale=PAPER_SCALE)
    lm_step(model, optimizer, torch.randint(0, 500, (2, 16)))

    shapes = [tuple(p.shape) for p in model.parameters()]
    assert state_elements(optimizer) == galore_state_elements(shapes, rank=16)
    assert memory_split(model, optimizer)["optimizer_state"] == 4 * galore_state_elements(shapes, rank=16)
    # By hand: wte 500x64 -> Q 64x16 + 2 x 500x16 = 17,024; wpe 64x64 -> 3,072; per block c_attn
    # 64x192 -> 7,168, attn c_proj 3,072, c_fc 64x256 -> 9,216, mlp c_proj 256x64 -> 9,216, and
    # 832 vector values x 2 = 1,664; ln_f 128 x 2 = 256. AdamW: 2 x 136,192 parameters.
    assert galore_state_elements(shapes, rank=16) == 81_024
    assert adamw_state_elements(shapes) == 272_384  # GaLore keeps 29.7% of AdamW's state here

    wte, c_fc = model.transformer.wte.weight, model.transformer.h[0].mlp.c_fc.weight
    assert optimizer.state[wte]["projector"].shape == (64, 16)  # tall: right singular vectors Q
    assert optimizer.state[wte]["exp_avg"].shape == (500, 16)  # G Q
    assert optimizer.state[c_fc]["projector"].shape == (64, 16)  # wide: left singular vectors P
    assert optimizer.state[c_fc]["exp_avg_sq"].shape == (16, 256)  # Pᵀ G
    assert "projector" not in optimizer.state[model.transformer.ln_f.weight]


# -- 2. nothing projected: torch's AdamW ------------------------------------------------------------


def test_with_nothing_projected_it_is_torch_adamw():
    ids = torch.randint(0, 100, (6, 2, 16), generator=torch.Generator().manual_seed(1))
    ours_model = tiny_gpt2(0, vocab_size=100, n_embd=32, n_layer=1, n_positions=16)
    torch_model = tiny_gpt2(0, vocab_size=100, n_embd=32, n_layer=1, n_positions=16)
    # rank 32 >= min(m, n) of every matrix (n_embd 32), so no matrix is projected. scale (α) is
    # 0.25, not 1: Algorithm 2 applies it to the back-projected update only, so it must not matter.
    ours = GaLoreAdamW(factory_groups(ours_model, 0.1), lr=3e-3, betas=(0.8, 0.95), eps=1e-6,
                       rank=32, update_every=PAPER_UPDATE_EVERY, scale=0.25)
    reference = torch.optim.AdamW(factory_groups(torch_model, 0.1), lr=3e-3, betas=(0.8, 0.95), eps=1e-6)
    for batch in ids:
        lm_step(ours_model, ours, batch)
        lm_step(torch_model, reference, batch)
    assert not any("projector" in s for s in ours.state.values())
    for (name, a), b in zip(ours_model.named_parameters(), torch_model.parameters()):  # bitwise today
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


# -- 3. Algorithm 2, and the subspace of the update ---------------------------------------------------


def algorithm2_updates(grads: list[torch.Tensor], projectors: list[torch.Tensor], lr: float, scale: float,
                       betas: tuple[float, float], eps: float) -> list[torch.Tensor]:
    """Zhao et al. 2024, Algorithm 2, written out for a wide G (m <= n): P_t given per step, and
    M_t, V_t carried across a change of P_t."""
    m = v = torch.zeros(projectors[0].shape[1], grads[0].shape[1], dtype=grads[0].dtype)  # (r, n)
    updates = []
    for t, (g, p) in enumerate(zip(grads, projectors), start=1):
        r = p.T @ g
        m = betas[0] * m + (1 - betas[0]) * r
        v = betas[1] * v + (1 - betas[1]) * r**2
        n = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        updates.append(-lr * scale * (p @ n))
    return updates


def test_projected_steps_follow_algorithm_2_with_decoupled_weight_decay():
    generator = torch.Generator().manual_seed(0)
    # float64, so that the update (~1e-3) survives subtracting weights of ~1 from each other.
    weight = torch.nn.Parameter(torch.randn(12, 20, generator=generator, dtype=torch.float64))
    grads = [torch.randn(12, 20, generator=generator, dtype=torch.float64) for _ in range(4)]
    lr, wd, scale, betas, eps = 0.01, 0.1, 0.25, (0.9, 0.999), 1e-8
    optimizer = GaLoreAdamW([weight], lr=lr, betas=betas, eps=eps, weight_decay=wd, rank=4, scale=scale,
                            update_every=2)
    updates, projectors = [], []
    for grad in grads:
        before = weight.detach().clone()
        weight.grad = grad
        optimizer.step()
        # AdamW's decay acts on the full weight, outside the subspace.
        updates.append(weight.detach() - (1 - lr * wd) * before)
        projectors.append(optimizer.state[weight]["projector"].clone())  # (12, 4)
    assert not torch.equal(projectors[1], projectors[2])  # refreshed at step 3, moments kept
    expected_updates = algorithm2_updates(grads, projectors, lr, scale, betas, eps)
    for step, (ours, expected) in enumerate(zip(updates, expected_updates), start=1):
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12, msg=lambda m: f"step {step}: {m}")


def out_of_subspace(update: torch.Tensor, projector: torch.Tensor, wide: bool) -> float:
    """||Δ - PPᵀΔ|| / ||Δ|| (wide) or ||Δ - ΔQQᵀ|| / ||Δ|| (tall)."""
    inside = projector @ (projector.T @ update) if wide else (update @ projector) @ projector.T
    return ((update - inside).norm() / update.norm()).item()


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_updates_lie_in_the_top_singular_subspace_of_the_latest_refresh(shape):
    rows, cols = shape
    wide, rank, lr, wd = rows <= cols, 4, 0.01, 0.1
    generator = torch.Generator().manual_seed(0)
    # float64, so that the update (~1e-3) survives subtracting weights of ~1 from each other.
    weight = torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
    optimizer = GaLoreAdamW([weight], lr=lr, weight_decay=wd, rank=rank, update_every=2, scale=PAPER_SCALE)
    projectors = []
    for step in range(1, 5):
        grad = torch.randn(shape, generator=generator, dtype=torch.float64)
        before = weight.detach().clone()
        weight.grad = grad
        optimizer.step()
        projector = optimizer.state[weight]["projector"]  # (rows or cols, rank)
        assert projector.shape == ((rows if wide else cols), rank)
        identity = torch.eye(rank, dtype=torch.float64)
        torch.testing.assert_close(projector.T @ projector, identity, rtol=0, atol=1e-5)
        if step % 2 == 1:  # refreshed (steps 1, 3): the top-r subspace of this step's gradient
            top_energy = torch.linalg.svdvals(grad)[:rank].square().sum()
            kept = (projector.T @ grad if wide else grad @ projector).square().sum()
            torch.testing.assert_close(kept, top_energy, rtol=1e-5, atol=0)
        update = weight.detach() - (1 - lr * wd) * before
        assert out_of_subspace(update, projector, wide) < 1e-5
        projectors.append(projector.clone())
    assert torch.equal(projectors[0], projectors[1])  # kept between refreshes
    assert out_of_subspace(projectors[2] @ projectors[2].T, projectors[0], True) > 0.5  # moved


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_the_projector_does_not_depend_on_the_sign_lapack_picks(shape):
    # LAPACK negates the right singular vectors of -G and keeps the left ones; the moments kept
    # across a refresh are read in the new basis, so that choice must not reach the projector.
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    projectors = []
    for sign in (1, -1):
        weight = torch.nn.Parameter(torch.zeros(shape))
        optimizer = GaLoreAdamW([weight], rank=4, update_every=PAPER_UPDATE_EVERY, scale=PAPER_SCALE)
        weight.grad = sign * grad
        optimizer.step()
        projectors.append(optimizer.state[weight]["projector"])
    assert torch.equal(*projectors)


# -- 4. convergence --------------------------------------------------------------------------------

VOCAB, N_EMBD, SEQ_LEN, BATCH, STEPS, RANK = 64, 32, 32, 16, 80, 8


def markov_successors(seed: int) -> torch.Tensor:
    """Each token is followed by one of two tokens, chosen at random: a bigram signal to learn."""
    return torch.randint(0, VOCAB, (VOCAB, 2), generator=torch.Generator().manual_seed(seed))


def sample_sequences(successors: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    ids = torch.empty(n, SEQ_LEN, dtype=torch.long)  # (n, T)
    ids[:, 0] = torch.randint(0, VOCAB, (n,), generator=generator)
    for t in range(1, SEQ_LEN):
        ids[:, t] = successors[ids[:, t - 1], torch.randint(0, 2, (n,), generator=generator)]
    return ids


def held_out_losses(make_optimizer) -> list[float]:
    """Held-out loss before each step and after the last; fresh batches every step, same for all."""
    successors = markov_successors(0)
    held_out = sample_sequences(successors, 32, torch.Generator().manual_seed(99))
    batches = torch.Generator().manual_seed(1)
    model = tiny_gpt2(0, vocab_size=VOCAB, n_embd=N_EMBD, n_layer=1, n_positions=SEQ_LEN)
    optimizer = make_optimizer(model)
    losses = []
    for _ in range(STEPS):
        with torch.no_grad():
            losses.append(model(input_ids=held_out, labels=held_out).loss.item())
        lm_step(model, optimizer, sample_sequences(successors, BATCH, batches))
    with torch.no_grad():
        losses.append(model(input_ids=held_out, labels=held_out).loss.item())
    return losses


def galore_on_blocks(model: GPT2LMHeadModel) -> GaLoreAdamW:
    """GaLore on the transformer blocks' matrices, as the paper applies it to attention and MLP;
    the (tied) token and position embeddings full-rank, through a group with a rank above their size."""
    embeddings = [model.transformer.wte.weight, model.transformer.wpe.weight]
    blocks = [p for p in model.transformer.h.parameters()] + list(model.transformer.ln_f.parameters())
    return GaLoreAdamW([{"params": blocks}, {"params": embeddings, "rank": 10**9}],
                       lr=0.05, rank=RANK, update_every=20, scale=0.25)


def steps_to(losses: list[float], threshold: float) -> int:
    return next(step for step, loss in enumerate(losses) if loss < threshold)


def test_galore_learns_about_as_fast_as_adamw_and_faster_than_sgd():
    # Learning rates tuned once on this problem (grids: AdamW 0.01-0.03, SGD 0.2-1.0, GaLore 0.03-0.1
    # at scale 0.25, update_every 10/20); each arm has its best. GaLore's best lr, 0.05, is 2.5x
    # AdamW's: its update is α = 0.25 times a rank-r one, and the paper too pairs α = 0.25 with a
    # larger lr than Adam's. Rank 8 of n_embd 32 is the ratio of rank 32 at n_embd 128.
    adamw = held_out_losses(lambda model: torch.optim.AdamW(model.parameters(), lr=0.02))
    galore = held_out_losses(galore_on_blocks)
    sgd = held_out_losses(lambda model: torch.optim.SGD(model.parameters(), lr=0.3))

    # The floor is the chain's entropy: ln 2 per predicted token after the first, ln 64 for the
    # first, (31 ln 2 + ln 64) / 32 = 0.80 nats. Measured: AdamW 4.18 -> 0.83 after 80 steps (below
    # 1.0 at step 27), GaLore -> 0.85 (step 31), SGD -> 1.30 (never). The tolerances (final loss
    # within 15%, threshold within 1.5x the steps) allow for a rank-8 update while shutting out what
    # SGD, the best optimizer here without Adam's normalisation, does. GaLore on every matrix,
    # embeddings included (as optim.build_optimizer's groups would give), is slower here: 1.00 after
    # 80 steps, below 1.0 only at step 77; the token embedding (64, 32) updated in 8 of 32 dimensions.
    initial = math.log(VOCAB)
    assert adamw[0] == pytest.approx(galore[0]) == pytest.approx(initial, abs=0.1)
    assert galore[-1] < 0.25 * initial
    assert galore[-1] <= 1.15 * adamw[-1]
    assert steps_to(galore, 1.0) <= 1.5 * steps_to(adamw, 1.0)
    assert min(sgd) > 1.0 and galore[-1] < sgd[-1] - 0.3


# -- 5. checkpoint and resume ----------------------------------------------------------------------


def resume_run(steps_before: int, steps_after: int, batches: torch.Tensor):
    """steps_before steps, then model and optimizer through torch.save/torch.load into fresh ones."""

    def fresh(seed: int):
        model = tiny_gpt2(seed, vocab_size=VOCAB, n_embd=N_EMBD, n_layer=1, n_positions=16)
        return model, GaLoreAdamW(factory_groups(model, 0.1), lr=0.01, rank=RANK, update_every=4,
                                  scale=PAPER_SCALE)

    model, optimizer = fresh(0)
    for batch in batches[:steps_before]:
        lm_step(model, optimizer, batch)
    if steps_after:
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        model, optimizer = fresh(1)  # a different init: the checkpoint must overwrite all of it
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for batch in batches[steps_before:steps_before + steps_after]:
            lm_step(model, optimizer, batch)
    return model, optimizer


def test_a_resumed_run_equals_an_uninterrupted_one_across_a_projector_refresh():
    batches = torch.randint(0, VOCAB, (6, 4, 16), generator=torch.Generator().manual_seed(3))
    straight_model, straight = resume_run(6, 0, batches)
    resumed_model, resumed = resume_run(3, 3, batches)
    at_step_4_model, at_step_4 = resume_run(4, 0, batches)

    for (name, a), b in zip(straight_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.state_dict()["state"].values(), resumed.state_dict()["state"].values()):
        assert a.keys() == b.keys() and a["step"] == b["step"] == 6
        assert all(torch.equal(a[key], b[key]) for key in a if key != "step")
    # Step 5 refreshed the projectors (update_every=4: steps 1 and 5), after the resume.
    c_fc = lambda model: model.transformer.h[0].mlp.c_fc.weight  # noqa: E731
    assert not torch.equal(at_step_4.state[c_fc(at_step_4_model)]["projector"],
                           straight.state[c_fc(straight_model)]["projector"])


# -- 6. arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argument", "value"), [
    ("lr", 0.0), ("lr", -1e-3), ("betas", (1.0, 0.999)), ("betas", (0.9, -0.1)), ("eps", -1e-8),
    ("weight_decay", -0.1), ("rank", 0), ("rank", 2.5), ("update_every", 0), ("scale", 0.0), ("scale", -1.0),
])
def test_bad_arguments_are_refused_naming_the_argument(argument, value):
    weight = torch.nn.Parameter(torch.zeros(8, 8))
    valid = {"rank": 4, "update_every": PAPER_UPDATE_EVERY, "scale": PAPER_SCALE}
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        GaLoreAdamW([weight], **{**valid, argument: value})
    with pytest.raises(ValueError, match=rf"^{argument} must be"):  # a group's own setting too
        GaLoreAdamW([{"params": [weight], argument: value}], **valid)


@pytest.mark.parametrize("missing", ["rank", "update_every", "scale"])
def test_rank_update_every_and_scale_have_no_default_here(missing):
    # Their one default lives in gptpipe.config.LoopConfig; a second one here once differed (200, 0.25).
    weight = torch.nn.Parameter(torch.zeros(8, 8))
    given = {"rank": 4, "update_every": PAPER_UPDATE_EVERY, "scale": PAPER_SCALE}
    del given[missing]
    with pytest.raises(TypeError, match=missing):
        GaLoreAdamW([weight], **given)


def test_build_optimizer_passes_the_config_galore_knobs():
    model = tiny_gpt2(0, vocab_size=100, n_embd=32, n_layer=1, n_positions=16)
    cfg = LoopConfig(optimizer="galore", galore_rank=3, galore_update_every=7, galore_scale=0.5)
    optimizer = build_optimizer(model.parameters(), cfg)
    assert isinstance(optimizer, GaLoreAdamW)
    assert (optimizer.defaults["rank"], optimizer.defaults["update_every"], optimizer.defaults["scale"]) == (3, 7, 0.5)
    default = LoopConfig(optimizer="galore")
    assert build_optimizer(model.parameters(), default).defaults["update_every"] == default.galore_update_every


def test_state_elements_refuses_a_rank_below_one():
    with pytest.raises(ValueError, match="^rank must be"):
        galore_state_elements([(8, 8)], rank=0)
