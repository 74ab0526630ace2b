"""Routed mixture-of-experts FFN kinds (registered in ``ponder.models.kinds.FFNS`` on import).

``switch`` (top-1, capacity), ``topk`` (renormalised top-k), ``hash`` (fixed hash of the token
id), ``sigma_moe`` (MoEUT's sigmoid top-k), ``expert_choice`` and ``soft_moe`` (both non-causal).
The experts run through one sorted dispatch (:mod:`ponder.models.experts.dispatch`);
shared bookkeeping (capacity, aux losses, statistics, FLOPs) is in
:mod:`ponder.models.experts.routing`.
"""

from ponder.models.experts import expert_choice, hashed, sigma_moe, soft_moe, switch, topk  # noqa: F401
