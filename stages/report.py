"""report: every study that has results, on one page → report/index.html (+ its PNGs), metrics/report.json."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.report.page import build_report, git_commit


def main() -> None:
    params = load_params("params.yaml")
    build_report(Path("."), params, git_commit(Path(".")), Path("report"), Path("metrics/report.json"))


if __name__ == "__main__":
    run_or_exit(main)
