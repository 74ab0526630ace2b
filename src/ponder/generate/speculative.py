"""Speculative sampling (a small draft model) and self-speculation (the model's own first E
steps as the draft), with the exact acceptance rule.

One round (Leviathan et al. 2023; Chen et al. 2023): the draft proposes k tokens
d_1..d_k from its distributions q_1..q_k; the target scores them in ONE forward, giving
p_1..p_{k+1}; d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)) while every
earlier one was; at the first rejection the token is drawn from the residual
norm(max(0, p_i − q_i)); when all k are accepted a bonus token is drawn from p_{k+1}. The
emitted tokens are then distributed exactly as plain sampling from p (test: chi-square over
the first tokens). Both distributions come from the same :class:`~ponder.generate.sampling.Sampling`,
so with greedy one-hots the rule accepts exactly while the draft equals the target's arg-max
and otherwise emits that arg-max: the output is the plain greedy output (test).

Cache bookkeeping (batch 1 per sequence): every model's cache holds all emitted tokens but
the last (pending) ones; the target verifies ``[pending, d_1..d_k]`` in one chunk, and the
rejected drafts' columns are forgotten (``KVCache.truncate``).

Self-speculation (LayerSkip, Elhoushi et al. 2024; its recurrent analogue: fewer core steps)
shares ONE cache: the draft runs steps 1..E and reads out through the shared coda (in its own
draft slots) and head; the verifier continues the same columns from their step-E states
(``Decoder.deepen``), so the draft's keys/values of steps 1..E are reused, never recomputed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.generate.decode import Decoder
from ponder.generate.metrics import SpecStats
from ponder.generate.sampling import Sampling, draw


def accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
           generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact acceptance rule, batched.

    p [B, k+1, V] target distributions, q [B, k, V] draft distributions (float64), drafts
    [B, k] long (drawn from q) → (accepted count n [B] long in 0..k, the next token [B]: the
    residual draw at the first rejection, or the bonus draw from p_{k+1}).
    """
    B, k1, V = p.shape
    k = k1 - 1
    if k:
        pd = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
        qd = q.gather(-1, drafts[..., None]).squeeze(-1)
        u = torch.rand(B, k, dtype=torch.float64, generator=generator, device=p.device)
        ok = u * qd < pd  # u ∈ [0, 1): P(ok) = min(1, p/q) exactly (greedy: p ∈ {0, 1})
        n = ok.long().cumprod(1).sum(1)
    else:
        n = torch.zeros(B, dtype=torch.long, device=p.device)
    rows = torch.arange(B, device=p.device)
    p_n = p[rows, n]                                            # [B, V]
    q_n = torch.cat([q, torch.zeros_like(p[:, :1])], 1)[rows, n]  # 0 at the bonus position
    residual = (p_n - q_n).clamp(min=0.0)
    mass = residual.sum(-1, keepdim=True)
    # p = q at a rejected position cannot happen (acceptance is certain); guard rounding
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-300), p_n)
    return n, draw(residual, generator)


def accept_greedy(target_logits: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
    """:func:`accept` for greedy one-hot distributions, without building them: target_logits
    [k+1, V], drafts (k ids) → (accepted count, next token) — accept while the draft is the
    target's arg-max, then emit the arg-max (same result as the general rule; test)."""
    best = target_logits.argmax(-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return n, best[n]


@dataclass
class SpecResult:
    """Per sequence: the emitted ids (EOS included when written); the run's acceptance stats."""

    tokens: list[list[int]]
    stats: SpecStats


class _TwoModels:
    """A target and a separate draft model, each with its own cache."""

    def __init__(self, target: nn.Module, draft: nn.Module, capacity: int) -> None:
        if draft.vocab_size != target.vocab_size:
            raise ConfigError(f"the draft's vocabulary ({draft.vocab_size}) differs from the "
                              f"target's ({target.vocab_size})")
        self.T = Decoder(target, batch=1, capacity=capacity, count_flops=False)
        self.D = Decoder(draft, batch=1, capacity=capacity, count_flops=False)
        self.t_pending: int = -1
        self.d_pending: list[int] = []

    def prefill(self, prompt: list[int], stats: SpecStats) -> torch.Tensor:
        ids = torch.tensor([prompt], device=self.T.device)
        self.D.extend(ids)
        stats.target_forwards += 1
        stats.draft_forwards += 1
        return self.T.extend(ids).logits[0, -1]

    def first(self, y: int) -> None:
        self.t_pending, self.d_pending = y, [y]

    def draft(self, kk: int, sampling: Sampling, gen, stats: SpecStats, stop: float = 0.0,
              eos: Optional[int] = None):
        ds, qs = [], []
        self.d_cached = 0  # draft tokens in the draft's cache
        if kk == 0:
            return ds, qs
        self.d_c0 = self.D.cache.columns
        logits = self.D.extend(torch.tensor([self.d_pending], device=self.D.device)).logits[0, -1]
        stats.draft_forwards += 1
        for i in range(kk):
            if i and _unsure(logits, stop):
                break
            ds.append(_propose(logits, sampling, gen, qs))
            if ds[-1] == eos:  # accepted, it ends the sequence; rejected, so are its successors
                break
            if i < kk - 1:
                logits = self.D.extend(torch.tensor([[ds[-1]]], device=self.D.device)).logits[0, -1]
                stats.draft_forwards += 1
                self.d_cached += 1
        return ds, qs

    def verify(self, ds: list[int], stats: SpecStats) -> torch.Tensor:
        self.t_c0 = self.T.cache.columns
        stats.target_forwards += 1
        ids = torch.tensor([[self.t_pending] + ds], device=self.T.device)
        return self.T.extend(ids).logits[0]

    def settle(self, ds: list[int], n: int, y: int) -> None:
        self.T.cache.truncate(self.t_c0 + 1 + n)
        self.t_pending = y
        if not ds:  # the draft consumed nothing this round
            self.d_pending = self.d_pending + [y]
            return
        keep = min(n, self.d_cached)  # accepted drafts already in the draft's cache
        self.D.cache.truncate(self.d_c0 + len(self.d_pending) + keep)
        self.d_pending = ds[keep:n] + [y]


class LayerExitDraft:
    """The draft/verify rounds of self-speculation through one model and one cache: the draft
    is the model's first E steps (layers), the verifier the rest, run from the draft's depth-E
    states. A round opens the pending token's column and one column per draft token except
    an EOS draft (nothing after it is ever read) at depth E, then deepens all of them at once.

    Subclasses open columns (``_open``), deepen the opened ones (``_deepen``), count the
    columns in the cache (``_columns``) and cut the rejected ones (``settle``)."""

    E: int
    pending: list[int]
    c0: int   # the round's first column (the pending token's)

    def _open(self, ids: list[int], head: bool = True) -> Optional[torch.Tensor]:
        """Columns of ``ids`` at depth E → the draft's logits [V] after the last of them
        (None with ``head=False``: the draft's prediction there is not needed)."""
        raise NotImplementedError

    def _deepen(self) -> torch.Tensor:
        """The rest of the model over every column opened since the last call → logits [T, V]."""
        raise NotImplementedError

    def _columns(self) -> int:
        raise NotImplementedError

    def prefill(self, prompt: list[int], stats: SpecStats) -> torch.Tensor:
        self._open(prompt, head=False)  # the first token is the full model's
        stats.draft_forwards += 1
        stats.target_forwards += 1
        return self._deepen()[-1]

    def first(self, y: int) -> None:
        self.pending = [y]

    def draft(self, kk: int, sampling: Sampling, gen, stats: SpecStats, stop: float = 0.0,
              eos: Optional[int] = None):
        self.c0 = self._columns()
        # the verifier needs the pending column's step-E states; its draft logits only
        # when there is something to draft
        logits = self._open(self.pending, head=kk > 0)
        stats.draft_forwards += 1
        self.pending = []
        ds, qs = [], []
        for i in range(kk):
            if i and _unsure(logits, stop):
                break
            ds.append(_propose(logits, sampling, gen, qs))
            if ds[-1] == eos:  # accepted, it ends the sequence; rejected, so are its successors
                break
            # the draft is opened too (p_{i+1} follows it); its own draft logits only when
            # another draft follows
            logits = self._open([ds[-1]], head=i < kk - 1)
            stats.draft_forwards += 1
        return ds, qs

    def verify(self, ds: list[int], stats: SpecStats) -> torch.Tensor:
        """→ [len(ds) + 1, V], or [len(ds), V] after an EOS draft (no column after it)."""
        stats.target_forwards += 1
        return self._deepen()


class _SelfDraft(LayerExitDraft):
    """ponder's recurrent model: the draft is steps 1..E (own coda slots), the verifier E+1..N."""

    def __init__(self, model: nn.Module, exit_step: int, capacity: int) -> None:
        N = model.cfg.max_steps
        if not 1 <= exit_step <= N:
            raise ConfigError(f"exit_step={exit_step} must lie in 1..{N}")
        self.E = exit_step
        self.dec = Decoder(model, batch=1, capacity=capacity, count_flops=False)
        self.device = self.dec.device
        self.pending: list[int] = []
        self.deep: list[tuple[int, torch.Tensor]] = []   # (first column, step-E states [1, T, D])
        self.c0 = 0  # the round's first column (the pending token's)

    def _open(self, ids: list[int], head: bool = True) -> Optional[torch.Tensor]:
        ch = self.dec.extend(torch.tensor([ids], device=self.device), depth=self.E,
                             coda="draft", head=head)
        self.deep.append((ch.c0, ch.h))
        return ch.logits[0, -1] if head else None

    def _deepen(self) -> torch.Tensor:
        c0 = self.deep[0][0]
        h = self.deep[0][1] if len(self.deep) == 1 else torch.cat([h for _, h in self.deep], 1)
        self.deep = []
        return self.dec.deepen(h, c0, first=self.E + 1).logits[0]

    def _columns(self) -> int:
        return self.dec.cache.columns

    def settle(self, ds: list[int], n: int, y: int) -> None:
        self.dec.cache.truncate(self.c0 + 1 + n)  # the pending token and the accepted drafts
        self.pending = [y]


def _propose(logits: torch.Tensor, sampling: Sampling, gen, qs: list) -> int:
    """One draft token from the draft's logits [V]; its distribution goes to ``qs`` (not
    needed, and not built, when greedy)."""
    if sampling.greedy:
        return int(logits.argmax())
    qs.append(sampling.probs(logits))
    return int(draw(qs[-1], gen))


def _unsure(logits: torch.Tensor, stop: float) -> bool:
    """Stop drafting: the draft's top-1 probability (softmax of its raw logits [V]) is below
    ``stop`` (0: never). Only the number of drafts changes; the output law does not."""
    return stop > 0 and float(torch.softmax(logits.double(), -1).max()) < stop


def run_rounds(prompts: list[list[int]], *, k: int, max_new: int, eos: Optional[int],
               sampling: Sampling, generator: Optional[torch.Generator], make,
               draft_stop: float = 0.0) -> SpecResult:
    """The draft–verify loop over each prompt (batch 1), whatever drafts and verifies:
    ``make(capacity)`` returns an object with ``prefill(prompt, stats) → logits [V]``,
    ``first(y)``, ``draft(kk, sampling, generator, stats, stop) → (drafts, their
    distributions)``, ``verify(drafts, stats) → target logits [len(drafts)+1, V]`` and
    ``settle(drafts, accepted, y)`` (the two classes here; ``ponder.hf`` adds one for a
    Hugging Face model)."""
    if k < 0:
        raise ConfigError(f"k={k} draft tokens must be >= 0")
    if max_new < 1:
        raise ConfigError(f"max_new={max_new} must be at least 1")
    if not 0.0 <= draft_stop <= 1.0:
        raise ConfigError(f"draft_stop={draft_stop} must lie in [0, 1]")
    total = SpecStats(k=k)
    out: list[list[int]] = []
    for prompt in prompts:
        if not prompt:
            raise ConfigError("every prompt needs at least one token")
        stats = SpecStats(k=k)
        t0 = time.perf_counter()
        p = make(len(prompt) + max_new + k + 2)
        logits = p.prefill(prompt, stats)
        y = int(sampling.pick(logits, generator))
        emitted = [y]
        p.first(y)
        while len(emitted) < max_new and not (eos is not None and eos in emitted):
            kk = min(k, max_new - len(emitted) - 1)
            ds, qs = p.draft(kk, sampling, generator, stats, draft_stop, eos)
            target = p.verify(ds, stats)                       # [len(ds)+1, V]
            if target.shape[0] == len(ds):
                # the last draft is EOS and has no column: if every draft is accepted the
                # sequence ends there and the token drawn after it (from this stand-in row)
                # is cut off below
                target = torch.cat([target, target[-1:]])
            if sampling.greedy:
                n, y = accept_greedy(target, ds)
            else:
                pdist = sampling.probs(target)[None]
                qdist = torch.stack(qs)[None] if qs else pdist.new_zeros(1, 0, pdist.shape[-1])
                drafted = torch.tensor([ds], dtype=torch.long, device=pdist.device).view(1, len(ds))
                n_t, y_t = accept(pdist, qdist, drafted, generator)
                n, y = int(n_t[0]), int(y_t[0])
            if ds:
                stats.record(len(ds), n)
            p.settle(ds, n, y)
            emitted.extend(ds[:n] + [y])
        if eos is not None and eos in emitted:
            emitted = emitted[:emitted.index(eos) + 1]
        emitted = emitted[:max_new]
        stats.seconds = time.perf_counter() - t0
        stats.emitted_tokens = len(emitted)
        total.merge(stats)
        out.append(emitted)
    return SpecResult(tokens=out, stats=total)


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, prompts: list[list[int]], *,
                         k: int, max_new: int, eos: Optional[int], sampling: Sampling = Sampling(),
                         generator: Optional[torch.Generator] = None,
                         draft_stop: float = 0.0) -> SpecResult:
    """Speculative decoding of each prompt with ``draft`` proposing up to ``k`` tokens per
    round (fewer when its top-1 probability falls below ``draft_stop``)."""
    return run_rounds(prompts, k=k, max_new=max_new, eos=eos, sampling=sampling, draft_stop=draft_stop,
                generator=generator, make=lambda cap: _TwoModels(target, draft, cap))


@torch.no_grad()
def self_speculative_generate(model: nn.Module, prompts: list[list[int]], *, exit_step: int,
                              k: int, max_new: int, eos: Optional[int],
                              sampling: Sampling = Sampling(),
                              generator: Optional[torch.Generator] = None,
                              draft_stop: float = 0.0) -> SpecResult:
    """Self-speculative decoding: draft with core steps 1..``exit_step`` (layers of a stack,
    or loop steps of a recurrent core), verify with the rest, one shared cache."""
    return run_rounds(prompts, k=k, max_new=max_new, eos=eos, sampling=sampling, draft_stop=draft_stop,
                generator=generator, make=lambda cap: _SelfDraft(model, exit_step, cap))
