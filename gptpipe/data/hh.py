"""Anthropic HH-RLHF records: parsing dialogues into (prompt, chosen, rejected) pairs.

A record holds two whole dialogues, `chosen` and `rejected`, of `\\n\\nHuman: …` / `\\n\\nAssistant: …`
turns. The prompt is everything up to and including the last `\\n\\nAssistant:`; both dialogues must
share it, and only the final responses differ (two identical ones carry no preference). Records that
do not parse are dropped and counted by reason; a file with no JSON record at all is an error, since
it is not HH data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptpipe.errors import UserError

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"

# Drop reasons, as counted in metrics/data.json.
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
MISSING_FIELD = "missing_field"
NOT_TEXT = "not_text"
NO_ASSISTANT_TURN = "no_assistant_turn"
PROMPT_MISMATCH = "prompt_mismatch"
EMPTY_RESPONSE = "empty_response"
IDENTICAL_RESPONSES = "identical_responses"  # chosen == rejected: no preference to learn from
DUPLICATE = "duplicate"


class DataFileError(UserError, ValueError):
    """An input file that cannot be used at all; the message names the file and the fix."""


class Unparseable(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str  # ends with "\n\nAssistant:"
    chosen: str  # the final response, as it follows the prompt (usually with a leading space)
    rejected: str | None  # None: a single-response record (SFT data, no preference)
    meta: dict[str, Any] = field(default_factory=dict)  # ground truth, synthetic data only


@dataclass
class ParseReport:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def drop_fraction(self) -> float:
        return sum(self.dropped.values()) / self.read if self.read else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "drop_fraction": round(self.drop_fraction, 4),
        }


def split_dialogue(dialogue: str) -> tuple[str, str]:
    """(prompt, response): the prompt ends with the last Assistant marker."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise Unparseable(NO_ASSISTANT_TURN)
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def parse_record(record: Any) -> Pair:
    """One HH record (a decoded JSON value) → Pair, or Unparseable with the reason."""
    if not isinstance(record, dict) or "chosen" not in record or "rejected" not in record:
        raise Unparseable(MISSING_FIELD)
    chosen, rejected = record["chosen"], record["rejected"]
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Unparseable(NOT_TEXT)
    prompt, chosen_response = split_dialogue(chosen)
    rejected_prompt, rejected_response = split_dialogue(rejected)
    if prompt != rejected_prompt:
        raise Unparseable(PROMPT_MISMATCH)
    if not chosen_response.strip() or not rejected_response.strip():
        raise Unparseable(EMPTY_RESPONSE)
    # Compared without surrounding whitespace: a leading space more is not a preference.
    if chosen_response.strip() == rejected_response.strip():
        raise Unparseable(IDENTICAL_RESPONSES)
    return Pair(
        id=pair_id(prompt, chosen_response, rejected_response),
        prompt=prompt,
        chosen=chosen_response,
        rejected=rejected_response,
        meta=record.get("meta") or {},
    )


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    """A stable content hash, so the same pair has the same id in every run and every stage."""
    digest = hashlib.sha1("\0".join((prompt, chosen, rejected)).encode("utf-8"))
    return digest.hexdigest()[:16]


def parse_records(records: Iterable[Any], report: ParseReport, parse: Callable[[Any], Pair] | None = None) -> list[Pair]:
    """Parse decoded records (with `parse`, HH's parse_record by default), dropping (and counting) the
    unparseable and the duplicates."""
    parse = parse or parse_record
    pairs: list[Pair] = []
    seen: set[str] = set()
    for record in records:
        report.read += 1
        if isinstance(record, Unparseable):  # a line that failed before JSON decoding finished
            report.dropped[record.reason] += 1
            continue
        try:
            pair = parse(record)
        except Unparseable as err:
            report.dropped[err.reason] += 1
            continue
        if pair.id in seen:
            report.dropped[DUPLICATE] += 1
            continue
        seen.add(pair.id)
        pairs.append(pair)
    report.kept = len(pairs)
    return pairs


def read_jsonl(path: str | Path) -> list[Any]:
    """Decoded JSON values of a .jsonl or .jsonl.gz file; a bad line becomes an Unparseable marker.

    Raises DataFileError when the file is not JSON Lines at all (no line decodes to a JSON object).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFileError(f"{path}: corrupt gzip file ({err}); download it again") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark (Windows editors): not part of the first record
    values = [_decode_line(line) for line in raw.splitlines() if line.strip()]
    if not values:
        raise DataFileError(
            f"{path}: empty (no records); download it again, or remove it to carve this split from the other"
        )
    if not any(isinstance(value, dict) for value in values):
        raise DataFileError(
            f"{path}: not JSON Lines (no line is a JSON object); "
            "expected one JSON object per line, a record of any format data.format names (HH: {\"chosen\": …, \"rejected\": …})"
        )
    return values


def _decode_line(line: bytes) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Unparseable(NOT_UTF8)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return Unparseable(NOT_JSON)
