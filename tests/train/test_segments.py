"""Deep supervision / outer refinement (``ponder.train.segments``): the carried state against a
written-out loop, no gradient across a segment boundary, a training smoke whose loss drops,
exact resume, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.models.layers import AttnContext
from ponder.train.checkpoint import load_checkpoint
from ponder.train.config import load_config
from ponder.train.segments import forward_segments
from ponder.train.trainer import train
from tests.references import train_killed_at


def model_and_batch(policy="fixed", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=3, positions="none", execution="dense", **kw)
    model = models.build(cfg, policies.get(policy), vocab_size=11).double()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 11, (3, 7), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[2, 5:] = False  # pads
    targets = torch.randint(1, 11, (3, 7), generator=g)
    targets[2, 5:] = -100
    return model, tokens, mask, targets


def written_out(model, tokens, mask, segments):
    """Prelude once, then per segment the N core steps with e_1..e_N again, then the readout."""
    ctx = AttnContext.build(mask, causal=False, rope=None)
    h = model.prelude(model.embed(tokens), ctx)
    for _ in range(segments):
        for n in range(1, model.cfg.max_steps + 1):
            h = model.core(h + model.step_emb.weight[n - 1], ctx)
    return model.readout(h, ctx)


@pytest.mark.parametrize("segments", [1, 2, 3])
def test_segments_continue_the_recurrence_from_the_carried_state(segments):
    model, tokens, mask, _ = model_and_batch()
    model.eval()
    out = forward_segments(model, tokens, mask, segments=segments)
    ref = written_out(model, tokens, mask, segments)
    torch.testing.assert_close(out.logits[mask], ref[mask], rtol=1e-10, atol=1e-12)
    assert bool((out.steps[mask] == segments * 3).all()) and bool((out.steps[~mask] == 0).all())


def test_no_gradient_crosses_a_segment_boundary():
    model, tokens, mask, targets = model_and_batch()
    model.train()
    first = model(tokens, mask)
    second = model(tokens, mask, state=first.extras["state"].detach())
    loss, _ = model.loss(second, targets)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert all(grads[k] is None or not grads[k].any() for k in grads if k.startswith(("prelude", "embed")))
    assert any(grads[k] is not None and grads[k].abs().sum() > 0 for k in grads if k.startswith("core"))
    # without the detach the second segment's loss reaches the prelude
    model.zero_grad()
    first = model(tokens, mask)
    loss, _ = model.loss(model(tokens, mask, state=first.extras["state"]), targets)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for k, p in model.named_parameters()
               if k.startswith("embed"))


def test_a_state_of_the_wrong_shape_is_refused():
    model, tokens, mask, _ = model_and_batch()
    with pytest.raises(ConfigError, match="state must be"):
        model(tokens, mask, state=torch.zeros(3, 7, 8, dtype=torch.float64))


# -- through the trainer -----------------------------------------------------------------------
TINY = ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4", "task.knobs.ood_m_min=5",
        "task.knobs.ood_m_max=6", "task.knobs.n_labels=8", "model.positions=none",
        "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.max_steps=2",
        "policy.name=fixed", "run.batch_size=8", "run.valid_batches=1", "schedule.warmup=2",
        "run.threads=1", "run.seed=5", "run.log_every=1", "supervision.segments=3"]


def train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("per_segment", [True, False])
def test_deep_supervision_training_lowers_the_loss(tmp_path, per_segment):
    cfg = load_config(None, [*TINY, "run.steps=60", "run.eval_every=60", "run.ckpt_every=60",
                             "optim.lr=3e-3", f"supervision.step_per_segment={per_segment}"])
    train(cfg, tmp_path / "run", progress="none")
    rows = train_rows(tmp_path / "run")
    assert len(rows) == 60
    for k in (1, 2, 3):  # a loss per segment, logged
        first = sum(r[f"stat_segment{k}_loss"] for r in rows[:10]) / 10
        last = sum(r[f"stat_segment{k}_loss"] for r in rows[-10:]) / 10
        assert last < 0.8 * first, (k, first, last)
    # the scheduler advanced once per batch, the optimiser once per segment (or per batch)
    ckpt = load_checkpoint(tmp_path / "run")
    opt_steps = {int(s["step"]) for s in ckpt.state["optimizer"]["state"].values()}
    # per segment: the embedding is reached by segment 1's loss only (the state is detached),
    # so AdamW updates it once per batch and the core once per segment
    assert opt_steps == ({60, 180} if per_segment else {60})
    assert ckpt.state["scheduler"]["last_epoch"] == 60


def test_a_run_interrupted_and_resumed_is_exact(tmp_path, monkeypatch):
    steps = ["run.steps=8", "run.ckpt_every=2", "run.eval_every=4"]
    reference = tmp_path / "reference"
    train(load_config(None, [*TINY, *steps]), reference, progress="none")
    killed = tmp_path / "killed"
    train_killed_at(load_config(None, [*TINY, *steps]), killed, monkeypatch, call=6)
    assert load_checkpoint(killed).step == 4
    train(load_config(None, [*TINY, *steps]), killed, progress="none")
    a, b = load_checkpoint(reference), load_checkpoint(killed)
    assert a.step == b.step == 8
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
    assert train_rows(reference)[-1] == train_rows(killed)[-1] | {"elapsed_s": train_rows(reference)[-1]["elapsed_s"],
                                                                   "tokens_per_s": train_rows(reference)[-1]["tokens_per_s"]}


def test_bad_supervision_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="supervision.segments"):
        load_config(None, [*TINY, "supervision.segments=0"])
    cfg = load_config(None, [*TINY, "model.kind=adatape", "run.steps=2"])
    with pytest.raises(ConfigError, match="deep supervision"):
        train(cfg, tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()
