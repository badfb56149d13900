"""report: every study that has results, on one page → <out>/index.html (+ its PNGs) and <metrics>."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.entry import run_stage
from gptpipe.report.page import build_report, git_commit


def main(root: Path, out: Path, metrics: Path) -> None:
    """root: the project folder whose metrics/ and plots/ the page reads; out: the page's folder."""
    params = load_params(root / "params.yaml")
    build_report(root, params, git_commit(root), out, metrics)


if __name__ == "__main__":
    run_stage(main)
