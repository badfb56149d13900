"""The studies a user runs with one command: their points, tables and pictures.

Each study is a list of points (one DVC experiment each, see gptpipe.studies.runner) and a function that
turns the experiments' own metrics and series into a table (CSV + markdown under plots/studies/,
JSON under metrics/studies/) and one PNG of all test-loss curves against tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gptpipe import figures as plots
from gptpipe.config import ParamsError, SftConfig, load_params
from gptpipe.train.optim import DEFAULT_LR, STATE_COPIES
from gptpipe.errors import UserError
from gptpipe.studies.columns import JUDGE_SFT, SFT_METRICS, SFT_SERIES, judged_columns
from gptpipe.studies.runner import (
    Point, Result, collect, recorded_baseline, recorded_seeds, run_points, write_record, write_table,
)
from gptpipe.studies.architecture import (
    architecture_comparisons, architecture_notes, architecture_points, architecture_table,
)
from gptpipe.studies.tokenizer import tokenizer_comparisons, tokenizer_notes, tokenizer_points, tokenizer_table
from gptpipe.studies.seeds import mean_over_seeds, seed_note, seeded_points
from gptpipe.studies.selection import chosen_points, output_name
from gptpipe.studies.verdicts import paired_verdict, read_judged, verdict_lines

TABLES = Path("plots/studies")
RECORDS = Path("metrics/studies")
MIB = 2**20

OPTIMIZER_ORDER = ("sgd", "momentum", "nesterov", "adam", "adamw", "galore", "muon", "adafactor")
LORA_RANKS = (1, 2, 4, 8, 16, 32)
# Study learning rates: every point sets train.lr (-S). Each is its value on the embedded default
# (a 2x128 GPT-2 pretrained here, train.lr null: each optimizer family at optim.DEFAULT_LR, full
# fine-tuning at AdamW's 1e-3, LoRA ranks at LORA_LR) times lr_scale(): params.yaml's train.lr over
# AdamW's default, so on the full preset (hub GPT-2, train.lr 1e-5) every point is 100x smaller
# instead of forgetting or diverging at the CPU default's step sizes.
# LoRA's adapters start at zero and see only a low-rank slice of the gradient: on the default
# shape they need a larger step than full fine-tuning's 1e-3 to move in the same number of steps.
LORA_LR = 5e-3


@dataclass(frozen=True)
class Study:
    name: str
    points: Callable[[], Sequence[Point]]  # computed when the study runs (some depend on the data)
    table: Callable[[list[Result]], pd.DataFrame]
    notes: Callable[[list[Result]], list[str]]
    title: str
    # (later, earlier) point labels whose judge-free difference is the study's verdict
    comparisons: Callable[[Sequence[str]], list[tuple[str, str]]]
    # each experiment reproduces up to this stage only: the SFT model's judged answers, which the
    # judge-free columns and verdicts need
    target: str = "judge@sft"
    # (later, earlier) models of one experiment compared with each other (the seeds study: dpo vs sft)
    model_comparisons: tuple[tuple[str, str], ...] = ()
    # one table row per seed instead of each point's mean over its seeds
    rows_per_seed: bool = False


def lr_scale(train: SftConfig) -> float:
    """params.yaml's train.lr against AdamW's default (1 where it is null: the embedded default)."""
    return (train.lr if train.lr is not None else DEFAULT_LR["adamw"]) / DEFAULT_LR["adamw"]


def _study_lr(lr: float, scale: float) -> float:
    # three significant digits: 0.5 * (1e-5 / 1e-3) is 0.005, not 0.005000000000000001, in -S
    return float(f"{lr * scale:.3g}")


def optimizer_points() -> list[Point]:
    # Each family at its own tuned default lr (optim.DEFAULT_LR), scaled (see the note above LORA_LR).
    scale = lr_scale(load_params("params.yaml").train)
    return [Point(name, {"train.optimizer": name, "train.lr": _study_lr(DEFAULT_LR[name], scale)})
            for name in OPTIMIZER_ORDER]


def lora_points() -> list[Point]:
    scale = lr_scale(load_params("params.yaml").train)
    points = [Point(f"r{r}", {"train.lora.rank": r, "train.lr": _study_lr(LORA_LR, scale)}) for r in LORA_RANKS]
    return points + [Point("full", {"train.lora.rank": 0, "train.lr": _study_lr(DEFAULT_LR["adamw"], scale)})]


def target_loss(results: list[Result]) -> float:
    """The worst final test loss of the study: every run reaches it, so 'tokens to reach it'
    compares how fast each gets to a loss all of them attain."""
    # Read from the series (as tokens_to_reach is), not the metrics: the TSV rounds to 6 digits.
    return max(float(r.series[SFT_SERIES]["test_loss"].iloc[-1]) for r in results)


def tokens_to_reach(series: pd.DataFrame, target: float) -> int | None:
    reached = series[series["test_loss"] <= target]
    return int(reached["tokens"].iloc[0]) if len(reached) else None


def optimizer_table(results: list[Result]) -> pd.DataFrame:
    target = target_loss(results)
    rows = []
    for r in results:
        m = r.metrics[SFT_METRICS]
        mem = m["memory"]
        rows.append({
            "optimizer": m["optimizer"],
            "lr": m["lr"],
            "train_loss": m["train_loss"],
            "test_loss": m["test_loss"],
            "tokens_to_target": tokens_to_reach(r.series[SFT_SERIES], target),
            **judged_columns(r),
            "tokens_per_s": m["tokens_per_s"],
            "state_bytes_per_param_theory": _bytes_per_param(m),
            "params_MiB": mem["parameters_bytes"] / MIB,
            "grads_MiB": mem["gradients_bytes"] / MIB,
            "state_MiB": mem["optimizer_state_bytes"] / MIB,
            "state_MiB_theory": mem["optimizer_state_bytes_theory"] / MIB,
            "rest_MiB": mem["rest_bytes"] / MIB,
            **_peak(mem),
        })
    return pd.DataFrame(rows)


def lora_table(results: list[Result]) -> pd.DataFrame:
    rows = []
    for r in results:
        m = r.metrics[SFT_METRICS]
        mem = m["memory"]
        rows.append({
            "rank": m.get("lora_rank", 0) or "full",
            "lr": m["lr"],
            "trainable_params": m["trainable_parameters"],
            "trainable_fraction": m["trainable_fraction"],
            "train_loss": m["train_loss"],
            "test_loss": m["test_loss"],
            **judged_columns(r),
            "tokens_per_s": m["tokens_per_s"],
            "grads_MiB": mem["gradients_bytes"] / MIB,
            "state_MiB": mem["optimizer_state_bytes"] / MIB,
            "state_MiB_theory": mem["optimizer_state_bytes_theory"] / MIB,
            **_peak(mem),
        })
    return pd.DataFrame(rows)


def optimizer_notes(results: list[Result]) -> list[str]:
    return [
        f"tokens_to_target: tokens seen until the test loss first reached {target_loss(results):.4f}, "
        "the worst final test loss of the study (evaluated every train.eval_every steps).",
        "Each optimizer ran at its family's default lr (gptpipe.train.optim.DEFAULT_LR) times "
        "train.lr / 1e-3 (the lr column), not one shared lr. Adam and AdamW coincide when train.weight_decay is 0 (the default).",
        "tokens_per_s is wall-clock: compare it only between rows measured on an otherwise idle machine.",
        "Memory: parameters, gradients and optimizer state are tensor bytes counted after the first "
        "step; theory is 0 (SGD), 1 (momentum, Nesterov) or 2 (Adam, AdamW) fp32 copies of the "
        "trainable parameters, or GaLore's projector + rank-r moments. rest = peak process memory "
        "(RSS on CPU, max_memory_allocated on CUDA) minus those tensors: on CPU it is mostly the "
        "Python/torch runtime and activations.",
        *_adafactor_note(results),
        _regime(results),
    ]


def _adafactor_note(results: list[Result]) -> list[str]:
    if not any(r.metrics[SFT_METRICS]["optimizer"] == "adafactor" for r in results):
        return []
    return ["Adafactor (torch.optim.Adafactor) steps by min(lr, 1/sqrt(t)) times the weights' RMS, without "
            "momentum: an lr above 1/sqrt(t) changes nothing (tests/test_optim.py), so a larger lr cannot "
            "make its steps larger; a smaller one only shrinks them."]


def lora_notes(results: list[Result]) -> list[str]:
    return [
        f"LoRA ranks ran at lr {LORA_LR}, full fine-tuning at {DEFAULT_LR['adamw']} (AdamW); "
        "alpha and targets as in params.yaml (train.lora.*).",
        "Only LoRA parameters get gradients and optimizer state: grads and state scale with the rank.",
        _regime(results),
    ]


# -- data quality vs quantity: the top N train pairs by reward, a random N of the same sizes, and all -----

# The course's subset sizes (of helpful-base's 43,835 train pairs). A smaller train split (the
# embedded default's 4,000) uses the same fractions of itself.
COURSE_SIZES = (35000, 30000, 25000, 20000, 15000, 10000)
COURSE_TRAIN_PAIRS = 43835
RANDOM_CONTROLS = 2  # the two smallest sizes also get a random subset of the same N
FILTER_METRICS = "metrics/filter.json"


def data_quality_sizes(train_pairs: int) -> list[int]:
    if train_pairs >= COURSE_SIZES[0]:
        return [n for n in COURSE_SIZES if n < train_pairs]
    fractions = (0.8, 0.6, 0.4, 0.2)  # ≈ the course's 35k … 10k of 43.8k
    return [round(f * train_pairs) for f in fractions]


def data_quality_points() -> list[Point]:
    train_pairs = json.loads(Path("metrics/data.json").read_text())["train"]["pairs"]
    sizes = data_quality_sizes(train_pairs)
    points = [Point("all", {"filter.keep": None, "filter.by": "chosen_reward"})]
    points += [Point(f"top{n}", {"filter.keep": n, "filter.by": "chosen_reward"}) for n in sizes]
    points += [Point(f"random{n}", {"filter.keep": n, "filter.by": "random"}) for n in sizes[-RANDOM_CONTROLS:]]
    return points


def data_quality_table(results: list[Result]) -> pd.DataFrame:
    rows = []
    for r in results:
        kept, sft = r.metrics[FILTER_METRICS], r.metrics[SFT_METRICS]
        judge = r.metrics.get(JUDGE_SFT, {})
        rows.append({
            "subset": r.label,
            "by": kept["by"],
            "pairs": kept["kept"],
            "threshold": kept.get("threshold"),
            "flawed_kept": kept.get("flawed_fraction_kept"),
            "epochs": sft.get("epochs"),
            "train_loss": sft["train_loss"],
            "test_loss": sft["test_loss"],
            "test_sound_loss": sft.get("test_sound_loss"),
            **judged_columns(r),
            "reward_ci": _interval(judge),
        })
    return pd.DataFrame(rows)


def data_quality_notes(results: list[Result]) -> list[str]:
    train = results[0].params.get("train", {})  # raw, as recorded: see _regime
    return [
        "Every row fine-tunes the same base for the same steps "
        f"({train.get('max_steps')} × {train.get('batch_size')} sequences): a smaller subset is seen "
        "for more epochs, so rows compare data at equal compute.",
        "top<N>: the N train pairs whose chosen response the reward model scores highest "
        "(threshold = the lowest kept reward); random<N>: N pairs drawn at random (seeded), the control "
        "that separates quality from quantity; all: the whole train split.",
        "sft_reward: mean reward of the SFT model's answers to the fixed test prompts "
        "(generate.n_prompts), judged by the same reward model; exact_answer_accuracy: answers that "
        "state the ground-truth answer (synthetic data only). flawed_kept: the share of kept pairs "
        "whose chosen response is flawed by the synthetic ground truth.",
        "test_loss is measured on the test split's chosen responses, flawed ones included: a model "
        "trained on sound answers only may score a worse loss on them while answering better. "
        "test_sound_loss: the same loss on the test pairs whose chosen response is sound (synthetic "
        "ground truth; blank on HH), the answers a model should learn to give.",
        _regime(results),
    ]


def _interval(judge: dict) -> str | None:
    if "ci_low" not in judge:
        return None
    return f"[{judge['ci_low']:.3f}, {judge['ci_high']:.3f}]"


# -- model size (the course's exploration e): the same pipeline at each GPT-2 size ------------------

HUB_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Scratch shapes for the embedded default: ~2x the non-embedding parameters per step up.
SCRATCH_SIZES = ((2, 64, 4), (2, 128, 4), (4, 128, 4))
JUDGED_ANSWERS = "data/generated/sft.jsonl"


def scaling_points() -> list[Point]:
    if load_params("params.yaml").model.init == "pretrained":
        return [Point(name, {"model.name": name}) for name in HUB_SIZES]
    return [Point(f"{layers}x{width}", {"model.n_layer": layers, "model.n_embd": width, "model.n_head": heads})
            for layers, width, heads in SCRATCH_SIZES]


def scaling_table(results: list[Result]) -> pd.DataFrame:
    """Loss and reward per size. Each experiment trains its own reward model from its own base, so
    its answers are also re-judged here by the workspace's models/reward: one judge for all sizes."""
    judge = _workspace_judge()
    rows = []
    for r in results:
        sft, base = r.metrics[SFT_METRICS], r.metrics.get("metrics/base.json", {})
        rows.append({
            "size": r.label,
            "parameters": sft["parameters"],
            "non_embedding": sft["parameters_without_embeddings"],
            "base_test_loss": base.get("test_loss"),
            "sft_test_loss": sft["test_loss"],
            **judged_columns(r),
            "sft_reward_one_judge": _rejudge(judge, r.experiment) if judge else None,
            "sft_tokens_per_s": sft["tokens_per_s"],
        })
    return pd.DataFrame(rows)


def _workspace_judge():
    from gptpipe.models.reward import load_scorer

    import torch

    if not Path("models/reward").is_dir():
        return None
    params = load_params("params.yaml")  # as the judge stage scores
    return load_scorer(Path("models/reward"), batch_size=params.score.batch_size, device=torch.device("cpu"),
                       max_length=params.reward.hf_max_length)


def _rejudge(judge, experiment: str) -> float:
    import dvc.api

    with dvc.api.open(JUDGED_ANSWERS, rev=experiment) as handle:
        answers = [json.loads(line) for line in handle.read().splitlines() if line.strip()]
    scores = judge.score([a["prompt"] for a in answers], [a["response"] for a in answers], desc=experiment)
    return float(scores.mean())


def scaling_notes(results: list[Result]) -> list[str]:
    return [
        "Each size runs the whole chain up to its SFT model's judged answers (base, reward, score, "
        "filter, sft, generate@sft, judge@sft) with the same params otherwise.",
        "sft_reward: judged by the reward model trained from that size's own base; "
        "sft_reward_one_judge: the same answers judged by the workspace's models/reward, so sizes "
        "are compared by one judge.",
        "For the scaling law at a fixed FLOP budget see the scaling stage (plots/scaling/compute_optimal.md).",
        _regime(results),
    ]


# -- the default recipe over seeds: base, SFT and DPO of each seed's whole chain ----------------------

RECIPE_MODELS = ("base", "sft", "dpo")


def recipe_points() -> list[Point]:
    return [Point("default", {})]  # params.yaml as it is; --seeds adds shared.seed + 1, + 2, ...


def recipe_table(results: list[Result]) -> pd.DataFrame:
    rows = []
    for r in results:
        row: dict[str, Any] = {"seed": (r.params.get("shared") or {}).get("seed")}
        for model in RECIPE_MODELS:
            judge = r.metrics.get(f"metrics/judge/{model}.json", {})
            row[f"{model}_exact_accuracy"] = judge.get("exact_answer_accuracy")
            row[f"{model}_sound_rate"] = (judge.get("labels") or {}).get("sound")
        row["sft_test_loss"] = r.metrics[SFT_METRICS]["test_loss"]
        row["dpo_test_accuracy"] = r.metrics.get("metrics/dpo.json", {}).get("test_accuracy")
        rows.append(row)
    return pd.DataFrame(rows)


def recipe_notes(results: list[Result]) -> list[str]:
    from gptpipe import kernels

    state = kernels.in_force()
    return [
        "Each row is one seed's whole chain (download, base, reward, score, filter, sft, dpo, and every "
        "model's generate and judge): a seed redraws the synthetic data, the test prompts, the init and "
        "the order, so the spread between rows is the recipe's, not only the prompts'.",
        "The verdicts pair each seed's two models on that seed's prompts; their interval is Student's t "
        "over the per-seed differences (never narrower than the pooled prompts' interval).",
        f"Kernels of the experiments run here: ATen {state['aten']}, MKL {state['mkl_branch']} "
        "(a point equal to the committed run takes its outputs from the DVC cache).",
        _regime(results),
    ]


def against(reference: str) -> Callable[[Sequence[str]], list[tuple[str, str]]]:
    """Every other point against one reference point (the default optimizer, full fine-tuning)."""
    return lambda labels: [(label, reference) for label in labels if label != reference and reference in labels]


def data_quality_comparisons(labels: Sequence[str]) -> list[tuple[str, str]]:
    """top<N> against random<N> (quality at equal quantity), and each subset against all."""
    pairs = [(f"top{label.removeprefix('random')}", label) for label in labels
             if label.startswith("random") and f"top{label.removeprefix('random')}" in labels]
    return pairs + [(label, "all") for label in labels if label.startswith("top") and "all" in labels]


def successive(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Each size against the next smaller one."""
    return list(zip(labels[1:], labels[:-1]))


STUDIES = {
    "optimizers": Study("optimizers", optimizer_points, optimizer_table, optimizer_notes,
                        "SFT test loss by optimizer", against("adamw")),
    "lora": Study("lora", lora_points, lora_table, lora_notes, "SFT test loss: LoRA ranks and full fine-tuning",
                  against("full")),
    "data-quality": Study("data-quality", data_quality_points, data_quality_table, data_quality_notes,
                          "SFT test loss: reward-filtered subsets, random controls and the full set",
                          data_quality_comparisons),
    "scaling": Study("scaling", scaling_points, scaling_table, scaling_notes,
                     "SFT test loss by model size", successive),
    "architecture": Study("architecture", architecture_points, architecture_table, architecture_notes,
                          "SFT test loss: GPT-2 against the llama variant by query heads per K/V head",
                          architecture_comparisons),
    "tokenizer": Study("tokenizer", tokenizer_points, tokenizer_table, tokenizer_notes,
                       "SFT test bits per byte: GPT-2's BPE against trained byte-level BPEs", tokenizer_comparisons),
    "seeds": Study("seeds", recipe_points, recipe_table, recipe_notes, "SFT test loss: the default recipe by seed",
                   lambda labels: [], target="evaluate", model_comparisons=(("sft", "base"), ("dpo", "sft")),
                   rows_per_seed=True),
}


def run_study(study: Study, *, report_only: bool, seeds: int = 1, only: Sequence[str] = ()) -> pd.DataFrame:
    """Run (or with report_only, recompile) a study: each point once per seed, its table (the mean
    over seeds with their spread), the judge-free verdicts, the record and the curves' PNG.
    only: these points alone, written as <study>-<points> beside the whole study's files."""
    points, name = chosen_points(study, only), output_name(study, only)
    record = RECORDS / f"{name}.json"
    if report_only:
        baseline, seeds = recorded_baseline(record), recorded_seeds(record)
    params = load_params("params.yaml")
    runs = seeded_points(points, seeds, params.shared.seed)
    for run, point, _ in runs:  # a point params.yaml cannot take fails here, not as one failed experiment
        try:
            load_params("params.yaml", run.overrides)
        except ParamsError as err:
            raise ParamsError(f"study {study.name}, point {point}: {err}") from None
    if not report_only:
        baseline = run_points(study.name, [run for run, _, _ in runs], study.target)
    results = collect(study.name, [run.label for run, _, _ in runs], baseline, [SFT_SERIES])
    if not results:
        raise RuntimeError(f"study {study.name}: no experiment succeeded; see `dvc exp show`")
    point_of = {run.label: (point, k) for run, point, k in runs}
    table = study.table(results)
    table.insert(0, "point", [r.label if study.rows_per_seed else point_of[r.label][0] for r in results])
    if seeds > 1 and not study.rows_per_seed:
        table = mean_over_seeds(table)
    confidence = params.evaluate.confidence
    verdicts = study_verdicts(study, results, point_of, seeds, confidence)
    write_table(table, TABLES, name, [*study.notes(results), *seed_note(seeds)],
                verdicts=verdict_lines(verdicts, confidence))
    write_record(record, name, baseline, table, verdicts=verdicts, seeds=seeds)
    curves = {r.label: r.series[SFT_SERIES] for r in results}
    plots.study_curves(curves, TABLES / f"{name}.png", study.title)
    return table


def study_verdicts(study: Study, results: list[Result], point_of: dict[str, tuple[str, int]], seeds: int,
                   confidence: float) -> dict[str, dict[str, Any]]:
    """The judge-free verdict of each of the study's comparisons, over the seeds both points ran."""
    by_point: dict[str, dict[int, Result]] = {}
    for r in results:
        point, k = point_of[r.label]
        by_point.setdefault(point, {})[k] = r
    frames: dict[str, Any] = {}
    verdicts = {}
    for point, runs in by_point.items():  # models of one experiment, each seed paired with itself
        for later, earlier in study.model_comparisons:
            sides = [[read_judged(runs[k].experiment, model) for k in sorted(runs)] for model in (later, earlier)]
            if all(f is not None for side in sides for f in side):
                key = f"{later} vs {earlier}" if len(by_point) == 1 else f"{point}: {later} vs {earlier}"
                verdicts[key] = paired_verdict(sides[0], sides[1], confidence)
    for later, earlier in study.comparisons(list(by_point)):
        common = sorted(set(by_point[later]) & set(by_point[earlier]))
        pair = []
        for label in (later, earlier):
            for k in common:
                experiment = by_point[label][k].experiment
                if experiment not in frames:
                    frames[experiment] = read_judged(experiment)
            pair.append([frames[by_point[label][k].experiment] for k in common])
        if common and all(f is not None for side in pair for f in side):
            verdicts[f"{later} vs {earlier}"] = paired_verdict(pair[0], pair[1], confidence)
    return verdicts


def _bytes_per_param(metrics: dict) -> float:
    name = metrics["optimizer"]
    if name in STATE_COPIES:
        return 4.0 * STATE_COPIES[name]
    return metrics["memory"]["optimizer_state_bytes_theory"] / metrics["trainable_parameters"]


def _peak(mem: dict) -> dict[str, float]:
    key = "cuda_max_allocated_bytes" if "cuda_max_allocated_bytes" in mem else "peak_rss_bytes"
    return {key.removesuffix("_bytes") + "_MiB": mem[key] / MIB}


def _regime(results: list[Result]) -> str:
    # An experiment's params as `dvc exp show` recorded them, read raw rather than through
    # parse_params: `--report` may recompile experiments of an older baseline whose params.yaml has
    # another layout (as gptpipe.report.inputs reads older revisions). The keys read here are in both.
    params = results[0].params
    model = params.get("model", {})
    data = params.get("data", {})
    if model.get("init") == "pretrained":
        shape = f"pretrained {model.get('name')}"
    else:
        shape = f"scratch GPT-2 {model.get('n_layer')}x{model.get('n_embd')}"
    return f"Regime: {shape}, data source {data.get('source')}; same data and steps for every row."
