"""The course's own cards (Kaggle's P100 and two T4s, 16 GB each): the full preset either runs as set
or stops before any work, one line per setting to change, and the changes it names then run."""

import re

import pytest
import yaml

from gptpipe.preflight import memory_report
from gptpipe.train.memory_plan import Card
from test_memory_plan import GIB, full_preset

# Properties as torch.cuda.get_device_properties reports them on Kaggle (name, memory, capability).
P100 = Card("Tesla P100-PCIE-16GB", 16 * GIB, bf16=False, count=1, capability=(6, 0))
TWO_T4 = Card("Tesla T4", 15 * GIB, bf16=False, count=2, capability=(7, 5))


def _named_settings(problems: list[str]) -> dict[str, dict]:
    """The first `set section.key=value` of each line, as params changes."""
    changes: dict[str, dict] = {}
    for line in problems:
        section, key, value = re.search(r"set (\w+)\.(\w+)=(\S+?)[\s,;)]", line + " ").groups()
        changes.setdefault(section, {})[key] = yaml.safe_load(value)
    return changes


@pytest.mark.parametrize("card", [P100, TWO_T4], ids=["p100", "2xT4"])
def test_a_16gb_kaggle_card_gets_the_settings_that_run_there(card):
    _, problems = memory_report(full_preset(), card)
    assert problems and all("\n" not in line and " set " in line for line in problems)
    changes = _named_settings(problems)
    assert changes["shared"]["dtype"] == "float16"  # neither card has bf16
    assert ("compile" in changes["shared"]) == (card is P100)  # Triton needs 7.0: the T4 compiles
    assert changes["dpo"]["micro_batch_size"] < 16  # 32 sequences of 512 tokens: 15.6 GB
    lines, after = memory_report(full_preset(**changes), card)
    assert after == [] and lines


def test_a_card_triton_supports_compiles_and_an_older_one_is_told_not_to():
    assert TWO_T4.triton and not P100.triton and Card("NVIDIA H100", 80 * GIB, True).triton
    _, problems = memory_report(full_preset(shared={"compile": False}), P100)
    assert not any("shared.compile" in p for p in problems)
