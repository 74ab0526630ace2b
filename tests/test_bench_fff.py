"""``ponder bench --part fff`` plumbing (no timing assertions): the records are consistent
with each other and with the kinds' FLOPs."""

from __future__ import annotations

import json

from ponder.benchmarking import fff
from ponder.cli import main


def test_bench_fff_json(capsys, monkeypatch):
    monkeypatch.setattr(fff, "D_MODELS", (16,))
    monkeypatch.setattr(fff, "DEPTHS", (1, 3))
    assert main(["bench", "--part", "fff", "--quick", "--json", "--repeats", "2", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["fff"]
    assert [(r["d_model"], r["depth"]) for r in rows] == [(16, 1), (16, 3)]
    for r in rows:
        assert r["d_ff"] == fff.WIDTH_FACTOR * 16 == r["leaf_width"] * 2 ** r["depth"]
        assert r["tokens"] == 1024
        assert abs(r["ratio"] - r["fff_ms"] / r["dense_ms"]) < 0.01 + 0.01 * r["ratio"]
        # inference FLOPs: depth node dot-products + one leaf, over the dense FFN's 4·D·d_ff
        want = (2 * 16 * r["depth"] + 4 * 16 * r["leaf_width"]) / (4 * 16 * r["d_ff"])
        assert abs(r["flops_ratio"] - want) < 1e-4
    assert doc["inference"] == [] and doc["training"] == []
