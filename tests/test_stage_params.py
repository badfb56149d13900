"""Every stage lists, as DVC params, exactly the params its module reads.

A key read but not listed is a silent staleness bug (`dvc exp run -S key=v` restores old outputs);
a key listed but not read reruns the stage, and everything after it, for nothing. A stage module reads
params only as `params.<section>[.<key>]` and passes the sections on as typed objects, so the chains
are found statically.
"""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _chains(module: Path) -> set[str]:
    """Every maximal `params.a[.b]` attribute chain in the module."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Attribute):
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "params":
                found.add(".".join(reversed(parts)))
    return {c for c in found if not any(o != c and o.startswith(c + ".") for o in found)}


def _covers(listed: str, read: str) -> bool:
    # A stage handed a whole section may list only the keys of it that its work reads (generate@
    # reads every generate key but `models`, which names the stages instead).
    return listed == read or read.startswith(listed + ".") or listed.startswith(read + ".")


# Params a stage reads only to fail early, never into an output: listing them would rerun the stage
# on every change (download checks filter.keep against the data it reads, not to re-read the data).
# Read to check the data fits them (filter.keep, every batch_size), not to make an output.
CHECKED_ONLY = {"download": {"check_fits_data"}}


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"report"}))
def test_stage_params_are_what_its_module_reads(name):
    stage = STAGES[name].get("do", STAGES[name])
    module = REPO / (stage["cmd"].split()[2].replace(".", "/") + ".py")
    read, listed = _chains(module) - CHECKED_ONLY.get(name, set()), set(stage["params"])
    assert read, f"{module} reads no params"
    assert not [r for r in read if not any(_covers(p, r) for p in listed)], "read but not listed"
    assert not [p for p in listed if not any(_covers(p, r) for r in read)], "listed but not read"


def test_the_report_lists_every_section():
    # The report shows every section's params beside the results they produced.
    from gptpipe.config import Params

    assert set(STAGES["report"]["params"]) == set(Params.model_fields)


def test_the_chain_finder_sees_sections_and_keys(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def main():\n    run(params.shared.seed, params.train, params.shared.device)\n")
    assert _chains(module) == {"shared.seed", "train", "shared.device"}
