"""Acceptance metrics of speculative decoding in vLLM's schema, plus throughput.

vLLM (``vllm.v1.spec_decode.metrics``) counts per run ``num_drafts`` (verification rounds),
``num_draft_tokens`` (tokens proposed), ``num_accepted_tokens`` and
``num_accepted_tokens_per_pos`` (how often the i-th draft token of a round was accepted);
from them the *mean acceptance length* ``1 + accepted / drafts`` (tokens emitted per target
forward, the bonus/resampled token included) and the *draft acceptance rate*
``accepted / draft tokens``. :class:`SpecStats` keeps the same counters, the histogram of
accepted tokens per round (``0..k``) and the wall time, so tokens/s can be set against plain
decoding of the same model measured in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecStats:
    k: int
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)   # rounds by accepted count 0..k
    emitted_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.num_accepted_tokens_per_pos:
            self.num_accepted_tokens_per_pos = [0] * self.k
        if not self.histogram:
            self.histogram = [0] * (self.k + 1)

    def record(self, proposed: int, accepted: int) -> None:
        """One verification round: ``proposed`` draft tokens, the first ``accepted`` kept."""
        self.num_drafts += 1
        self.num_draft_tokens += proposed
        self.num_accepted_tokens += accepted
        for i in range(accepted):
            self.num_accepted_tokens_per_pos[i] += 1
        self.histogram[accepted] += 1

    def merge(self, other: "SpecStats") -> None:
        for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "emitted_tokens",
                     "target_forwards", "draft_forwards", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for i, v in enumerate(other.num_accepted_tokens_per_pos):
            self.num_accepted_tokens_per_pos[i] += v
        for i, v in enumerate(other.histogram):
            self.histogram[i] += v

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    @property
    def draft_acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    def to_json(self) -> dict:
        return {
            "k": self.k, "num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos),
            "acceptance_histogram": list(self.histogram),
            "mean_acceptance_length": self.mean_acceptance_length,
            "draft_acceptance_rate": self.draft_acceptance_rate,
            "emitted_tokens": self.emitted_tokens, "target_forwards": self.target_forwards,
            "draft_forwards": self.draft_forwards, "seconds": self.seconds,
            "tokens_per_s": self.emitted_tokens / self.seconds if self.seconds > 0 else None,
        }
