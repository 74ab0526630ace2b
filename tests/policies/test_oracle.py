"""oracle: oracle-supervised halting against hand-computed labels and a slow per-token loop."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.policies.oracle import complexity_steps, halt_labels

N = 5


def test_complexity_to_exit_step_by_hand():
    c = torch.tensor([[0, 1, 2, 7, -1]])
    assert complexity_steps(c, scale=1.0, offset=1, max_steps=N).tolist() == [[1, 2, 3, 5, 1]]
    assert complexity_steps(c, scale=0.5, offset=1, max_steps=N).tolist() == [[1, 2, 2, 5, 1]]
    assert complexity_steps(c, scale=1.0, offset=0, max_steps=N).tolist() == [[1, 1, 2, 5, 1]]


def test_halt_labels_by_hand():
    assert halt_labels(torch.tensor([[1, 3, 5]]), 5).tolist() == [[[1, 1, 1, 1, 1], [0, 0, 1, 1, 1],
                                                                    [0, 0, 0, 0, 1]]]


def setup(label="complexity", **knobs):
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    batch = tasks.collate([task.example("train", i) for i in range(6)], vocab)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=N, positions="none")
    model = models.build(cfg, policies.get("oracle", label=label, **knobs), vocab_size=len(vocab)).double()
    with torch.no_grad():  # a non-trivial decider
        model.policy.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return model, batch


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    s = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - s for v in row]


@pytest.mark.parametrize("label,weighting", [("complexity", "uniform"), ("mispredict", "linear")])
def test_loss_matches_a_per_token_loop(label, weighting):
    model, batch = setup(label, weighting=weighting, gamma=0.7)
    model.train()
    out = model(batch.tokens, batch.mask)
    out.extras["complexity"] = batch.complexity
    loss, stats = model.loss(out, batch.targets)
    z = out.extras["policy_carry"]["halt_logits"].detach()
    step_logits = out.step_logits.detach()
    w = [n if weighting == "linear" else 1 for n in range(1, N + 1)]
    w = [x / sum(w) for x in w]
    ce_sum = bce_sum = 0.0
    count = 0
    B, L = batch.tokens.shape
    for b in range(B):
        for t in range(L):
            y = int(batch.targets[b, t])
            if y < 0:
                continue
            count += 1
            logp = [log_softmax([float(v) for v in step_logits[b, t, n]]) for n in range(N)]
            ce_sum += sum(-w[n] * logp[n][y] for n in range(N))
            if label == "complexity":
                n_star = min(max(1 + int(batch.complexity[b, t]), 1), N)
            else:
                right = [max(range(len(logp[n])), key=lambda j: logp[n][j]) == y for n in range(N)]
                n_star = next((n + 1 for n in range(N) if right[n]), N)
            bce = 0.0
            for n in range(1, N):  # steps 1..N−1
                p = sig(float(z[b, t, n - 1]))
                lab = 1.0 if n >= n_star else 0.0
                bce -= lab * math.log(p) + (1 - lab) * math.log(1 - p)
            bce_sum += bce / (N - 1)
    expected = ce_sum / count + 0.7 * bce_sum / count
    assert abs(loss.item() - expected) < 1e-6 * expected  # the exit weights are float32
    assert abs(stats["oracle_bce"] - bce_sum / count) < 1e-9


def test_the_decider_is_trained_by_its_bce_only():
    """With ``detach`` the BCE sends gradient to the decider and nowhere else."""
    grads = {}
    for gamma in (0.0, 1.0):
        model, batch = setup("complexity", gamma=gamma)
        model.train()
        out = model(batch.tokens, batch.mask)
        out.extras["complexity"] = batch.complexity
        model.loss(out, batch.targets)[0].backward()
        grads[gamma] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert "policy.head.weight" not in grads[0.0] or not grads[0.0]["policy.head.weight"].any()
    assert grads[1.0]["policy.head.weight"].abs().sum() > 0
    for k, g in grads[0.0].items():
        if not k.startswith("policy."):
            torch.testing.assert_close(grads[1.0][k], g, rtol=0, atol=0)


def test_inference_exits_at_the_first_confident_step():
    model, batch = setup("complexity", threshold=0.4)
    model.eval()
    seen = []
    original = model.policy.fires

    def spy(memo, view):
        out = original(memo, view)
        seen.append(torch.sigmoid(memo["z"][-1]).detach())
        return out

    model.policy.fires = spy
    with torch.no_grad():
        out = model(batch.tokens, batch.mask)
    m = batch.mask
    p = torch.stack(seen, -1)  # a token frozen at n keeps its state, so later p are unchanged
    fired = p >= 0.4
    ref = torch.where(fired.any(-1), fired.float().argmax(-1) + 1, N)
    assert torch.equal(out.steps[m], ref[m])
    assert len(set(ref[m].tolist())) > 1


def test_complexity_label_without_complexity_is_a_config_error():
    model, batch = setup("complexity")
    model.train()
    out = model(batch.tokens, batch.mask)
    with pytest.raises(ConfigError, match="complexity"):
        model.loss(out, batch.targets)


def test_the_trainer_hands_the_complexity_to_the_loss(tmp_path):
    """Through ``ponder.train``: label=complexity trains (it would raise without the batch's
    complexity), and the oracle step it reports follows list_rank's distances."""
    import json

    from ponder.train.config import load_config
    from ponder.train.trainer import train

    cfg = load_config(None, ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4",
                             "task.knobs.ood_m_min=5", "task.knobs.ood_m_max=6", "task.knobs.n_labels=8",
                             "model.positions=none", "model.d_model=16", "model.n_heads=2",
                             "model.d_ff=32", "model.max_steps=4", "policy.name=oracle",
                             "policy.knobs.label=complexity", "run.batch_size=8", "run.steps=4",
                             "run.log_every=2", "run.valid_batches=1", "run.seed=1"])
    train(cfg, tmp_path / "run", progress="none")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["stat_oracle_step"] for r in rows if r["split"] == "train"]
    # distances 0..m−1 with m in 2..4, n* = 1 + distance: a mean strictly between 1 and 4
    assert steps and all(1.0 < s < 4.0 for s in steps)
