"""Answering prompts with a GPT-2: our own batched decode loop, and the generate stage.

Why not `model.generate`: GPT-2's tokenizer here is tiktoken, and transformers' stop strings
(`stop_strings=`) need a transformers tokenizer to map text back onto tokens. Stopping at
`\\n\\nHuman:` (the model starting the user's next turn) is a text condition that may span tokens
("\\n", "\\n", "Human", ":"), so the loop checks each row's decoded bytes itself.

The loop: prompts sorted by length and batched, LEFT-padded (every row's next token then sits in
the last column), position ids counted from the attention mask (a padded row starts at position 0,
as it would alone), the KV cache carried between steps, the mask extended by one column a step, and
rows that stopped dropped from the batch and the cache. Sampling follows transformers' warpers:
temperature, then top-k (ties with the k-th logit kept), then top-p (the smallest set of tokens whose
probability reaches p, never empty); temperature 0 is greedy.

Each prompt samples from its own torch.Generator, seeded per prompt, so what a prompt gets does not
depend on which prompts share its batch or in what order they come (up to float rounding of padded
against unpadded attention, which can flip a draw only at a near-exact tie).

`tokens` in an answer counts the new tokens the model produced, the stop token(s) included: the
count tokens/s is measured on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from gptpipe.config import GenerateConfig
from gptpipe.errors import UserError, reading
from gptpipe.data.hh import HUMAN
from gptpipe.data.tokenizer import Gpt2Bpe, Tokenizer

STOP_TEXT = HUMAN.encode()  # "\n\nHuman:": the model has begun the user's next turn
STOP_REASONS = ("eot", "human", "length")


@dataclass(frozen=True)
class Sampling:
    """How each next token is picked; the same knobs as params' generate section."""

    max_new_tokens: int = GenerateConfig().max_new_tokens
    temperature: float = GenerateConfig().temperature
    top_p: float = GenerateConfig().top_p
    top_k: int = GenerateConfig().top_k

    def __post_init__(self) -> None:
        # The chat command builds these from options, so bad values need the one-line message here.
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens: {self.max_new_tokens}; must be at least 1")
        if self.temperature < 0:
            raise UserError(f"temperature: {self.temperature}; must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p: {self.top_p}; must be in (0, 1] (1 = off)")
        if self.top_k < 0:
            raise UserError(f"top_k: {self.top_k}; must be >= 0 (0 = off)")

    @classmethod
    def from_config(cls, cfg: GenerateConfig) -> Sampling:
        return cls(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)


@dataclass(frozen=True)
class Answer:
    text: str  # the response, cut before any "\n\nHuman:", without the end-of-text
    stopped: str  # eot | human | length
    ids: tuple[int, ...]  # the new tokens, as produced (the stop token(s) included)

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Generation:
    answers: list[Answer]  # in the order of the prompts given
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(a.tokens for a in self.answers)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# -- picking the next token ----------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the nucleus of mass top_p.

    The same tokens as transformers' TopKLogitsWarper and TopPLogitsWarper keep (the tests compare
    them): top-k keeps ties with the k-th value; top-p keeps each token whose higher-ranked tokens
    hold less than p of the mass (the smallest set reaching p), and always the top token.
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        logits = logits.masked_fill(~_nucleus(logits, top_p), float("-inf"))
    return logits


# Candidates the nucleus is first looked for among. Sorting all 50,257 logits of every row at every
# step took 64% of the generation time on CPU; the nucleus almost always lies in a few hundred tokens.
NUCLEUS_CANDIDATES = 256


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens the nucleus keeps: from the top candidates where it provably lies within them
    (the candidates before the last already hold p), by a full sort for the other rows."""
    k = min(NUCLEUS_CANDIDATES, logits.size(-1))
    top, index = logits.softmax(dim=-1).topk(k)  # sorted, highest first
    above = top.cumsum(dim=-1) - top  # mass of the tokens ranked above each
    # above < p: the smallest set reaching p; the top token (above = 0) is always in it, as p > 0.
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, above < top_p)
    unsure = above[..., -1] < top_p  # the last candidate is kept, so tokens beyond it may be too
    if k < logits.size(-1) and unsure.any():
        keep[unsure] = _nucleus_by_sort(logits[unsure], top_p)
    return keep


def _nucleus_by_sort(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    # transformers' own formulation: sort ascending, drop the tail whose cumulative mass is <= 1 - p.
    sorted_logits, order = torch.sort(logits, descending=False)
    drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    drop_sorted[..., -1:] = False
    return ~drop_sorted.scatter(-1, order, drop_sorted)


def next_tokens(
    logits: torch.Tensor, sampling: Sampling, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """One token per row of last-position logits: argmax at temperature 0, else a seeded draw."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p).cpu()
    # Gumbel-max: argmax(logits + Gumbel noise) is an exact draw from softmax(logits), and filtered
    # tokens (-inf) are never drawn. torch.multinomial draws the same distribution but costs ~100x
    # more per row over a 50,257-token vocabulary on CPU. Each row's noise comes from the row's own
    # generator (CPU ones, see _generator): a prompt's draws do not depend on its batch.
    uniform = torch.stack([torch.rand(logits.size(-1), generator=g) for g in generators])
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


# -- when a row stops ----------------------------------------------------------------------------


def stop_reason(new: Sequence[int], max_new_tokens: int, tokenizer: Tokenizer | None = None) -> str | None:
    """Why a row with these new tokens is finished (eot, human, length), or None to go on.
    tokenizer: the model's (gptpipe.data.tokenizer.load_tokenizer); None is GPT-2's BPE."""
    tokenizer = tokenizer or Gpt2Bpe()
    if new and new[-1] == tokenizer.eot_id:
        return "eot"
    if STOP_TEXT in tokenizer.decode_bytes(list(new)):
        return "human"
    return "length" if len(new) >= max_new_tokens else None


def answer_of(new: Sequence[int], stopped: str, tokenizer: Tokenizer | None = None) -> Answer:
    """The response text: end-of-text removed, cut where "\\n\\nHuman:" begins (mid-token maybe)."""
    ids = list(new[:-1]) if stopped == "eot" else list(new)
    data = (tokenizer or Gpt2Bpe()).decode_bytes(ids)
    cut = data.find(STOP_TEXT)
    if cut >= 0:
        data = data[:cut]
    return Answer(data.decode("utf-8", errors="replace"), stopped, tuple(new))


# -- the decode loop -----------------------------------------------------------------------------


def generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    seeds: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
    on_token: Callable[[int, int], None] | None = None,
    tokenizer: Tokenizer | None = None,
) -> Generation:
    """Answer every prompt (token ids); seeds[i] seeds prompt i's sampling (default: 0, 1, 2 …).
    on_token(i, token), if given, hears each new token of prompt i as it is picked (`gptpipe serve`
    streams with it). tokenizer: the model's, for its end-of-text id and the text of its tokens
    (load_tokenizer(model folder)); None is GPT-2's BPE."""
    tokenizer = tokenizer or Gpt2Bpe()
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    room = _prompt_room(model, sampling)
    prompts = [list(p)[-room:] if len(p) > room else list(p) for p in prompts]  # cut from the left
    # Longest first: similar lengths share a batch (little padding), and the largest batch runs
    # first, so running out of memory shows at once rather than at the end.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[Answer | None] = [None] * len(prompts)
    model.eval()
    started = time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt") as bar:
        for at in range(0, len(order), batch_size):
            batch = order[at : at + batch_size]
            heard = None if on_token is None else (lambda row, token, batch=batch: on_token(batch[row], token))
            done = _generate_batch(model, [prompts[i] for i in batch], sampling, [seeds[i] for i in batch], heard, tokenizer)
            for i, answer in zip(batch, done, strict=True):
                answers[i] = answer
            bar.update(len(batch))
            made = sum(a.tokens for a in answers if a is not None)
            bar.set_postfix(tok_s=f"{made / (time.perf_counter() - started):.0f}")
    return Generation([a for a in answers if a is not None], time.perf_counter() - started)


def _prompt_room(model: PreTrainedModel, sampling: Sampling) -> int:
    room = model.config.max_position_embeddings - sampling.max_new_tokens
    if room < 1:
        raise UserError(
            f"max_new_tokens: {sampling.max_new_tokens} leaves no room for a prompt in the model's "
            f"{model.config.max_position_embeddings} positions"
        )
    return room


def _generate_batch(
    model: PreTrainedModel, prompts: list[list[int]], sampling: Sampling, seeds: list[int],
    on_token: Callable[[int, int], None] | None = None, tokenizer: Tokenizer | None = None,
) -> list[Answer]:
    tokenizer = tokenizer or Gpt2Bpe()
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompts, device, tokenizer.eot_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # pads take position 0; they are masked anyway
    generators = [_generator(s) if sampling.temperature > 0 else None for s in seeds]
    # logits_to_keep=1: only the last position's logits are needed, which spares the 50,257-wide
    # LM head on every prompt token.
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    # transformers 5.24 renamed past_key_values to cache (the old name goes in 5.40).
    cache, next_position = out.cache, positions[:, -1] + 1
    live = list(range(len(prompts)))  # batch rows still generating, as indices into prompts
    new: list[list[int]] = [[] for _ in prompts]
    answers: list[Answer | None] = [None] * len(prompts)
    while True:
        picked = next_tokens(out.logits[:, -1, :], sampling, [generators[r] for r in live]).tolist()
        keep = []
        for j, (row, token) in enumerate(zip(live, picked, strict=True)):
            new[row].append(token)
            if on_token is not None:
                on_token(row, token)
            reason = stop_reason(new[row], sampling.max_new_tokens, tokenizer)
            if reason is None:
                keep.append(j)
            else:
                answers[row] = answer_of(new[row], reason, tokenizer)
        if not keep:
            return [a for a in answers if a is not None]
        if len(keep) < len(live):  # drop finished rows: they would cost a forward pass for nothing
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_position = mask[index], next_position[index]
            live = [live[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        step_ids = torch.tensor([[new[r][-1]] for r in live], device=device)
        out = model(
            input_ids=step_ids, attention_mask=mask, position_ids=next_position[:, None],
            cache=cache, use_cache=True,
        )
        cache, next_position = out.cache, next_position + 1


def _left_pad(prompts: list[list[int]], device: torch.device, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _generator(seed: int) -> torch.Generator:
    # A CPU generator, so a seed gives the same draws whether the model runs on CPU or GPU.
    return torch.Generator().manual_seed(seed)


def prompt_seed(seed: int, key: str) -> int:
    """A per-prompt seed from the run's seed and the prompt's id: the same for every model, so
    the models answer each prompt with the same random numbers (a fairer comparison)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") >> 1


# -- the generate stage --------------------------------------------------------------------------


def sample_prompts(raw_test: Path, n: int, seed: int) -> list[dict[str, str]]:
    """A fixed sample of n test prompts (all if fewer), chosen by seed from the ids sorted."""
    with reading(raw_test, "Parquet table"):
        rows = pq.read_table(raw_test, columns=["id", "prompt"]).to_pylist()
    rows.sort(key=lambda r: r["id"])  # the sample does not depend on the file's row order
    picked = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i] for i in sorted(picked)]


def model_folder(name: str, models_root: Path) -> Path:
    """models/<name>; a missing one is an error naming the stage that makes it."""
    known = get_args(get_args(GenerateConfig.model_fields["models"].annotation)[0])
    if name not in known:
        raise UserError(f"generate: model {name!r} is unknown; known models: {', '.join(known)}")
    folder = models_root / name
    if not (folder / "config.json").is_file():
        raise UserError(
            f"generate: model {name!r}: {folder} holds no model; run the {name} stage first "
            f"(`dvc repro {name}`) or remove {name!r} from generate.models"
        )
    return folder


def generation_metrics(result: Generation) -> dict[str, Any]:
    n = len(result.answers)
    counts = Counter(a.stopped for a in result.answers)
    return {
        "tokens_per_s": round(result.tokens_per_s, 1),
        "seconds": round(result.seconds, 2),
        "mean_tokens": round(result.new_tokens / n, 2) if n else 0.0,
        "stopped": {reason: round(counts[reason] / n, 4) if n else 0.0 for reason in STOP_REASONS},
    }


def write_answers(path: Path, prompts: list[dict[str, str]], answers: list[Answer]) -> None:
    lines = [
        json.dumps({"id": p["id"], "prompt": p["prompt"], "response": a.text, "tokens": a.tokens,
                    "stopped": a.stopped}, ensure_ascii=False)
        for p, a in zip(prompts, answers, strict=True)
    ]
    path.write_text("".join(line + "\n" for line in lines))
