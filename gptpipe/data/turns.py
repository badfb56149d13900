"""Where a tokenized prompt's earlier assistant turns lie, for `train.loss_on: assistant_turns`.

A multi-turn row's prompt holds the dialogue so far; its earlier assistant replies are answers the
model should learn as much as the final one (FastChat/Vicuna trains on every assistant turn, and
TRL's `assistant_only_loss` does the same). The spans are found in the prompt's token ids at batch
time, by the token sequences of HH's two markers, so the tokenized rows stay as they are: the mask
is the only new thing.

What a span holds: the reply's tokens and the `\\n\\nHuman:` marker that ends it. Generation stops
when the model emits `\\n\\nHuman:` (or end-of-text), so that marker is what the model must learn
to emit to end a turn, as FastChat counts the `</s>` after each reply; the final response ends with
end-of-text instead. Human turns, system text and the `\\n\\nAssistant:` markers stay masked.

Why matching token sequences is sound: the prompt is encoded as one text, and GPT-2's pre-tokenizer
splits `\\n\\nHuman:` inside it as it does alone (`\\n`, `\\n`, `Human`, `:`) after most endings of
the turn before; measured on the real HH harmless-base test split, every one of the 23,037 markers
of its 4,624 prompts was found (tests/test_turns_mask.py). A turn that ends with a newline is the
exception: its newline merges with the marker's first (`\\n\\n`, `\\n`, `Human`, `:`), so each
marker is also matched in the forms the tokenizer gives it after TURN_ENDINGS. Missing a Human
marker would count the human turn after it, so the forms come from the tokenizer, not a list of ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gptpipe.data.hh import ASSISTANT, HUMAN


# Endings of a turn whose last character merges with the next marker's first token (GPT-2 encodes
# "\n" + "\n\nHuman:" as "\n\n", "\n", "Human", ":"): each gives that marker another token sequence.
TURN_ENDINGS = ("\n", " \n", "\r\n")


@dataclass(frozen=True)
class TurnMarkers:
    """The token sequences of HH's turn markers, as the row's tokenizer encodes them in a dialogue:
    each marker's forms, longest first."""

    human: tuple[tuple[int, ...], ...]
    assistant: tuple[tuple[int, ...], ...]

    @classmethod
    def encoded_by(cls, encode: Callable[[str], list[int]]) -> TurnMarkers:
        # From the tokenizer's own encode, not GPT-2's ids: a tokenizer trained here has others.
        return cls(human=_forms(encode, HUMAN), assistant=_forms(encode, ASSISTANT))


def _forms(encode: Callable[[str], list[int]], marker: str) -> tuple[tuple[int, ...], ...]:
    """The marker's ids alone, and after each ending: what follows the ids the text before it shares."""
    forms = {tuple(encode(marker))}
    for ending in TURN_ENDINGS:
        before, whole = encode("x" + ending), encode("x" + ending + marker)
        shared = next((i for i, (a, b) in enumerate(zip(before, whole)) if a != b), min(len(before), len(whole)))
        forms.add(tuple(whole[shared:]))
    return tuple(sorted(forms, key=lambda f: (-len(f), f)))


def find_markers(ids: Sequence[int], markers: TurnMarkers) -> list[tuple[int, int, bool]]:
    """(start, end, is_assistant) of each marker in ids, left to right, none overlapping."""
    forms = [(form, True) for form in markers.assistant] + [(form, False) for form in markers.human]
    found, i = [], 0
    while i < len(ids):
        match = next(((form, is_assistant) for form, is_assistant in forms
                      if tuple(ids[i : i + len(form)]) == form), None)
        if match is None:
            i += 1
            continue
        found.append((i, i + len(match[0]), match[1]))
        i += len(match[0])
    return found


def assistant_spans(prompt: Sequence[int], markers: TurnMarkers) -> list[tuple[int, int]]:
    """[start, end) of each earlier assistant turn in the prompt ids: after its `\\n\\nAssistant:`,
    through the `\\n\\nHuman:` that ends it.

    A turn whose opening marker was cut off with the left of a long prompt is not counted: the ids
    before the first marker cannot tell an assistant turn's tail from system text. A reply followed
    by another `\\n\\nAssistant:` (two assistant messages in a row) ends before that marker. The
    prompt's last marker opens the final response, which is counted after the prompt, not here.
    """
    found = find_markers(prompt, markers)
    return [(end, next_end if not next_is_assistant else next_start)
            for (_, end, is_assistant), (next_start, next_end, next_is_assistant) in zip(found, found[1:])
            if is_assistant]
