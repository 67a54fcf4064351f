"""Length masks. A leaf that imports torch and nothing from the package, so that the
torch-free modules (utils, synth) stay torch-free and no import cycle runs through it."""

from __future__ import annotations

import torch


def padding_mask(lens: torch.Tensor, T: int) -> torch.Tensor:
    """(N,) lengths -> (N, T) bool, True on padded frames."""
    return torch.arange(T, device=lens.device)[None, :] >= lens[:, None]
