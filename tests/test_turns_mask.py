"""`train.loss_on: assistant_turns`: the loss counts every assistant turn of a multi-turn row, each
with the `\\n\\nHuman:` that ends it, and nothing of the human turns, system text or Assistant markers."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
import torch

from gptpipe.config import SftConfig, TokenizeConfig
from gptpipe.data.batches import IGNORE, LMExample, collate, lm_examples
from gptpipe.data.hh import ASSISTANT, HUMAN, split_dialogue
from gptpipe.data.formats import FORMATS
from gptpipe.data.loss_targets import loss_on_for, loss_on_for_data
from gptpipe.errors import UserError
from gptpipe.data.tokenizer import Gpt2Bpe, decode, encode, read_arrow, tokenize_split
from gptpipe.data.turns import TurnMarkers, assistant_spans, find_markers
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.objectives import LanguageModelling

MARKERS = TurnMarkers.encoded_by(encode)
DIALOGUE = (
    "You are terse."  # system text, before the first Human turn
    "\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
    "\n\nHuman: And 3+3?\n\nAssistant: 6, surely!"
    "\n\nHuman: Thanks, that is all I wanted to know today. Bye?\n\nAssistant: Bye."
)


def _table(dialogues: list[str], max_length: int = 512) -> pa.Table:
    """The tokenize stage's rows for these dialogues (SFT rows: no rejected response)."""
    pairs = [split_dialogue(d) for d in dialogues]
    raw = pa.table({"id": [str(i) for i in range(len(pairs))], "prompt": [p for p, _ in pairs],
                    "chosen": [r for _, r in pairs], "rejected": pa.array([None] * len(pairs), pa.string())})
    table, _ = tokenize_split(raw, TokenizeConfig(max_length=max_length, min_prompt_tokens=8), Gpt2Bpe())
    return table


def _counted_text(example: LMExample) -> list[str]:
    """The counted stretches of a row, decoded: each maximal run of counted positions."""
    labels = example.labels()
    runs, run = [], []
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and i > 0:  # position 0 is never predicted
            run.append(example.ids[i])
        elif run:
            runs.append(decode(run))
            run = []
    return runs


def test_the_mask_counts_exactly_the_assistant_turns_token_by_token():
    [example] = lm_examples(_table([DIALOGUE]), "assistant_turns", ("chosen",), MARKERS)
    assert _counted_text(example) == [" It is 4.\n\nHuman:", " 6, surely!\n\nHuman:", " Bye.<|endoftext|>"]
    # Token by token: a position is counted iff it lies in one of those stretches.
    counted = [i for i, label in enumerate(example.labels()) if label != IGNORE]
    expected = [i for start, end in example.prompt_spans for i in range(start, end)]
    expected += list(range(example.first_target, len(example)))
    assert counted == expected
    assert collate([example]).weight == len(counted)


def test_the_rows_ids_are_those_of_response_only_the_mask_differs():
    table = _table([DIALOGUE])
    [turns] = lm_examples(table, "assistant_turns", ("chosen",), MARKERS)
    [response] = lm_examples(table, "response", ("chosen",), MARKERS)
    assert turns.ids == response.ids == encode(split_dialogue(DIALOGUE)[0]) + encode(" Bye.") + [50256]
    assert response.prompt_spans == () and turns.first_target == response.first_target


def test_a_single_turn_row_is_masked_as_under_response():
    table = _table(["\n\nHuman: Hi there\n\nAssistant: Hello!", "Be kind.\n\nHuman: Hi\n\nAssistant: Hey."])
    turns = lm_examples(table, "assistant_turns", ("chosen",), MARKERS)
    response = lm_examples(table, "response", ("chosen",), MARKERS)
    assert turns == response
    assert collate(turns).labels.tolist() == collate(response).labels.tolist()


def test_a_prompt_cut_from_the_left_keeps_the_spans_it_still_holds():
    whole = lm_examples(_table([DIALOGUE]), "assistant_turns", ("chosen",), MARKERS)[0]
    assert len(whole.prompt_spans) == 2
    for cut in range(1, len(whole) - 15):  # down to max_length 16, the least tokenize allows
        [example] = lm_examples(_table([DIALOGUE], max_length=len(whole) - cut), "assistant_turns", ("chosen",), MARKERS)
        assert example.ids == whole.ids[cut:]  # tokenize cut the prompt's left `cut` tokens
        # Every turn whose `\n\nAssistant:` survived the cut keeps its span, shifted; a turn whose
        # marker was cut (even partly) is not counted, so no human or system token ever is.
        kept = [(s - cut, e - cut) for s, e in whole.prompt_spans if s - len(MARKERS.assistant[0]) >= cut]
        assert list(example.prompt_spans) == kept, cut
    assert kept == [], "the cuts went past every earlier turn"


def test_two_assistant_messages_in_a_row_end_before_the_second_marker():
    prompt = encode("\n\nHuman: Hi\n\nAssistant: One.\n\nAssistant: Two.\n\nHuman: Ok\n\nAssistant:")
    assert [decode(prompt[s:e]) for s, e in assistant_spans(prompt, MARKERS)] == [" One.", " Two.\n\nHuman:"]


@pytest.mark.parametrize("ending", ["", " ", "\t", ".", "\n", " \n", "   \n", "\r\n", "\n\n", "\n "])
def test_a_turn_ending_in_whitespace_keeps_its_markers(ending):
    """A reply (or human turn) ending with a newline merges it into the next marker's first token in
    GPT-2's BPE ("\\n" + "\\n\\nHuman:" -> "\\n\\n", "\\n", "Human", ":"): the span still ends at that
    marker, and the human turn after it is not counted."""
    prompt = encode(f"\n\nHuman: Hi{ending}\n\nAssistant: One.{ending}\n\nHuman: Two?{ending}\n\nAssistant:")
    [span] = assistant_spans(prompt, MARKERS)
    text = decode(prompt[span[0] : span[1]])
    assert text.startswith(" One.") and text.endswith(HUMAN) and "Two" not in text


def test_assistant_turns_needs_the_markers():
    with pytest.raises(ValueError, match="markers"):
        lm_examples(_table([DIALOGUE]), "assistant_turns", ("chosen",))


def test_labels_round_trip_through_from_labels():
    [example] = lm_examples(_table([DIALOGUE]), "assistant_turns", ("chosen",), MARKERS)
    assert LMExample.from_labels(example.ids, example.labels()) == example


def test_the_markers_are_found_in_every_real_multi_turn_hh_prompt(hh_dir):
    """GPT-2's BPE splits each marker inside a whole prompt as it splits it alone: every marker the
    text holds is found as the encoded marker's token sequence, none merged with its neighbours."""
    texts, multi_turn = 0, 0
    with gzip.open(hh_dir / "harmless-base" / "test.jsonl.gz", "rt") as lines:
        for line in lines:
            prompt, _ = split_dialogue(json.loads(line)["chosen"])
            found = find_markers(encode(prompt), MARKERS)
            assert [a for *_, a in found] == [m == ASSISTANT for m in _markers_in(prompt)]
            ids = encode(prompt)
            spans = assistant_spans(ids, MARKERS)
            texts += 1
            multi_turn += len(spans) > 0
            for start, end in spans:  # one reply, then the Human marker ending it (or, in a few real
                text = decode(ids[start:end])  # records, a second Assistant turn, masked)
                reply = text.removesuffix(HUMAN)
                assert HUMAN not in reply and ASSISTANT not in reply
                assert text.endswith(HUMAN) or any(tuple(ids[end : end + len(f)]) == f for f in MARKERS.assistant)
    assert texts == 2312 and multi_turn > 1500


def _markers_in(text: str) -> list[str]:
    """HH's markers in text, left to right."""
    found, i = [], 0
    while (positions := [(p, m) for m in (HUMAN, ASSISTANT) if (p := text.find(m, i)) >= 0]):
        p, m = min(positions)
        found.append(m)
        i = p + len(m)
    return found


def _earlier_turns_loss(model, examples: list[LMExample]) -> float:
    """Mean loss per token of the earlier assistant turns only (final responses not counted)."""
    batch = collate([LMExample(e.ids, len(e), e.prompt_spans) for e in examples])
    with torch.no_grad():
        return (LanguageModelling(model)(batch)[0] / batch.weight).item()


def test_sft_under_assistant_turns_learns_the_earlier_turns_response_does_not(tiny_params, tokenized):
    """Ten SFT steps on the synthetic multi-turn rows (their earlier turns are sound answers): the
    loss on the test rows' earlier assistant turns falls further when they are counted."""
    test = [e for e in lm_examples(read_arrow(tokenized / "test.arrow"), "assistant_turns", ("chosen",), MARKERS)
            if e.prompt_spans]
    after = {}
    for loss_on in ("response", "assistant_turns"):
        train = [e for e in lm_examples(read_arrow(tokenized / "train.arrow"), loss_on, ("chosen",), MARKERS)
                 if len(find_markers(e.ids, MARKERS)) > 2][:80]
        model = build_scratch(tiny_params.model, 0)
        objective, optimizer = LanguageModelling(model), torch.optim.Adam(model.parameters(), lr=0.01)
        before = _earlier_turns_loss(model, test)
        for step in range(10):
            batch = collate(train[8 * step : 8 * step + 8])
            loss, _ = objective(batch)
            (loss / batch.weight).backward()
            optimizer.step()
            optimizer.zero_grad()
        after[loss_on] = _earlier_turns_loss(model, test)
    assert len(test) > 10 and after["assistant_turns"] < after["response"] - 0.3 < before


def test_loss_on_defaults_to_auto_every_assistant_turn_of_conversations_the_response_of_the_rest():
    assert SftConfig().loss_on == "auto"
    assert SftConfig(loss_on="assistant_turns").loss_on == "assistant_turns"
    resolved = {fmt: loss_on_for("auto", fmt) for fmt in FORMATS[1:]}
    assert resolved == {"hh": "response", "prompt-completion": "response", "preference": "response",
                        "messages": "assistant_turns", "alpaca": "response", "sharegpt": "assistant_turns"}
    assert {loss_on_for(chosen, "sharegpt") for chosen in ("response", "all")} == {"response", "all"}  # as set


def test_loss_on_auto_reads_the_recorded_format_and_names_the_way_when_it_is_missing(tmp_path):
    data_metrics = tmp_path / "data.json"
    with pytest.raises(UserError, match="run `dvc repro download` first, or set train.loss_on"):
        loss_on_for_data("auto", data_metrics)
    data_metrics.write_text(json.dumps({"format": "messages"}))
    assert loss_on_for_data("auto", data_metrics) == "assistant_turns"
    with pytest.raises(ValueError, match="loss_on='auto'"):  # the mask never guesses: auto is resolved first
        lm_examples(_table([DIALOGUE]), "auto", ("chosen",), MARKERS)
