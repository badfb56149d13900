from pathlib import Path

import pytest
import yaml

from gptpipe.config import OPTIMIZERS, LoopConfig, Params, ParamsError, load_params, parse_params
from gptpipe.cli import _merge

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_mirrors_the_config_defaults():
    # A default lives in the config class and is mirrored in params.yaml: the two must not drift.
    assert load_params(REPO / "params.yaml") == Params()


def test_every_preset_validates_when_merged():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for preset in (REPO / "presets").glob("*.yaml"):
        merged = parse_params(_merge(raw, yaml.safe_load(preset.read_text())), source=preset.name)
        assert merged.data.source in ("hf", "dir", "synthetic")


def _field_paths(model_class, prefix=""):
    for name, field in model_class.model_fields.items():
        yield f"{prefix}{name}"
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            yield from _field_paths(field.annotation, f"{prefix}{name}.")


def test_no_param_is_named_like_dvc_file_metadata():
    # DVC's run-cache key drops every key named `size` or `nfiles`, params included
    # (treeverse/dvc#10296): a param of that name could change without its stage rerunning.
    paths = list(_field_paths(Params))
    assert "filter.keep" in paths and len(paths) > 50  # the walk reaches nested sections
    assert [p for p in paths if p.rsplit(".", 1)[-1] in ("size", "nfiles")] == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"train": {"optimizer": "bogus"}}, "train.optimizer: 'bogus': Input should be 'sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'galore', 'muon' or 'adafactor'"),
        ({"train": {"lr": -0.1}}, "train.lr: -0.1: Input should be greater than 0"),
        ({"train": {"optimiser": "sgd"}}, "train.optimiser: unknown key"),
        ({"tokenize": {"max_length": "long"}}, "tokenize.max_length: 'long'"),
        ({"train": {"batch_size": 12, "micro_batch_size": 8}}, "train.batch_size: 12 is not a multiple of micro_batch_size=8"),
        ({"model": {"n_embd": 100, "n_head": 3}}, "model.n_head: 3 does not divide n_embd=100"),
        ({"data": {"source": "dir"}}, "data.dir: source 'dir' needs an absolute folder path"),
        ({"data": {"source": "dir", "dir": "relative/path"}}, "data.dir: 'relative/path' is relative"),
        ({"tokenize": {"max_length": 512}}, "tokenize.max_length: 512 exceeds model.n_positions=256"),
        # YAML's yes/true and 2.5 are not layer counts (lax pydantic made them 1 and refused only 2.5)
        ({"model": {"n_layer": True}}, "model.n_layer: True: Input should be a valid integer"),
        ({"model": {"n_layer": 2.0}}, "model.n_layer: 2.0: Input should be a valid integer"),
        ({"model": {"arch": "llama", "n_embd": 36, "n_head": 12}}, "model.n_head: 12 gives heads of 3 dimensions; RoPE needs an even head size"),
        ({"generate": {"max_new_tokens": 256}}, "generate.max_new_tokens: 256 leaves no room for a prompt in model.n_positions=256"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(override, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(override)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("content, expected", [
    (b"model:\n  arch: llama\n  arch: gpt2\n", "key 'arch' appears twice (line 3); keep one of them"),
    (b"\xff\xfe\x00model", "not UTF-8 text"),
    (b"- a\n- b\n", "holds a list, not a mapping of sections"),
    (b"model: [\n", "not valid YAML"),
])
def test_a_params_file_dvc_would_refuse_is_one_line(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ParamsError, match="a folder, not a params file"):
        load_params(tmp_path)


def test_yaml_scientific_notation_is_a_number(tmp_path):
    # PyYAML reads 1e-4 as a string; the typed config must still see a float.
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-4\n")
    assert load_params(path).train.lr == pytest.approx(1e-4)


def test_overrides_use_dotted_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")
    params = load_params(path, overrides={"train.optimizer": "sgd"})
    assert params.train.optimizer == "sgd"
    assert set(OPTIMIZERS) == {"sgd", "momentum", "nesterov", "adam", "adamw", "galore", "muon", "adafactor"}


def test_config_objects_are_frozen():
    with pytest.raises(Exception):
        Params().train.lr = 1.0


def test_lora_targets_are_checked():
    with pytest.raises(ParamsError, match=r"train.lora.targets.0: 'c_proj'"):
        parse_params({"train": {"lora": {"rank": 4, "targets": ["c_proj"]}}})


def test_params_yaml_states_each_loop_knob_once():
    # `train` shows every loop knob (the place they are documented); base, reward and dpo list only
    # those they set differently, so no knob is repeated at its default and none is dead.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    loop_knobs = set(LoopConfig.model_fields)
    assert loop_knobs <= set(raw["train"])
    for section in ("base", "reward", "dpo"):
        repeated = [k for k in loop_knobs & set(raw[section]) if raw[section][k] == getattr(LoopConfig(), k)]
        assert not repeated, f"{section} repeats loop defaults: {repeated}"


def test_the_sections_keep_the_values_the_default_ran_with():
    params = load_params(REPO / "params.yaml")
    assert (params.base.lr, params.base.weight_decay, params.base.eval_every) == (0.003, 0.1, 75)
    assert (params.dpo.lr, params.dpo.max_steps, params.dpo.warmup_steps) == (1e-4, 40, 4)
    assert params.reward.lr == 1e-3 and params.score.batch_size == 32 and params.train.lora.rank == 0
