"""The report page: on a project folder whose inputs are written by the stages' own writers.

Inputs are made here with gptpipe's writers (write_tsv, plots.*, study.write_table, the scaling report)
from numbers of a real run of the embedded default, so the page is tested on the formats the
pipeline really produces, and a change of format there shows up here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gptpipe import figures as plots
from gptpipe.config import parse_params
from gptpipe.entry import run_stage
from gptpipe.errors import UserError
from gptpipe.files import write_json, write_tsv
from gptpipe.report.blocks import VerdictCell
from gptpipe.report.findings import scaling_findings, study_findings
from gptpipe.report.format import fmt
from gptpipe.report.markdown import markdown_html
from gptpipe.report.metrics import ScalingMetrics, from_json
from gptpipe.report.page import build_report
from gptpipe.report.verdicts import verdict_table
from gptpipe.scaling.summary import write_scaling_report
from gptpipe.studies.runner import write_record, write_table

MIB = 2**20
MEMORY = {"parameters_bytes": 27449856, "gradients_bytes": 27449856, "optimizer_state_bytes": 54899824,
          "optimizer_state_bytes_theory": 54899712, "peak_rss_bytes": 916369408, "rest_bytes": 806569872}


def _stage_metrics(**figures) -> dict:
    return {"parameters": 6862464, "parameters_without_embeddings": 396800, "train_sequences": 4000,
            "epochs": 0.6, "optimizer": "adamw", "steps": 150, "trainable_parameters": 6862464,
            "peak_flops": 2e11, "memory": MEMORY, "lora_rank": 0, "trainable_fraction": 1.0, **figures}


BASE = _stage_metrics(lr=0.003, tokens=133694, flops=5410639084032.0, train_loss=1.9651410048314637,
                      test_loss=2.021118781298619, tokens_per_s=427.4, mfu=0.08648)
SFT = _stage_metrics(lr=0.001, tokens=124742, flops=1795584149760.0, train_loss=1.6310641773833894,
                     test_loss=1.6244660113825047, tokens_per_s=3436.7, mfu=0.24735)
SFT_SERIES = [
    {"step": 0, "tokens": 0, "flops": 0.0, "lr": 1e-4, "train_loss": 2.30908, "test_loss": 2.29288},
    {"step": 75, "tokens": 57008, "flops": 8.20732e11, "lr": 6e-4, "train_loss": 1.83635, "test_loss": 1.81968},
    {"step": 150, "tokens": 124742, "flops": 1.79558e12, "lr": 1e-4, "train_loss": 1.63106, "test_loss": 1.62447},
]
# metrics/studies/optimizers.json of the run committed with the optimizer study (some columns).
OPTIMIZERS = pd.DataFrame({
    "optimizer": ["sgd", "momentum", "nesterov", "adam", "adamw", "galore"],
    "lr": [0.5, 0.05, 0.05, 0.001, 0.001, 0.001],
    "test_loss": [1.741094180163795, 1.7281967182800135, 1.6987840026540042, 1.6244660113825047,
                  1.6244660113825047, 1.8085565098804406],
    "tokens_to_target": [101430, 101430, 79403, 79403, 79403, 124742],
    "tokens_per_s": [1347.2, 2420.0, 1123.0, 1727.6, 3420.3, 3387.3],
    "state_MiB": [0.0, 26.17822265625, 26.17822265625, 52.35655212402344, 52.35655212402344, 13.265869140625],
})
OPTIMIZER_TEST_LOSSES = ["1.741", "1.728", "1.699", "1.624", "1.809"]
SCALING_RUNS = pd.DataFrame({
    "label": ["2x32", "2x64", "2x128"] * 3,
    "n_params": [1666464, 3382080, 6960768] * 3,
    "budget": [3e10] * 3 + [1e11] * 3 + [3e11] * 3,
    "tokens": [3609, 2782, 1411, 10660, 6648, 3609, 31051, 16678, 8247],
    "planned_tokens": [3000, 1478, 718, 10001, 4927, 2394, 30003, 14783, 7183],
    "steps": [3, 2, 1, 11, 6, 3, 34, 17, 8],
    "flops_counted": [3.5112e10, 5.5084e10, 5.7555e10, 1.0327e11, 1.3112e11, 1.4683e11,
                      3.0054e11, 3.2825e11, 3.3459e11],
    "test_loss": [10.5125, 10.3311, 10.3384, 9.8329, 9.7037, 9.7270, 7.7203, 7.9377, 8.2648],
    "tokens_per_s": [2885.1, 2209.6, 1385.0, 2634.6, 1923.6, 1434.2, 2921.4, 2198.9, 1300.4],
})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A project folder with base, sft, the optimizer study and the scaling stage run; LoRA not run."""
    root = tmp_path_factory.mktemp("project")
    for stage, metrics in (("base", BASE), ("sft", SFT)):
        write_json(root / f"metrics/{stage}.json", metrics)
        write_tsv(root / f"plots/{stage}/loss.tsv", SFT_SERIES)
        plots.loss_curves(SFT_SERIES, root / f"plots/{stage}/loss.png", f"{stage}: loss")
    plots.memory_bars(MEMORY, root / "plots/sft/memory.png", "sft: memory")
    write_table(OPTIMIZERS, root / "plots/studies", "optimizers", ["Each optimizer ran at its default lr."])
    write_record(root / "metrics/studies/optimizers.json", "optimizers", "0" * 40, OPTIMIZERS)
    series = pd.DataFrame(SFT_SERIES)
    plots.study_curves({"sgd": series, "adamw": series}, root / "plots/studies/optimizers.png", "by optimizer")
    summary = write_scaling_report(SCALING_RUNS, root / "plots/scaling", regime="embedded default (test)")
    write_json(root / "metrics/scaling.json", summary)
    return root


@pytest.fixture
def project(inputs, tmp_path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(inputs, root)
    return root


def build(root: Path, commit: str | None = None) -> dict:
    return build_report(root, parse_params({}), commit, root / "report", root / "metrics/report.json")


def test_page_states_each_present_sections_numbers_and_names_the_commands_of_missing_ones(project):
    record = build(project, commit="abc1234")
    page = (project / "report/index.html").read_text()

    # the header: the regime read from params and the commit
    assert "Embedded default: synthetic HH-format pairs (4,000 train / 400 test)" in page
    assert "GPT-2 shape 2x128 (4 heads)" in page and "ran on CPU" in page and "abc1234" in page
    # training: key figures for people (separators, 4 digits, MiB, tokens/s, MFU in percent)
    for shown in ("124,742", "133,694", "2.021", "1.624", "3,437 tokens/s", "24.73%", "52.36 MiB",
                  "2.293 → 1.624"):
        assert shown in page, shown
    # the optimizer study: every row's test loss, the winner said in words, the best rows marked
    for loss in OPTIMIZER_TEST_LOSSES:
        assert f'<td class="num">{loss}</td>' in page, loss
    assert "Lowest final test loss: <strong>adam, adamw</strong> (1.624); highest: galore (1.809)" in page
    assert "Fewest tokens to the target loss: nesterov, adam, adamw (79,403)" in page
    assert page.count('<tr class="best">') == 2
    assert "Each optimizer ran at its default lr." in page  # the study's notes
    # the scaling stage: its own markdown (table and prose) and the fitted exponents
    assert "Chinchilla approach 2" in page and "2x64" in page and "C<sup>" in page
    # what has not run: one line with the command, for each part
    for command in ("gptpipe study lora", "dvc repro reward", "dvc repro score", "dvc repro filter",
                    "gptpipe study data-quality", "dvc repro dpo", "dvc repro evaluate", "gptpipe study seeds",
                    "gptpipe study scaling"):
        assert f'<p class="notrun">Not run yet: <code>{command}</code></p>' in page, command
    assert "Not run yet: <code>dvc repro sft</code>" not in page

    assert record["present"] == ["base", "sft", "study-optimizers", "scaling"]
    assert record["missing"] == ["study-optimizers-adamw-muon-adafactor", "study-optimizers-adamw-muon-lr0.01",
                                 "study-optimizers-adamw-adafactor-lr1.5",
                                 "study-lora", "study-architecture",
                                 "study-tokenizer", "reward", "score", "filter", "study-data-quality", "dpo", "evaluate",
                                 "study-seeds", "study-scaling"]
    assert "gptpipe study lora" in record["to_run"]
    assert json.loads((project / "metrics/report.json").read_text()) == record


class Checker(HTMLParser):
    """Every opened tag is closed in order; collects img src and href values."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]} at line {self.getpos()[0]}")
        else:
            self.stack.pop()


def test_html_closes_every_tag_and_every_image_is_beside_it(project):
    build(project)
    out = project / "report"
    checker = Checker()
    checker.feed((out / "index.html").read_text())
    checker.close()

    assert checker.errors == [] and checker.stack == []
    assert len(checker.srcs) == 7  # base loss, sft loss and memory, optimizers, isoflop, envelope, n_opt
    for src in checker.srcs:
        assert "/" not in src and (out / src).is_file(), src
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "studies-optimizers.png").read_bytes() == (project / "plots/studies/optimizers.png").read_bytes()
    local = [h for h in checker.hrefs if not h.startswith("#")]
    assert local and all((out / h).is_file() for h in local)  # the CSVs and the full-size PNGs
    # self-contained: nothing fetched from elsewhere, no scripts
    assert "script" not in checker.tags
    assert not any(ref.startswith(("http:", "https:", "//")) for ref in checker.srcs + checker.hrefs)


def test_a_failed_build_leaves_the_earlier_report_as_it_was(project):
    build(project)
    before = {p.name: p.read_bytes() for p in (project / "report").iterdir()}
    record = (project / "metrics/report.json").read_bytes()
    (project / "metrics/sft.json").write_text('{"test_loss": 1.5,')  # a half-written file

    with pytest.raises(UserError, match=r"metrics/sft.json: not valid JSON.*dvc repro sft"):
        build(project)

    assert {p.name: p.read_bytes() for p in (project / "report").iterdir()} == before
    assert (project / "metrics/report.json").read_bytes() == record
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".")) == []  # no temp folder left


def test_a_build_that_fails_while_writing_leaves_the_earlier_report_as_it_was(project, monkeypatch):
    build(project)
    before = {p.name: p.read_bytes() for p in (project / "report").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    write_json(project / "metrics/sft.json", {**SFT, "test_loss": 1.5})  # a page that would differ
    monkeypatch.setattr("gptpipe.report.page.shutil.copyfile", disk_full)  # index.html written, PNGs not
    with pytest.raises(OSError, match="No space left"):
        build(project)

    assert {p.name: p.read_bytes() for p in (project / "report").iterdir()} == before
    assert [p.name for p in project.iterdir() if p.name.startswith(".")] == []


def test_the_stage_writes_the_page_and_its_record_where_its_command_line_says(project, tmp_path):
    from stages.report import main

    (project / "params.yaml").write_text(yaml.safe_dump(parse_params({}).model_dump(mode="json")))
    run_stage(main, ["--root", str(project), "--out", str(tmp_path / "page"), "--metrics", str(tmp_path / "r.json")])

    assert "Optimizer comparison" in (tmp_path / "page/index.html").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["parts_present"] == 4


def test_stages_still_to_come_render_from_the_formats_they_write(project):
    """reward, score, filter, the data-quality study, dpo and evaluate, in the formats quality.py writes."""
    write_json(project / "metrics/reward.json", {
        "backend": "trained", "name": "gpt2 2x128 from models/base + scalar head", "test_pairs": 400,
        "test_accuracy_all_pairs": 0.8725, "test_loss_all_pairs": 0.31, "train_loss": 0.2, "test_loss": 0.3})
    plots.loss_curves(SFT_SERIES, project / "plots/reward/curves.png", "reward model")
    write_json(project / "metrics/score.json", {
        "scorer": "trained reward model", "sequences_per_s": 812.5,
        "train": {"pairs": 4000, "pairwise_accuracy": 0.91, "mean_chosen_reward": 1.2, "mean_rejected_reward": -0.4},
        "test": {"pairs": 400, "pairwise_accuracy": 0.87, "mean_chosen_reward": 1.1, "mean_rejected_reward": -0.3}})
    write_json(project / "metrics/filter.json", {
        "by": "chosen_reward", "kept": 1000, "total": 4000, "threshold": 0.734, "mean_chosen_reward_kept": 2.1,
        "mean_chosen_reward_dropped": 0.2, "flawed_fraction_kept": 0.05, "flawed_fraction_dropped": 0.38})
    quality = pd.DataFrame({"subset": ["all", "top 2000", "random 2000"], "pairs": [4000, 2000, 2000],
                            "test_loss": [1.6244660113825047, 1.5810000000000002, 1.7],
                            "mean_reward": [0.41, 0.66, 0.38]})
    write_table(quality, project / "plots/studies", "data-quality", ["Regime: **test**; `filter.by` chosen_reward."])
    write_json(project / "metrics/dpo.json", {"test_accuracy_start": 0.5, "test_accuracy": 0.7, "test_margin": 0.9,
                                              "test_loss": 0.61})
    (project / "plots/evaluate").mkdir(parents=True)
    (project / "plots/evaluate/report.md").write_text(
        "# Rewards of the generations\n\n| model | mean reward |\n|:--|--:|\n| sft | 0.51 |\n| dpo | 0.73 |\n\n"
        "- DPO beats SFT by <0.22> reward.\n")

    record = build(project)
    page = (project / "report/index.html").read_text()

    assert {"reward", "score", "filter", "study-data-quality", "dpo", "evaluate"} <= set(record["present"])
    assert "Reward model pairwise test accuracy: <strong>87.25%</strong>" in page
    assert "train: chosen scored above rejected in 91% of 4,000 pairs" in page
    assert "Kept <strong>1,000</strong> of 4,000 train pairs by chosen_reward (threshold 0.734)." in page
    assert "5% of those kept vs 38% of those dropped" in page
    assert "DPO implicit-reward test accuracy: <strong>70%</strong>" in page
    assert "Lowest final test loss: <strong>top 2000</strong> (1.581)" in page
    assert "Regime: <strong>test</strong>; <code>filter.by</code> chosen_reward." in page
    assert '<td class="num">0.73</td>' in page and "&lt;0.22&gt;" in page  # evaluate's markdown, escaped
    assert "reward-curves.png" in page and (project / "report/reward-curves.png").is_file()


def test_a_study_states_the_params_of_its_baseline_commit(project):
    """The params shown beside a study are those it ran on (params.yaml at its baseline), not today's."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    git("init", "-q")
    # the layout of that time: LoRA was a top-level section, now train.lora
    (project / "params.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 77}, "lora": {"rank": 8}}))
    git("add", "params.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    baseline = git("rev-parse", "HEAD")
    write_record(project / "metrics/studies/optimizers.json", "optimizers", baseline, OPTIMIZERS)

    build(project)
    page = (project / "report/index.html").read_text()

    assert f"params.yaml at the study&#39;s baseline {baseline[:7]}" in page
    assert "train: {max_steps: 77}" in page
    assert "lora: {rank: 8}" in page and "params: train, lora (params.yaml at the study" in page


def compact(html: str) -> str:
    """HTML with the whitespace between tags dropped and runs of it made one space: structure, not layout."""
    return re.sub(r">\s+<", "><", re.sub(r"\s+", " ", html))


def test_markdown_subset_and_numbers_for_people():
    html = compact(markdown_html(
        "# Title\n\nSome **bold** and `a_b|c` <script>.\n\n"
        "| name | n | loss |\n|:--|--:|--:|\n| a<b | 6862464 | 1.7604259379510043 |\n| c | 12 | 0.01562 |\n\n"
        "- first note\n  wrapped\n- second\n", heading_offset=2, best_column="loss"))
    assert "<h3>Title</h3>" in html
    assert "<p>Some <strong>bold</strong> and <code>a_b|c</code> &lt;script&gt;.</p>" in html
    assert "<td>a&lt;b</td>" in html and '<td class="num">6,862,464</td>' in html
    assert '<td class="num">1.76</td>' in html  # a long float cut to 4 digits
    assert '<tr class="best"><td>c</td>' in html  # the lowest loss
    assert "<ul><li>first note wrapped</li><li>second</li></ul>" in html

    assert [fmt(v) for v in (6862464, 3436.7, 427.4, 0.000597, 5410639084032.0, 1.6244660113825047, None)] == [
        "6,862,464", "3,437", "427.4", "0.000597", "5.411e+12", "1.624", "—"]


def test_markdown_tables_are_reformatted_for_people_and_mark_every_row_tied_for_the_lowest():
    """The table pandas writes for a study, as the reader should see it."""
    table = pd.DataFrame({"optimizer": ["sgd", "adam", "adamw", "galore"], "lr": [0.5, 0.001, 0.001, 0.00125],
                          "test_loss": [1.741094180163795, 1.6244660113825047, 1.62446601138, None],
                          "tokens_per_s": [1347.2, 1727.6, 3420.3, 3387.3], "note": ["—", "1e+12", "-4.957", "x"],
                          "state_MiB": [0.0, 52.35655212402344, 52.35655212402344, 13.265869140625]})
    html = compact(markdown_html(table.to_markdown(index=False), best_column="test_loss"))

    # column names as words; no inline styles, numeric columns by class
    assert ("<thead><tr><th>optimizer</th><th>lr</th><th>test loss</th><th>tokens/s</th><th>note</th>"
            "<th>state (MiB)</th></tr></thead>") in html
    assert "style=" not in html
    # adam and adamw tie as the reader sees them (1.624): both marked, and the legend says what by
    assert html.count('<tr class="best">') == 2
    assert ('<tr class="best"><td>adam</td><td class="num">0.001</td><td class="num">1.624</td>'
            '<td class="num">1,728</td><td>1e+12</td><td class="num">52.36</td></tr>') in html
    # 4 digits or fewer: as its writer wrote it; a text column keeps its numbers as text
    assert ('<tr><td>galore</td><td class="num">0.00125</td><td class="num">nan</td><td class="num">3,387</td>'
            '<td>x</td><td class="num">13.27</td></tr>') in html
    assert '<p class="legend">Highlighted: the lowest test loss.</p>' in html
    assert html.startswith('<div class="scroll"><table>') and "</table></div>" in html
    # without a best column, nothing is marked and there is no legend
    plain = markdown_html(table.to_markdown(index=False))
    assert 'class="best"' not in plain and "Highlighted" not in plain


def test_markdown_keeps_code_in_headers_and_shifts_headings_within_html():
    html = compact(markdown_html("## Sub\n\n###### Deep\n\n| `peak_rss_MiB` | state_MiB |\n|---|---|\n| 1 | 2 |\n",
                                 heading_offset=3))
    assert "<h5>Sub</h5>" in html and "<h6>Deep</h6>" in html  # never past h6
    assert "<th><code>peak_rss_MiB</code></th><th>state (MiB)</th>" in html


def test_the_template_escapes_every_value_it_is_given(project):
    """Names and notes from metrics, study tables and markdown reach the page as text, never as markup."""
    payload = "<script>alert(1)</script>"
    write_json(project / "metrics/score.json", {
        "scorer": payload, "train": {"pairs": 4, "pairwise_accuracy": 0.5, "mean_chosen_reward": 1.0,
                                     "mean_rejected_reward": 0.0}})
    write_json(project / "metrics/filter.json", {"by": payload, "kept": 1, "total": 2, payload: 3})
    rows = OPTIMIZERS.assign(optimizer=[*OPTIMIZERS["optimizer"][:-1], payload])  # galore's row, the highest loss
    write_record(project / "metrics/studies/optimizers.json", "optimizers", "0" * 40, rows)
    write_table(rows, project / "plots/studies", "optimizers", [f"A note with {payload}."])

    build(project, commit=payload)
    page = (project / "report/index.html").read_text()

    assert "<script" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"Scored by {escaped}." in page  # a finding's sentence
    assert f"train pairs by {escaped}" in page
    assert f'<th scope="row">{escaped}</th>' in page  # a metrics key
    assert f"highest: {escaped} (1.809)" in page
    assert f"<td>{escaped}</td>" in page  # a study table's cell
    assert f"A note with {escaped}." in page  # its notes
    assert f"from commit {escaped}." in page  # the footer


def test_data_quality_findings_set_each_random_control_against_the_top_subset_of_its_size():
    rows = [
        {"subset": "all", "by": "chosen_reward", "pairs": 4000, "test_loss": 1.6, "sft_reward": 4.3},
        {"subset": "top800", "by": "chosen_reward", "pairs": 800, "test_loss": 2.7, "sft_reward": 5.7},
        {"subset": "top400", "by": "chosen_reward", "pairs": 400, "test_loss": 2.8, "sft_reward": 3.0},
        {"subset": "random800", "by": "random", "pairs": 800, "test_loss": 1.7, "sft_reward": 4.5},
        {"subset": "random400", "by": "random", "pairs": 400, "test_loss": 1.8, "sft_reward": 3.5},
    ]
    said = " ".join(study_findings(rows))
    assert "Highest judged reward of the SFT answers: <strong>top800</strong> (5.7)" in said
    assert "At 800 pairs, the reward-filtered top800 (5.7) is ahead of the random control random800 (4.5)" in said
    assert "At 400 pairs, the reward-filtered top400 (3) is not ahead of the random control random400 (3.5)" in said
    assert "beats" not in said  # two means without an interval describe; they do not decide
    assert "sound answers" not in said  # older records have no such column
    rows[1]["test_sound_loss"], rows[3]["test_sound_loss"] = 0.9, 1.4
    said = " ".join(study_findings(rows))
    assert "Lowest test loss on the sound answers only: <strong>top800</strong> (0.9)" in said
    assert ("At 800 pairs, by the test loss on sound answers (no judge involved), the reward-filtered top800 "
            "(0.9) is ahead of the random control random800 (1.4)") in said


# A study record's verdicts: one comparison decided on one measure, one decided on neither, over 3 seeds.
VERDICTS = {
    "top800 vs random800": {
        "exact accuracy": {"difference": 0.02, "ci_low": -0.03, "ci_high": 0.07, "discordant": 31,
                           "verdict": "no difference", "seeds": 3, "per_seed": [0.01, 0.05, 0.0]},
        "sound-answer rate": {"difference": 0.12, "ci_low": 0.05, "ci_high": 0.19, "discordant": 40,
                              "verdict": "higher", "seeds": 3, "per_seed": [0.1, 0.15, 0.11]}},
    "top400 vs random400": {
        "exact accuracy": {"difference": -0.004, "ci_low": -0.051, "ci_high": 0.043, "discordant": 8,
                           "verdict": "no difference"}},
}


def test_the_verdicts_are_a_table_one_row_per_comparison_a_column_group_per_measure():
    table = verdict_table(VERDICTS, 0.95)
    assert table.measures == ["exact accuracy", "sound-answer rate"]
    assert [row.comparison for row in table.rows] == ["top800 vs random800", "top400 vs random400"]
    first, second = table.rows
    assert first.cells[0] == VerdictCell("+2.0", "[-3.0, +7.0]", "no difference", "+1.0, +5.0, +0.0")
    assert first.cells[1] == VerdictCell("+12.0", "[+5.0, +19.0]", "higher", "+10.0, +15.0, +11.0")
    assert [c.decided for c in first.cells] == [False, True] and first.seeds == "3 seeds"
    # A record of one seed says so; a measure the comparison lacks is an empty cell, not a shifted row.
    assert second.cells == [VerdictCell("-0.4", "[-5.1, +4.3]", "no difference", None), None]
    assert second.seeds == "one seed"
    assert "95% interval" in table.legend
    assert verdict_table({}, 0.95) is None  # older records and real HH: no table


def test_study_findings_keep_what_is_not_a_verdict():
    rows = [{"point": "top800", "by": "chosen_reward", "pairs": 800, "test_loss": 2.7, "sft_reward": 5.7},
            {"point": "random800", "by": "random", "pairs": 800, "test_loss": 1.7, "sft_reward": 4.5}]
    said = " ".join(study_findings(rows))
    assert "Lowest final test loss: <strong>random800</strong> (1.7)" in said
    assert "points" not in said and "judge-free" not in said  # the verdicts are the table's


@pytest.mark.parametrize("budgets, r2, says", [
    ([1e11], None, "Exponents not fitted: 1 budget(s) with a fitted minimum inside the sizes run"),
    ([1e11, 1e12], None, "a line through 2 points, so no r²"),
    ([1e11, 3e11, 1e12], 0.97, "r² 0.97"),
])
def test_scaling_finding_states_the_exponents_only_as_far_as_they_were_fitted(budgets, r2, says):
    fitted = len(budgets) > 1
    m = {"n_opt_exponent": 0.61 if fitted else None, "d_opt_exponent": 0.39 if fitted else None,
         "n_opt_r2": r2, "fitted_budgets": budgets, "n_runs": 12, "extrapolated_budgets": [],
         "exponent_note": None if fitted else "1 budget(s) with a fitted minimum inside the sizes run; exponents need 2"}
    said = " ".join(scaling_findings(from_json(ScalingMetrics, m)))
    assert says in said
    assert ("0.61" in said) == fitted and "—" not in said


class VerdictCells(HTMLParser):
    """The text of each body row of the page's verdict tables, and which cells are bold."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.bold: list[str] = []
        self.headers: list[str] = []
        self._in_table = self._in_body = self._in_cell = self._strong = False

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("class", "verdicts") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("th", "td"):
            self._in_cell = True
            (self.rows[-1] if self._in_body else self.headers).append("")
        elif self._in_cell and tag == "strong":
            self._strong = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = self._in_body = False
        elif tag in ("th", "td"):
            self._in_cell = False
        elif tag == "strong":
            self._strong = False

    def handle_data(self, data):
        if self._in_cell:
            cells = self.rows[-1] if self._in_body else self.headers
            cells[-1] += data
            if self._strong:
                self.bold.append(data)


def test_a_study_page_states_each_verdict_once_in_its_table(project):
    """The verdicts are a table under the study's title; the notes under its table, which repeat them
    for the standalone Markdown, drop them on the page, and keep the rest."""
    from gptpipe.studies.verdicts import verdict_lines

    rows = pd.DataFrame({"point": ["top800", "random800", "top400", "random400"],
                         "by": ["chosen_reward", "random"] * 2, "pairs": [800, 800, 400, 400],
                         "test_loss": [2.7, 1.7, 2.9, 2.8]})
    write_table(rows, project / "plots/studies", "data-quality", ["A note kept."], verdicts=verdict_lines(VERDICTS, 0.95))
    write_record(project / "metrics/studies/data-quality.json", "data-quality", "0" * 40, rows, verdicts=VERDICTS)
    assert "+12.0 [+5.0, +19.0]" in (project / "plots/studies/data-quality.md").read_text()
    build(project)
    page = (project / "report/index.html").read_text()
    table = VerdictCells()
    table.feed(page)
    assert table.headers == ["later vs earlier", "exact accuracy", "sound-answer rate", "seeds"] + [
        "points", "interval", "verdict"] * 2
    assert table.rows == [
        ["top800 vs random800", "+2.0", "[-3.0, +7.0]", "no difference", "+12.0", "[+5.0, +19.0]", "higher", "3 seeds"],
        ["top400 vs random400", "-0.4", "[-5.1, +4.3]", "no difference", "—", "one seed"],
    ]
    assert table.bold == ["higher"]  # only the decided verdict stands out
    assert page.count("+12.0") == 1 and "+12.0 [" not in page and "A note kept." in page
