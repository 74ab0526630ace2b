"""The uniform prior of PonderNet-style objectives: KL(p ‖ uniform) = log N − H(p), by hand
and in the pondernet / anira policies' aux loss."""

from __future__ import annotations

import math

import pytest
import torch

import ponder.models as models
import ponder.policies as policies
from ponder.models.config import ModelConfig
from ponder.policies.halting import compute_regulariser, kl_to_prior, uniform_log_prior


def test_kl_to_uniform_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    kl = kl_to_prior(p.clamp_min(1e-300).log(), uniform_log_prior(4, dtype=torch.float64))
    assert abs(float(kl) - (math.log(4) - h)) < 1e-12
    # the uniform distribution has no cost
    u = torch.full((4,), 0.25, dtype=torch.float64)
    assert abs(float(kl_to_prior(u.log(), uniform_log_prior(4, dtype=torch.float64)))) < 1e-12


def test_regulariser_is_beta_times_the_mean_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), -1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = compute_regulariser(log_p, mask, beta=0.3, lambda_p=0.2, prior="uniform")
    p = log_p.exp()
    per = [math.log(5) + sum(float(p[b, t, n] * log_p[b, t, n]) for n in range(5))
           for b, t in [(0, 0), (0, 1), (1, 0)]]
    assert abs(float(got) - 0.3 * sum(per) / 3) < 1e-12


@pytest.mark.parametrize("name", ["pondernet", "anira_o", "anira_e"])
def test_policies_use_the_uniform_prior(name):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_steps=4, positions="none")
    tokens = torch.randint(0, 9, (2, 5))
    auxes = {}
    for prior in ("geometric", "uniform"):
        torch.manual_seed(0)
        model = models.build(cfg, policies.get(name, prior=prior, beta=1.0), vocab_size=9).double().train()
        out = model(tokens)
        p = out.halt_dist
        entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
        auxes[prior] = float(out.aux_loss)
        if prior == "uniform":
            assert abs(auxes[prior] - float((math.log(4) - entropy).mean())) < 1e-9
    assert auxes["geometric"] != pytest.approx(auxes["uniform"])
