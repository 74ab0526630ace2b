"""The complexity-controlled task suite.

>>> import ponder.tasks
>>> task = ponder.tasks.get("listops", max_depth=4)
>>> ex = task.example("valid", 0)          # deterministic per (config, split, index)
>>> ponder.tasks.names()                    # every registered family
"""

from ponder.tasks.base import SPLITS, Draft, Example, Task, knob
from ponder.tasks.batching import IGNORE_INDEX, NO_COMPLEXITY, Batch, collate, rank_indices, stream
from ponder.tasks.registry import get, names, register, task_class
from ponder.tasks.vocab import PAD, SLOT, Vocab

# Importing the family modules registers them. One module per family.
from ponder.tasks import families as _families  # noqa: F401,E402

__all__ = ["SPLITS", "Draft", "Example", "Task", "knob", "IGNORE_INDEX", "NO_COMPLEXITY", "Batch",
           "collate", "rank_indices", "stream", "get", "names", "register", "task_class", "PAD",
           "SLOT", "Vocab"]
