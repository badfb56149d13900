"""Seeded synthetic preference pairs in the Anthropic HH-RLHF format.

The real HH-RLHF data needs the network, so the default pipeline run trains on
pairs generated here instead. They use exactly the HH text layout, so one parser
reads both, but unlike HH every pair carries ground truth: the correct answer and
the quality of both responses. That lets later stages measure what reward
filtering and fine-tuning actually achieve instead of guessing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from gptpipe.data.answer_check import response_is_correct
from gptpipe.data.tasks import MAX_REDRAWS, Task, draw_task

# Best to worst. As in HH, the chosen response always sits strictly higher than the rejected one.
_LADDER = ("sound", "rambling", "unhelpful", "wrong", "rude")
# "rude" cannot be chosen: nothing sits below it to reject.
_FLAWED_CHOSEN = ("rambling", "unhelpful", "wrong")
_STATES_ANSWER = frozenset({"sound", "rambling"})

_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"

# --------------------------------------------------------------------------- responses

_POLITE_OPENINGS = ("", "", "Sure! ", "Of course. ", "Good question. ")
_POLITE_CLOSINGS = ("", "", " I hope that helps.", " Let me know if you need anything else.")
# Long enough to bury the answer, short enough to keep pairs within a small context window.
_RAMBLING_OPENINGS = (
    "Well, that is a really good question, and there is a lot to think about here, so let me think.",
    "Hmm, okay, so people ask about this a lot, and I think it is worth going over slowly.",
    "Oh, I love questions like this one, because there is always so much to say about them.",
)
_RAMBLING_CLOSINGS = (
    "But anyway, as I was saying, it is a really good question, a very good question indeed.",
    "So, to go over it again, there is a lot to think about here, a whole lot, more or less.",
    "Of course, people may see it differently, and that is fine too, that is fine.",
)
_EVASIONS = (
    "I'm not sure, you could look it up.",
    "That is hard to say. You might want to check another source.",
    "I don't really know. Maybe ask someone else?",
    "There are many ways to think about that, so I can't really say.",
    "I would rather not guess about that one.",
    "It depends on a lot of things, so I can't give you an answer.",
)
_CONFIDENT_OPENINGS = ("", "", "Definitely. ", "Easy. ", "I am certain of this. ")
_DISMISSALS = (
    "Ugh, what a silly question.",
    "Seriously? Everyone knows this.",
    "Why are you bothering me with this?",
    "That is a dumb thing to ask.",
)
_DISMISSALS_WITHOUT_ANSWER = (
    "Figure it out yourself.",
    "Not my problem. Go find out on your own.",
    "I can't be bothered with this. Stop asking me things.",
    "Do your own homework.",
)


# The phrases each flawed kind is written with, for the judge-free labeller (answer_labels.py).
PHRASES = {
    "rambling": _RAMBLING_OPENINGS + _RAMBLING_CLOSINGS,
    "unhelpful": _EVASIONS,
    "rude": _DISMISSALS + _DISMISSALS_WITHOUT_ANSWER,
    "polite": tuple(p for p in _POLITE_OPENINGS + _POLITE_CLOSINGS + _CONFIDENT_OPENINGS if p),
}
LADDER = _LADDER


def _sound(rng: random.Random, task: Task) -> str:
    opening, closing = rng.choice(_POLITE_OPENINGS), rng.choice(_POLITE_CLOSINGS)
    return f"{opening}{task.statement(task.answer)}{closing}"


def _rambling(rng: random.Random, task: Task) -> str:
    opening, closing = rng.choice(_RAMBLING_OPENINGS), rng.choice(_RAMBLING_CLOSINGS)
    return f"{opening} {task.statement(task.answer)} {closing}"


def _unhelpful(rng: random.Random, task: Task) -> str:
    return rng.choice(_EVASIONS)


def _wrong(rng: random.Random, task: Task) -> str:
    return rng.choice(_CONFIDENT_OPENINGS) + task.statement(rng.choice(task.wrong_answers(rng)))


def _rude(rng: random.Random, task: Task) -> str:
    if rng.random() < 0.5:
        return rng.choice(_DISMISSALS_WITHOUT_ANSWER)
    return f"{rng.choice(_DISMISSALS)} {task.statement(rng.choice(task.wrong_answers(rng)))}"


_RESPONDERS: dict[str, Callable[[random.Random, Task], str]] = {
    "sound": _sound, "rambling": _rambling, "unhelpful": _unhelpful, "wrong": _wrong, "rude": _rude,
}


def _respond(rng: random.Random, task: Task, quality: str) -> str:
    # Redraw until the ground truth holds, so meta labels are true by construction:
    # an evasion or a filler phrase may happen to contain a short answer word.
    should_state_answer = quality in _STATES_ANSWER
    for _ in range(MAX_REDRAWS):
        response = _RESPONDERS[quality](rng, task)
        if response_is_correct(response, task.answer) == should_state_answer:
            return response
    raise RuntimeError(f"cannot write a {quality} response to {task.question!r}")


# --------------------------------------------------------------------------- dialogues


def _draw_turn_count(rng: random.Random, max_turns: int) -> int:
    # Half single-turn keeps most prompts short; the rest teach the model to read past earlier turns.
    if max_turns == 1 or rng.random() < 0.5:
        return 1
    return rng.randint(2, max_turns)


def _draw_context(rng: random.Random, n_turns: int, final: Task, excluded: frozenset[str]) -> list[Task]:
    taken, context = {final.question}, []
    while len(context) < n_turns:
        task = draw_task(rng, excluded)
        if task.question not in taken:
            taken.add(task.question)
            context.append(task)
    return context


def _render_prompt(context: list[Task], final_question: str) -> str:
    # Earlier turns are answered soundly and without pleasantries: the context is clean dialogue.
    turns = [f"{_HUMAN} {t.question}{_ASSISTANT} {t.statement(t.answer)}" for t in context]
    return "".join(turns) + f"{_HUMAN} {final_question}{_ASSISTANT}"


def _build_record(rng: random.Random, flawed: bool, max_turns: int, excluded: frozenset[str]) -> dict:
    final = draw_task(rng, excluded)
    context = _draw_context(rng, _draw_turn_count(rng, max_turns) - 1, final, excluded)
    chosen_quality = rng.choice(_FLAWED_CHOSEN) if flawed else "sound"
    rejected_quality = rng.choice(_LADDER[_LADDER.index(chosen_quality) + 1 :])
    prompt = _render_prompt(context, final.question)
    return {
        "chosen": f"{prompt} {_respond(rng, final, chosen_quality)}",
        "rejected": f"{prompt} {_respond(rng, final, rejected_quality)}",
        "meta": {
            "family": final.family,
            "question": final.question,
            "answer": final.answer,
            "chosen_quality": chosen_quality,
            "rejected_quality": rejected_quality,
            "flawed": flawed,
        },
    }


def _build_records(rng: random.Random, n_pairs: int, flawed_fraction: float, max_turns: int,
                   excluded: frozenset[str] = frozenset()) -> list[dict]:
    # Exactly this many flawed chosen responses, so filtering can be scored against a known count.
    flawed_indices = set(rng.sample(range(n_pairs), round(flawed_fraction * n_pairs)))
    return [_build_record(rng, i in flawed_indices, max_turns, excluded) for i in range(n_pairs)]


# --------------------------------------------------------------------------- public API


def _check_count(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_arguments(flawed_fraction: float, max_turns: int) -> None:
    is_number = isinstance(flawed_fraction, (int, float)) and not isinstance(flawed_fraction, bool)
    if not is_number or math.isnan(flawed_fraction) or not 0 <= flawed_fraction <= 1:
        raise ValueError(f"flawed_fraction must be a number in [0, 1], got {flawed_fraction!r}")
    _check_count("max_turns", max_turns, 1)


def generate_records(n_pairs: int, *, seed: int, flawed_fraction: float, max_turns: int) -> list[dict]:
    """n_pairs raw HH records. Each record: {"chosen": str, "rejected": str, "meta": {...}}.

    chosen and rejected are whole HH dialogues with 1..max_turns human turns that
    share everything up to the last "\\n\\nAssistant:" and differ only in the final
    response. meta holds family, question (the final human turn), answer,
    chosen_quality, rejected_quality and flawed. Exactly
    round(flawed_fraction * n_pairs) chosen responses are flawed. The same
    arguments always give identical records.
    """
    _check_count("n_pairs", n_pairs, 0)
    _check_arguments(flawed_fraction, max_turns)
    return _build_records(random.Random(seed), n_pairs, flawed_fraction, max_turns)


def generate_splits(n_train: int, n_test: int, *, seed: int, flawed_fraction: float,
                    max_turns: int) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}: the final question of every test record never
    appears as the final question of a train record (so test loss measures
    generalisation, not recall).

    Train dialogues do not use test questions as earlier turns either, since their
    correct answers would leak there. Each split has exactly
    round(flawed_fraction * its size) flawed chosen responses.
    """
    _check_count("n_train", n_train, 0)
    _check_count("n_test", n_test, 0)
    _check_arguments(flawed_fraction, max_turns)
    rng = random.Random(seed)
    # Test first, so train can be drawn around its questions.
    test = _build_records(rng, n_test, flawed_fraction, max_turns)
    held_out = frozenset(record["meta"]["question"] for record in test)
    train = _build_records(rng, n_train, flawed_fraction, max_turns, held_out)
    return {"train": train, "test": test}
