"""Where a self-speculative round's time goes: CPU time of the decoder calls it is made of.

    PYTHONPATH=src .venv/bin/python benchmarks/decode_calls.py RUN_DIR --exit-step E [--json]

For an LM-view run: the thread CPU time (medians of 9 repeats; thread time, not wall time, so a
shared machine's other jobs inflate it less) of

- ``prefill``   a new decoder and the full-depth forward of valid prompt 0 (plain decoding's
                first call; self-speculation's prompt costs about the same in two calls);
- ``full``      one token at full depth (plain decoding's per-token call);
- ``draft``     one token at depth E with the draft readout (a draft call);
- ``deepen T``  steps E+1..N of T columns opened at depth E (the verification of a round
                of T − 1 drafts; the opening itself excluded).

From them: per-block and per-call overhead (``full − draft = (N − E)·block``), and the
ideal round of k accepted drafts against k + 1 plain tokens. Not a test: the figures depend
on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def cpu_us(setup, fn, n: int = 20, reps: int = 9) -> float:
    """Median over ``reps`` of the mean thread CPU time (µs) of ``fn(setup())`` over n calls."""
    res = []
    for _ in range(reps):
        state = setup()
        fn(state)  # warm
        t0 = time.thread_time()
        for _ in range(n):
            fn(state)
        res.append((time.thread_time() - t0) / n * 1e6)
    return statistics.median(res)


def measure(run_dir: str, exit_step: int, ks: tuple[int, ...] = (4, 8)) -> dict:
    from ponder.eval.evaluate import load_run
    from ponder.generate.decode import Decoder

    run = load_run(run_dir)
    model, vocab = run.model, run.vocab
    N, E = model.cfg.max_steps, exit_step
    prompt = torch.tensor([vocab.encode(run.task.prompt("valid", 0)[0])])
    one = torch.tensor([[vocab.encode(run.task.prompt("valid", 0)[0])[-1]]])

    def fresh() -> Decoder:
        dec = Decoder(model, batch=1, capacity=256, count_flops=False)
        dec.extend(prompt)
        return dec

    out = {"run": run_dir, "N": N, "E": E, "prompt_tokens": int(prompt.shape[1])}
    out["prefill"] = cpu_us(lambda: None, lambda _: fresh())
    out["full"] = cpu_us(fresh, lambda d: d.extend(one))
    out["draft"] = cpu_us(fresh, lambda d: d.extend(one, depth=E, coda="draft"))
    for k in ks:
        x = one.expand(1, k + 1).contiguous()

        def open_deepen(d: Decoder) -> None:
            ch = d.extend(x, depth=E, coda="draft", head=False)
            d.deepen(ch.h, ch.c0, first=E + 1)

        opened = cpu_us(fresh, lambda d: d.extend(x, depth=E, coda="draft", head=False), n=5)
        out[f"deepen {k + 1}"] = cpu_us(fresh, open_deepen, n=5) - opened
    block = (out["full"] - out["draft"]) / (N - E)
    out["block"] = block
    out["call_overhead"] = out["full"] - N * block
    for k in ks:
        rnd = (k + 1) * out["draft"] + out[f"deepen {k + 1}"]
        out[f"round k={k} (all accepted) vs plain"] = (k + 1) * out["full"] / rnd
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--exit-step", type=int, required=True)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    res = measure(args.run, args.exit_step)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    for key, val in res.items():
        print(f"{key:<34} {val:.2f}" if isinstance(val, float) else f"{key:<34} {val}")


if __name__ == "__main__":
    main()
