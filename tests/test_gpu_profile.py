"""`gptpipe bench gpu --quick`: the GPU profile's code path on the CPU, and what its rows must hold."""

import json

from typer.testing import CliRunner

from gptpipe.cli import app
from gptpipe.train.gpu_profile import OPTIMIZERS, format_tables


def test_quick_profile_counts_memory_by_the_theory_and_generates_what_transformers_does(tokenized, tmp_path):
    out = tmp_path / "profile.jsonl"
    args = ["bench", "gpu", "--quick", "--tokenized", str(tokenized), "--out", str(out)]
    for part in ("memory", "generation", "throughput sft compiled"):
        args += ["--only", part]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["part"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert not [r for r in rows.values() if "error" in r]
    n = rows["memory adamw"]["trainable"]
    copies = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}
    for optimizer in OPTIMIZERS:
        row = rows[f"memory {optimizer}"]
        # The theory leaves out Adam's step counter, one scalar per tensor.
        assert 0 <= row["optimizer_state_bytes"] - row["optimizer_state_bytes_theory"] <= 8 * 200
        if optimizer in copies:
            assert abs(row["optimizer_state_bytes"] - 4 * copies[optimizer] * n) <= 8 * 200
    lora = [rows[f"memory lora {r}"]["trainable"] for r in (1, 8, 64)]
    assert lora[0] * 8 == lora[1] and lora[0] * 64 == lora[2]  # adapters grow linearly with rank
    assert rows["memory 2x32 checkpointing"]["parameters_bytes"] == rows["memory 2x32"]["parameters_bytes"]
    generation = rows["generation"]
    assert generation["gptpipe_tokens"] == generation["hf_tokens"] > 0  # greedy: the same answers' lengths
    compiled = rows["throughput sft compiled"]
    assert compiled["tokens_per_s"] > 0 and 1 <= compiled["compiled_graphs"] <= 2
    assert "| sft b4 | 1x32 | float32 | True |" in format_tables(list(rows.values()), "cpu")


def test_missing_tokenized_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["bench", "gpu", "--quick", "--tokenized", str(tmp_path)])
    assert result.exit_code == 1 and "train.arrow is missing" in result.output
