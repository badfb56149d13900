"""Examples and length-bucketed batches with little padding.

A step is `batch_size` sequences split into micro-batches of `micro_batch_size`. Sequences of similar
length go together (sorted within large shuffled chunks), so padding stays small, while the order of
steps is still random. The plan is a pure function of (seed, epoch): a resumed run, or each DDP rank,
recomputes the same plan and needs no state beyond the step number.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pyarrow as pa
import torch

from gptpipe.data.turns import TurnMarkers, assistant_spans
from gptpipe.errors import UserError

IGNORE = -100  # label of a position the loss does not count (transformers' convention)
# Sorting happens within chunks of this many steps' sequences: larger chunks give less padding but
# less random step composition. At 50 steps the padding measured on the default data is under 5%.
BUCKET_STEPS = 50


@dataclass(frozen=True)
class LMExample:
    ids: list[int]
    first_target: int  # positions >= first_target are predicted and counted by the loss
    # [start, end) spans before first_target counted too: a prompt's earlier assistant turns.
    prompt_spans: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_targets(self) -> int:
        return len(self.ids) - self.first_target + sum(end - start for start, end in self.prompt_spans)

    def labels(self) -> list[int]:
        """The ids where the loss counts them, IGNORE elsewhere."""
        labels = [IGNORE] * self.first_target + self.ids[self.first_target :]
        for start, end in self.prompt_spans:
            labels[start:end] = self.ids[start:end]
        return labels

    @classmethod
    def from_labels(cls, ids: list[int], labels: Sequence[int]) -> LMExample:
        """labels() undone: the counted run that reaches the end is the response, earlier runs spans."""
        runs, start = [], None
        for i, label in enumerate([*labels, IGNORE]):
            if label != IGNORE and start is None:
                start = i
            elif label == IGNORE and start is not None:
                runs.append((start, i))
                start = None
        if runs and runs[-1][1] == len(labels):
            return cls(ids, runs[-1][0], tuple(runs[:-1]))
        return cls(ids, len(labels), tuple(runs))


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE where not counted
    weight: int  # what the loss is averaged over: counted target tokens
    n_tokens: int  # real (non-pad) tokens
    seq_lens: list[int]

    @property
    def head_positions(self) -> int:
        """Positions the LM head is applied at (for the FLOP count): the counted ones."""
        return self.weight

    def to(self, device: torch.device) -> Batch:
        if device.type != "cpu":
            for name in ("input_ids", "attention_mask", "labels"):
                setattr(self, name, getattr(self, name).to(device, non_blocking=True))
        return self


def lm_examples(
    table: pa.Table, loss_on: str, responses: Sequence[str], markers: TurnMarkers | None = None
) -> list[LMExample]:
    """Prompt + response sequences from a tokenized split.

    responses: which response columns make sequences ("chosen" for SFT; "chosen" and "rejected"
    for pretraining on dialogue text, as web text holds good and bad answers alike).
    loss_on: "response" counts the response tokens only; "assistant_turns" the response and the
    prompt's earlier assistant turns (found by `markers`, the tokenizer's encoding of HH's turn
    markers: gptpipe.data.turns); "all" every token after the first.
    """
    if loss_on not in ("response", "assistant_turns", "all"):  # "auto" is resolved by loss_targets.loss_on_for
        raise ValueError(f"loss_on={loss_on!r}: give response, assistant_turns or all")
    if loss_on == "assistant_turns" and markers is None:
        raise ValueError("loss_on='assistant_turns' needs the encoded turn markers")
    prompts = table.column("prompt_ids").to_pylist()
    examples = []
    for column in responses:
        for prompt, response in zip(prompts, table.column(f"{column}_ids").to_pylist(), strict=True):
            if response is None:  # no rejected response (SFT data): nothing to pretrain on
                continue
            first = 1 if loss_on == "all" else len(prompt)
            spans = assistant_spans(prompt, markers) if loss_on == "assistant_turns" else []
            examples.append(LMExample(ids=prompt + response, first_target=max(first, 1), prompt_spans=tuple(spans)))
    return examples


def collate(examples: Sequence[LMExample]) -> Batch:
    """Right-padded tensors; GPT-2's learned positions start at 0 in every row either way."""
    width = max(len(e) for e in examples)
    input_ids = torch.zeros((len(examples), width), dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(example.labels(), dtype=torch.long)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        weight=sum(e.n_targets for e in examples),
        n_tokens=sum(len(e) for e in examples),
        seq_lens=[len(e) for e in examples],
    )


# -- preference pairs: one prompt, a chosen and a rejected response (reward models, DPO) ----------


@dataclass(frozen=True)
class PairExample:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    # Reference-model log-probs of each response (DPO's cached reference), when computed.
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def __len__(self) -> int:
        # Tokens a step processes for this pair (the prompt goes through once per response): what
        # the length bucketing should balance.
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


@dataclass
class PairBatch:
    """Chosen sequences in rows [0, B), rejected in [B, 2B): one forward pass scores both."""

    input_ids: torch.Tensor  # (2B, T), right-padded prompt + response
    attention_mask: torch.Tensor  # (2B, T)
    labels: torch.Tensor  # (2B, T): response tokens; IGNORE on prompt and padding
    ref_logps: torch.Tensor | None  # (2B,) cached reference log-probs, same row order
    weight: int  # pairs: preference losses are means over pairs
    n_tokens: int
    seq_lens: list[int]
    response_tokens: int

    @property
    def n_pairs(self) -> int:
        return self.weight

    @property
    def head_positions(self) -> int:
        return self.response_tokens

    def to(self, device: torch.device) -> PairBatch:
        if device.type != "cpu":
            for name in ("input_ids", "attention_mask", "labels", "ref_logps"):
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, value.to(device, non_blocking=True))
        return self


# How to run what SFT-only data can feed: the one wording for every place that refuses it.
SFT_ALONE = ("to train SFT alone set reward.backend=none (or hf: a hub judge scores single responses) "
             "and run `dvc repro generate@sft`")


def pair_examples(table: pa.Table, ref: Sequence[tuple[float, float]] | None = None) -> list[PairExample]:
    """Preference pairs of a tokenized split, with the reference log-probs (chosen, rejected) if given."""
    columns = [table.column(c).to_pylist() for c in ("prompt_ids", "chosen_ids", "rejected_ids")]
    if single := sum(r is None for r in columns[2]):
        raise UserError(f"{single} of {table.num_rows} records have no rejected response (SFT data), and a trained "
                        f"judge and DPO learn from preference pairs; {SFT_ALONE}")
    if ref is not None and len(ref) != table.num_rows:
        raise ValueError(f"{len(ref)} reference log-prob pairs for {table.num_rows} pairs")
    return [
        PairExample(p, c, r, *(ref[i] if ref is not None else (None, None)))
        for i, (p, c, r) in enumerate(zip(*columns, strict=True))
    ]


def collate_pairs(examples: Sequence[PairExample]) -> PairBatch:
    sequences = [LMExample(e.prompt + e.chosen, len(e.prompt)) for e in examples]
    sequences += [LMExample(e.prompt + e.rejected, len(e.prompt)) for e in examples]
    lm = collate(sequences)
    cached = [e.ref_chosen for e in examples] + [e.ref_rejected for e in examples]
    ref = None if any(v is None for v in cached) else torch.tensor(cached, dtype=torch.float32)
    return PairBatch(
        input_ids=lm.input_ids, attention_mask=lm.attention_mask, labels=lm.labels, ref_logps=ref,
        weight=len(examples), n_tokens=lm.n_tokens, seq_lens=lm.seq_lens, response_tokens=lm.weight,
    )


def pad_width(batch: Batch | PairBatch, multiple: int) -> Batch | PairBatch:
    """The batch right-padded to a width that is a multiple of `multiple` (masked, not counted).

    Under torch.compile a body's graph carries guards on how its dynamic width divides (inductor
    picks aligned kernels for widths divisible by 2, 4, 8, 16): 54, 169 and 412 wide batches each
    compiled a new graph on an H200. Rounding every width up to a multiple of 16 keeps one graph.
    Right padding changes nothing before it: attention is causal and the pads are masked.
    """
    width = batch.input_ids.shape[1]
    extra = -width % multiple
    if not extra:
        return batch
    pad = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE}
    wider = {name: torch.nn.functional.pad(getattr(batch, name), (0, extra), value=v) for name, v in pad.items()}
    return replace(batch, **wider)


def epoch_plan(
    lengths: Sequence[int], batch_size: int, micro_batch_size: int, seed: int, epoch: int
) -> list[list[list[int]]]:
    """Steps of one epoch; each step a list of micro-batches of example indices.

    The incomplete last step is dropped so every step has the same number of sequences.
    """
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * BUCKET_STEPS
    steps = []
    for start in range(0, len(order) - batch_size + 1, chunk):
        block = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        for s in range(0, len(block) - batch_size + 1, batch_size):
            step = block[s : s + batch_size]
            steps.append([step[m : m + micro_batch_size] for m in range(0, batch_size, micro_batch_size)])
    rng.shuffle(steps)
    return steps


class StepPlan:
    """Step number → micro-batches of examples (LMExample or PairExample), across epochs."""

    def __init__(self, examples: Sequence[LMExample | PairExample], batch_size: int, micro_batch_size: int, seed: int):
        if len(examples) < batch_size:
            raise UserError(
                f"batch_size: {batch_size} exceeds the {len(examples)} training examples; lower the "
                "stage's batch_size and micro_batch_size in params.yaml, or give it more data"
            )
        self.examples = examples
        self.batch_size, self.micro_batch_size, self.seed = batch_size, micro_batch_size, seed
        self.lengths = [len(e) for e in examples]
        self._epoch, self._steps = -1, []
        # Every epoch has the same number of steps: only the order changes.
        self.steps_per_epoch = len(epoch_plan(self.lengths, batch_size, micro_batch_size, seed, 0))

    def micro_batches(self, step: int) -> list[list[LMExample]]:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._steps = epoch_plan(
                self.lengths, self.batch_size, self.micro_batch_size, self.seed, epoch
            )
            self._epoch = epoch
        return [[self.examples[i] for i in micro] for micro in self._steps[index]]


def eval_sample(examples: Sequence, n: int, seed: int) -> list:
    """A fixed random sample (the same at every evaluation), sorted by length to pad little."""
    return sorted((examples[i] for i in eval_indices(len(examples), n, seed)), key=len)


def eval_indices(n_items: int, n: int, seed: int) -> list[int]:
    """Which of n_items the fixed evaluation sample of n holds (eval_sample's draw)."""
    return random.Random(f"eval-{seed}").sample(range(n_items), min(n, n_items))
