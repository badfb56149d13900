"""Before a long run: can the assets the params name be reached, and does each training run fit the
GPU? Every problem at once, in one line each.

The stages load the same assets with the real code (and fail plainly too); this only makes the
full study fail in seconds, naming everything missing, instead of an hour in.
"""

from __future__ import annotations

from pathlib import Path

from gptpipe.config import Params
from gptpipe.models.gpt2 import HUB_GPT2
from gptpipe.data import formats
from gptpipe.data.batches import SFT_ALONE
from gptpipe.data.sources import _split_file, read_records
from gptpipe.train.memory_plan import GB, Card, MemoryPlanError, advice, jobs, plan

HUB_TIMEOUT_S = 10


def unreachable_assets(params: Params) -> list[str]:
    problems = []
    hub_dataset = not Path(params.data.hf_dataset).is_absolute()
    if params.data.source == "hf" and hub_dataset and not _hub_has("dataset", params.data.hf_dataset):
        problems.append(
            f"data.source=hf: the Hugging Face hub has no reachable {params.data.hf_dataset}; offline, set "
            f"data.source=dir and data.dir=/absolute/folder with {params.data.division}/"
            "{train,test}.jsonl.gz (the hub's layout)"
        )
    problems += data_dir_problems(params) + single_response_problems(params)
    if params.model.init == "pretrained":
        problems += _unreachable_gpt2("model.name", [params.model.name])
    if params.scaling.fine_tunes:  # each size from its weights: a size that cannot load fails hours in
        problems += _unreachable_gpt2("scaling.models", list(params.scaling.models))
    reward = params.reward
    if reward.backend == "hf" and not Path(reward.name).is_dir() and not _hub_has("model", reward.name):
        problems.append(
            f"reward.name={reward.name}: not a local folder and not reachable on the Hugging Face hub; "
            "offline, save_pretrained the model and its tokenizer where the hub is reachable and set "
            "reward.name to that absolute folder, or use reward.backend=trained"
        )
    if params.shared.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("shared.device=cuda: no CUDA device here; use a GPU machine or device: cpu")
    return problems


def memory_report(params: Params, card: Card | None) -> tuple[list[str], list[str]]:
    """Each training run's planned GPU memory (lines to print) and the runs that do not fit as set
    (problems, one line each naming the setting that fits). Nothing without a GPU."""
    if card is None:
        return [], []
    lines, problems = [], []
    if params.shared.dtype == "bfloat16" and not card.bf16:
        problems.append(
            f"shared.dtype=bfloat16: {card.name} has no native bf16 (compute capability below 8.0) and "
            "would emulate it, slowly; set shared.dtype=float16 (autocast with loss scaling) or float32"
        )
    if params.shared.compile and not card.triton:
        major, minor = card.capability
        problems.append(
            f"shared.compile=true: {card.name} (compute capability {major}.{minor}) is older than Triton, "
            "which torch.compile builds its kernels with, supports (7.0); set shared.compile=false"
        )
    if params.shared.processes > card.count:
        problems.append(
            f"shared.processes={params.shared.processes}: this machine has {card.count} {card.name}; "
            f"one process per GPU, so set shared.processes to at most {card.count}"
        )
    for job in jobs(params):
        try:
            chosen = plan(job, card)
        except MemoryPlanError as err:
            problems.append(str(err))
            continue
        checkpointed = ", checkpointed" if chosen.checkpointing else ""
        lines.append(
            f"{job.stage:<8} {job.label:<14} micro-batch {chosen.micro_batch_size}{checkpointed}: "
            f"{chosen.bytes / GB:.1f} of {card.usable_bytes / GB:.1f} GB"
        )
        # The sweep plans each size's micro-batch itself when it runs; the other stages run as set.
        line = advice(chosen, card) if job.stage != "scaling" else None
        if line:
            problems.append(line)
    return lines, problems


def _unreachable_gpt2(key: str, names: list[str]) -> list[str]:
    problems = []
    for name in names:
        if Path(name).is_dir() or _hub_has("model", name):
            continue
        hint = f" ({', '.join(HUB_GPT2)} are GPT-2's)" if name not in HUB_GPT2 else ""
        problems.append(
            f"{key}={name}: not a local folder and not reachable on the Hugging Face hub{hint}; "
            f"offline, save_pretrained the weights where the hub is reachable and name that absolute "
            f"folder in {key}"
        )
    return problems


def _hub_has(kind: str, repo_id: str) -> bool:
    from huggingface_hub import HfApi

    api = HfApi()
    info = api.dataset_info if kind == "dataset" else api.model_info
    try:
        info(repo_id, timeout=HUB_TIMEOUT_S)
    except Exception:  # offline, unknown id, or hub down: all mean "cannot fetch it now"
        return False
    return True


def data_dir_problems(params: Params) -> list[str]:
    """A dir source whose folder is missing or holds neither split's file: one line, before any work."""
    if params.data.source != "dir":
        return []
    folder = Path(params.data.dir) / params.data.division
    if not folder.is_dir():
        return [f"data.dir: {folder} is not a folder; set data.dir (and data.division) to the folder holding "
                "<division>/train.jsonl (or test; .jsonl.gz, .json, .parquet)"]
    if not any(_split_file(folder, split) for split in ("train", "test")):
        return [f"data.dir: {folder} holds no train or test file (.jsonl, .jsonl.gz, .json or .parquet)"]
    return []


def single_response_format(params: Params) -> str | None:
    """The data's format when its records have no rejected response (SFT data), else None. The
    format is the stated one, or a dir's first record's (train's, or test's when test is the one
    file, from which train will be carved)."""
    fmt = params.data.format
    if fmt == "auto" and params.data.source == "dir":
        folder = Path(params.data.dir) / params.data.division
        path = _split_file(folder, "train") or _split_file(folder, "test")
        records = read_records(path) if path else []
        fmt = formats.detect(next((r for r in records if isinstance(r, dict)), None)) or "auto"
    return fmt if fmt in formats.SINGLE_RESPONSE else None


def single_response_problems(params: Params, every_stage: bool = True) -> list[str]:
    """Data without a rejected response feeds SFT only: the settings that need preference pairs, in
    one line. every_stage: the run is the whole of dvc.yaml (`gptpipe repro`), whose dpo needs pairs."""
    fmt = single_response_format(params)
    if fmt is None:
        return []
    needs = (["reward.backend=trained"] if params.reward.backend == "trained" else []) + (
        ["filter.by=margin"] if params.filter.by == "margin" and params.filter.keep is not None else []) + (
        ["dpo and judge@ (every stage runs)"] if every_stage else [])
    if not needs:
        return []
    return [f"data.format={fmt}: single responses, no rejected, but {', '.join(needs)} need preference pairs; {SFT_ALONE}"]
