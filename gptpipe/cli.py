"""`gptpipe`: run the pipeline, a stage by hand, a preset, or a benchmark."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer
import yaml

from gptpipe.config import Params, load_params, parse_params
from gptpipe.config import GenerateConfig  # the chat command's sampling defaults
from gptpipe.errors import UserError

app = typer.Typer(
    help="A reproducible DVC pipeline that fine-tunes GPT-2 into a dialogue assistant.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks that print figures (tokens/s, MFU, bytes).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

PRESETS = Path(__file__).resolve().parent.parent / "presets"
ParamsOption = Annotated[Path, typer.Option("--params", help="The params file to read.")]


def _fail(err: UserError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


@app.command()
def check(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml: every key, type, range and choice, before any work."""
    try:
        load_params(params)
    except UserError as err:
        _fail(err)
    typer.echo(f"{params}: ok")


@app.command()
def repro(
    preset: Annotated[str | None, typer.Option(help="Apply presets/<name>.yaml to params.yaml first (e.g. full).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Validate params (and, for a preset, reach its assets), then run `dvc repro`."""
    from gptpipe.preflight import unreachable_assets

    try:
        merged = _with_preset(params, preset) if preset else load_params(params)
        problems = unreachable_assets(merged)
        if problems:
            raise UserError("cannot start: " + "; ".join(problems))
    except UserError as err:
        _fail(err)
    if preset:
        _write_preset(params, preset)
        typer.echo(f"{params}: preset {preset!r} applied")
    raise typer.Exit(subprocess.call(["dvc", "repro"]))


@app.command()
def preset(name: str, params: ParamsOption = Path("params.yaml")) -> None:
    """Write presets/<name>.yaml's values into params.yaml (validated first)."""
    try:
        _with_preset(params, name)
    except UserError as err:
        _fail(err)
    _write_preset(params, name)
    typer.echo(f"{params}: preset {name!r} applied; `dvc repro` runs it")


def _preset_values(name: str) -> dict:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"preset {name!r}: no {path.name}; known presets: {known}")
    return yaml.safe_load(path.read_text()) or {}


def _merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def _with_preset(params: Path, name: str) -> Params:
    raw = yaml.safe_load(params.read_text()) or {}
    return parse_params(_merge(raw, _preset_values(name)), source=f"{params} + preset {name}")


def _write_preset(params: Path, name: str) -> None:
    raw = yaml.safe_load(params.read_text()) or {}
    params.write_text(yaml.safe_dump(_merge(raw, _preset_values(name)), sort_keys=False))


# -- the stages by hand: the same functions dvc.yaml's stages call, on the same paths -------------


def _stage(module: str) -> None:
    import importlib

    from gptpipe.errors import run_or_exit

    if not Path("dvc.yaml").is_file():
        _fail(UserError("run stage commands from the project root (the folder with dvc.yaml)"))
    run_or_exit(importlib.import_module(f"stages.{module}").main)


@app.command()
def download() -> None:
    """Stage download: the configured HH source → data/raw."""
    _stage("download")


@app.command()
def tokenize() -> None:
    """Stage tokenize: data/raw → data/tokenized/*.arrow."""
    _stage("tokenize")


@app.command()
def base() -> None:
    """Stage base: models/base (hub GPT-2, or a scratch GPT-2 pretrained here)."""
    _stage("base")


@app.command()
def sft() -> None:
    """Stage sft: models/base fine-tuned on prompt → chosen → models/sft."""
    _stage("sft")


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="optimizers | lora | data-quality | scaling")],
    report: Annotated[bool, typer.Option("--report", help="Rebuild the table from experiments already run.")] = False,
) -> None:
    """Run a study as DVC experiments (one per point) and compile its table and PNG."""
    from gptpipe.studies.definitions import STUDIES, run_study
    from gptpipe.tables import markdown_table

    if name not in STUDIES:
        _fail(UserError(f"study {name!r}: unknown; known studies: {', '.join(STUDIES)}"))
    try:
        if not report:
            load_params(Path("params.yaml"))  # bad params fail before any experiment is queued
        table = run_study(STUDIES[name], report_only=report)
    except UserError as err:
        _fail(err)
    typer.echo(markdown_table(table))
    typer.echo(f"\nwritten: plots/studies/{name}.md, .csv, .png; metrics/studies/{name}.json")


@app.command()
def chat(
    path: Annotated[Path, typer.Argument(help="A saved model folder, e.g. models/sft.")],
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = GenerateConfig().temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus mass; 1 = off.")] = GenerateConfig().top_p,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = GenerateConfig().top_k,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = GenerateConfig().max_new_tokens,
    seed: Annotated[int, typer.Option(help="Seeds the sampling: the same seed and messages replay a chat.")] = 0,
) -> None:
    """Talk to a model in the HH format it was trained on (/reset, /quit)."""
    import sys

    from transformers.utils import logging as hf_logging

    from gptpipe.evaluation.chat import run_chat
    from gptpipe.evaluation.generate import Sampling

    hf_logging.disable_progress_bar()  # a "Loading weights" bar would clutter the conversation
    try:
        run_chat(path, sys.stdin, sys.stdout, Sampling(max_new_tokens, temperature, top_p, top_k), seed)
    except UserError as err:
        _fail(err)


@bench_app.command("sft")
def bench_sft(
    params: ParamsOption = Path("params.yaml"),
    steps: Annotated[int, typer.Option(help="Optimizer steps each side runs (after 2 warm-up steps).")] = 20,
) -> None:
    """SFT tokens/s of gptpipe's loop against Hugging Face Trainer (group_by_length), in one run."""
    from gptpipe.train.bench import compare_with_trainer

    try:
        compare_with_trainer(load_params(params), Path("data/tokenized"), steps=steps)
    except UserError as err:
        _fail(err)


if __name__ == "__main__":
    app()
