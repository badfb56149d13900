"""The synthetic data's task families: questions a small model can learn, each with its answer, a
sentence template to state it and wrong answers to state instead (arithmetic, unit conversion,
facts, string tasks, comparisons)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from gptpipe.data.answer_check import response_is_correct

# Casual openers multiply the phrasings of every question without new facts.
_OPENERS = ("Quick question. ", "Hi! ", "Hello. ", "I have a question. ")

# Draws that break an invariant (a flawed response that happens to state the answer,
# a held-out question) are redrawn; this many misses in a row means the tables are broken
# or the held-out set has used up a family, and looping on would never end.
MAX_REDRAWS = 200


class Task(NamedTuple):
    family: str
    question: str
    answer: str
    # A sentence with one "{}" slot for the answer. The rest of it must not state the
    # answer, so filling the slot with a wrong answer yields a wrong sentence.
    template: str
    # Computed only for the few responses that need one, which keeps generation fast.
    wrong_answers: Callable[[random.Random], tuple[str, ...]]

    def statement(self, answer: str) -> str:
        return self.template.format(answer)

    def prefixed(self, opener: str) -> Task:
        return self._replace(question=opener + self.question)




def _near_misses(value: int, *extra: int) -> tuple[str, ...]:
    candidates = (value + 1, value - 1, value + 2, value + 10, value - 10, *extra)
    return tuple(str(c) for c in dict.fromkeys(candidates) if c > 0 and c != value)


_ADD_QUESTIONS = (
    "What is {a} plus {b}?",
    "What is {a} + {b}?",
    "Can you add {a} and {b} for me?",
    "What do you get when you add {a} and {b}?",
)
_AFTER_QUESTIONS = (
    "What number comes after {n}?",
    "What number is one more than {n}?",
    "When counting, what comes right after {n}?",
)
_BEFORE_QUESTIONS = (
    "What number comes before {n}?",
    "What number is one less than {n}?",
    "When counting, what comes right before {n}?",
)
# The addition table of one-digit numbers and counting up or down from 2..49: finite tables, each
# entry keyed by the question's numbers, that a small model can learn in a few hundred steps
# (two-digit sums it cannot: 0% after 7 epochs at 2x128).
ADDEND_RANGE = (1, 5)
COUNTING_RANGE = (2, 10)


def _arithmetic_task(rng: random.Random) -> Task:
    if rng.random() < 0.5:
        a, b = rng.randint(*ADDEND_RANGE), rng.randint(*ADDEND_RANGE)
        result = a + b
        return Task("arithmetic", rng.choice(_ADD_QUESTIONS).format(a=a, b=b), str(result),
                    rng.choice((f"{a} plus {b} is {{}}.", "The answer is {}.")),
                    lambda _: _near_misses(result, a * b, abs(a - b)))
    n = rng.randint(*COUNTING_RANGE)
    after = rng.random() < 0.5
    result = n + 1 if after else n - 1
    phrasings, word = (_AFTER_QUESTIONS, "after") if after else (_BEFORE_QUESTIONS, "before")
    return Task("arithmetic", rng.choice(phrasings).format(n=n), str(result),
                f"The number {word} {n} is {{}}.", lambda _: _near_misses(result, n + (-1 if after else 1)))


# (larger unit, its plural, smaller unit plural, smaller units in one larger)
_CONVERSIONS = (
    ("kilometer", "kilometers", "meters", 1000),
    ("meter", "meters", "centimeters", 100),
    ("kilogram", "kilograms", "grams", 1000),
    ("hour", "hours", "minutes", 60),
    ("minute", "minutes", "seconds", 60),
    ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7),
    ("year", "years", "months", 12),
    ("foot", "feet", "inches", 12),
    ("dollar", "dollars", "cents", 100),
)
_CONVERSION_QUESTIONS = (
    "How many {to} are in {n} {source}?",
    "Convert {n} {source} to {to}.",
    "What is {n} {source} in {to}?",
)
# Amounts of 1..4 larger units, either way: a table of 80 conversions (two-digit amounts of any
# unit are multiplication, which a small model does not learn at this scale).
AMOUNT_RANGE = (1, 3)


def _unit_conversion_task(rng: random.Random) -> Task:
    larger, larger_plural, smaller_plural, factor = rng.choice(_CONVERSIONS)
    count = rng.randint(*AMOUNT_RANGE)
    if rng.random() < 0.5:
        amount, source, result = count, larger if count == 1 else larger_plural, count * factor
        asked = stated = smaller_plural
    else:
        amount, source, result = count * factor, smaller_plural, count
        asked, stated = larger_plural, larger if count == 1 else larger_plural
    fields = {"n": amount, "source": source, "to": asked}
    return Task(
        family="unit_conversion",
        question=rng.choice(_CONVERSION_QUESTIONS).format(**fields),
        answer=str(result),
        template=f"{amount} {source} is {{}} {stated}.",
        wrong_answers=lambda _: _near_misses(result, result * 10, amount),
    )


# Small tables, so that each fact recurs often enough in 4,000 dialogues to be learnt in minutes
# (all 75 capitals and 28 past tenses of an earlier version: 47% after 7 epochs at 2x128).
_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
    ("Canada", "Ottawa"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Norway", "Oslo"),
)
_ANIMAL_SOUNDS = (
    ("cow", "moo"), ("cat", "meow"), ("dog", "woof"), ("duck", "quack"), ("pig", "oink"),
    ("sheep", "baa"), ("owl", "hoot"), ("lion", "roar"), ("snake", "hiss"), ("horse", "neigh"),
)
_COLOURS = (
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("a banana", "yellow"), ("blood", "red"), ("a carrot", "orange"), ("chocolate", "brown"),
)
# Only pairs whose opposite is unambiguous ("light" could be "dark" or "heavy").
_OPPOSITES = (
    ("hot", "cold"), ("fast", "slow"), ("happy", "sad"), ("open", "closed"), ("full", "empty"),
    ("wet", "dry"),
)
_OPPOSITE_WORDS = tuple(word for pair in _OPPOSITES for word in pair)
# Irregular forms only; nouns whose plural is the noun itself ("sheep") could never be answered wrongly.
_PLURALS = (
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
    ("goose", "geese"), ("man", "men"), ("woman", "women"), ("person", "people"),
)
_PAST_TENSES = (
    ("go", "went"), ("eat", "ate"), ("run", "ran"), ("see", "saw"), ("take", "took"),
    ("give", "gave"),
)
# (what is counted, a sentence stating the count, the count)
_COUNTS = (
    ("days are in a week", "A week has {} days.", "7"),
    ("months are in a year", "A year has {} months.", "12"),
    ("hours are in a day", "A day has {} hours.", "24"),
    ("legs does a spider have", "A spider has {} legs.", "8"),
    ("legs does an insect have", "An insect has {} legs.", "6"),
    ("sides does a triangle have", "A triangle has {} sides.", "3"),
    ("sides does a hexagon have", "A hexagon has {} sides.", "6"),
    ("letters are in the English alphabet", "The English alphabet has {} letters.", "26"),
    ("wheels does a bicycle have", "A bicycle has {} wheels.", "2"),
    ("continents are there", "There are {} continents.", "7"),
)


def _with_article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def _others(table: tuple[tuple[str, ...], ...], column: int, exclude: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(row[column] for row in table if row[column] != exclude))


def _capital_task(rng: random.Random) -> Task:
    country, city = rng.choice(_CAPITALS)
    if rng.random() < 0.6:
        phrasings = (
            "What is the capital of {c}?",
            "Which city is the capital of {c}?",
            "What city is the capital of {c}?",
            "Do you know the capital of {c}?",
            "Name the capital of {c}.",
        )
        question = rng.choice(phrasings).format(c=country)
        return Task("facts", question, city, f"The capital of {country} is {{}}.",
                     lambda _: _others(_CAPITALS, 1, city))
    phrasings = (
        "Which country has {c} as its capital?",
        "{c} is the capital of which country?",
        "What country is {c} the capital of?",
    )
    question = rng.choice(phrasings).format(c=city)
    return Task("facts", question, country, f"{city} is the capital of {{}}.",
                 lambda _: _others(_CAPITALS, 0, country))


def _animal_sound_task(rng: random.Random) -> Task:
    animal, sound = rng.choice(_ANIMAL_SOUNDS)
    if rng.random() < 0.6:
        phrasings = ("What sound does {a} make?", "What noise does {a} make?", "What does {a} say?")
        question = rng.choice(phrasings).format(a=_with_article(animal))
        return Task("facts", question, sound, f"{_capitalised(_with_article(animal))} says {{}}.",
                     lambda _: _others(_ANIMAL_SOUNDS, 1, sound))
    phrasings = ("Which animal says {s}?", "What animal goes {s}?")
    question = rng.choice(phrasings).format(s=sound)
    return Task("facts", question, animal, f"The {{}} says {sound}.",
                 lambda _: _others(_ANIMAL_SOUNDS, 0, animal))


def _colour_task(rng: random.Random) -> Task:
    thing, colour = rng.choice(_COLOURS)
    phrasings = ("What color is {t}?", "What is the color of {t}?", "What color is {t} usually?")
    return Task("facts", rng.choice(phrasings).format(t=thing), colour,
                 f"{_capitalised(thing)} is {{}}.", lambda _: _others(_COLOURS, 1, colour))


def _opposite_task(rng: random.Random) -> Task:
    pair = rng.choice(_OPPOSITES)
    word, opposite = pair if rng.random() < 0.5 else pair[::-1]
    phrasings = ("What is the opposite of {w}?", "What is the opposite of the word {w}?",
                 "Tell me the opposite of {w}.")
    return Task("facts", rng.choice(phrasings).format(w=word), opposite,
                 f"The opposite of {word} is {{}}.",
                 lambda _: (word, *(w for w in _OPPOSITE_WORDS if w not in (word, opposite))))


def _count_fact_task(rng: random.Random) -> Task:
    counted, template, count = rng.choice(_COUNTS)
    phrasings = ("How many {x}?", "Do you know how many {x}?", "Can you tell me how many {x}?")
    return Task("facts", rng.choice(phrasings).format(x=counted), count, template,
                 lambda _: _near_misses(int(count)))


def _plural_task(rng: random.Random) -> Task:
    noun, plural = rng.choice(_PLURALS)
    phrasings = ("What is the plural of {w}?", "What is the plural of the word {w}?",
                 "Can you tell me the plural of {w}?")
    return Task("facts", rng.choice(phrasings).format(w=noun), plural,
                 f"The plural of {noun} is {{}}.", lambda _: (noun + "s", *_others(_PLURALS, 1, plural)))


def _past_tense_task(rng: random.Random) -> Task:
    verb, past = rng.choice(_PAST_TENSES)
    phrasings = ("What is the past tense of {w}?", "What is the past tense of the verb {w}?",
                 "Can you tell me the past tense of {w}?")
    return Task("facts", rng.choice(phrasings).format(w=verb), past,
                 f"The past tense of {verb} is {{}}.",
                 lambda _: (verb + "ed", *_others(_PAST_TENSES, 1, past)))


_FACT_KINDS = (
    _capital_task, _animal_sound_task, _colour_task, _opposite_task, _count_fact_task,
    _plural_task, _past_tense_task,
)


def _facts_task(rng: random.Random) -> Task:
    return rng.choice(_FACT_KINDS)(rng)


# Plain nouns of 3-7 letters: short in GPT-2 tokens and never function words,
# which would turn up by accident in filler text.
_WORDS = (
    "apple", "table", "chair", "house", "water", "river", "smile", "tiger", "horse", "mouse",
    "cloud", "bread", "plant", "train", "music", "stone", "paper", "pencil", "garden", "window",
    "banana", "candle", "rabbit", "monkey", "guitar", "rocket", "planet", "winter", "summer",
    "forest", "island", "bottle", "button", "carpet", "dragon", "jacket", "kitten", "ladder",
    "mirror", "needle", "pillow", "pocket", "puzzle", "saddle", "silver", "spider", "ticket",
    "tunnel", "turtle", "violin", "wallet", "zebra", "lemon", "melon", "grape", "peach",
    "cherry", "basket", "bucket", "camera", "circle", "doctor", "engine", "farmer", "flower",
    "hammer", "helmet", "kettle", "lizard", "market", "parrot", "pepper", "pirate", "potato",
    "salad", "school", "shadow", "sister", "tomato", "valley", "wizard", "cat", "dog", "sun",
    "hat", "cup", "pen", "box", "bag", "map", "bus", "car", "fox", "owl", "egg", "bed", "ant",
    "bee", "cow", "pig", "key", "toy", "jam", "van", "web", "cake", "fish", "bird", "book",
    "door", "frog", "gold", "hand", "kite", "lamp", "milk", "moon", "nest", "ring", "ship",
    "sock", "star", "tree", "wolf", "rain", "snow", "leaf", "lion", "bear", "duck", "goat",
    "rose", "shoe", "coat", "king", "baby", "ball", "desk", "drum", "farm", "fire",
)


def _uppercase_task(rng: random.Random, word: str) -> Task:
    phrasings = ("Write the word '{w}' in capital letters.", "What is '{w}' in uppercase?",
                 "Can you make '{w}' all caps?")
    # The template must not repeat the word: case is ignored when checking answers.
    template = rng.choice(("In capital letters, that is {}.", "In uppercase it is {}."))
    return Task("strings", rng.choice(phrasings).format(w=word), word.upper(), template,
                lambda rng: tuple(w.upper() for w in rng.sample(STRING_WORDS, 3) if w != word))


def _length_task(rng: random.Random, word: str) -> Task:
    phrasings = ("How many letters are in the word '{w}'?", "How many letters does '{w}' have?",
                 "Count the letters in '{w}'.")
    return Task("strings", rng.choice(phrasings).format(w=word), str(len(word)),
                f"The word {word} has {{}} letters.", lambda _: _near_misses(len(word)))


# A table per word (its capitals, its length) over a short word list. Answers copied from the prompt
# (the first, last or next word of a list, a word repeated back) were measured too and not learnt:
# 1 of 48 right after 800 steps at 2x128, when the tables of the other families reached 45%.
STRING_WORDS = _WORDS[:20]
_STRING_KINDS = (_uppercase_task, _length_task)


def _strings_task(rng: random.Random) -> Task:
    return rng.choice(_STRING_KINDS)(rng, rng.choice(STRING_WORDS))


# Numbers up to 30: their order is a short table; three-digit ones it is not (a coin toss at 2x128).
COMPARISON_RANGE = (1, 12)


def _comparison_task(rng: random.Random) -> Task:
    a, b = rng.sample(range(COMPARISON_RANGE[0], COMPARISON_RANGE[1] + 1), 2)
    if rng.random() < 0.5:
        phrasings = ("Which is larger, {a} or {b}?", "Which number is bigger, {a} or {b}?",
                     "Is {a} or {b} the larger number?")
        answer, other, template = max(a, b), min(a, b), "{} is the larger number."
    else:
        phrasings = ("Which is smaller, {a} or {b}?", "Which number is smaller: {a} or {b}?")
        answer, other, template = min(a, b), max(a, b), "{} is the smaller number."
    return Task("comparison", rng.choice(phrasings).format(a=a, b=b), str(answer), template,
                 lambda _: (str(other),))


_FAMILIES: tuple[Callable[[random.Random], Task], ...] = (
    _arithmetic_task, _unit_conversion_task, _facts_task, _strings_task, _comparison_task,
)


def draw_task(rng: random.Random, excluded: frozenset[str]) -> Task:
    family = rng.choice(_FAMILIES)
    for _ in range(MAX_REDRAWS):
        task = family(rng)
        if rng.random() < 0.5:
            task = task.prefixed(rng.choice(_OPENERS))
        # A template that already states the answer could never be filled in wrongly
        # ("10 minus 5 is {}." when the answer is 5).
        states_answer_anyway = response_is_correct(task.template.format(""), task.answer)
        if task.question not in excluded and not states_answer_anyway:
            return task
    raise RuntimeError(f"no usable question left in family {family.__name__}: the held-out set covers it")


