"""The regime a result came from, in words: which data, which model, which device.

Read from params as plain data (`RawParams`), because the same sentence is said of params.yaml now and
of params.yaml at a study's baseline revision, where a key may be missing.
"""

from __future__ import annotations

from gptpipe.report.format import fmt
from gptpipe.report.inputs import RawParams


def regime(params: RawParams, device: str | None = None) -> str:
    """One sentence: `Embedded default: synthetic HH-format pairs (…); GPT-2 shape 2x128 …; device auto.`"""
    # Revisions older than shared.device and shared.dtype ran with what those keys now default to.
    where = params.value("shared.device") or "auto"
    if device:
        where = f"{where} (ran on {device})"
    dtype = params.value("shared.dtype") or "float32"
    return f"{kind(params)}: {_data(params)}; {_model(params)}; device {where}, {dtype}."


def regime_short(params: RawParams) -> str:
    """`Embedded default (synthetic data, scratch GPT-2 2x128)`: the regime in a few words."""
    what_data = ("synthetic data" if params.value("data.source") == "synthetic"
                 else f"HH-RLHF {params.value('data.division')}")
    return f"{kind(params)} ({what_data}, {_model_short(params)})"


def kind(params: RawParams) -> str:
    """The embedded default, the full study, or something between."""
    source, init = params.value("data.source"), params.value("model.init")
    if source == "synthetic" and init == "scratch":
        return "Embedded default"
    if source == "hf" and init == "pretrained":
        return "Full study"
    return "Custom"


def _data(params: RawParams) -> str:
    source, division = params.value("data.source"), params.value("data.division")
    if source == "synthetic":
        return (f"synthetic HH-format pairs ({fmt(params.value('data.synthetic.n_train'))} train / "
                f"{fmt(params.value('data.synthetic.n_test'))} test)")
    if source == "hf":
        said = f"HH-RLHF {division} from the Hugging Face hub"
    elif source == "dir":
        said = f"HH-RLHF {division} from {params.value('data.dir')}"
    else:
        return "data source not stated"
    max_pairs = params.value("data.max_pairs")
    return f"{said}, at most {fmt(max_pairs)} pairs per split" if max_pairs else said


def _model(params: RawParams) -> str:
    if not params.value("model"):
        return "model not stated"
    if params.value("model.init") == "scratch":
        return (f"GPT-2 shape {_shape(params)} ({params.value('model.n_head')} heads) "
                "pretrained here from scratch")
    return f"pretrained GPT-2 '{params.value('model.name')}'"


def _model_short(params: RawParams) -> str:
    if params.value("model.init") == "scratch":
        return f"scratch GPT-2 {_shape(params)}"
    return f"GPT-2 '{params.value('model.name')}'"


def _shape(params: RawParams) -> str:
    return f"{params.value('model.n_layer')}x{params.value('model.n_embd')}"


# -- the header's lines: the knobs that say what ran, with their params.yaml names -----------------

def data_line(params: RawParams) -> str:
    source = params.value("data.source")
    division = "" if source == "synthetic" else f", division {params.value('data.division')}"
    # A record written before tokenizers could be trained has no tokenize.tokenizer: GPT-2's BPE.
    tokenizer = params.value("tokenize.tokenizer") or "gpt2"
    vocab = f" (at most {params.value('tokenize.vocab_size')} ids)" if tokenizer == "trained" else ""
    return (f"data.source = {source}{division}; tokenize.tokenizer = {tokenizer}{vocab}; "
            f"tokenize.max_length = {params.value('tokenize.max_length')}")


def model_line(params: RawParams) -> str:
    if params.value("model.init") == "scratch":
        return (f"model.init = scratch: {params.value('model.n_layer')} layers x {params.value('model.n_embd')} "
                f"wide, {params.value('model.n_head')} heads, {params.value('model.n_positions')} positions")
    return f"model.init = pretrained: {params.value('model.name')}"


def device_line(params: RawParams) -> str:
    compile_ = "on" if params.value("shared.compile") else "off"
    return (f"shared.device = {params.value('shared.device')}, dtype {params.value('shared.dtype')}, "
            f"compile {compile_}, seed {params.value('shared.seed')}")
