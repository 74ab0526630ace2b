"""The Policy interface: the compute decision, isolated from attention and the MLP.

A policy decides, per token, after how many steps (core applications / layers) the token
stops. The model never knows which policy runs; the policy never touches attention or the
MLP. It only sees per-token tensors (``[B, L, ...]``) and returns per-token decisions, so
the engine may execute the steps densely or compacted without the policy noticing.

Adding a policy = one file in ``ponder/policies/`` with a class decorated by
``@register`` (files of that package are imported automatically). Sketch::

    @dataclass(frozen=True)
    class MyKnobs:
        tau: float = knob(0.01, 0.0, 10.0, "weight of the ponder cost")

    @register
    class MyPolicy(Policy):
        name = "mine"; online = True; causal = True; kinds = ("recurrent", "stacked")
        objective = "final"; paper = "Someone 2024"; Knobs = MyKnobs

        def bind(self, *, d_model, max_steps):          # create parameters (once, by build)
            super().bind(d_model=d_model, max_steps=max_steps)
            self.head = nn.Linear(d_model, 1)
        def start(self, view):  return {}                # memo: this forward's private state
        def step(self, memo, view): return Decision(halt=...)
        def finish(self, memo, view): return Halting(halt_dist=..., aux_loss=..., halt_step=...)

What the engine calls, in order, for one forward pass (see ``ponder.models.engine``):

1. ``memo = policy.start(view0)`` once, after the prelude. ``view0.n == 0``, ``view0.h`` is
   the prelude output ``[B, L, D]`` (the state before step 1). An *early* policy
   (``online = False``) makes its whole decision here and keeps it in ``memo``.
2. for n = 1..N: the engine runs step n on the active tokens, then calls
   ``decision = policy.step(memo, view)`` with ``view.n == n``, ``view.h`` the states after
   step n (frozen tokens hold their frozen state), ``view.prev`` the states before it,
   ``view.active`` the tokens that ran step n, and ``view.logits()`` the per-step readout
   through coda + head (computed lazily, once; shared with the engine). The policy returns a
   :class:`Decision`: ``halt [B, L] bool`` (freeze these tokens now), and optionally the
   ``state`` carried into step n+1 (e.g. stick-breaking's soft-halted mix) and the
   ``exit_state`` a halting token is frozen at (e.g. ACT's mean-field mix). The engine
   ignores decisions about tokens that are not active, and forces every token still active
   at step N to halt. ``step`` is called for every n even when no token is active any more,
   so a policy can always fill its full distribution over 1..N.
3. ``halting = policy.finish(memo, view_last)`` once, returns a :class:`Halting`: the
   distribution over halting steps ``halt_dist [B, L, N]`` (sums to 1 per token, or None),
   the already-weighted ``aux_loss`` (ponder cost, KL, expected depth ...; averaged over real
   tokens), and ``halt_step [B, L]`` the step the inference rule picks.
4. ``task_loss, stats = policy.loss(out, targets)`` from ``model.loss``: the objective.
   ``objective`` names it: ``"final"`` (cross-entropy of ``out.logits``, e.g. mean-field
   ACT), ``"expected"`` (``Σ_n p(n)·L_n`` over the per-step readouts, PonderNet/ANIRA),
   ``"per_step"`` (a weighted sum of per-exit losses, CALM/PaBEE; override ``loss``).
   ``needs_step_logits(training)`` tells the engine to collect ``out.step_logits``.

Rules every policy keeps:
- Decisions are per token and one-way: a token halted at n never runs again.
- Training with an expected-loss objective needs every step's loss, so such policies return
  no halts while ``view.training`` (all tokens run N steps) and freeze tokens at the
  inference step only in eval. Policies whose rule is the same in training and inference
  (ACT, stick-breaking) freeze in both.
- ``causal = True`` promises that in a causal model the decision for token t depends on
  positions ≤ t only; the model refuses a non-causal policy in causal mode (ConfigError).
- Pad positions are processed like real tokens by the policy (the engine keeps them frozen
  and the losses ignore them): never index by the mask, average with :func:`masked_mean`.
- Halting heads start deep (bias ``halt_bias``, default −3): a positive bias makes tokens
  halt after ~2 steps and training stalls there (reference/mechanisms.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.policies.halting import expected_step_loss, masked_mean, scored_mask, token_ce
from ponder.tasks.base import knob, validate_config

__all__ = ["Policy", "Decision", "Halting", "View", "knob", "NoKnobs"]


@dataclass
class View:
    """What the engine shows a policy at the start (n = 0) or after step n.

    n          int              0 at start, else the step just completed (1-based)
    max_steps  int              N
    h          [B, L, D]        states after step n (prelude output when n = 0)
    prev       [B, L, D]|None   states before step n (None when n = 0)
    active     [B, L] bool      tokens that ran step n (at n = 0: real tokens)
    mask       [B, L] bool      real (non-pad) tokens
    training   bool             the model's training flag
    step_emb   [D] | None       the step embedding e_n the engine added to the active tokens
                                before step n (None at n = 0 or without one)
    causal     bool             the model is causal (token t attends to positions ≤ t only)
    """

    n: int
    max_steps: int
    h: torch.Tensor
    prev: Optional[torch.Tensor]
    active: torch.Tensor
    mask: torch.Tensor
    training: bool
    readout: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    step_emb: Optional[torch.Tensor] = None
    causal: bool = False
    _logits: Optional[torch.Tensor] = field(default=None, repr=False)

    def logits(self) -> torch.Tensor:
        """The per-step readout of ``h`` through coda + head, [B, L, V] (computed once)."""
        if self._logits is None:
            if self.readout is None:
                raise RuntimeError("this view has no readout")
            self._logits = self.readout(self.h)
        return self._logits

    @property
    def has_logits(self) -> bool:
        return self._logits is not None


@dataclass
class Decision:
    """A policy's answer after one step.

    halt        [B, L] bool        freeze these tokens now (ignored for inactive ones)
    state       [B, L, D] | None   state carried into the next step for still-active tokens
                                   (None: the step's output ``view.h``)
    exit_state  [B, L, D] | None   state a token halting now is frozen at (None: ``state``)
    memory      [B, L, D] | None   what the next step's first block reads as the keys/values
                                   of still-active tokens, while their queries, residual and
                                   MLP use ``state`` (None: ``state`` for both; e.g. SUT's
                                   soft-halted mix). Frozen tokens show their state, unless
    memory_frozen  bool            the memory is every token's keys/values source, frozen
                                   ones included (Mixture-of-Recursions' keys/values shared
                                   from the first recursion)
    """

    halt: torch.Tensor
    state: Optional[torch.Tensor] = None
    exit_state: Optional[torch.Tensor] = None
    memory: Optional[torch.Tensor] = None
    memory_frozen: bool = False


@dataclass
class Halting:
    """A policy's summary of one forward pass.

    halt_dist  [B, L, N] | None   distribution over halting steps (sums to 1 per token)
    aux_loss   scalar             already weighted auxiliary loss (0 if none)
    halt_step  [B, L] long | None the step (1..N) the policy's inference rule picks
    stats      name → scalar tensor, reported by ``model.loss`` (detached there)
    carry      name → tensor the policy's own ``loss`` needs from this forward (e.g. halting
               logits per step, whose loss needs the targets); the model passes it on as
               ``out.extras["policy_carry"]``
    """

    halt_dist: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None
    halt_step: Optional[torch.Tensor] = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    carry: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class NoKnobs:
    """A policy without knobs."""


class Policy(nn.Module):
    """Base class of every compute-allocation policy (see the module docstring)."""

    name: ClassVar[str] = ""
    online: ClassVar[bool] = True          # decides during the steps (False: early, before step 1)
    causal: ClassVar[bool] = True          # decision for token t uses positions ≤ t only
    kinds: ClassVar[tuple[str, ...]] = ("recurrent", "stacked")
    objective: ClassVar[str] = "final"     # final | expected | per_step
    paper: ClassVar[str] = ""
    Knobs: ClassVar[type] = NoKnobs
    # names (as in ``named_parameters()`` of the policy) that the model's loss does not train,
    # e.g. a head fitted by a separate calibration; the gradient tests skip exactly these
    untrained_params: ClassVar[tuple[str, ...]] = ()
    # names whose gradient is exactly 0 at initialisation because they sit behind a
    # zero-initialised layer (SUT's gate); the gradient tests check them after one update
    zero_grad_at_init: ClassVar[tuple[str, ...]] = ()
    # the rule works for a loop count other than the bound N (``view.max_steps`` differs from
    # ``self.max_steps``: depth randomisation in training, test-time depth); False for policies
    # with one parameter per step
    any_depth: ClassVar[bool] = True

    def __init__(self, *, knobs: Any = None, **values: Any) -> None:
        super().__init__()
        if knobs is not None and values:
            raise ConfigError("give either a knobs object or knob values, not both")
        if knobs is None:
            known = {f.name for f in dataclasses.fields(self.Knobs)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError(f"policy {self.name!r} has no knob {unknown[0]!r}; knobs: "
                                  f"{', '.join(sorted(known)) or 'none'}")
            knobs = self.Knobs(**values)
        validate_config(knobs)
        self.knobs = knobs
        self.d_model: Optional[int] = None
        self.max_steps: Optional[int] = None

    # -- set-up ------------------------------------------------------------------------
    def bind(self, *, d_model: int, max_steps: int) -> None:
        """Called once by the model builder: create parameters for these dimensions."""
        if self.max_steps is not None:
            raise ConfigError(f"policy {self.name!r} is already bound to a model; make a new one")
        self.d_model, self.max_steps = d_model, max_steps
        self.check_knobs()

    def check_knobs(self) -> None:
        """Cross-knob / knob-vs-model checks (after ``bind``); raise ConfigError."""

    # -- the per-forward protocol --------------------------------------------------------
    def keys(self) -> str:
        """Which tokens a step's attention sees as keys/values: ``"all"`` (every real token;
        frozen ones at their frozen state: state copying) or ``"active"`` (the tokens running
        this step only; Mixture-of-Recursions' recursion-wise keys/values). Fixed for the
        forward pass."""
        return "all"

    def needs_step_logits(self, training: bool) -> bool:
        """Whether the engine must collect per-step readouts (``out.step_logits``)."""
        return self.objective in ("expected", "per_step") and training

    def start(self, view: View) -> dict:
        """After the prelude (``view.n == 0``); returns this forward's memo."""
        return {}

    def step(self, memo: dict, view: View) -> Decision:
        """After step ``view.n``: which tokens halt now (and optional state overrides)."""
        raise NotImplementedError

    def finish(self, memo: dict, view: View) -> Halting:
        """After step N: the distribution, aux loss and inference halting step."""
        return Halting()

    # -- the objective -------------------------------------------------------------------
    def loss(self, out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The task loss of ``out`` (a ModelOutput) against ``targets [B, L]`` (-100 unscored)."""
        scored = scored_mask(targets)
        if self.objective == "expected" and out.step_logits is not None and out.halt_dist is not None:
            return expected_step_loss(out.step_logits, out.halt_dist, targets), {}
        # "final", or an expected-loss policy evaluated without per-step readouts (eval mode):
        # the cross-entropy of the exit readout.
        return masked_mean(token_ce(out.logits, targets), scored), {}

    # -- description ---------------------------------------------------------------------
    @classmethod
    def knob_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls.Knobs))

    def extra_repr(self) -> str:
        return ", ".join(f"{f.name}={getattr(self.knobs, f.name)!r}" for f in self.knob_fields())
