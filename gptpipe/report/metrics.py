"""The figures the report states from each stage's metrics JSON, typed and looked up by their exact key.

A field the JSON lacks is None: a stage run before the metric existed, or a backend that has none (the
hub reward classifier is not trained, so it has no test accuracy). `from_json` is the one place that
decides so; the sentences and tables test `is None` rather than guessing defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar, get_args, get_type_hints

T = TypeVar("T")


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """An instance of the dataclass `cls` from the keys of `data` named as its fields; nested ones too."""
    hints = get_type_hints(cls)
    return cls(**{f.name: _field(hints[f.name], data.get(f.name)) for f in fields(cls)})  # type: ignore[arg-type]


def _field(hint: Any, value: Any) -> Any:
    nested = next((t for t in (hint, *get_args(hint)) if is_dataclass(t)), None)
    if nested is None:
        return value
    return from_json(nested, value if isinstance(value, Mapping) else {})


@dataclass(frozen=True)
class Memory:
    """train()'s memory report: measured tensor bytes, the theory beside them, and the process peak."""

    parameters_bytes: int | None
    gradients_bytes: int | None
    optimizer_state_bytes: int | None
    optimizer_state_bytes_theory: int | None
    rest_bytes: int | None
    peak_rss_bytes: int | None  # CPU runs
    cuda_max_allocated_bytes: int | None  # CUDA runs

    @property
    def device(self) -> str | None:
        """The kind of device that ran it, from which peak it measured."""
        if self.cuda_max_allocated_bytes is not None:
            return "CUDA"
        return "CPU" if self.peak_rss_bytes is not None else None


@dataclass(frozen=True)
class TrainingMetrics:
    """metrics/base.json and metrics/sft.json: train()'s summary and the model's size."""

    optimizer: str | None
    lr: float | None
    parameters: int | None
    parameters_without_embeddings: int | None
    trainable_parameters: int | None
    trainable_fraction: float | None
    lora_rank: int | None
    steps: int | None
    epochs: float | None
    tokens: int | None
    flops: float | None
    train_loss: float | None
    test_loss: float | None
    tokens_per_s: float | None
    mfu: float | None
    peak_flops: float | None
    memory: Memory


@dataclass(frozen=True)
class RewardMetrics:
    """metrics/reward.json. The loop's test_accuracy is on a 200-pair sample; the headline is every pair."""

    test_accuracy_all_pairs: float | None


@dataclass(frozen=True)
class ScoreSplit:
    pairs: int | None
    pairwise_accuracy: float | None
    mean_chosen_reward: float | None
    mean_rejected_reward: float | None


@dataclass(frozen=True)
class ScoreMetrics:
    """metrics/score.json: the reward of every train and test pair."""

    scorer: str | None
    train: ScoreSplit
    test: ScoreSplit


@dataclass(frozen=True)
class FilterMetrics:
    """metrics/filter.json: the subset SFT trains on; the flawed fractions need synthetic ground truth."""

    by: str | None
    kept: int | None
    total: int | None
    threshold: float | None
    flawed_fraction_kept: float | None
    flawed_fraction_dropped: float | None


@dataclass(frozen=True)
class DpoMetrics:
    """metrics/dpo.json: train()'s final figures (test_accuracy: implicit reward of chosen above rejected)."""

    test_accuracy: float | None


@dataclass(frozen=True)
class ScalingMetrics:
    """metrics/scaling.json: the isoFLOP fit. The exponents are None when fewer than 2 budgets bracket
    their optimum, and exponent_note says why."""

    n_opt_exponent: float | None
    d_opt_exponent: float | None
    n_opt_r2: float | None
    fitted_budgets: list[float] | None
    extrapolated_budgets: list[float] | None
    n_runs: int | None
    exponent_note: str | None


@dataclass(frozen=True)
class StudyRecord:
    """metrics/studies/<name>.json: the commit the study's experiments ran from, and its table's rows."""

    baseline: str | None  # a full commit hash
    rows: list[dict[str, Any]] | None
    # "<later> vs <earlier>" -> measure -> paired_difference's figures (gptpipe.studies.verdicts)
    verdicts: dict[str, dict[str, dict[str, Any]]] | None = None
