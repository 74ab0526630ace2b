"""``evaluate_run``: load a run's last checkpoint, score splits, write records and summaries.

For each split: ``RUN_DIR/eval/<split>.parquet`` (one row per scored token, the schema of
:mod:`ponder.eval.records`) and ``RUN_DIR/eval/<split>.json`` (the summary), both atomic.
``depth_curve`` (``ponder eval --depths``): the summary at each fixed loop count, in
``RUN_DIR/eval/depth_curve.json`` (a test-time-compute curve, beyond the training depth too).

``policy=`` (``ponder eval RUN_DIR --policy NAME[:knob=value,...]``) evaluates the checkpoint
under another halting rule: one training, many exits (the training-free convergence exits on
a fixed-depth checkpoint, Huginn's recipe). The results go to a separate directory ``out``
(default ``RUN_DIR/policies/<spec>``) that reads like a run for ``ponder analyze``: its
``config.yaml`` is the run's with the policy replaced, ``source.json`` names the checkpoint,
``eval/`` holds the records. A policy with parameters or buffers of its own is refused unless
it is the run's own policy (then only its knobs change and its trained weights are kept): the
checkpoint holds no trained weights for it. The run's own policy weights are dropped otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ponder.errors import ConfigError
from ponder.eval.records import FEATURE_PREFIX, PARAM_PREFIX
from ponder.eval.writer import write_records
from ponder.tasks import IGNORE_INDEX, SPLITS, Vocab, collate
from ponder.train.checkpoint import CKPT_DIR, atomic_write_text, load_checkpoint, load_weights
from ponder.train.config import PolicyConfig, TrainConfig, to_yaml
from ponder.train.rundir import CONFIG_FILE, read_run_config
from ponder.train.segments import forward_segments
from ponder.train.trainer import build_model, build_task

EVAL_DIR = "eval"
DEFAULT_SPLITS = ("valid", "ood")
DEFAULT_N = 1000
LABEL_SAMPLES = 3000  # train examples scanned for the label set when a task has no train_labels()
POLICY_DIR = "policies"  # default home of ``--policy`` evaluations inside the run directory
SOURCE_FILE = "source.json"


def run_metadata(cfg: TrainConfig, step: int) -> dict[str, Any]:
    """The ``ponder_run`` metadata stored with the records."""
    m = cfg.model
    return {"policy": cfg.policy.name, "policy_knobs": dict(cfg.policy.knobs),
            "task": cfg.task.name, "task_preset": cfg.task.preset, "task_knobs": dict(cfg.task.knobs),
            "model_kind": m.kind, "max_steps": m.max_steps, "d_model": m.d_model,
            "n_heads": m.n_heads, "d_ff": m.d_ff, "prelude": m.prelude, "coda": m.coda,
            "core": m.core, "positions": m.positions, "execution": m.execution,
            "checkpoint_step": step}


def train_label_set(task) -> frozenset[str]:
    """Target tokens seen in training: the task's own notion, else a scan of train examples."""
    labels = getattr(task, "train_labels", None)
    if callable(labels):
        return frozenset(labels())
    seen: set[str] = set()
    for i in range(LABEL_SAMPLES):
        seen.update(t for t in task.example("train", i).target if t is not None)
    return frozenset(seen)


@dataclass
class LoadedRun:
    cfg: TrainConfig
    task: Any
    vocab: Vocab
    model: torch.nn.Module
    step: int


def parse_policy(text: str) -> PolicyConfig:
    """``"NAME"`` or ``"NAME:knob=value,knob=value"`` → a validated PolicyConfig (ConfigError)."""
    from ponder.policies import policy_class
    from ponder.tasks.base import parse_knob

    name, _, rest = text.partition(":")
    cls = policy_class(name.strip())
    knobs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--policy {text!r}: expected NAME or NAME:knob=value[,knob=value...]")
        knobs[key.strip()] = parse_knob(cls.Knobs, key.strip(), value.strip())
    cls(**knobs)  # knob types and ranges (ConfigError)
    return PolicyConfig(name=cls.name, knobs=knobs)


def policy_slug(policy: PolicyConfig) -> str:
    """Directory name of a ``--policy`` evaluation: ``kl_exit`` or ``kl_exit-threshold=0.01``."""
    knobs = ",".join(f"{k}={v}" for k, v in sorted(policy.knobs.items()))
    text = policy.name + (f"-{knobs}" if knobs else "")
    return "".join(c if c.isalnum() or c in "_.=,-" else "_" for c in text)


def _policy_prefix(model: torch.nn.Module) -> str:
    """The state-dict prefix of the model's policy module (``"policy."``)."""
    for name, module in model.named_modules():
        if module is getattr(model, "policy", None):
            return name + "."
    raise ConfigError("this model has no policy module to replace")  # pragma: no cover


def load_run(run_dir: Path | str,
             model_factory: Callable[[TrainConfig, int], torch.nn.Module] | None = None, *,
             policy: PolicyConfig | None = None) -> LoadedRun:
    """The run's config, task, vocabulary and model with its last checkpoint's weights.

    ``policy``: build the model under this policy instead of the run's (see the module
    docstring: refused with a ConfigError when it has state the checkpoint cannot supply)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt = load_checkpoint(run_dir, with_state=False)
    weights = ckpt.weights
    trained_policy = cfg.policy.name
    if policy is not None:
        cfg = dataclasses.replace(cfg, policy=PolicyConfig(name=policy.name, knobs=dict(policy.knobs)))
    task = build_task(cfg)
    vocab = Vocab.for_task(task)
    model = (model_factory or build_model)(cfg, len(vocab))
    if policy is not None and policy.name != trained_policy:
        own = list(model.policy.state_dict())
        if own:
            raise ConfigError(f"--policy {policy.name}: it has trained state ({own[0]}, ...) that the "
                              f"checkpoint (trained with {trained_policy}) does not hold; "
                              f"only training-free policies can replace a run's policy")
        prefix = _policy_prefix(model)
        weights = {k: v for k, v in weights.items() if not k.startswith(prefix)}
    load_weights(model, weights)
    model.eval()
    return LoadedRun(cfg, task, vocab, model, ckpt.step)


def _policy_out(run_dir: Path, out: Path, run: LoadedRun, policy: PolicyConfig) -> None:
    """Make ``out`` a readable run directory for the ``--policy`` evaluation of ``run_dir``."""
    if out.resolve() == run_dir.resolve():
        raise ConfigError("--policy results cannot go into the run directory itself; use another --out")
    if (out / CKPT_DIR).exists():
        raise ConfigError(f"--out {str(out)!r} holds a trained run; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, to_yaml(run.cfg))
    source = {"run": str(run_dir.resolve()), "checkpoint_step": run.step,
              "policy": policy.name, "knobs": dict(policy.knobs)}
    atomic_write_text(out / SOURCE_FILE, json.dumps(source, indent=1))


@torch.no_grad()
def evaluate_split(run: LoadedRun, split: str, *, n: int, batch_size: int,
                   labels: frozenset[str], steps: int | None = None,
                   examples: Sequence[Any] | None = None) -> tuple[dict[str, list], dict[str, Any]]:
    """Score examples ``0..n-1`` of ``split``. Returns (record columns, summary).

    ``steps``: run the model at this loop count instead of its ``max_steps`` (a test-time
    depth, :func:`ponder.models.recurrent.check_depth` decides which models can). A run
    trained with deep supervision runs its K segments (``max_steps`` is then K·N).
    ``examples``: score these (drawn elsewhere, e.g. by a size sweep) instead; their rows
    are labelled ``split``.
    """
    task, vocab, model = run.task, run.vocab, run.model
    K = run.cfg.supervision.segments
    depth = {} if steps is None else {"steps": steps}
    N = K * (run.cfg.model.max_steps if steps is None else steps)
    cols: dict[str, list] = {k: [] for k in ("example", "split", "position", "token", "target",
                                             "prediction", "correct", "complexity", "steps",
                                             "max_steps", "seen_label", "seq_correct", "flops")}
    extra: dict[str, list] = {}
    wall = 0.0
    n_rows = 0
    n_seq = seq_ok_total = 0
    max_used = 0
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        batch_examples = (list(examples[start:stop]) if examples is not None
                          else [task.example(split, i) for i in range(start, stop)])
        batch = collate(batch_examples, vocab)
        t0 = time.perf_counter()
        out = forward_segments(model, batch.tokens, batch.mask, segments=K, **depth)
        wall += time.perf_counter() - t0
        pred = out.logits.argmax(-1)
        steps = out.steps.to(torch.long)
        scored = batch.targets != IGNORE_INDEX
        correct = (pred == batch.targets) & scored
        seq_ok = (correct | ~scored).all(-1)
        pred_l, steps_l, corr_l = pred.tolist(), steps.tolist(), correct.tolist()
        flops_l = out.flops.tolist() if out.flops is not None else None
        expert_l = out.extras["expert"].tolist() if "expert" in out.extras else None
        if expert_l is not None:
            cols.setdefault("expert", [math.nan] * n_rows)
        feats = {k: v.tolist() for k, v in batch.features.items()}
        for b, ex in enumerate(batch_examples):
            positions = ex.scored()
            if not positions:
                continue
            n_seq += 1
            seq_ok_total += bool(seq_ok[b])
            for pos in positions:
                target = ex.target[pos]
                cols["example"].append(ex.index)
                cols["split"].append(split)
                cols["position"].append(pos)
                cols["token"].append(ex.input[pos])
                cols["target"].append(target)
                cols["prediction"].append(vocab.itos[pred_l[b][pos]])
                cols["correct"].append(bool(corr_l[b][pos]))
                cols["complexity"].append(int(ex.complexity[pos]))
                cols["steps"].append(int(steps_l[b][pos]))
                max_used = max(max_used, int(steps_l[b][pos]))
                cols["max_steps"].append(N)
                cols["seen_label"].append(target in labels)
                cols["seq_correct"].append(bool(seq_ok[b]))
                cols["flops"].append(float(flops_l[b][pos]) if flops_l is not None else math.nan)
                if "expert" in cols:
                    e = expert_l[b][pos] if expert_l is not None else -1
                    cols["expert"].append(float(e) if e >= 0 else math.nan)
                for k, v in ex.params.items():
                    extra.setdefault(PARAM_PREFIX + k, [None] * n_rows).append(v)
                for k, v in feats.items():
                    extra.setdefault(FEATURE_PREFIX + k, [math.nan] * n_rows).append(float(v[b][pos]))
                n_rows += 1
                for k, v in extra.items():  # keys missing in this example
                    if len(v) < n_rows:
                        v.append(None if k.startswith(PARAM_PREFIX) else math.nan)
    cols.update(extra)
    summary = summarise(cols, n_examples=n_seq, seq_ok=seq_ok_total, max_steps=N, wall_s=wall)
    summary["max_steps_used"] = max_used
    return cols, summary


def _acc(correct: list[bool]) -> float | None:
    return sum(correct) / len(correct) if correct else None


def summarise(cols: dict[str, list], *, n_examples: int, seq_ok: int, max_steps: int,
              wall_s: float) -> dict[str, Any]:
    n = len(cols["correct"])
    token_steps = int(sum(cols["steps"]))
    seen = [c for c, s in zip(cols["correct"], cols["seen_label"]) if s]
    unseen = [c for c, s in zip(cols["correct"], cols["seen_label"]) if not s]
    return {
        "token_acc": _acc(cols["correct"]),
        "seq_acc": seq_ok / n_examples if n_examples else None,
        "mean_steps": token_steps / n if n else None,
        "max_steps": max_steps,
        "token_steps": token_steps,
        "fixed_token_steps": n * max_steps,
        "wall_s": wall_s,
        "n_tokens": n,
        "n_examples": n_examples,
        "acc_seen": _acc(seen),
        "acc_unseen": _acc(unseen),
        "n_seen": len(seen),
        "n_unseen": len(unseen),
    }


def _open(run_dir: Path, splits: Sequence[str], n: int, batch_size: int | None,
          threads: int | None, model_factory, policy: PolicyConfig | None,
          out: Path | str | None) -> tuple[LoadedRun, frozenset[str], int, Path]:
    """Check the arguments, load the run: (run, the training label set, batch size, the
    directory whose ``eval/`` receives the results)."""
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if out is not None and policy is None:
        raise ConfigError("--out is only for --policy (a plain eval writes into RUN_DIR/eval)")
    run = load_run(run_dir, model_factory, policy=policy)
    target = run_dir
    if policy is not None:
        target = Path(out) if out is not None else run_dir / POLICY_DIR / policy_slug(policy)
        _policy_out(run_dir, target, run, policy)
    torch.set_num_threads(threads or run.cfg.run.threads)
    return run, train_label_set(run.task), batch_size or max(run.cfg.run.batch_size, 256), target


def evaluate_run(run_dir: Path | str, splits: Sequence[str] = DEFAULT_SPLITS, *, n: int = DEFAULT_N,
                 batch_size: int | None = None, threads: int | None = None,
                 model_factory: Callable[[TrainConfig, int], torch.nn.Module] | None = None,
                 log: Callable[[str], None] | None = None, policy: PolicyConfig | None = None,
                 out: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate ``splits`` of the run in ``run_dir``; returns ``{split: summary}``.
    ``policy`` / ``out``: under another policy, into ``out`` (module docstring)."""
    run_dir = Path(run_dir)
    run, labels, bs, target = _open(run_dir, splits, n, batch_size, threads, model_factory, policy, out)
    meta = run_metadata(run.cfg, run.step)
    out_dir = target / EVAL_DIR
    out_dir.mkdir(exist_ok=True)
    results = {}
    for split in splits:
        cols, summary = evaluate_split(run, split, n=n, batch_size=bs, labels=labels)
        summary = {"split": split, "checkpoint_step": run.step, **summary}
        write_records(out_dir / f"{split}.parquet", cols, meta)
        atomic_write_text(out_dir / f"{split}.json", json.dumps(summary, indent=1))
        results[split] = summary
        if log:
            log(f"{split}: token acc {summary['token_acc']:.4f}, seq acc {summary['seq_acc']:.4f}, "
                f"mean steps {summary['mean_steps']:.2f} of {summary['max_steps']} "
                f"({summary['n_tokens']} tokens) → {out_dir / (split + '.parquet')}")
    return results


DEPTH_CURVE_FILE = "depth_curve.json"
CURVE_KEYS = ("token_acc", "seq_acc", "mean_steps", "acc_seen", "acc_unseen", "n_tokens")


def parse_depths(text: str) -> list[int]:
    """``"1:12"`` (inclusive range) or ``"1,2,4,8"`` → sorted distinct loop counts (ConfigError)."""
    try:
        if ":" in text:
            lo, hi = (int(x) for x in text.split(":"))
            depths = list(range(lo, hi + 1))
        else:
            depths = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--depths {text!r}: expected A:B or a comma list of integers") from None
    if not depths or min(depths) < 1:
        raise ConfigError(f"--depths {text!r}: loop counts must be >= 1 (and the range non-empty)")
    return sorted(set(depths))


def depth_curve(run_dir: Path | str, depths: Sequence[int], splits: Sequence[str] = DEFAULT_SPLITS, *,
                n: int = DEFAULT_N, batch_size: int | None = None, threads: int | None = None,
                model_factory: Callable[[TrainConfig, int], torch.nn.Module] | None = None,
                log: Callable[[str], None] | None = None, policy: PolicyConfig | None = None,
                out: Path | str | None = None) -> dict[str, Any]:
    """Accuracy and mean steps at each fixed loop count in ``depths`` (the policy still
    halts within it), per split; written to ``RUN_DIR/eval/depth_curve.json`` (with
    ``policy``: to ``out``'s, as :func:`evaluate_run`)."""
    run_dir = Path(run_dir)
    run, labels, bs, target = _open(run_dir, splits, n, batch_size, threads, model_factory, policy, out)
    curve: dict[str, list] = {}
    for split in splits:
        rows = []
        for d in depths:
            _, summary = evaluate_split(run, split, n=n, batch_size=bs, labels=labels, steps=d)
            rows.append({"steps": d, **{k: summary[k] for k in CURVE_KEYS}})
            if log:
                log(f"{split} @ {d} steps: token acc {summary['token_acc']:.4f}, "
                    f"mean steps {summary['mean_steps']:.2f}")
        curve[split] = rows
    result = {"checkpoint_step": run.step, "trained_max_steps": run.cfg.model.max_steps,
              "segments": run.cfg.supervision.segments, "n": n, "splits": curve}
    out_dir = target / EVAL_DIR
    out_dir.mkdir(exist_ok=True)
    atomic_write_text(out_dir / DEPTH_CURVE_FILE, json.dumps(result, indent=1))
    return result
