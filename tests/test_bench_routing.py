"""``ponder bench --part routing``: Mixture-of-Depths' training step against the dense model
(record consistency and the CLI's JSON; no timing asserts)."""

from __future__ import annotations

import json

import pytest

from ponder.benchmarking import routing
from ponder.cli import main

SMALL = routing.RoutingConfig(d_model=16, seq=16, batch=2, layers=4, capacity=0.25)


def test_routing_records_are_consistent():
    dense, mod = routing.bench_routing(SMALL, repeats=2, warmup=0)
    assert dense.model == "dense" and mod.model == "mod"
    assert dense.ratio == 1.0 and dense.flops_ratio == 1.0 and dense.on_target
    # FLOPs counted by the models: two of four blocks routed at 25% must cost less
    assert 0.5 < mod.flops_ratio < 1.0
    assert mod.efficiency == pytest.approx(mod.flops_ratio / mod.ratio)
    assert mod.on_target == (abs(mod.ratio / mod.flops_ratio - 1) <= routing.TARGET)
    assert mod.ratio_q1 <= mod.ratio <= mod.ratio_q3


def test_routed_model_routes_every_other_block():
    model = routing.build(SMALL, routed=True)
    assert [layer.blocks[0].router is not None for layer in model.layers] == [False, True] * 2
    assert model.layers[1].blocks[0].router.knobs.capacity == 0.25


def test_bench_cli_routing_json(capsys, monkeypatch):
    monkeypatch.setattr(routing, "RoutingConfig", lambda **kw: SMALL)
    assert main(["bench", "--part", "routing", "--json", "--repeats", "1", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in doc["routing"]] == ["dense", "mod"]
    assert all(r["bench"] == "routing" and r["ratio"] > 0 for r in doc["routing"])
