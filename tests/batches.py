"""A small padded batch for model tests: the same shape of inputs everywhere."""

from __future__ import annotations

import torch

from ponder.tasks.batching import IGNORE_INDEX


def padded_batch(*, vocab: int, B: int = 4, L: int = 9, seed: int = 0, short: int = 3):
    """tokens [B, L], mask [B, L] with two padded rows (row 1 loses its last 3 tokens, row 2
    keeps only ``short``), targets [B, L] with pads ignored."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, L - 3:] = False
    mask[2, short:] = False
    targets = torch.randint(0, vocab, (B, L), generator=g).masked_fill(~mask, IGNORE_INDEX)
    return tokens, mask, targets


def assert_rows_subset_matches(ffn, x, make_context) -> None:
    """An FFN kind run on the real rows only (with their flat indices, as the compacted path
    passes them) gives those rows' outputs of the all-rows run, and the same aux losses
    (they average over the same real rows). x [B·L, D]; make_context() → a fresh AttnContext."""
    full_ctx, sub_ctx = make_context(), make_context()
    rows = full_ctx.key_mask.reshape(-1).nonzero().view(-1)
    full = ffn(x, full_ctx, None)
    sub = ffn(x.index_select(0, rows), sub_ctx, rows)
    torch.testing.assert_close(sub, full.index_select(0, rows), atol=1e-12, rtol=1e-12)
    full_aux, sub_aux = full_ctx.aux_terms(), sub_ctx.aux_terms()
    assert full_aux.keys() == sub_aux.keys()
    for k in full_aux:
        torch.testing.assert_close(sub_aux[k], full_aux[k], atol=1e-12, rtol=1e-12)


def assert_same_gradients(loss, loss_ref, module, x, *, atol=1e-10, rtol=1e-8) -> dict:
    """d loss / d (x and every parameter of ``module``) equals d loss_ref / d (the same); a
    missing gradient (no path) counts as zero. Returns ``loss``'s gradients by name ("x",
    then the parameter names), None where there was no path."""
    params = [x] + list(module.parameters())
    names = ["x"] + [n for n, _ in module.named_parameters()]
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(loss_ref, params, allow_unused=True)
    for name, p, a, b in zip(names, params, got, want):
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b,
                                   atol=atol, rtol=rtol, msg=name)
    return dict(zip(names, got))


def assert_compact_equals_dense(dense, tokens, mask, targets) -> None:
    """A copy of ``dense`` (a model) run with ``execution="compact"`` gives the same steps,
    logits on real tokens, FLOPs and parameter gradients of the loss."""
    import copy
    import dataclasses

    comp = copy.deepcopy(dense)
    comp.cfg = dataclasses.replace(dense.cfg, execution="compact")
    dense.eval(), comp.eval()
    with torch.no_grad():
        a, b = dense(tokens, mask), comp(tokens, mask)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(b.logits[mask], a.logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.flops, a.flops)
    dense.train(), comp.train()
    grads = []
    for model in (dense, comp):
        loss, _ = model.loss(model(tokens, mask), targets)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    params = dict(dense.named_parameters())
    for name in grads[0].keys() | grads[1].keys():   # a gradient missing on one side counts as 0
        zero = torch.zeros_like(params[name])
        torch.testing.assert_close(grads[1].get(name, zero), grads[0].get(name, zero),
                                   atol=1e-5, rtol=1e-4, msg=name)
