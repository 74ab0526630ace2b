"""Shared halting math: masked means, per-token losses, distributions over steps, priors, KL.

Everything here is a pure function of tensors (no modules), so policies share one
implementation and the tests can gradcheck it and compare it with slow loops.
Distributions are ``[..., N]`` over halting steps n = 1..N.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOG_FLOOR = -1.0e4  # log-probabilities are floored here so 0·log 0 never becomes NaN
THRESHOLD_TOL = 1e-6  # cumulative p counts as reaching a threshold within this (float sums)


def scored_mask(targets: torch.Tensor) -> torch.Tensor:
    """targets [B, L] → [B, L] bool, True where a target is scored."""
    return targets != IGNORE_INDEX


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, L]`` over ``mask [B, L]`` (0 when the mask is empty, never NaN)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy: logits [..., V], targets [...] → [...] (0 where ignored)."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in at least float32
        logits = logits.float()
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return flat.view(targets.shape)


def step_ce(step_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """step_logits [B, L, N, V], targets [B, L] → per-step losses [B, L, N]."""
    N = step_logits.shape[2]
    return token_ce(step_logits, targets[:, :, None].expand(-1, -1, N))


def expected_step_loss(step_logits: torch.Tensor, dist: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
    """``Σ_n p(n)·L_n`` per token, averaged over scored tokens (the expected-loss objective).

    The per-step loss is weighted by p *before* any averaging: averaging the cross-entropy
    first (a known bug of one public implementation) destroys the per-step weighting.
    """
    per_token = (dist * step_ce(step_logits, targets)).sum(-1)
    return masked_mean(per_token, scored_mask(targets))


def threshold_step(dist: torch.Tensor, threshold: float) -> torch.Tensor:
    """First n (1-based) with cumulative p ≥ threshold; dist [..., N] → [...] long (≤ N)."""
    N = dist.shape[-1]
    reached = dist.cumsum(-1) >= threshold - THRESHOLD_TOL
    first = reached.float().argmax(-1)  # argmax returns the first maximal index
    first = torch.where(reached.any(-1), first, torch.full_like(first, N - 1))
    return first + 1


def expected_steps(dist: torch.Tensor) -> torch.Tensor:
    """dist [..., N] → Σ_n n·p(n), [...]."""
    n = torch.arange(1, dist.shape[-1] + 1, dtype=dist.dtype, device=dist.device)
    return (dist * n).sum(-1)


# -- conditional ("PonderNet-style") halting ------------------------------------------------
def conditional_log_step(z: torch.Tensor, log_survive: torch.Tensor, last: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of conditional halting in log space.

    z [...]  halting logit at this step (λ_n = σ(z)); ``last`` forces λ_N = 1.
    log_survive [...]  log ∏_{j<n} (1 − λ_j).
    → (log p(n), log ∏_{j≤n} (1 − λ_j)); logsigmoid keeps ±50 logits finite.
    """
    if last:
        return log_survive, torch.full_like(log_survive, LOG_FLOOR)
    log_p = (log_survive + F.logsigmoid(z)).clamp_min(LOG_FLOOR)
    return log_p, (log_survive + F.logsigmoid(-z)).clamp_min(LOG_FLOOR)


def conditional_log_dist(z: torch.Tensor) -> torch.Tensor:
    """Halting logits z [..., N] → log p [..., N] with p(n) = λ_n ∏_{j<n}(1 − λ_j), λ_N = 1."""
    N = z.shape[-1]
    log_survive = torch.zeros_like(z[..., 0])
    out = []
    for n in range(N):
        log_p, log_survive = conditional_log_step(z[..., n], log_survive, n == N - 1)
        out.append(log_p)
    return torch.stack(out, -1)


# -- priors and the compute regulariser -------------------------------------------------------
def geometric_log_prior(lambda_p: float, max_steps: int, *, dtype=torch.float32,
                        device=None) -> torch.Tensor:
    """log of Geometric(λ_p) truncated at N and renormalised: p_G(n) ∝ (1−λ_p)^{n−1} λ_p → [N]."""
    n = torch.arange(max_steps, dtype=torch.float64)
    if lambda_p >= 1.0:
        logits = torch.where(n == 0, 0.0, -math.inf)
    else:
        logits = n * math.log1p(-lambda_p) + math.log(lambda_p)
    return torch.log_softmax(logits, 0).clamp_min(LOG_FLOOR).to(dtype=dtype, device=device)


def uniform_log_prior(max_steps: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """log of the uniform prior over 1..N → [N]. KL(p ‖ uniform) = log N − H(p): an entropy
    bonus (Ouro's stage-I objective ``Σ p L − β H(p)`` up to a constant); a geometric prior
    under-trains the late steps."""
    return torch.full((max_steps,), -math.log(max_steps), dtype=dtype, device=device)


PRIORS = ("geometric", "uniform")


def kl_to_prior(log_p: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ prior) per token: log_p [..., N], log_prior [N] → [...].

    The direction is KL(p ‖ prior) = Σ p (log p − log prior) (one public implementation has it
    reversed). Both sides are floored in log space, so a p(n) that underflows to 0 adds 0,
    never NaN.
    """
    log_p = log_p.clamp_min(LOG_FLOOR)
    return (log_p.exp() * (log_p - log_prior.clamp_min(LOG_FLOOR))).sum(-1)


def compute_regulariser(log_p: torch.Tensor, mask: torch.Tensor, *, beta: float,
                        lambda_p: float, prior: str = "geometric") -> torch.Tensor:
    """β · mean over real tokens of KL(p ‖ truncated Geometric(λ_p)) — shared by PonderNet and
    both ANIRA policies so that only the timing of the decision differs between them.
    ``prior="uniform"``: KL(p ‖ uniform over 1..N) instead (``λ_p`` unused)."""
    if prior == "uniform":
        prior_log = uniform_log_prior(log_p.shape[-1], dtype=log_p.dtype, device=log_p.device)
        return beta * masked_mean(kl_to_prior(log_p, prior_log), mask)
    prior = geometric_log_prior(lambda_p, log_p.shape[-1], dtype=log_p.dtype, device=log_p.device)
    return beta * masked_mean(kl_to_prior(log_p, prior), mask)


# -- cumulative (ACT-style) halting -------------------------------------------------------------
def act_step(h: torch.Tensor, cum: torch.Tensor, done: torch.Tensor, last: bool, eps: float,
             strict: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of ACT's cumulative halting (Graves 2016; ``strict`` is UT's ``>`` test).

    h [...] halting unit of this step in (0, 1); cum [...] Σ of earlier units of a running
    token; done [...] bool tokens that halted before. A running token halts at the first n
    with cum + h ≥ 1 − ε (or at the last step); it then gets the remainder R = 1 − cum.
    → (p(n), cum after the step, halt_now, R where halting now else 0), each [...].
    """
    running = ~done
    total = cum + h
    reach = total > 1 - eps if strict else total >= 1 - eps
    halt_now = running & (reach | last)
    remainder = torch.where(halt_now, 1 - cum, torch.zeros_like(cum))
    p = torch.where(halt_now, remainder, torch.where(running, h, torch.zeros_like(h)))
    cum = torch.where(running & ~halt_now, total, cum)
    return p, cum, halt_now, remainder


def act_distribution(h: torch.Tensor, eps: float, strict: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halting units h [..., N] → (p [..., N], halting step [...] long, remainder R [...])."""
    N = h.shape[-1]
    cum = torch.zeros_like(h[..., 0])
    done = torch.zeros_like(cum, dtype=torch.bool)
    steps = torch.zeros_like(cum, dtype=torch.long)
    rem = torch.zeros_like(cum)
    ps = []
    for n in range(N):
        p, cum, halt_now, r = act_step(h[..., n], cum, done, n == N - 1, eps, strict)
        ps.append(p)
        steps = torch.where(halt_now, n + 1, steps)
        rem = rem + r
        done = done | halt_now
    return torch.stack(ps, -1), steps, rem


# -- stick-breaking halting ---------------------------------------------------------------------
def stickbreak_step(alpha: torch.Tensor, survive: torch.Tensor, done: torch.Tensor, last: bool,
                    stop: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of stick-breaking halting (Sparse Universal Transformer).

    alpha [...] P(halt at n | not before); survive [...] P(not halted before n).
    A running token gets p(n) = α_n · survive; it stops once P(not halted) < 1 − ``stop``
    (or at the last step), and the remaining mass goes to its stopping step so p sums to 1.
    → (p(n), P(not halted after n) (0 once stopped), stop_now), each [...].
    """
    running = ~done
    p = torch.where(running, alpha * survive, torch.zeros_like(survive))
    left = torch.where(running, survive * (1 - alpha), survive)
    stop_now = running & ((left < 1 - stop) | last)
    p = p + torch.where(stop_now, left, torch.zeros_like(left))
    left = torch.where(stop_now, torch.zeros_like(left), left)
    return p, left, stop_now


def stickbreak_distribution(alpha: torch.Tensor, stop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates alpha [..., N] → (p [..., N], stopping step [...] long)."""
    N = alpha.shape[-1]
    survive = torch.ones_like(alpha[..., 0])
    done = torch.zeros_like(survive, dtype=torch.bool)
    steps = torch.zeros_like(survive, dtype=torch.long)
    ps = []
    for n in range(N):
        p, survive, stop_now = stickbreak_step(alpha[..., n], survive, done, n == N - 1, stop)
        ps.append(p)
        steps = torch.where(stop_now, n + 1, steps)
        done = done | stop_now
    return torch.stack(ps, -1), steps


def halting_head(d_model: int, bias: float) -> "torch.nn.Linear":
    """A [.., d_model] → [.., 1] halting unit whose bias starts at ``bias``.

    A negative bias starts deep: a positive one makes tokens halt after ~2 steps and training
    stalls there (the halting-bias trap, reference/mechanisms.md).
    """
    head = torch.nn.Linear(d_model, 1)
    with torch.no_grad():
        head.bias.fill_(bias)
    return head
