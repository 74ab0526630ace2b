"""Tiny causal models and LM-view prompts for the generation tests (float64, eval mode)."""

from __future__ import annotations

import torch

import ponder.models as M
import ponder.tasks as T
from ponder.models.config import ModelConfig
from ponder.tasks.lm import EOS, LMView
from ponder.tasks.vocab import Vocab


def tiny_model(vocab_size: int, *, kind: str = "recurrent", seed: int = 0, policy="fixed",
               **cfg) -> torch.nn.Module:
    """A random causal model in float64, eval mode (dense execution: the reference path)."""
    torch.manual_seed(seed)
    values = dict(kind=kind, d_model=16, n_heads=2, d_ff=32, max_steps=3, causal=True,
                  positions="learned", execution="dense", prelude=1, coda=1, max_len=128)
    values.update(cfg)
    return M.build(ModelConfig(**values), policy, vocab_size=vocab_size).double().eval()


def lm_prompts(name: str, n: int, split: str = "valid", **knobs):
    """(vocab, prompts as id lists, eos id) of the first n examples of a task's LM view."""
    task = LMView(T.get(name, **knobs))
    vocab = Vocab.for_task(task)
    prompts = [vocab.encode(task.prompt(split, i)[0]) for i in range(n)]
    return vocab, prompts, vocab.stoi[EOS]
