"""Which parameters of an upstream a downstream task trains: none (the SUPERB probe), the
top K transformer layers, or all of them.

    >>> counts = set_trainable(upstream, "top", layers=2)   # {"trainable": ..., "total": ...}

A layer is found by its parameter names: ``...layers.{i}.`` (Hugging Face wav2vec 2.0 /
HuBERT / WavLM encoders, the SSL students) or ``...blocks.{i}.`` (the project's acoustic
encoders); the CNN feature extractor, the positional convolution and the projections
below the first layer stay frozen unless ``all`` is asked for.
"""

from __future__ import annotations

import re

from torch import nn

from speechdistill.utils import DataError

TUNE_MODES = ("frozen", "top", "all")
_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a parameter belongs to, or None (``encoder.layers.3.fc.weight`` -> 3)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def set_trainable(model: nn.Module, mode: str, layers: int = 2) -> dict[str, int]:
    """Freeze ``model`` but for what ``mode`` tunes; returns the trainable and total parameter counts."""
    if mode not in TUNE_MODES:
        raise ValueError(f"tune mode {mode!r}; valid: {', '.join(TUNE_MODES)}")
    named = list(model.named_parameters())
    if mode != "frozen" and not named:
        raise DataError(f"{type(model).__name__} has no parameters to tune (the filterbank?): use tune=frozen")
    indices = sorted({i for n, _ in named if (i := layer_index(n)) is not None})
    if mode == "top":
        if layers < 1 or layers > len(indices):
            raise DataError(f"tune_layers={layers}: the upstream has {len(indices)} layers; choose 1..{len(indices)}")
        chosen = set(indices[-layers:])
    for n, p in named:
        p.requires_grad_(mode == "all" or (mode == "top" and layer_index(n) in chosen))
    return {"trainable": sum(p.numel() for _, p in named if p.requires_grad), "total": sum(p.numel() for _, p in named)}
