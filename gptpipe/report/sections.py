"""The page's sections, in order, and how each part is drawn from its stage's or study's files.

Each part names the params.yaml sections its result depends on: they are shown folded beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from markupsafe import Markup

from gptpipe.report.blocks import Block, Downloads, Finding, Html, KeyValues, Legend, Link, NotRun, Title
from gptpipe.report.findings import (dpo_findings, filter_findings, reward_findings, scaling_findings,
                                     score_findings, study_findings, training_finding)
from gptpipe.report.format import fmt, fmt_mib, fmt_percent, is_number
from gptpipe.report.inputs import RawParams, params_at, read_csv, read_json, read_tsv
from gptpipe.report.markdown import inline_html, markdown_html
from gptpipe.report.metrics import (DpoMetrics, FilterMetrics, RewardMetrics, ScalingMetrics, ScoreMetrics,
                                    StudyRecord, TrainingMetrics, from_json)
from gptpipe.report.parts import Page, Part, Section
from gptpipe.report.verdicts import verdict_table
from gptpipe.studies.runner import without_verdicts

T = TypeVar("T")


# -- training: base and SFT side by side ----------------------------------------------------------

# (stage, the command that runs it, the params.yaml sections it reads)
TRAINING_STAGES = (("base", "dvc repro base", ("shared", "model", "base")),
                   ("sft", "dvc repro sft", ("shared", "train")))


def _training() -> Part:
    """The training stages side by side: key figures, loss curve start and end, PNGs."""

    def draw(page: Page) -> list[Block]:
        ran: dict[str, TrainingMetrics] = {}
        said, figures, sections = [], [], []
        for stage, command, params_sections in TRAINING_STAGES:
            if not page.has(f"metrics/{stage}.json"):
                page.missing[stage] = command
                continue
            ran[stage] = from_json(TrainingMetrics, read_json(page.root / f"metrics/{stage}.json", command))
            page.present.append(stage)
            said.append(training_finding(stage, read_tsv(page.root / f"plots/{stage}/loss.tsv")))
            figures += page.pngs(f"plots/{stage}")
            sections += [name for name in params_sections if name not in sections]
        not_run = [NotRun(command) for stage, command, _ in TRAINING_STAGES if stage not in ran]
        if not ran:
            return not_run
        rows = [(label, *(value(m) for m in ran.values())) for label, value in KEY_FIGURES]
        return [Finding([s for s in said if s]), KeyValues(rows, list(ran)), *not_run,
                page.figures(figures), page.params_block(sections)]

    return Part("training", "", (), draw)


def _trainable(m: TrainingMetrics) -> str:
    lora = f", LoRA rank {m.lora_rank}" if m.lora_rank else ""
    return f"{fmt(m.trainable_parameters)} ({fmt_percent(m.trainable_fraction)}){lora}"


def _peak(m: TrainingMetrics) -> str:
    if m.memory.cuda_max_allocated_bytes is not None:
        return f"{fmt_mib(m.memory.cuda_max_allocated_bytes)} (CUDA allocated)"
    return f"{fmt_mib(m.memory.peak_rss_bytes)} (RSS)"


# The key figures of a training stage: (row label, how to say it from metrics/<stage>.json).
KEY_FIGURES: tuple[tuple[str, Callable[[TrainingMetrics], str]], ...] = (
    ("optimizer, lr", lambda m: f"{m.optimizer or '—'}, {fmt(m.lr)}"),
    ("parameters (without embeddings)", lambda m: f"{fmt(m.parameters)} ({fmt(m.parameters_without_embeddings)})"),
    ("trainable", _trainable),
    ("steps", lambda m: fmt(m.steps)),
    ("epochs", lambda m: fmt(m.epochs)),
    ("tokens seen", lambda m: fmt(m.tokens)),
    ("FLOPs", lambda m: fmt(m.flops)),
    ("final train loss", lambda m: fmt(m.train_loss)),
    ("final test loss", lambda m: fmt(m.test_loss)),
    ("throughput", lambda m: f"{fmt(m.tokens_per_s)} tokens/s"),
    ("MFU", lambda m: f"{fmt_percent(m.mfu)} of {fmt(m.peak_flops)} FLOP/s"),
    ("memory: parameters", lambda m: fmt_mib(m.memory.parameters_bytes)),
    ("memory: gradients", lambda m: fmt_mib(m.memory.gradients_bytes)),
    ("memory: optimizer state", lambda m: fmt_mib(m.memory.optimizer_state_bytes)),
    ("memory: optimizer state, theory", lambda m: fmt_mib(m.memory.optimizer_state_bytes_theory)),
    ("memory: rest (runtime, activations)", lambda m: fmt_mib(m.memory.rest_bytes)),
    ("memory: peak", _peak),
)


# -- a study: its table and notes, its figure, the params of its baseline -------------------------

def _study(name: str, params_sections: Sequence[str], title: str) -> Part:
    """A study compiled by `gptpipe study <name>`: its finding, table and notes, figure, params."""
    command = f"gptpipe study {name}"
    md, csv, png = f"plots/studies/{name}.md", f"plots/studies/{name}.csv", f"plots/studies/{name}.png"
    record_path = f"metrics/studies/{name}.json"

    def draw(page: Page) -> list[Block]:
        record = from_json(StudyRecord, read_json(page.root / record_path, command) if page.has(record_path) else {})
        rows = record.rows or read_csv(page.root / csv)  # no record yet: the table its CSV holds
        at = params_at(page.root, record.baseline) if record.baseline else None
        verdicts = verdict_table(record.verdicts or {}, (at or page.params).value("evaluate.confidence"))
        blocks: list[Block] = [Title(title), *([verdicts] if verdicts else []), Finding(study_findings(rows))]
        if page.has(md):
            text = (page.root / md).read_text()
            text = without_verdicts(text)  # the verdict table above states them
            blocks.append(Html(markdown_html(text, heading_offset=3, best_column="test_loss")))
        if page.has(csv):
            blocks.append(Downloads([Link(page.attach(csv), f"{name}.csv")]))
        blocks.append(page.figures([png]))
        blocks.append(_study_params(page, params_sections, record.baseline, at))
        return blocks

    return Part(f"study-{name}", command, (md, csv, record_path), draw)


def _study_params(page: Page, sections: Sequence[str], baseline: str | None, at: RawParams | None) -> Block:
    """The params a study ran on: params.yaml `at` its baseline commit where git holds it, else today's."""
    if at is not None:
        return page.params_block(sections, at, f"params.yaml at the study's baseline {baseline[:7]}; "
                                 "each point overrides its own key")
    source = f"params.yaml now; the study ran on {baseline[:7]}" if baseline else "params.yaml now"
    return page.params_block(sections, source=source)


# -- a stage: its findings, its metrics JSON whole, its PNGs --------------------------------------

def _stage(key: str, title: str, metrics: str, params_sections: Sequence[str],
           findings: Callable[[dict[str, Any]], list[Markup]], extra_md: str | None = None) -> Part:
    """A stage whose metrics JSON is shown whole (flattened), with the PNGs of plots/<key>."""
    command = f"dvc repro {key}"

    def draw(page: Page) -> list[Block]:
        blocks: list[Block] = [Title(title)]
        if page.has(metrics):
            data = read_json(page.root / metrics, command)
            blocks += [Finding(findings(data)), Legend(metrics), KeyValues(flatten(data))]
        if extra_md and page.has(extra_md):
            blocks.append(Html(markdown_html((page.root / extra_md).read_text(), heading_offset=3)))
        blocks += [page.figures(page.pngs(f"plots/{key}")), page.params_block(params_sections)]
        return blocks

    return Part(key, command, tuple(p for p in (metrics, extra_md) if p), draw)


def typed(findings: Callable[[T], list[Markup]], cls: type[T]) -> Callable[[dict[str, Any]], list[Markup]]:
    """A findings function of typed metrics, fed from the JSON."""
    return lambda data: findings(from_json(cls, data))


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A metrics JSON of any shape as (key, value) rows: nested keys dotted, bytes in MiB."""
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            rows.append((name, f"{len(value)} entries"))
        elif isinstance(value, list):
            rows.append((name, ", ".join(fmt(v) for v in value) or "—"))
        elif name.endswith("_bytes") and is_number(value):
            rows.append((name.removesuffix("_bytes"), fmt_mib(value)))
        else:
            rows.append((name, fmt(value)))
    return rows


# -- the compute-optimal report of the scaling stage ----------------------------------------------

def _compute_optimal() -> Part:
    command = "dvc repro scaling"
    md, metrics = "plots/scaling/compute_optimal.md", "metrics/scaling.json"

    def draw(page: Page) -> list[Block]:
        text = (page.root / md).read_text() if page.has(md) else ""
        title: str | Markup = "Compute-optimal model size (isoFLOP profiles)"
        if text.startswith("# "):  # its own title heads the part
            first, _, text = text.partition("\n")
            title = inline_html(first.removeprefix("# "))
        blocks: list[Block] = [Title(title)]
        if page.has(metrics):
            blocks.append(Finding(scaling_findings(from_json(ScalingMetrics, read_json(page.root / metrics, command)))))
        blocks.append(Html(markdown_html(text, heading_offset=3)))
        tables = [rel for rel in ("plots/scaling/compute_optimal.csv", "plots/scaling/runs.csv") if page.has(rel)]
        if tables:
            blocks.append(Downloads([Link(page.attach(rel), Path(rel).name) for rel in tables]))
        blocks += [page.figures([f"plots/scaling/{n}.png" for n in ("isoflop", "envelope", "n_opt")]),
                   page.params_block(("model", "scaling"))]
        return blocks

    return Part("scaling", command, (metrics, md), draw)


def _no_findings(_: dict[str, Any]) -> list[Markup]:
    return []


SECTIONS: tuple[Section, ...] = (
    Section("training", "Training curves: base and SFT", (
        _training(),
    )),
    Section("optimizers", "Optimizer comparison", (
        _study("optimizers", ("train",), "SFT by optimizer: loss, speed and memory"),
        _study("optimizers-adamw-muon-adafactor", ("train",), "Muon and Adafactor against AdamW"),
        _study("optimizers-adamw-muon-lr0.01", ("train",), "Muon at 0.01 (3.3x its lr) against AdamW"),
        _study("optimizers-adamw-adafactor-lr1.5", ("train",), "Adafactor at 1.5 (10x its lr) against AdamW"),
    )),
    Section("lora", "LoRA vs full fine-tuning across ranks", (
        _study("lora", ("train",), "SFT with LoRA ranks and full fine-tuning"),
    )),
    Section("architecture", "GPT-2 against its llama variant (RoPE, GQA, SwiGLU, RMSNorm)", (
        _study("architecture", ("model", "base"), "GPT-2 and the llama variant by query heads per K/V head"),
    )),
    Section("tokenizer", "GPT-2's BPE against tokenizers trained here", (
        _study("tokenizer", ("tokenize",), "SFT in bits per byte by tokenizer"),
    )),
    Section("quality", "Reward model and data quality", (
        _stage("reward", "Reward model", "metrics/reward.json", ("reward",), typed(reward_findings, RewardMetrics)),
        _stage("score", "Rewards of the training pairs", "metrics/score.json", ("score",),
               typed(score_findings, ScoreMetrics)),
        _stage("filter", "Quality filter", "metrics/filter.json", ("filter",), typed(filter_findings, FilterMetrics)),
        _study("data-quality", ("filter", "train"), "Does a reward-filtered subset beat the full set?"),
    )),
    Section("dpo", "DPO vs SFT and generation quality", (
        _stage("dpo", "DPO", "metrics/dpo.json", ("dpo",), typed(dpo_findings, DpoMetrics)),
        _stage("evaluate", "Generations scored by the reward model", "metrics/evaluate.json",
               ("generate", "evaluate"), _no_findings, extra_md="plots/evaluate/report.md"),
        _study("seeds", ("shared", "train", "dpo"), "The default recipe over seeds: SFT vs base, DPO vs SFT"),
    )),
    Section("scaling", "Model size and compute-optimal training", (
        _study("scaling", ("model", "train"), "SFT by model size"),
        _compute_optimal(),
    )),
)
