"""Adversarial robustness of upstreams: FGSM and PGD on the waveform under an SNR bound.

    speechdistill attack --upstream exp/ssl/teacher/hf --task sid --method pgd --snr 30
    speechdistill attack --upstream exp/ssl/distilhubert/student --task sid --surrogate exp/ssl/teacher/hf

The settings of Wu et al. (2022, "Characterizing the adversarial vulnerability of speech
self-supervised learning"). *Limited knowledge*: the attacker has the upstream and its
gradients but not the downstream model, so the perturbation maximises how far the
upstream's hidden states move (the mean over states and frames of the squared distance
to the clean ones). *Zero knowledge*: the same attack made on a surrogate upstream
(``--surrogate``) and transferred to the one attacked. The downstream is a probe trained
on clean speech (probe.py); the result is its test score on clean and on attacked audio.

The bound: each utterance's perturbation lies in an L2 ball whose radius gives the
chosen SNR, ||delta|| <= ||x|| 10^(-snr/20), over its real samples (padding stays zero).
FGSM here is its L2 form (the fast gradient method: one step of the full radius along
the normalised gradient) from a random start at a tenth of the radius (R+FGSM, Tramer et
al. 2018: at the clean input the gradient of a distance to the clean states is zero, so
a step from there moves nothing); PGD takes ``steps`` steps of ``step_frac`` of the radius from
a random start, projecting back onto the ball after each. ``noise``, the control: a random
Gaussian perturbation scaled onto the ball's surface, the same energy as the attacks at
their limit but no gradient. Written by hand: the attack
libraries (torchattacks, ART) bound an L-infinity or L2 norm on images with a
classifier's loss, not an SNR per variable-length utterance on a feature distortion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from speechdistill.downstream import ATTACKABLE, ATTACKS, CLASSIFY
from speechdistill.masks import padding_mask
from speechdistill.probe import ProbeConfig, _score, train_probe
from speechdistill.teachers.upstream import load_upstream
from speechdistill.utils import DataError


@dataclass
class AttackConfig:
    probe: ProbeConfig
    method: str = "pgd"
    snr_db: float = 30.0
    steps: int = 10  # PGD
    step_frac: float = 0.25  # PGD step, as a fraction of the ball's radius
    surrogate: str = ""  # zero knowledge: attack this upstream and transfer ("": the attacked one)
    seed: int = 0

    def __post_init__(self):
        if self.probe.task not in ATTACKABLE:
            raise ValueError(f"attack task {self.probe.task!r}; valid: {', '.join(ATTACKABLE)}")
        if self.method not in ATTACKS:
            raise ValueError(f"attack method {self.method!r}; valid: {', '.join(ATTACKS)}")
        if self.steps < 1 or not 0 < self.step_frac <= 1:
            raise ValueError("attack steps must be >= 1 and 0 < step_frac <= 1")


def sample_mask(wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return (~padding_mask(lens, wavs.shape[1])).to(wavs.dtype)


def radius(wavs: torch.Tensor, lens: torch.Tensor, snr_db: float) -> torch.Tensor:
    """(N,) the largest perturbation norm each utterance allows at ``snr_db``."""
    return (wavs * sample_mask(wavs, lens)).norm(dim=1) * 10 ** (-snr_db / 20)


def project(delta: torch.Tensor, wavs: torch.Tensor, lens: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``delta`` with its padding zeroed and each row shrunk into its SNR ball."""
    delta = delta * sample_mask(wavs, lens)
    norm = delta.norm(dim=1).clamp(min=1e-12)
    return delta * (radius(wavs, lens, snr_db) / norm).clamp(max=1.0)[:, None]


def snr(wavs: torch.Tensor, delta: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """(N,) signal-to-perturbation ratio in dB over each utterance's real samples."""
    m = sample_mask(wavs, lens)
    return 20 * torch.log10((wavs * m).norm(dim=1) / (delta * m).norm(dim=1).clamp(min=1e-12))


def distortion(upstream, wavs: torch.Tensor, lens: torch.Tensor, clean: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of the hidden states of ``wavs`` to ``clean``, over states and real frames."""
    states, flens = upstream(wavs, lens)
    m = (~padding_mask(flens, states[0].shape[1])).to(states[0].dtype)
    per = [(((s - c) ** 2).mean(-1) * m).sum() / m.sum() for s, c in zip(states, clean, strict=True)]
    return torch.stack(per).mean()


def perturb(upstream, wavs: torch.Tensor, lens: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """The perturbation that most distorts ``upstream``'s hidden states within the bound
    (``noise``: a random one on the bound)."""
    r = radius(wavs, lens, cfg.snr_db)[:, None]
    m = sample_mask(wavs, lens)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    start = project(torch.randn(wavs.shape, generator=g).to(wavs.device) * m * 1e6, wavs, lens, cfg.snr_db)
    if cfg.method == "noise":
        return start
    with torch.no_grad():
        clean = [s.detach() for s in upstream(wavs, lens)[0]]

    def step(delta: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(distortion(upstream, wavs + delta, lens, clean), delta)
        grad = grad * m
        return project(
            delta.detach() + size * grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12), wavs, lens, cfg.snr_db
        )

    if cfg.method == "fgsm":  # at delta = 0 the distortion's gradient is zero: start a little off it
        return step(0.1 * start, r)
    delta = start * torch.rand(len(wavs), 1, generator=g).to(wavs.device)
    for _ in range(cfg.steps):
        delta = step(delta, cfg.step_frac * r)
    return delta


def attack(upstream_path: str | Path, cfg: AttackConfig, show_progress: bool = True) -> dict:
    """Train a probe on clean speech, then score it on clean and attacked test audio."""
    clean_result, task = train_probe(upstream_path, cfg.probe, show_progress=show_progress)
    target = task.states.upstream  # the attacked upstream, frozen (no gradients to its weights)
    source = target.upstream if not cfg.surrogate else load_upstream(cfg.surrogate).eval().requires_grad_(False)
    if cfg.method != "noise" and not getattr(source, "differentiable", True):
        raise DataError(
            f"{cfg.surrogate or upstream_path}: its features are computed outside autograd (filterbank), so it "
            "gives no gradients to attack with; attack it through --surrogate (zero knowledge)"
        )
    snrs = []

    def predict(cuts, wavs, lens):
        delta = perturb(source, wavs, lens, cfg)
        snrs.append(snr(wavs, delta, lens))
        states, flens = target(wavs + delta, lens)
        return task.head(states, flens), flens

    attacked = _score(
        task.head, predict, task.parts["test"], task.target, cfg.probe.task, cfg.probe.max_duration, task.scale
    )
    lowest = float(torch.cat(snrs).min())
    higher = cfg.probe.task in CLASSIFY
    return {
        "upstream": str(upstream_path),
        "setting": "control" if cfg.method == "noise" else ("zero-knowledge" if cfg.surrogate else "limited-knowledge"),
        "metric": clean_result["metric"],
        "clean": clean_result["test"],
        "attacked": attacked,
        "drop": (clean_result["test"] - attacked) if higher else (attacked - clean_result["test"]),
        "lowest_snr_db": round(lowest, 3) if math.isfinite(lowest) else lowest,
        "config": asdict(cfg),
    }
