"""A judge-free label for any answer to a synthetic question: sound, rambling, unhelpful, wrong or
rude, from what the generator knows (the correct answer, and the phrases each flawed kind is written
with), not from a reward model.

The rules, in order: a dismissal makes an answer rude whatever else it says; an answer that states
the correct answer (answer_check) is rambling when it carries the generator's filler, else sound; one
that does not is unhelpful when it evades (an evasion phrase, a common hedge such as "not sure", or
no words at all), else wrong (it claims something else). A phrase counts when any run of MATCH_WORDS consecutive words of it appears:
a model's answer echoes the training phrases in pieces ("I'm not sure, you could" cut off), and a
run of four words from one kind's phrases does not occur in another kind's or in a plain statement.
"""

from __future__ import annotations

import re
from functools import cache

from gptpipe.data.answer_check import response_is_correct
from gptpipe.data.synthetic import LADDER, PHRASES

MATCH_WORDS = 4
# Hedges any assistant may say in its own words; none occurs in a generated sound, wrong or rude
# answer (tests/test_answer_labels.py checks every generated response).
HEDGES = (("not", "sure"), ("don't", "know"), ("do", "not", "know"), ("no", "idea"), ("can't", "say"),
          ("cannot", "say"), ("not", "certain"))
LABELS = LADDER  # best to worst: sound, rambling, unhelpful, wrong, rude


def label_answer(response: str, answer: str) -> str:
    """One of LABELS for `response` to a question whose correct answer is `answer`."""
    words = _words(response)
    if _says("rude", words):
        return "rude"
    if response_is_correct(response, answer):
        return "rambling" if _says("rambling", words) else "sound"
    if not words or _says("unhelpful", words) or _hedges(words):
        return "unhelpful"
    return "wrong"


def _hedges(words: list[str]) -> bool:
    return any(tuple(words[i : i + len(h)]) == h for h in HEDGES for i in range(len(words) - len(h) + 1))


def _says(kind: str, words: list[str]) -> bool:
    runs = _runs(kind)
    return any(tuple(words[i : i + MATCH_WORDS]) in runs for i in range(len(words) - MATCH_WORDS + 1))


@cache
def _runs(kind: str) -> frozenset[tuple[str, ...]]:
    """Runs of MATCH_WORDS words in `kind`'s phrases that no other kind's phrase contains."""
    own = _phrase_runs(PHRASES[kind])
    others = set().union(*(_phrase_runs(p) for k, p in PHRASES.items() if k != kind))
    return frozenset(own - others)


def _phrase_runs(phrases: tuple[str, ...]) -> set[tuple[str, ...]]:
    runs = set()
    for phrase in phrases:
        words = _words(phrase)
        runs |= {tuple(words[i : i + MATCH_WORDS]) for i in range(len(words) - MATCH_WORDS + 1)}
    return runs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())
