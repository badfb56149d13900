"""Reward models: the Bradley-Terry loss, the scalar head, training through the loop, the hf backend."""

import json
import math
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from gptpipe.data.batches import PairExample, pair_examples
from gptpipe.errors import UserError
from gptpipe.evaluation.scores import auc, summarise_scores
from stage_runs import run_base, run_reward, run_score
from gptpipe.models.reward import (
    MARKER, RewardUnreachable, load_hub_classifier, load_scorer,
    reward_model_from, sequence_rewards,
)
from gptpipe.data.tokenizer import read_arrow
from gptpipe.models.gpt2 import build_scratch, save_model
from gptpipe.train.objectives import BradleyTerry, bradley_terry_loss


def test_bradley_terry_loss_equals_the_formula_on_hand_values():
    chosen, rejected = torch.tensor([1.0, 0.0, 30.0]), torch.tensor([0.0, 2.0, -30.0])
    expected = math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(2.0)) + math.log(1 + math.exp(-60.0))
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    assert bradley_terry_loss(torch.tensor([-50.0]), torch.tensor([50.0])).item() == pytest.approx(100.0)  # no overflow


def test_auc_is_the_probability_a_positive_outscores_a_negative():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 3], [2, 2]) == 0.5  # 1<2 twice, 3>2 twice
    assert auc([2], [2]) == 0.5  # a tie counts half


@pytest.fixture(scope="module")
def base_dir(tiny_params, tokenized, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    run_base(tiny_params, tokenized, out / "base", out / "base.json", out / "plots")
    return out / "base"


def test_pairwise_accuracy_counts_a_tie_half():
    frame = pd.DataFrame({"chosen_reward": [2.0, 1.0, 0.0, 1.0], "rejected_reward": [1.0, 1.0, 1.0, 1.0]})
    frame["margin"] = frame["chosen_reward"] - frame["rejected_reward"]
    assert summarise_scores(frame)["pairwise_accuracy"] == 0.5  # 1 ordered + 2 ties × ½, of 4


def test_the_reward_head_reads_each_rows_last_real_token(base_dir):
    model = reward_model_from(base_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batched = sequence_rewards(model, ids, mask)
    alone = sequence_rewards(model, ids[1:, :2], mask[1:, :2])
    torch.testing.assert_close(batched[1:], alone, rtol=1e-5, atol=1e-6)  # padding changes nothing
    changed = sequence_rewards(model, torch.tensor([[5, 6, 7, 9]]), mask[:1])
    assert not torch.allclose(changed, batched[:1])  # the last token is read


def test_objective_orders_chosen_before_rejected(base_dir):
    objective = BradleyTerry(reward_model_from(base_dir)).eval()
    pairs = [PairExample([1, 2], [3, 4], [5]), PairExample([6], [7], [8, 9, 10])]
    batch = objective.collate(pairs)
    rewards = sequence_rewards(objective.model, batch.input_ids, batch.attention_mask)
    loss, stats = objective(batch)
    assert loss.item() == pytest.approx(bradley_terry_loss(rewards[:2], rewards[2:]).item())
    assert stats["accuracy"].item() == int((rewards[:2] > rewards[2:]).sum())
    assert batch.head_positions == 0  # a scalar head: no LM-head FLOPs


def test_the_reward_loss_trains_without_dropout(tiny_params, tmp_path):
    # Two passes over the same pair in train mode score it alike: no dropout noise in the margin.
    save_model(build_scratch(tiny_params.model.model_copy(update={"dropout": 0.1}), 0), tmp_path)
    objective = BradleyTerry(reward_model_from(tmp_path)).train()
    batch = objective.collate([PairExample([1, 2, 3], [4, 5], [6, 7, 8])])
    first, second = (sequence_rewards(objective.model, batch.input_ids, batch.attention_mask) for _ in range(2))
    assert torch.equal(first, second)


def test_trained_reward_model_separates_the_synthetic_pairs(tiny_params, tokenized, base_dir, tmp_path):
    params = tiny_params.model_copy(update={"reward": tiny_params.reward.model_copy(update={
        "max_steps": 30, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 3, "eval_every": 30,
        "eval_samples": 60, "checkpoint_every": 100, "lr": 1e-2})})
    metrics = run_reward(params, tokenized, base_dir, tmp_path / "reward", tmp_path / "reward.json", tmp_path / "plots")
    rows = pd.read_csv(tmp_path / "plots" / "loss.tsv", sep="\t")
    assert rows["test_loss"].iloc[-1] < rows["test_loss"].iloc[0] - 0.05
    assert metrics["test_accuracy_all_pairs"] > 0.65
    assert json.loads((tmp_path / "reward" / MARKER).read_text())["backend"] == "trained"
    scorer = load_scorer(tmp_path / "reward", batch_size=7, device=torch.device("cpu"))
    # Scoring text gives the rewards the training saw (same ids; EOT appended as the tokenizer does).
    test = read_arrow(tokenized / "test.arrow")
    raw = pq.read_table(tokenized.parent / "raw" / "test.parquet").to_pandas()
    text_scores = scorer.score(raw["prompt"].tolist()[:20], raw["chosen"].tolist()[:20])
    batch = BradleyTerry.collate(pair_examples(test.slice(0, 20)))
    model = scorer.model
    id_scores = sequence_rewards(model, batch.input_ids, batch.attention_mask)[:20].detach().numpy()
    np.testing.assert_allclose(text_scores, id_scores, rtol=1e-4, atol=1e-4)
    # The score stage on the raw pairs: accuracy above chance, and the ground truth agrees.
    score = run_score(params, tokenized.parent / "raw", tmp_path / "reward", tmp_path / "scored",
                      tmp_path / "score.json", tmp_path / "splots")
    # Same judge, same pairs: the score stage's margins are the reward stage's, to float rounding
    # (other batch shapes, so other kernels' rounding), on every pair whose text encodes to the ids
    # the judge trained on. A pair over tokenize.max_length differs by design: tokenize cuts its
    # prompt once for both responses, scoring text cuts it per response.
    scored_test = pd.read_parquet(tmp_path / "scored" / "test.parquet")
    pairs = pair_examples(test)
    all_batch = BradleyTerry.collate(pairs)
    rewards = sequence_rewards(model, all_batch.input_ids, all_batch.attention_mask).detach().numpy()
    ids_margin = rewards[: len(pairs)] - rewards[len(pairs):]
    same_ids = np.array([scorer.encode(q, c).ids == e.prompt + e.chosen and scorer.encode(q, r).ids == e.prompt + e.rejected
                         for q, c, r, e in zip(raw["prompt"], raw["chosen"], raw["rejected"], pairs, strict=True)])
    assert same_ids.sum() >= len(pairs) // 2  # most pairs fit: the comparison covers them
    np.testing.assert_allclose(scored_test["margin"].to_numpy()[same_ids], ids_margin[same_ids], rtol=1e-4, atol=1e-4)
    assert score["train"]["sound_vs_flawed_chosen_auc"] > 0.55
    scored = pd.read_parquet(tmp_path / "scored" / "train.parquet")
    assert list(scored.columns[:5]) == ["id", "chosen_reward", "rejected_reward", "margin", "scorer"]
    assert (tmp_path / "splots" / "rewards.png").stat().st_size > 10_000


# -- the hf backend, on a small randomly initialised classifier saved locally ---------------------


def test_hf_backend_scores_text_pairs_like_the_classifier_itself(tiny_params, tokenized, tiny_classifier, tmp_path):
    params = tiny_params.model_copy(update={"reward": tiny_params.reward.model_copy(update={
        "backend": "hf", "name": str(tiny_classifier)}), "score": tiny_params.score.model_copy(update={"batch_size": 5})})
    metrics = run_reward(params, tokenized, tmp_path / "unused-base", tmp_path / "reward", tmp_path / "r.json", tmp_path / "p")
    assert metrics["backend"] == "hf" and metrics["name"] == str(tiny_classifier)
    # The outputs dvc.yaml declares for the stage exist on this path too (the full study's blocker).
    assert (tmp_path / "p" / "loss.tsv").is_file() and (tmp_path / "p" / "curves.png").is_file()
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0 and metrics["eval_pairs"] == 16
    scorer = load_scorer(tmp_path / "reward", batch_size=5, device=torch.device("cpu"))
    prompts = ["\n\nHuman: what is the capital of france ?\n\nAssistant:"] * 3 + ["\n\nHuman: 1 2 3\n\nAssistant:"]
    responses = [" paris .", " i am not sure", " a", " 4 5"]
    model, tokenizer = load_hub_classifier(str(tiny_classifier))
    questions = ["what is the capital of france ?"] * 3 + ["1 2 3"]  # the last turn, markers stripped
    with torch.no_grad():
        expected = [model.eval()(**tokenizer(q, r, return_tensors="pt")).logits[0, 0].item()
                    for q, r in zip(questions, responses)]
    np.testing.assert_allclose(scorer.score(prompts, responses), expected, rtol=1e-4, atol=1e-5)
    score = run_score(params, tokenized.parent / "raw", tmp_path / "reward", tmp_path / "scored",
                      tmp_path / "score.json", tmp_path / "splots")
    assert score["scorer"] == str(tiny_classifier) and score["test"]["pairs"] == 60


def test_hf_backend_without_the_hub_fails_in_seconds_naming_the_alternatives(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port, on any machine
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(RewardUnreachable) as err:
        load_hub_classifier("OpenAssistant/reward-model-deberta-v3-large-v2")
    assert time.monotonic() - started < 10  # one probe, not from_pretrained's retries (46 s here)
    message = str(err.value)
    assert "\n" not in message and "http://127.0.0.1:9 is unreachable" in message
    assert "absolute folder" in message and "reward.backend=trained" in message


def test_a_folder_without_a_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="run the reward stage"):
        load_scorer(tmp_path, batch_size=4, device=torch.device("cpu"))
    with pytest.raises(UserError, match="run the base stage"):
        reward_model_from(tmp_path)


# -- the quality filter ---------------------------------------------------------------------------


def _scored(tmp_path, tokenized, rewards):
    """A scored train split with chosen rewards of our choosing (the filter sees only scores)."""
    table = read_arrow(tokenized / "train.arrow")
    ids = table.column("id").to_pylist()
    frame = pd.DataFrame({"id": ids, "chosen_reward": rewards, "rejected_reward": np.zeros(len(ids))})
    frame["margin"] = frame["chosen_reward"] - frame["rejected_reward"] * 0 - np.arange(len(ids)) % 3
    frame["scorer"] = "test"
    frame["chosen_flawed"] = frame["chosen_reward"] < 0
    (tmp_path / "scored").mkdir()
    frame.to_parquet(tmp_path / "scored" / "train.parquet")
    return frame


def _filter(tiny_params, tokenized, tmp_path, **update):
    from stage_runs import run_filter

    params = tiny_params.model_copy(update={"filter": tiny_params.filter.model_copy(update=update)})
    return run_filter(params, tmp_path / "scored", tokenized, tmp_path / "subsets", tmp_path / "filter.json")


@pytest.mark.parametrize("by", ["chosen_reward", "margin"])
def test_filter_keeps_exactly_the_top_n(tiny_params, tokenized, tmp_path, by):
    rng = np.random.default_rng(0)
    frame = _scored(tmp_path, tokenized, rng.normal(size=300))
    metrics = _filter(tiny_params, tokenized, tmp_path, keep=40, by=by)
    kept = read_arrow(tmp_path / "subsets" / "train.arrow")
    expected = set(frame.nlargest(40, by)["id"])
    assert kept.num_rows == 40 and set(kept.column("id").to_pylist()) == expected
    assert metrics["threshold"] == pytest.approx(frame.nlargest(40, by)[by].min())
    assert metrics["mean_chosen_reward_kept"] > metrics["mean_chosen_reward_dropped"]
    # The kept rows are the tokenized rows themselves, in their original order.
    original = read_arrow(tokenized / "train.arrow")
    positions = [original.column("id").to_pylist().index(i) for i in kept.column("id").to_pylist()]
    assert positions == sorted(positions)
    assert kept.column("chosen_ids").to_pylist() == original.take(positions).column("chosen_ids").to_pylist()


def test_random_control_is_seeded_and_of_the_same_size(tiny_params, tokenized, tmp_path):
    frame = _scored(tmp_path, tokenized, np.linspace(-1, 1, 300))
    first = _filter(tiny_params, tokenized, tmp_path, keep=100, by="random")
    ids = read_arrow(tmp_path / "subsets" / "train.arrow").column("id").to_pylist()
    _filter(tiny_params, tokenized, tmp_path, keep=100, by="random")
    assert read_arrow(tmp_path / "subsets" / "train.arrow").column("id").to_pylist() == ids
    assert len(ids) == 100 and set(ids) != set(frame.nlargest(100, "chosen_reward")["id"])
    assert first["threshold"] is None and 0.3 < first["flawed_fraction_kept"] < 0.7


def test_null_keep_keeps_everything_and_too_large_a_keep_fails_before_writing(tiny_params, tokenized, tmp_path):
    _scored(tmp_path, tokenized, np.linspace(-1, 1, 300))
    assert _filter(tiny_params, tokenized, tmp_path, keep=None)["kept"] == 300
    before = (tmp_path / "subsets" / "train.arrow").read_bytes()
    with pytest.raises(UserError, match=r"filter.keep: 301 exceeds the 300 train pairs"):
        _filter(tiny_params, tokenized, tmp_path, keep=301)
    assert (tmp_path / "subsets" / "train.arrow").read_bytes() == before  # the earlier output is intact
