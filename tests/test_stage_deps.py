"""Every stage lists, as DVC deps, exactly the gptpipe modules its script imports (transitively).

A module missing from `deps:` is a silent staleness bug: editing it leaves `dvc status` clean and the
stage's outputs come from the old code. A module listed but not imported reruns the stage for
nothing (and every stage downstream of it). Imports are read statically (ast), including the ones inside
functions, so the check is fast and sees lazy imports too.
"""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(module: str) -> str | None:
    path = module.replace(".", "/") + ".py"
    return path if (REPO / path).is_file() else None


def _direct_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptpipe":
            found.add(node.module)
            # `from gptpipe import plots` imports the module gptpipe/figures.py
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "gptpipe"}
    return {f for f in map(_module_file, found) if f}


def _import_closure(script: str) -> set[str]:
    seen: set[str] = set()
    # Importing any gptpipe module first runs gptpipe/__init__.py, which pins the CPU kernels.
    todo = [*_direct_imports(REPO / script), "gptpipe/__init__.py"]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _direct_imports(REPO / path)
    return seen


def _script(stage: dict) -> str:
    module = stage["cmd"].split()[2]  # "python -m stages.x [...]"
    return module.replace(".", "/") + ".py"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_the_modules_its_script_imports(name):
    stage = STAGES[name].get("do", STAGES[name])  # foreach stages keep their body under `do`
    script = _script(stage)
    assert script in stage["deps"]
    listed = {d for d in stage["deps"] if d.startswith("gptpipe/") and d.endswith(".py")}
    assert sorted(listed) == sorted(_import_closure(script))


def test_the_report_depends_on_its_template_and_stylesheet():
    deps = STAGES["report"]["deps"]
    assert {"gptpipe/report/style.css", "gptpipe/report/templates"} <= set(deps)
    assert all((REPO / d).exists() for d in ("gptpipe/report/style.css", "gptpipe/report/templates"))


def test_the_closure_follows_imports_through_modules():
    # stages/sft.py imports gptpipe.train.language_model only; lm imports train, which imports optim, which imports galore.
    closure = _import_closure("stages/sft.py")
    assert {"gptpipe/train/language_model.py", "gptpipe/train/loop.py", "gptpipe/train/optim.py", "gptpipe/train/galore.py"} <= closure
