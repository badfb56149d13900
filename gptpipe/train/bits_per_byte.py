"""Bits per byte: a loss that runs with different tokenizers can share (nanochat reports its
validation loss so).

A loss per token depends on how much text a token holds: a 1,024-id vocabulary spends more tokens
on the same text than GPT-2's 50,257 ids, each one easier to predict. Summed over the counted
(loss-bearing) tokens and divided by the UTF-8 bytes those tokens spell, it is the cost of the text
itself, whatever cut it into tokens:

    bpb = loss_nats_per_token × tokens / (bytes × ln 2)

The bytes are read from the ids (each id's byte length, `Tokenizer.token_bytes`), not stored by the
tokenize stage: data/tokenized stays as GPT-2's runs have always written it, and a prompt cut from
the left or a response cut from the right counts exactly the bytes its kept tokens spell.
`<|endoftext|>` is counted in the loss (the model must learn to stop) but spells no bytes: its nats
are charged to the response it ends. (nanochat leaves special tokens out of both sums; here one ends
every response, so its cost stays in, as it does in the loss per token beside it.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gptpipe.data.batches import IGNORE, LMExample


def counted_bytes(examples: Sequence[LMExample], token_bytes: Sequence[int]) -> int:
    """UTF-8 bytes spelled by the tokens the loss counts: the response, and under
    `loss_on: assistant_turns` the prompt's earlier assistant turns (the labels the loss reads)."""
    return sum(token_bytes[label] for e in examples for label in e.labels() if label != IGNORE)


def counted_tokens(examples: Sequence[LMExample]) -> int:
    return sum(e.n_targets for e in examples)


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float:
    """Mean loss per counted token (nats) → bits per counted byte."""
    return loss * tokens / (n_bytes * math.log(2)) if n_bytes else float("nan")
