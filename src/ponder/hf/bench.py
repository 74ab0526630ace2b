"""Plain ``generate`` against ponder's CALM exits and self-speculation on one Hugging Face
model, side by side in one run (interleaved rounds, medians).

Methods (batch 1, one prompt at a time — the latency regime both target):

- ``plain``      ``model.generate(do_sample=False)`` (transformers' own loop; the reference);
- ``calm``       ``model.generate(custom_generate=calm_custom_generate, exit_rule=…)``;
- ``self_spec``  ``model.generate(custom_generate=self_speculative_custom_generate,
                 exit_layer=E, draft_k=k)``.

Per method: tokens/s, the speed-up over plain (wall clock, same run), whether the output
equals plain greedy, exact match against the task's answers (a ponder-task model), CALM's
mean layers per token, and self-speculation's vLLM acceptance metrics
(:class:`ponder.generate.metrics.SpecStats`). Also the per-layer agreement with the final
layer on plain greedy's sequences (teacher-forced; the generated positions).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ponder.errors import ConfigError


@dataclass
class HFBench:
    max_new: int = 32
    exit_layer: int = 1
    k: int = 4
    exit: str = "softmax:0.9"
    min_exit_layer: int = 1
    repeats: int = 3


def bench_hf(model: nn.Module, prompts: list[list[int]], cfg: HFBench, *,
             answers: Optional[list[list[int]]] = None,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """→ {"model", "settings", "agreement", "methods": [records]} (module docstring)."""
    from ponder.generate.metrics import SpecStats
    from ponder.hf.agreement import layer_agreement
    from ponder.hf.calm import calm_custom_generate
    from ponder.hf.selfspec import self_speculative_custom_generate
    from ponder.hf.stack import LayerStack

    for name in ("max_new", "exit_layer", "k", "repeats", "min_exit_layer"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"hf bench {name}={getattr(cfg, name)} must be at least 1")
    if not prompts:
        raise ConfigError("hf bench needs at least one prompt")
    L = LayerStack(model).L
    if cfg.exit_layer > L:
        raise ConfigError(f"--exit-layer {cfg.exit_layer} must lie in 1..{L}")
    model.eval()
    base = dict(do_sample=False, max_new_tokens=cfg.max_new)

    def run(extra: dict) -> Callable[[], tuple[list[list[int]], list]]:
        def go():
            toks, stats = [], []
            for p in prompts:
                kw = dict(base, **extra)
                if "custom_generate" in kw:
                    kw["calm_stats" if kw["custom_generate"] is calm_custom_generate
                       else "spec_stats"] = stats
                ids = torch.tensor([p], device=model.device)
                out = model.generate(ids, **kw)
                toks.append(_trim(out[0, len(p):].tolist(), model.generation_config))
            return toks, stats
        return go

    methods = {
        "plain": run({}),
        "calm": run({"custom_generate": calm_custom_generate, "exit_rule": cfg.exit,
                     "min_exit_layer": cfg.min_exit_layer}),
        "self_spec": run({"custom_generate": self_speculative_custom_generate,
                          "exit_layer": cfg.exit_layer, "draft_k": cfg.k}),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    results: dict[str, Any] = {}
    for r in range(cfg.repeats + 1):  # round 0 warms up and is the one whose outputs are kept
        for name, fn in methods.items():
            t0 = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t0
            if r == 0:
                results[name] = res
            else:
                times[name].append(dt)
        log(f"hf bench round {r}/{cfg.repeats}")
    plain = results["plain"][0]
    med = {m: statistics.median(t) for m, t in times.items()}
    plain_rate = sum(map(len, plain)) / med["plain"]
    records = []
    for name in methods:
        toks, stats = results[name]
        n_tok = sum(map(len, toks))
        rec: dict[str, Any] = {
            "method": name, "tokens": n_tok, "seconds": med[name], "tokens_per_s": n_tok / med[name],
            "speedup": (n_tok / med[name]) / plain_rate,
            "identical_to_greedy": toks == plain,
            "same_output_fraction": sum(a == b for a, b in zip(toks, plain)) / len(toks),
        }
        if answers is not None:
            rec["exact_match"] = sum(t == a for t, a in zip(toks, answers)) / len(toks)
        if name == "calm":
            layers = [n for s in stats for n in s.layers]
            rec["mean_layers"] = sum(layers) / max(1, len(layers))
        if name == "self_spec":
            total = SpecStats(k=cfg.k)
            for s in stats:
                total.merge(s)
            rec.update({f"spec_{k}": v for k, v in total.to_json().items()
                        if k not in ("seconds", "tokens_per_s", "emitted_tokens")})
        records.append(rec)
    # agreement on the generated positions of plain greedy's sequences
    batches = []
    for p, g in zip(prompts, plain):
        seq = torch.tensor([p + g], device=model.device)
        targets = torch.full_like(seq, -100)
        targets[0, len(p) - 1:len(p) - 1 + len(g)] = torch.tensor(g)  # the positions that wrote g
        batches.append((seq, targets))
    agree = layer_agreement(model, batches)
    c = model.config
    return {"model": {"class": type(model).__name__, "layers": L, "hidden_size": c.hidden_size,
                      "vocab_size": c.vocab_size, "dtype": str(next(model.parameters()).dtype)},
            "settings": {"prompts": len(prompts), "max_new": cfg.max_new, "exit_layer": cfg.exit_layer,
                         "k": cfg.k, "exit": cfg.exit, "min_exit_layer": cfg.min_exit_layer,
                         "repeats": cfg.repeats},
            "agreement": agree["agreement"], "methods": records}


def _trim(ids: list[int], generation_config) -> list[int]:
    """Drop the pad tail plain ``generate`` leaves after EOS (batch 1: none; kept general)."""
    eos = generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def print_hf(doc: dict, out) -> None:
    m, s = doc["model"], doc["settings"]
    print(f"hf bench: {m['class']} (L={m['layers']}, d={m['hidden_size']}, V={m['vocab_size']}, "
          f"{m['dtype']}), {s}", file=out)
    print("agreement with the final layer by layer: "
          + " ".join(f"{a:.3f}" for a in doc["agreement"]), file=out)
    print(f"{'method':<10} {'tok/s':>8} {'speed-up':>8} {'same':>5} {'exact':>6} {'layers':>6} "
          f"{'accept len':>10} {'accept rate':>11}", file=out)
    for r in doc["methods"]:
        exact = r.get("exact_match")
        layers = r.get("mean_layers")
        print(f"{r['method']:<10} {r['tokens_per_s']:>8.1f} {r['speedup']:>8.2f} "
              f"{str(r['identical_to_greedy'])[0]:>5} {'' if exact is None else f'{exact:.3f}':>6} "
              f"{'' if layers is None else f'{layers:.2f}':>6} "
              f"{r.get('spec_mean_acceptance_length', float('nan')):>10.2f} "
              f"{r.get('spec_draft_acceptance_rate', float('nan')):>11.3f}", file=out)
