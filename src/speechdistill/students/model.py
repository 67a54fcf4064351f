"""The student acoustic model: an encoder, a main CTC output layer, and
auxiliary output layers ("taps") on chosen blocks.

    >>> model = AcousticModel(ModelConfig(taps=[TapConfig(layer=2, unit="senone")]), vocab)
    >>> out = model(feats, feat_lens)
    >>> out.main        # (N, T', V+1) CTC log-probs, blank = 0
    >>> out.taps["senone@2"]   # (N, T', K) frame logits (or CTC log-probs for kind="ctc")
    >>> model.without_taps()   # what is decoded and exported: taps cost nothing there

A tap is a LayerNorm + Linear head on the output of block ``layer`` (1-based).
``kind="frame"`` predicts one unit per frame (senones, phones with SIL, or
subword pieces with a blank-like "outside any word" class 0); ``kind="ctc"``
predicts a CTC distribution over the unit (intermediate CTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from speechdistill.students.encoders import Encoder, EncoderConfig

UNITS = ("subword", "phone", "senone")


@dataclass
class TapConfig:
    layer: int  # 1-based block index
    unit: str = "senone"
    kind: str = "frame"  # "frame" (per-frame classifier) or "ctc"
    weight: float = 0.3
    kd: bool = False  # frame taps: distil the unit LM's soft labels (T^2-scaled KL)
    ce_weight: float = 1.0  # frame taps: weight of CE to the aligned truth, beside KD
    top_k: int = 8  # which soft-label cache: {unit}-k{top_k}-T{temperature}
    temperature: float = 3.0

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"tap unit={self.unit!r}; valid: {', '.join(UNITS)}")
        if self.kind not in ("frame", "ctc"):
            raise ValueError(f"tap kind={self.kind!r}; valid: frame, ctc")
        if self.kind == "ctc" and self.unit == "senone":
            raise ValueError("a CTC tap over senones makes no sense (senones are frame units)")
        if self.weight < 0 or self.ce_weight < 0:
            raise ValueError(f"tap weights must be >= 0, got {self.weight}, {self.ce_weight}")
        if self.kd and self.kind != "frame":
            raise ValueError("kd applies to frame taps (a CTC tap has no per-frame target)")
        if self.top_k < 1 or self.temperature <= 0:
            raise ValueError(f"top_k must be >= 1 and temperature > 0, got {self.top_k}, {self.temperature}")

    @property
    def name(self) -> str:
        return f"{self.unit}{'-ctc' if self.kind == 'ctc' else ''}@{self.layer}"


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    main_unit: str = "subword"  # what the main CTC layer predicts and is scored on
    taps: list[TapConfig] = field(default_factory=list)
    input_dim: int = 80

    def __post_init__(self):
        if self.main_unit not in ("subword", "phone"):
            raise ValueError(f"main_unit={self.main_unit!r}; valid: subword, phone")
        names = [t.name for t in self.taps]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate taps: {names}")
        for t in self.taps:
            if not 1 <= t.layer <= self.encoder.num_blocks:
                raise ValueError(f"tap {t.name}: layer {t.layer} is outside the encoder's blocks "
                                 f"1..{self.encoder.num_blocks}")  # fmt: skip


def num_classes(unit: str, kind: str, vocab: dict[str, int]) -> int:
    """Output size: CTC adds a blank (0); a frame subword tap adds "outside a word" (0);
    frame phones already include SIL; senones are used as they are."""
    return vocab[unit] + (1 if unit == "subword" else 0)  # phones: the SIL slot is the blank


@dataclass
class ModelOutput:
    main: torch.Tensor  # (N, T', V) log-probs
    lens: torch.Tensor  # (N,)
    taps: dict[str, torch.Tensor]  # name -> (N, T', K): logits (frame) or log-probs (ctc)


class AcousticModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.vocab = dict(vocab)
        self.encoder = Encoder(cfg.encoder, cfg.input_dim)
        # Global feature normalisation, set from training data (see train.feature_stats);
        # buffers, so decoding and export normalise the same way.
        self.register_buffer("feat_mean", torch.zeros(cfg.input_dim))
        self.register_buffer("feat_std", torch.ones(cfg.input_dim))
        d = cfg.encoder.d_model
        self.main = nn.Linear(d, num_classes(cfg.main_unit, "ctc", vocab))
        self.taps = nn.ModuleDict({
            t.name: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_classes(t.unit, t.kind, vocab)))
            for t in cfg.taps
        })  # fmt: skip

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> ModelOutput:
        """(N, T, F), (N,) -> ModelOutput with T' = subsampled frames."""
        feats = (feats - self.feat_mean) / self.feat_std
        layers, lens = self.encoder.extract_features(feats, feat_lens)
        main = self.main(layers[-1]).log_softmax(-1)
        taps = {}
        for t in self.cfg.taps:
            y = self.taps[t.name](layers[t.layer - 1])
            taps[t.name] = y.log_softmax(-1) if t.kind == "ctc" else y
        return ModelOutput(main, lens, taps)

    def without_taps(self) -> InferenceModel:
        return InferenceModel(self.encoder, self.main, self.feat_mean, self.feat_std)

    def num_params(self, with_taps: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if with_taps else n - sum(p.numel() for p in self.taps.parameters())


class InferenceModel(nn.Module):
    """Encoder + main output layer only: what decoding and export use."""

    def __init__(self, encoder: Encoder, main: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.main = main
        self.register_buffer("feat_mean", mean.clone())
        self.register_buffer("feat_std", std.clone())

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        """(N, T, F), (N,) -> (N, T', V) CTC log-probs, (N,)"""
        x, lens = self.encoder((feats - self.feat_mean) / self.feat_std, feat_lens)
        return self.main(x).log_softmax(-1), lens
