"""Acoustic encoders that return the output of every block, with lengths.

    >>> enc = build_encoder(EncoderConfig(kind="conformer", preset="xs"), input_dim=80)
    >>> layers, lens = enc.extract_features(feats, feat_lens)   # all blocks
    >>> y, y_lens = enc(feats, feat_lens)                       # last block only

Legend: N batch, T frames, C channels. ``layers[k]`` is the output of block
k+1 (``layers[-1]`` is the encoder output); taps name blocks 1..num_blocks.
Padded frames never influence real frames: attention is masked, and padded
frames are zeroed before every convolution, so a padded batch gives the same
outputs as utterances one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from speechdistill.masks import padding_mask
from speechdistill.registry import Registry

PRESETS = {
    # name: (num_blocks, d_model, num_heads, ff_dim); xs is for tests and the demo.
    "xs": (6, 144, 4, 576),
    "s": (12, 256, 4, 1024),
    "m": (16, 384, 6, 1536),
    "l": (17, 512, 8, 2048),  # Conformer-L-sized, for LibriSpeech 960 h
}
# kind -> block class (``@ENCODER_BLOCKS.register("name")``); a block maps (N, T, C) and a
# (N, T) padding mask to (N, T, C). ``positional``: sinusoidal positions are added before
# the first block; ``attention``: d_model must divide into num_heads.
ENCODER_BLOCKS: Registry[type[nn.Module]] = Registry("encoder kind")


@dataclass
class EncoderConfig:
    kind: str = "conformer"
    preset: str | None = "xs"  # fills the four sizes below when set
    num_blocks: int = 6
    d_model: int = 144
    num_heads: int = 4
    ff_dim: int = 576
    conv_kernel: int = 15
    dropout: float = 0.1
    subsampling: int = 4  # 1, 2, 4 or 8: frame shift = 10 ms x subsampling
    # channels of the subsampling's convolutions; their backward pass is most of its cost on a
    # CPU (64: 157 ms, 32: 40 ms a demo step on one AVX2 core; docs/benchmarks.md)
    subsampling_channels: int = 64

    def __post_init__(self):
        block = ENCODER_BLOCKS.check(self.kind)
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"preset={self.preset!r}; valid presets: {', '.join(PRESETS)}")
            sizes = dict(zip(("num_blocks", "d_model", "num_heads", "ff_dim"), PRESETS[self.preset], strict=True))
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in sizes.items():
                own = getattr(self, name)
                if own != defaults[name] and own != value:  # set by the user, and not to the preset's value
                    raise ValueError(
                        f"{name}={own} conflicts with preset {self.preset!r} ({name}={value}); "
                        "set preset: null to choose the sizes yourself"
                    )
                setattr(self, name, value)
        for name in ("num_blocks", "d_model", "num_heads", "ff_dim", "conv_kernel", "subsampling_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.subsampling not in (1, 2, 4, 8):
            raise ValueError(f"subsampling={self.subsampling}; valid: 1, 2, 4, 8")
        if block.attention and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def frame_shift(self) -> float:
        return 0.01 * self.subsampling


class ConvSubsampling(nn.Module):
    """Stride-2 3x3 convolutions over (time, frequency), one per factor of 2.

    Each stride-2 conv with kernel 3 and no padding maps T frames to
    (T - 1) // 2; ``out_lengths`` applies the same arithmetic.
    """

    def __init__(self, input_dim: int, d_model: int, factor: int, channels: int = 64):
        super().__init__()
        self.num_convs = int(math.log2(factor))
        convs, f = [], input_dim
        for i in range(self.num_convs):
            convs += [nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2), nn.ReLU()]
            f = (f - 1) // 2
        self.convs = nn.Sequential(*convs)
        self.out = nn.Linear(channels * f if self.num_convs else input_dim, d_model)

    def out_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_convs):
            lens = torch.div(lens - 1, 2, rounding_mode="floor")
        return lens.clamp(min=0)

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        """(N, T, F), (N,) -> (N, T', C), (N,)"""
        if self.num_convs == 0:
            return self.out(x), lens
        x = x.masked_fill(padding_mask(lens, x.shape[1])[..., None], 0.0)
        x = self.convs(x.unsqueeze(1))  # (N, ch, T', F')
        N, ch, T, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(N, T, ch * f))  # (N, T', C)
        return x, self.out_lengths(lens)


def sinusoidal(T: int, C: int, device) -> torch.Tensor:
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, C, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / C))
    pe = torch.zeros(T, C, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : C // 2]
    return pe  # (T, C)


class SelfAttention(nn.Module):
    """Multi-head self-attention over unpadded keys (PyTorch's scaled dot product).
    Written out rather than ``nn.MultiheadAttention`` because the latter's fused
    inference path cannot be exported to ONNX and its reshapes bake in the traced
    length; here every reshape keeps the time axis free (-1)."""

    def __init__(self, d: int, num_heads: int, dropout: float):
        super().__init__()
        self.h, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(N, T, C), pad (N, T) -> (N, T, C)"""
        N, _, C = x.shape
        q, k, v = self.qkv(x).view(N, -1, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, h, T, C/h)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=~pad[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(N, -1, C))  # (N, T, C)


class FeedForward(nn.Sequential):
    def __init__(self, d: int, ff: int, dropout: float):
        super().__init__(
            nn.LayerNorm(d), nn.Linear(d, ff), nn.SiLU(), nn.Dropout(dropout), nn.Linear(ff, d), nn.Dropout(dropout)
        )


class ConvModule(nn.Module):
    """Conformer convolution module. LayerNorm replaces BatchNorm so that an
    utterance's output never depends on the others in its batch."""

    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pointwise1 = nn.Conv1d(d, 2 * d, 1)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.norm2 = nn.LayerNorm(d)
        self.pointwise2 = nn.Conv1d(d, d, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(N, T, C), pad (N, T) -> (N, T, C)"""
        y = F.glu(self.pointwise1(self.norm(x).transpose(1, 2)), dim=1)  # (N, C, T)
        y = self.depthwise(y.masked_fill(pad[:, None, :], 0.0))
        y = self.pointwise2(F.silu(self.norm2(y.transpose(1, 2)).transpose(1, 2)))
        return self.dropout(y.transpose(1, 2))


@ENCODER_BLOCKS.register("conformer")
class ConformerBlock(nn.Module):
    positional = attention = True

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.num_heads, cfg.dropout)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.out_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        q = self.attn_norm(x)
        x = x + self.attn_dropout(self.attn(q, pad))
        x = x + self.conv(x, pad)
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x).masked_fill(pad[..., None], 0.0)


@ENCODER_BLOCKS.register("transformer")
class TransformerBlock(nn.Module):
    """Pre-LayerNorm Transformer encoder block (Vaswani et al. 2017; Xiong et al. 2020)."""

    positional = attention = True

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), pad))
        return (x + self.ff(x)).masked_fill(pad[..., None], 0.0)


@ENCODER_BLOCKS.register("tdnn")
class TDNNBlock(nn.Module):
    """A 1-D convolution over time (``conv_kernel`` frames), LayerNorm, ReLU and a residual
    connection: a time-delay layer (Waibel et al. 1989; Peddinti et al. 2015). Cheap and
    quick to train; the own aligner's frame classifier."""

    positional = attention = False

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.conv = nn.Conv1d(cfg.d_model, cfg.d_model, cfg.conv_kernel, padding=cfg.conv_kernel // 2)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.masked_fill(pad[..., None], 0.0).transpose(1, 2)).transpose(1, 2)  # (N, T, C)
        return (x + self.dropout(F.relu(self.norm(y)))).masked_fill(pad[..., None], 0.0)


@ENCODER_BLOCKS.register("blstm")
class BLSTMBlock(nn.Module):
    positional = attention = False

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model // 2, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        lens = (~pad).sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.dropout(y).masked_fill(pad[..., None], 0.0)


class SelfCondition(nn.Module):
    """Self-conditioned CTC (Nozaki & Komatsu 2021): an intermediate CTC head's posteriors,
    projected back to ``d`` and added to the stream, so that the blocks above see what it
    predicts. Over a unit other than the output's (phones under subwords) this is
    hierarchical conditional CTC (Higuchi et al. 2022). ``head`` is the tap's own output
    layer: its CTC loss is computed on the same logits (students/model.py)."""

    def __init__(self, d: int, num_classes: int):
        super().__init__()
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_classes))
        self.proj = nn.Linear(num_classes, d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(N, T, C), pad (N, T) -> (N, T, C)"""
        return (x + self.proj(self.head(x).softmax(-1))).masked_fill(pad[..., None], 0.0)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, input_dim: int = 80):
        super().__init__()
        self.cfg = cfg
        self.subsampling = ConvSubsampling(input_dim, cfg.d_model, cfg.subsampling, cfg.subsampling_channels)
        self.blocks = nn.ModuleList(ENCODER_BLOCKS[cfg.kind](cfg) for _ in range(cfg.num_blocks))
        self.dropout = nn.Dropout(cfg.dropout)
        # block number (a str, 1-based) -> SelfCondition applied to that block's output before
        # the next block; the acoustic model adds one per conditioned CTC tap (none by default)
        self.condition = nn.ModuleDict()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def extract_features(
        self, x: torch.Tensor, lens: torch.Tensor, num_blocks: int | None = None, with_input: bool = False
    ):
        """(N, T, F), (N,) -> [(N, T', C)] * num_blocks, (N,): the first ``num_blocks``
        block outputs (all by default); ``with_input`` puts the first block's input
        (subsampled features + positions) in front, as index 0. A block's output is listed
        before its ``condition`` (if any) is added for the blocks above."""
        x, lens = self.subsampling(x, lens)
        pad = padding_mask(lens, x.shape[1])
        if ENCODER_BLOCKS[self.cfg.kind].positional:
            x = x + sinusoidal(x.shape[1], x.shape[2], x.device)
        x = self.dropout(x).masked_fill(pad[..., None], 0.0)
        outs = [x] if with_input else []
        for i, block in enumerate(self.blocks[: num_blocks or len(self.blocks)], 1):
            x = block(x, pad)
            outs.append(x)
            if str(i) in self.condition:
                x = self.condition[str(i)](x, pad)
        return outs, lens

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        """(N, T, F), (N,) -> (N, T', C), (N,)"""
        outs, lens = self.extract_features(x, lens)
        return outs[-1], lens


def build_encoder(cfg: EncoderConfig, input_dim: int = 80) -> Encoder:
    return Encoder(cfg, input_dim)
