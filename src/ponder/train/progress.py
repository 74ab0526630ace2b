"""Progress display: a rich bar on a terminal, plain lines otherwise, nothing on rank > 0."""

from __future__ import annotations

import sys
from typing import Any

MODES = ("auto", "rich", "plain", "none")


class TrainProgress:
    """Shows step, loss, accuracy, mean steps and tokens/s while a run trains.

    ``mode``: ``rich`` (live bar), ``plain`` (one line per validation), ``none``, or
    ``auto`` (rich on a terminal, plain otherwise).
    """

    def __init__(self, *, label: str, total_steps: int, start_step: int, mode: str = "auto",
                 time_budget_s: float | None = None, enabled: bool = True) -> None:
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode if enabled else "none"
        self.label = label
        self.total = max(1, total_steps)
        self.budget = time_budget_s
        self._progress: Any = None
        self._task: Any = None
        if self.mode == "rich":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.fields[info]}"), transient=False)
            self._task = self._progress.add_task(label, total=self.total, completed=start_step,
                                                 info="")
            self._progress.start()

    def _fraction_total(self, step: int, elapsed: float) -> int:
        if self.budget:  # a wall-clock cap may end the run before its step count
            return max(step, min(self.total, int(self.total * elapsed / self.budget)))
        return step

    def update(self, step: int, elapsed: float, values: dict[str, float]) -> None:
        if self.mode != "rich":
            return
        info = (f"loss {values.get('loss', float('nan')):.4f}  acc {values.get('token_acc', 0):.3f}  "
                f"steps {values.get('mean_steps', 0):.2f}  {values.get('tokens_per_s', 0):,.0f} tok/s")
        if "valid_acc" in values:
            info += f"  valid {values['valid_acc']:.3f}"
        self._progress.update(self._task, completed=self._fraction_total(step, elapsed), info=info)

    def line(self, text: str) -> None:
        if self.mode == "plain":
            print(f"{self.label}: {text}", flush=True)
        elif self.mode == "rich":
            self._progress.console.print(f"{self.label}: {text}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
