"""``ponder bench --part decode --run RUN_DIR``: tokens/s of adaptive decoding against plain
cached decoding of the same model, measured in one run (interleaved rounds, medians).

Methods (greedy; every one is run on the same prompts of the run's valid split):

- ``plain``            cached decoding, every token at full depth (the reference);
- ``calm``             per-token exits at decode time (``--exit``; default the run's
                       confidence policy, else ``softmax:0.9``), propagated keys/values;
- ``self_spec``        self-speculation: draft with core steps 1..E (``--exit-step``),
                       up to ``--k`` drafts per round (fewer below ``--draft-stop``),
                       verify with the rest;
- ``spec``             speculative decoding with a separate draft model (``--draft RUN_DIR``).

Each at batch 1 (one sequence at a time: the latency regime speculation targets) and, for
plain and CALM, batched (``--decode-batch``: per-sample exits in a batch; a frozen row saves
only its own FFN and output projection). Per method: tokens/s, the speed-up over plain at the
same batch size (wall clock, same run), the ideal speed-up (FLOPs per token, where the method
has them), whether the greedy output equals plain greedy, exact match against the task's
answers, and for the speculative methods the vLLM acceptance metrics
(:mod:`ponder.generate.metrics`). The machine may be shared: the ratios, not the absolute
rates, are the result. Round 0 (a warm-up, untimed) produces the outputs and counts FLOPs
and steps; the timed rounds run without the FLOP count (bookkeeping the speculative loops
do not do either) and must reproduce round 0's outputs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ponder.errors import ConfigError


@dataclass
class DecodeBench:
    run: str
    draft: Optional[str] = None
    n: int = 32
    max_new: int = 64
    k: int = 4
    exit_step: int = 1
    exit: Optional[str] = None
    draft_stop: float = 0.0
    batch: int = 16
    repeats: int = 3


def _load(run_dir: str):
    from ponder.eval.evaluate import load_run
    from ponder.tasks.lm import LMView

    if not Path(run_dir).is_dir():
        raise ConfigError(f"run directory {run_dir!r} does not exist")
    run = load_run(run_dir)
    if not isinstance(run.task, LMView):
        raise ConfigError(f"run {run_dir!r} is not an LM-view run (train it with task.lm=true)")
    return run


def bench_decode(cfg: DecodeBench, *, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """→ {"task", "model", "methods": [records]} (see the module docstring)."""
    import torch

    from ponder.generate import Sampling, generate
    from ponder.generate.exits import ConfidenceExit, parse_exit, rule_from_policy
    from ponder.generate.speculative import self_speculative_generate, speculative_generate
    from ponder.tasks.lm import EOS

    for name in ("n", "max_new", "k", "exit_step", "batch", "repeats"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"decode bench {name}={getattr(cfg, name)} must be at least 1")
    run = _load(cfg.run)
    model, vocab = run.model, run.vocab
    if not 1 <= cfg.exit_step <= model.cfg.max_steps:
        raise ConfigError(f"--exit-step {cfg.exit_step} must lie in 1..{model.cfg.max_steps}")
    draft = _load(cfg.draft) if cfg.draft else None
    if draft is not None and len(draft.vocab) != len(vocab):
        raise ConfigError("the draft run's vocabulary differs from the target run's")
    if cfg.exit:
        rule = parse_exit(cfg.exit, model.policy)
    elif getattr(model.policy, "name", None) == "confidence":
        rule = rule_from_policy(model.policy)
    else:
        rule = ConfidenceExit(threshold=0.9)
    eos = vocab.stoi[EOS]
    items = [run.task.prompt("valid", i) for i in range(cfg.n)]
    prompts = [vocab.encode(p) for p, _, _ in items]
    answers = [vocab.encode(a) for _, a, _ in items]
    greedy = Sampling()
    kw = dict(max_new=cfg.max_new, eos=eos)

    # fn(prompts, count): ``count`` asks for the FLOP count (round 0 only: the timed rounds
    # skip that bookkeeping, which the speculative loops never do)
    def one_by_one(fn):
        def go(count):
            toks, steps, flops, stats = [], [], [], None
            for p in prompts:
                out = fn([p], count)
                toks += out.tokens
                if hasattr(out, "steps"):
                    steps += out.steps
                    flops += out.flops
                elif stats is None:
                    stats = out.stats
                else:
                    stats.merge(out.stats)
            return toks, steps, flops, stats
        return go

    def batched(fn):
        def go(count):
            toks, steps, flops = [], [], []
            for s in range(0, len(prompts), cfg.batch):
                out = fn(prompts[s:s + cfg.batch], count)
                toks += out.tokens
                steps += out.steps
                flops += out.flops
            return toks, steps, flops, None
        return go

    methods: dict[str, tuple[int, Callable]] = {
        "plain": (1, one_by_one(lambda p, c: generate(model, p, sampling=greedy, pad=vocab.pad_id,
                                                      count_flops=c, **kw))),
        "calm": (1, one_by_one(lambda p, c: generate(model, p, sampling=greedy, rule=rule,
                                                     pad=vocab.pad_id, count_flops=c, **kw))),
        "self_spec": (1, one_by_one(lambda p, c: self_speculative_generate(
            model, p, exit_step=cfg.exit_step, k=cfg.k, sampling=greedy, draft_stop=cfg.draft_stop,
            **kw))),
    }
    if draft is not None:
        methods["spec"] = (1, one_by_one(lambda p, c: speculative_generate(
            model, draft.model, p, k=cfg.k, sampling=greedy, draft_stop=cfg.draft_stop, **kw)))
    if cfg.batch > 1:
        methods["plain_batched"] = (cfg.batch, batched(
            lambda p, c: generate(model, p, sampling=greedy, pad=vocab.pad_id, count_flops=c, **kw)))
        methods["calm_batched"] = (cfg.batch, batched(
            lambda p, c: generate(model, p, sampling=greedy, rule=rule, pad=vocab.pad_id,
                                  count_flops=c, **kw)))
    times: dict[str, list[float]] = {m: [] for m in methods}
    results: dict[str, Any] = {}
    torch.manual_seed(0)
    for r in range(cfg.repeats + 1):  # round 0 warms up (allocations, first calls) and counts
        for name, (_, fn) in methods.items():
            t0 = time.perf_counter()
            res = fn(r == 0)
            dt = time.perf_counter() - t0
            if r == 0:
                results[name] = res
            else:
                times[name].append(dt)
                if res[0] != results[name][0]:  # greedy decoding is deterministic
                    raise RuntimeError(f"decode bench: {name} changed its output in round {r}")
        log(f"decode round {r}/{cfg.repeats}")
    plain_tokens = results["plain"][0]
    medians = {m: statistics.median(t) for m, t in times.items()}
    records = []
    for name, (batch, _) in methods.items():
        toks, steps, flops, stats = results[name]
        n_tok = sum(len(t) for t in toks)
        ref = "plain_batched" if batch > 1 else "plain"
        rec: dict[str, Any] = {
            "method": name, "batch": batch, "tokens": n_tok, "seconds": medians[name],
            "tokens_per_s": n_tok / medians[name],
            "speedup": (n_tok / medians[name]) / (sum(len(t) for t in results[ref][0]) / medians[ref]),
            "identical_to_greedy": toks == plain_tokens,
            "same_output_fraction": sum(a == b for a, b in zip(toks, plain_tokens)) / len(toks),
            "exact_match": sum(t == a for t, a in zip(toks, answers)) / len(toks),
        }
        if steps:
            flat_s = [s for row in steps for s in row[1:]]  # the generated tokens' own forwards
            flat_f = [f for row in flops for f in row[1:]]
            plain_f = [f for row in results["plain"][2] for f in row[1:]]
            rec["mean_steps"] = sum(flat_s) / max(1, len(flat_s))
            rec["ideal_speedup"] = ((sum(plain_f) / max(1, len(plain_f))) /
                                    (sum(flat_f) / max(1, len(flat_f)))) if flat_f else None
        if stats is not None:
            rec.update({f"spec_{k}": v for k, v in stats.to_json().items()
                        if k not in ("seconds", "tokens_per_s", "emitted_tokens")})
        records.append(rec)
    c = model.cfg
    return {"task": run.task.name, "run": str(cfg.run), "draft": cfg.draft,
            "model": {"kind": c.kind, "d_model": c.d_model, "max_steps": c.max_steps,
                      "prelude": c.prelude, "coda": c.coda, "policy": model.policy.name,
                      "layer_dropout": c.layer_dropout},
            "settings": {"n": cfg.n, "max_new": cfg.max_new, "k": cfg.k, "exit_step": cfg.exit_step,
                         "draft_stop": cfg.draft_stop,
                         "exit": cfg.exit or (f"policy:{rule.measure}:{rule.threshold}"
                                              if getattr(model.policy, "name", None) == "confidence"
                                              else "softmax:0.9"),
                         "batch": cfg.batch, "repeats": cfg.repeats},
            "methods": records}


def print_decode(doc: dict, out) -> None:
    print(f"decode: task {doc['task']} ({doc['model']['kind']}, N={doc['model']['max_steps']}, "
          f"d_model={doc['model']['d_model']}), {doc['settings']}", file=out)
    print(f"{'method':<14} {'batch':>5} {'tok/s':>9} {'speed-up':>8} {'ideal':>6} {'same':>5} "
          f"{'exact':>6} {'accept len':>10} {'accept rate':>11}", file=out)
    for r in doc["methods"]:
        ideal = r.get("ideal_speedup")
        print(f"{r['method']:<14} {r['batch']:>5} {r['tokens_per_s']:>9.1f} {r['speedup']:>8.2f} "
              f"{'' if ideal is None else f'{ideal:.2f}':>6} {str(r['identical_to_greedy'])[0]:>5} "
              f"{r['exact_match']:>6.3f} "
              f"{r.get('spec_mean_acceptance_length', float('nan')):>10.2f} "
              f"{r.get('spec_draft_acceptance_rate', float('nan')):>11.3f}", file=out)


def add_arguments(p) -> None:
    """The decode part's options of ``ponder bench``."""
    p.add_argument("--draft", default=None, metavar="RUN_DIR", help="decode: a draft model's run")
    p.add_argument("--k", type=int, default=4, help="decode: draft tokens per round")
    p.add_argument("--exit-step", type=int, default=1, help="decode: the self-speculative draft's depth")
    p.add_argument("--exit", default=None,
                   help="decode: CALM rule MEASURE:THRESHOLD[:decay] or policy (default: the run's)")
    p.add_argument("--draft-stop", type=float, default=0.0,
                   help="decode: stop drafting when the draft's top-1 probability is below this")
    p.add_argument("--n", type=int, default=None, help="decode: valid prompts (default 32; --quick 16)")
    p.add_argument("--max-new", type=int, default=64, help="decode: most tokens generated per prompt")
    p.add_argument("--decode-batch", type=int, default=16, help="decode: batch of the batched methods")


def run_from_args(args) -> int:
    """``ponder bench --part decode`` (the hook in ``ponder.apps.bench``)."""
    import sys

    import torch

    from ponder.benchmarking.timing import emit, machine

    if args.run is None:
        raise ConfigError("--part decode needs --run RUN_DIR (an LM-view run)")
    if args.repeats is not None and args.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    cfg = DecodeBench(run=args.run, draft=args.draft, k=args.k, exit_step=args.exit_step,
                      exit=args.exit, draft_stop=args.draft_stop, repeats=args.repeats or (2 if args.quick else 3),
                      n=args.n or (16 if args.quick else 32), max_new=args.max_new,
                      batch=args.decode_batch)
    out = sys.stderr if args.json else sys.stdout
    info = machine(args.threads)
    t0 = time.time()
    doc = bench_decode(cfg, log=lambda s: print(s, file=sys.stderr))
    info["seconds"] = round(time.time() - t0, 1)
    info["load_avg_end"] = machine(args.threads)["load_avg"]
    result = {"machine": info, "decode": [doc]}
    print_decode(doc, out)
    emit(result, out_path=args.out, as_json=args.json, out=out)
    return 0
