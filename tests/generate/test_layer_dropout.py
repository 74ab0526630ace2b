"""LayerSkip's training option: per-sample layer dropout with a rate rising with depth
(0 at step 1, ``layer_dropout`` at step N), training only; bad values refused."""

from __future__ import annotations

import pytest
import torch

from ponder.errors import ConfigError

from tests.generate.helpers import tiny_model


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
def test_full_rate_skips_the_last_step_in_training_only(kind):
    """N = 2, rate 1: step 1 never drops (rate 0), step 2 always does, so training equals a
    one-step forward; eval is untouched."""
    model = tiny_model(9, kind=kind, max_steps=2, layer_dropout=1.0)
    tokens = torch.randint(0, 9, (3, 7), generator=torch.Generator().manual_seed(0))
    model.train()
    dropped = model(tokens).logits
    one = model(tokens, steps=1).logits
    torch.testing.assert_close(dropped, one, rtol=0, atol=0)
    model.eval()
    plain = tiny_model(9, kind=kind, max_steps=2).eval()
    torch.testing.assert_close(model(tokens).logits, plain(tokens).logits, rtol=0, atol=0)


def test_rate_rises_with_depth_per_sample():
    """Rate 0.5 over N = 3 steps of a shared core without step embeddings (so the output only
    depends on how many steps ran): P(step 2 dropped) = 0.5·(√2 − 1), P(step 3 dropped) = 0.5,
    step 1 never; each sample draws its own."""
    model = tiny_model(9, max_steps=3, layer_dropout=0.5, step_embedding=False, positions="none")
    model.train()
    torch.manual_seed(0)
    tokens = torch.zeros(2000, 2, dtype=torch.long)
    out = model(tokens).logits[:, 0]
    model.eval()  # the references: no dropout
    with torch.no_grad():
        ref = torch.stack([model(tokens[:1], steps=s).logits[0, 0] for s in (1, 2, 3)])
    dist = (out.detach()[:, None] - ref[None]).abs().amax(-1)    # [samples, 3]
    ran = dist.argmin(1) + 1
    assert bool((dist.min(1).values < 1e-12).all())               # always 1, 2 or 3 steps
    r2, r3 = 0.5 * (2 ** 0.5 - 1), 0.5
    expected = [r2 * r3, r2 * (1 - r3) + (1 - r2) * r3, (1 - r2) * (1 - r3)]
    freq = [float((ran == s).float().mean()) for s in (1, 2, 3)]
    assert freq == pytest.approx(expected, abs=0.04)


def test_bad_values():
    for bad in (dict(layer_dropout=-0.1), dict(layer_dropout=1.5),
                dict(layer_dropout=0.2, execution="compact")):
        with pytest.raises(ConfigError):
            tiny_model(9, **bad)
