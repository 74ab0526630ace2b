"""The recurrent (weight-shared, Universal-Transformer-style) depth-adaptive model.

    tokens → embedding → prelude (P blocks) → [core group of G blocks] × up to N steps
           → coda (C blocks) → norm → head

The core group is shared across steps; an optional learned step embedding e_n is added to
the active tokens' states before step n. Which tokens run which step is decided by the
policy and executed by :class:`~ponder.models.engine.Engine`. The per-step readout (for
expected-loss objectives and confidence exits) goes through the same coda + head as the
final readout. Every block is a :class:`~ponder.models.layers.Block` built from the config's
FFN / attention kinds (``model.ffn``, ``model.attention``); core blocks may carry a block
router (``model.router``).

Which path runs: ``execution="auto"`` (the default) runs the plain-PyTorch reference
(``layers.py`` + ``engine.py``: every token computed, halted ones masked) in training and the
compacted stepper (:mod:`ponder.models.compact`, attention through
:mod:`ponder.models.dispatch` and the compiled kernels) at inference, where the prelude and
coda also go through the dispatcher; with a block router in the core it compacts in training
too (routed blocks run on their entering tokens only). ``execution="dense"`` is the reference everywhere (and
``PONDER_KERNELS=0`` keeps the compiled kernels out of the compacted path);
``execution="compact"`` compacts in training too. All three give the same result (tests).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.models.config import ModelConfig, ModelOutput
from ponder.models.dispatch import run_group
from ponder.models.engine import EXECUTIONS, Engine, check_policy
from ponder.models.kinds import ATTENTIONS, FFNS, ROUTERS
from ponder.models.layers import RESIDUALS, AttnContext, BlockSpec, Embedding, Group, Readout, Rotary
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
    if cfg.norm_layout not in ("pre", "peri"):
        raise ConfigError(f"unknown norm_layout {cfg.norm_layout!r}; layouts: pre, peri")
    if cfg.execution not in EXECUTIONS:
        raise ConfigError(f"unknown execution {cfg.execution!r}; executions: {', '.join(EXECUTIONS)}")
    if cfg.positions == "rotary" and (cfg.d_model // cfg.n_heads) % 2:
        raise ConfigError("rotary positions need an even head dimension (d_model / n_heads)")
    if not 0.0 <= cfg.layer_dropout <= 1.0:
        raise ConfigError(f"model layer_dropout={cfg.layer_dropout} must lie in [0, 1]")
    if cfg.layer_dropout > 0 and cfg.execution == "compact":
        raise ConfigError("model layer_dropout needs the dense training path (execution auto or dense)")
    if cfg.residual not in RESIDUALS:
        raise ConfigError(f"unknown residual {cfg.residual!r}; residuals: {', '.join(RESIDUALS)}")
    if cfg.router.every < 1:
        raise ConfigError(f"model router.every={cfg.router.every} must be at least 1")


def block_spec(cfg: ModelConfig) -> BlockSpec:
    """The blocks' spec from the config: kinds and knobs checked against their registries; a
    causal model refuses a non-causal kind (one ConfigError line)."""
    chosen = (("ffn", FFNS, cfg.ffn.kind, cfg.ffn.knobs),
              ("attention", ATTENTIONS, cfg.attention.kind, cfg.attention.knobs),
              ("router", ROUTERS, cfg.router.kind, cfg.router.knobs))
    knobs = {}
    for what, registry, kind, values in chosen:
        if what == "router" and kind == "none":
            if values:
                raise ConfigError("model.router.knobs given without a router (router.kind is none)")
            knobs[what] = None
            continue
        try:
            knobs[what] = registry.knobs(kind, dict(values))
        except ConfigError as exc:
            text = str(exc)
            raise ConfigError(f"model.{what}.knobs.{text[5:]}" if text.startswith("knob ")
                              else text) from None
        if cfg.causal and not registry.cls(kind).causal:
            raise ConfigError(f"{what} kind {kind!r} is not causal and cannot run in a causal model")
    return BlockSpec(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff, norm=cfg.norm,
                     norm_layout=cfg.norm_layout, dropout=cfg.dropout, ffn=cfg.ffn.kind, ffn_knobs=knobs["ffn"],
                     attention=cfg.attention.kind, attention_knobs=knobs["attention"],
                     router=cfg.router.kind, router_knobs=knobs["router"], residual=cfg.residual)


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
        spec = block_spec(cfg)
        self.embed = Embedding(vocab_size=vocab_size, d_model=cfg.d_model, positions=cfg.positions,
                               max_len=cfg.max_len)
        self.rotary = Rotary(head_dim=cfg.d_model // cfg.n_heads) if cfg.positions == "rotary" else None
        plain = spec.without_router()
        self.prelude = Group(n_blocks=cfg.prelude, spec=plain)
        self.build_core(spec)
        self.readout = Readout(coda=Group(n_blocks=cfg.coda, spec=plain), d_model=cfg.d_model,
                               vocab_size=vocab_size, norm=cfg.norm)
        policy.bind(d_model=cfg.d_model, max_steps=cfg.max_steps)
        self.policy = policy

    # -- what differs between recurrent and stacked ------------------------------------------
    def core_groups(self, n_groups: int, spec: BlockSpec) -> list[Group]:
        """``n_groups`` groups of ``cfg.core`` blocks; a router on every ``router.every``-th
        block (counted over all of them)."""
        groups = []
        for g in range(n_groups):
            group = Group(n_blocks=self.cfg.core, spec=spec.without_router())
            if spec.router != "none":
                for i in range(self.cfg.core):
                    if (g * self.cfg.core + i + 1) % self.cfg.router.every == 0:
                        group.blocks[i] = type(group.blocks[i])(spec=spec)
            groups.append(group)
        return groups

    def build_core(self, spec: BlockSpec) -> None:
        self.core = self.core_groups(1, spec)[0]
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
                steps: Optional[int] = None, backprop: int = 0,
                state: Optional[torch.Tensor] = None) -> ModelOutput:
        """``steps``: the loop count of this forward (default ``cfg.max_steps``; depth
        randomisation in training, test-time depth at inference); ``backprop`` k > 0: gradient
        only through the last k steps (the earlier ones run without autograd). ``state``
        [B, L, D]: start the core from it instead of the prelude's output (deep supervision:
        the previous segment's exit state, ``extras["state"]``); the prelude then does not run."""
        n_steps = self.cfg.max_steps if steps is None else int(steps)
        if n_steps != self.cfg.max_steps:
            check_depth(self, n_steps)
        if tokens.dim() != 2:
            raise ConfigError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        mask = mask.bool()
        ctx = AttnContext.build(mask, causal=self.cfg.causal, rope=self.rotary)
        ctx.tokens = tokens
        ctx.flops = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
        engine = Engine(policy=self.policy, max_steps=n_steps, execution=self.cfg.execution,
                        core=self.core_group, step_embedding=self.step_vector,
                        no_grad_steps=max(n_steps - backprop, 0) if backprop > 0 else 0,
                        layer_dropout=self.cfg.layer_dropout)
        # at inference the compacted path also runs the prelude and coda through the
        # dispatcher (the compiled kernels); the reference runs them as plain modules
        group = run_group if engine.compacts(self.training) else (lambda g, h, c: g(h, c))
        if state is not None and tuple(state.shape) != (*mask.shape, self.cfg.d_model):
            raise ConfigError(f"state must be [batch, seq, d_model]={(*mask.shape, self.cfg.d_model)}, "
                              f"got {tuple(state.shape)}")
        ran = list(self.readout.coda.blocks) + (list(self.prelude.blocks) if state is None else [])
        for block in ran:
            ctx.count_block(block, mask)
        ctx.count_flops(mask, 2.0 * self.cfg.d_model * self.vocab_size)
        ctx.set_entering(None)  # the prelude: every real token
        h0 = group(self.prelude, self.embed(tokens), ctx) if state is None else state
        # the per-step readouts are not counted: FLOPs are those of the inference answer
        def readout(h: torch.Tensor, final: bool = False) -> torch.Tensor:
            ctx.set_entering(None)  # the coda: every real token
            # per-step readouts run any number of times: only the final one adds the coda's
            # per-row FLOPs (``ctx.count_row_flops``; its nominal ones are counted above)
            ctx.entering["count_row_flops"] = final
            ctx.entering["readout"] = True
            try:
                return self.readout.head(self.readout.norm(group(self.readout.coda, h, ctx)))
            finally:
                ctx.entering["count_row_flops"] = True
                ctx.entering["readout"] = False

        result = engine.run(h0=h0, mask=mask, ctx=ctx, readout=readout, training=self.training)
        halting = result.halting
        if result.step_logits is not None and halting.halt_step is not None:
            # all tokens ran N steps (training): the prediction is the readout at the step the
            # inference rule picks
            index = (halting.halt_step - 1)[:, :, None, None].expand(-1, -1, 1, self.vocab_size)
            logits = result.step_logits.gather(2, index).squeeze(2)
        else:
            logits = readout(result.exit, final=True)
        aux = halting.aux_loss if halting.aux_loss is not None else logits.new_zeros(())
        extras: dict = {"policy_stats": halting.stats, "policy_carry": halting.carry,
                        "state": result.exit}
        if "expert" in ctx.entering:  # routed FFN kinds: each token's first-choice expert
            extras["expert"] = ctx.entering["expert"].view(mask.shape)
        if ctx.stats:
            extras["block_stats"] = {k: sum(v) / len(v) for k, v in ctx.stats.items()}
        if halting.halt_dist is not None:
            extras["expected_steps"] = expected_steps(halting.halt_dist)
        return ModelOutput(logits=logits, steps=result.steps, halt_dist=halting.halt_dist,
                           step_logits=result.step_logits, aux_loss=aux, extras=extras,
                           halt_step=halting.halt_step, mask=mask, aux_terms=ctx.aux_terms(),
                           flops=ctx.flops)

    def loss(self, out: ModelOutput, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy's objective plus its auxiliary loss; stats are plain floats."""
        task, stats = self.policy.loss(out, targets)
        total = task + out.aux_loss
        for term in out.aux_terms.values():
            total = total + term
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
        for key, value in out.aux_terms.items():
            result[f"aux/{key}"] = float(value.detach())
        for key, value in out.extras.get("block_stats", {}).items():
            result[f"route/{key}"] = float(value)
        result.update({k: float(v) for k, v in stats.items()})
        return total, result


def build_recurrent(cfg: ModelConfig, policy: Policy, *, vocab_size: int) -> nn.Module:
    return RecurrentTransformer(cfg=cfg, policy=policy, vocab_size=vocab_size)
