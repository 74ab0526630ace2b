"""One trainer for every task × model × policy.

``train(cfg, run_dir)`` builds the task, policy and model from the config, then runs AdamW
with warm-up + cosine, gradient clipping and periodic validation, logging to
``metrics.jsonl`` / TensorBoard and checkpointing atomically. Data comes by index (batch
``b`` of the train split is always the same examples), and the checkpoint records the next
batch index and every RNG state, so a killed run resumed from its last checkpoint continues
exactly as if it had never stopped.

Data parallel (``torchrun``): each rank reads its share of global batch ``b``
(``rank_indices``); gradients are summed over ranks with each rank's loss weighted by its
share of the GLOBAL batch's scored tokens, so K processes take the same step as one process
with the same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ponder.errors import CheckpointError, PonderError
from ponder.tasks import Vocab, stream
from ponder.train import distributed as D
from ponder.train.checkpoint import (atomic_write_text, has_checkpoint, load_checkpoint,
                                     load_weights, save_checkpoint)
from ponder.train import depth as depth_rand
from ponder.train import segments
from ponder.train.config import TrainConfig, validate_names
from ponder.train.metrics import MetricsWriter
from ponder.train.prefetch import Prefetcher
from ponder.train.progress import TrainProgress
from ponder.train.rng import rng_state, seed_everything, set_rng_state
from ponder.train.rundir import check_run_dir, write_run_config
from ponder.train.schedule import make_scheduler
from ponder.train.validate import batch_counts, validate

RESULT_FILE = "result.json"


class DivergedError(PonderError):
    """The loss or the gradient became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    step: int
    reason: str                       # steps | time_budget | target_acc | already_finished
    train_s: float                    # wall-clock seconds of training (summed over resumes)
    valid: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None


def build_task(cfg: TrainConfig):
    import ponder.tasks
    from ponder.tasks.lm import maybe_lm

    task = ponder.tasks.get(cfg.task.name, cfg.task.preset, **dict(cfg.task.knobs))
    return maybe_lm(task, bool(getattr(cfg.task, "lm", False)))


def build_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """Policy from its registry, then the model around it (``ponder.models.build``)."""
    import ponder.models
    import ponder.policies

    policy = ponder.policies.get(cfg.policy.name, **dict(cfg.policy.knobs))
    tokens = None
    if getattr(cfg.model, "token_parts", False):  # the task's vocabulary strings, in id order
        from ponder.tasks.vocab import Vocab

        tokens = Vocab.for_task(build_task(cfg)).itos
    return ponder.models.build(cfg.model, policy, vocab_size=vocab_size, tokens=tokens)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PonderError("run.device=cuda but no CUDA device is available")
    return torch.device(name)


def _finite(x: float) -> bool:
    return math.isfinite(x)


class Trainer:
    """Holds everything of one run; :meth:`run` trains until a stop condition."""

    def __init__(self, *, cfg: TrainConfig, run_dir: Path | str, progress: str = "auto",
                 label: str | None = None,
                 model_factory: Callable[[TrainConfig, int], torch.nn.Module] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress_mode = progress
        self.label = label or self.run_dir.name
        self.model_factory = model_factory or build_model

    # ---- set-up -----------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.run.device)
        self.world = D.init_world(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        torch.set_num_threads(cfg.run.threads)
        validate_names(cfg)
        # Every rank checks the directory before rank 0 writes into it.
        existing = check_run_dir(self.run_dir, cfg)
        self.resume = existing and has_checkpoint(self.run_dir)
        self.ckpt = load_checkpoint(self.run_dir) if self.resume else None

        seed_everything(cfg.run.seed)
        self.task = build_task(cfg)
        self.vocab = Vocab.for_task(self.task)
        self.model = self.model_factory(cfg, len(self.vocab)).to(self.device)
        depth_rand.check_model(cfg.depth, self.model)
        segments.check_model(cfg.supervision, self.model)
        D.broadcast_params(self.model, self.world)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.run.steps)
        self.step = 0
        self.next_batch = 0
        self.prior_s = 0.0
        self.last_valid: dict[str, float] = {}
        self.finished: str | None = None
        if self.ckpt is not None:
            self._restore(self.ckpt)

        if self.world.size > cfg.run.batch_size or cfg.run.batch_size % self.world.size:
            raise PonderError(f"run.batch_size {cfg.run.batch_size} must be a multiple of the "
                              f"{self.world.size} data-parallel processes")
        b = cfg.run.batch_size
        self.valid_batches = list(stream(self.task, "valid", self.vocab, batch_size=b,
                                         num_batches=cfg.run.valid_batches,
                                         rank=self.world.rank, world=self.world.size))
        # Written only once everything above succeeded: a config the model or the task
        # refuses never leaves a half-made run directory behind.
        D.barrier(self.world)
        if self.world.is_main and not existing:
            write_run_config(self.run_dir, cfg)

    def _restore(self, ckpt) -> None:
        load_weights(self.model, ckpt.weights)
        s = ckpt.state
        try:
            self.optimizer.load_state_dict(s["optimizer"])
            self.scheduler.load_state_dict(s["scheduler"])
            self.step = int(s["step"])
            self.next_batch = int(s["next_batch"])
            self.prior_s = float(s["train_s"])
            self.last_valid = dict(s.get("valid", {}))
            self.finished = s.get("finished")
            set_rng_state(s["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint in {str(self.run_dir)!r} has an unusable training "
                                  f"state ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None

    def _save(self, train_s: float) -> None:
        state = {
            "step": self.step,
            "next_batch": self.next_batch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "train_s": train_s,
            "valid": self.last_valid,
            "finished": self.finished,
        }
        if self.world.is_main:
            save_checkpoint(self.run_dir, step=self.step, model=self.model, state=state,
                            info={"finished": self.finished, "train_s": train_s,
                                  "valid": self.last_valid, "next_batch": self.next_batch})
        D.barrier(self.world)

    # ---- one optimiser step -------------------------------------------------------------
    def _train_step(self, batch) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        """Forward, global-token-weighted backward, gradient all-reduce, clip, update.

        With deep supervision (``supervision.segments`` K > 1) the batch runs K segments, the
        state carried and detached between them, a loss per segment, and an optimiser update
        after each (or one on the mean loss); the schedule advances once per batch.

        Returns the global counts ``[scored, correct, steps on scored, ..., loss·scored,
        real tokens]`` (summed over ranks; of the last segment) and the model's stats on this rank.
        """
        tokens = batch.tokens.to(self.device)
        mask = batch.mask.to(self.device)
        targets = batch.targets.to(self.device)
        self.model.train()
        # depth randomisation: this step's loop count, drawn from (seed, step) only
        depth = depth_rand.forward_kwargs(self.cfg.depth, max_steps=self.cfg.model.max_steps,
                                          seed=self.cfg.run.seed, step=self.step)
        sup = self.cfg.supervision
        K = sup.segments
        state = None
        pending = None  # the summed segment losses awaiting one update (step_per_segment=false)
        seg_losses: dict[str, float] = {}
        for k in range(K):
            kwargs = dict(depth) if state is None else {**depth, "state": state}
            out = self.model(tokens, mask, **kwargs)
            # oracle-supervised policies read the task's per-token complexity in their loss
            out.extras["complexity"] = batch.complexity.to(self.device)
            loss, stats = self.model.loss(out, targets)
            sums, loss = self._global_loss(out, loss, targets, mask)
            if K > 1:
                state = out.extras["state"].detach()
                seg_losses[f"segment{k + 1}_loss"] = float(loss.detach())
                if not sup.step_per_segment:
                    pending = loss / K if pending is None else pending + loss / K
                    if k < K - 1:
                        continue
                    loss = pending
            norm = self._update(loss)
        self.scheduler.step()
        stats.update(seg_losses)
        if "steps" in depth:
            stats["loop_steps"] = float(depth["steps"])
        return sums, stats, norm

    def _global_loss(self, out, loss: torch.Tensor, targets: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global counts of this forward (summed over ranks), a divergence check, and the
        loss reweighted for data parallelism."""
        with torch.no_grad():
            counts = batch_counts(out.logits, out.steps, targets)
            n_local = counts[0].clone()
            extra = torch.stack([loss.detach().to(torch.float64) * n_local,
                                 mask.sum().to(torch.float64),
                                 torch.tensor(0.0 if torch.isfinite(loss) else 1.0,
                                              dtype=torch.float64, device=self.device)])
            sums = D.all_reduce_sum(torch.cat([counts, extra]), self.world)
        if sums[7] > 0:
            raise DivergedError(f"loss is {float(loss.detach())} at step {self.step + 1}")
        if self.world.distributed:
            # Means over the GLOBAL batch, not a mean of per-rank means: the objective is a
            # mean over scored tokens and the policy's aux loss a mean over real tokens, so
            # each is weighted by this rank's share of the global count; the gradient SUM
            # below then equals the one-process gradient. (One process skips this entirely.)
            aux = out.aux_loss if torch.is_tensor(out.aux_loss) else loss.new_zeros(())
            w_scored = n_local / sums[0] if sums[0] > 0 else n_local * 0
            w_real = extra[1] / sums[6] if sums[6] > 0 else extra[1] * 0
            loss = (loss - aux) * w_scored.to(loss.dtype) + aux * w_real.to(loss.dtype)
        return sums, loss

    def _update(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, gradient all-reduce, clip, one optimiser step; the gradient norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        D.all_reduce_grads(self.params, self.world)
        if self.cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        else:
            norm = torch.norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        if not torch.isfinite(norm):
            raise DivergedError(f"gradient norm is {float(norm)} at step {self.step + 1}")
        self.optimizer.step()
        return norm

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.world = D.World()
        try:
            self._setup()
            return self._run()
        finally:
            D.shutdown(self.world)

    def _run(self) -> TrainResult:
        cfg, r = self.cfg, self.cfg.run
        resumed_from = self.step if self.ckpt is not None else None
        if self.finished:
            return TrainResult(self.step, "already_finished", self.prior_s, self.last_valid, resumed_from)
        main = self.world.is_main
        metrics = MetricsWriter(run_dir=self.run_dir, enabled=main, resume_step=self.step)
        bar = TrainProgress(label=self.label, total_steps=r.steps, start_step=self.step,
                            mode=self.progress_mode, time_budget_s=r.time_budget_s, enabled=main)
        if resumed_from is not None:
            bar.line(f"resuming from step {self.step}")
        data = Prefetcher(stream(self.task, "train", self.vocab, batch_size=r.batch_size,
                                 start_batch=self.next_batch, rank=self.world.rank,
                                 world=self.world.size))
        start = time.perf_counter()
        elapsed = lambda: self.prior_s + time.perf_counter() - start  # noqa: E731
        window = torch.zeros(8, dtype=torch.float64)
        window_t = time.perf_counter()
        stats_acc: dict[str, float] = {}
        reason = "steps"
        try:
            while self.step < r.steps:
                batch = next(data)
                try:
                    sums, stats, norm = self._train_step(batch)
                except DivergedError as exc:
                    raise DivergedError(f"{exc}; stopped, last good checkpoint kept in "
                                        f"{str(self.run_dir)!r}") from None
                self.step += 1
                self.next_batch += 1
                window += sums.cpu()
                for k, v in (stats or {}).items():
                    try:
                        stats_acc[k] = stats_acc.get(k, 0.0) + float(v)
                    except (TypeError, ValueError):
                        pass
                n = max(window[0].item(), 1.0)
                shown = {"loss": window[5].item() / n, "token_acc": window[1].item() / n,
                         "mean_steps": window[2].item() / n,
                         "tokens_per_s": window[6].item() / max(time.perf_counter() - window_t, 1e-9)}
                if self.last_valid:
                    shown["valid_acc"] = self.last_valid.get("token_acc", 0.0)
                on_bar = dict(shown)
                if "halt_step" in stats_acc:
                    # expected-loss policies run every step while training; the bar shows the
                    # steps they would take at inference (the policy's halting step)
                    on_bar["mean_steps"] = stats_acc["halt_step"] / (self.step % r.log_every or r.log_every)
                bar.update(self.step, elapsed(), on_bar)
                if self.step % r.log_every == 0 or self.step == r.steps:
                    steps_in_window = r.log_every if self.step % r.log_every == 0 else self.step % r.log_every
                    metrics.log("train", self.step, {
                        **shown, "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(norm),
                        "elapsed_s": elapsed(),
                        **{f"stat_{k}": v / steps_in_window for k, v in stats_acc.items()}})
                    window.zero_()
                    window_t = time.perf_counter()
                    stats_acc = {}
                over_budget = r.time_budget_s is not None and D.any_flag(
                    elapsed() >= r.time_budget_s, self.world, self.device)
                last = self.step >= r.steps or over_budget
                if self.step % r.eval_every == 0 or last:
                    self.last_valid = validate(self.model, self.valid_batches, world=self.world,
                                               device=self.device, segments=cfg.supervision.segments)
                    metrics.log("valid", self.step, {**self.last_valid, "elapsed_s": elapsed()})
                    bar.line(f"step {self.step}  valid acc {self.last_valid['token_acc']:.4f}  "
                             f"seq {self.last_valid['seq_acc']:.3f}  steps "
                             f"{self.last_valid['mean_steps']:.2f}  ({elapsed():.0f}s)")
                    if r.stop_at_acc is not None and self.last_valid["token_acc"] >= r.stop_at_acc:
                        reason, last = "target_acc", True
                if over_budget and reason == "steps":
                    reason = "time_budget"
                if last:
                    self.finished = reason
                if self.step % r.ckpt_every == 0 or last:
                    self._save(elapsed())
                    metrics.flush()
                if last:
                    break
            if self.step >= r.steps and not self.finished:  # steps == 0, or resumed at the end
                self.finished = reason
                if not self.last_valid:
                    self.last_valid = validate(self.model, self.valid_batches, world=self.world,
                                               device=self.device, segments=cfg.supervision.segments)
                self._save(elapsed())
        finally:
            data.close()
            bar.close()
            metrics.close()
        result = TrainResult(self.step, reason, elapsed(), self.last_valid, resumed_from)
        if main:
            atomic_write_text(self.run_dir / RESULT_FILE, json.dumps(
                {"step": result.step, "reason": result.reason, "train_s": result.train_s,
                 "valid": result.valid}, indent=1))
        return result


def train(cfg: TrainConfig, run_dir: Path | str, *, progress: str = "auto",
          label: str | None = None) -> TrainResult:
    """Train (or resume) the run in ``run_dir``."""
    return Trainer(cfg=cfg, run_dir=run_dir, progress=progress, label=label).run()
