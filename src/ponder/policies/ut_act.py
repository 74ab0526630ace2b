"""ut_act: the Universal Transformer's per-position ACT (Dehghani 2019, tensor2tensor).

Default ``semantics="t2t"``: the loop of tensor2tensor's ``universal_transformer_act``
(``tensor2tensor/models/research/universal_transformer_util.py``, ``ut_function``). With s^n
the state *entering* step n plus that step's signal (``view.prev`` + the step embedding e_n)
and f(s^n) the step's output (``view.h``), per position:

    p     = σ(w·s^n + b)                         the halting unit, read before the transform
    halts = running and cum + p > 1 − ε          (strict, as in t2t)
    w     = p while running, R = 1 − cum on the halting step, 0 after
    out   = f(s^n)·w + out·(1 − w)               (out starts at 0)
    cum  += p while running;  n_updates += 1 while running or halting now

and, unlike an early exit, **every position keeps being transformed after it halted**: the
next step's input is f(s^n) for all positions, so others attend to the evolving state; only
its ``out`` stops changing (w = 0). A position still running at N gets **no remainder**
(t2t's loop just stops). Loss τ·mean(n_updates + R). In a bidirectional model the engine
freezes a whole sequence once every real token of it has halted: from then on nothing of it
can change any output (t2t's loop stops when the whole batch has halted, with the same
result). In a causal model nothing is frozen before N (whether the later tokens have halted
is the future of token t). So the compute a token is charged (``steps``) is its sequence's
(or N), while ``halt_step`` is its own n_updates.

``semantics="frozen"`` (this policy's behaviour before issue 21): a halted position is frozen
at its ``out`` and stays visible as that frozen state (state copying, like every early exit
here); the halting unit reads the state entering step n *without* the step signal; a
position still running at N gets the remainder there (as ACT).

Reported distribution ``halt_dist``: p before the halting step, R on it; with ``t2t`` a
position that never halts has the leftover mass 1 − cum put at N in this report only (so it
sums to 1 as every policy's), not in ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies.act import Act
from ponder.policies.base import Decision, View, knob
from ponder.policies.registry import register

SEMANTICS = ("t2t", "frozen")


@dataclass(frozen=True)
class UtActKnobs:
    tau: float = knob(0.01, 0.0, 100.0, "weight of mean(steps + remainder)")
    eps: float = knob(0.01, 1e-6, 0.5, "halt when the cumulative halting probability exceeds 1 − eps")
    halt_bias: float = knob(-3.0, -100.0, 100.0,
                            "initial bias of the halting unit (t2t uses +1, which halts after ~2 steps)")
    semantics: str = knob("t2t", choices=SEMANTICS,
                          help="t2t: tensor2tensor's loop (halted positions keep being transformed, "
                               "unit reads the step signal, no remainder at N) | frozen: halted "
                               "positions frozen, unit without the step signal, remainder at N")


@register
class UtAct(Act):
    """Per-position ACT with tensor2tensor's details (see the module docstring): the halting
    probability of step n is computed from the state *entering* step n; the test is
    cum > 1 − ε; the output is the running update ``out = f(s)·w + out·(1 − w)``; loss
    τ·mean(steps + remainder)."""

    name = "ut_act"
    paper = "Dehghani, Gouws, Vinyals, Uszkoreit, Kaiser 2019, Universal Transformers"
    Knobs = UtActKnobs
    strict = True

    def unit(self, view: View) -> torch.Tensor:
        s = view.prev
        if self.knobs.semantics == "t2t" and view.step_emb is not None:
            s = s + view.step_emb  # t2t's step_preprocess adds the step signal before the unit
        return torch.sigmoid(self.head(s).squeeze(-1))

    def mix(self, memo: dict, p: torch.Tensor, view: View) -> torch.Tensor:
        w = p[..., None]
        return view.h * w + memo["mix"] * (1 - w)

    def step(self, memo: dict, view: View) -> Decision:
        if self.knobs.semantics == "frozen":
            return super().step(memo, view)
        u = self.unit(view)
        running = ~memo["done"]
        total = memo["cum"] + u
        halt_now = running & (total > 1 - self.knobs.eps)
        still = running & ~halt_now
        remainder = torch.where(halt_now, 1 - memo["cum"], torch.zeros_like(u))
        w = torch.where(still, u, remainder)
        memo["cum"] = torch.where(still, total, memo["cum"])
        memo["remainder"] = memo["remainder"] + remainder
        memo["mix"] = self.mix(memo, w, view)
        memo["halt_step"] = torch.where(running, view.n, memo["halt_step"])  # n_updates
        memo["done"] = memo["done"] | halt_now
        last = view.n == view.max_steps
        # the report's leftover mass of a position still running at N (not in ``out``)
        memo["p"].append(w + torch.where(still, 1 - memo["cum"], 0.0) if last else w)
        # a sequence whose real tokens all halted can change no output any more: freeze it
        # (not in a causal model: whether the later tokens halted is the future there)
        seq_done = (memo["done"] | ~view.mask).all(-1, keepdim=True) & (not view.causal)
        return Decision(halt=seq_done.expand_as(memo["done"]), exit_state=memo["mix"])
