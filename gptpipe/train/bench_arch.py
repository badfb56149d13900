"""What the llama variant costs against GPT-2 on this host: the points of `gptpipe study architecture`
(GPT-2, and the variant at 1, 2 and 4 query heads per K/V head, at matched non-embedding parameters)
timed by the same SFT steps as `gptpipe bench kernels`, each in a fresh process, the points
alternating round by round so that a host whose load drifts shares the drift among them.

The study's own tokens/s columns come from runs made hours apart under whatever else the host was
doing; ratios measured here, in one run, are the ones to compare. Prints each run and, per point,
the median tokens/s, model FLOP/s and the median of its per-round ratios to GPT-2's tokens/s."""

from __future__ import annotations

import statistics
from pathlib import Path

from gptpipe.studies.architecture import architecture_points
from gptpipe.train.bench_kernels import measure_in_fresh_process

BASELINE = "gpt2"


def compare(params_path: Path, tokenized: Path, steps: int, rounds: int) -> dict:
    """Every architecture point, `rounds` fresh processes each, alternating; prints runs and ratios."""
    points = architecture_points(params_path)
    runs: dict[str, list[dict]] = {p.label: [] for p in points}
    for _ in range(rounds):
        for point in points:
            row = measure_in_fresh_process(params_path, tokenized, steps, overrides=point.overrides, side=point.label)
            runs[point.label].append(row)
            print(f"{point.label:9s} {row['arch']:5s} kv heads {row['kv_heads']:2d} ffn {row['ffn']:5d} "
                  f"{row['non_embedding_params']:>11,} non-embedding params {row['tokens_per_s']:8.0f} tokens/s "
                  f"{row['flops_per_s'] / 1e9:7.2f} GFLOP/s", flush=True)
    summary = {label: _summary(rows, runs[BASELINE]) for label, rows in runs.items()}
    for label, row in summary.items():
        print(f"{label:9s} median {row['tokens_per_s']:8.0f} tokens/s, {row['flops_per_s'] / 1e9:6.2f} GFLOP/s, "
              f"{row['relative_to_gpt2']:.2f}x GPT-2's tokens/s (per round {', '.join(f'{r:.2f}' for r in row['rounds'])})")
    return {"runs": runs, "summary": summary}


def _summary(rows: list[dict], baseline: list[dict]) -> dict:
    ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(rows, baseline, strict=True)]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
            "flops_per_s": statistics.median(r["flops_per_s"] for r in rows),
            "relative_to_gpt2": statistics.median(ratios), "rounds": ratios}
