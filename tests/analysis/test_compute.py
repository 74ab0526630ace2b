import pytest

from ponder.analysis import compute, load


def slow_flops(frame, dims, *, fixed):
    total = 0.0
    d, d_ff = dims["d_model"], dims["d_ff"]
    lengths = {}
    for row in frame.itertuples():
        key = (row.split, row.example)
        lengths[key] = max(lengths.get(key, 0), row.position + 1)
    for row in frame.itertuples():
        length = lengths[(row.split, row.example)]
        block = 8 * d * d + 4 * d * d_ff + 4 * length * d
        steps = row.max_steps if fixed else row.steps
        total += (dims["prelude"] + dims["coda"]) * block + steps * dims["core"] * block
        total += 2 * d * dims["vocab_size"]
    return total


def test_token_steps_flops_and_wall_time(make_run):
    run = load(make_run(policy="noisy", n_examples=30))
    result = compute.analyse(run)
    for split in run.splits:
        frame, c = run.split(split), result[split]
        assert c["token_steps"] == int(frame["steps"].sum())
        assert c["fixed_token_steps"] == len(frame) * 16 == run.summaries[split]["fixed_token_steps"]
        assert c["steps_saved"] == pytest.approx(1 - frame["steps"].sum() / (len(frame) * 16))
        dims = c["flops"]["dims"]
        assert dims == {"d_model": 64, "d_ff": 256, "prelude": 1, "core": 1, "coda": 1, "vocab_size": 40}
        assert not c["flops"]["dims_assumed"]
        assert c["flops"]["adaptive"] == pytest.approx(slow_flops(frame, dims, fixed=False))
        assert c["flops"]["fixed"] == pytest.approx(slow_flops(frame, dims, fixed=True))
        assert c["wall_us_per_token"] == pytest.approx(run.summaries[split]["wall_s"] / len(frame) * 1e6)
        assert "note" not in c


def test_missing_dims_fall_back_to_model_defaults(make_run):
    run = load(make_run(n_examples=5))
    run.info = {"policy": "x"}
    run.config = {}
    dims, assumed = compute.model_dims(run)
    assert assumed and dims["d_model"] == 64 and dims["vocab_size"] == 0
    run.config = {"model": {"d_model": 32, "d_ff": 64, "prelude": 2, "core": 1, "coda": 0}}
    dims, assumed = compute.model_dims(run)
    assert not assumed and dims["d_model"] == 32 and dims["prelude"] == 2
