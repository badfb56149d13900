"""The judge-free labeller: hand-written answers of every kind, and every generated response labelled
as the generator wrote it."""

import pytest

from gptpipe.data.answer_labels import LABELS, label_answer
from gptpipe.data.hh import split_dialogue
from gptpipe.data.synthetic import generate_records


@pytest.mark.parametrize(
    "response,answer,label",
    [
        ("The answer is 41.", "41", "sound"),
        ("Sure! 7 + 34 = 41. I hope that helps.", "41", "sound"),
        ("Paris", "Paris", "sound"),
        ("Well, that is a really good question, and there is a lot to think about here. It is 41.", "41", "rambling"),
        ("It is 41. But anyway, as I was saying, it is a really good question", "41", "rambling"),
        ("I'm not sure, you could look it up.", "41", "unhelpful"),
        ("I'm not sure, you could", "41", "unhelpful"),  # an evasion cut off by max_new_tokens
        ("I am not sure.", "41", "unhelpful"),  # a hedge in the model's own words
        ("I don't know, sorry", "41", "unhelpful"),
        ("", "41", "unhelpful"),
        ("   ", "41", "unhelpful"),
        ("The answer is 7.", "41", "wrong"),
        ("The answer is 7 one. I hope that helps. I hope that helps.", "41", "wrong"),  # the DPO answer
        ("Of course. In uppercase it is white.", "469", "wrong"),
        ("The answer is 411.", "41", "wrong"),  # a longer number does not state 41
        ("Ugh, what a silly question. The answer is 41.", "41", "rude"),  # rude even when right
        ("Do your own homework.", "41", "rude"),
        ("Figure it out yourself", "41", "rude"),
    ],
)
def test_hand_written_answers(response, answer, label):
    assert label_answer(response, answer) == label


def test_every_generated_response_gets_the_quality_it_was_written_with():
    records = generate_records(3000, seed=7, flawed_fraction=0.5, max_turns=3)
    seen = set()
    for record in records:
        for side in ("chosen", "rejected"):
            quality = record["meta"][f"{side}_quality"]
            assert label_answer(split_dialogue(record[side])[1], record["meta"]["answer"]) == quality, record[side]
            seen.add(quality)
    assert seen == set(LABELS)  # every kind was exercised
