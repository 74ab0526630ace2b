"""Routed-expert FFNs against a dense FFN with the same *active* parameters.

For 8 experts, top-1 and top-2, d_model ∈ {128, 256} and batch × seq ∈ {4,096, 16,384} tokens
(``--quick``: 4,096 only), each MoE FFN kind (its default capacity and aux losses) and the
``dense`` FFN of width d_ff = 4·d_model (an expert of a top-k kind has width d_ff / k, so a
token's active FFN parameters are the dense one's, plus the router) are timed interleaved
in one run (2 warm-up rounds, then the timed ones), at inference (forward, no autograd) and in training (forward + backward), on
float32 rows ``[tokens, d_model]`` with a context of sequences of 256. ``ratio`` = MoE time /
dense time of the same configuration and mode.

Also timed: ``torch.nn.functional.grouped_mm`` against the per-expert loop the sorted
dispatch uses, on the same sorted rows (forward of the first expert matmul; whether its
backward runs on this CPU is recorded) — the measurement behind the dispatch's choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ponder.benchmarking.timing import interleaved, median, spread
from ponder.models.kinds import FFNS
from ponder.models.layers import AttnContext

N_EXPERTS = 8
SEQ = 256


@dataclass
class ExpertRecord:
    kind: str
    k: int
    d_model: int
    tokens: int
    mode: str              # inference | training
    seconds: float         # median per call
    us_per_token: float
    spread: float
    ratio: float           # to dense of the same configuration and mode

    def to_json(self) -> dict:
        return {"bench": "experts", **asdict(self)}


def kinds_for(k: int) -> list[tuple[str, dict]]:
    """(kind, knobs) timed at top-k (the kinds whose per-token expert count is k)."""
    base = {"n_experts": N_EXPERTS}
    if k == 1:
        return [("switch", base), ("topk", {**base, "k": 1}), ("hash", base),
                ("sigma_moe", {**base, "k": 1}), ("expert_choice", {**base, "capacity": 1.0})]
    return [("topk", {**base, "k": k}), ("sigma_moe", {**base, "k": k}),
            ("expert_choice", {**base, "capacity": float(k), "d_expert": 0})]


def build(kind: str, knobs: dict, d_model: int, k: int) -> torch.nn.Module:
    d_ff = 4 * d_model
    if kind == "expert_choice":  # an expert of width d_ff / k, as the top-k kinds
        knobs = {**knobs, "d_expert": d_ff // k}
    torch.manual_seed(0)
    return FFNS.cls(kind)(d_model=d_model, d_ff=d_ff, knobs=FFNS.knobs(kind, knobs) if kind != "dense" else None)


def call(ffn: torch.nn.Module, x: torch.Tensor, training: bool) -> Callable[[], object]:
    tokens = x.shape[0]
    mask = torch.ones(tokens // SEQ, SEQ, dtype=torch.bool)

    def fn() -> object:
        ctx = AttnContext(attn_mask=None, key_mask=mask, causal=False)
        if training:
            xx = x.detach().requires_grad_(True)
            y = ffn(xx, ctx, None)
            loss = y.square().mean()
            for term in ctx.aux_terms().values():
                loss = loss + term
            loss.backward()
            return None
        with torch.no_grad():
            return ffn(x, ctx, None)
    return fn


def grouped_mm_check(d_model: int, tokens: int, repeats: int) -> dict[str, Any]:
    """grouped_mm vs the per-expert loop: forward of [tokens, D] × [E, D, 4D/E·…] on sorted rows."""
    g = torch.Generator().manual_seed(0)
    H = 4 * d_model
    x = torch.randn(tokens, d_model, generator=g)
    w = torch.randn(N_EXPERTS, d_model, H, generator=g) / d_model ** 0.5
    expert = torch.randint(0, N_EXPERTS, (tokens,), generator=g).sort().values
    counts = torch.bincount(expert, minlength=N_EXPERTS)
    offs = counts.cumsum(0).to(torch.int32)
    sizes = counts.tolist()
    out: dict[str, Any] = {"bench": "experts_grouped_mm", "d_model": d_model, "tokens": tokens}
    if not hasattr(F, "grouped_mm"):
        out["available"] = False
        return out

    def loop() -> object:
        return torch.cat([part @ w[e] for e, part in enumerate(x.split(sizes))])

    def grouped() -> object:
        return F.grouped_mm(x, w, offs=offs)

    out["available"] = True
    out["equal"] = bool(torch.allclose(loop(), grouped(), atol=1e-3, rtol=1e-3))
    times = interleaved({"loop": loop, "grouped_mm": grouped}, repeats=repeats, warmup=1)
    out["loop_seconds"] = median(times["loop"])
    out["grouped_mm_seconds"] = median(times["grouped_mm"])
    out["ratio"] = out["grouped_mm_seconds"] / out["loop_seconds"]
    try:
        xx, ww = x[:64].clone().requires_grad_(True), w.clone().requires_grad_(True)
        F.grouped_mm(xx, ww, offs=torch.tensor([8 * (i + 1) for i in range(N_EXPERTS)],
                                               dtype=torch.int32)).sum().backward()
        out["backward"] = "ok"
    except RuntimeError as exc:  # torch 2.13 CPU: "Invalid strides/sizes"
        out["backward"] = f"error: {str(exc).splitlines()[0][:120]}"
    try:
        F.grouped_mm(x[:64].double(), w.double(), offs=offs.clamp(max=64))
        out["float64"] = "ok"
    except RuntimeError as exc:
        out["float64"] = f"error: {str(exc).splitlines()[0][:120]}"
    return out


def bench_experts(*, quick: bool, repeats: int,
                  on_round: Optional[Callable[[str], Callable[[int, int], None]]] = None,
                  d_models: tuple[int, ...] = (128, 256),
                  sizes: Optional[tuple[int, ...]] = None) -> dict[str, list]:
    """→ {"records": [ExpertRecord json], "grouped_mm": [check json]}; ``sizes``: tokens per
    call (multiples of 256; default 4,096 and 16,384, ``quick`` 4,096)."""
    records: list[ExpertRecord] = []
    sizes = sizes or ((4096,) if quick else (4096, 16384))
    for d_model in d_models:
        for tokens in sizes:
            x = torch.randn(tokens, d_model, generator=torch.Generator().manual_seed(1))
            for k in (1, 2):
                ffns = {"dense": build("dense", {}, d_model, k)}
                for kind, knobs in kinds_for(k):
                    ffns[kind] = build(kind, knobs, d_model, k)
                for mode in ("inference", "training"):
                    training = mode == "training"
                    for f in ffns.values():
                        f.train(training)
                    fns = {name: call(f, x, training) for name, f in ffns.items()}
                    label = f"experts d_model={d_model} tokens={tokens} top-{k} {mode}"
                    # 2 warm-up rounds: the first configuration otherwise pays one-time costs
                    # (allocator growth, first-touch pages) inside its timed rounds
                    times = interleaved(fns, repeats=repeats, warmup=2,
                                        on_round=on_round(label) if on_round else None)
                    dense = median(times["dense"])
                    for name, t in times.items():  # dense: re-timed in each k's rounds
                        m = median(t)
                        records.append(ExpertRecord(kind=name, k=k, d_model=d_model, tokens=tokens,
                                                    mode=mode, seconds=m, us_per_token=m / tokens * 1e6,
                                                    spread=spread(t), ratio=m / dense))
    checks = [grouped_mm_check(d, max(sizes), repeats) for d in d_models]
    return {"records": [r.to_json() for r in records], "grouped_mm": checks}


def print_experts(doc: dict[str, list], out) -> None:
    """One line per (d_model, tokens, mode, k): each kind's time ratio to dense."""
    rows: dict[tuple, list[str]] = {}
    for r in doc["records"]:
        if r["kind"] == "dense":
            continue
        key = (r["d_model"], r["tokens"], r["mode"], r["k"])
        rows.setdefault(key, []).append(f"{r['kind']} {r['ratio']:.2f}×")
    print("experts: time relative to a dense FFN with the same active parameters (8 experts)", file=out)
    for (d, t, mode, k), cells in sorted(rows.items()):
        print(f"  d_model={d} tokens={t} {mode:9s} top-{k}: " + ", ".join(cells), file=out)
    for c in doc["grouped_mm"]:
        if c.get("available"):
            print(f"  grouped_mm / loop (forward, d_model={c['d_model']}, {c['tokens']} tokens): "
                  f"{c['ratio']:.2f}×; backward: {c['backward']}; float64: {c['float64']}", file=out)
