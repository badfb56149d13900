"""generate <model>: a fixed sample of test prompts answered by models/<model> → data/generated/<model>.jsonl.

dvc.yaml runs one stage per model in generate.models; by hand, no argument runs every one of them.
"""

import sys
from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.evaluation.generate import model_folder, run_generate


def main() -> None:
    params = load_params("params.yaml")
    names = sys.argv[1:] or list(params.generate.models)
    for name in names:  # every folder checked before any work
        model_folder(name, Path("models"))
    for name in names:
        run_generate(params, name, Path("data/raw"), Path("models"), Path(f"data/generated/{name}.jsonl"),
                     Path(f"metrics/generate/{name}.json"))


if __name__ == "__main__":
    run_or_exit(main)
