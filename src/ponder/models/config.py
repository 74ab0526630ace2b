"""The model's typed config and the forward contract every model obeys.

Contract (what the trainer, eval and bench rely on; nothing else):

    model = ponder.models.build(model_cfg, policy, vocab_size=len(vocab), tokens=vocab.itos)
    out: ModelOutput = model(tokens, mask)         # tokens [B, L] long, mask [B, L] bool
    loss, stats = model.loss(out, targets)          # targets [B, L], IGNORE_INDEX unscored
    prediction = out.logits.argmax(-1)              # [B, L]

``model.loss`` applies the policy's objective (mean-field, expected per-step loss, per-exit
losses ...) plus its auxiliary loss; the trainer never knows which policy runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import torch


@dataclass
class AdaTapeConfig:
    """AdaTape's knobs (``kind: adatape``; ignored by other kinds). Defaults mirror
    ``ponder.models.adatape.ADATAPE_KNOBS``; the builder checks the values' ranges.

    A typed section so that the run config rejects unknown keys and wrong types; it reads
    like a mapping (``keys`` / ``[]``) because the builder takes ``dict(model_cfg.adatape)``.
    """

    n_layers: Optional[int] = None   # encoder layers; None = max_steps
    max_tape: int = 8                # most tape tokens a sample reads
    bank: str = "input"              # input (the input re-tokenised) | learnable
    bank_size: int = 32              # learnable bank entries
    ngram: int = 1                   # window length of an input-bank entry
    threshold: float = 1.0           # halting sum at which reading stops
    per_step: int = 0                # candidates merged into one tape token (0: max_tape // threshold)
    tape_ffn: bool = True            # tape tokens take their own FFN
    query: str = "mean"              # mean (of the input embeddings) | cls
    aux_weight: float = 0.01         # weight of the Σ (1 − Σ w²) tape loss

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str) -> object:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class KindConfig:
    """A kind from one of the block registries (``ponder ffn list``, ``ponder attention list``)
    and its knobs (checked against the kind's ``Knobs`` when the model is built)."""

    kind: str
    knobs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RouterConfig:
    """The block router of the core (``ponder router list``); ``none``: every token enters
    every block. ``every``: a router on every k-th core block (counted over the stacked
    layers' blocks, or over the shared core group's blocks), e.g. 2 for Mixture-of-Depths'
    every other block."""

    kind: str = "none"
    knobs: Dict[str, Any] = field(default_factory=dict)
    every: int = 1


@dataclass
class ModelConfig:
    kind: str = "recurrent"        # recurrent (shared core, up to max_steps) | stacked (distinct layers)
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    prelude: int = 1               # P layers before the core
    core: int = 1                  # G blocks in the shared core group (MoEUT-style when > 1)
    coda: int = 1                  # C layers after the core
    max_steps: int = 8             # N: core applications (recurrent) or layers (stacked)
    causal: bool = False
    positions: str = "learned"     # learned | rotary | none
    max_len: int = 512             # for learned positions
    norm: str = "rmsnorm"          # rmsnorm | layernorm
    norm_layout: str = "pre"       # pre (sub-layers read norm(x)) | peri (MoEUT: only selections, Q/K and the head read a norm)
    step_embedding: bool = True    # add a learned embedding of the step index at each step
    token_parts: bool = False      # also embed compound tokens' parts ("8>13" → 0:8, 1:13)
    dropout: float = 0.0
    layer_dropout: float = 0.0     # training: skip step n per sample, rate rising to this at step N (LayerSkip)
    execution: str = "auto"        # auto (compact in eval, dense in training unless routed) | dense (reference) | compact
    ffn: KindConfig = field(default_factory=lambda: KindConfig(kind="dense"))             # every block's FFN
    attention: KindConfig = field(default_factory=lambda: KindConfig(kind="standard"))    # every block's attention
    router: RouterConfig = field(default_factory=RouterConfig)                           # core blocks only
    residual: str = "add"          # every block's residual: add | copy_gate (NDR's gate, bias −3)
    adatape: AdaTapeConfig = field(default_factory=AdaTapeConfig)  # kind=adatape only


@dataclass
class ModelOutput:
    """What a forward pass returns.

    logits       [B, L, V]      the prediction used at inference (the token's exit readout)
    steps        [B, L] long    steps (core applications / layers) each token actually took
    halt_dist    [B, L, N]      per-token distribution over halting steps, or None
    step_logits  [B, L, N, V]   per-step readouts when the objective needs them, or None
    aux_loss     scalar         the policy's auxiliary loss (ponder cost, KL, ...) already weighted
    halt_step    [B, L] long    the step the policy's inference rule picks (equals ``steps`` in
                                eval; in training expected-loss policies run all N steps), or None
    mask         [B, L] bool    real (non-pad) tokens of the input, or None
    extras       dict           model-specific tensors (e.g. ``expected_steps`` [B, L])
    aux_terms    dict           name → scalar: the auxiliary losses the block kinds emitted
                                (load balance, z-loss, ...), already weighted; ``model.loss``
                                adds them to the objective and reports each
    flops        [B, L] float64 forward FLOPs each token used (blocks entered with the keys
                                it saw, experts evaluated, its share of tape tokens), or None
    """

    logits: torch.Tensor
    steps: torch.Tensor
    halt_dist: Optional[torch.Tensor] = None
    step_logits: Optional[torch.Tensor] = None
    aux_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    extras: dict = field(default_factory=dict)
    halt_step: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    aux_terms: dict = field(default_factory=dict)
    flops: Optional[torch.Tensor] = None
