"""Judging answers with the reward scorer and comparing models: intervals, win rates, the report."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gptpipe.errors import UserError
from gptpipe.evaluation.stats import (
    mean_interval, paired_difference, proportion_interval, seeded_difference, student_t_quantile, verdicts_markdown,
    win_rate, win_rates,
)
from stage_runs import run_evaluate, run_judge, run_score
from gptpipe.models.gpt2 import build_scratch
from gptpipe.models.reward import reward_model_from, save_reward_model


def test_a_rate_interval_is_wilsons():
    # 0 of 200: [0, 1.9%] (Wilson), not the normal approximation's [0, 0]
    low, high = proportion_interval(0, 200, 0.95)
    assert low == 0.0 and high == pytest.approx(0.01884, abs=1e-4)
    low, high = proportion_interval(100, 200, 0.95)  # symmetric at one half
    assert (low, high) == pytest.approx((0.4314, 0.5686), abs=1e-4)
    assert proportion_interval(200, 200, 0.95)[1] == 1.0


def test_a_paired_difference_inside_its_interval_is_no_difference():
    rng = np.random.default_rng(0)
    earlier = rng.random(200) < 0.3
    clearly = earlier | (rng.random(200) < 0.5)  # many more right, on the same prompts
    v = paired_difference(clearly, earlier, 0.95)
    assert v["verdict"] == "higher" and v["ci_low"] > 0 and v["difference"] == pytest.approx(clearly.mean() - earlier.mean())
    assert paired_difference(earlier, clearly, 0.95)["verdict"] == "lower"
    noise = earlier.copy()
    noise[:3] = ~noise[:3]  # 3 prompts differ: too few to tell, whatever the interval says
    assert paired_difference(noise, earlier, 0.95)["verdict"] == "no difference"
    same = paired_difference(earlier, earlier, 0.95)
    assert same["verdict"] == "no difference" and same["discordant"] == 0
    swapped = earlier.copy()  # 40 up, 40 down: a wide interval around 0
    up, down = np.flatnonzero(~earlier)[:40], np.flatnonzero(earlier)[:40]
    swapped[up], swapped[down] = True, False
    assert paired_difference(swapped, earlier, 0.95)["verdict"] == "no difference"


def test_student_t_quantiles_are_the_tables():
    # Printed tables (two-sided 95% and 99%): df 1, 2, 4, 30.
    for p, df, value in [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.995, 4, 4.604), (0.975, 30, 2.042)]:
        assert student_t_quantile(p, df) == pytest.approx(value, abs=1e-3)


def _seed(up: int, down: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """One seed's answers: `up` prompts right only for the later model, `down` only for the earlier."""
    later, earlier = np.zeros(n, bool), np.zeros(n, bool)
    later[:up] = True
    earlier[up : up + down] = True
    return later, earlier


def test_a_verdict_over_seeds_covers_the_seed_to_seed_spread():
    # +20, +20 and -10 points: pooled over 600 (seed, prompt) pairs, +10 looks sure ([+6.8, +13.2]);
    # over seeds it is not: Student's t with 2 df on the three differences, mean 10, sd 17.3.
    runs = [_seed(40, 0), _seed(40, 0), _seed(0, 20)]
    pooled = paired_difference(np.concatenate([a for a, _ in runs]), np.concatenate([b for _, b in runs]), 0.95)
    assert pooled["verdict"] == "higher"
    v = seeded_difference(runs, 0.95)
    half = 4.3027 * np.std([0.2, 0.2, -0.1], ddof=1) / math.sqrt(3)
    assert v["difference"] == pytest.approx(0.1) and v["per_seed"] == pytest.approx([0.2, 0.2, -0.1])
    assert (v["ci_low"], v["ci_high"]) == pytest.approx((0.1 - half, 0.1 + half), abs=1e-4)
    assert v["verdict"] == "no difference" and v["seeds"] == 3 and v["discordant"] == 100
    table = verdicts_markdown({"dpo vs sft": {"exact accuracy": v}}, "legend")
    assert table[2:] == ["| comparison | exact accuracy | seeds |", "|---|---|---|",
                         "| dpo vs sft | +10.0 [-33.0, +53.0], 100 differ; per seed +20.0, +20.0, -10.0: no difference | 3 seeds |"]


def test_seeds_that_agree_keep_at_least_the_prompt_level_interval():
    same = [_seed(30, 10)] * 3  # identical seeds: no spread, but still 600 prompts' worth of noise
    v = seeded_difference(same, 0.95)
    pooled = paired_difference(np.concatenate([a for a, _ in same]), np.concatenate([b for _, b in same]), 0.95)
    assert (v["ci_low"], v["ci_high"]) == pytest.approx((pooled["ci_low"], pooled["ci_high"]))
    assert v["verdict"] == "higher"
    one = seeded_difference([_seed(30, 10)], 0.95)  # one seed is the paired difference, said so
    assert one == paired_difference(*_seed(30, 10), 0.95)
    row = verdicts_markdown({"a_vs_b": {"m": one}}, "legend")[-1]
    assert row.startswith("| a vs b | +10.0 [") and row.endswith(": **a is higher** | one seed |")


def test_win_rate_counts_ties_half():
    assert win_rate(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 5.0, 1.0])) == pytest.approx(2.5 / 4)


def test_mean_interval_is_the_normal_approximation():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low, high = mean_interval(values, 0.95)
    half = 1.959964 * math.sqrt(2.5) / math.sqrt(5)  # sample variance of 1..5 is 2.5
    assert (low, high) == pytest.approx((3 - half, 3 + half), rel=1e-5)


def test_win_rates_compare_later_models_with_earlier_ones_and_the_dataset():
    rewards = {"base": np.array([0.0, 0.0]), "sft": np.array([1.0, -1.0]), "dpo": np.array([2.0, 2.0])}
    rates = win_rates(rewards, chosen=np.array([1.0, 1.0]))
    assert rates == {"sft_vs_base": 0.5, "dpo_vs_base": 1.0, "dpo_vs_sft": 1.0,
                     "base_vs_dataset_chosen": 0.0, "sft_vs_dataset_chosen": 0.25, "dpo_vs_dataset_chosen": 1.0}


@pytest.fixture(scope="module")
def judge_dir(tiny_params, tmp_path_factory):
    """A real (untrained-head) GPT-2 reward model saved the way the reward stage saves it."""
    root = tmp_path_factory.mktemp("judge")
    build_scratch(tiny_params.model, seed=5).save_pretrained(root / "base")
    save_reward_model(reward_model_from(root / "base"), root / "reward", {"backend": "trained", "name": "tiny judge"})
    return root / "reward"


def _answers(raw_test, path, pick):
    """A generated-answers file in the generate stage's format, answers chosen per row by `pick`."""
    rows = pq.read_table(raw_test).to_pylist()[:10]
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps({"id": row["id"], "prompt": row["prompt"], "response": pick(row),
                                     "tokens": 5, "stopped": "eot"}) + "\n")
    return rows


def test_judge_and_evaluate_on_real_files(tiny_params, tokenized, judge_dir, tmp_path):
    raw_test = tokenized.parent / "raw" / "test.parquet"
    gen, judged = tmp_path / "generated", tmp_path / "judged"
    gen.mkdir()
    params = tiny_params.model_copy(update={"generate": tiny_params.generate.model_copy(update={"models": ("base", "sft")})})
    rows = _answers(raw_test, gen / "base.jsonl", lambda r: " I am not sure.")
    _answers(raw_test, gen / "sft.jsonl", lambda r: f" It is {r['answer']}.")
    for name in ("base", "sft"):
        m = run_judge(params, name, gen / f"{name}.jsonl", judge_dir, raw_test, judged / f"{name}.parquet",
                      tmp_path / f"{name}.json")
        assert m["answers"] == 10
    sft_m, base_m = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("sft", "base"))
    assert sft_m["exact_answer_accuracy"] == 1.0 and base_m["exact_answer_accuracy"] == 0.0
    # The judge-free labels: "It is <answer>." is sound, "I am not sure." an evasion.
    assert sft_m["labels"]["sound"] == 1.0 and base_m["labels"]["unhelpful"] == 1.0
    assert sft_m["exact_answer_ci_low"] < 1.0 <= sft_m["exact_answer_ci_high"] + 1e-12
    assert base_m["exact_answer_ci_low"] <= 1e-12 < base_m["exact_answer_ci_high"]
    assert set(pd.read_parquet(judged / "base.parquet")["label"]) == {"unhelpful"}
    run_score(params, tokenized.parent / "raw", judge_dir, tmp_path / "scored", tmp_path / "score.json", tmp_path / "sp")
    metrics = run_evaluate(params, judged, gen, tmp_path / "scored" / "test.parquet", raw_test,
                           tmp_path / "evaluate.json", tmp_path / "plots")
    base, sft = (pd.read_parquet(judged / f"{n}.parquet")["reward"].to_numpy() for n in ("base", "sft"))
    assert metrics["models"]["sft"]["mean_reward"] == pytest.approx(sft.mean())
    assert metrics["win_rates"]["sft_vs_base"] == pytest.approx(win_rate(sft, base))
    chosen = pd.read_parquet(tmp_path / "scored" / "test.parquet").set_index("id").loc[[r["id"] for r in rows], "chosen_reward"]
    assert metrics["reference"]["dataset chosen"]["mean_reward"] == pytest.approx(chosen.mean())
    report = (tmp_path / "plots" / "report.md").read_text()
    assert "| sft" in report and "dataset chosen" in report and rows[0]["prompt"].strip().splitlines()[-1] in report
    verdicts = metrics["judge_free_verdicts"]["sft_vs_base"]
    assert verdicts["exact accuracy"]["difference"] == 1.0 and verdicts["exact accuracy"]["verdict"] == "higher"
    row = next(line for line in report.splitlines() if line.startswith("| sft vs base |"))
    assert "+100.0 [" in row and "**sft is higher**" in row and row.endswith("| one seed |")
    win_rows = [line.split("|")[1:4] for line in report.split("Win rates")[1].split("## Sample")[0].splitlines() if line.startswith("| sft")]
    assert [c.strip() for c in win_rows[0]] == ["sft", "base", f"{win_rate(sft, base):.3f}"]
    assert "| sound" in report.replace("|   sound", "| sound") or " sound " in report.split("## Sample")[0]
    assert "nan" not in report.split("## Sample")[0]  # the reference rows' empty cells read "—"
    # Per task family: every answer counted once, under its record's family.
    families = pd.read_parquet(raw_test).set_index("id").loc[[r["id"] for r in rows], "family"].value_counts()
    by_family = sft_m["exact_by_family"]
    assert {f: v["answers"] for f, v in by_family.items()} == families.to_dict()
    assert all(v["correct"] == v["answers"] and v["accuracy"] == 1.0 for v in by_family.values())
    assert all(v["correct"] == 0 for v in base_m["exact_by_family"].values())
    family, count = next(iter(sorted(families.items())))
    assert f"| {family}" in report and f"{count}/{count} (100%" in report and f"0/{count} (0%" in report
    assert (tmp_path / "plots" / "rewards.png").stat().st_size > 5_000


def test_evaluate_refuses_a_missing_model_and_answers_to_other_prompts(tiny_params, tokenized, judge_dir, tmp_path):
    raw_test = tokenized.parent / "raw" / "test.parquet"
    with pytest.raises(UserError, match="run the judge stage for base"):
        run_evaluate(tiny_params, tmp_path, tmp_path, tmp_path / "x.parquet", raw_test, tmp_path / "e.json", tmp_path)
    with pytest.raises(UserError, match="run the generate stage"):
        run_judge(tiny_params, "sft", tmp_path / "none.jsonl", judge_dir, raw_test, tmp_path / "j.parquet", tmp_path / "j.json")
