"""The execution engine: per-token state across the steps of a depth-adaptive model.

The engine owns, for one forward pass:
- ``active [B, L] bool``: tokens still running (pads are never active);
- ``h [B, L, D]``: the current state of every token; a token that halts is frozen at its
  exit state, stays visible as key/value to tokens still running (state copying) and never
  changes again. Its carried copy is *detached*, so no gradient reaches a frozen token's
  state through later steps (its own exit state, used for its readout, keeps its graph);
- ``exit [B, L, D]``: each token's exit state; ``steps [B, L]``: steps each token ran.

Semantics of step n (the reference the compacted mode must reproduce exactly):
    x = h + e_n            for active tokens (e_n the step embedding, if any);
                           frozen tokens show exactly their frozen state
    for each block b of the step's group:
        enter = active                (a block router, if the block has one, picks a
                                      subset: enter = router(x, active).enter & active)
        x[enter] = b(x)[enter]        queries: entering tokens; keys/values: every token's
                                      current x (frozen ones included; only the entering
                                      ones for a router with keys="routed"); FFN: entering
                                      only; a router weight w gives x + w·(b(x) − x);
                                      only the active tokens are keys when the policy's
                                      ``keys()`` is "active"
    then the policy sees x as ``view.h`` and decides who halts.

WHERE COMPACTION PLUGS IN: the loop below calls one *stepper* per step,
``step(n, h, active) → state after step n``. The dense stepper (:meth:`Engine.run_step`)
computes every block on every token and keeps the active rows (``torch.where``, in
:meth:`Engine.apply_block`); ``execution="compact"`` (and ``"auto"`` at inference) uses
:class:`ponder.models.compact.CompactStepper`, which runs the blocks on the active tokens
only and returns the same state. Policies never change: they only see the full ``[B, L, ...]``
tensors after the step and return ``[B, L]`` decisions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ponder.errors import ConfigError
from ponder.models.layers import AttnContext, Block, Group
from ponder.policies.base import Halting, Policy, View

# dense: the reference; compact: gather the active tokens (ponder.models.compact);
# auto: compact at inference (model.eval()), dense in training (compact when the core has
# block routers)
EXECUTIONS = ("dense", "compact", "auto")


@dataclass
class EngineResult:
    """exit        [B, L, D]       each token's exit state (frozen state, or state after N)
    steps       [B, L] long     steps each token ran (0 at pads)
    step_logits [B, L, N, V]    per-step readouts, when the policy asked for them, else None
    halting     the policy's :class:`Halting` summary
    """

    exit: torch.Tensor
    steps: torch.Tensor
    step_logits: Optional[torch.Tensor]
    halting: Halting


class Engine:
    """Runs up to N steps of a core under a policy.

    core(n) → the :class:`Group` of blocks for step n (shared for recurrent, layer n for stacked)
    step_embedding(n) → [D] tensor added to active tokens' states before step n, or None
    no_grad_steps: steps 1..k run without autograd (truncated backprop through the last steps);
    the policy still sees every step
    layer_dropout: in training, each sample skips step n (its state passes unchanged) with
    probability ``layer_dropout · (2^((n−1)/(N−1)) − 1)``: 0 at step 1, the full rate at step N
    (LayerSkip's rising schedule, which makes the early steps usable exits)
    """

    def __init__(self, *, policy: Policy, max_steps: int, execution: str = "dense",
                 core: Callable[[int], Group],
                 step_embedding: Optional[Callable[[int], Optional[torch.Tensor]]] = None,
                 no_grad_steps: int = 0, layer_dropout: float = 0.0) -> None:
        if execution not in EXECUTIONS:
            raise ConfigError(f"unknown execution {execution!r}; executions: {', '.join(EXECUTIONS)}")
        self.policy = policy
        self.max_steps = max_steps
        self.execution = execution
        self.core = core
        self.step_embedding = step_embedding
        # truncated backprop through depth: steps 1..no_grad_steps run without autograd
        self.no_grad_steps = no_grad_steps
        self.layer_dropout = layer_dropout

    # -- the one place a block runs ---------------------------------------------------------
    def apply_block(self, block: Block, x: torch.Tensor, active: torch.Tensor,
                    ctx: AttnContext, memory: Optional[torch.Tensor] = None,
                    every: bool = False) -> torch.Tensor:
        """x [B, L, D] → x with the entering rows replaced by the block's output.

        Dense reference: compute every row, keep the entering ones (the active tokens, or
        the router's pick among them). ``memory`` [B, L, D]: the keys/values come from it
        instead of x (see :class:`~ponder.policies.base.Decision`). ``every``: every row is
        active (no mask).
        """
        if block.router is None:
            ctx.count_block(block, active)
            ctx.set_entering(active)
            out = block(x, ctx, source=memory)
            return out if every else torch.where(active[..., None], out, x)
        route = block.router(x, active, ctx)
        ctx.count_flops(active, block.router.flops_per_token())  # it scored every candidate
        enter = route.enter & active
        keys = ctx.keys_of(enter) if block.router.keys == "routed" else ctx
        ctx.count_block(block, enter, keys)
        ctx.set_entering(enter)
        y = block(x, keys, source=memory)
        if route.weight is not None:
            y = x + route.weight[..., None] * (y - x)
        return torch.where(enter[..., None], y, x)

    def run_step(self, n: int, h: torch.Tensor, active: torch.Tensor,
                 ctx: AttnContext, memory: Optional[torch.Tensor] = None,
                 active_keys: bool = False) -> torch.Tensor:
        """State after step n: h [B, L, D], active [B, L] → [B, L, D] (frozen rows unchanged).
        ``memory`` [B, L, D]: the first block's keys/values source. ``active_keys``: attention
        among the active tokens only (the policy's ``keys() == "active"``)."""
        if not bool(active.any()):
            return h
        if active_keys:
            ctx = ctx.keys_of(active)
        # no pad and nobody frozen: the masks would keep every row (skip them, ~4% of a step)
        every = bool(active.all())
        x = h
        e = self.step_embedding(n) if self.step_embedding is not None else None
        if e is not None:
            x = h + e if every else torch.where(active[..., None], h + e, h)
            if memory is not None:
                memory = memory + e if every else torch.where(active[..., None], memory + e, memory)
        for i, block in enumerate(self.core(n).blocks):
            x = self.apply_block(block, x, active, ctx, memory if i == 0 else None, every)
        return x

    # -- the loop ---------------------------------------------------------------------------
    def compacts(self, training: bool) -> bool:
        """``auto`` compacts at inference, and in training too when a core block has a router
        (the routed blocks then run on their entering tokens only: the saving of routing is
        wall-clock time in training as well; compact equals dense, tests/models)."""
        if self.execution == "auto" and training:
            return self.routed()
        return self.execution == "compact" or self.execution == "auto"

    def routed(self) -> bool:
        """Whether any block of the core's steps 1..N carries a router."""
        seen: set[int] = set()
        for n in range(1, self.max_steps + 1):
            group = self.core(n)
            if id(group) in seen:
                continue
            seen.add(id(group))
            if any(block.router is not None for block in group.blocks):
                return True
        return False

    def run(self, *, h0: torch.Tensor, mask: torch.Tensor, ctx: AttnContext,
            readout: Callable[[torch.Tensor], torch.Tensor], training: bool) -> EngineResult:
        """h0 [B, L, D] prelude output, mask [B, L] bool → :class:`EngineResult`."""
        N = self.max_steps
        policy = self.policy
        if not ctx.causal and bool(mask.all()):
            # no pads, no causality: the context's mask is all True, and the unmasked attention
            # kernel is the faster one (same result)
            ctx = dataclasses.replace(ctx, attn_mask=None)
        keys = policy.keys()
        if keys not in ("all", "active"):
            raise ConfigError(f"policy {policy.name!r}: keys() must be 'all' or 'active', got {keys!r}")
        active_keys = keys == "active"
        if self.compacts(training):
            from ponder.models.compact import CompactStepper
            step = CompactStepper(core=self.core, step_embedding=self.step_embedding, ctx=ctx,
                                  mask=mask, max_steps=N, active_keys=active_keys).step
        else:
            def step(n: int, h: torch.Tensor, active: torch.Tensor,
                     memory: Optional[torch.Tensor] = None) -> torch.Tensor:
                return self.run_step(n, h, active, ctx, memory, active_keys)
        grad = torch.is_grad_enabled()
        active = mask.clone()
        # pads never run and never pass gradient anywhere
        h = torch.where(mask[..., None], h0, h0.detach()) if grad else h0
        exit_state = h
        steps = torch.zeros_like(mask, dtype=torch.long)
        want_logits = policy.needs_step_logits(training)
        step_logits: list[torch.Tensor] = []
        memo = policy.start(View(n=0, max_steps=N, h=h, prev=None, active=active, mask=mask,
                                 training=training, readout=readout, causal=ctx.causal))
        view = None
        memory: Optional[torch.Tensor] = None  # keys/values of the next step (None: h)
        for n in range(1, N + 1):
            # the last step's view holds the previous state: let go of it, so that a stepper
            # may reuse that buffer (the compact one checks that nobody else holds it)
            view = None
            with torch.set_grad_enabled(grad and n > self.no_grad_steps):
                new = step(n, h, active, memory) if memory is not None else step(n, h, active)
            if training and self.layer_dropout > 0 and N > 1:
                rate = self.layer_dropout * (2.0 ** ((n - 1) / (N - 1)) - 1.0)
                skip = torch.rand(h.shape[0], device=h.device) < rate  # per sample
                new = torch.where(skip[:, None, None], h, new)
            view = View(n=n, max_steps=N, h=new, prev=h, active=active, mask=mask,
                        training=training, readout=readout,
                        step_emb=self.step_embedding(n) if self.step_embedding is not None else None,
                        causal=ctx.causal)
            decision = policy.step(memo, view)
            if want_logits:
                step_logits.append(view.logits())
            halt = active if n == N else decision.halt.bool() & active
            steps = steps + active.long()
            still = active & ~halt
            if grad or decision.state is not None or decision.exit_state is not None:
                state = decision.state if decision.state is not None else new
                frozen_at = decision.exit_state if decision.exit_state is not None else state
                if grad:
                    exit_state = torch.where(halt[..., None], frozen_at, exit_state)
                # frozen rows: their exit state (newly halted) or unchanged, without gradient
                frozen = torch.where(halt[..., None], frozen_at, h)
                h = torch.where(still[..., None], state, frozen.detach() if grad else frozen)
            else:
                # no override and no graph to keep: still-active rows carry the step output,
                # newly halted rows freeze at it, the others did not change — the step output
                # is the next state
                h = new
            # frozen tokens show their state as keys/values (unless the memory is everyone's);
            # active ones the policy's memory
            if decision.memory is None or decision.memory_frozen:
                memory = decision.memory
            else:
                memory = torch.where(still[..., None], decision.memory, h)
            active = still
        if not grad:
            exit_state = h  # every token is frozen at its exit state after step N
        halting = policy.finish(memo, view)
        logits = torch.stack(step_logits, 2) if want_logits else None
        return EngineResult(exit=exit_state, steps=steps, step_logits=logits, halting=halting)


def check_policy(policy: Policy, *, kind: str, causal: bool) -> None:
    """Refuse a policy that does not support this stack kind or causal mode (ConfigError)."""
    if kind not in policy.kinds:
        raise ConfigError(f"policy {policy.name!r} does not support model kind {kind!r} "
                          f"(supports: {', '.join(policy.kinds)})")
    if causal and not policy.causal:
        raise ConfigError(f"policy {policy.name!r} is not causal and cannot run in a causal model")

