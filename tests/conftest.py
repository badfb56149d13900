"""Shared fixtures: the real HH files beside the checkout, and a tiny tokenized synthetic data set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the stage modules (stages/), which tests call through stage_runs

from gptpipe.config import parse_params  # noqa: E402
from stage_runs import download, run_tokenize  # noqa: E402
from tiny import TINY  # noqa: E402

# ../shared beside the checkout (also in CI); GPTPIPE_SHARED points elsewhere.
SHARED = Path(os.environ.get("GPTPIPE_SHARED", REPO.parent / "shared"))
HH_DIR = SHARED / "data" / "hh-rlhf"

@pytest.fixture(scope="session")
def hh_dir() -> Path:
    if not (HH_DIR / "harmless-base" / "test.jsonl.gz").is_file():
        pytest.skip(f"the real HH files are not at {HH_DIR} (set GPTPIPE_SHARED)")
    return HH_DIR


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
