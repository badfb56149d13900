"""What the hub judge reads: the user's last turn without markers, and the response, cut to fit so
that the final question survives."""

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from gptpipe.models.reward import HFScorer, judge_question

DIALOGUE = ("\n\nHuman: i am not sure . what is 1 2 3 ?\n\nAssistant: 4 5 .\n\nHuman: "
            "what is the capital of france ?\n\nAssistant:")


def _scorer(folder, max_length):
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    return HFScorer(model, AutoTokenizer.from_pretrained(folder), "tiny", 4, max_length, torch.device("cpu"))


def test_the_question_is_the_last_human_turn_without_markers():
    assert judge_question(DIALOGUE) == "what is the capital of france ?"
    assert judge_question("what is 1 ?") == "what is 1 ?"  # not HH-shaped: as given


def test_a_long_dialogue_keeps_the_final_question_and_the_response_start(tiny_classifier):
    scorer = _scorer(tiny_classifier, 32)
    long_turn = "\n\nHuman: " + "i am not sure " * 40 + "what is the capital of france ?\n\nAssistant:"
    response = "paris . " * 30
    question, kept = scorer.fit(judge_question(long_turn), response)
    assert question.endswith("what is the capital of france ?")
    assert response.startswith(kept) and kept.startswith("paris")
    ids = scorer.tokenizer(question, kept)["input_ids"]
    assert len(ids) <= 32
    vocab = scorer.tokenizer.get_vocab()
    assert vocab["human"] not in ids and vocab["assistant"] not in ids
    # The tokenizer's own truncation would have cut the question's end, the final question with it.
    plain = scorer.tokenizer(long_turn, response, truncation=True, max_length=32)["input_ids"]
    assert vocab["france"] not in plain and vocab["france"] in ids


def test_scores_are_the_classifier_on_question_and_response(tiny_classifier):
    scorer = _scorer(tiny_classifier, 64)
    scores = scorer.score([DIALOGUE, DIALOGUE], ["paris .", "i am not sure ."])
    with torch.no_grad():
        inputs = scorer.tokenizer(["what is the capital of france ?"] * 2, ["paris .", "i am not sure ."],
                                  padding=True, return_tensors="pt")
        want = scorer.model(**inputs).logits[:, 0].numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-5)
