"""Self-speculative decoding (LayerSkip style) of a Hugging Face Llama-family model.

The draft is the model's first E layers read out through its own final norm + LM head; the
verifier runs layers E+1..L of the same columns from the draft's layer-E states, in one
chunk per round. ONE ``DynamicCache``: the draft writes layers 1..E of every column it opens,
the verifier then writes layers E+1..L of those columns (so the draft's keys/values of the
first E layers are reused, never recomputed), and the rejected drafts' columns are cut from
every layer. The rounds, the acceptance rule and the vLLM-schema counters are ponder's own
(:func:`ponder.generate.speculative.run_rounds`, :class:`~ponder.generate.metrics.SpecStats`):
greedy output equals plain greedy ``model.generate(do_sample=False)`` (test), sampled output
follows the model's own distribution.

This is ponder's own loop, not transformers' candidate-generator mechanism: transformers'
``EarlyExitCandidateGenerator`` drafts through a second, separate cache and the verifier
recomputes every layer of the drafted tokens, which is exactly the reuse LayerSkip is about.

    model.generate(ids, custom_generate=self_speculative_custom_generate, exit_layer=2,
                   draft_k=4, max_new_tokens=32, do_sample=False)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ponder.errors import ConfigError
from ponder.generate.sampling import Sampling
from ponder.generate.speculative import LayerExitDraft, SpecResult, run_rounds
from ponder.hf import glue
from ponder.hf.stack import LayerStack, crop


class HFSelfDraft(LayerExitDraft):
    """The draft/verify pieces :func:`run_rounds` drives, over one sequence, on a Hugging Face
    decoder stack: the draft is layers 1..E, the verifier layers E+1..L.

    ``columns``: tokens opened in the cache (layers < E hold all of them; layers ≥ E hold
    those verified so far); ``deep``: the layer-E states [1, T, D] of the columns not yet
    verified, with their first column.
    """

    def __init__(self, stack: LayerStack, exit_layer: int) -> None:
        if not 1 <= exit_layer <= stack.L:
            raise ConfigError(f"exit_layer={exit_layer} must lie in 1..{stack.L}")
        self.s, self.E = stack, exit_layer
        self.cache = stack.new_cache()
        self.columns = 0
        self.c0 = 0
        self.pending: list[int] = []
        self.deep: list[tuple[int, torch.Tensor]] = []

    def _open(self, ids: list[int], head: bool = True) -> Optional[torch.Tensor]:
        P = self.columns
        h = self.s.run(torch.tensor([ids], device=self.s.device), P=P, cache=self.cache, last=self.E)
        self.deep.append((P, h))
        self.columns += len(ids)
        return self.s.readout(h[:, -1:])[0, -1] if head else None

    def _deepen(self) -> torch.Tensor:
        P0 = self.deep[0][0]
        h = torch.cat([h for _, h in self.deep], 1)
        self.deep = []
        h = self.s.run(None, P=P0, cache=self.cache, first=self.E, h=h)
        return self.s.readout(h)[0]

    def _columns(self) -> int:
        return self.columns

    def settle(self, ds: list[int], n: int, y: int) -> None:
        # the pending token and the accepted drafts (an accepted EOS draft was never opened)
        self.columns = min(self.c0 + 1 + n, self.columns)
        crop(self.cache, self.columns)
        self.pending = [y]


@torch.no_grad()
def hf_self_speculative_generate(model: nn.Module, prompts: list[list[int]], *, exit_layer: int,
                                 k: int, max_new: int, eos: Optional[int],
                                 sampling: Sampling = Sampling(),
                                 generator: Optional[torch.Generator] = None,
                                 draft_stop: float = 0.0,
                                 stack: Optional[LayerStack] = None) -> SpecResult:
    """Self-speculative decoding of each prompt: draft with layers 1..``exit_layer``, up to
    ``k`` drafts per round (fewer below ``draft_stop``), verify with the rest."""
    stack = stack or LayerStack(model)
    return run_rounds(prompts, k=k, max_new=max_new, eos=eos, sampling=sampling,
                      generator=generator, draft_stop=draft_stop,
                      make=lambda cap: HFSelfDraft(stack, exit_layer))


def self_speculative_custom_generate(model, input_ids: torch.Tensor, logits_processor=None,
                                     stopping_criteria=None, generation_config=None,
                                     synced_gpus: bool = False, streamer=None, exit_layer: int = 1,
                                     draft_k: int = 4, draft_stop: float = 0.0,
                                     spec_stats: Optional[list] = None,
                                     ponder_seed: Optional[int] = None, **model_kwargs) -> torch.Tensor:
    """A transformers 5.x ``custom_generate`` callable: self-speculation with the first
    ``exit_layer`` layers as the draft, ``draft_k`` drafts per round. ``spec_stats`` (a
    list) receives the :class:`SpecStats` of each row. → [B, P + new] ids."""
    stack = LayerStack(model)
    sampling = glue.sampling_of(generation_config)
    eos = glue.eos_of(generation_config)
    gen = glue.generator_of(ponder_seed)

    def one(prompt: list[int], max_new: int) -> list[int]:
        res = hf_self_speculative_generate(model, [prompt], exit_layer=exit_layer, k=draft_k,
                                           max_new=max_new, eos=eos, sampling=sampling,
                                           generator=gen, draft_stop=draft_stop, stack=stack)
        if spec_stats is not None:
            spec_stats.append(res.stats)
        return res.tokens[0]

    return glue.per_row(one, model, input_ids, generation_config, model_kwargs)
