"""`dvc plots show` / `dvc plots diff` with gptpipe's page draw every declared chart in headless Chromium
with no network: vega comes inline from vl-convert-python, not from DVC's CDN tags."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from dvc_project import REPO, run
from gptpipe.report.plots_template import write_template

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")


class _Drawn(HTMLParser):
    """For each element id, whether an <svg> or <canvas> lies anywhere inside it."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "path", "rect", "line", "circle", "use"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, str | None]] = []
        self.drawn: dict[str, bool] = {}

    def handle_starttag(self, tag, attrs):
        ident = dict(attrs).get("id")
        if ident:
            self.drawn.setdefault(ident, False)
        if tag in ("svg", "canvas"):
            for _, outer in self.open:
                if outer:
                    self.drawn[outer] = True
        if tag not in self.VOID:
            self.open.append((tag, ident))

    def handle_endtag(self, tag):
        for i in range(len(self.open) - 1, -1, -1):  # tolerate unclosed tags
            if self.open[i][0] == tag:
                del self.open[i:]
                break


def rendered(page: Path) -> str:
    """The DOM after the page's scripts ran (5 s of virtual time: vega draws asynchronously)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=5000",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=True,
    ).stdout


def declared_charts(html: str) -> list[str]:
    return re.findall(r"vegaEmbed\('#([^']+)'", html)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC project holding this repo's top-level plots and the committed series they draw."""
    root = tmp_path_factory.mktemp("plots")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    for entry in plots:
        for name in next(iter(entry.values()))["y"]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    run(root, "git", "init", "-q")
    run(root, "dvc", "init", "-q")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "plots")
    return root


def check_drawn(out: Path, n_declared: int) -> None:
    html = (out / "index.html").read_text()
    charts = declared_charts(html)
    assert len(charts) == n_declared
    assert "cdn.jsdelivr" not in html and not re.search(r"<script[^>]+src=", html)  # nothing fetched
    drawn = _Drawn()
    drawn.feed(rendered(out / "index.html"))
    assert {c: drawn.drawn.get(c) for c in charts} == {c: True for c in charts}


def test_show_draws_every_declared_chart_offline(project, tmp_path):
    template = write_template(tmp_path / "page.html")
    run(project, "dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path / "show"))
    n = len(yaml.safe_load((project / "dvc.yaml").read_text())["plots"])
    check_drawn(tmp_path / "show", n)


def test_diff_draws_with_the_configured_template(project, tmp_path):
    """The `dvc config --local plots.html_template` route that `gptpipe plots-template` sets."""
    template = write_template(tmp_path / "page.html")
    run(project, "dvc", "config", "--local", "plots.html_template", str(template))
    series = project / "plots/sft/loss.tsv"
    series.write_text(series.read_text().replace("\t1.", "\t2.", 3))  # the workspace differs from HEAD
    run(project, "dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "diff"))
    n = len(yaml.safe_load((project / "dvc.yaml").read_text())["plots"])
    check_drawn(tmp_path / "diff", n)


def test_the_command_writes_the_page_at_the_project_root_from_any_folder_in_it(project):
    # DVC reads the setting relative to .dvc/: a page written beside a subfolder's cwd would leave
    # the setting pointing at nothing, and `dvc plots show` failing on a template without {plot_divs}.
    sub = project / "plots" / "sft"
    out = subprocess.run([sys.executable, "-m", "gptpipe.cli", "plots-template"], cwd=sub, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (project / ".gptpipe" / "plots.html").is_file() and not (sub / ".gptpipe").exists()
    setting = subprocess.run(["dvc", "config", "--local", "plots.html_template"], cwd=project, capture_output=True, text=True)
    assert setting.stdout.strip() == "../.gptpipe/plots.html"
