"""tokenize: data/raw → data/tokenized/{train,test}.arrow (GPT-2 BPE), metrics/tokenize.json."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.data.tokenizer import run_tokenize


def main() -> None:
    params = load_params("params.yaml")
    run_tokenize(Path("data/raw"), Path("data/tokenized"), Path("metrics/tokenize.json"), params.tokenize)


if __name__ == "__main__":
    run_or_exit(main)
