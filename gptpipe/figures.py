"""PNG figures beside the series DVC draws (`dvc plots show` needs a CDN for its charts; PNGs don't)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on the machines that run stages
import matplotlib.pyplot as plt  # noqa: E402

from gptpipe.files import atomic_path  # noqa: E402


def loss_curves(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Train and test loss against tokens seen (the x axis runs of any size share)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    tokens = [r["tokens"] for r in rows]
    labels = {"train_loss": "train loss", "test_loss": "test loss",
              "test_sound_loss": "test loss, sound answers only"}
    for key, label in labels.items():
        if key in rows[0]:
            ax.plot(tokens, [r[key] for r in rows], marker="o", markersize=3, label=label)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per counted token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def study_curves(curves: dict[str, Any], path: Path, title: str) -> None:
    """One test-loss curve per study point against tokens seen (series as pandas DataFrames)."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, series in curves.items():
        ax.plot(series["tokens"], series["test_loss"], marker="o", markersize=2.5, label=label)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("test loss (nats per response token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def memory_bars(memory: dict[str, int], path: Path, title: str) -> None:
    """Where training memory goes: measured tensor bytes per kind beside the optimizer-state theory."""
    labels = ["parameters", "gradients", "optimizer state", "optimizer state\n(theory)", "rest"]
    keys = ["parameters_bytes", "gradients_bytes", "optimizer_state_bytes",
            "optimizer_state_bytes_theory", "rest_bytes"]
    values = [memory.get(k, 0) / 2**20 for k in keys]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    bars = ax.bar(labels, values, color=["C0", "C1", "C2", "C2", "C7"])
    bars[3].set_hatch("//")
    bars[3].set_alpha(0.5)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    _save(fig, path)


def reward_curves(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """A preference objective's loss and pair accuracy against steps, train and test."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    steps = [r["step"] for r in rows]
    for split in ("train", "test"):
        left.plot(steps, [r[f"{split}_loss"] for r in rows], marker="o", markersize=3, label=split)
        right.plot(steps, [r[f"{split}_accuracy"] for r in rows], marker="o", markersize=3, label=split)
    left.set(xlabel="step", ylabel="loss per pair", title="loss")
    right.set(xlabel="step", ylabel="chosen scored above rejected", title="pair accuracy")
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def reward_histograms(frame: Any, path: Path, title: str) -> None:
    """Chosen rewards (split by the ground truth where known) and chosen − rejected margins; a
    response without a score (no judge) or a pair without a margin (no rejected) is left out."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    frame = frame[frame["chosen_reward"].notna()]
    if "chosen_flawed" in frame:
        flawed = frame["chosen_flawed"].astype(bool)
        left.hist(frame["chosen_reward"][~flawed], bins=40, alpha=0.6, label="sound chosen")
        left.hist(frame["chosen_reward"][flawed], bins=40, alpha=0.6, label="flawed chosen")
        left.legend()
    else:
        left.hist(frame["chosen_reward"], bins=40)
    left.set(xlabel="reward", ylabel="pairs", title="chosen responses")
    right.hist(frame["margin"].dropna(), bins=40, color="C2")
    right.axvline(0, color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="reward(chosen) − reward(rejected)", ylabel="pairs", title="margins")
    fig.suptitle(title)
    _save(fig, path)


def reward_distributions(rewards: dict[str, Any], path: Path, title: str) -> None:
    """One box per model (and per dataset reference) of the judge's rewards; the mean as a dot."""
    names = list(rewards)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.8), dpi=110)
    ax.boxplot([rewards[n] for n in names], orientation="horizontal", showfliers=False, widths=0.6)
    ax.scatter([float(rewards[n].mean()) for n in names], range(1, len(names) + 1), color="C3", zorder=3, label="mean")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    ax.set_xlabel("reward")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def dpo_curves(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Loss, pair accuracy and the test set's implicit rewards against steps."""
    fig, (loss_ax, acc_ax, reward_ax) = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    steps = [r["step"] for r in rows]
    for split in ("train", "test"):
        loss_ax.plot(steps, [r[f"{split}_loss"] for r in rows], marker="o", markersize=3, label=split)
        acc_ax.plot(steps, [r[f"{split}_accuracy"] for r in rows], marker="o", markersize=3, label=split)
    for key, label in (("chosen_reward", "chosen"), ("rejected_reward", "rejected"), ("margin", "margin")):
        reward_ax.plot(steps, [r[f"test_{key}"] for r in rows], marker="o", markersize=3, label=label)
    loss_ax.set(xlabel="step", ylabel="loss per pair", title="loss")
    acc_ax.set(xlabel="step", ylabel="implicit reward orders the pair", title="pair accuracy")
    acc_ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)  # chance, and every pair at step 0
    reward_ax.set(xlabel="step", ylabel="β · log π/π_ref (test, mean)", title="implicit rewards")
    reward_ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    for ax in (loss_ax, acc_ax, reward_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
