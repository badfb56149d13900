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
_SUBTRACT_QUESTIONS = (
    "What is {a} minus {b}?",
    "What is {a} - {b}?",
    "Can you subtract {b} from {a}?",
    "What do you get when you take {b} away from {a}?",
)
_MULTIPLY_QUESTIONS = (
    "What is {a} times {b}?",
    "What is {a} multiplied by {b}?",
    "What is {a} x {b}?",
    "Can you multiply {a} by {b}?",
)


def _arithmetic_task(rng: random.Random) -> Task:
    operation = rng.randrange(3)
    if operation == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        result, verb, phrasings = a + b, "plus", _ADD_QUESTIONS
    elif operation == 1:
        # Positive results only: a minus sign is one more thing for a small model to get wrong.
        a = rng.randint(3, 99)
        b = rng.randint(1, a - 1)
        result, verb, phrasings = a - b, "minus", _SUBTRACT_QUESTIONS
    else:
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        result, verb, phrasings = a * b, "times", _MULTIPLY_QUESTIONS
    template = rng.choice((f"{a} {verb} {b} is {{}}.", "The answer is {}."))
    return Task(
        family="arithmetic",
        question=rng.choice(phrasings).format(a=a, b=b),
        answer=str(result),
        template=template,
        wrong_answers=lambda _: _near_misses(result, a + b, abs(a - b), a * b),
    )


# (larger unit, its plural, smaller unit plural, smaller units in one larger)
_CONVERSIONS = (
    ("kilometer", "kilometers", "meters", 1000),
    ("meter", "meters", "centimeters", 100),
    ("centimeter", "centimeters", "millimeters", 10),
    ("kilogram", "kilograms", "grams", 1000),
    ("liter", "liters", "milliliters", 1000),
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


def _unit_conversion_task(rng: random.Random) -> Task:
    larger, larger_plural, smaller_plural, factor = rng.choice(_CONVERSIONS)
    if rng.random() < 0.5:
        amount = rng.randint(1, 99)
        source = larger if amount == 1 else larger_plural
        target, result = smaller_plural, amount * factor
    else:
        # Start from a multiple of the factor so the answer is a whole number of larger units.
        result = rng.randint(2, 99)
        amount, source, target = result * factor, smaller_plural, larger_plural
    fields = {"n": amount, "source": source, "to": target}
    return Task(
        family="unit_conversion",
        question=rng.choice(_CONVERSION_QUESTIONS).format(**fields),
        answer=str(result),
        template=f"{amount} {source} is {{}} {target}.",
        wrong_answers=lambda _: _near_misses(result, result * 10, amount),
    )


_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Greece", "Athens"),
    ("Turkey", "Ankara"), ("Poland", "Warsaw"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"),
    ("England", "London"), ("Scotland", "Edinburgh"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Switzerland", "Bern"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Morocco", "Rabat"), ("Cuba", "Havana"), ("Mexico", "Mexico City"),
    ("New Zealand", "Wellington"), ("Wales", "Cardiff"), ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"), ("Saudi Arabia", "Riyadh"), ("Syria", "Damascus"),
    ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Ethiopia", "Addis Ababa"),
    ("Uganda", "Kampala"), ("Zimbabwe", "Harare"), ("Senegal", "Dakar"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Uruguay", "Montevideo"),
    ("Jamaica", "Kingston"), ("Iceland", "Reykjavik"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Slovakia", "Bratislava"), ("Estonia", "Tallinn"), ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"), ("Malaysia", "Kuala Lumpur"), ("Nepal", "Kathmandu"),
    ("Afghanistan", "Kabul"), ("Cambodia", "Phnom Penh"), ("Qatar", "Doha"),
    ("Libya", "Tripoli"), ("Tunisia", "Tunis"), ("Algeria", "Algiers"), ("Sudan", "Khartoum"),
)
_ANIMAL_SOUNDS = (
    ("cow", "moo"), ("cat", "meow"), ("dog", "woof"), ("duck", "quack"), ("pig", "oink"),
    ("sheep", "baa"), ("owl", "hoot"), ("lion", "roar"), ("snake", "hiss"), ("horse", "neigh"),
    ("frog", "croak"), ("bee", "buzz"), ("mouse", "squeak"), ("donkey", "hee-haw"),
    ("crow", "caw"), ("wolf", "howl"), ("rooster", "cock-a-doodle-doo"),
)
_COLOURS = (
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("a banana", "yellow"), ("a lemon", "yellow"), ("blood", "red"), ("a ripe tomato", "red"),
    ("a carrot", "orange"), ("a pumpkin", "orange"), ("chocolate", "brown"), ("milk", "white"),
    ("a strawberry", "red"), ("a frog", "green"), ("a crow", "black"), ("an elephant", "gray"),
    ("a polar bear", "white"), ("a flamingo", "pink"), ("an eggplant", "purple"),
    ("a lime", "green"), ("soil", "brown"), ("the sun", "yellow"), ("a cloud", "white"),
    ("the ocean", "blue"), ("a fire truck", "red"),
)
# Only pairs whose opposite is unambiguous ("light" could be "dark" or "heavy").
_OPPOSITES = (
    ("hot", "cold"), ("fast", "slow"), ("happy", "sad"), ("open", "closed"), ("full", "empty"),
    ("wet", "dry"), ("early", "late"), ("rich", "poor"), ("thick", "thin"), ("loud", "quiet"),
    ("strong", "weak"), ("clean", "dirty"), ("day", "night"), ("black", "white"),
    ("win", "lose"), ("push", "pull"), ("inside", "outside"), ("true", "false"),
    ("always", "never"), ("buy", "sell"),
)
_OPPOSITE_WORDS = tuple(word for pair in _OPPOSITES for word in pair)
# Irregular forms only; nouns whose plural is the noun itself ("sheep") could never be answered wrongly.
_PLURALS = (
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
    ("goose", "geese"), ("man", "men"), ("woman", "women"), ("person", "people"),
    ("leaf", "leaves"), ("knife", "knives"), ("wolf", "wolves"), ("half", "halves"),
    ("ox", "oxen"), ("cactus", "cacti"), ("loaf", "loaves"), ("wife", "wives"),
)
_PAST_TENSES = (
    ("go", "went"), ("eat", "ate"), ("run", "ran"), ("see", "saw"), ("take", "took"),
    ("give", "gave"), ("write", "wrote"), ("drink", "drank"), ("swim", "swam"),
    ("sing", "sang"), ("buy", "bought"), ("bring", "brought"), ("think", "thought"),
    ("catch", "caught"), ("teach", "taught"), ("fly", "flew"), ("know", "knew"),
    ("speak", "spoke"), ("break", "broke"), ("drive", "drove"), ("choose", "chose"),
    ("ride", "rode"), ("sleep", "slept"), ("feel", "felt"), ("keep", "kept"),
    ("begin", "began"), ("fall", "fell"), ("win", "won"),
)
# (what is counted, a sentence stating the count, the count)
_COUNTS = (
    ("days are in a week", "A week has {} days.", "7"),
    ("months are in a year", "A year has {} months.", "12"),
    ("hours are in a day", "A day has {} hours.", "24"),
    ("minutes are in an hour", "An hour has {} minutes.", "60"),
    ("legs does a spider have", "A spider has {} legs.", "8"),
    ("legs does an insect have", "An insect has {} legs.", "6"),
    ("legs does a dog have", "A dog has {} legs.", "4"),
    ("legs does a bird have", "A bird has {} legs.", "2"),
    ("sides does a triangle have", "A triangle has {} sides.", "3"),
    ("sides does a square have", "A square has {} sides.", "4"),
    ("sides does a pentagon have", "A pentagon has {} sides.", "5"),
    ("sides does a hexagon have", "A hexagon has {} sides.", "6"),
    ("sides does an octagon have", "An octagon has {} sides.", "8"),
    ("letters are in the English alphabet", "The English alphabet has {} letters.", "26"),
    ("wheels does a bicycle have", "A bicycle has {} wheels.", "2"),
    ("wheels does a tricycle have", "A tricycle has {} wheels.", "3"),
    ("continents are there", "There are {} continents.", "7"),
    ("planets are in our solar system", "Our solar system has {} planets.", "8"),
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
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _scrambles(rng: random.Random, word: str, count: int = 3) -> tuple[str, ...]:
    letters = list(word)
    variants = [word[1:], word[:-1] + word[0]]
    for _ in range(count):
        rng.shuffle(letters)
        variants.append("".join(letters))
    return tuple(v for v in dict.fromkeys(variants) if v and v != word)


def _reverse_task(rng: random.Random, word: str) -> Task:
    phrasings = ("Reverse the word '{w}'.", "What is '{w}' spelled backwards?",
                 "Can you write the word '{w}' backwards?")
    answer = word[::-1]
    return Task("strings", rng.choice(phrasings).format(w=word), answer,
                 f"The word {word} backwards is {{}}.", lambda rng: (word, *_scrambles(rng, answer)))


def _uppercase_task(rng: random.Random, word: str) -> Task:
    phrasings = ("Write the word '{w}' in capital letters.", "What is '{w}' in uppercase?",
                 "Can you make '{w}' all caps?")
    # The template must not repeat the word: case is ignored when checking answers.
    template = rng.choice(("In capital letters, that is {}.", "In uppercase it is {}."))
    return Task("strings", rng.choice(phrasings).format(w=word), word.upper(), template,
                 lambda rng: tuple(s.upper() for s in _scrambles(rng, word)))


def _length_task(rng: random.Random, word: str) -> Task:
    phrasings = ("How many letters are in the word '{w}'?", "How many letters does '{w}' have?",
                 "Count the letters in '{w}'.")
    return Task("strings", rng.choice(phrasings).format(w=word), str(len(word)),
                 f"The word {word} has {{}} letters.", lambda _: _near_misses(len(word)))


def _letter_count_task(rng: random.Random, word: str) -> Task:
    # Mostly letters that occur, so the answer is usually not zero.
    letter = rng.choice(word) if rng.random() < 0.75 else rng.choice(_ALPHABET)
    phrasings = ("How many times does the letter '{c}' appear in '{w}'?",
                 "How many times does '{c}' appear in the word '{w}'?")
    count = word.count(letter)
    return Task("strings", rng.choice(phrasings).format(c=letter, w=word), str(count),
                 rng.choice(("The answer is {}.", "That comes to {}.")),
                 lambda _: _near_misses(count, len(word)) if count else ("1", "2"))


def _spelling_task(rng: random.Random, word: str) -> Task:
    phrasings = ("How do you spell '{w}' letter by letter?",
                 "Spell out the word '{w}' with dashes between the letters.")
    return Task("strings", rng.choice(phrasings).format(w=word), "-".join(word),
                 "It is spelled {}.", lambda rng: tuple("-".join(s) for s in _scrambles(rng, word)))


_STRING_KINDS = (_reverse_task, _uppercase_task, _length_task, _letter_count_task, _spelling_task)


def _strings_task(rng: random.Random) -> Task:
    return rng.choice(_STRING_KINDS)(rng, rng.choice(_WORDS))


def _comparison_task(rng: random.Random) -> Task:
    a, b = rng.sample(range(1, 1000), 2)
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


