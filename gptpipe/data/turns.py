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
splits `\\n\\nHuman:` inside it as it does alone (`\\n`, `\\n`, `Human`, `:`), whatever the reply
ends with; measured on the real HH harmless-base test split, every one of the 23,037 markers of its
4,624 prompts was found (tests/test_turns_mask.py). The exception: three or more newlines before a
marker encode as `\\n\\n`, `\\n`, `Human`, `:`, and that marker is not seen (the reply's span then
runs on to the next `\\n\\nAssistant:`); HH text has none and rendered records strip each turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gptpipe.data.hh import ASSISTANT, HUMAN


@dataclass(frozen=True)
class TurnMarkers:
    """The token ids of HH's turn markers, as the row's tokenizer encodes them."""

    human: tuple[int, ...]
    assistant: tuple[int, ...]

    @classmethod
    def encoded_by(cls, encode: Callable[[str], list[int]]) -> TurnMarkers:
        # From the tokenizer's own encode, not GPT-2's ids: a tokenizer trained here has others.
        return cls(human=tuple(encode(HUMAN)), assistant=tuple(encode(ASSISTANT)))


def find_markers(ids: Sequence[int], markers: TurnMarkers) -> list[tuple[int, bool]]:
    """(start, is_assistant) of each marker in ids, left to right, none overlapping."""
    found, i = [], 0
    while i < len(ids):
        for marker, is_assistant in ((markers.assistant, True), (markers.human, False)):
            if tuple(ids[i : i + len(marker)]) == marker:
                found.append((i, is_assistant))
                i += len(marker)
                break
        else:
            i += 1
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
    spans = []
    for (start, is_assistant), (next_start, next_is_assistant) in zip(found, found[1:]):
        if not is_assistant:
            continue
        end = next_start if next_is_assistant else next_start + len(markers.human)
        spans.append((start + len(markers.assistant), end))
    return spans
