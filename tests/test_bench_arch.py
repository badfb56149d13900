"""`gptpipe bench arch`: each architecture point timed in its own process on the shape it names."""

from __future__ import annotations

import json

from gptpipe.config import load_params
from gptpipe.models.gpt2 import build_scratch
from gptpipe.studies.architecture import architecture_points
from gptpipe.train.bench_arch import compare
from gptpipe.train.flops import ModelShape


def test_each_point_runs_the_shape_its_overrides_name(tiny_params, tokenized, tmp_path, capsys):
    # The sides differ only in their model overrides, handed to a fresh process as JSON: a side that
    # dropped them would time GPT-2 under a llama label. So each row's shape, read back from the
    # model that process built, must be the one the point's params build here.
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"model": tiny_params.model.model_dump(), "tokenize": {"max_length": 128},
                                  "train": {"batch_size": 4, "micro_batch_size": 4}}))
    result = compare(params, tokenized, steps=1, rounds=1)
    points = architecture_points(params)
    assert [p.label for p in points] == list(result["runs"]) == ["gpt2", "llama-q1", "llama-q2"]  # n_head 2: no q4
    for point in points:
        shape = ModelShape.from_config(build_scratch(load_params(params, point.overrides).model, 0).config)
        (row,) = result["runs"][point.label]
        assert (row["arch"], row["kv_heads"], row["ffn"]) == (shape.arch, shape.kv_heads, shape.ffw_size)
        assert row["tokens_per_s"] > 0
    assert {(r["arch"], r["kv_heads"]) for rows in result["runs"].values() for r in rows} == {("gpt2", 2), ("llama", 2), ("llama", 1)}
    assert result["summary"]["gpt2"]["relative_to_gpt2"] == 1.0
    assert len(capsys.readouterr().out.splitlines()) == 2 * len(points)
