"""CALM-style per-token early exit for a Hugging Face Llama-family model.

Each generated token runs layers 1, 2, … and after layer l (``min_layer ≤ l < L``) asks
ponder's exit rule (:class:`ponder.generate.exits.ConfidenceExit`: softmax margin of the
layer's readout through the final norm + LM head, state saturation cos(h_l, h_{l−1}), …)
whether to stop. When it fires, the token's next-token logits are the readout of its layer-l
state, and layers l+1..L still need its keys/values (later tokens attend to it): they get
the keys/values of the frozen layer-l state through each later layer's own input norm,
key/value projections and rotary (CALM's state propagation, :meth:`LayerStack.propagate`),
written into the transformers ``DynamicCache``. The prompt runs at full depth.

Two ways in: :func:`calm_generate` (ponder's terms: a prompt list, a rule) and
:func:`calm_custom_generate`, a ``custom_generate`` callable for transformers 5.x::

    model.generate(ids, custom_generate=calm_custom_generate, exit_rule="softmax:0.9",
                   max_new_tokens=32, do_sample=False)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.generate.exits import ConfidenceExit, parse_exit
from ponder.generate.sampling import Sampling
from ponder.hf import glue
from ponder.hf.stack import LayerStack


@dataclass
class CalmResult:
    """tokens: the generated ids (EOS included when written); layers: the layers each
    generated token's own forward ran (1..L; the first token comes from the prompt's
    full-depth forward and is not counted); seconds: wall time."""

    tokens: list[int]
    layers: list[int] = field(default_factory=list)
    seconds: float = 0.0


def as_rule(rule: Union[str, ConfidenceExit]) -> ConfidenceExit:
    return parse_exit(rule) if isinstance(rule, str) else rule


@torch.no_grad()
def calm_generate(model: nn.Module, prompt: list[int], *, rule: Union[str, ConfidenceExit],
                  max_new: int, eos: Optional[int], min_layer: int = 1,
                  sampling: Sampling = Sampling(), generator: Optional[torch.Generator] = None,
                  stack: Optional[LayerStack] = None, cache=None) -> CalmResult:
    """Generate up to ``max_new`` tokens after ``prompt`` with per-token exits (batch 1);
    ``cache``: an empty ``DynamicCache`` to fill (default a new one; tests inspect it)."""
    stack = stack or LayerStack(model)
    rule = as_rule(rule)
    L = stack.L
    if not 1 <= min_layer <= L:
        raise ConfigError(f"min_layer={min_layer} must lie in 1..{L}")
    if max_new < 1 or not prompt:
        raise ConfigError("calm_generate needs a non-empty prompt and max_new >= 1")
    t0 = time.perf_counter()
    cache = stack.new_cache() if cache is None else cache
    ids = torch.tensor([prompt], device=stack.device)
    h = stack.run(ids, P=0, cache=cache)
    y = int(sampling.pick(stack.readout(h[:, -1])[0], generator))
    out, layers = [y], []
    while len(out) < max_new and y != eos:
        P = len(prompt) + len(out) - 1
        h = stack.embed(torch.tensor([[y]], device=stack.device))
        positions = torch.tensor([[P]], device=stack.device)
        pe = stack.rope(h, positions)
        logits = None
        ran = L
        for i in range(L):
            prev = h
            h = stack.layer(i, h, pe=pe, mask=None, positions=positions, cache=cache)
            n = i + 1
            if n == L or n < min_layer:
                continue
            seen: dict[str, torch.Tensor] = {}

            def readout(state: torch.Tensor = h) -> torch.Tensor:
                seen["logits"] = stack.readout(state)
                return seen["logits"]

            if bool(rule(n=n, max_steps=L, h=h, prev=prev, logits=readout, position=positions)[0, 0]):
                ran = n
                logits = seen.get("logits")
                for j in range(n, L):  # the skipped layers' keys/values: state propagation
                    stack.propagate(j, h, pe=pe, cache=cache)
                break
        if logits is None:
            logits = stack.readout(h)
        y = int(sampling.pick(logits[0, -1], generator))
        out.append(y)
        layers.append(ran)
    return CalmResult(tokens=out, layers=layers, seconds=time.perf_counter() - t0)


def calm_custom_generate(model, input_ids: torch.Tensor, logits_processor=None,
                         stopping_criteria=None, generation_config=None, synced_gpus: bool = False,
                         streamer=None, exit_rule: Union[str, ConfidenceExit] = "softmax:0.9",
                         min_exit_layer: int = 1, calm_stats: Optional[list] = None,
                         ponder_seed: Optional[int] = None, **model_kwargs) -> torch.Tensor:
    """A transformers 5.x ``custom_generate`` callable: CALM exits under ``exit_rule``
    (``MEASURE:THRESHOLD[:decay]`` or a :class:`ConfidenceExit`), from layer
    ``min_exit_layer`` on. Greedy unless ``do_sample`` (then temperature/top-k/top-p; other
    logits processors and stopping criteria besides max_length/EOS are not applied).
    ``calm_stats`` (a list) receives one :class:`CalmResult` per row. → [B, P + new] ids."""
    stack = LayerStack(model)
    rule = as_rule(exit_rule)
    sampling = glue.sampling_of(generation_config)
    eos = glue.eos_of(generation_config)
    gen = glue.generator_of(ponder_seed)

    def one(prompt: list[int], max_new: int) -> list[int]:
        res = calm_generate(model, prompt, rule=rule, max_new=max_new, eos=eos,
                            min_layer=min_exit_layer, sampling=sampling, generator=gen, stack=stack)
        if calm_stats is not None:
            calm_stats.append(res)
        return res.tokens

    return glue.per_row(one, model, input_ids, generation_config, model_kwargs)
