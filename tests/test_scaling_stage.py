import json

import pandas as pd
import pytest

from gptpipe.config import ParamsError, parse_params
from gptpipe.errors import UserError
from gptpipe.train.flops import count_params
from gptpipe.scaling.runs import scaling_shape as _scaling_shape
from stage_runs import run_scaling
from tiny import TINY


def test_scaling_stage_trains_each_size_for_its_budget_and_writes_the_report(tokenized, tmp_path):
    params = parse_params({**TINY, "scaling": {"models": ["1x16", "1x32", "1x48"], "head_dim": 16,
                                               "budgets": [3e9, 9e9], "eval_samples": 16, "batch_size": 2}})
    summary = run_scaling(params, tokenized, tmp_path / "scaling", tmp_path / "scaling.json")
    runs = pd.read_csv(tmp_path / "scaling" / "runs.csv")
    assert len(runs) == 6
    for row in runs.itertuples():
        n = count_params(_scaling_shape(row.label, 16, params.model))
        assert row.n_params == n == _built_params(params.model, row.label, 16)  # the 128 positions, not 1,024
        assert row.planned_tokens == int(row.budget // (6 * n))
        # Whole steps of variable-length sequences: the tokens seen land near the plan.
        assert 0.3 * row.planned_tokens < row.tokens < 3 * row.planned_tokens + 2000
        assert row.test_loss < 10.9
        # scaling.batch_size sets the sequences per step: at most 2 full-length sequences each.
        assert row.tokens <= row.steps * 2 * params.tokenize.max_length
    assert json.loads((tmp_path / "scaling.json").read_text()) == summary
    assert "embedded default" in (tmp_path / "scaling" / "compute_optimal.md").read_text()
    for png in ("isoflop.png", "envelope.png", "n_opt.png"):
        assert (tmp_path / "scaling" / png).read_bytes()[:4] == b"\x89PNG"


def _built_params(model, label: str, head_dim: int) -> int:
    from gptpipe.models.gpt2 import build_scratch
    from gptpipe.scaling.runs import scratch_config

    built = build_scratch(scratch_config(model, _scaling_shape(label, head_dim)), 0)
    return sum(p.numel() for p in built.parameters())  # the tied head counted once


@pytest.mark.parametrize("n_kv_head, ffn_hidden", [(None, None), (1, 64), (2, None)])
def test_a_llama_sweep_counts_the_variant_it_builds_at_every_width(tiny_params, n_kv_head, ffn_hidden):
    # The model section's n_kv_head and ffn_hidden are for its own width: a sweep shape of one head
    # cannot have two K/V heads (it crashed), nor every width one FFN. N is what the build holds.
    model = tiny_params.model.model_copy(update={"arch": "llama", "n_kv_head": n_kv_head, "ffn_hidden": ffn_hidden})
    for label in ("1x16", "2x32", "1x48"):
        shape = _scaling_shape(label, 16, model)
        assert shape.arch == "llama" and shape.kv_heads == shape.n_head and shape.n_positions == model.n_positions
        assert count_params(shape) == _built_params(model, label, 16)


def test_scaling_params_are_checked_before_work():
    with pytest.raises(ParamsError, match="scaling.models: 2 given"):
        parse_params({"scaling": {"models": ["2x32", "2x64"]}})
    with pytest.raises(UserError, match="scaling.models: '2x40'"):
        _scaling_shape("2x40", 16)


def test_a_sweep_size_may_be_an_offline_copy_of_hub_weights(tiny_params, tmp_path):
    from gptpipe.config import ModelConfig
    from gptpipe.models.gpt2 import build_scratch
    from gptpipe.preflight import unreachable_assets

    local = tmp_path / "gpt2-copy"
    build_scratch(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=64), seed=0).save_pretrained(local)
    shape = _scaling_shape(str(local), head_dim=16)
    assert (shape.n_layer, shape.n_embd, shape.n_head) == (2, 32, 2)
    with pytest.raises(UserError, match="no config.json"):
        _scaling_shape(str(tmp_path / "empty"), head_dim=16)
    # preflight names every sweep size it cannot load, before any work (offline here: the hub ones)
    params = tiny_params.model_copy(update={
        "model": tiny_params.model.model_copy(update={"init": "pretrained", "name": str(local)}),
        "scaling": tiny_params.scaling.model_copy(update={"models": (str(local), "gpt2-medium", str(tmp_path / "gone"))}),
    })
    problems = unreachable_assets(params)
    assert [p.split(":")[0] for p in problems] == ["scaling.models=gpt2-medium", f"scaling.models={tmp_path / 'gone'}"]
