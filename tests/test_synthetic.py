"""Tests for the synthetic HH preference data: format, ground truth, determinism, splits."""

from __future__ import annotations

import collections
import json
import math
import random
import re
from collections.abc import Callable

import pytest

from gptpipe.data.answer_check import response_is_correct
from gptpipe.data.synthetic import generate_records, generate_splits

# The quality ladder as specified, best first; kept here rather than imported so the
# test checks the code against the spec instead of against itself.
LADDER = ["sound", "rambling", "unhelpful", "wrong", "rude"]
STATES_ANSWER = {"sound", "rambling"}
HUMAN = "\n\nHuman: "
ASSISTANT = "\n\nAssistant:"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate_records(1500, seed=11, flawed_fraction=0.3, max_turns=3)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return generate_splits(3000, 500, seed=5, flawed_fraction=0.2, max_turns=3)


def prompt_of(dialogue: str) -> str:
    return dialogue[: dialogue.rfind(ASSISTANT) + len(ASSISTANT)]


def turns_of(dialogue: str) -> list[tuple[str, str]]:
    """(human, assistant) pairs of an HH dialogue; fails on anything malformed."""
    assert dialogue.startswith(HUMAN)
    turns = []
    for chunk in dialogue.split(HUMAN)[1:]:
        human, assistant = chunk.split(ASSISTANT + " ")  # exactly one assistant reply per human turn
        turns.append((human, assistant))
    return turns


# An oracle that works the answer out from the question text alone, independent of the generator.
def _larger(a: str, b: str) -> int:
    return max(int(a), int(b))


def _smaller(a: str, b: str) -> int:
    return min(int(a), int(b))


def _listed(text: str) -> list[str]:
    return text.split(", ")


ORACLE: list[tuple[re.Pattern[str], Callable[..., object]]] = [
    (re.compile(p), f)
    for p, f in [
        (r"(\d+) (?:plus|\+) (\d+)\?$", lambda a, b: int(a) + int(b)),
        (r"add (\d+) and (\d+)", lambda a, b: int(a) + int(b)),
        (r"(?:comes after|one more than|comes right after) (\d+)\?$", lambda n: int(n) + 1),
        (r"(?:comes before|one less than|comes right before) (\d+)\?$", lambda n: int(n) - 1),
        (r"(?:larger|bigger),? (\d+) or (\d+)\?$", _larger),
        (r"Is (\d+) or (\d+) the larger number\?$", _larger),
        (r"smaller:? (\d+) or (\d+)\?$", _smaller),
        (r"(?:first word in this list|comes first here): ([a-z, ]+)\?$", lambda l: _listed(l)[0]),
        (r"Here are some words: ([a-z, ]+)\. Which one is first\?$", lambda l: _listed(l)[0]),
        (r"(?:last word in this list|comes last here): ([a-z, ]+)\?$", lambda l: _listed(l)[-1]),
        (r"Here are some words: ([a-z, ]+)\. Which one is last\?$", lambda l: _listed(l)[-1]),
        (r"In the list ([a-z, ]+), which word comes right after ([a-z]+)\?$",
         lambda l, w: _listed(l)[_listed(l).index(w) + 1]),
        (r"Which word follows ([a-z]+) in this list: ([a-z, ]+)\?$",
         lambda w, l: _listed(l)[_listed(l).index(w) + 1]),
        (r"(?:repeat the word|say the word|Repeat after me:) ([a-z]+)", lambda w: w),
    ]
]


def oracle_answer(question: str) -> str | None:
    for pattern, solve in ORACLE:
        match = pattern.search(question)
        if match:
            return str(solve(*match.groups()))
    return None


# --------------------------------------------------------------------------- format


def test_every_record_is_a_valid_hh_pair(records: list[dict]) -> None:
    for record in records:
        chosen, rejected = record["chosen"], record["rejected"]
        prompt = prompt_of(chosen)
        assert prompt == prompt_of(rejected)
        assert prompt.endswith(ASSISTANT)
        chosen_response, rejected_response = chosen[len(prompt) :], rejected[len(prompt) :]
        for response in (chosen_response, rejected_response):
            assert response.startswith(" ") and not response.startswith("  ")
            assert response.strip() and response == response.rstrip()
            assert "\n\nHuman:" not in response and "\n\nAssistant:" not in response
        assert chosen_response != rejected_response
        assert turns_of(chosen)[:-1] == turns_of(rejected)[:-1]


def test_final_human_turn_is_the_meta_question(records: list[dict]) -> None:
    for record in records:
        meta = record["meta"]
        assert set(meta) == {"family", "question", "answer", "chosen_quality", "rejected_quality", "flawed"}
        assert turns_of(record["chosen"])[-1][0] == meta["question"]
        assert meta["answer"].strip()


def test_records_survive_a_json_round_trip(records: list[dict]) -> None:
    assert json.loads(json.dumps(records)) == records


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_records() -> None:
    first = generate_records(300, seed=3, flawed_fraction=0.25, max_turns=4)
    second = generate_records(300, seed=3, flawed_fraction=0.25, max_turns=4)
    assert json.dumps(first) == json.dumps(second)


def test_different_seeds_give_different_records() -> None:
    first = generate_records(300, seed=3, flawed_fraction=0.25, max_turns=4)
    second = generate_records(300, seed=4, flawed_fraction=0.25, max_turns=4)
    assert [r["chosen"] for r in first] != [r["chosen"] for r in second]


def test_splits_are_deterministic() -> None:
    first = generate_splits(200, 50, seed=9, flawed_fraction=0.1, max_turns=2)
    assert json.dumps(first) == json.dumps(generate_splits(200, 50, seed=9, flawed_fraction=0.1, max_turns=2))
    assert first != generate_splits(200, 50, seed=10, flawed_fraction=0.1, max_turns=2)


def test_global_random_state_is_left_alone() -> None:
    random.seed(1234)
    before = random.getstate()
    generate_records(50, seed=0, flawed_fraction=0.5, max_turns=3)
    generate_splits(50, 10, seed=0, flawed_fraction=0.5, max_turns=3)
    assert random.getstate() == before


# --------------------------------------------------------------------------- quality ladder


@pytest.mark.parametrize(
    ("n_pairs", "flawed_fraction"),
    [(0, 0.3), (1, 0.5), (5, 0.5), (7, 0.5), (100, 0.0), (100, 1.0), (333, 0.25), (250, 0.123)],
)
def test_flawed_count_is_exact(n_pairs: int, flawed_fraction: float) -> None:
    batch = generate_records(n_pairs, seed=2, flawed_fraction=flawed_fraction, max_turns=2)
    assert len(batch) == n_pairs
    assert sum(r["meta"]["flawed"] for r in batch) == round(flawed_fraction * n_pairs)
    for record in batch:
        assert record["meta"]["flawed"] == (record["meta"]["chosen_quality"] != "sound")


def test_flawed_records_are_spread_through_the_list() -> None:
    batch = generate_records(400, seed=8, flawed_fraction=0.5, max_turns=1)
    flags = [r["meta"]["flawed"] for r in batch]
    assert 50 < sum(flags[:200]) < 150  # shuffled, not all at the front


def test_chosen_is_strictly_above_rejected(records: list[dict]) -> None:
    for record in records:
        meta = record["meta"]
        assert LADDER.index(meta["chosen_quality"]) < LADDER.index(meta["rejected_quality"])


def test_every_permitted_quality_pair_occurs(records: list[dict]) -> None:
    pairs = {(r["meta"]["chosen_quality"], r["meta"]["rejected_quality"]) for r in records}
    flawed_chosen = {c for c, _ in pairs if c != "sound"}
    assert flawed_chosen == {"rambling", "unhelpful", "wrong"}
    assert {r for c, r in pairs if c == "sound"} == {"rambling", "unhelpful", "wrong", "rude"}
    assert {r for c, r in pairs if c == "wrong"} == {"rude"}


# --------------------------------------------------------------------------- ground truth


def test_answer_is_stated_exactly_by_the_correct_qualities(records: list[dict]) -> None:
    for record in records:
        meta, prompt = record["meta"], prompt_of(record["chosen"])
        for side in ("chosen", "rejected"):
            response = record[side][len(prompt) :]
            quality = meta[f"{side}_quality"]
            states_answer = response_is_correct(response, meta["answer"])
            assert states_answer == (quality in STATES_ANSWER), (quality, response)


def test_meta_answers_agree_with_an_independent_oracle(records: list[dict]) -> None:
    checked = 0
    for record in records:
        expected = oracle_answer(record["meta"]["question"])
        if expected is not None:
            assert record["meta"]["answer"] == expected, record["meta"]
            checked += 1
    assert checked > 400


def test_a_question_always_has_the_same_answer() -> None:
    answers = collections.defaultdict(set)
    for seed in range(3):
        for record in generate_records(1500, seed=seed, flawed_fraction=0.0, max_turns=1):
            answers[record["meta"]["question"]].add(record["meta"]["answer"])
    assert all(len(found) == 1 for found in answers.values())


def test_sound_responses_are_concise_and_rambling_ones_are_not(records: list[dict]) -> None:
    for record in records:
        prompt = prompt_of(record["chosen"])
        for side in ("chosen", "rejected"):
            words = len(record[side][len(prompt) :].split())
            quality = record["meta"][f"{side}_quality"]
            if quality == "sound":
                assert words <= 20
            if quality == "rambling":
                assert words >= 30


def test_there_are_at_least_five_varied_families(records: list[dict]) -> None:
    questions = collections.defaultdict(list)
    for record in records:
        questions[record["meta"]["family"]].append(record["meta"]["question"])
    assert len(questions) >= 5
    for family, asked in questions.items():
        assert len(asked) > len(records) / (2 * len(questions)), family
        # Small tables (so that a small model can learn them), asked in many phrasings.
        assert len(set(asked)) > 0.6 * len(asked), family


# --------------------------------------------------------------------------- multi-turn


def test_turn_counts_span_one_to_max_with_about_half_single(records: list[dict]) -> None:
    counts = collections.Counter(len(turns_of(r["chosen"])) for r in records)
    assert set(counts) == {1, 2, 3}
    assert 0.4 < counts[1] / len(records) < 0.6


def test_max_turns_one_gives_single_turn_dialogues() -> None:
    for record in generate_records(200, seed=1, flawed_fraction=0.5, max_turns=1):
        assert record["chosen"].count(HUMAN) == 1


def test_earlier_turns_are_distinct_sound_and_correct(records: list[dict]) -> None:
    checked = 0
    for record in records:
        turns = turns_of(record["chosen"])
        questions = [human for human, _ in turns]
        assert len(set(questions)) == len(questions)
        for question, answer in turns[:-1]:
            assert len(answer.split()) <= 20
            expected = oracle_answer(question)
            if expected is not None:
                assert response_is_correct(answer, expected), (question, answer)
                checked += 1
    assert checked > 150


# --------------------------------------------------------------------------- splits


def test_splits_have_the_requested_sizes_and_flawed_counts(splits: dict[str, list[dict]]) -> None:
    assert set(splits) == {"train", "test"}
    assert len(splits["train"]) == 3000 and len(splits["test"]) == 500
    assert sum(r["meta"]["flawed"] for r in splits["train"]) == 600
    assert sum(r["meta"]["flawed"] for r in splits["test"]) == 100


def test_test_questions_never_appear_in_train(splits: dict[str, list[dict]]) -> None:
    held_out = {r["meta"]["question"] for r in splits["test"]}
    train_finals = {r["meta"]["question"] for r in splits["train"]}
    assert held_out.isdisjoint(train_finals)
    # Not even as an earlier turn, where the correct answer would be shown.
    train_turns = {human for r in splits["train"] for human, _ in turns_of(r["chosen"])}
    assert held_out.isdisjoint(train_turns)


# --------------------------------------------------------------------------- response_is_correct


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("The answer is 12.", "12", True),
        ("12", "12", True),
        ("The answer is 112.", "12", False),
        ("The answer is 121.", "12", False),
        ("The answer is 12.5.", "12", False),
        ("There are 1,120 of them.", "120", False),
        ("It is -12.", "12", False),
        ("It is -12.", "-12", True),
        ("the capital is PARIS", "Paris", True),
        ("The capital is Paris.", "paris.", True),
        ("The capital is Paris!!", "Paris", True),
        ("It sounds Parisian.", "Paris", False),
        ("New   York\n City is big", "new york city", True),
        ("Newark is not it.", "new york", False),
        ("It is spelled c-a-t.", "c-a-t", True),
        ("It is spelled c-a-t-s.", "c-a-t", False),
        ("A donkey says hee-haw.", "haw", False),
        ("A donkey says hee-haw.", "hee-haw", True),
        ("I'm not sure, you could look it up.", "12", False),
        ("", "12", False),
        ("The answer is 12.", "", False),
        ("The answer is 12.", "  ", False),
    ],
)
def test_response_is_correct_edge_cases(response: str, answer: str, expected: bool) -> None:
    assert response_is_correct(response, answer) is expected


# --------------------------------------------------------------------------- arguments


GOOD = {"seed": 0, "flawed_fraction": 0.2, "max_turns": 2}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"n_pairs": -1}, "n_pairs"),
        ({"n_pairs": 2.5}, "n_pairs"),
        ({"flawed_fraction": -0.1}, "flawed_fraction"),
        ({"flawed_fraction": 1.01}, "flawed_fraction"),
        ({"flawed_fraction": math.nan}, "flawed_fraction"),
        ({"max_turns": 0}, "max_turns"),
    ],
)
def test_bad_arguments_to_generate_records_name_the_argument(overrides: dict, named: str) -> None:
    arguments = {"n_pairs": 10, **GOOD, **overrides}
    with pytest.raises(ValueError, match=named) as raised:
        generate_records(**arguments)
    assert str(overrides[named]) in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"n_train": -1}, "n_train"), ({"n_test": -5}, "n_test"), ({"max_turns": 0}, "max_turns")],
)
def test_bad_arguments_to_generate_splits_name_the_argument(overrides: dict, named: str) -> None:
    arguments = {"n_train": 10, "n_test": 5, **GOOD, **overrides}
    with pytest.raises(ValueError, match=named):
        generate_splits(**arguments)


def test_zero_pairs_is_an_empty_list() -> None:
    assert generate_records(0, seed=0, flawed_fraction=0.5, max_turns=3) == []
