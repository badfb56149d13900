import json
import time

import pytest
import torch
from transformers import GPT2LMHeadModel

from gptpipe.config import ModelConfig
from stage_runs import run_base
from gptpipe.models.gpt2 import ModelUnreachable, build_scratch, load_model, load_pretrained, save_model


def test_hub_id_without_the_hub_fails_in_seconds_naming_the_local_folder_option(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port, on any machine
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(ModelUnreachable) as err:
        load_pretrained("gpt2")
    assert time.monotonic() - started < 10  # one probe, not from_pretrained's retries (46 s here)
    assert "model.name='gpt2'" in str(err.value) and "http://127.0.0.1:9 is unreachable" in str(err.value)
    assert "absolute folder" in str(err.value)


def test_in_the_hub_clients_offline_mode_no_probe_is_made(monkeypatch):
    # HF_HUB_OFFLINE=1: the client reads its cache; a copy there must not be refused by a probe.
    from huggingface_hub import constants

    from gptpipe.hub import unreachable_reason

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert unreachable_reason() is None


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ModelUnreachable, match="no config.json"):
        load_pretrained(str(tmp_path))


def test_pretrained_base_from_a_local_folder_is_saved_as_is(tiny_params, tokenized, tmp_path):
    # The hub path with a locally saved model of the same class (the hub itself is unreachable here).
    local = tmp_path / "gpt2-local"
    saved = build_scratch(tiny_params.model, seed=3)
    saved.save_pretrained(local)
    params = tiny_params.model_copy(update={"model": tiny_params.model.model_copy(update={"init": "pretrained", "name": str(local)})})
    metrics = run_base(params, tokenized, tmp_path / "base", tmp_path / "base.json", tmp_path / "plots")
    loaded = load_model(tmp_path / "base")
    assert isinstance(loaded, GPT2LMHeadModel)
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert metrics["init"] == "pretrained" and metrics["test_loss"] > 9  # untrained: ~ln(50257)
    # GPT-2's BPE writes nothing beside the weights: the folder holds what it always held.
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == sorted(p.name for p in local.iterdir())
    assert metrics["test_bpb"] > 0 and "test_bpb" in (tmp_path / "plots" / "loss.tsv").read_text()
    assert json.loads((tmp_path / "base.json").read_text()) == metrics
    assert (tmp_path / "plots" / "loss.tsv").read_text().count("\n") == 2  # header + the one point


def test_save_model_replaces_a_folder_whole(tmp_path):
    model = build_scratch(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=0)
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    save_model(model, out)
    assert not (out / "stale.bin").exists() and (out / "config.json").is_file()
    assert not list(tmp_path.glob(".model.tmp-*"))
