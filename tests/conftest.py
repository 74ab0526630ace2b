"""Shared test set-up: one torch thread (deterministic, and no oversubscription of 2 cores)."""

import torch

torch.set_num_threads(1)
