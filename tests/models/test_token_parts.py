"""Part embeddings of compound tokens (``ModelConfig.token_parts``).

Why they exist: with opaque ids, list_rank's ~270 edge tokens ``x>y`` each had to learn
their source and target codes separately and every model (a hand-written reference
included) stalled at ~0.57 valid accuracy; sharing "source x" / "target y" vectors across
edges is what lets the task learn in a few hundred steps.
"""

from __future__ import annotations

import pytest
import torch

import ponder.models as models
from ponder.errors import ConfigError
from ponder.models.config import ModelConfig
from ponder.models.layers import token_parts
from ponder.tasks import registry
from ponder.tasks.vocab import Vocab


def cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, n_heads=2, d_ff=32, prelude=1, core=1, coda=0, max_steps=3,
                positions="none", execution="dense", token_parts=True)
    base.update(kw)
    return ModelConfig(**base)


def test_parts_are_slotted_and_atomic_tokens_have_none():
    toks = ["<pad>", "_", "5", "8>13", "13>8", "8>end", "head:8"]
    names, table = token_parts(toks)
    part = {n: i + 1 for i, n in enumerate(names)}
    assert table[0].tolist() == [0, 0] and table[1].tolist() == [0, 0] and table[2].tolist() == [0, 0]
    assert table[3].tolist() == [part["0:8"], part["1:13"]]
    assert table[4].tolist() == [part["0:13"], part["1:8"]]      # direction is kept
    assert table[5].tolist() == [part["0:8"], part["1:end"]]
    assert table[6].tolist() == [part["0:head"], part["1:8"]]


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
def test_embedding_is_token_plus_its_parts(kind):
    torch.manual_seed(0)
    task = registry.get("list_rank", n_labels=16, m_max=10, ood_m_min=12, ood_m_max=16)
    vocab = Vocab.for_task(task)
    model = models.build(cfg(kind=kind), "fixed", vocab_size=len(vocab), tokens=vocab.itos)
    emb = model.embed
    names = sorted({n for n in token_parts(vocab.itos)[0]})
    pid = {n: i + 1 for i, n in enumerate(names)}
    ids = torch.tensor([[vocab.stoi["8>13"], vocab.stoi["8>2"], vocab.stoi["3"], vocab.pad_id]])
    x = emb(ids)[0]
    P = emb.part.weight
    assert torch.allclose(x[0], emb.tok.weight[ids[0, 0]] + P[pid["0:8"]] + P[pid["1:13"]], atol=1e-6)
    assert torch.allclose(x[1], emb.tok.weight[ids[0, 1]] + P[pid["0:8"]] + P[pid["1:2"]], atol=1e-6)
    assert torch.allclose(x[2], emb.tok.weight[ids[0, 2]])       # atomic token: no parts
    assert torch.allclose(x[3], emb.tok.weight[vocab.pad_id])
    # the shared "source 8" vector receives gradient from both edges; the no-part row none
    x.sum().backward()
    assert emb.part.weight.grad[pid["0:8"]].abs().sum() > 0
    assert emb.part.weight.grad[0].abs().sum() == 0
    # the parts are state: a model rebuilt the same way loads the checkpoint exactly
    other = models.build(cfg(kind=kind), "fixed", vocab_size=len(vocab), tokens=vocab.itos)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.embed(ids), model.embed(ids))


def test_off_by_default_and_errors():
    plain = models.build(cfg(token_parts=False), "fixed", vocab_size=10)
    assert plain.embed.part is None
    with pytest.raises(ConfigError):
        models.build(cfg(), "fixed", vocab_size=10)                       # no tokens given
    with pytest.raises(ConfigError):
        models.build(cfg(), "fixed", vocab_size=10, tokens=["a>b"] * 3)   # wrong length
