"""The record formats people have, each turned into the one Pair the stages read.

HH text pairs, TRL's standard forms (prompt/completion, prompt/chosen/rejected, `messages`, and
conversational preference pairs whose prompt/chosen/rejected are message lists), Alpaca records
(instruction, input, output) and ShareGPT/Vicuna conversations (`conversations` of from/value, and
`system`). Every non-HH record is rendered as HH dialogue text (`\\n\\nHuman: …\\n\\nAssistant: …`), the
format the tokenizer, the models and generation speak, and then split by the same code as HH, so a
prompt ends with the last `\\n\\nAssistant:` whatever the format. Single-response formats give a Pair
whose `rejected` is None: SFT data, no preference.
"""

from __future__ import annotations

from typing import Any

from gptpipe.data.hh import (
    EMPTY_RESPONSE, MISSING_FIELD, NO_ASSISTANT_TURN, NOT_TEXT, Pair, Unparseable, pair_id, parse_record,
    split_dialogue,
)

FORMATS = ("auto", "hh", "prompt-completion", "preference", "messages", "alpaca", "sharegpt")
SINGLE_RESPONSE = ("prompt-completion", "messages", "alpaca", "sharegpt")  # no rejected: SFT only
# Conversations written to be trained on, every assistant turn a target (FastChat's and TRL's SFT data).
# HH and preference prompts hold earlier turns as shared context for a comparison: not targets.
CONVERSATIONS = ("messages", "sharegpt")

BAD_ROLE = "bad_role"  # a turn whose role is none of system/user/assistant (human/gpt in ShareGPT)
ROLES = {"user": "Human", "human": "Human", "assistant": "Assistant", "gpt": "Assistant"}


def detect(record: Any) -> str | None:
    """The format a record's fields say, or None when they match none."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"chosen", "rejected"} <= keys:
        # HH is TRL's implicit-prompt text pair; a stated prompt, or message lists, is "preference".
        return "hh" if "prompt" not in keys and isinstance(record["chosen"], str) else "preference"
    if {"prompt", "completion"} <= keys:
        return "prompt-completion"
    return None


def parse(record: Any, fmt: str) -> Pair:
    """One decoded record of format `fmt` → Pair (rejected None for single responses), or
    Unparseable with the reason."""
    if fmt == "hh":
        return parse_record(record)
    if not isinstance(record, dict):
        raise Unparseable(MISSING_FIELD)
    if fmt == "preference":
        return _preference(record)
    if fmt == "prompt-completion":
        _require(record, "prompt", "completion")
        dialogue = _turns(record["prompt"], "user") + _turns(record["completion"], "assistant")
    elif fmt == "messages":
        _require(record, "messages")
        dialogue = _turns(record["messages"], None)
    elif fmt == "alpaca":
        _require(record, "instruction", "output")
        instruction, extra, output = record["instruction"], record.get("input") or "", record["output"]
        if not all(isinstance(v, str) for v in (instruction, extra, output)):
            raise Unparseable(NOT_TEXT)
        # Alpaca's input is the instruction's context: the same human turn, after a blank line.
        dialogue = [("Human", "\n\n".join(t for t in (instruction.strip(), extra.strip()) if t)), ("Assistant", output)]
    elif fmt == "sharegpt":
        _require(record, "conversations")
        dialogue = _system(record.get("system")) + _turns(record["conversations"], None)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return _single(_trim(dialogue))


def _preference(record: dict) -> Pair:
    _require(record, "chosen", "rejected")
    prompt = _turns(record["prompt"], "user") if "prompt" in record else []
    chosen, rejected = _turns(record["chosen"], "assistant"), _turns(record["rejected"], "assistant")
    # Both rendered whole and parsed as an HH pair: the same checks (shared prompt, not identical).
    return parse_record({"chosen": _render(prompt + chosen), "rejected": _render(prompt + rejected)})


def _single(dialogue: list[tuple[str, str]]) -> Pair:
    prompt, response = split_dialogue(_render(dialogue))
    if not response.strip():
        raise Unparseable(EMPTY_RESPONSE)
    return Pair(id=pair_id(prompt, response, ""), prompt=prompt, chosen=response, rejected=None)


def _turns(value: Any, text_role: str | None) -> list[tuple[str, str]]:
    """A text (one turn of `text_role`; None: only message lists) or a message list → [(speaker, text)]."""
    if isinstance(value, str) and text_role is not None:
        return [(ROLES[text_role], value)]
    if not isinstance(value, list) or not value:
        raise Unparseable(NOT_TEXT)
    turns = []
    for message in value:
        if not isinstance(message, dict):
            raise Unparseable(NOT_TEXT)
        role = message.get("role", message.get("from"))
        text = message.get("content", message.get("value"))
        if role is None or text is None:
            raise Unparseable(MISSING_FIELD)
        if not isinstance(role, str) or not isinstance(text, str):
            raise Unparseable(NOT_TEXT)
        if role == "system":
            turns += _system(text)
        elif role in ROLES:
            turns.append((ROLES[role], text))
        else:
            raise Unparseable(BAD_ROLE)
    return turns


def _system(text: Any) -> list[tuple[str, str]]:
    if text is None or text == "":
        return []
    if not isinstance(text, str):
        raise Unparseable(NOT_TEXT)
    return [("", text)]


def _trim(dialogue: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Trailing human turns have no answer to learn (FastChat masks them): the dialogue ends at its
    # last assistant turn. One with no assistant turn at all is dropped.
    while dialogue and dialogue[-1][0] != "Assistant":
        dialogue = dialogue[:-1]
    if not dialogue:
        raise Unparseable(NO_ASSISTANT_TURN)
    return dialogue


def _render(dialogue: list[tuple[str, str]]) -> str:
    """HH text; a system text (speaker "") goes first, before the first Human turn, unlabelled."""
    return "".join(text.strip() if not speaker else f"\n\n{speaker}: {text.strip()}" for speaker, text in dialogue)


def _require(record: dict, *fields: str) -> None:
    if any(f not in record for f in fields):
        raise Unparseable(MISSING_FIELD)
