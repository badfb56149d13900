"""`gptpipe study architecture`: GPT-2 against the llama variant at matched non-embedding
parameters, and the variant at 1, 2 and 4 query heads per key/value head (grouped-query attention).

Each point is the whole chain up to the SFT model's judged answers at params.yaml's shape. Fewer K/V
heads shrink attention's K and V; the SwiGLU width grows to give the parameters back (rounded to
architecture.FFN_MULTIPLE), so every row has about GPT-2's 12 d^2 per layer and differs in its design.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gptpipe.config import load_params
from gptpipe.models.architecture import FFN_MULTIPLE
from gptpipe.studies.columns import SFT_METRICS, judged_columns
from gptpipe.studies.runner import Point, Result

QUERIES_PER_KV = (1, 2, 4)


def matched_ffn(d: int, n_head: int, n_kv_head: int) -> int:
    """SwiGLU width giving a llama block GPT-2's 12 d^2 matrix parameters: 3 d f = 12 d^2 - attention."""
    attention = 2 * d * d + 2 * d * (d // n_head * n_kv_head)  # q, o; k, v at the K/V heads' width
    return round((12 * d * d - attention) / (3 * d) / FFN_MULTIPLE) * FFN_MULTIPLE


def architecture_points(params_path: str | Path = "params.yaml") -> list[Point]:
    model = load_params(params_path).model
    points = [Point("gpt2", {"model.arch": "gpt2", "model.n_kv_head": None, "model.ffn_hidden": None})]  # llama-only knobs off
    for q in QUERIES_PER_KV:
        if model.n_head % q:
            continue  # a grouping the shape's heads cannot make
        kv = model.n_head // q
        points.append(Point(f"llama-q{q}", {"model.arch": "llama", "model.n_kv_head": kv,
                                            "model.ffn_hidden": matched_ffn(model.n_embd, model.n_head, kv)}))
    return points


def architecture_comparisons(labels: Sequence[str]) -> list[tuple[str, str]]:
    """The variant at one query per K/V head against GPT-2, and each grouping against that one."""
    pairs = [("llama-q1", "gpt2")] if {"llama-q1", "gpt2"} <= set(labels) else []
    return pairs + [(label, "llama-q1") for label in labels if label.startswith("llama-q") and label != "llama-q1"
                    and "llama-q1" in labels]


def architecture_table(results: list[Result]) -> pd.DataFrame:
    rows = []
    for r in results:
        sft, base = r.metrics[SFT_METRICS], r.metrics.get("metrics/base.json", {})
        rows.append({
            "non_embedding": sft["parameters_without_embeddings"],
            "base_test_loss": base.get("test_loss"),
            "base_flops": base.get("flops"),
            "base_tokens_per_s": base.get("tokens_per_s"),
            "sft_test_loss": sft["test_loss"],
            **judged_columns(r),
            "sft_tokens_per_s": sft["tokens_per_s"],
        })
    return pd.DataFrame(rows)


def architecture_notes(results: list[Result]) -> list[str]:
    return [
        "Each row runs the whole chain up to its SFT model's judged answers (base pretrained from scratch "
        "at params.yaml's shape); llama-q<g>: g query heads share each K/V head, the SwiGLU width set so "
        "the block holds GPT-2's 12 d^2 matrix parameters (non_embedding shows how close).",
        "llama ties its head to the embedding as GPT-2 does and has no position table (RoPE).",
    ]
