"""A Llama-family causal LM seen as a stack ponder can stop early.

    embed_tokens → layers[0] … layers[L−1] → norm → lm_head        (L = config.num_hidden_layers)

:class:`LayerStack` runs those pieces one layer at a time against a transformers
``DynamicCache``, reads any layer out through the model's own final norm and LM head, and
fills a skipped layer's keys/values from a frozen state (CALM's state propagation). Any
``*ForCausalLM`` built that way is accepted (Llama, Qwen2/3, SmolLM, …); others — GPT-2's
``transformer.h``, sliding-window or hybrid attention — are refused with one ConfigError line.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ponder.errors import ConfigError


def require_transformers():
    """The transformers module, or one ConfigError line saying how to install it."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise ConfigError("ponder.hf needs transformers: pip install 'ponder[hf]'") from None
    return transformers


def check_llama_family(model: nn.Module) -> None:
    """Refuse (one ConfigError line) a model :class:`LayerStack` cannot run."""
    name = type(model).__name__
    base = getattr(model, "model", None)
    need = "decoder layers at model.model.layers, final norm model.model.norm, head lm_head"
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"ponder.hf wraps decoder-only causal LMs; {name} is not one")
    missing = [p for p, ok in (
        ("model.model.layers", isinstance(getattr(base, "layers", None), nn.ModuleList)),
        ("model.model.norm", isinstance(getattr(base, "norm", None), nn.Module)),
        ("model.model.embed_tokens", isinstance(getattr(base, "embed_tokens", None), nn.Module)),
        ("model.model.rotary_emb", isinstance(getattr(base, "rotary_emb", None), nn.Module)),
        ("model.lm_head", isinstance(getattr(model, "lm_head", None), nn.Module)),
    ) if not ok]
    if missing:
        raise ConfigError(f"ponder.hf wraps Llama-family causal LMs ({need}); {name} has no "
                          f"{missing[0]}")
    L = getattr(config, "num_hidden_layers", None)
    if not isinstance(L, int) or not 1 <= L <= len(base.layers):
        raise ConfigError(f"{name}: config.num_hidden_layers={L!r} does not slice its "
                          f"{len(base.layers)} decoder layers")
    for i, layer in enumerate(base.layers[:L]):
        if not (hasattr(layer, "self_attn") and hasattr(layer, "input_layernorm")):
            raise ConfigError(f"{name}: decoder layer {i} has no self_attn/input_layernorm "
                              "(not a Llama-family layer)")
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if kinds != {"full_attention"} or sliding:
        raise ConfigError(f"{name}: ponder.hf runs full-attention layers only "
                          f"(layer types {sorted(kinds)}, sliding_window={getattr(config, 'sliding_window', None)})")


class _Stop(Exception):
    """Raised by :class:`_WriteThenStop` once the keys/values are cached."""


class _WriteThenStop:
    """A cache stand-in for one attention call: writes the call's keys/values to the real
    cache, then stops the call (the queries, attention and output projection are not needed
    for a frozen token)."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.cache.update(key_states, value_states, layer_idx, *args, **kwargs)
        raise _Stop


class LayerStack:
    """Layer-by-layer access to a Llama-family ``*ForCausalLM`` (eval mode, no autograd
    needed; the training recipe runs :meth:`layer` with autograd).

    Shapes: ids [B, T] long; h [B, T, D]; positions [B, T] long; logits [B, T, V].
    Invariant of every call on a chunk of T tokens at positions P..P+T−1: each layer's
    cache holds exactly the P columns before the chunk when that layer runs on it.
    """

    def __init__(self, model: nn.Module) -> None:
        require_transformers()
        check_llama_family(model)
        self.model = model
        self.base = model.model
        self.L: int = model.config.num_hidden_layers
        self.layers = list(self.base.layers[:self.L])
        p = model.lm_head.weight
        self.dtype, self.device = p.dtype, p.device
        self.sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(ids)

    def rope(self, h: torch.Tensor, positions: torch.Tensor):
        """(cos, sin) of the rows at ``positions`` (the model's own rotary embedding)."""
        return self.base.rotary_emb(h, position_ids=positions)

    def mask(self, P: int, T: int) -> Optional[torch.Tensor]:
        """[1, 1, T, P+T] additive mask: query t (position P+t) sees keys 0..P+t; None where
        the attention needs none (one query sees every key; or SDPA's own causal flag, which
        is right when there is no past: P = 0)."""
        if T == 1 or (P == 0 and self.sdpa):
            return None
        keys = torch.arange(P + T, device=self.device)
        queries = P + torch.arange(T, device=self.device)
        blocked = keys[None, :] > queries[:, None]
        m = torch.zeros(T, P + T, dtype=self.dtype, device=self.device)
        return m.masked_fill(blocked, torch.finfo(self.dtype).min)[None, None]

    def layer(self, i: int, h: torch.Tensor, *, pe, mask: Optional[torch.Tensor], positions,
              cache) -> torch.Tensor:
        """Decoder layer i on the chunk (its keys/values appended to ``cache``; None: no cache)."""
        out = self.layers[i](h, attention_mask=mask, position_embeddings=pe, position_ids=positions,
                             cache=cache, use_cache=cache is not None)
        return out[0] if isinstance(out, tuple) else out

    def propagate(self, i: int, h: torch.Tensor, *, pe, cache) -> None:
        """CALM's state propagation: layer i's keys/values of the frozen states ``h`` (its
        own input norm, key/value projections and rotary — whatever the family does there,
        e.g. Qwen3's key norm) into ``cache``; the rest of the layer is not run."""
        layer = self.layers[i]
        try:
            layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=pe,
                            attention_mask=None, cache=_WriteThenStop(cache))
        except _Stop:
            return
        raise RuntimeError(f"layer {i}'s attention did not write its keys/values to the cache")

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of states at any depth through the model's final norm and LM head."""
        return self.model.lm_head(self.base.norm(h))

    def run(self, ids: torch.Tensor, *, P: int, cache, first: int = 0, last: Optional[int] = None,
            h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Layers ``first .. last−1`` (default all) of a chunk at positions P..P+T−1: from
        its ids (``first`` = 0) or from its states ``h`` → the states after layer last−1."""
        last = self.L if last is None else last
        h = self.embed(ids) if h is None else h
        T = h.shape[1]
        positions = torch.arange(P, P + T, device=self.device)[None].expand(h.shape[0], T)
        pe, mask = self.rope(h, positions), self.mask(P, T)
        for i in range(first, last):
            h = self.layer(i, h, pe=pe, mask=mask, positions=positions, cache=cache)
        return h

    @torch.no_grad()
    def layer_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Every layer's readout of a whole sequence (no cache): ids [B, T] → [L, B, T, V]."""
        h = self.embed(ids)
        T = h.shape[1]
        positions = torch.arange(T, device=self.device)[None].expand(h.shape[0], T)
        pe, mask = self.rope(h, positions), self.mask(0, T)
        out = []
        for i in range(self.L):
            h = self.layer(i, h, pe=pe, mask=mask, positions=positions, cache=None)
            out.append(self.readout(h))
        return torch.stack(out)


def crop(cache, columns: int) -> None:
    """Forget every column from ``columns`` on in every layer of a ``DynamicCache`` (direct
    slicing: ``Cache.crop``'s argument changed meaning within 5.x)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[..., :columns, :]
            layer.values = layer.values[..., :columns, :]


def cache_lengths(cache) -> list[int]:
    """Columns held by each layer of a cache (a self-speculative draft leaves the deep ones
    behind until they are verified)."""
    return [layer.keys.shape[-2] if getattr(layer, "keys", None) is not None and layer.keys.numel()
            else 0 for layer in cache.layers]
