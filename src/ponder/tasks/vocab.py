"""A task's vocabulary: shared specials first, then the task's tokens in sorted order."""

from __future__ import annotations

from ponder.errors import ConfigError

PAD = "<pad>"
SLOT = "_"  # the answer slot some tasks put where an output is written
SPECIALS: tuple[str, ...] = (PAD, SLOT)


class Vocab:
    """Token ↔ id; ``pad_id`` is 0. Targets use the same ids (one output space)."""

    def __init__(self, tokens: list[str]) -> None:
        self.itos: list[str] = list(SPECIALS) + sorted(set(tokens) - set(SPECIALS))
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.pad_id = self.stoi[PAD]

    @classmethod
    def for_task(cls, task) -> "Vocab":
        return cls(task.tokens())

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        try:
            return [self.stoi[t] for t in tokens]
        except KeyError as exc:
            raise ConfigError(f"token {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: list[int]) -> list[str]:
        return [self.itos[i] for i in ids]
