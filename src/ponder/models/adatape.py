"""AdaTape (Xue et al. 2023): adaptive computation through an elastic input sequence.

Instead of varying depth, every sample *reads* a variable number of extra "tape" tokens
from a bank and appends them to its input; a fixed-depth encoder then runs over
``[input ; tape]``. The number of tape tokens read is the sample's compute (reported in
``ModelOutput.steps``, broadcast over the sample's positions).

Bank (``bank=``)
    ``"input"``      the input re-tokenised another way: one bank entry per window of
                     ``ngram`` consecutive elements (stride 1), embedded by its own tables
                     (token embedding, and with ``ngram > 1`` a linear map of the window's
                     concatenated embeddings) plus its own position embedding of the
                     window start (only with ``positions="learned"``; with rotary or no
                     positions the entries carry none). Windows touching padding are not
                     candidates.
    ``"learnable"``  ``bank_size`` trainable vectors shared by every sample.

Reading (the Adaptive Tape Reader; vectorised over the batch, a loop over at most
``max_tape`` reading steps). The rule of the public code (google-research/scenic,
``scenic/projects/adatape/layers.py``: ``ACTFunction.act_step``). With ``LN`` one LayerNorm
shared by query and bank, ``q₀ = LN(query)`` where the query is the mean of the input
embeddings over the mask (``query="mean"``) or a learned CLS vector (``query="cls"``), and
``K = LN(bank)``, a sample still reading does at step t:

    s   = K q_t / √d
    J   = the ``per_step`` unused candidates with the highest scores (fewer when fewer are left)
    w   = softmax(s_J)                      over J only
    tape_t = Σ_{j∈J} w_j K_j                ONE merged tape token
    h  += max_j w_j                         running halting sum (the top weight)
    aux += 1 − Σ_j w_j²                     (Gini impurity of w; the paper's ``entropy`` loss)
    q_{t+1} = (q_t + tape_t) / 2            (the paper's ``complex_query`` update)
    mark all of J as used; stop after this step when h ≥ ``threshold``,
    or when ``max_tape`` tokens were read, or the bank is exhausted.

``per_step = 0`` (the default) takes the public code's candidate count
``⌊max_tape / threshold⌋`` (at least 1). With ``per_step = 1`` every step's weight is 1, so a
``threshold ≤ 1`` reads exactly one token. A sample whose halting sum first reaches the
threshold at step k reads exactly k tokens. The tape is ``[B, T, d]`` with ``T`` the most
tokens any sample of the batch read; a key-padding mask makes the unread slots invisible.
Tape tokens get a learned type embedding and, with ``tape_ffn=True``, their own FFN in every
layer (attention is shared).

Where we differ from that code, on purpose: it picks its candidates with ``jnp.take`` on the
flattened score matrix (every sample of a batch then reads sample 0's scores) and, when fewer
than ``per_step`` unused candidates are left, still softmaxes over ``per_step`` entries,
already used ones at their raw score; we take each sample's own scores and only unused
candidates. Its halting sum is clamped to the threshold on the halting step; we report the
unclamped sum (it only feeds a statistic).

Auxiliary loss (the paper's ATR loss with ``act_loss_type="entropy"``, which accumulates
``1 − Σ w²`` over every step a sample runs, including the halting step):

    aux_loss = aux_weight · mean_over_batch( Σ_{steps t read by the sample} (1 − Σ_j w_{t,j}²) )

It rewards peaked selection distributions, which push the halting sum up faster, i.e. it
is a compute penalty.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.models import register_model
from ponder.models.config import ModelConfig, ModelOutput
from ponder.models.kinds import FFNS
from ponder.models.layers import AttnContext, Block, BlockSpec, Embedding, Rotary, make_norm

IGNORE_INDEX = -100  # same value as ponder.tasks.IGNORE_INDEX (kept local: models do not import tasks)

BANKS = ("input", "learnable")
QUERIES = ("mean", "cls")
POSITIONS = ("learned", "rotary", "none")
NORMS = ("rmsnorm", "layernorm")


class TapeEncoderLayer(Block):
    """The model's pre-norm :class:`~ponder.models.layers.Block` over ``[input ; tape]``:
    attention is shared, the tape segment optionally takes its own FFN (same kind as the
    block's).

    h [B, L+T, D], ctx over the L+T tokens, n_input = L → [B, L+T, D].
    """

    def __init__(self, *, spec: BlockSpec, tape_ffn: bool) -> None:
        super().__init__(spec=spec)
        self.tape_mlp = (FFNS.cls(spec.ffn)(d_model=spec.d_model, d_ff=spec.d_ff,
                                            dropout=spec.dropout, knobs=spec.ffn_knobs)
                         if tape_ffn else None)

    def forward(self, h: torch.Tensor, ctx: AttnContext, n_input: int) -> torch.Tensor:
        B, T, D = h.shape
        h = h + self.drop(self.attn(self.norm1(h), ctx))
        if self.tape_mlp is None or T == n_input:
            return self.ffn_residual(h.reshape(B * T, D), ctx).view(B, T, D)
        # Each segment runs only its own FFN (no wasted FLOPs on the other one).
        x = self.norm2(h)
        rows = torch.arange(B * T, device=h.device).view(B, T)
        inp = self.ffn(x[:, :n_input].reshape(-1, D), ctx, rows[:, :n_input].reshape(-1))
        tape = self.tape_mlp(x[:, n_input:].reshape(-1, D), ctx, rows[:, n_input:].reshape(-1))
        return h + torch.cat([inp.view(B, n_input, D), tape.view(B, T - n_input, D)], dim=1)


class TapeReader(nn.Module):
    """The Adaptive Tape Reader (see the module docstring for the algorithm).

    forward(query [B, d], bank [B, M, d], bank_mask [B, M] bool) → dict with
      tape        [B, T, d]   merged tape tokens (zeros in unread slots), T ≤ max_tape
      tape_mask   [B, T] bool True at slots the sample read
      index       [B, T, k]   bank entries merged into each slot (−1 where none)
      weights     [B, T, M]   the step's softmax over its candidates (0 elsewhere)
      count       [B] long    tape tokens read
      halting     [B]         final halting sum
      aux         [B]         Σ over read steps of (1 − Σ w²)   (unweighted)
    """

    def __init__(self, *, d_model: int, max_tape: int, threshold: float, per_step: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)  # shared by query and keys, as in the reference
        self.max_tape = max_tape
        self.threshold = threshold
        self.per_step = per_step

    def forward(self, query: torch.Tensor, bank: torch.Tensor,
                bank_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        B, M, d = bank.shape
        keys = self.norm(bank)                                     # [B, M, d]
        q = self.norm(query)                                       # [B, d]
        used = ~bank_mask                                          # invalid entries count as used
        active = bank_mask.any(-1)
        halting = bank.new_zeros(B)
        aux = bank.new_zeros(B)
        count = torch.zeros(B, dtype=torch.long, device=bank.device)
        # the public code's candidate count: ⌊num_tape_tokens / threshold⌋
        per = self.per_step if self.per_step > 0 else max(1, int(self.max_tape // self.threshold))
        k = min(per, M)
        tapes, slot_masks, indices, all_weights = [], [], [], []
        for _ in range(self.max_tape):
            if not bool(active.any()):
                break
            scores = torch.einsum("bmd,bd->bm", keys, q) / math.sqrt(d)
            top_s, top_i = scores.masked_fill(used, float("-inf")).topk(k, dim=-1)   # [B, k]
            picked = ~used.gather(1, top_i) & active[:, None]                   # [B, k]
            # softmax over the picked candidates only (rows with none: finite, then zeroed)
            top_s = torch.where(picked, top_s, torch.where(picked.any(-1, keepdim=True),
                                                           float("-inf"), 0.0))
            top_w = torch.softmax(top_s, dim=-1) * picked                       # [B, k]
            chosen = keys.gather(1, top_i[..., None].expand(B, k, d))          # [B, k, d]
            token = (top_w[..., None] * chosen).sum(1)                         # [B, d]
            act = active.to(bank.dtype)
            aux = aux + act * (1.0 - (top_w * top_w).sum(-1))
            halting = halting + top_w.max(-1).values
            count = count + active.long()
            used = used | torch.zeros_like(used).scatter(1, top_i, picked)
            q = torch.where(active[:, None], 0.5 * (q + token), q)
            tapes.append(token)
            slot_masks.append(active)
            indices.append(torch.where(picked, top_i, torch.full_like(top_i, -1)))
            all_weights.append(bank.new_zeros(B, M).scatter(1, top_i, top_w))
            active = active & (halting < self.threshold) & ~used.all(-1)
        if not tapes:  # nothing to read anywhere (e.g. an all-padding batch)
            return dict(tape=bank.new_zeros(B, 0, d),
                        tape_mask=torch.zeros(B, 0, dtype=torch.bool, device=bank.device),
                        index=torch.zeros(B, 0, k, dtype=torch.long, device=bank.device),
                        weights=bank.new_zeros(B, 0, M), count=count, halting=halting, aux=aux)
        return dict(tape=torch.stack(tapes, 1), tape_mask=torch.stack(slot_masks, 1),
                    index=torch.stack(indices, 1), weights=torch.stack(all_weights, 1),
                    count=count, halting=halting, aux=aux)


class AdaTape(nn.Module):
    """An encoder whose input is extended by an adaptively read tape.

    forward(tokens [B, L] long, mask [B, L] bool) → ModelOutput with
      logits [B, L, V] at the input positions, steps [B, L] long = tape tokens the sample
      read, aux_loss = aux_weight · mean_b Σ_t (1 − Σ w²), extras: tape_len [B],
      tape_index [B, T, per_step], halting [B].
    """

    def __init__(self, *, vocab_size: int, d_model: int = 64, n_heads: int = 4, d_ff: int = 256,
                 n_layers: int = 2, max_tape: int = 8, bank: str = "input", bank_size: int = 32,
                 ngram: int = 1, threshold: float = 1.0, per_step: int = 0, tape_ffn: bool = True,
                 query: str = "mean", aux_weight: float = 0.01, positions: str = "learned",
                 max_len: int = 512, norm: str = "rmsnorm", dropout: float = 0.0,
                 spec: Optional[BlockSpec] = None) -> None:
        super().__init__()
        _check(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
               n_layers=n_layers, max_tape=max_tape, bank=bank, bank_size=bank_size, ngram=ngram,
               threshold=threshold, per_step=per_step, query=query, aux_weight=aux_weight,
               positions=positions, max_len=max_len, norm=norm, dropout=dropout)
        self.vocab_size, self.d_model = vocab_size, d_model
        self.bank_kind, self.query_kind, self.positions = bank, query, positions
        self.ngram, self.aux_weight, self.max_len = ngram, aux_weight, max_len

        self.embedding = Embedding(vocab_size=vocab_size, d_model=d_model, positions=positions,
                                   max_len=max_len)
        # Rotary positions rotate q/k over [(cls) ; input ; tape] (see encode).
        self.rope = Rotary(head_dim=d_model // n_heads) if positions == "rotary" else None
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02) if query == "cls" else None
        if bank == "learnable":
            self.bank = nn.Parameter(torch.randn(bank_size, d_model) * 0.02)
        else:  # the input re-tokenised: own embedding tables, n-gram windows
            self.bank_embed = nn.Embedding(vocab_size, d_model)
            self.bank_pos = nn.Embedding(max_len, d_model) if positions == "learned" else None
            self.bank_proj = nn.Linear(ngram * d_model, d_model) if ngram > 1 else None
        self.tape_type = nn.Parameter(torch.randn(d_model) * 0.02)
        self.reader = TapeReader(d_model=d_model, max_tape=max_tape, threshold=threshold,
                                 per_step=per_step)
        spec = spec or BlockSpec(d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm=norm,
                                 dropout=dropout)
        self.layers = nn.ModuleList(
            TapeEncoderLayer(spec=spec, tape_ffn=tape_ffn) for _ in range(n_layers))
        self.final_norm = make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    # -- pieces ---------------------------------------------------------------------------
    def embed_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] → [B, L, d] (token + learned position; ConfigError beyond max_len)."""
        return self.embedding(tokens)

    def make_bank(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidate tape tokens: bank [B, M, d], bank_mask [B, M] bool."""
        B, L = tokens.shape
        if self.bank_kind == "learnable":
            bank = self.bank.unsqueeze(0).expand(B, -1, -1)
            return bank, torch.ones(bank.shape[:2], dtype=torch.bool, device=tokens.device)
        n = self.ngram
        if L < n:  # no full window anywhere: an empty bank (the reader reads nothing)
            return (self.bank_embed.weight.new_zeros(B, 0, self.d_model),
                    torch.zeros(B, 0, dtype=torch.bool, device=tokens.device))
        e = self.bank_embed(tokens)                                         # [B, L, d]
        if n > 1:
            windows = e.unfold(1, n, 1)                                     # [B, L-n+1, d, n]
            e = self.bank_proj(windows.transpose(2, 3).reshape(B, L - n + 1, n * self.d_model))
        bank_mask = mask.unfold(1, n, 1).all(-1) if n > 1 else mask         # [B, L-n+1]
        if self.bank_pos is not None:
            e = e + self.bank_pos(torch.arange(e.shape[1], device=tokens.device))
        return e, bank_mask

    def make_query(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, d], mask [B, L] → query [B, d]."""
        if self.cls is not None:
            return self.cls.unsqueeze(0).expand(x.shape[0], -1)
        m = mask.to(x.dtype)[..., None]
        return (x * m).sum(1) / m.sum(1).clamp(min=1.0)

    def encode(self, x: torch.Tensor, mask: torch.Tensor, tape: torch.Tensor,
               tape_mask: torch.Tensor) -> torch.Tensor:
        """Run the encoder over ``[(cls) ; input ; tape]`` and read out the input positions.

        x [B, L, d], mask [B, L], tape [B, T, d], tape_mask [B, T] → logits [B, L, V].
        Unread tape slots (tape_mask False) are masked as keys, so their content cannot
        reach any other position.
        """
        B, L, _ = x.shape
        parts, masks = [x], [mask]
        if self.cls is not None:
            parts.insert(0, self.cls.expand(B, 1, -1))
            masks.insert(0, torch.ones(B, 1, dtype=torch.bool, device=x.device))
        n_input = L + (1 if self.cls is not None else 0)
        h = torch.cat(parts + [tape + self.tape_type], dim=1)
        ctx = AttnContext.build(torch.cat(masks + [tape_mask], dim=1), causal=False)
        if self.rope is not None:
            # Tape slot t sits at rotary position max_len + t whatever the (padded) input
            # length, so a sample's output does not depend on how much padding it got.
            T = tape.shape[1]
            cos, sin = self.rope.tables(self.max_len + 1 + T, x.device)
            rows = torch.cat([torch.arange(n_input, device=x.device),
                              self.max_len + 1 + torch.arange(T, device=x.device)])
            ctx.rope = (cos[rows], sin[rows])
        for layer in self.layers:
            h = layer(h, ctx, n_input)
        return self.head(self.final_norm(h[:, n_input - L:n_input]))

    # -- the contract ---------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> ModelOutput:
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        B, L = tokens.shape
        x = self.embed_input(tokens)
        bank, bank_mask = self.make_bank(tokens, mask)
        read = self.reader(self.make_query(x, mask), bank, bank_mask)
        logits = self.encode(x, mask, read["tape"], read["tape_mask"])
        steps = read["count"][:, None].expand(B, L).clone()
        aux = self.aux_weight * read["aux"].mean()
        return ModelOutput(logits=logits, steps=steps, aux_loss=aux, mask=mask,
                           flops=self.flops(mask, read["count"]),
                           extras=dict(tape_len=read["count"], tape_index=read["index"],
                                       halting=read["halting"].detach()))

    def flops(self, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """mask [B, L], count [B] tape tokens read → [B, L] float64 forward FLOPs per input token.

        Each input token runs every layer attending to the sample's real tokens plus its tape;
        the tape tokens' own layers are shared out among the sample's input tokens (the
        compute the sample chose to spend); the reader (≤ max_tape dot products with the bank)
        and the readout head are added per token."""
        real = mask.sum(1).to(torch.float64)                                  # [B]
        extra = 1.0 if self.cls is not None else 0.0                          # the CLS slot
        keys = real + extra + count.to(torch.float64)
        per_layer = sum(layer.flops_per_token(keys) for layer in self.layers)  # [B]
        share = per_layer * (count.to(torch.float64) + extra) / real.clamp(min=1.0)
        bank = float(self.reader.max_tape) * 2.0 * self.d_model * max(int(mask.shape[1]), 1)
        per_token = per_layer + share + 2.0 * self.d_model * self.vocab_size + bank / real.clamp(min=1.0)
        return mask.to(torch.float64) * per_token[:, None]

    def loss(self, out: ModelOutput, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy at ``targets != -100`` plus the (already weighted) aux loss."""
        scored = targets != IGNORE_INDEX
        if bool(scored.any()):
            ce = F.cross_entropy(out.logits[scored], targets[scored])
            acc = (out.logits[scored].argmax(-1) == targets[scored]).float().mean().item()
        else:
            ce, acc = out.logits.sum() * 0.0, float("nan")
        loss = ce + out.aux_loss
        tape = out.extras.get("tape_len")
        stats = {"loss": loss.item(), "ce": ce.item(), "aux": float(out.aux_loss.detach()),
                 "acc": acc, "tape": float(tape.float().mean()) if tape is not None else float("nan")}
        return loss, stats


def _check(**k: Any) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"adatape: {what}")

    for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_tape", "ngram",
                 "max_len"):
        need(isinstance(k[name], int) and k[name] >= 1, f"{name} must be an integer >= 1, got {k[name]!r}")
    need(isinstance(k["per_step"], int) and k["per_step"] >= 0,
         f"per_step must be an integer >= 0 (0: max_tape // threshold), got {k['per_step']!r}")
    need(k["d_model"] % k["n_heads"] == 0, f"d_model={k['d_model']} is not divisible by n_heads={k['n_heads']}")
    need(k["bank"] in BANKS, f"unknown bank {k['bank']!r} (choose from {', '.join(BANKS)})")
    need(k["query"] in QUERIES, f"unknown query {k['query']!r} (choose from {', '.join(QUERIES)})")
    need(k["positions"] in POSITIONS,
         f"positions={k['positions']!r} is not supported (choose from {', '.join(POSITIONS)})")
    need(k["norm"] in NORMS, f"unknown norm {k['norm']!r} (choose from {', '.join(NORMS)})")
    need(k["bank"] != "learnable" or (isinstance(k["bank_size"], int) and k["bank_size"] >= 1),
         f"bank_size must be an integer >= 1, got {k['bank_size']!r}")
    need(k["threshold"] > 0, f"threshold must be > 0, got {k['threshold']!r}")
    need(k["aux_weight"] >= 0, f"aux_weight must be >= 0, got {k['aux_weight']!r}")
    need(0.0 <= k["dropout"] < 1.0, f"dropout must lie in [0, 1), got {k['dropout']!r}")


# Knobs an AdaTape model takes beyond ModelConfig, with their defaults.
ADATAPE_KNOBS: dict[str, Any] = dict(n_layers=None, max_tape=8, bank="input", bank_size=32, ngram=1,
                                     threshold=1.0, per_step=0, tape_ffn=True, query="mean",
                                     aux_weight=0.01)


def build_adatape(model_cfg: ModelConfig, policy: Any = None, *, vocab_size: int) -> AdaTape:
    """Build an :class:`AdaTape` from a :class:`ModelConfig`.

    The shared fields (d_model, n_heads, d_ff, positions, max_len, norm, dropout) come from
    ``model_cfg``; the AdaTape knobs (``ADATAPE_KNOBS``) from a dict ``model_cfg.extras`` or
    ``model_cfg.adatape`` when the config has one. ``n_layers`` defaults to ``max_steps``
    (the number of layers of a stacked model). ``policy`` is ignored: AdaTape's halting is
    its own tape reader.
    """
    if model_cfg.causal:
        raise ConfigError("adatape is non-causal (its query pools the whole input); set causal=false")
    extra = dict(getattr(model_cfg, "extras", None) or getattr(model_cfg, "adatape", None) or {})
    unknown = sorted(set(extra) - set(ADATAPE_KNOBS))
    if unknown:
        raise ConfigError(f"adatape: unknown knob(s) {', '.join(unknown)} "
                          f"(known: {', '.join(ADATAPE_KNOBS)})")
    knobs = {**ADATAPE_KNOBS, **extra}
    if knobs["n_layers"] is None:
        knobs["n_layers"] = model_cfg.max_steps
    from ponder.models.recurrent import block_spec

    spec = block_spec(model_cfg)
    if spec.norm_layout != "pre":
        # its encoder layer has its own FFN call for the tape tokens (pre-norm only)
        raise ConfigError("adatape's encoder is pre-norm only: set model.norm_layout=pre")
    if spec.router != "none":
        raise ConfigError("adatape has no core to route (its encoder runs every token): set model.router.kind=none")
    if spec.residual != "add":
        raise ConfigError("adatape's encoder layer runs the plain residual: set model.residual=add")
    return AdaTape(vocab_size=vocab_size, d_model=model_cfg.d_model, n_heads=model_cfg.n_heads,
                   d_ff=model_cfg.d_ff, positions=model_cfg.positions, max_len=model_cfg.max_len,
                   norm=model_cfg.norm, dropout=model_cfg.dropout, spec=spec, **knobs)


register_model("adatape", build_adatape)
