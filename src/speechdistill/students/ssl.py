"""Small students of self-supervised speech teachers.

* ``distilhubert`` (Chang et al. 2022): the teacher's own architecture (a Hugging Face
  HuBERT / wav2vec 2.0 / WavLM model) cut to ``num_layers`` transformer layers (2),
  initialised from the teacher's CNN, projection, positions and first layers, with
  one linear prediction head per chosen teacher layer (4/8/12 of 12, scaled to the
  teacher's depth) on its last layer. ``cnn_channels`` / ``pos_kernel`` give it a
  cheaper front end than the teacher's (the teacher's cut to fit: its largest filters,
  its kernel's centre; the teacher's front end is a quarter of its CPU time,
  bench/ssl_front_end.py). Saved so that
  ``transformers.AutoModel.from_pretrained(dir / "hf")`` loads it.
* ``fithubert`` (Lee et al. 2022): thin and deep; a narrow CNN, a stride-2 time
  reduction (20 ms -> 40 ms), ``num_layers`` narrow transformer blocks, and for each
  hinted block an up-sampling head (one linear layer to 2 x the teacher's width,
  unfolded into 2 frames) back to the teacher's frame rate. Its CNN is learnt afresh,
  or with ``cnn_from_teacher`` starts from the teacher's, cut to its channels.

Both are upstreams (``student(wavs, lens) -> (hidden_states, lengths)``) and always
saved as safetensors + JSON (``kind: ssl-student``). Kinds are registered
(``@STUDENTS.register("name")``): a new student is one class with ``build``,
``from_meta``, ``predict`` and its ``criterion`` (a loss of distill/ssl_losses.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, HubertConfig
from transformers.models.hubert.modeling_hubert import HubertFeatureEncoder

from speechdistill.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint, save_hf_dir
from speechdistill.registry import Registry
from speechdistill.students.encoders import Encoder, EncoderConfig
from speechdistill.teachers.ssl import HFUpstream, wave_mask
from speechdistill.utils import DataError

STUDENTS: Registry[type[nn.Module]] = Registry("SSL student kind")


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher block (1-based) for each student block: block j -> round(j * L_t / L_s)."""
    return [max(1, round(j * teacher_layers / student_layers)) for j in range(1, student_layers + 1)]


@dataclass
class StudentConfig:
    kind: str = "distilhubert"
    num_layers: int = 2  # fithubert: 12 (thin and deep)
    teacher_layers: list[int] = field(default_factory=list)  # [] : the default of the kind
    # fithubert only
    d_model: int = 96
    num_heads: int = 4
    ff_dim: int = 384
    conv_dim: int = 64  # channels of every CNN layer
    time_reduction: int = 2
    # fithubert and supernet: start the CNN from the teacher's instead of afresh (cut to
    # conv_dim channels where the teacher's is wider, as cut_front_end cuts DistilHuBERT's)
    cnn_from_teacher: bool = False
    # distilhubert only: a front end cheaper than the teacher's, cut from it: the CNN's
    # channels, one per layer or one for all ([]: the teacher's), and the positional
    # convolution's kernel (0: the teacher's)
    cnn_channels: list[int] = field(default_factory=list)
    pos_kernel: int = 0
    # seqcomp only: the frame rate is 20 ms x rate, drawn per step from [rate_min, rate_max]
    # in training and chosen at inference (``student.rate``; ``rate`` is the default)
    rate: float = 2.0
    rate_min: float = 1.0
    rate_max: float = 4.0
    # supernet only (students/supernet.py): the widths and depths its subnets may take, as
    # fractions of d_model / num_heads / ff_dim and of num_layers; whether training samples
    # one per step, or (sandwich) trains the smallest, one sampled and the largest each step;
    # the subnet it runs (empty: the largest); heads' width (0: d_model // num_heads)
    width_choices: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    depth_choices: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    sample: bool = True
    sandwich: bool = False
    subnet: dict = field(default_factory=dict)
    head_dim: int = 0
    pos_dim: int = 0  # positions are computed at this width, then cut (0: d_model)

    def __post_init__(self):
        STUDENTS.check(self.kind)
        if self.num_layers < 1:
            raise ValueError(f"student.num_layers must be >= 1, got {self.num_layers}")
        if any(c < 1 for c in self.cnn_channels) or self.pos_kernel < 0:
            raise ValueError(
                f"student.cnn_channels must be >= 1 and student.pos_kernel >= 0 (0: the teacher's), "
                f"got {self.cnn_channels} and {self.pos_kernel}"
            )
        if self.sandwich and not self.sample:
            raise ValueError("student.sandwich draws a subnet per step besides the extremes: set student.sample=true")
        if self.time_reduction not in (1, 2):
            raise ValueError(f"student.time_reduction must be 1 or 2, got {self.time_reduction}")
        if not 1 <= self.rate_min <= self.rate_max or not 1 <= self.rate:
            raise ValueError(
                f"student rates must satisfy 1 <= rate_min <= rate_max and rate >= 1, got rate={self.rate}, "
                f"rate_min={self.rate_min}, rate_max={self.rate_max}"
            )

    def targets(self, teacher_layers: int) -> list[int]:
        """The teacher layers the student predicts (1-based block indices)."""
        if self.teacher_layers:
            bad = [i for i in self.teacher_layers if not 1 <= i <= teacher_layers]
            if bad:
                raise ValueError(f"student.teacher_layers {bad} are outside the teacher's 1..{teacher_layers}")
            return list(self.teacher_layers)
        return STUDENTS[self.kind].default_targets(self, teacher_layers)


@STUDENTS.register("distilhubert")
class DistilHuBERTStudent(nn.Module):
    criterion: ClassVar[str] = "distilhubert"  # L1 - lambda log sigmoid(cos) per predicted layer

    def __init__(self, hf_config, cfg: StudentConfig, teacher_dim: int, targets: list[int]):
        super().__init__()
        hf_config = copy.deepcopy(hf_config)
        hf_config.num_hidden_layers = cfg.num_layers
        if cfg.cnn_channels:
            layers = len(hf_config.conv_dim)
            if len(cfg.cnn_channels) not in (1, layers):
                raise DataError(
                    f"student.cnn_channels {cfg.cnn_channels}: give one value or one per CNN layer ({layers})"
                )
            hf_config.conv_dim = list(cfg.cnn_channels) * (layers if len(cfg.cnn_channels) == 1 else 1)
        if cfg.pos_kernel:
            hf_config.num_conv_pos_embeddings = cfg.pos_kernel
        self.cfg, self.targets, self.teacher_dim = cfg, targets, teacher_dim
        self.model = AutoModel.from_config(hf_config)
        self.heads = nn.ModuleList(nn.Linear(hf_config.hidden_size, teacher_dim) for _ in targets)
        self.num_layers, self.dim = cfg.num_layers, hf_config.hidden_size
        self.frame_shift = math.prod(hf_config.conv_stride) / 16000

    @staticmethod
    def default_targets(cfg: StudentConfig, teacher_layers: int) -> list[int]:
        return sorted({max(1, round(teacher_layers * f / 3)) for f in (1, 2, 3)})  # 4/8/12 of 12, scaled

    @classmethod
    def build(cls, cfg: StudentConfig, teacher) -> DistilHuBERTStudent:
        up = teacher.upstream
        if not isinstance(up, HFUpstream):
            raise DataError(
                "a distilhubert student copies its teacher's architecture, so the teacher must be "
                "a Hugging Face HuBERT / wav2vec 2.0 / WavLM directory; use student.kind=fithubert"
            )
        student = cls(up.model.config, cfg, teacher.dim, cfg.targets(teacher.num_layers))
        student.init_from(up.model)
        return student

    @classmethod
    def from_meta(cls, cfg: StudentConfig, meta: dict) -> DistilHuBERTStudent:
        hf = dict(meta["hf_config"])
        return cls(AutoConfig.for_model(hf.pop("model_type"), **hf), cfg, meta["teacher_dim"], meta["targets"])

    def init_from(self, teacher_model: nn.Module) -> list[str]:
        """Copy every teacher tensor the student has (CNN, projection, positions, first
        layers); a narrower CNN or a shorter positional kernel gets the teacher's, cut to
        fit (``cut_front_end``). Returns the names copied (cut ones too)."""
        own = self.model.state_dict()
        teacher = teacher_model.state_dict()
        copied = {k: v for k, v in teacher.items() if k in own and own[k].shape == v.shape}
        copied |= cut_front_end(teacher, own)  # a layer of the teacher's width comes out whole
        self.model.load_state_dict(copied, strict=False)
        return sorted(copied)

    def forward(self, wavs, lens, output_attentions: bool = False):
        out = self.model(
            wavs,
            attention_mask=wave_mask(lens, wavs.shape[1]),
            output_hidden_states=True,
            output_attentions=output_attentions,
        )
        flens = self.model._get_feat_extract_output_lengths(lens).long()
        if output_attentions:
            return list(out.hidden_states), flens, list(out.attentions)
        return list(out.hidden_states), flens

    def predict(self, wavs, lens, output_attentions: bool = False):
        """-> [(N, T, teacher C)] one per target layer, (N,) frame lengths (teacher rate),
        the hidden states, and the attention maps when asked (else None)."""
        out = self(wavs, lens, output_attentions)
        states, flens = out[0], out[1]
        return [h(states[-1]) for h in self.heads], flens, states, (out[2] if output_attentions else None)

    def own_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """Frame lengths at the student's own rate, from ``predict``'s (the teacher's)."""
        return lens

    def save_extra(self, prefix: Path, meta: dict) -> None:
        """Also a Hugging Face directory ``{prefix}.hf`` that AutoModel loads."""
        meta["hf_config"] = self.model.config.to_dict()
        save_hf_dir(self.model, prefix.with_suffix(".hf"))


def cut_front_end(teacher: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's front-end tensors cut to a narrower student's ``own`` shapes (a
    layer as wide as the teacher's keeps every channel, in order: the teacher's own).

    CNN: each layer keeps the output channels whose filters have the largest L1 norm
    (Li et al. 2017, "Pruning filters for efficient ConvNets"), and the next layer the
    input channels kept below it; the norms and the feature projection follow the last
    layer's channels. Positional convolution: the centre taps of the teacher's kernel
    (weight norm's direction and its per-tap norm alike, so the student's weight is the
    teacher's centre). Hand-written: torch.nn.utils.prune masks weights in place and
    cannot shrink a Hugging Face feature encoder."""
    cut: dict[str, torch.Tensor] = {}
    kept = None  # the channels kept by the layer below
    i = 0
    while (name := f"feature_extractor.conv_layers.{i}.conv.weight") in own:
        w = teacher[name]
        if kept is not None:
            w = w[:, kept]
        kept = w.abs().sum(dim=(1, 2)).topk(own[name].shape[0]).indices.sort().values
        cut[name] = w[kept]
        for k, v in teacher.items():  # this layer's norm and bias: one value per channel
            if k.startswith(f"feature_extractor.conv_layers.{i}.") and k != name and k in own:
                cut[k] = v[kept]
        i += 1
    if kept is not None:
        for k in ("feature_projection.layer_norm.weight", "feature_projection.layer_norm.bias"):
            if k in own:
                cut[k] = teacher[k][kept]
        k = "feature_projection.projection.weight"
        if k in own:
            cut[k] = teacher[k][:, kept]
    for k, v in own.items():
        if k.startswith("encoder.pos_conv_embed.conv.") and v.dim() == 3 and k in teacher:
            start = (teacher[k].shape[2] - v.shape[2]) // 2
            cut[k] = teacher[k][:, :, start : start + v.shape[2]]
    return {k: v for k, v in cut.items() if own[k].shape == v.shape}


def copy_teacher_cnn(cnn: HubertFeatureEncoder, cnn_config: HubertConfig, teacher) -> None:
    """Load a Hugging Face teacher's CNN into a thin student's ``cnn`` of the same kernels
    and strides, cut to its channels (``cut_front_end``: the largest filters)."""
    up = teacher.upstream
    if not isinstance(up, HFUpstream):
        raise DataError(
            f"student.cnn_from_teacher copies a Hugging Face teacher's CNN; this teacher is a "
            f"{type(up).__name__}: set student.cnn_from_teacher=false"
        )
    hf = up.model.config
    mine = (list(cnn_config.conv_kernel), list(cnn_config.conv_stride), cnn_config.feat_extract_norm)
    theirs = (list(hf.conv_kernel), list(hf.conv_stride), hf.feat_extract_norm)
    if mine != theirs:
        raise DataError(
            f"student.cnn_from_teacher: the teacher's CNN (kernels, strides, norm) {theirs} is not the "
            f"student's {mine}; set student.cnn_from_teacher=false"
        )
    if any(a > b for a, b in zip(cnn_config.conv_dim, hf.conv_dim, strict=True)):
        raise DataError(
            f"student.cnn_from_teacher: student.conv_dim={cnn_config.conv_dim[0]} is wider than the "
            f"teacher's CNN ({list(hf.conv_dim)}); it can only be cut narrower"
        )
    own = {f"feature_extractor.{k}": v for k, v in cnn.state_dict().items()}
    cut = cut_front_end(up.model.state_dict(), own)
    assert cut.keys() == own.keys(), sorted(own.keys() - cut.keys())  # a CNN of the same shape, narrower
    cnn.load_state_dict({k.removeprefix("feature_extractor."): v for k, v in cut.items()})


@STUDENTS.register("fithubert")
class FitHuBERTStudent(nn.Module):
    criterion: ClassVar[str] = "hints"  # layer-to-layer MSE, 0.1 on intermediate blocks, 1.0 on the last

    def __init__(self, cfg: StudentConfig, teacher_dim: int, targets: list[int]):
        super().__init__()
        self.cfg, self.targets = cfg, targets
        # HuBERT's CNN (7 layers, 20 ms stride) at cfg.conv_dim channels, from transformers
        self.cnn_config = HubertConfig(conv_dim=(cfg.conv_dim,) * 7)
        self.cnn = HubertFeatureEncoder(self.cnn_config)
        self.reduce = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.time_reduction, stride=cfg.time_reduction)
        self.encoder = Encoder(
            EncoderConfig(
                kind="transformer",
                preset=None,
                num_blocks=cfg.num_layers,
                d_model=cfg.d_model,
                num_heads=cfg.num_heads,
                ff_dim=cfg.ff_dim,
                dropout=0.0,
                subsampling=1,
            ),
            input_dim=cfg.conv_dim,
        )
        self.heads = nn.ModuleList(nn.Linear(cfg.d_model, cfg.time_reduction * teacher_dim) for _ in targets)
        self.teacher_dim = teacher_dim
        self.num_layers, self.dim = cfg.num_layers, cfg.d_model
        self.frame_shift = 0.02 * cfg.time_reduction

    @staticmethod
    def default_targets(cfg: StudentConfig, teacher_layers: int) -> list[int]:
        return layer_map(cfg.num_layers, teacher_layers)  # one hint per student block

    @classmethod
    def build(cls, cfg: StudentConfig, teacher) -> FitHuBERTStudent:
        targets = cfg.targets(teacher.num_layers)
        if len(targets) != cfg.num_layers:
            raise DataError(
                f"fithubert hints one teacher layer per student block: got {len(targets)} "
                f"student.teacher_layers for {cfg.num_layers} blocks"
            )
        return cls(cfg, teacher.dim, targets)

    @classmethod
    def from_meta(cls, cfg: StudentConfig, meta: dict) -> FitHuBERTStudent:
        return cls(cfg, meta["teacher_dim"], meta["targets"])

    def cnn_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        for k, s in zip(self.cnn_config.conv_kernel, self.cnn_config.conv_stride, strict=True):
            lens = torch.div(lens - k, s, rounding_mode="floor") + 1
        return lens.clamp(min=0)

    def forward(self, wavs, lens):
        x = self.cnn(wavs)  # (N, C, T20)
        flens = self.cnn_lengths(lens)
        r = self.cfg.time_reduction
        x = x[:, :, : x.shape[2] // r * r]
        x = self.reduce(x).transpose(1, 2)  # (N, T40, C)
        return self.encoder.extract_features(x, torch.div(flens, r, rounding_mode="floor"), with_input=True)

    def predict(self, wavs, lens, output_attentions: bool = False):
        """-> [(N, r*T, teacher C)] one per hinted block (block i for target i), (N,) lengths
        at the teacher's rate, the hidden states, None (no attention maps)."""
        states, slens = self(wavs, lens)
        preds = []
        for head, h in zip(self.heads, states[1:], strict=True):
            y = head(h)  # (N, T, r*C): each frame unfolds into r frames at the teacher's rate
            preds.append(y.reshape(y.shape[0], -1, self.teacher_dim))
        return preds, slens * self.cfg.time_reduction, states, None

    def own_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return lens // self.cfg.time_reduction

    def save_extra(self, prefix: Path, meta: dict) -> None:
        pass


def segments(lens: torch.Tensor, num_frames: int, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t of an utterance of L frames falls in segment floor(t * n / L), n = ceil(L / rate):
    n segments of floor(rate) or ceil(rate) frames, none empty, at any rate >= 1.
    Returns (N, T) segment ids (-1 on padding) and (N,) n."""
    n = torch.ceil(lens.double() / rate).long().clamp(min=1)
    t = torch.arange(num_frames, device=lens.device)
    ids = torch.div(t[None, :] * n[:, None], lens.clamp(min=1)[:, None], rounding_mode="floor")
    return ids.masked_fill(t[None, :] >= lens[:, None], -1), n


def compress(x: torch.Tensor, lens: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, T, C), (N,) -> (N, T', C) the mean of each segment (:func:`segments`), (N,) n,
    and the (N, T) segment ids, for :func:`expand`. T' = max n; padding is zero."""
    ids, n = segments(lens, x.shape[1], rate)
    segs = torch.arange(int(n.max()), device=x.device)
    w = (ids[:, None, :] == segs[None, :, None]).to(x.dtype)  # (N, T', T): frame t in segment j
    y = torch.bmm(w, x) / w.sum(-1, keepdim=True).clamp(min=1)
    return y, n, ids


def expand(y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, T', C) segment values, (N, T) ids -> (N, T, C): each frame gets its segment's
    value (padding gets segment 0's; it is masked downstream)."""
    return torch.gather(y, 1, ids.clamp(min=0)[..., None].expand(-1, -1, y.shape[-1]))


@STUDENTS.register("seqcomp")
class SeqCompressionStudent(FitHuBERTStudent):
    """Once-for-all sequence compression (after Chen et al. 2023): FitHuBERT's thin CNN and
    transformer, but between them the 20 ms frames are averaged over segments of ``rate``
    frames (:func:`compress`), with the rate drawn uniformly from [rate_min, rate_max] at
    every training step. One trained model then runs at any frame rate in that range:
    set ``student.rate`` (frames of 20 ms x rate). Each block's prediction of its teacher
    layer is copied back over its segment to the teacher's 20 ms frames."""

    def __init__(self, cfg: StudentConfig, teacher_dim: int, targets: list[int]):
        super().__init__(dataclasses.replace(cfg, time_reduction=1), teacher_dim, targets)
        self.cfg, self.rate, self._last_rate = cfg, cfg.rate, cfg.rate
        del self.reduce  # the segment means replace FitHuBERT's strided convolution

    @property
    def frame_shift(self) -> float:
        return 0.02 * self.rate

    @frame_shift.setter
    def frame_shift(self, value: float) -> None:  # FitHuBERT's constructor sets it; the rate decides
        pass

    def step_rate(self) -> float:
        """The rate of this forward: drawn (torch's RNG) while training, ``self.rate`` otherwise."""
        if not self.training:
            return self.rate
        lo, hi = self.cfg.rate_min, self.cfg.rate_max
        return lo + (hi - lo) * float(torch.rand(()))

    def _encode(self, wavs, lens, rate: float):
        x = self.cnn(wavs).transpose(1, 2)  # (N, T20, C)
        flens = self.cnn_lengths(lens)
        x, clens, ids = compress(x, flens, rate)
        states, clens = self.encoder.extract_features(x, clens, with_input=True)
        return states, clens, flens, ids

    def forward(self, wavs, lens):
        states, clens, _, _ = self._encode(wavs, lens, self.step_rate())
        return states, clens

    def predict(self, wavs, lens, output_attentions: bool = False):
        """-> [(N, T20, teacher C)] one per hinted block, (N,) teacher-rate lengths, the
        hidden states (compressed), None."""
        self._last_rate = rate = self.step_rate()
        states, _, flens, ids = self._encode(wavs, lens, rate)
        preds = [expand(head(h), ids) for head, h in zip(self.heads, states[1:], strict=True)]
        return preds, flens, states, None

    def own_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return torch.ceil(lens.double() / self._last_rate).long().clamp(min=1)


def build_student(cfg: StudentConfig, teacher) -> nn.Module:
    """A student of kind ``cfg.kind`` for ``teacher`` (a FrozenTeacher); a kind with a thin
    CNN of its own (fithubert, seqcomp, supernet) starts it from the teacher's when
    ``cnn_from_teacher`` (distilhubert copies its whole front end always)."""
    student = STUDENTS[cfg.kind].build(cfg, teacher)
    if cfg.cnn_from_teacher and hasattr(student, "cnn_config"):
        copy_teacher_cnn(student.cnn, student.cnn_config, teacher)
    return student


# what distillation adds to a student for training only (TinyBERT's projections, learned loss
# weights): never saved with it, nor counted in its size
TRAINING_ONLY = ("hidden_proj.", "loss_log_vars")


def save_student(student: nn.Module, prefix: str | Path, extra: dict | None = None) -> None:
    """safetensors + JSON always, and what the kind adds (distilhubert: a HF directory ``{prefix}.hf``)."""
    prefix = Path(prefix)
    meta = {
        "kind": "ssl-student",
        "student": asdict(student.cfg),
        "targets": student.targets,
        "teacher_dim": student.teacher_dim,
    } | (extra or {})
    student.save_extra(prefix, meta)
    state = {f"student.{k}": v for k, v in student.state_dict().items() if not k.startswith(TRAINING_ONLY)}
    save_checkpoint(prefix, state, meta)


def load_student(prefix: str | Path) -> nn.Module:
    tensors, meta = load_checkpoint(prefix)
    if meta.get("kind") != "ssl-student":
        raise CheckpointError(f"{prefix} is not an SSL student checkpoint (kind={meta.get('kind')!r})")
    cfg = StudentConfig(**meta["student"])
    student = STUDENTS[cfg.kind].from_meta(cfg, meta)
    load_model_state(student, tensors, "student.", prefix)
    return student.eval()
