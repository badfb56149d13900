"""Study points and tables (the DVC mechanics run end to end in test_pipeline)."""

import pandas as pd
import pytest

from gptpipe.studies.definitions import (
    COURSE_SIZES, FILTER_METRICS, JUDGE_SFT, SFT_METRICS, SFT_SERIES, data_quality_points, data_quality_sizes,
    data_quality_table,
)
from gptpipe.studies.runner import Result


def test_course_sizes_on_helpful_base_and_the_same_fractions_on_a_small_split():
    assert data_quality_sizes(43835) == list(COURSE_SIZES)
    assert data_quality_sizes(4000) == [3200, 2400, 1600, 800]


def test_points_have_the_full_set_top_n_and_random_controls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "data.json").write_text('{"train": {"pairs": 1000}}')
    points = {p.label: p.overrides for p in data_quality_points()}
    assert points["all"]["filter.keep"] is None
    assert points["top400"] == {"filter.keep": 400, "filter.by": "chosen_reward"}
    assert points["random200"] == {"filter.keep": 200, "filter.by": "random"}
    assert set(points) == {"all", "top800", "top600", "top400", "top200", "random400", "random200"}


def test_data_quality_table_reads_filter_sft_and_judge_metrics():
    def result(label, kept, by, loss, reward):
        metrics = {
            FILTER_METRICS: {"by": by, "kept": kept, "threshold": 1.5 if by != "random" else None,
                             "flawed_fraction_kept": 0.1},
            SFT_METRICS: {"epochs": 2.4, "train_loss": loss + 0.1, "test_loss": loss,
                          **({"test_sound_loss": loss - 0.5} if by != "random" else {})},
            JUDGE_SFT: {"mean_reward": reward, "ci_low": reward - 0.2, "ci_high": reward + 0.2, "exact_answer_accuracy": 0.25},
        }
        return Result(label, f"data-quality-{label}", {}, metrics, {SFT_SERIES: pd.DataFrame()})

    table = data_quality_table([result("top800", 800, "chosen_reward", 1.7, 2.0), result("random800", 800, "random", 1.6, 0.5)])
    assert table["subset"].tolist() == ["top800", "random800"]
    assert table["sft_reward"].tolist() == [2.0, 0.5]
    assert table["reward_ci"].iloc[0] == "[1.800, 2.200]"
    assert table["threshold"].isna().tolist() == [False, True]
    assert table["test_sound_loss"].iloc[0] == pytest.approx(1.2)  # an older record without it: blank
    assert table["test_sound_loss"].isna().tolist() == [False, True]


def test_a_missing_value_reads_as_a_dash_in_the_markdown_table(tmp_path):
    from gptpipe.studies.runner import write_table

    table = pd.DataFrame({"subset": ["top800", "random800"], "threshold": [5.83712, float("nan")]})
    write_table(table, tmp_path, "t", ["a note"])
    text = (tmp_path / "t.md").read_text()
    assert "5.837" in text and "—" in text and "nan" not in text
    assert pd.read_csv(tmp_path / "t.csv")["threshold"].isna().tolist() == [False, True]  # the CSV keeps NaN


def test_every_point_sets_keys_the_params_accept(tmp_path, monkeypatch):
    # `dvc exp run -S` sets these keys; one the config does not know (lora.rank after LoRA moved
    # under train) would fail every experiment of the study.
    from gptpipe.config import load_params
    from gptpipe.studies.definitions import LORA_LR, lora_points, optimizer_points, scaling_points

    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "data.json").write_text('{"train": {"pairs": 1000}}')
    (tmp_path / "params.yaml").write_text("shared:\n  seed: 1\n")
    from gptpipe.studies.architecture import architecture_points
    from gptpipe.train.flops import count_params, ModelShape

    from gptpipe.studies.tokenizer import tokenizer_points

    points = [*optimizer_points(), *lora_points(), *data_quality_points(), *scaling_points(), *architecture_points(),
              *tokenizer_points()]
    for point in points:
        load_params(tmp_path / "params.yaml", overrides=point.overrides)
    assert {"muon", "adafactor"} <= {p.label for p in optimizer_points()}
    # GPT-2 and the variant at 1, 2, 4 queries per K/V head, within 2% of GPT-2's non-embedding parameters
    arch = {p.label: load_params(tmp_path / "params.yaml", overrides=p.overrides).model for p in architecture_points()}
    assert list(arch) == ["gpt2", "llama-q1", "llama-q2", "llama-q4"] and arch["llama-q4"].n_kv_head == 1
    counts = {k: count_params(ModelShape(m.n_layer, m.n_embd, m.n_head, arch=m.arch, n_kv_head=m.n_kv_head,
                                         ffn_hidden=m.ffn_hidden), include_embeddings=False) for k, m in arch.items()}
    assert all(abs(n / counts["gpt2"] - 1) < 0.02 for n in counts.values()), counts
    ranks = {p.label: p.overrides for p in lora_points()}
    # the default train.lr (3e-3) is 3x AdamW's 1e-3, so every study lr is 3x its tuned value
    assert ranks["r8"] == {"train.lora.rank": 8, "train.lr": pytest.approx(3 * LORA_LR)}
    assert ranks["full"]["train.lora.rank"] == 0


def test_architecture_points_validate_on_a_llama_params_file_and_a_bad_point_stops_the_study(tmp_path, monkeypatch):
    # On a llama params.yaml the gpt2 point must switch the llama-only knobs off, or it is invalid.
    from gptpipe.config import ParamsError, load_params
    from gptpipe.studies import definitions
    from gptpipe.studies.architecture import architecture_points
    from gptpipe.studies.runner import Point

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("model:\n  arch: llama\n  n_kv_head: 2\n  ffn_hidden: 320\n")
    for point in architecture_points():
        load_params(tmp_path / "params.yaml", overrides=point.overrides)
    queued = []
    monkeypatch.setattr(definitions, "run_points", lambda *a, **k: queued.append(a))
    study = definitions.STUDIES["architecture"]
    bad = Point("odd", {"model.n_head": 3})
    monkeypatch.setattr(definitions, "chosen_points", lambda s, only: [bad])
    with pytest.raises(ParamsError, match=r"^study architecture, point odd: .*model.n_head: 3 does not divide n_embd=128"):
        definitions.run_study(study, report_only=False)
    assert queued == []  # refused before any experiment was queued


def test_scaling_points_follow_the_validated_model_section(tmp_path, monkeypatch):
    from gptpipe.config import ParamsError
    from gptpipe.studies.definitions import scaling_points

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("model:\n  init: scratch\n")
    assert [p.label for p in scaling_points()] == ["2x64", "2x128", "4x128"]
    (tmp_path / "params.yaml").write_text("model:\n  init: pretrained\n")
    assert [p.overrides for p in scaling_points()][0] == {"model.name": "gpt2"}
    (tmp_path / "params.yaml").write_text("model:\n  init: pretrianed\n")
    with pytest.raises(ParamsError, match="model.init"):  # a typo is an error, not the scratch sizes
        scaling_points()


def test_study_learning_rates_follow_train_lr(monkeypatch, tmp_path):
    # The default (train.lr null) keeps the tuned CPU values; the full preset's 1e-5 scales them all.
    from gptpipe.studies.definitions import LORA_LR, lora_points, optimizer_points

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  lr: null\n")
    assert {p.label: p.overrides["train.lr"] for p in optimizer_points()}["sgd"] == 0.5
    assert {p.label: p.overrides["train.lr"] for p in lora_points()} == {
        **{f"r{r}": LORA_LR for r in (1, 2, 4, 8, 16, 32)}, "full": 1e-3}
    (tmp_path / "params.yaml").write_text("train:\n  lr: 1.0e-05\n")
    lrs = {p.label: p.overrides["train.lr"] for p in optimizer_points()}
    assert lrs["sgd"] == 0.005 and lrs["adamw"] == 1e-5 and lrs["momentum"] == 0.0005
    assert {p.overrides["train.lr"] for p in lora_points() if p.label != "full"} == {5e-5}


# -- seeds and judge-free verdicts ---------------------------------------------------------------


def test_seeded_points_keep_the_label_for_the_first_seed_and_shift_shared_seed_for_the_rest():
    from gptpipe.studies.definitions import seeded_points
    from gptpipe.studies.runner import Point

    runs = seeded_points([Point("adamw", {"train.optimizer": "adamw"})], 3, 1337)
    assert [(run.label, point, k) for run, point, k in runs] == [
        ("adamw", "adamw", 0), ("adamw-seed1", "adamw", 1), ("adamw-seed2", "adamw", 2)]
    assert runs[0][0].overrides == {"train.optimizer": "adamw"}  # seed 0 is params.yaml's own
    assert runs[2][0].overrides == {"train.optimizer": "adamw", "shared.seed": 1339}


def test_mean_over_seeds_averages_each_point_and_shows_the_spread():
    from gptpipe.studies.definitions import mean_over_seeds

    table = pd.DataFrame({"point": ["a", "a", "b", "b"], "optimizer": ["sgd", "sgd", "adamw", "adamw"],
                          "test_loss": [1.0, 3.0, 2.0, 2.0], "exact_answer_accuracy": [0.5, 0.7, 0.1, 0.3]})
    out = mean_over_seeds(table).set_index("point")
    assert out.loc["a", "test_loss"] == 2.0 and out.loc["a", "test_loss_sd"] == pytest.approx(2 ** 0.5)
    assert out.loc["b", "test_loss_sd"] == 0.0
    assert out.loc["a", "exact_answer_accuracy"] == pytest.approx(0.6)
    assert out.loc["b", "optimizer"] == "adamw" and out.loc["a", "seeds"] == 2


def _judged(correct, sound=None):
    n = len(correct)
    sound = correct if sound is None else sound
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "correct": correct,
                         "label": ["sound" if s else "wrong" for s in sound]})


def test_paired_verdict_pools_seeds_and_calls_a_clear_gain_higher():
    from gptpipe.studies.verdicts import paired_verdict

    better, worse = _judged([True] * 30 + [False] * 10), _judged([False] * 30 + [False] * 10)
    verdict = paired_verdict([better, better], [worse, worse], 0.95)
    assert verdict["exact accuracy"]["verdict"] == "higher"
    assert verdict["exact accuracy"]["discordant"] == 60  # 30 prompts x 2 seeds
    assert verdict["exact accuracy"]["difference"] == pytest.approx(0.75)
    assert paired_verdict([worse], [better], 0.95)["sound-answer rate"]["verdict"] == "lower"


def test_paired_verdict_is_no_difference_inside_the_interval_or_on_few_differing_answers():
    from gptpipe.studies.verdicts import paired_verdict

    # 6 of 40 answers differ, all one way: a clear direction, but too few to decide on
    few = paired_verdict([_judged([True] * 6 + [False] * 34)], [_judged([False] * 40)], 0.95)
    assert few["exact accuracy"]["verdict"] == "no difference"
    # 12 gained, 10 lost: the interval holds 0
    a = _judged([True] * 12 + [False] * 10 + [True] * 18)
    b = _judged([False] * 12 + [True] * 10 + [True] * 18)
    assert paired_verdict([a], [b], 0.95)["exact accuracy"]["verdict"] == "no difference"


def test_paired_verdict_pairs_answers_by_prompt_id_not_by_row():
    from gptpipe.studies.verdicts import paired_verdict

    a = _judged([True] * 20 + [False] * 20)
    shuffled = a.iloc[::-1].reset_index(drop=True)
    same = paired_verdict([a], [shuffled], 0.95)["exact accuracy"]
    assert same["discordant"] == 0 and same["verdict"] == "no difference"


def test_comparisons_name_the_pairs_each_study_decides_on():
    from gptpipe.studies.definitions import STUDIES

    assert STUDIES["optimizers"].comparisons(["sgd", "adam", "adamw"]) == [("sgd", "adamw"), ("adam", "adamw")]
    assert STUDIES["lora"].comparisons(["r1", "r8", "full"]) == [("r1", "full"), ("r8", "full")]
    assert STUDIES["data-quality"].comparisons(["all", "top800", "top400", "random400"]) == [
        ("top400", "random400"), ("top800", "all"), ("top400", "all")]
    assert STUDIES["scaling"].comparisons(["2x64", "2x128", "4x128"]) == [("2x128", "2x64"), ("4x128", "2x128")]
    assert STUDIES["architecture"].comparisons(["gpt2", "llama-q1", "llama-q2", "llama-q4"]) == [
        ("llama-q1", "gpt2"), ("llama-q2", "llama-q1"), ("llama-q4", "llama-q1")]
    assert STUDIES["tokenizer"].comparisons(["gpt2", "bpe1024", "bpe4096"]) == [("bpe1024", "gpt2"), ("bpe4096", "gpt2")]
    assert STUDIES["tokenizer"].comparisons(["bpe1024"]) == []
    assert STUDIES["optimizers"].comparisons(["sgd"]) == []  # the reference failed: nothing to decide


def test_the_seeds_study_compares_each_seeds_models_with_each_other(monkeypatch):
    from gptpipe.studies import definitions
    from gptpipe.studies.definitions import STUDIES, seeded_points, study_verdicts

    # Per seed: sft right on 30 more prompts than base; dpo +6, +6 and -6 prompts against sft (of 40).
    answers = {}
    for k, (experiment, dpo_gain) in enumerate([("seeds-default", 6), ("seeds-default-seed1", 6), ("seeds-default-seed2", -6)]):
        answers[experiment, "base"] = _judged([False] * 40)
        answers[experiment, "sft"] = _judged([True] * 30 + [False] * 10)
        dpo = [True] * 30 + [False] * 10
        if dpo_gain > 0:
            dpo[30 : 30 + dpo_gain] = [True] * dpo_gain
        else:
            dpo[: -dpo_gain] = [False] * -dpo_gain
        answers[experiment, "dpo"] = _judged(dpo)
    monkeypatch.setattr(definitions, "read_judged", lambda experiment, model="sft": answers[experiment, model])
    runs = seeded_points(STUDIES["seeds"].points(), 3, 1337)
    results = [Result(run.label, f"seeds-{run.label}", {}, {}) for run, _, _ in runs]
    verdicts = study_verdicts(STUDIES["seeds"], results, {run.label: (point, k) for run, point, k in runs}, 3, 0.95)
    assert list(verdicts) == ["sft vs base", "dpo vs sft"]
    assert verdicts["sft vs base"]["exact accuracy"]["verdict"] == "higher"
    dpo = verdicts["dpo vs sft"]["exact accuracy"]
    assert dpo["seeds"] == 3 and dpo["per_seed"] == pytest.approx([0.15, 0.15, -0.15])
    assert dpo["verdict"] == "no difference"  # +5 points on average, but one seed of three went the other way


def test_the_study_commands_help_names_every_study():
    import typing

    from gptpipe.cli import study
    from gptpipe.studies.definitions import STUDIES

    argument = typing.get_args(typing.get_type_hints(study, include_extras=True)["name"])[1]
    assert all(name in argument.help.split(" (")[0].split(" | ") for name in STUDIES)


def test_points_runs_the_named_points_in_study_order_under_their_own_name(tmp_path, monkeypatch):
    from gptpipe.errors import UserError
    from gptpipe.studies.definitions import STUDIES
    from gptpipe.studies.selection import chosen_points, output_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("shared:\n  seed: 1\n")
    study = STUDIES["optimizers"]
    assert [p.label for p in chosen_points(study, ["muon", "adamw"])] == ["adamw", "muon"]
    assert output_name(study, ["muon", "adamw", "adafactor"]) == "optimizers-adamw-muon-adafactor"
    assert output_name(study, ()) == "optimizers" and len(chosen_points(study, ())) == len(study.points())
    with pytest.raises(UserError, match="--points: lion not in study optimizers; its points: sgd, momentum"):
        chosen_points(study, ["adamw", "lion"])
    # name@lr: the point at another lr, under its own label (an lr sweep), compared with AdamW as the point is
    swept = chosen_points(study, ["muon@0.01", "adamw", "muon", "muon@1e-3"])
    assert [p.label for p in swept] == ["adamw", "muon", "muon-lr0.001", "muon-lr0.01"]
    assert swept[3].overrides == {"train.optimizer": "muon", "train.lr": 0.01}
    assert ("muon-lr0.01", "adamw") in study.comparisons([p.label for p in swept])
    assert output_name(study, ["adamw", "muon@0.01"]) == "optimizers-adamw-muon-lr0.01"
    for bad, says in (("muon@fast", "'fast' is not a positive learning rate"), ("muon@-1", "'-1' is not a positive")):
        with pytest.raises(UserError, match=says):
            chosen_points(study, [bad])
    with pytest.raises(UserError, match="point 2x64 sets no learning rate"):
        chosen_points(STUDIES["scaling"], ["2x64@0.1"])
