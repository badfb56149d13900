"""`gptpipe study tokenizer`: GPT-2's 50,257-token BPE against byte-level BPEs trained here on the
train split (tokenize.vocab_size 1,024, 4,096, 16,384), each through the whole chain up to the SFT
model's judged answers.

The vocabulary decides a small model's cost: at the default's 2x128 the 50,257-way LM head is ~94% of
the FLOPs. Losses per token do not compare across vocabularies, so the table's losses are in bits
per byte (gptpipe.train.bits_per_byte); the verdicts are the judge-free ones every study uses, each
trained vocabulary against GPT-2's BPE. A trained vocabulary is at most vocab_size: the default's
synthetic text runs out of pairs seen twice at ~1,235 ids, so there 4k and 16k train the same
tokenizer (vocab_size in the table says what each got).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from gptpipe.studies.columns import SFT_METRICS, judged_columns
from gptpipe.studies.runner import Point, Result

TOKENIZER_METRICS = "metrics/tokenizer.json"
BASE_METRICS = "metrics/base.json"
VOCAB_SIZES = (1024, 4096, 16384)


def tokenizer_points() -> list[Point]:
    return [Point("gpt2", {"tokenize.tokenizer": "gpt2"})] + [
        Point(f"bpe{v}", {"tokenize.tokenizer": "trained", "tokenize.vocab_size": v}) for v in VOCAB_SIZES]


def tokenizer_comparisons(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Each trained vocabulary against GPT-2's BPE."""
    return [(label, "gpt2") for label in labels if label != "gpt2"] if "gpt2" in labels else []


def tokenizer_table(results: list[Result]) -> pd.DataFrame:
    rows = []
    for r in results:
        tok, base, sft = r.metrics.get(TOKENIZER_METRICS, {}), r.metrics.get(BASE_METRICS, {}), r.metrics[SFT_METRICS]
        measured = (tok.get("tokens_per_byte") or {}).get(tok.get("tokenizer"), {})
        rows.append({
            "vocab_size": tok.get("vocab_size"),
            "test_tokens_per_byte": (measured.get("test") or {}).get("tokens_per_byte"),
            "base_test_bpb": base.get("test_bpb"),
            "sft_test_bpb": sft.get("test_bpb"),
            "sft_test_sound_bpb": sft.get("test_sound_bpb"),
            **judged_columns(r),
            "base_tokens_per_s": base.get("tokens_per_s"),
            "sft_tokens_per_s": sft.get("tokens_per_s"),
            "base_minutes": _train_minutes(base),
            "sft_minutes": _train_minutes(sft),
        })
    return pd.DataFrame(rows)


def _train_minutes(metrics: dict) -> float | None:
    # The training steps' time (tokens / tokens_per_s), evaluations excluded: what the vocabulary changes.
    if not metrics.get("tokens_per_s"):
        return None
    return round(metrics["tokens"] / metrics["tokens_per_s"] / 60, 2)


def tokenizer_notes(results: list[Result]) -> list[str]:
    return [
        "Each row runs the whole chain up to its SFT model's judged answers, base pretrained from scratch "
        "with that row's tokenizer (trained ones on the train split only). Losses in bits per byte over "
        "the counted bytes, so rows with different vocabularies share a scale.",
        "vocab_size is what the tokenizer holds: a trained one stops early when its text has no pair "
        "left seen twice. minutes: training steps only (tokens / tokens_per_s), evaluations excluded.",
    ]
