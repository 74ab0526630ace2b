"""The recurrent (weight-shared, Universal-Transformer-style) depth-adaptive model.

    tokens → embedding → prelude (P blocks) → [core group of G blocks] × up to N steps
           → coda (C blocks) → norm → head

The core group is shared across steps; an optional learned step embedding e_n is added to
the active tokens' states before step n. Which tokens run which step is decided by the
policy and executed by :class:`~ponder.models.engine.Engine`. The per-step readout (for
expected-loss objectives and confidence exits) goes through the same coda + head as the
final readout.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.models.config import ModelConfig, ModelOutput
from ponder.models.engine import EXECUTIONS, Engine, check_policy
from ponder.models.layers import AttnContext, Embedding, Group, Readout, Rotary
from ponder.policies.base import Policy
from ponder.policies.halting import expected_steps, masked_mean, scored_mask


def validate_config(cfg: ModelConfig) -> None:
    """Reject a malformed model config with one clear ConfigError."""
    if cfg.d_model < 1 or cfg.n_heads < 1 or cfg.d_model % cfg.n_heads:
        raise ConfigError(f"d_model={cfg.d_model} must be a positive multiple of n_heads={cfg.n_heads}")
    for name in ("d_ff", "core", "max_steps", "max_len"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"model {name}={getattr(cfg, name)} must be at least 1")
    for name in ("prelude", "coda"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"model {name}={getattr(cfg, name)} must not be negative")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model dropout={cfg.dropout} must lie in [0, 1)")
    if cfg.positions not in ("learned", "rotary", "none"):
        raise ConfigError(f"unknown positions {cfg.positions!r}; positions: learned, rotary, none")
    if cfg.norm not in ("rmsnorm", "layernorm"):
        raise ConfigError(f"unknown norm {cfg.norm!r}; norms: rmsnorm, layernorm")
    if cfg.execution not in EXECUTIONS:
        raise ConfigError(f"unknown execution {cfg.execution!r}; executions: {', '.join(EXECUTIONS)}")
    if cfg.positions == "rotary" and (cfg.d_model // cfg.n_heads) % 2:
        raise ConfigError("rotary positions need an even head dimension (d_model / n_heads)")


def check_depth(model: nn.Module, n_steps: int) -> None:
    """Refuse a loop count the model or its policy cannot run (ConfigError)."""
    if n_steps < 1:
        raise ConfigError(f"steps={n_steps} must be at least 1")
    if model.kind != "recurrent" and n_steps > model.cfg.max_steps:
        raise ConfigError(f"a {model.kind} model has {model.cfg.max_steps} layers; steps={n_steps} is too many")
    if not type(model.policy).any_depth:
        raise ConfigError(f"policy {model.policy.name!r} is bound to max_steps={model.cfg.max_steps} "
                          f"and cannot run {n_steps} steps")


class RecurrentTransformer(nn.Module):
    """A prelude, a core applied up to N steps under a policy, a coda and a head.

    forward(tokens [B, L] long, mask [B, L] bool) → :class:`ModelOutput`
    loss(out, targets [B, L]) → (scalar loss, stats dict of floats)
    """

    kind = "recurrent"

    def __init__(self, *, cfg: ModelConfig, policy: Policy, vocab_size: int) -> None:
        super().__init__()
        validate_config(cfg)
        if vocab_size < 1:
            raise ConfigError(f"vocab_size={vocab_size} must be at least 1")
        check_policy(policy, kind=self.kind, causal=cfg.causal)
        self.cfg = cfg
        self.vocab_size = vocab_size
        block_args = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff, norm=cfg.norm,
                          dropout=cfg.dropout)
        self.embed = Embedding(vocab_size=vocab_size, d_model=cfg.d_model, positions=cfg.positions,
                               max_len=cfg.max_len)
        self.rotary = Rotary(head_dim=cfg.d_model // cfg.n_heads) if cfg.positions == "rotary" else None
        self.prelude = Group(n_blocks=cfg.prelude, **block_args)
        self.build_core(block_args)
        self.readout = Readout(coda=Group(n_blocks=cfg.coda, **block_args), d_model=cfg.d_model,
                               vocab_size=vocab_size, norm=cfg.norm)
        policy.bind(d_model=cfg.d_model, max_steps=cfg.max_steps)
        self.policy = policy

    # -- what differs between recurrent and stacked ------------------------------------------
    def build_core(self, block_args: dict) -> None:
        self.core = Group(n_blocks=self.cfg.core, **block_args)
        self.step_emb = nn.Embedding(self.cfg.max_steps, self.cfg.d_model) if self.cfg.step_embedding else None

    def core_group(self, n: int) -> Group:
        """The blocks of step n (1-based)."""
        return self.core

    def step_vector(self, n: int) -> Optional[torch.Tensor]:
        """[D] added to active tokens before step n, or None (steps beyond ``max_steps``, at a
        test-time depth, reuse the last step's embedding)."""
        return self.step_emb.weight[min(n, self.cfg.max_steps) - 1] if self.step_emb is not None else None

    # -- the forward contract ----------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None, *,
                steps: Optional[int] = None, backprop: int = 0) -> ModelOutput:
        """``steps``: the loop count of this forward (default ``cfg.max_steps``; depth
        randomisation in training, test-time depth at inference); ``backprop`` k > 0: gradient
        only through the last k steps (the earlier ones run without autograd)."""
        n_steps = self.cfg.max_steps if steps is None else int(steps)
        if n_steps != self.cfg.max_steps:
            check_depth(self, n_steps)
        if tokens.dim() != 2:
            raise ConfigError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        mask = mask.bool()
        ctx = AttnContext.build(mask, causal=self.cfg.causal, rope=self.rotary)
        h0 = self.prelude(self.embed(tokens), ctx)
        engine = Engine(policy=self.policy, max_steps=n_steps, execution=self.cfg.execution,
                        core=self.core_group, step_embedding=self.step_vector,
                        no_grad_steps=max(n_steps - backprop, 0) if backprop > 0 else 0)
        result = engine.run(h0=h0, mask=mask, ctx=ctx, readout=lambda h: self.readout(h, ctx),
                            training=self.training)
        halting = result.halting
        if result.step_logits is not None and halting.halt_step is not None:
            # all tokens ran N steps (training): the prediction is the readout at the step the
            # inference rule picks
            index = (halting.halt_step - 1)[:, :, None, None].expand(-1, -1, 1, self.vocab_size)
            logits = result.step_logits.gather(2, index).squeeze(2)
        else:
            logits = self.readout(result.exit, ctx)
        aux = halting.aux_loss if halting.aux_loss is not None else logits.new_zeros(())
        extras: dict = {"policy_stats": halting.stats, "policy_carry": halting.carry}
        if halting.halt_dist is not None:
            extras["expected_steps"] = expected_steps(halting.halt_dist)
        return ModelOutput(logits=logits, steps=result.steps, halt_dist=halting.halt_dist,
                           step_logits=result.step_logits, aux_loss=aux, extras=extras,
                           halt_step=halting.halt_step, mask=mask)

    def loss(self, out: ModelOutput, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy's objective plus its auxiliary loss; stats are plain floats."""
        task, stats = self.policy.loss(out, targets)
        total = task + out.aux_loss
        scored = scored_mask(targets)
        where = scored if bool(scored.any()) else (out.mask if out.mask is not None else scored)
        result = {"loss": float(total.detach()), "task_loss": float(task.detach()),
                  "aux_loss": float(out.aux_loss.detach()),
                  "steps": float(masked_mean(out.steps.float(), where)),
                  "accuracy": float(masked_mean((out.logits.argmax(-1) == targets).float(), scored))}
        if out.halt_step is not None:
            result["halt_step"] = float(masked_mean(out.halt_step.float(), where))
        if "expected_steps" in out.extras:
            result["expected_steps"] = float(masked_mean(out.extras["expected_steps"].detach(), where))
        for key, value in out.extras.get("policy_stats", {}).items():
            result.setdefault(key, float(torch.as_tensor(value).detach()))
        result.update({k: float(v) for k, v in stats.items()})
        return total, result


def build_recurrent(cfg: ModelConfig, policy: Policy, *, vocab_size: int) -> nn.Module:
    return RecurrentTransformer(cfg=cfg, policy=policy, vocab_size=vocab_size)
