"""AdaTape: tape selection, halting, masking, the auxiliary loss, gradients, a parity smoke."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import ponder.tasks as T
from ponder.errors import ConfigError
from ponder.models.adatape import AdaTape, TapeReader, build_adatape
from ponder.models.config import ModelConfig

VOCAB = 7
SETTINGS = [
    dict(bank="input", ngram=1, query="mean", tape_ffn=True),
    dict(bank="input", ngram=3, query="cls", tape_ffn=False),
    dict(bank="learnable", bank_size=10, query="mean", tape_ffn=True),
    dict(bank="learnable", bank_size=10, query="cls", tape_ffn=True, per_step=3),
    dict(bank="input", ngram=2, query="mean", tape_ffn=True, positions="rotary", norm="layernorm"),
]


def make(seed: int = 0, **kw) -> AdaTape:
    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_tape=6,
                threshold=1.0, max_len=32)
    args.update(kw)
    return AdaTape(**args)


def batch(seed: int = 1, B: int = 5, L: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (B, L), generator=g)
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    lengths[0] = L
    mask = torch.arange(L)[None, :] < lengths[:, None]
    return tokens.masked_fill(~mask, 0), mask


# --- selection -------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("threshold", [0.5, 1.0, 50.0])
def test_never_reads_the_same_entry_twice_nor_padding(setting, threshold):
    model = make(**{**setting, "threshold": threshold, "max_tape": 8})
    tokens, mask = batch()
    out = model(tokens, mask)
    index = out.extras["tape_index"]                                  # [B, T, k]
    _, bank_mask = model.make_bank(tokens, mask)
    for b in range(tokens.shape[0]):
        picked = [i for i in index[b].flatten().tolist() if i >= 0]
        assert len(picked) == len(set(picked)), f"sample {b} read an entry twice: {picked}"
        assert all(bool(bank_mask[b, i]) for i in picked), "read a padded bank entry"
        n = int(out.extras["tape_len"][b])
        # every read slot merged at least one entry; no slot after the last read one did
        assert all((index[b, t] >= 0).any() for t in range(n))
        assert (index[b, n:] < 0).all()
    assert (out.steps == out.extras["tape_len"][:, None]).all()
    if threshold == 50.0:  # never halts: reads until max_tape or the bank runs out
        per = setting.get("per_step", 0) or max(1, 8 // 50)  # 0: max_tape // threshold
        avail = bank_mask.sum(-1)
        assert out.extras["tape_len"].tolist() == [min(8, math.ceil(int(a) / per)) for a in avail]


def _uniform_stop(n: int, threshold: float, k: int) -> int:
    """Steps read when all n candidates score the same and each step softmaxes over (and uses
    up) k of them: step t's top weight is 1 / min(k, what is left)."""
    total, left = Fraction(0), n
    for t in range(1, n + 1):
        total += Fraction(1, min(k, left))
        left -= min(k, left)
        if total >= Fraction(threshold).limit_denominator(1000) or left == 0:
            return t
    return n


@pytest.mark.parametrize("threshold", [0.3, 0.5, 1.0])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_sample_crossing_the_threshold_at_step_k_reads_k_tokens(threshold, k):
    # Identical bank entries → equal scores → uniform weights over the step's candidates, so
    # the halting sum after t steps is known in closed form.
    d, M = 8, 12
    reader = TapeReader(d_model=d, max_tape=M, threshold=threshold, per_step=k)
    sizes = [1, 2, 4, 7, 9, 12]
    B = len(sizes)
    bank = torch.randn(d).expand(B, M, d).clone()
    bank_mask = torch.arange(M)[None, :] < torch.tensor(sizes)[:, None]
    bank = bank + 100.0 * (~bank_mask)[..., None]  # padded entries differ and must be ignored
    with torch.no_grad():
        read = reader(torch.randn(B, d), bank, bank_mask)
    expected = [_uniform_stop(n, threshold, k) for n in sizes]
    assert read["count"].tolist() == expected
    assert read["tape_mask"].sum(1).tolist() == expected


def test_one_dominant_candidate_halts_after_one_read():
    d = 8
    keys = torch.zeros(1, 6, d)
    keys[0, 0, :4], keys[0, 0, 4:] = 1.0, -1.0         # LN(key₀) = LN(query): score √d
    keys[0, 1:, :4], keys[0, 1:, 4:] = -1.0, 1.0       # the others: score −√d
    query = keys[0, 0][None].clone()
    w0 = 1.0 / (1.0 + 5.0 * math.exp(-2 * math.sqrt(d)))
    sharp = TapeReader(d_model=d, max_tape=6, threshold=w0 - 1e-3, per_step=6)
    with torch.no_grad():
        r = sharp(query, keys, torch.ones(1, 6, dtype=torch.bool))
    # all six candidates are merged into the one token (and used up)
    assert r["count"].tolist() == [1] and sorted(r["index"][0, 0].tolist()) == [0, 1, 2, 3, 4, 5]
    assert r["index"][0, 0, 0].item() == 0  # the best first
    assert r["halting"].item() == pytest.approx(w0, rel=1e-4)


def test_per_step_one_reads_one_token_and_zero_follows_max_tape_over_threshold():
    torch.manual_seed(0)
    bank, mask = torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool)
    with torch.no_grad():
        one = TapeReader(d_model=8, max_tape=6, threshold=1.0, per_step=1)(torch.randn(3, 8), bank, mask)
        auto = TapeReader(d_model=8, max_tape=6, threshold=0.5, per_step=0)(torch.randn(3, 8), bank, mask)
    assert one["count"].tolist() == [1, 1, 1] and (one["halting"] == 1.0).all()
    assert auto["index"].shape[-1] == 10  # ⌊6 / 0.5⌋ = 12 candidates, capped at the bank size


def test_max_tape_caps_the_reading():
    model = make(bank="learnable", bank_size=20, threshold=100.0, max_tape=3)
    out = model(*batch())
    assert out.extras["tape_len"].tolist() == [3] * 5


# --- the reference loop ----------------------------------------------------------------------
def slow_read(reader: TapeReader, query, bank, bank_mask):
    """Float64, per-sample, per-step transcription of the public reader: google-research/scenic,
    scenic/projects/adatape/layers.py, ``ACTFunction.act_step`` (top-K unused candidates by
    score; softmax of their scores / √d; ONE token merging all K with those weights; the top
    weight added to the halting sum; all K marked used; ``complex_query``: q ← (q + token) / 2;
    ``entropy`` loss 1 − Σ w² on every step read), per sample (see the module docstring)."""
    results = []
    d = bank.shape[-1]
    K = reader.per_step or max(1, int(reader.max_tape // reader.threshold))
    ln = reader.norm
    weight, bias = ln.weight.detach().double(), ln.bias.detach().double()

    def norm(x):
        x = x.detach().double()
        mu = sum(float(v) for v in x) / d
        var = sum((float(v) - mu) ** 2 for v in x) / d
        return torch.tensor([(float(v) - mu) / math.sqrt(var + ln.eps) for v in x],
                            dtype=torch.float64) * weight + bias

    for b in range(bank.shape[0]):
        keys = [norm(bank[b, m]) for m in range(bank.shape[1])]
        free = [m for m in range(bank.shape[1]) if bool(bank_mask[b, m])]
        q = norm(query[b])
        h, aux, tokens, picks = 0.0, 0.0, [], []
        while free and len(tokens) < reader.max_tape:
            scores = {m: float(keys[m] @ q) for m in free}
            chosen = sorted(free, key=lambda m: -scores[m])[:K]
            top = max(scores[m] for m in chosen)
            e = [math.exp((scores[m] - top) / math.sqrt(d)) for m in chosen]
            w = [v / sum(e) for v in e]
            token = sum(wi * keys[m] for wi, m in zip(w, chosen))
            tokens.append(token)
            aux += 1.0 - sum(wi * wi for wi in w)
            h += max(w)
            q = (q + token) / 2.0
            picks.append(chosen)
            free = [m for m in free if m not in chosen]
            if h >= reader.threshold:
                break
        results.append((tokens, picks, aux, h))
    return results


@pytest.mark.parametrize("per_step", [0, 1, 3])
@pytest.mark.parametrize("threshold", [0.4, 1.0])
def test_reader_and_aux_loss_match_a_slow_reference(per_step, threshold):
    torch.manual_seed(3)
    d, M, B = 8, 10, 6
    reader = TapeReader(d_model=d, max_tape=5, threshold=threshold, per_step=per_step)
    with torch.no_grad():
        reader.norm.weight.uniform_(0.5, 3.0)  # sharpen/vary the scores beyond the init
        reader.norm.bias.normal_(0, 0.3)
    bank = torch.randn(B, M, d)
    bank_mask = torch.arange(M)[None, :] < torch.tensor([10, 10, 7, 3, 1, 5])[:, None]
    query = torch.randn(B, d)
    fast = reader(query, bank, bank_mask)
    slow = slow_read(reader, query, bank, bank_mask)
    counts = set()
    for b, (tokens, picks, aux, h) in enumerate(slow):
        n = len(tokens)
        counts.add(n)
        assert int(fast["count"][b]) == n
        assert fast["tape_mask"][b].tolist() == [True] * n + [False] * (fast["tape"].shape[1] - n)
        for t in range(n):
            got = [i for i in fast["index"][b, t].tolist() if i >= 0]
            assert got == picks[t]
            torch.testing.assert_close(fast["tape"][b, t].double(), tokens[t], rtol=1e-5, atol=1e-5)
        assert (fast["tape"][b, n:] == 0).all()
        assert float(fast["aux"][b].detach()) == pytest.approx(aux, rel=1e-5, abs=1e-6)
        assert float(fast["halting"][b].detach()) == pytest.approx(h, rel=1e-5)
    if per_step == 3:
        assert len(counts) > 1  # samples read different amounts: the halting rule is exercised
    # the model's aux_loss is aux_weight · batch mean of these per-sample sums
    model = make(aux_weight=0.25)
    tokens, mask = batch()
    out = model(tokens, mask)
    bank2, bank_mask2 = model.make_bank(tokens, mask)
    ref = slow_read(model.reader, model.make_query(model.embed_input(tokens), mask), bank2, bank_mask2)
    expected = 0.25 * sum(r[2] for r in ref) / len(ref)
    assert float(out.aux_loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-7)


# --- masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", SETTINGS)
def test_unread_tape_slots_are_invisible(setting):
    model = make(**setting).eval()
    tokens, mask = batch()
    with torch.no_grad():
        x = model.embed_input(tokens)
        bank, bank_mask = model.make_bank(tokens, mask)
        read = model.reader(model.make_query(x, mask), bank, bank_mask)
        tape = read["tape"]
        # unread slots as a reading would leave them: per-sample counts 1..T (some < T)
        T_ = tape.shape[1]
        counts = torch.tensor([1 + i % T_ for i in range(tape.shape[0])])
        tape_mask = read["tape_mask"] & (torch.arange(T_)[None, :] < counts[:, None])
        assert (~tape_mask).any() and tape_mask.any(1).all()
        base = model.encode(x, mask, tape, tape_mask)
        garbage = torch.where(tape_mask[..., None], tape, 1e3 * torch.randn_like(tape))
        again = model.encode(x, mask, garbage, tape_mask)
        # a real slot's content does matter (so the comparison above can fail)
        poked = tape.clone()
        poked[tape_mask] += 5.0 * torch.randn_like(poked[tape_mask])  # (a constant shift would vanish in a LayerNorm)
        changed = model.encode(x, mask, poked, tape_mask)
    torch.testing.assert_close(again[mask], base[mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed[mask], base[mask], atol=1e-3)


@pytest.mark.parametrize("setting", SETTINGS)
def test_padded_input_positions_are_invisible(setting):
    model = make(**setting).eval()
    tokens, mask = batch()
    other = torch.where(mask, tokens, torch.randint(1, VOCAB, tokens.shape))
    with torch.no_grad():
        a, b = model(tokens, mask), model(other, mask)
    torch.testing.assert_close(a.logits[mask], b.logits[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(a.steps, b.steps)
    # each sample alone gives the same answer as in the batch
    with torch.no_grad():
        for i in range(tokens.shape[0]):
            n = int(mask[i].sum())
            solo = model(tokens[i:i + 1, :n], mask[i:i + 1, :n])
            torch.testing.assert_close(solo.logits[0], a.logits[i, :n], rtol=1e-4, atol=1e-5)
            assert int(solo.steps[0, 0]) == int(a.steps[i, 0])


def test_ngram_bank_has_one_entry_per_full_window():
    model = make(bank="input", ngram=3)
    tokens, mask = batch()
    bank, bank_mask = model.make_bank(tokens, mask)
    assert bank.shape == (5, 9 - 3 + 1, 16)
    assert bank_mask.sum(-1).tolist() == [max(0, int(n) - 2) for n in mask.sum(-1)]
    # a window's entry depends on exactly its three elements
    t2 = tokens.clone()
    t2[0, 4] = (t2[0, 4] % (VOCAB - 1)) + 1
    bank2, _ = model.make_bank(t2, mask)
    moved = [(bank2[0, j] - bank[0, j]).abs().max().item() > 0 for j in range(7)]
    assert moved == [False, False, True, True, True, False, False]


# --- gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", SETTINGS)
def test_forward_backward_finite_and_gradient_reaches_bank_and_query(setting):
    model = make(**setting)
    tokens, mask = batch()
    targets = torch.full_like(tokens, -100)
    targets[:, 0] = tokens[:, 0]
    out = model(tokens, mask)
    assert out.logits.shape == (5, 9, VOCAB) and out.steps.dtype == torch.long
    loss, stats = model.loss(out, targets)
    assert torch.isfinite(loss) and all(isinstance(v, float) for v in stats.values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    reached = ["reader.norm.weight", "tape_type", "embedding.tok.weight"]
    reached += ["bank"] if setting["bank"] == "learnable" else ["bank_embed.weight"]
    reached += ["cls"] if setting["query"] == "cls" else []
    grads = dict(model.named_parameters())
    for name in reached:
        g = grads[name].grad
        assert g is not None and g.abs().sum() > 0, f"no gradient reaches {name}"


def test_aux_gradient_alone_reaches_the_selector():
    model = make(aux_weight=1.0)
    out = model(*batch())
    out.aux_loss.backward()
    assert model.reader.norm.weight.grad.abs().sum() > 0
    assert model.bank_embed.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # the aux loss does not touch the readout


def test_loss_is_cross_entropy_plus_aux():
    model = make()
    tokens, mask = batch()
    targets = torch.where(mask, tokens, torch.full_like(tokens, -100))
    out = model(tokens, mask)
    loss, stats = model.loss(out, targets)
    ce = torch.nn.functional.cross_entropy(out.logits[mask], tokens[mask])
    torch.testing.assert_close(loss, ce + out.aux_loss)
    assert stats["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert stats["tape"] == pytest.approx(out.extras["tape_len"].float().mean().item())


# --- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(bank="disk"), dict(query="max"), dict(max_tape=0), dict(ngram=0),
                                 dict(threshold=0.0), dict(n_heads=3), dict(positions="alibi"),
                                 dict(bank="learnable", bank_size=0), dict(aux_weight=-1.0)])
def test_bad_knobs_raise_config_error(bad):
    with pytest.raises(ConfigError):
        make(**bad)


def test_build_from_model_config():
    cfg = ModelConfig(kind="adatape", d_model=16, n_heads=2, d_ff=32, max_steps=3)
    model = build_adatape(cfg, None, vocab_size=VOCAB)
    assert len(model.layers) == 3 and model.d_model == 16
    out = model(*batch())
    assert out.logits.shape == (5, 9, VOCAB)


def test_registered_as_a_model_kind():
    import ponder.models

    assert "adatape" in ponder.models.names()
    cfg = ModelConfig(kind="adatape", d_model=16, n_heads=2, d_ff=32, max_steps=2, positions="none")
    model = ponder.models.build(cfg, "fixed", vocab_size=VOCAB)
    assert isinstance(model, AdaTape) and len(model.layers) == 2
    with pytest.raises(ConfigError):
        ponder.models.build(ModelConfig(kind="adatape", causal=True), "fixed", vocab_size=VOCAB)


def test_too_long_input_raises():
    model = make(max_len=8)
    with pytest.raises(ConfigError):
        model(*batch(L=9))


# --- learning --------------------------------------------------------------------------------
@pytest.mark.slow
def test_parity_smoke_lowers_the_loss():
    """~6 s: 300 steps on parity n=8 take the answer's cross-entropy well below chance (ln 2)."""
    task = T.get("parity")
    vocab = T.Vocab.for_task(task)
    torch.manual_seed(0)
    model = AdaTape(vocab_size=len(vocab), d_model=32, n_heads=4, d_ff=64, n_layers=2, max_tape=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for b in T.stream(task, "train", vocab, batch_size=32, num_batches=300):
        out = model(b.tokens, b.mask)
        loss, stats = model.loss(out, b.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["ce"])
    assert sum(losses[:10]) / 10 > 0.69
    assert sum(losses[-50:]) / 50 < 0.55
    valid = T.collate([task.example("valid", i) for i in range(256)], vocab)
    with torch.no_grad():
        _, stats = model.eval().loss(model(valid.tokens, valid.mask), valid.targets)
    assert stats["acc"] > 0.65
