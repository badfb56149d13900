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
    points = [*optimizer_points(), *lora_points(), *data_quality_points(), *scaling_points()]
    for point in points:
        load_params(tmp_path / "params.yaml", overrides=point.overrides)
    ranks = {p.label: p.overrides for p in lora_points()}
    assert ranks["r8"] == {"train.lora.rank": 8, "train.lr": LORA_LR}
    assert ranks["full"]["train.lora.rank"] == 0


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
