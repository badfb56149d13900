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
    ASSISTANT, EMPTY_RESPONSE, HUMAN, MISSING_FIELD, NO_ASSISTANT_TURN, NOT_TEXT, Pair, Unparseable, pair_id,
    parse_record, split_dialogue,
)

FORMATS = ("auto", "hh", "prompt-completion", "preference", "messages", "alpaca", "sharegpt")
SINGLE_RESPONSE = ("prompt-completion", "messages", "alpaca", "sharegpt")  # no rejected: SFT only
# Conversations written to be trained on, every assistant turn a target (FastChat's and TRL's SFT data).
# HH and preference prompts hold earlier turns as shared context for a comparison: not targets.
CONVERSATIONS = ("messages", "sharegpt")

BAD_ROLE = "bad_role"  # a turn whose role is none of system/user/assistant (human/gpt in ShareGPT)
# A turn's text holding "\n\nHuman:" or "\n\nAssistant:": rendered, it would split the dialogue in
# the wrong place and train the model on words its speaker never said.
MARKER_IN_TEXT = "marker_in_text"
# A system message after the dialogue has begun: HH text places a system prompt only before the
# first Human turn, so a later one has no place that keeps whose words are whose.
LATE_SYSTEM = "late_system"
HH_TEXT = "hh-text"  # the speaker of a prompt string that is HH dialogue already ("\n\nHuman: …\n\nAssistant:")
ROLES = {"user": "Human", "human": "Human", "assistant": "Assistant", "gpt": "Assistant"}


def detect(record: Any) -> str | None:
    """The format a record's fields say, or None when they match none."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        # First: preference data often carries its SFT view too (UltraFeedback's `messages`), and a
        # pair is the more the record says. HH is TRL's implicit-prompt text pair; a stated prompt,
        # or message lists, is "preference".
        return "hh" if "prompt" not in keys and isinstance(record["chosen"], str) else "preference"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
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
    chosen, rejected = _turns(record["chosen"], "assistant"), _turns(record["rejected"], "assistant")
    # Responses that are whole conversations (TRL's implicit prompt, UltraFeedback's lists with the
    # user turn in them) hold the prompt already; a `prompt` beside them would be said twice.
    whole = any(speaker != "Assistant" for speaker, _ in chosen + rejected)
    prompt = _turns(record["prompt"], "user") if "prompt" in record and not whole else []
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
        if text_role == "user" and _is_hh_prompt(value):
            return [(HH_TEXT, value)]
        return [(ROLES[text_role], _plain(value))]
    if not isinstance(value, list) or not value:
        raise Unparseable(NOT_TEXT)
    turns: list[tuple[str, str]] = []
    for message in value:
        if not isinstance(message, dict):
            raise Unparseable(NOT_TEXT)
        role, text = _field(message, "role", "from"), _field(message, "content", "value")
        if role is None or text is None:
            raise Unparseable(MISSING_FIELD)
        if not isinstance(role, str) or not isinstance(text, str):
            raise Unparseable(NOT_TEXT)
        if role == "system":
            if turns and turns[-1][0] != "":
                raise Unparseable(LATE_SYSTEM)
            turns += _system(text)
        elif role in ROLES:
            turns.append((ROLES[role], _plain(text)))
        else:
            raise Unparseable(BAD_ROLE)
    return turns


def _field(message: dict, name: str, alias: str) -> Any:
    # Parquet gives every row every column, the absent ones as null: a null `role` beside a `from`
    # is not a missing role.
    return message[name] if message.get(name) is not None else message.get(alias)


def _plain(text: str) -> str:
    if HUMAN in text or ASSISTANT in text:
        raise Unparseable(MARKER_IN_TEXT)
    return text


def _is_hh_prompt(text: str) -> bool:
    """A prompt string written as HH dialogue, as HH-derived data sets store their prompts."""
    return text.lstrip(" ").startswith((HUMAN, HUMAN.lstrip())) and text.rstrip().endswith(ASSISTANT.lstrip())


def _system(text: Any) -> list[tuple[str, str]]:
    if text is None or text == "":
        return []
    if not isinstance(text, str):
        raise Unparseable(NOT_TEXT)
    return [("", _plain(text))]


def _trim(dialogue: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Trailing human turns have no answer to learn (FastChat masks them): the dialogue ends at its
    # last assistant turn. One with no assistant turn at all is dropped.
    while dialogue and dialogue[-1][0] != "Assistant":
        dialogue = dialogue[:-1]
    if not dialogue:
        raise Unparseable(NO_ASSISTANT_TURN)
    return dialogue


def _render(dialogue: list[tuple[str, str]]) -> str:
    """HH text; system texts (speaker "") go first, before the first Human turn, unlabelled, one
    blank line apart; an HH prompt string goes as written, up to its final "Assistant:"."""
    system = "\n\n".join(text.strip() for speaker, text in dialogue if speaker == "" and text.strip())
    return system + "".join(_rendered(speaker, text) for speaker, text in dialogue if speaker != "")


def _rendered(speaker: str, text: str) -> str:
    if speaker == HH_TEXT:
        body = text.strip(" ").rstrip()[: -len(ASSISTANT.lstrip())].rstrip()
        return body if body.startswith("\n\n") else "\n\n" + body
    return f"\n\n{speaker}: {text.strip()}"


def _require(record: dict, *fields: str) -> None:
    if any(f not in record for f in fields):
        raise Unparseable(MISSING_FIELD)
