"""Routing diagnostics end to end: a tiny run with a routed-expert FFN writes each token's
expert into the eval records, the analysis tabulates expert × complexity with the mutual
information, and the report shows it; the MI helper on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import ponder.models as models
from ponder.analysis.experts import mutual_information
from ponder.cli import main
from ponder.models.config import KindConfig, ModelConfig
from ponder.policies.scripted import ScriptedPolicy
from tests.runs import trained_run

TINY = ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4", "task.knobs.ood_m_min=5",
        "task.knobs.ood_m_max=6", "task.knobs.n_labels=8", "model.positions=none", "model.d_model=16",
        "model.n_heads=2", "model.d_ff=32", "model.max_steps=2", "policy.name=fixed",
        "model.ffn.kind=switch", "model.ffn.knobs.n_experts=4", "run.batch_size=8",
        "run.valid_batches=1", "run.steps=4", "run.ckpt_every=4", "run.eval_every=4", "schedule.warmup=1"]


def test_mutual_information_known_cases():
    a = np.array([0, 0, 1, 1] * 10)
    mi, ha, hb = mutual_information(a, a)            # identical: I = H = 1 bit
    assert mi == pytest.approx(1.0) and ha == pytest.approx(1.0) and hb == pytest.approx(1.0)
    b = np.array([0, 1, 0, 1] * 10)                  # independent by construction: I = 0
    assert mutual_information(a, b)[0] == pytest.approx(0.0, abs=1e-12)
    c = np.array([0, 0, 0, 1])                       # I(c; c) = H(¼) = 0.8113 bits
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert mutual_information(c, c)[0] == pytest.approx(h)


def core_ffn_inputs(ffn_kind: KindConfig):
    """A one-step model with the FFN kind in its core block, run on a padded batch →
    (the core block's FFN, its input rows [B·L, D], the model's recorded experts [B, L], mask)."""
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, prelude=0, coda=1, max_steps=1, positions="none",
                      execution="dense", ffn=ffn_kind)
    torch.manual_seed(0)
    model = models.build(cfg, ScriptedPolicy(steps=1), vocab_size=9).eval()
    tokens = torch.randint(0, 9, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    seen = {}
    ffn = model.core.blocks[0].ffn
    hook = ffn.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        expert = model(tokens, mask).extras["expert"]
    hook.remove()
    return ffn, seen["x"], expert, mask


def test_the_model_reports_each_tokens_expert():
    """The recorded expert is the core's last first choice (the readout's coda does not
    overwrite it): checked against the router of the core block on the token's state."""
    ffn, x, expert, mask = core_ffn_inputs(KindConfig(kind="topk", knobs={"capacity_factor": 0.0}))
    assert expert.shape == (2, 5)
    first = (x @ ffn.router.weight.t()).argmax(-1).view(2, 5)
    assert torch.equal(expert[mask], first[mask])
    assert bool((expert[~mask] == -1).all())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "experts", TINY, ["--n", "16", "--batch-size", "8"])


def test_records_analysis_and_report_show_the_experts(run_dir, tmp_path):
    df = pq.read_table(run_dir / "eval" / "valid.parquet").to_pandas()
    assert "expert" in df.columns
    assert df["expert"].notna().all() and df["expert"].between(0, 3).all()
    from ponder.analysis.analyze import analyze_run
    analysis = analyze_run(run_dir, write=False, with_figures=False)
    t = analysis["experts"]["valid"]
    assert t["tokens"] == len(df)
    assert sum(sum(row.values()) for row in t["table"].values()) == len(df)
    assert sum(t["load"].values()) == pytest.approx(1.0)
    mi, _, _ = mutual_information(df["expert"].to_numpy().astype(int), df["complexity"].to_numpy())
    assert t["mutual_information_bits"] == pytest.approx(mi)
    report = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(report)]) == 0
    page = report.read_text()
    assert "Experts and complexity" in page and "expert × complexity of" in page  # the heat map


def test_fff_records_its_inference_leaf_as_the_expert():
    """fff: the recorded expert is the leaf the hard descent reaches in the core block."""
    ffn, x, expert, mask = core_ffn_inputs(KindConfig(kind="fff", knobs={"depth": 2}))
    # the leaf by the definition: right at node n iff w_n·x + b_n > 0, heap children 2n+1, 2n+2
    for r in range(10):
        if not mask.view(-1)[r]:
            assert int(expert.view(-1)[r]) == -1
            continue
        n = 0
        for _ in range(2):
            n = 2 * n + 1 + int(float((x[r] @ ffn.node_w[n] + ffn.node_b[n]).detach()) > 0)
        assert int(expert.view(-1)[r]) == n - 3


def test_experts_heatmap_rows_are_each_levels_shares():
    from ponder.analysis import figures
    # as read back from analysis.json: keys are strings
    t = {"experts": [0, 1, 2], "table": {"2": {"0": 3, "2": 1}, "1": {"1": 5}},
         "mutual_information_bits": 0.5, "shuffled_bits": 0.01}
    share, levels, experts = figures.experts_matrix(t)
    assert levels == [1, 2] and experts == [0, 1, 2]
    np.testing.assert_allclose(share, [[0, 1, 0], [0.75, 0, 0.25]])
    png = figures.png_bytes(figures.render_experts({"experts": {"valid": t, "ood": t}}))
    assert png[:4] == b"\x89PNG"
