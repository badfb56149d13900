"""Which tokens the SFT loss counts: `train.loss_on`, with `auto` resolved by the data's format.

`auto` (the default) trains conversation data (FastChat/Vicuna's ShareGPT records, TRL's `messages`)
on every assistant turn, as FastChat and TRL's `assistant_only_loss` do, and everything else (HH
pairs, preference data, Alpaca, prompt/completion) on the final response only: HH's and preference
data's earlier turns are the shared context of a comparison, and the other formats are one turn.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptpipe.data.formats import CONVERSATIONS
from gptpipe.errors import UserError


def loss_on_for(loss_on: str, data_format: str) -> str:
    """train.loss_on as the loss applies it: auto becomes assistant_turns or response; the rest stand."""
    if loss_on != "auto":
        return loss_on
    return "assistant_turns" if data_format in CONVERSATIONS else "response"


def loss_on_for_data(loss_on: str, data_metrics: Path) -> str:
    """loss_on_for with the format the download stage recorded (metrics/data.json)."""
    if loss_on != "auto":
        return loss_on
    if not data_metrics.is_file():
        raise UserError(f"train.loss_on=auto: {data_metrics} is missing, so the data's format is unknown; "
                        "run `dvc repro download` first, or set train.loss_on to response or assistant_turns")
    return loss_on_for(loss_on, json.loads(data_metrics.read_text())["format"])
