"""Which parameters of an upstream a downstream task trains: none (the SUPERB probe), the
top K transformer layers, all of them, or adapters only.

    >>> counts = set_trainable(upstream, "top", layers=2)   # {"trainable": ..., "total": ...}
    >>> add_adapters(upstream, cnn=True)                     # CHAPTER: CNN + transformer adapters

A layer is found by its parameter names: ``...layers.{i}.`` (Hugging Face wav2vec 2.0 /
HuBERT / WavLM encoders, the SSL students) or ``...blocks.{i}.`` (the project's acoustic
encoders); the CNN feature extractor, the positional convolution and the projections
below the first layer stay frozen unless ``all`` is asked for.

``adapters``: the upstream frozen, a bottleneck adapter after every transformer layer
(Houlsby et al. 2019); ``chapter``: also a convolutional adapter after every CNN layer
(Chen et al. 2023, CHAPTER), the part a transformer-only adapter cannot reach.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from speechdistill.utils import DataError

TUNE_MODES = ("frozen", "top", "all", "adapters", "chapter")
_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a parameter belongs to, or None (``encoder.layers.3.fc.weight`` -> 3)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def set_trainable(model: nn.Module, mode: str, layers: int = 2) -> dict[str, int]:
    """Freeze ``model`` but for what ``mode`` tunes; returns the trainable and total parameter counts."""
    if mode not in TUNE_MODES:
        raise ValueError(f"tune mode {mode!r}; valid: {', '.join(TUNE_MODES)}")
    if mode in ("adapters", "chapter"):
        mode = "frozen"  # the adapters, added after, are what trains
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


class BottleneckAdapter(nn.Module):
    """h + up(GELU(down(LayerNorm(h)))) on (N, T, D) (Houlsby et al. 2019); ``up`` starts at
    zero, so an adapted model starts as the model."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.norm, self.down, self.up = nn.LayerNorm(dim), nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(self.norm(h))))


class ConvAdapter(nn.Module):
    """CHAPTER's CNN adapter on (N, C, T): y + up(GELU(depthwise conv(down(y)))), 1x1
    convolutions down and up around a depthwise one of ``kernel``; ``up`` starts at zero."""

    def __init__(self, channels: int, bottleneck: int, kernel: int = 3):
        super().__init__()
        self.down = nn.Conv1d(channels, bottleneck, 1)
        self.depthwise = nn.Conv1d(bottleneck, bottleneck, kernel, padding=kernel // 2, groups=bottleneck)
        self.up = nn.Conv1d(bottleneck, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(F.gelu(self.depthwise(self.down(y))))


def _output_hook(adapter: nn.Module):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


def add_adapters(model: nn.Module, cnn: bool, dim: int = 16, cnn_dim: int = 8) -> nn.Module:
    """Freeze ``model`` and add trainable adapters after every transformer layer and (``cnn``:
    CHAPTER) every CNN feature-extractor layer, through forward hooks, so any upstream
    whose layers are named ``layers.{i}`` / ``blocks.{i}`` and ``conv_layers.{i}`` takes
    them. They are kept as ``model.adapters`` (saved, moved and counted with it).
    Written with hooks, not Hugging Face's ``adapter_attn_dim``: that option covers the
    transformer layers of its own models only, and no library has CNN adapters."""
    model.requires_grad_(False)
    layers = [(n, m) for n, m in model.named_modules() if re.search(r"(?:^|\.)(?:layers|blocks)\.\d+$", n)]
    layers = [(n, m) for n, m in layers if "conv_layers" not in n]
    convs = [(n, m) for n, m in model.named_modules() if re.search(r"(?:^|\.)conv_layers\.\d+$", n)] if cnn else []
    if not layers or (cnn and not convs):
        raise DataError(
            f"{type(model).__name__}: no {'CNN feature-extractor layers (conv_layers.N)' if layers else 'transformer layers'} "
            "to put adapters in"
        )
    model.adapters = nn.ModuleDict(
        {
            "layers": nn.ModuleList(BottleneckAdapter(model.dim, dim) for _ in layers),
            "cnn": nn.ModuleList(ConvAdapter(_out_channels(m), cnn_dim) for _, m in convs),
        }
    )
    for (_, m), a in zip(layers, model.adapters["layers"], strict=True):
        m.register_forward_hook(_output_hook(a))
    for (_, m), a in zip(convs, model.adapters["cnn"], strict=True):
        m.register_forward_hook(_output_hook(a))
    return model.adapters


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv1d)]
    if not convs:
        raise DataError(f"{type(module).__name__} holds no Conv1d: not a CNN feature-extractor layer")
    return convs[-1].out_channels
