"""Training smokes: a few hundred steps per policy on a small list_rank lower the loss (slow)."""

from __future__ import annotations

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
import ponder.tasks as tasks
from ponder.models.config import ModelConfig


@pytest.mark.slow
@pytest.mark.parametrize("name", policies.names())
def test_training_lowers_the_loss(name):
    torch.manual_seed(0)
    task = tasks.get("list_rank", m_min=3, m_max=6, ood_m_min=7, ood_m_max=8, n_labels=8)
    vocab = tasks.Vocab.for_task(task)
    kind = policies.policy_class(name).kinds[0]
    cfg = ModelConfig(kind=kind, d_model=64, n_heads=4, d_ff=128, max_steps=6, positions="none")
    model = models.build(cfg, policies.get(name), vocab_size=len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    valid = tasks.collate([task.example("valid", i) for i in range(128)], vocab)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(valid.tokens, valid.mask)
            _, stats = model.loss(out, valid.targets)
        model.train()
        return stats

    before = evaluate()
    for batch in tasks.stream(task, "train", vocab, batch_size=32, num_batches=300):
        loss, _ = model.loss(model(batch.tokens, batch.mask), batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after["task_loss"] < 0.7 * before["task_loss"]
    assert after["accuracy"] > before["accuracy"] + 0.2
