"""``ponder bench --part ffn`` plumbing (no timing assertions): the records are consistent
with each other and with the kinds' FLOPs."""

from __future__ import annotations

import json

from ponder.benchmarking import fff, structured
from ponder.cli import main


def test_bench_ffn_json(capsys, monkeypatch):
    monkeypatch.setattr(fff, "D_MODELS", (16,))
    monkeypatch.setattr(fff, "DEPTHS", (1, 3))
    monkeypatch.setattr(structured, "D_MODELS", (16,))
    assert main(["bench", "--part", "ffn", "--quick", "--json", "--repeats", "2", "--threads", "1"]) == 0
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
    srows = doc["structured"]
    assert [r["kind"] for r in srows] == list(structured.KINDS)
    for r in srows:  # matched parameters, hence about the dense FLOPs, at a larger width
        assert abs(r["params_ratio"] - 1) < 0.05 and abs(r["flops_ratio"] - 1) < 0.1
        assert r["width"] > r["d_ff"] == structured.WIDTH_FACTOR * 16
        assert abs(r["ratio"] - r["kind_ms"] / r["dense_ms"]) < 0.01 + 0.01 * r["ratio"]
