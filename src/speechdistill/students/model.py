"""The student acoustic model: an encoder, a main CTC output layer, and
auxiliary output layers ("taps") on chosen blocks.

    >>> model = AcousticModel(ModelConfig(taps=[TapConfig(layer=2, unit="senone")]), units.vocab())
    >>> out = model(feats, feat_lens)
    >>> out.main        # (N, T', V+1) CTC log-probs, blank = 0
    >>> out.taps["senone@2"]   # (N, T', K) frame logits (or CTC log-probs for kind="ctc")
    >>> model.without_taps()   # what is decoded and exported: taps cost nothing there

A tap is a LayerNorm + Linear head on the output of block ``layer`` (1-based) over
the unit's classes (``UnitType.num_classes``); its ``kind`` names the tap loss that
trains it (distill/taps.py: ``frame`` per-frame classification and distillation,
``ctc`` intermediate CTC). ``load_inference_model`` rebuilds the decodable model from
a checkpoint's own config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from speechdistill.checkpoint import CheckpointError, load_checkpoint, load_model_state
from speechdistill.config import from_dict
from speechdistill.data.layout import SoftLabelSpec
from speechdistill.distill.taps import TAP_LOSSES
from speechdistill.masks import padding_mask
from speechdistill.students.encoders import Encoder, EncoderConfig, SelfCondition
from speechdistill.units.types import UNIT_TYPES

LOSS_WEIGHTINGS = ("fixed", "uncertainty")
ORACLES = ("", "labels", "blind")


def loss_log_vars(hand: list[float]) -> nn.Parameter:
    """Learned loss weights (Kendall et al. 2018): s_i = log sigma_i^2 of each weighted loss,
    started at its hand weight w_i = exp(-s_i) (at least 1e-3: a zero weight must stay finite)."""
    return nn.Parameter(-torch.tensor(hand).clamp(min=1e-3).log())


def learned_weights(log_vars: torch.Tensor) -> list[tuple[float, float]]:
    """Each learned weight exp(-s_i) and its share of their sum, for the log."""
    w = torch.exp(-log_vars.detach().float())
    return [(float(wi), float(share)) for wi, share in zip(w, w / w.sum(), strict=True)]


@dataclass
class TapConfig:
    layer: int  # 1-based block index
    unit: str = "senone"
    kind: str = "frame"  # a tap loss (distill/taps.py): "frame" or "ctc"
    weight: float = 0.3
    kd: SoftLabelSpec | None = None  # distil these soft labels (frame taps); the unit is the tap's
    ce_weight: float = 1.0  # frame taps: weight of CE to the aligned truth, beside KD
    # CTC taps: feed the tap's posteriors back into the stream for the blocks above
    # (self-conditioned CTC; encoders.SelfCondition). Part of the decodable model then.
    condition: bool = False

    def __post_init__(self):
        UNIT_TYPES.check(self.unit)
        if self.condition and self.kind != "ctc":
            raise ValueError(
                f"tap {self.name}: condition=true needs kind=ctc (self-conditioned CTC), not {self.kind!r}"
            )
        if self.weight < 0 or self.ce_weight < 0:
            raise ValueError(f"tap weights must be >= 0, got {self.weight}, {self.ce_weight}")
        if self.kd is not None:
            if self.kd.unit not in ("", self.unit):
                raise ValueError(f"tap {self.name}: kd.unit={self.kd.unit!r} differs from the tap's unit")
            self.kd = replace(self.kd, unit=self.unit)
        TAP_LOSSES[self.kind].check(self)

    @property
    def name(self) -> str:
        return f"{self.unit}{'' if self.kind == 'frame' else '-' + self.kind}@{self.layer}"


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    main_unit: str = "subword"  # what the main CTC layer predicts and is scored on
    taps: list[TapConfig] = field(default_factory=list)
    input_dim: int = 80
    # fixed: the hand-set tap weights; uncertainty: learned (Kendall et al. 2018), started at them
    loss_weighting: str = "fixed"
    # an oracle teacher: "labels" puts a cross-attention block between the encoder and the
    # main output whose keys are the embedded target sequence; "blind": the same block over
    # one learned token instead (the control of the same size); "": none
    oracle: str = ""

    def __post_init__(self):
        if self.oracle not in ORACLES:
            raise ValueError(f"model.oracle={self.oracle!r}; valid: {', '.join(repr(o) for o in ORACLES)}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"model.loss_weighting={self.loss_weighting!r}; valid: {', '.join(LOSS_WEIGHTINGS)}")
        if not UNIT_TYPES[self.main_unit].ctc:
            raise ValueError(
                f"main_unit={self.main_unit!r} is a frame unit; valid: "
                f"{', '.join(u for u in UNIT_TYPES if UNIT_TYPES[u].ctc)}"
            )
        names = [t.name for t in self.taps]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate taps: {names}")
        for t in self.taps:
            if not 1 <= t.layer <= self.encoder.num_blocks:
                raise ValueError(
                    f"tap {t.name}: layer {t.layer} is outside the encoder's blocks 1..{self.encoder.num_blocks}"
                )
            if t.condition and t.layer == self.encoder.num_blocks:
                raise ValueError(f"tap {t.name}: condition=true on the last block conditions nothing; tap a lower one")
        layers = [t.layer for t in self.taps if t.condition]
        if len(set(layers)) != len(layers):
            raise ValueError(f"at most one conditioned tap per block; blocks {layers}")


def hand_weights(cfg: ModelConfig) -> list[float]:
    """The fixed weights of the main CTC loss and of each tap, in that order: CTC taps
    take their weight off the main loss (intermediate CTC)."""
    main = 1.0 - sum(t.weight for t in cfg.taps if TAP_LOSSES[t.kind].takes_main_weight)
    return [main, *(t.weight for t in cfg.taps)]


def num_classes(unit: str, vocab: dict[str, int]) -> int:
    """Output size over ``unit``: its vocabulary plus the blank/"in no unit" class where it has none."""
    return vocab[unit] + UNIT_TYPES[unit].offset


@dataclass
class ModelOutput:
    main: torch.Tensor  # (N, T', V) log-probs
    lens: torch.Tensor  # (N,)
    taps: dict[str, torch.Tensor]  # name -> (N, T', K): logits, or log-probs for taps whose loss wants them


class OracleBlock(nn.Module):
    """The oracle teacher's look at the answer (Yoon et al. 2021, "Oracle Teacher"): the
    encoder's frames attend to the embedded target units (sinusoidal positions added),
    residual and LayerNorm. With ``blind`` they attend to one learned token instead: the
    same parameters, no labels."""

    def __init__(self, d: int, heads: int, vocab: int, blind: bool):
        super().__init__()
        self.blind = blind
        self.embed = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None, target_lens: torch.Tensor | None):
        n = x.shape[0]
        if self.blind:
            keys = self.embed.weight[:1].expand(n, 1, -1)
            pad = torch.zeros(n, 1, dtype=torch.bool, device=x.device)
        else:
            if targets is None or target_lens is None:
                raise ValueError("an oracle teacher (model.oracle=labels) needs the target sequence in its forward")
            U = max(1, targets.shape[1])
            pos = torch.arange(U, device=x.device)[:, None] / torch.pow(
                10000.0, torch.arange(0, x.shape[-1], 2, device=x.device) / x.shape[-1]
            )
            pe = torch.zeros(U, x.shape[-1], device=x.device)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos), torch.cos(pos)
            keys = self.embed(targets[:, :U].clamp(min=0)) + pe
            pad = padding_mask(target_lens.clamp(min=1), U)
        att, _ = self.attn(x, keys.to(x.dtype), keys.to(x.dtype), key_padding_mask=pad, need_weights=False)
        return self.norm(x + att)


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
        self.main = nn.Linear(d, num_classes(cfg.main_unit, vocab))
        # a conditioned tap's output layer lives in the encoder (it is needed to decode)
        self.taps = nn.ModuleDict(
            {
                t.name: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_classes(t.unit, vocab)))
                for t in cfg.taps
                if not t.condition
            }
        )
        for t in cfg.taps:
            if t.condition:
                self.encoder.condition[str(t.layer)] = SelfCondition(d, num_classes(t.unit, vocab))
        if cfg.oracle:
            self.oracle = OracleBlock(
                d, cfg.encoder.num_heads, num_classes(cfg.main_unit, vocab), cfg.oracle == "blind"
            )
        if cfg.loss_weighting == "uncertainty":
            # s_i = log sigma_i^2 of the main loss and each tap's, started at the hand weights
            # (w_i = exp(-s_i)); in the model, so that DDP averages its gradients like any other
            self.loss_log_vars = loss_log_vars(hand_weights(cfg))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, targets=None, target_lens=None) -> ModelOutput:
        """(N, T, F), (N,) -> ModelOutput with T' = subsampled frames. An oracle teacher
        also takes the main unit's (N, U) targets and (N,) lengths."""
        feats = (feats - self.feat_mean) / self.feat_std
        layers, lens = self.encoder.extract_features(feats, feat_lens)
        top = self.oracle(layers[-1], targets, target_lens) if self.cfg.oracle else layers[-1]
        main = self.main(top).log_softmax(-1)
        taps = {}
        for t in self.cfg.taps:
            head = self.encoder.condition[str(t.layer)].head if t.condition else self.taps[t.name]
            y = head(layers[t.layer - 1])
            taps[t.name] = y.log_softmax(-1) if TAP_LOSSES[t.kind].log_probs else y
        return ModelOutput(main, lens, taps)

    def without_taps(self) -> InferenceModel:
        if self.cfg.oracle:
            return OracleInference(self).eval()
        return InferenceModel(self.encoder, self.main, self.feat_mean, self.feat_std)

    def num_params(self, with_taps: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        training_only = [*self.taps.parameters(), *([self.loss_log_vars] if hasattr(self, "loss_log_vars") else [])]
        return n if with_taps else n - sum(p.numel() for p in training_only)


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


class OracleInference(nn.Module):
    """An oracle teacher without its taps: decoding needs the targets too
    (``needs_targets``), since the teacher reads them."""

    needs_targets = True

    def __init__(self, model: AcousticModel):
        super().__init__()
        self.model = model

    def forward(self, feats, feat_lens, targets=None, target_lens=None):
        out = self.model(feats, feat_lens, targets, target_lens)
        return out.main, out.lens


def load_acoustic_model(ckpt: str | Path) -> tuple[AcousticModel, dict]:
    """An acoustic-model checkpoint's whole model (taps and oracle block included) and its metadata."""
    tensors, meta = load_checkpoint(ckpt)
    if meta.get("kind") != "acoustic-model":
        raise CheckpointError(f"{ckpt} is not an acoustic-model checkpoint (kind={meta.get('kind')!r})")
    model = AcousticModel(from_dict(ModelConfig, meta["config"]["model"], prefix="model."), meta["vocab"])
    load_model_state(model, tensors, "model.", ckpt)
    return model.eval(), meta


def load_inference_model(ckpt: str | Path) -> tuple[InferenceModel, dict]:
    """The decodable model of an acoustic-model checkpoint, and the checkpoint's metadata
    (``meta["config"]`` is the training config, ``meta["vocab"]`` the vocabulary sizes)."""
    model, meta = load_acoustic_model(ckpt)
    return model.without_taps().eval(), meta
