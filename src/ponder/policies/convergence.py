"""Training-free convergence exits on the recurrent core (Huginn/Raven, second-order, fixed point).

A token exits once its recurrence has *settled*: a parameter-free test on successive states
or successive per-step readouts. The family shares three knobs:

- ``min_steps``: the test is checked only after steps n ≥ min_steps;
- ``check_every``: … and only at n = min_steps, min_steps + check_every, … (Huginn's
  ``check_criterion_every_n_steps``). The running statistics (previous distribution,
  entropy, stability counter, hits) are updated after *every* step, checked or not;
- ``train_on``: ``per_exit`` trains with the weighted per-exit losses ``Σ_n w_n·CE(y^n)``,
  w_n ∝ n (the LAC/CALM/PaBEE objective: every exit is usable); ``final`` trains only the
  readout after N steps, as a fixed-depth model (Huginn's recipe: the exit is applied to a
  model that never trained for it; combine with ``run.depth`` randomisation).

In training no token halts (every token runs N steps) and ``halt_step`` records where the
test *would* stop it; in eval the token freezes there (:class:`~ponder.policies._per_exit.PerExitPolicy`).
Per token, one-way, causal: every test reads only token t's own states and readouts.

The tests (after step n; ``h^0`` is the prelude output, ``p^n`` the softmax of the step-n
readout, everything in float64 and detached):

========================  =============================================================  ========
policy                    exits when                                                     default
========================  =============================================================  ========
``kl_exit``               KL(p^{n−1} ‖ p^n) < thr, with p^0 uniform                      1e-3
``minp_kl_exit``          the same KL on min-p filtered distributions (probabilities     1e-5
                          below ``min_p``·max set to 1/V, renormalised)
``entropy_exit``          |H(p^n) − H(p^{n−1})| < thr (never at n = 1: no H^0)           1e-3
``latent_exit``           ‖h^n − h^{n−1}‖ / ‖h^n‖ < thr                                  0.15 (*)
``cosine_exit``           1 − cos(h^n, h^{n−1}) < thr                                    1e-3
``argmax_exit``           the readout's argmax unchanged for ≥ ``patience`` steps         5
``accel_exit``            a_n = ‖Δ^n − Δ^{n−1}‖ / ‖h^n‖ < thr on ``hits`` consecutive     0.01
                          steps, Δ^n = h^n − h^{n−1} (a_1 undefined: no hit)
``fixed_point_exit``      r_m = ‖h^m − h^{m−1}‖ / √D < thr for the last ``window`` steps  0.01
========================  =============================================================  ========

A zero state counts as "no change" only when the difference is zero too (the norms are
floored at 1e-12, never NaN).

(*) Huginn's ``latent-diff`` threshold is 0.03, but there the state is the output of a
sandwich-normed core (its norm is bounded) run for ~32 loops. Here ``h^n`` is the engine's
un-normalised residual stream: on trained models it keeps moving by a roughly constant
amount per step (‖h^n − h^{n−1}‖/√D ≈ 1.2–2 at every n up to 2N on list_rank, d_model 64,
N 8) while ‖h^n‖ grows about linearly, so the relative change decays like 1/n (median 0.17
at n = N = 8) and 0.03 is reached only around n ≈ 30: the exit never fired (every token
ran N). 0.15 is where, on that trained fixed-depth list_rank model, the exit first saves
steps at unchanged accuracy (docs/results/frontier.md, ``benchmarks/latent_scale.py``;
on sudoku's d_model 32, N 6 model it still does not fire: sweep it per model).
The rule itself is Huginn's; only the default differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ponder.policies._per_exit import PerExitPolicy, wide
from ponder.policies.base import View, knob
from ponder.policies.halting import masked_mean, scored_mask, token_ce
from ponder.policies.registry import register

TRAIN_MODES = ("per_exit", "final")
HUGINN = "Geiping, McLeish, Jain, Kirchenbauer, Singh, Bartoldson, Kailkhura, Bhatele, Goldstein 2025, " \
         "Scaling up Test-Time Compute with Latent Reasoning (Huginn), arXiv:2502.05171"
NORM_FLOOR = 1e-12


@dataclass(frozen=True)
class SettleKnobs:
    """The knobs every convergence exit has (its own test's knobs come first in a subclass)."""

    min_steps: int = knob(1, 1, 4096, "check the test only after steps n ≥ min_steps")
    check_every: int = knob(1, 1, 4096, "check at n = min_steps, min_steps + check_every, …")
    train_on: str = knob("per_exit", choices=TRAIN_MODES,
                      help="per_exit (weighted per-exit losses) | final (readout after N only, as fixed depth)")


def checked(n: int, min_steps: int, check_every: int) -> bool:
    """Whether the test is checked after step n (1-based)."""
    return n >= min_steps and (n - min_steps) % check_every == 0


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """[B, L, V] → float64 log-softmax [B, L, V] (detached)."""
    return torch.log_softmax(wide(logits).double(), -1)


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ p (log p − log q): [..., V] × [..., V] → [...] (0·log 0 = 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def minp_log_probs(logits: torch.Tensor, ratio: float) -> torch.Tensor:
    """Min-p filtering: probabilities below ``ratio``·max are set to 1/V, then renormalised."""
    p = log_probs(logits).exp()
    V = p.shape[-1]
    low = p < ratio * p.max(-1, keepdim=True).values
    p = torch.where(low, torch.full_like(p, 1.0 / V), p)
    return (p / p.sum(-1, keepdim=True)).log()


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p: [..., V] → [...]."""
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖₂ over the last dim, float64 and detached: [..., D] → [...]."""
    return wide(x).double().norm(dim=-1)


def difference(h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """h − prev in float64, detached: [B, L, D] × [B, L, D] → [B, L, D]."""
    return wide(h).double() - wide(prev).double()


def relative_change(h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """‖h − prev‖ / ‖h‖ per token: [B, L, D] × [B, L, D] → [B, L]."""
    return norm(difference(h, prev)) / norm(h).clamp_min(NORM_FLOOR)


def cosine_distance(h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """1 − cos(h, prev) per token: → [B, L] in [0, 2]."""
    a, b = wide(h).double(), wide(prev).double()
    cos = (a * b).sum(-1) / (norm(a).clamp_min(NORM_FLOOR) * norm(b).clamp_min(NORM_FLOOR))
    return 1.0 - cos


class ConvergenceExit(PerExitPolicy):
    """Base of the family: a subclass computes :meth:`settled` after every step (updating its
    running statistics in ``memo``); this class applies ``min_steps`` / ``check_every`` and the
    training objective."""

    kinds = ("recurrent",)
    paper = HUGINN

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        """[B, L] bool: the test holds after step ``view.n`` (called after every step)."""
        raise NotImplementedError

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        ok = self.settled(memo, view)
        if not checked(view.n, self.knobs.min_steps, self.knobs.check_every):
            return torch.zeros_like(view.mask)
        return ok

    # -- the objective ---------------------------------------------------------------------
    def needs_step_logits(self, training: bool) -> bool:
        return training and self.knobs.train_on == "per_exit"

    def loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.knobs.train_on == "final":
            return masked_mean(token_ce(out.logits, targets), scored_mask(targets)), {}
        return super().loss(out, targets)


# -- distribution tests -------------------------------------------------------------------------
@dataclass(frozen=True)
class KlKnobs(SettleKnobs):
    threshold: float = knob(1e-3, 0.0, 1e3, "exit when KL(p^{n−1} ‖ p^n) < threshold")


@register
class KlExit(ConvergenceExit):
    name = "kl_exit"
    Knobs = KlKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["log_p"] = None  # p^0 = uniform, made once the vocabulary size is known
        return memo

    def distribution(self, view: View) -> torch.Tensor:
        return log_probs(view.logits())

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        log_p = self.distribution(view)
        prev = memo["log_p"]
        if prev is None:
            prev = torch.full_like(log_p, -math.log(log_p.shape[-1]))
        memo["log_p"] = log_p
        return kl(prev, log_p) < self.knobs.threshold


@dataclass(frozen=True)
class MinpKlKnobs(SettleKnobs):
    threshold: float = knob(1e-5, 0.0, 1e3, "exit when the min-p filtered KL < threshold")
    min_p: float = knob(0.1, 0.0, 1.0, "probabilities below min_p·max are set to 1/V before the KL")


@register
class MinpKlExit(KlExit):
    name = "minp_kl_exit"
    Knobs = MinpKlKnobs

    def distribution(self, view: View) -> torch.Tensor:
        return minp_log_probs(view.logits(), self.knobs.min_p)


@dataclass(frozen=True)
class EntropyKnobs(SettleKnobs):
    threshold: float = knob(1e-3, 0.0, 1e3, "exit when |H^n − H^{n−1}| < threshold")


@register
class EntropyExit(ConvergenceExit):
    name = "entropy_exit"
    Knobs = EntropyKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["entropy"] = None
        return memo

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        h = entropy(log_probs(view.logits()))
        prev, memo["entropy"] = memo["entropy"], h
        if prev is None:  # no entropy before step 1: the test cannot hold
            return torch.zeros_like(view.mask)
        return (h - prev).abs() < self.knobs.threshold


@dataclass(frozen=True)
class ArgmaxKnobs(SettleKnobs):
    patience: int = knob(5, 1, 4096, "exit once the argmax stayed unchanged for this many steps")


@register
class ArgmaxExit(ConvergenceExit):
    """Huginn's ``argmax-stability``: PaBEE's counter (``patience.py``) with the family's
    ``min_steps`` / ``check_every`` gate and training switch."""

    name = "argmax_exit"
    Knobs = ArgmaxKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["pred"], memo["count"] = None, torch.zeros_like(view.mask, dtype=torch.long)
        return memo

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        pred = view.logits().detach().argmax(-1)
        if memo["pred"] is not None:
            memo["count"] = torch.where(pred == memo["pred"], memo["count"] + 1, 0)
        memo["pred"] = pred
        return memo["count"] >= self.knobs.patience


# -- state tests --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatentKnobs(SettleKnobs):
    # not Huginn's 0.03: this engine's state is un-normalised and drifts (module docstring, (*))
    threshold: float = knob(0.15, 0.0, 1e3, "exit when ‖h^n − h^{n−1}‖ / ‖h^n‖ < threshold")


@register
class LatentExit(ConvergenceExit):
    name = "latent_exit"
    Knobs = LatentKnobs

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        return relative_change(view.h, view.prev) < self.knobs.threshold


@dataclass(frozen=True)
class CosineKnobs(SettleKnobs):
    threshold: float = knob(1e-3, 0.0, 2.0, "exit when 1 − cos(h^n, h^{n−1}) < threshold")


@register
class CosineExit(ConvergenceExit):
    name = "cosine_exit"
    Knobs = CosineKnobs

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        return cosine_distance(view.h, view.prev) < self.knobs.threshold


@dataclass(frozen=True)
class AccelKnobs(SettleKnobs):
    threshold: float = knob(0.01, 0.0, 1e3, "a hit: ‖Δ^n − Δ^{n−1}‖ / ‖h^n‖ < threshold")
    hits: int = knob(2, 1, 4096, "exit after this many consecutive hits (the two-hit check)")


@register
class AccelExit(ConvergenceExit):
    name = "accel_exit"
    paper = ("Pappone et al. 2025, second-order exit for looped/recurrent-depth models "
             "(acceleration with a two-hit check), arXiv:2509.23314")
    Knobs = AccelKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["delta"], memo["run"] = None, torch.zeros_like(view.mask, dtype=torch.long)
        return memo

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        delta = difference(view.h, view.prev)
        prev, memo["delta"] = memo["delta"], delta
        if prev is None:  # no Δ^0: no acceleration at n = 1
            hit = torch.zeros_like(view.mask)
        else:
            hit = norm(delta - prev) / norm(view.h).clamp_min(NORM_FLOOR) < self.knobs.threshold
        memo["run"] = torch.where(hit, memo["run"] + 1, 0)
        return memo["run"] >= self.knobs.hits


@dataclass(frozen=True)
class FixedPointKnobs(SettleKnobs):
    threshold: float = knob(0.01, 0.0, 1e3, "residual ‖h^n − h^{n−1}‖ / √D below this counts as settled")
    window: int = knob(1, 1, 4096, "exit when the residual stayed below threshold for this many steps")


@register
class FixedPointExit(ConvergenceExit):
    name = "fixed_point_exit"
    paper = ("Fixed-point residual halting: EqR (Huang, Geng, Kolter 2026, arXiv:2605.21488) "
             "convergence window; FPRM (arXiv:2606.18206)")
    Knobs = FixedPointKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["run"] = torch.zeros_like(view.mask, dtype=torch.long)
        return memo

    def settled(self, memo: dict, view: View) -> torch.Tensor:
        residual = norm(difference(view.h, view.prev)) / math.sqrt(view.h.shape[-1])
        memo["run"] = torch.where(residual < self.knobs.threshold, memo["run"] + 1, 0)
        return memo["run"] >= self.knobs.window
