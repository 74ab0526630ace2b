"""The early-exit fine-tuning recipe (LayerSkip, Elhoushi et al. 2024) for a Hugging Face
Llama-family model, on the LM view of a ponder task.

Two ingredients, both through the model's own pieces:

- layer dropout rising with depth: in each training step, sample b skips layer l
  (0-based) with probability p_l = p_max · l / (L − 1) — layer 0 always runs, the last
  layer is skipped with p_max (a skipped layer passes its input on unchanged);
- an early-exit loss through the shared head: every layer's state is read out through the
  final norm + LM head, and

      loss = CE_L + s · Σ_{l<L} w_l · CE_l / Σ_{l<L} w_l,   w_l = l / L

  (CE_l: next-token cross-entropy of layer l's readout on the scored positions; weights
  rising with depth as LayerSkip's; ``exit_scale`` s = 0 turns it off).

The tiny model is built from a ``LlamaConfig`` with the task's vocabulary: ponder's
:class:`~ponder.tasks.Vocab` ids are the model's token ids (no tokenizer).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.hf.stack import LayerStack, require_transformers


def tiny_llama(*, vocab_size: int, layers: int = 4, d_model: int = 64, heads: int = 4,
               kv_heads: Optional[int] = None, max_len: int = 256, pad_id: int = 0,
               eos_id: Optional[int] = None, seed: int = 0) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` (untied head, FFN width 4·d_model)."""
    transformers = require_transformers()
    if layers < 1 or d_model < 1 or heads < 1 or d_model % heads or (d_model // heads) % 2:
        raise ConfigError(f"tiny Llama: layers={layers}, d_model={d_model}, heads={heads} "
                          "(d_model must split into heads of even width)")
    kv = heads if kv_heads is None else kv_heads
    if kv < 1 or heads % kv:
        raise ConfigError(f"tiny Llama: kv_heads={kv} must divide heads={heads}")
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        max_position_embeddings=max_len, pad_token_id=pad_id, bos_token_id=None,
        eos_token_id=eos_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg)


def dropout_rates(L: int, p_max: float) -> list[float]:
    """p_l = p_max · l / (L − 1), l = 0..L−1 (one layer: never dropped)."""
    if not 0.0 <= p_max < 1.0:
        raise ConfigError(f"layer dropout {p_max} must lie in [0, 1)")
    return [0.0 if L == 1 else p_max * l / (L - 1) for l in range(L)]


def recipe_loss(stack: LayerStack, tokens: torch.Tensor, targets: torch.Tensor, *,
                rates: list[float], exit_scale: float,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, list[float]]:
    """tokens, targets [B, T] (targets −100 where not scored) → (the recipe's loss, CE_l of
    every layer l = 1..L as floats). Right padding needs no mask: the model is causal."""
    h = stack.embed(tokens)
    B, T = tokens.shape
    positions = torch.arange(T, device=tokens.device)[None].expand(B, T)
    pe, mask = stack.rope(h, positions), stack.mask(0, T)
    ces = []
    for l, p in enumerate(rates):
        out = stack.layer(l, h, pe=pe, mask=mask, positions=positions, cache=None)
        if p > 0:
            keep = torch.rand(B, generator=generator) >= p
            h = torch.where(keep.to(h.device)[:, None, None], out, h)
        else:
            h = out
        if exit_scale > 0 or l == len(rates) - 1:
            logits = stack.readout(h)
            ces.append(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))
    L = len(rates)
    loss = ces[-1]
    if exit_scale > 0 and L > 1:
        w = [l / L for l in range(1, L)]
        loss = loss + exit_scale * sum(wi * c for wi, c in zip(w, ces[:-1])) / sum(w)
    return loss, [float(c.detach()) for c in ces]


def train_early_exit(model: nn.Module, task, vocab, *, steps: int, batch_size: int = 32,
                     lr: float = 3e-3, layer_dropout: float = 0.2, exit_scale: float = 1.0,
                     warmup: int = 20, seed: int = 0,
                     log: Callable[[str], None] = lambda s: None, log_every: int = 50) -> dict:
    """Fine-tune ``model`` with the recipe for ``steps`` steps on ``task``'s train split
    (batches ``0..steps−1``, deterministic); AdamW, linear warm-up then cosine decay.
    → {"losses": per step, "layer_ce": per-layer CE of the last step, "seconds"}."""
    from ponder.tasks import stream

    if steps < 1 or batch_size < 1 or not lr > 0 or exit_scale < 0:
        raise ConfigError("hf-train needs steps >= 1, batch_size >= 1, lr > 0, exit_scale >= 0")
    stack = LayerStack(model)
    rates = dropout_rates(stack.L, layer_dropout)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses: list[float] = []
    ces: list[float] = []
    t0 = time.perf_counter()
    for step, batch in zip(range(steps), stream(task, "train", vocab, batch_size=batch_size)):
        loss, ces = recipe_loss(stack, batch.tokens.to(stack.device), batch.targets.to(stack.device),
                                rates=rates, exit_scale=exit_scale, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss {losses[-1]:.4f}, per-layer CE "
                + " ".join(f"{c:.3f}" for c in ces))
    model.eval()
    return {"losses": losses, "layer_ce": ces, "rates": rates,
            "seconds": time.perf_counter() - t0}
