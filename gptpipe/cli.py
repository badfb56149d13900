"""`gptpipe`: run the pipeline, a stage by hand, a preset, or a benchmark."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.representer import RoundTripRepresenter

from gptpipe.config import Params, load_params, parse_params
from gptpipe.config import GenerateConfig  # the chat command's sampling defaults
from gptpipe.errors import UserError
from gptpipe.files import atomic_path

app = typer.Typer(
    help="A reproducible DVC pipeline that fine-tunes GPT-2 into a dialogue assistant.\n\n"
    "Each stage of dvc.yaml (download ... report) is also a command here that runs the stage's cmd "
    "directly, without DVC: dvc.lock is not updated. `dvc repro <stage>` is the recorded way.",
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
    from gptpipe.preflight import data_dir_problems, single_response_format, single_response_problems

    try:
        loaded = load_params(params)
        problems = data_dir_problems(loaded) or single_response_problems(loaded, every_stage=False)
        if problems:  # the data decides which stages can run: fail here, not at the reward stage
            raise UserError(problems[0])
    except UserError as err:
        _fail(err)
    fmt = single_response_format(loaded)
    scope = (f" for SFT alone (data.format={fmt}: no rejected responses): `dvc repro generate@sft`; "
             "dpo and judge@ need preference pairs and refuse") if fmt else ""
    typer.echo(f"{params}: ok{scope}")


@app.command()
def repro(
    preset: Annotated[str | None, typer.Option(help="Apply presets/<name>.yaml to params.yaml first (e.g. full).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Validate params (and, for a preset, reach its assets), then run `dvc repro`."""
    from gptpipe.preflight import memory_report, unreachable_assets
    from gptpipe.train.memory_plan import Card, Host, host_problems

    try:
        merged, text = _apply_preset(params, preset) if preset else (load_params(params), None)
        problems = unreachable_assets(merged)
        card = Card.current() if merged.shared.device != "cpu" else None
        plan_lines, memory_problems = memory_report(merged, card)
        if card is None:  # a CPU run: every training stage's RAM, before the first one runs
            memory_problems += host_problems(merged, Host.current())
        for line in plan_lines:
            typer.echo(f"memory plan on {card.name}: {line}")
        problems += memory_problems
        if problems:
            raise UserError("cannot start: " + "; ".join(problems))
    except UserError as err:
        _fail(err)
    if text is not None:
        _write(params, text)
        typer.echo(f"{params}: preset {preset!r} applied")
    raise typer.Exit(subprocess.call(["dvc", "repro"]))


@app.command()
def preset(name: str, params: ParamsOption = Path("params.yaml")) -> None:
    """Write presets/<name>.yaml's values into params.yaml (validated first; comments kept)."""
    try:
        _, text = _apply_preset(params, name)
    except UserError as err:
        _fail(err)
    _write(params, text)
    typer.echo(f"{params}: preset {name!r} applied; `dvc repro` runs it")


class _RoundTripRepresenter(RoundTripRepresenter):
    """ruamel's round-trip representer, but writing null as `null` as params.yaml does (ruamel's
    leaves the value empty). A subclass, so that the process's other ruamel dumpers (dvc's) are
    left as they are."""


def _represent_null(representer: RoundTripRepresenter, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


_RoundTripRepresenter.add_representer(type(None), _represent_null)


def _round_trip() -> YAML:
    """A ruamel.yaml round-trip loader and dumper: comments, key order, flow lists and number formats
    survive, so a preset changes only the values it sets (yaml.safe_dump dropped every comment).
    params.yaml and the presets load and dump back byte for byte."""
    yaml_rt = YAML()
    yaml_rt.Representer = _RoundTripRepresenter
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # never re-wrap a long comment or list
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    return yaml_rt


def _preset_values(name: str, yaml_rt: YAML) -> CommentedMap:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"preset {name!r}: no {path.name}; known presets: {known}")
    return yaml_rt.load(path.read_text()) or CommentedMap()


def _merge(base: dict, overlay: dict) -> dict:
    """overlay's values over base's, section by section (plain dicts; tests/test_config uses it)."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def _merge_into(node: CommentedMap, overlay: Mapping[str, Any]) -> None:
    """_merge in place on a round-trip document: a changed key keeps its place and its comment."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(node.get(key), Mapping):
            _merge_into(node[key], value)
        else:
            node[key] = _fresh(value)


def _fresh(value: Any) -> Any:
    """The preset's value without the preset file's comments, which belong to another layout."""
    if isinstance(value, Mapping):
        fresh = CommentedMap()
        for key, item in value.items():
            fresh[key] = _fresh(item)
        return fresh
    if isinstance(value, list):
        seq = CommentedSeq(_fresh(item) for item in value)
        if isinstance(value, CommentedSeq) and value.fa.flow_style():
            seq.fa.set_flow_style()  # [a, b] stays on one line
        return seq
    return value


def _apply_preset(params: Path, name: str) -> tuple[Params, str]:
    """params.yaml with presets/<name>.yaml merged in: the validated params and the text to write."""
    yaml_rt = _round_trip()
    try:
        document = yaml_rt.load(params.read_text()) or CommentedMap()
    except FileNotFoundError:
        raise UserError(f"{params}: no such params file") from None
    except YAMLError as err:
        raise UserError(f"{params}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(document, CommentedMap):
        raise UserError(f"{params}: not a mapping of sections (shared:, data:, ...)")
    _merge_into(document, _preset_values(name, yaml_rt))
    text = io.StringIO()
    yaml_rt.dump(document, text)
    # Validated as load_params will read the file back (PyYAML), so what passes here is what runs.
    merged = parse_params(yaml.safe_load(text.getvalue()) or {}, source=f"{params} + preset {name}")
    return merged, text.getvalue()


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:  # a failure leaves the old params.yaml, never half a file
        tmp.write_text(text)


# -- the stages by hand: each runs dvc.yaml's own cmd for it, outside DVC -------------------------

# dvc.yaml's stages in pipeline order, each with a line for --help.
STAGES = (
    ("download", "the configured HH source (hub, folder or generator) -> data/raw"),
    ("tokenizer", "GPT-2's BPE, or a byte-level BPE trained on the train split -> data/tokenizer"),
    ("tokenize", "data/raw -> data/tokenized, the run's tokenizer's ids"),
    ("base", "models/base: hub GPT-2, or a scratch GPT-2 pretrained here"),
    ("reward", "the reward model (trained here, or a hub classifier) -> models/reward"),
    ("score", "the reward of every train and test pair's responses -> data/scored"),
    ("filter", "the train pairs SFT trains on (filter.keep, filter.by)"),
    ("sft", "models/base fine-tuned on prompt -> chosen -> models/sft"),
    ("dpo", "models/sft trained with DPO on the train pairs -> models/dpo"),
    ("generate", "one model's answers to a fixed sample of test prompts"),
    ("judge", "the reward of every answer one model gave"),
    ("evaluate", "the judged models side by side: rewards, win rates, a report"),
    ("scaling", "the compute-optimal study: isoFLOP runs and fits"),
    ("report", "every study with results, on one page -> report/"),
)
# Stages dvc.yaml runs once per item (`foreach:`): their command takes the item, here a model name.
FOREACH_STAGES = ("generate", "judge")
ModelArgument = Annotated[
    str | None, typer.Argument(help="A model in generate.models (dvc.yaml's foreach); default: each in turn.")
]


def _stage_command(name: str, summary: str) -> None:
    recorded = f"`dvc repro {name}`" + (f" (or {name}@<model>)" if name in FOREACH_STAGES else "")
    help_text = (
        f"Stage {name}: {summary}.\n\nRuns the cmd dvc.yaml gives for {name}, here and now, not through "
        f"DVC: dvc.lock is not updated and the outputs are not cached, so DVC will not know this run "
        f"happened. {recorded} is the recorded way."
    )
    short_help = f"Stage {name}: {summary}."
    if name in FOREACH_STAGES:
        def command(model: ModelArgument = None) -> None:
            _run_stage(name, model)
    else:
        def command() -> None:
            _run_stage(name, None)
    app.command(name, help=help_text, short_help=short_help)(command)


def _run_stage(name: str, item: str | None) -> None:
    try:
        commands = _stage_commands(Path("dvc.yaml"), name, item)
    except UserError as err:
        _fail(err)
    for argv, workdir in commands:
        typer.echo(f"$ {shlex.join(argv)}", err=True)
        status = subprocess.call(argv, cwd=workdir)
        if status:
            raise typer.Exit(status)


def _stage_commands(dvc_yaml: Path, name: str, item: str | None) -> list[tuple[list[str], Path]]:
    """The argv lists (and working folders) dvc.yaml's `cmd` for stage `name` runs: one per item of a
    foreach stage (`item`, or every item), `${item}` filled in and `python` this interpreter."""
    if not dvc_yaml.is_file():
        raise UserError(f"no {dvc_yaml} here: run stage commands from the project root (the folder with dvc.yaml)")
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    if name not in stages:
        raise UserError(f"{dvc_yaml}: no stage {name!r}; it has {', '.join(stages) or 'none'}")
    stage = stages[name]
    if "foreach" in stage:
        items = _foreach_items(name, stage["foreach"])
        if item is not None and item not in items:
            raise UserError(f"{name}: {item!r} is not one of its items ({', '.join(items)})")
        body, chosen = stage["do"], [item] if item is not None else items
    else:
        body, chosen = stage, [None]
    if not body.get("cmd"):
        raise UserError(f"{dvc_yaml}: stage {name!r} has no cmd")
    cmds = body["cmd"] if isinstance(body["cmd"], list) else [body["cmd"]]  # DVC allows a list
    workdir = dvc_yaml.parent / body.get("wdir", ".")
    return [(_argv(name, cmd, each), workdir) for each in chosen for cmd in cmds]


def _foreach_items(name: str, foreach: Any) -> list[str]:
    """dvc.yaml's `foreach:`, a list or `${section.key}` of params.yaml (read through the config)."""
    if isinstance(foreach, list):
        return [str(value) for value in foreach]
    match = re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", str(foreach))
    if not match:
        raise UserError(f"{name}: foreach {foreach!r} is neither a list nor ${{params.key}}; run `dvc repro {name}`")
    value: Any = load_params("params.yaml")
    try:
        for part in match.group(1).split("."):
            value = getattr(value, part)
    except AttributeError:
        raise UserError(f"{name}: foreach {foreach!r} names no params.yaml key") from None
    return [str(each) for each in value]


def _argv(name: str, cmd: str, item: str | None) -> list[str]:
    if item is not None:
        cmd = cmd.replace("${item}", item)
    if "${" in cmd:
        raise UserError(f"{name}: cmd {cmd!r} uses DVC templating gptpipe does not fill in; run `dvc repro {name}`")
    argv = shlex.split(cmd)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the interpreter (and environment) gptpipe runs in
    return argv


for _name, _summary in STAGES:
    _stage_command(_name, _summary)


@app.command()
def restore(
    stage: Annotated[str | None, typer.Argument(help="a stage as dvc.lock names it: base, judge@sft, ... (none: every stage)")] = None,
) -> None:
    """Bring back a stage's last good outputs after a failed run (or every stage's): its cached ones and
    its metrics and plots, as dvc.lock records them (`dvc checkout` alone skips the `cache: false` files)."""
    from gptpipe.restore import restore as restore_stage

    try:
        copied = restore_stage(stage)
    except UserError as err:
        _fail(err)
    what = stage or "every stage"
    typer.echo(f"{what}: last good outputs in place" + (f" ({', '.join(copied)} from the DVC cache)" if copied else ""))


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="optimizers | lora | data-quality | scaling | architecture | tokenizer | seeds (the default recipe: sft vs base, dpo vs sft)")],
    report: Annotated[bool, typer.Option("--report", help="Rebuild the table from experiments already run.")] = False,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Run each point over this many seeds (shared.seed, +1, ...); the table shows mean and spread.")] = 1,
    points: Annotated[list[str] | None, typer.Option("--points", help="Run only these points (repeatable), e.g. --points adamw --points muon; name@lr runs a point at another lr (muon@0.01: an lr sweep); written as <name>-<points>.")] = None,
) -> None:
    """Run a study as DVC experiments (one per point and seed) and compile its table, verdicts and PNG."""
    from gptpipe.studies.definitions import STUDIES, run_study
    from gptpipe.studies.selection import output_name
    from gptpipe.tables import markdown_table

    if name not in STUDIES:
        _fail(UserError(f"study {name!r}: unknown; known studies: {', '.join(STUDIES)}"))
    try:
        if not report:
            load_params(Path("params.yaml"))  # bad params fail before any experiment is queued
        table = run_study(STUDIES[name], report_only=report, seeds=seeds, only=points or ())
    except UserError as err:
        _fail(err)
    typer.echo(markdown_table(table))
    written = output_name(STUDIES[name], points or ())
    typer.echo(f"\nwritten: plots/studies/{written}.md, .csv, .png; metrics/studies/{written}.json")


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


@app.command("plots-template")
def plots_template(
    local: Annotated[bool, typer.Option("--config/--no-config", help="Also set this checkout's `dvc config --local plots.html_template`.")] = True,
) -> None:
    """Write the offline page for `dvc plots show` / `dvc plots diff` (vega inline, no CDN) and point DVC at it."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from gptpipe.report.plots_template import TEMPLATE_PATH, write_template

    try:
        # In the project's root, wherever in it this runs: that is where the DVC setting points.
        root = Path(Repo.find_root()) if local else Path(".")
        path = write_template(root / TEMPLATE_PATH)
    except NotDvcRepoError:
        _fail(UserError("plots-template: not inside a DVC project; run it in the project, or with --no-config"))
    except UserError as err:
        _fail(err)
    if local:
        # DVC reads a relative html_template from .dvc/, so the value climbs out of it.
        status = subprocess.call(["dvc", "config", "--local", "plots.html_template", f"../{TEMPLATE_PATH}"], cwd=root)
        if status:
            raise typer.Exit(status)
        typer.echo(f"{path}: written; `dvc plots show` and `dvc plots diff` use it (dvc config --local plots.html_template)")
    else:
        typer.echo(f"{path}: written; use `dvc plots show --html-template {path}`")


@app.command()
def serve(
    path: Annotated[Path, typer.Argument(help="A saved model folder, e.g. models/sft.")],
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    name: Annotated[str | None, typer.Option(help="The model id clients send (default: the folder's name).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests generated at once; the rest wait.")] = 1,
    max_waiting: Annotated[int, typer.Option(min=0, help="Requests that may wait for a slot; more are answered 503.")] = 16,
    max_tokens: Annotated[int, typer.Option(min=1, help="The most new tokens a request may ask for.")] = 256,
    temperature: Annotated[float, typer.Option(help="Default when a request names none; 0 = greedy.")] = GenerateConfig().temperature,
    top_p: Annotated[float, typer.Option(help="Default nucleus mass; 1 = off.")] = GenerateConfig().top_p,
    top_k: Annotated[int, typer.Option(help="0 = off (OpenAI's API has no top_k; this one applies to all).")] = GenerateConfig().top_k,
) -> None:
    """An OpenAI-compatible API (/v1/chat/completions, streaming; /v1/models) and a chat page at /."""
    import uvicorn
    from transformers.utils import logging as hf_logging

    from gptpipe.evaluation.generate import Sampling
    from gptpipe.evaluation.serve import Limits, create_app
    from gptpipe.data.tokenizer import load_tokenizer
    from gptpipe.models.gpt2 import load_model

    hf_logging.disable_progress_bar()
    try:
        defaults = Sampling(min(GenerateConfig().max_new_tokens, max_tokens), temperature, top_p, top_k)
        model, tokenizer = load_model(path), load_tokenizer(path)
    except UserError as err:
        _fail(err)
    served = name or path.resolve().name
    typer.echo(f"{path}: serving as {served!r} on http://{host}:{port}/ (OpenAI API at /v1)")
    uvicorn.run(create_app(model, served, defaults, Limits(max_tokens=max_tokens, concurrency=concurrency, max_waiting=max_waiting), tokenizer),
                host=host, port=port)


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


@bench_app.command("kernels")
def bench_kernels(
    params: ParamsOption = Path("params.yaml"),
    tokenized: Annotated[Path, typer.Option(help="The tokenized folder SFT steps read (train.arrow).")] = Path("data/tokenized"),
    steps: Annotated[int, typer.Option(help="Timed SFT steps per run (after 2 warm-up steps).")] = 10,
    rounds: Annotated[int, typer.Option(help="Fresh processes per mode, alternating portable and native.")] = 3,
) -> None:
    """SFT tokens/s under the portable CPU kernels (the committed lock's) and the host's native ones."""
    from gptpipe.train.bench_kernels import compare

    compare(params, tokenized, steps, rounds)


@bench_app.command("arch")
def bench_arch(
    params: ParamsOption = Path("params.yaml"),
    tokenized: Annotated[Path, typer.Option(help="The tokenized folder SFT steps read (train.arrow).")] = Path("data/tokenized"),
    steps: Annotated[int, typer.Option(help="Timed SFT steps per run (after 2 warm-up steps).")] = 10,
    rounds: Annotated[int, typer.Option(help="Fresh processes per point, the points alternating.")] = 3,
) -> None:
    """SFT tokens/s of GPT-2 against the llama variant at 1, 2, 4 queries per K/V head (study architecture's points)."""
    from gptpipe.train.bench_arch import compare

    compare(params, tokenized, steps, rounds)


@bench_app.command("gpu")
def bench_gpu(
    tokenized: Annotated[Path, typer.Option(help="A tokenized folder (train.arrow, test.arrow), e.g. of real HH.")] = Path("data/tokenized"),
    out: Annotated[Path, typer.Option(help="Where each measured row goes, as JSON lines.")] = Path("gpu-profile.jsonl"),
    only: Annotated[list[str] | None, typer.Option(help="Run the parts whose names start with this (repeatable): ops, throughput, memory, generation.")] = None,
    quick: Annotated[bool, typer.Option(help="Tiny shapes and a few steps: a check of the code path, on any device.")] = False,
) -> None:
    """The full preset's code on a GPU: tokens/s and MFU of SFT and DPO (eager, compiled, bf16, TF32),
    peak memory per optimizer, LoRA rank and GPT-2 size, generation against transformers' generate."""
    from gptpipe.train.gpu_profile import run_profile

    for name in ("train", "test"):
        if not (tokenized / f"{name}.arrow").is_file():
            _fail(UserError(f"--tokenized: {tokenized / name}.arrow is missing; run `dvc repro tokenize` or name a tokenized folder"))
    run_profile(tokenized, out, quick=quick, only=only or ())


if __name__ == "__main__":
    app()
