"""Does a response state the answer? The synthetic data's ground-truth check, used by the generator
(a flawed response must not state it) and by the judge stages (exact-answer accuracy)."""

from __future__ import annotations

_TRAILING_PUNCTUATION = ".!?,;: "


def response_is_correct(response: str, answer: str) -> bool:
    """True when the response states the answer as a whole token sequence.

    Case, runs of whitespace and trailing punctuation are ignored, but the answer
    may not be a fragment of a longer word or number: "12" is not stated by "112",
    "12.5", "1,120" or "-12", nor "c-a-t" by "c-a-t-s".
    """
    target = _normalise(answer)
    if not target:
        return False
    text = response.lower()
    # Fast exit for the common miss; collapsing whitespace can only matter when the answer has some.
    if " " not in target and target not in text:
        return False
    text = _normalise(text)
    start = text.find(target)
    while start != -1:
        if _stands_alone(text, start, start + len(target)):
            return True
        start = text.find(target, start + 1)
    return False


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(_TRAILING_PUNCTUATION)


def _stands_alone(text: str, start: int, end: int) -> bool:
    return not (_joined_before(text, start) or _joined_after(text, end))


def _joined_after(text: str, end: int) -> bool:
    if end >= len(text):
        return False
    following, after_that, last = text[end], text[end + 1 : end + 2], text[end - 1]
    if following.isalnum():
        return True
    # "c-a-t-s" continues the word "c-a-t"; "12.5" and "12,000" continue the number 12,
    # while the "." of "12." only ends a sentence.
    if following == "-":
        return after_that.isalnum() and last.isalnum()
    return following in ".," and after_that.isdigit() and last.isdigit()


def _joined_before(text: str, start: int) -> bool:
    if start == 0:
        return False
    preceding, before_that, first = text[start - 1], text[start - 2 : start - 1], text[start]
    if preceding.isalnum():
        return True
    # A hyphen after a letter or digit joins a word; before a lone number it is a minus sign.
    if preceding == "-":
        return before_that.isalnum() or first.isdigit()
    return preceding in ".," and before_that.isdigit() and first.isdigit()


