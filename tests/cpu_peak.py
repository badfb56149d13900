"""Peak resident memory of one real CPU training step, measured in a fresh process.

Run as `python tests/cpu_peak.py OBJECTIVE N_LAYER N_EMBD MICRO LENGTH [live]`: builds a GPT-2 of that
shape (vocab 50,257, scratch weights), takes one AdamW step of the project's objective (lm: SFT's
LanguageModelling; dpo: DirectPreference, chosen+rejected) on MICRO examples of LENGTH tokens, and
prints the process's peak RSS (ru_maxrss), its RSS before the step and its RSS with only the
libraries imported (before any tensor: what varies by install, not by job), in bytes.
"""

import resource
import sys

import psutil
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptpipe.data.batches import LMExample, PairExample, collate, collate_pairs
from gptpipe.train.dpo import DirectPreference
from gptpipe.train.objectives import LanguageModelling


def main(objective: str, n_layer: int, n_embd: int, micro: int, length: int, live: bool) -> None:
    imported = psutil.Process().memory_info().rss
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64), n_positions=length)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, config.vocab_size, (micro, length)).tolist()
    prompt = length // 4
    if objective == "lm":
        loss_fn, batch = LanguageModelling(model), collate([LMExample(row, prompt) for row in ids])
    else:
        loss_fn = DirectPreference(model, beta=0.1, reference="live" if live else "cached")
        pairs = [PairExample(row[:prompt], row[prompt:], row[prompt:][::-1], -1.0, -2.0) for row in ids]
        batch = collate_pairs(pairs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = psutil.Process().memory_info().rss
    for _ in range(2):  # the second step holds the optimizer state beside the activations
        loss, _ = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(peak, before, imported)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), len(a) > 5 and a[5] == "live")
