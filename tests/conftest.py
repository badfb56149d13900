"""Shared fixtures: the real HH files beside the checkout, and a tiny tokenized synthetic data set."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

# The suite runs on the host's own kernels unless told otherwise: its assertions must hold on any
# kernels (another host runs other ones), native ones are the fastest, and a test that needs the
# pinned kernels runs them in a subprocess itself (tests/test_kernels.py). GPTPIPE_KERNELS=portable
# python -m pytest runs the suite as the pipeline runs.
os.environ.setdefault("GPTPIPE_KERNELS", "native")

# The suite runs on pytest-xdist workers (`-n auto` in pyproject.toml): much of its time is
# single-threaded (importing torch in each stage's process, DVC's own Python, tiny models whose
# matmuls do not split well), so workers side by side finish sooner than one worker with every core.
# Each worker gets its share of the cores, and so do the stage processes it starts (they inherit
# the variable), so the workers never oversubscribe the host. No assertion depends on the count.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the stage modules (stages/), which tests call through stage_runs

from gptpipe.config import parse_params  # noqa: E402
from stage_runs import download, run_tokenize  # noqa: E402
from tiny import TINY  # noqa: E402
from dvc_project import tiny_repro  # noqa: E402

# ../shared beside the checkout (also in CI); GPTPIPE_SHARED points elsewhere.
SHARED = Path(os.environ.get("GPTPIPE_SHARED", REPO.parent / "shared"))
HH_DIR = SHARED / "data" / "hh-rlhf"

# The modules that run longest, started first so that the workers finish together: xdist hands out
# whole modules (--dist loadfile) in collection order (--no-loadscope-reorder). Measured with
# --durations=0 on the project's 2-core machine; the rest follow in their own order. test_faults
# first: it builds the shared DVC project (repro_project) while the other worker runs the full
# rehearsal, so test_pipeline, the other module that needs the project, never waits on the build.
SLOWEST_FIRST = ("test_faults.py", "test_full_rehearsal.py", "test_pipeline.py", "test_train.py",
                 "test_distributed_stage.py", "test_sft_only.py", "test_llama.py", "test_kernels.py",
                 "test_host_memory.py", "test_reproducible.py", "test_dpo.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module keeps its order


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    if not (HH_DIR / "harmless-base" / "test.jsonl.gz").is_file():
        pytest.skip(f"the real HH files are not at {HH_DIR} (set GPTPIPE_SHARED)")
    return HH_DIR


@pytest.fixture(scope="session")
def repro_project(tmp_path_factory) -> Path:
    """This project with the tiny params in a fresh git repo, after the real `dvc repro`. Shared by
    the modules that drive DVC; each test leaves it as it found it (`git checkout -- .`, `gptpipe restore`).

    The repro (~6 minutes of CPU) runs once per test run, not once per xdist worker: the first worker
    to ask builds it under a file lock in the run's shared temp folder, and each worker works on its
    own copy (DVC and git locate everything relative to the project, so a copy is a project)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's popen-gw<N>
    built = shared / "repro_project"
    with open(shared / "repro_project.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built / ".tiny_repro_done").exists():
            shutil.rmtree(built, ignore_errors=True)  # a build that failed half-way
            built.mkdir()
            tiny_repro(built)
            (built / ".tiny_repro_done").touch()
    mine = tmp_path_factory.mktemp("project")
    shutil.copytree(built, mine, symlinks=True, dirs_exist_ok=True)
    (mine / ".tiny_repro_done").unlink()
    return mine


@pytest.fixture(scope="session")
def tiny_params():
    return parse_params(TINY)


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory, tiny_params) -> Path:
    """data/tokenized of the tiny synthetic set, made by the real download and tokenize code."""
    root = tmp_path_factory.mktemp("data")
    download(tiny_params.data, tiny_params.shared.seed, root / "raw", root / "data.json")
    run_tokenize(root / "raw", root / "tokenized", root / "tokenize.json", tiny_params.tokenize)
    return root / "tokenized"


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """A DeBERTa-v2 sequence classifier (the OpenAssistant model's class) with a word-level tokenizer."""
    folder = tmp_path_factory.mktemp("classifier")
    words = "human assistant what is the capital of france paris a an 1 2 3 4 5 ? . , i am not sure".split()
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=0)
    model = DebertaV2ForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
