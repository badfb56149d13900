"""Reward models: one trained here with the Bradley-Terry loss, or a hub sequence classifier.

Both end up as a folder `models/reward` that `load_scorer` turns into a `Scorer`: a function of
(prompt text, response text) → one scalar. The score stage, the quality filter and the evaluation of
generated answers all use that one interface, so the same judge ranks the training data and the models.

- trained: GPT-2 (models/base, as InstructGPT initialises its reward model from the policy) with a
  scalar head on the last token (transformers' GPT2ForSequenceClassification, num_labels=1), trained
  on the train pairs through the one training loop with −log σ(r(chosen) − r(rejected)).
- hf: any AutoModelForSequenceClassification with its tokenizer, taking (prompt, response) as a text
  pair and returning one logit (the full study uses OpenAssistant/reward-model-deberta-v3-large-v2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from gptpipe.data.batches import LMExample, collate
from gptpipe.errors import UserError, first_line, reading
from gptpipe.files import atomic_path
from gptpipe.hub import unreachable_reason
from gptpipe.data.hh import ASSISTANT, HUMAN
from gptpipe.data.tokenizer import Tokenizer, load_tokenizer

MARKER = "gptpipe_reward.json"  # in models/reward: which backend made it and from what


class RewardUnreachable(UserError):
    """A reward model that could not be loaded; the message names the offline alternative."""


# -- the trained backend: GPT-2 with a scalar head ------------------------------------------------


def reward_model_from(base: Path) -> PreTrainedModel:
    """models/base's transformer with a fresh scalar head (transformers' own init)."""
    if not (base / "config.json").is_file():
        raise UserError(f"{base}: holds no saved model; run the base stage first (dvc repro base)")
    with reading(base, "saved model"):
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    # GPT-2 has no pad token; HF's own forward uses this one to find each row's last token.
    model.config.pad_token_id = load_tokenizer(base).eot_id
    return model


def sequence_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head on each (right-padded) row's last real token: (rows,).

    The last token, not HF's "last non-pad token": our responses end with <|endoftext|>, which is
    also the id HF would take for padding, and it is the token that has seen the whole response.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(picked).squeeze(-1).float()


def save_reward_model(model: PreTrainedModel, out: Path, record: dict[str, Any], tokenizer=None) -> None:
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")


# -- scoring text: the one interface the score, filter and evaluation stages use ---------------


class Scorer(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str], desc: str = "scoring") -> np.ndarray: ...


@dataclass
class ScoringSpeed:
    sequences: int = 0
    seconds: float = 0.0

    @property
    def per_s(self) -> float:
        return self.sequences / self.seconds if self.seconds else 0.0


class GPT2Scorer:
    """The trained backend: the run's tokenizer's ids of prompt + response (+ end of text), as in training."""

    def __init__(self, model: PreTrainedModel, name: str, batch_size: int, device: torch.device, tokenizer: Tokenizer):
        self.model, self.name, self.batch_size, self.device = model.eval().to(device), name, batch_size, device
        self.tokenizer = tokenizer
        self.speed = ScoringSpeed()
        self.max_length = model.config.max_position_embeddings

    def encode(self, prompt: str, response: str) -> LMExample:
        prompt_ids, response_ids = self.tokenizer.encode_batch([prompt, response])
        response_ids = (response_ids + [self.tokenizer.eot_id])[: self.max_length - 1]
        room = self.max_length - len(response_ids)
        return LMExample(prompt_ids[len(prompt_ids) - room :] + response_ids, first_target=1)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], desc: str = "scoring") -> np.ndarray:
        examples = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        return _batched(examples, self.batch_size, self._score_batch, self.speed, desc)

    def _score_batch(self, examples: Sequence[LMExample]) -> np.ndarray:
        batch = collate(examples).to(self.device)
        return sequence_rewards(self.model, batch.input_ids, batch.attention_mask).cpu().numpy()


class HFScorer:
    """The hf backend: the classifier's own tokenizer on (question, response) as a text pair.

    The question is the user's last turn with the Human:/Assistant: markers stripped, the input the
    OpenAssistant judges were trained on (their model card scores `tokenizer(question, answer)`); the
    whole HH dialogue with its markers is text they never saw. When the pair is over max_length the
    question loses its beginning and the response its end: the tokenizer's own truncation cuts the
    longer text's end, which on 5 of 300 real HH pairs was the user's question itself.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, name: str, batch_size: int, max_length: int, device: torch.device):
        self.model, self.tokenizer, self.name = model.eval().to(device), tokenizer, name
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.speed = ScoringSpeed()

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], desc: str = "scoring") -> np.ndarray:
        pairs = list(zip(prompts, responses, strict=True))
        return _batched(pairs, self.batch_size, self._score_batch, self.speed, desc,
                        length=lambda pair: len(pair[0]) + len(pair[1]))

    def _score_batch(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        fitted = [self.fit(judge_question(p), r) for p, r in pairs]
        encoded = self.tokenizer(
            [q for q, _ in fitted], [r for _, r in fitted], truncation=True,
            max_length=self.max_length, padding=True, return_tensors="pt",
        ).to(self.device)
        return self.model(**encoded).logits[:, 0].float().cpu().numpy()

    def fit(self, question: str, response: str) -> tuple[str, str]:
        """Both texts cut, at token boundaries, to fit max_length: the response keeps its start (up to
        three quarters of the room), the question its end."""
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        q, r = (self.tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                for t in (question, response))
        if len(q) + len(r) <= room:
            return question, response
        keep_r = min(len(r), max(room - len(q), room * 3 // 4))
        keep_q = room - keep_r
        response = response[: r[keep_r - 1][1]] if keep_r else ""
        question = question[q[len(q) - keep_q][0] :] if keep_q else ""
        return question, response


class NoJudge:
    """reward.backend=none: every response scores NaN, so the score stage still lists every pair (the
    filter reads its ids) and no number pretends to be a judgement."""

    name = "none"

    def __init__(self):
        self.speed = ScoringSpeed()

    def score(self, prompts: Sequence[str], responses: Sequence[str], desc: str = "scoring") -> np.ndarray:
        return np.full(len(responses), np.nan)


def save_no_judge(out: Path) -> None:
    """models/reward for reward.backend=none: only the marker saying there is no judge."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / MARKER).write_text(json.dumps({"backend": "none", "name": "none"}, indent=2) + "\n")


def judge_question(prompt: str) -> str:
    """The user's last turn of an HH prompt, without its markers."""
    last = prompt[prompt.rfind(HUMAN) + len(HUMAN) :] if HUMAN in prompt else prompt
    return last.removesuffix(ASSISTANT).strip()


def _batched(items: Sequence, batch_size: int, score_batch, speed: ScoringSpeed, desc: str, length=len) -> np.ndarray:
    """Score in batches of similar length (little padding), with progress; scores in input order."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    scores = np.empty(len(items), dtype=np.float64)
    started = time.perf_counter()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        chunk = order[start : start + batch_size]
        scores[chunk] = score_batch([items[i] for i in chunk])
    speed.sequences += len(items)
    speed.seconds += time.perf_counter() - started
    return scores


def load_scorer(folder: Path, batch_size: int, device: torch.device, max_length: int = 512) -> GPT2Scorer | HFScorer | NoJudge:
    """The scorer a reward stage saved in `folder` (its marker says which backend)."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        raise UserError(f"{folder}: holds no reward model ({MARKER} missing); run the reward stage (dvc repro reward)")
    with reading(folder, "reward model"):
        record = json.loads(marker.read_text())
        if record["backend"] == "none":
            return NoJudge()
        if record["backend"] == "trained":
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            return GPT2Scorer(model, record["name"], batch_size, device, load_tokenizer(folder))
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return HFScorer(model, tokenizer, record["name"], batch_size, max_length, device)


def load_hub_classifier(name: str):
    """A hub id or a local save_pretrained folder → (model, tokenizer); offline, a clear error."""
    local = Path(name).is_absolute() or Path(name).exists()
    if local and not (Path(name) / "config.json").is_file():
        raise RewardUnreachable(f"reward.name={name}: no config.json; not a save_pretrained folder")
    # in seconds, where from_pretrained would retry for most of a minute
    why = None if local else unreachable_reason()
    if why is None:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name)
            tokenizer = AutoTokenizer.from_pretrained(name)
        except OSError as err:
            why = first_line(err) or type(err).__name__
    if why is not None:
        raise RewardUnreachable(
            f"reward.name={name!r}: could not load from the Hugging Face hub ({why}). Offline, "
            "save_pretrained the model and its tokenizer where the hub is reachable and set reward.name "
            "to that absolute folder, or use reward.backend=trained"
        ) from None
    if model.config.num_labels != 1:
        raise UserError(f"reward.name={name}: has {model.config.num_labels} labels; a reward model returns one logit")
    return model, tokenizer
