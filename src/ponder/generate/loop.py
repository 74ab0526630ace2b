"""Plain cached generation: prefill the prompts, then one token per sample per call.

    out = generate(model, prompts, max_new=16, eos=vocab.stoi[EOS], sampling=Sampling())

The prompts (lists of ids, any lengths) are one batch: pads of the shorter prompts are holes
in the cache; a sample that wrote EOS (or ``max_new`` tokens) stops, and its later columns are
holes too. The prompt is processed at full depth; ``rule`` (per-token exits,
:mod:`ponder.generate.exits`) applies to the generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.generate.decode import Decoder, ExitRule
from ponder.generate.sampling import Sampling


@dataclass
class Generation:
    """Per sample: the generated ids (EOS included when written), the core steps and FLOPs of
    the forward that produced each of them (the prompt's last token for the first one), and
    with ``keep_logits`` the logits each was drawn from ([V] tensors)."""

    tokens: list[list[int]]
    steps: list[list[int]]
    flops: list[list[float]]
    logits: list[list[torch.Tensor]] = field(default_factory=list)
    forwards: int = 0  # model calls (the prefill included)


def pad_prompts(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (tokens [B, L] long right-padded with ``pad``, valid [B, L] bool)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), L), pad, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), L, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        tokens[b, :len(p)] = torch.tensor(p, dtype=torch.long)
        valid[b, :len(p)] = True
    return tokens, valid


def last_real(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] → [B, ...] at each sample's last real column of the chunk."""
    idx = (valid.long().cumsum(1) * valid).argmax(1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


@torch.no_grad()
def generate(model: nn.Module, prompts: list[list[int]], *, max_new: int, eos: Optional[int],
             sampling: Sampling = Sampling(), rule: Optional[ExitRule] = None,
             fill: str = "propagate", generator: Optional[torch.Generator] = None,
             keep_logits: bool = False, pad: int = 0, exit_prompt: bool = False,
             count_flops: bool = True) -> Generation:
    """Generate up to ``max_new`` tokens after each prompt (stopping at ``eos``);
    ``exit_prompt``: the exit rule applies to the prompt's tokens too (as a sequence-level
    forward under the same rule would); ``count_flops=False``: ``Generation.flops`` stays
    empty (timing runs: the count is bookkeeping the speculative loops do not do either)."""
    if max_new < 1:
        raise ConfigError(f"max_new={max_new} must be at least 1")
    B = len(prompts)
    device = model.readout.head.weight.device
    tokens, valid = pad_prompts(prompts, pad, device)
    dec = Decoder(model, batch=B, capacity=tokens.shape[1] + max_new, count_flops=count_flops)
    # a batch without pads is one block of real columns (the cache skips the mask arithmetic)
    chunk = dec.extend(tokens, None if bool(valid.all()) else valid,
                       rule=rule if exit_prompt else None, fill=fill)
    logits = last_real(chunk.logits, valid)
    steps = last_real(chunk.steps, valid)
    flops = last_real(chunk.flops, valid) if count_flops else None
    out = Generation([[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)],
                     [[] for _ in range(B)] if keep_logits else [], forwards=1)
    done = [False] * B
    for t in range(max_new):
        nxt = sampling.pick(logits, generator)
        ids, n_steps = nxt.tolist(), steps.tolist()  # one conversion per call, not per sample
        f_list = flops.tolist() if count_flops else None
        for b in range(B):
            if done[b]:
                continue
            out.tokens[b].append(ids[b])
            out.steps[b].append(n_steps[b])
            if count_flops:
                out.flops[b].append(f_list[b])
            if keep_logits:
                out.logits[b].append(logits[b].clone())
            done[b] = eos is not None and ids[b] == eos
        if t == max_new - 1 or all(done):
            break
        running = None if not any(done) else torch.tensor([[not d] for d in done], device=device)
        chunk = dec.extend(nxt[:, None], running, rule=rule, fill=fill)
        out.forwards += 1
        logits, steps = chunk.logits[:, 0], chunk.steps[:, 0]
        if count_flops:
            flops = chunk.flops[:, 0]
    return out
