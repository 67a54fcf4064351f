"""A once-for-all student (after LightHuBERT, Wang et al. 2022): one Transformer whose
subnets share its weights, so that any size can be cut out of it without retraining.

A subnet chooses the embedding width (one for the whole model), per layer the number of
attention heads (each ``head_dim`` wide) and the FFN width, and the depth (the first
``num_layers`` layers). Every weight of a subnet is the leading block of the supernet's
(``W[:out, :in]``), as in LightHuBERT and Once-for-All; layer norms normalise over the
subnet's width with the leading part of their affine weights. Training samples a subnet
per step (``sample``), or with ``sandwich`` the smallest, one drawn and the largest per
step; evaluation runs ``student.subnet`` (the largest by default).

    speechdistill distill-ssl configs/ssl/supernet.yaml teacher=exp/ssl/teacher/hf
    speechdistill ssl subnet exp/ssl/supernet/student --params 0.25 --out exp/ssl/subnet25

``extract`` copies a subnet into a standalone student of the same kind whose largest
subnet is that one: the same outputs as the supernet run at that configuration, saved
like every student (safetensors + JSON, HF directory and ONNX through ``ssl export``).
The layers and their slicing are written here because no maintained library offers
weight-sharing elastic Transformers for speech.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig
from transformers.models.hubert.modeling_hubert import HubertFeatureEncoder

from speechdistill.masks import padding_mask
from speechdistill.students.encoders import sinusoidal
from speechdistill.students.ssl import STUDENTS, DistilHuBERTStudent, FitHuBERTStudent, StudentConfig
from speechdistill.utils import DataError


@dataclass(frozen=True)
class Subnet:
    d_model: int
    heads: tuple[int, ...]  # per layer; len() is the depth
    ff_dims: tuple[int, ...]  # per layer

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def to_dict(self) -> dict:
        return {"d_model": self.d_model, "heads": list(self.heads), "ff_dims": list(self.ff_dims)}

    @classmethod
    def from_dict(cls, d: dict) -> Subnet:
        try:
            s = cls(int(d["d_model"]), tuple(int(h) for h in d["heads"]), tuple(int(f) for f in d["ff_dims"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"a subnet is {{'d_model': int, 'heads': [int per layer], 'ff_dims': [int per layer]}}, got {d!r}"
            ) from None
        if not s.heads or len(s.heads) != len(s.ff_dims) or min(s.d_model, *s.heads, *s.ff_dims) < 1:
            raise DataError(f"subnet {d!r}: heads and ff_dims need one positive value per layer, d_model > 0")
        return s


class ElasticLayer(nn.Module):
    """A pre-LN Transformer layer at its largest size that runs any smaller one by slicing."""

    def __init__(self, d_max: int, heads_max: int, head_dim: int, ff_max: int):
        super().__init__()
        self.head_dim = head_dim
        self.norm1, self.norm2 = nn.LayerNorm(d_max), nn.LayerNorm(d_max)
        self.qkv = nn.Linear(d_max, 3 * heads_max * head_dim)
        self.out = nn.Linear(heads_max * head_dim, d_max)
        self.ff1, self.ff2 = nn.Linear(d_max, ff_max), nn.Linear(ff_max, d_max)
        self.heads_max = heads_max

    def qkv_rows(self, heads: int) -> torch.Tensor:
        """Rows of the packed q/k/v projection used by ``heads`` heads (the first of each)."""
        a, w = heads * self.head_dim, self.heads_max * self.head_dim
        return torch.cat([torch.arange(a) + i * w for i in range(3)])

    def forward(self, x: torch.Tensor, pad: torch.Tensor, heads: int, ff: int) -> torch.Tensor:
        N, T, d = x.shape
        a = heads * self.head_dim
        h = F.layer_norm(x, (d,), self.norm1.weight[:d], self.norm1.bias[:d])
        rows = self.qkv_rows(heads).to(x.device)
        q, k, v = F.linear(h, self.qkv.weight[rows, :d], self.qkv.bias[rows]).split(a, dim=-1)
        q, k, v = (t.reshape(N, T, heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        x = x + F.linear(att.transpose(1, 2).reshape(N, T, a), self.out.weight[:d, :a], self.out.bias[:d])
        h = F.layer_norm(x, (d,), self.norm2.weight[:d], self.norm2.bias[:d])
        h = F.gelu(F.linear(h, self.ff1.weight[:ff, :d], self.ff1.bias[:ff]))
        return x + F.linear(h, self.ff2.weight[:d, :ff], self.ff2.bias[:d])


@STUDENTS.register("supernet")
class SupernetStudent(nn.Module):
    """FitHuBERT's thin CNN and stride-2 time reduction, then elastic Transformer layers;
    DistilHuBERT-style prediction heads on the last layer of the running subnet (each
    unfolds a 40 ms frame into two teacher frames), so that every subnet predicts the
    same teacher layers."""

    criterion: ClassVar[str] = "distilhubert"

    def __init__(self, cfg: StudentConfig, teacher_dim: int, targets: list[int]):
        super().__init__()
        self.cfg, self.targets, self.teacher_dim = cfg, targets, teacher_dim
        self.largest = Subnet(cfg.d_model, (cfg.num_heads,) * cfg.num_layers, (cfg.ff_dim,) * cfg.num_layers)
        self.subnet = Subnet.from_dict(cfg.subnet) if cfg.subnet else self.largest
        self.head_dim = cfg.head_dim or cfg.d_model // cfg.num_heads
        self.cnn_config = HubertConfig(conv_dim=(cfg.conv_dim,) * 7)
        self.cnn = HubertFeatureEncoder(self.cnn_config)
        r = cfg.time_reduction
        self.reduce = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, r, stride=r)
        self.proj = nn.Linear(cfg.conv_dim, cfg.d_model)
        self.layers = nn.ModuleList(
            ElasticLayer(cfg.d_model, cfg.num_heads, self.head_dim, cfg.ff_dim) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.heads = nn.ModuleList(nn.Linear(cfg.d_model, r * teacher_dim) for _ in targets)
        self.num_layers, self.dim, self.frame_shift = cfg.num_layers, cfg.d_model, 0.02 * r

    default_targets = staticmethod(DistilHuBERTStudent.default_targets)  # 4/8/12 of 12, scaled
    cnn_lengths = FitHuBERTStudent.cnn_lengths  # the same CNN (cnn_config) as FitHuBERT's

    @classmethod
    def build(cls, cfg: StudentConfig, teacher) -> SupernetStudent:
        return cls(cfg, teacher.dim, cfg.targets(teacher.num_layers))

    @classmethod
    def from_meta(cls, cfg: StudentConfig, meta: dict) -> SupernetStudent:
        return cls(cfg, meta["teacher_dim"], meta["targets"])

    # --- the search space -------------------------------------------------------------
    def choices(self) -> dict[str, list[int]]:
        c = self.cfg
        return {
            "d_model": sorted({max(self.head_dim, round(c.d_model * f)) for f in c.width_choices}),
            "heads": sorted({max(1, round(c.num_heads * f)) for f in c.width_choices}),
            "ff_dim": sorted({max(1, round(c.ff_dim * f)) for f in c.width_choices}),
            "num_layers": sorted({max(1, round(c.num_layers * f)) for f in c.depth_choices}),
        }

    def sample_subnet(self, generator: torch.Generator | None = None) -> Subnet:
        """A subnet drawn uniformly, per layer for heads and FFN width (torch's RNG)."""
        ch = self.choices()

        def pick(options):
            return options[int(torch.randint(len(options), (), generator=generator))]

        depth = pick(ch["num_layers"])
        return Subnet(
            pick(ch["d_model"]),
            tuple(pick(ch["heads"]) for _ in range(depth)),
            tuple(pick(ch["ff_dim"]) for _ in range(depth)),
        )

    def uniform_subnets(self) -> list[Subnet]:
        """Every subnet with the same heads and FFN width in all its layers."""
        ch = self.choices()
        return [
            Subnet(d, (h,) * L, (f,) * L)
            for d, h, f, L in itertools.product(ch["d_model"], ch["heads"], ch["ff_dim"], ch["num_layers"])
        ]

    def subnet_params(self, s: Subnet) -> int:
        """Parameters of ``s`` as an upstream (the prediction heads excluded)."""
        front = sum(p.numel() for m in (self.cnn, self.reduce) for p in m.parameters())
        a = [h * self.head_dim for h in s.heads]
        d = s.d_model
        layers = sum(
            4 * d + 3 * ai * d + 3 * ai + ai * d + d + d * f + f + f * d + d for ai, f in zip(a, s.ff_dims, strict=True)
        )
        return front + self.cfg.conv_dim * d + d + layers + 2 * d

    @property
    def smallest(self) -> Subnet:
        ch = self.choices()
        depth = ch["num_layers"][0]
        return Subnet(ch["d_model"][0], (ch["heads"][0],) * depth, (ch["ff_dim"][0],) * depth)

    # --- running ----------------------------------------------------------------------
    def step_subnet(self) -> Subnet:
        return self.sample_subnet() if self.training and self.cfg.sample else self.subnet

    def step_subnets(self) -> list[Subnet]:
        """The subnets one training step trains: with ``sandwich`` (BigNAS's sandwich rule,
        Yu et al. 2020) the smallest, one drawn and the largest, the largest last (its
        forward uses every parameter, so DDP need not look for unused ones); else one."""
        if self.training and self.cfg.sandwich:
            return [self.smallest, self.sample_subnet(), self.largest]
        return [self.step_subnet()]

    def _run(self, wavs, lens, s: Subnet):
        r = self.cfg.time_reduction
        x = self.cnn(wavs)
        x = self.reduce(x[:, :, : x.shape[2] // r * r]).transpose(1, 2)
        lens = torch.div(self.cnn_lengths(lens), r, rounding_mode="floor")
        d = s.d_model
        pad = padding_mask(lens, x.shape[1])
        x = F.linear(x, self.proj.weight[:d], self.proj.bias[:d])
        x = x + sinusoidal(x.shape[1], self.cfg.pos_dim or self.cfg.d_model, x.device)[:, :d]
        x = x.masked_fill(pad[..., None], 0.0)
        states = [x]
        for layer, h, f in zip(self.layers, s.heads, s.ff_dims, strict=False):
            x = layer(x, pad, h, f).masked_fill(pad[..., None], 0.0)
            states.append(x)
        states[-1] = F.layer_norm(x, (d,), self.norm.weight[:d], self.norm.bias[:d]).masked_fill(pad[..., None], 0.0)
        return states, lens

    def forward(self, wavs, lens):
        return self._run(wavs, lens, self.step_subnet())

    def predict(self, wavs, lens, output_attentions: bool = False, subnet: Subnet | None = None):
        """-> [(N, r*T, teacher C)] one per target layer from the last layer, teacher-rate
        lengths, the hidden states, None; of ``subnet`` (default: ``step_subnet()``)."""
        s = subnet or self.step_subnet()
        states, slens = self._run(wavs, lens, s)
        r, d = self.cfg.time_reduction, s.d_model
        preds = []
        for head in self.heads:
            y = F.linear(states[-1], head.weight[:, :d], head.bias)
            preds.append(y.reshape(y.shape[0], -1, self.teacher_dim))
        return preds, slens * r, states, None

    def own_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return lens // self.cfg.time_reduction

    def save_extra(self, prefix, meta: dict) -> None:
        pass


def extract(supernet: SupernetStudent, s: Subnet) -> SupernetStudent:
    """A standalone student whose largest (and running) subnet is ``s``, with the supernet's
    weights: the same outputs as ``supernet`` running ``s``. Its layers all have ``s``'s
    largest heads and FFN width; the smaller ones of ``s`` are kept as its subnet."""
    heads, ff = max(s.heads), max(s.ff_dims)
    cfg = dataclasses.replace(
        supernet.cfg,
        d_model=s.d_model,
        num_heads=heads,
        ff_dim=ff,
        num_layers=s.num_layers,
        head_dim=supernet.head_dim,
        pos_dim=supernet.cfg.pos_dim or supernet.cfg.d_model,
        subnet=s.to_dict(),
        sample=False,
        sandwich=False,
    )
    big = supernet.largest
    if s.d_model > big.d_model or s.num_layers > big.num_layers or heads > big.heads[0] or ff > big.ff_dims[0]:
        raise DataError(f"subnet {s.to_dict()} is larger than the supernet ({big.to_dict()})")
    small = SupernetStudent(cfg, supernet.teacher_dim, supernet.targets)
    weights = supernet.state_dict()
    state = {}
    for name, t in small.state_dict().items():
        src = weights[name]
        if name.endswith(".qkv.weight") or name.endswith(".qkv.bias"):
            layer = supernet.layers[int(name.split(".")[1])]
            src = src[layer.qkv_rows(heads)]
            state[name] = src[:, : t.shape[1]] if t.dim() == 2 else src
        else:
            state[name] = src[tuple(slice(0, n) for n in t.shape)]
    small.load_state_dict(state)
    return small.eval()


def subnet_for_budget(supernet: SupernetStudent, fraction: float) -> Subnet:
    """The largest uniform subnet with at most ``fraction`` of the supernet's parameters."""
    full = supernet.subnet_params(supernet.largest)
    fits = [s for s in supernet.uniform_subnets() if supernet.subnet_params(s) <= fraction * full]
    if not fits:
        smallest = min(supernet.subnet_params(s) for s in supernet.uniform_subnets())
        raise DataError(
            f"no subnet has at most {fraction:.0%} of the supernet's {full / 1e3:.0f}k parameters; "
            f"the smallest has {smallest / 1e3:.0f}k ({smallest / full:.0%})"
        )
    return max(fits, key=lambda s: (supernet.subnet_params(s), s.num_layers))
