"""A teacher copied through its outputs: black-box distillation under a query budget.

    speechdistill distill-ssl configs/ssl/fithubert.yaml queries.budget=0.05 queries.select=diverse

The teacher answers queries (a clip in, its hidden states out) and nothing else: its
weights, attention maps and gradients are hidden (``BlackBoxTeacher``), so a student that
copies weights (distilhubert) or an attention-map term is refused. Each chosen clip is
asked once (the answers are cached), and only ``budget`` x the training clips are
chosen, before any query:

* ``random``: a seeded sample;
* ``diverse``: k-center greedy (Sener and Savarese 2018's core set) on each clip's MFCC
  mean and standard deviation (standardised over the corpus): every next clip is the
  one farthest from those chosen, so the queries cover the voices and recording
  conditions instead of repeating the common ones. It reads the audio only, never the
  teacher.

The summary reports the queries made; ``BlackBoxTeacher`` refuses any beyond the budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet

from speechdistill.data.audio import load_cut_audio
from speechdistill.data.features import mfcc_with_deltas
from speechdistill.utils import DataError

SELECTIONS = ("random", "diverse")


@dataclass
class QueryConfig:
    budget: float = 0.0  # share of the training clips the teacher is asked about (0: all, white-box)
    select: str = "random"
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"queries.budget must be in [0, 1] (a share of the clips), not {self.budget}")
        if self.select not in SELECTIONS:
            raise ValueError(f"queries.select={self.select!r}; valid: {', '.join(SELECTIONS)}")


class QueryBudgetError(DataError):
    pass


class BlackBoxTeacher:
    """A teacher seen only through its answers: ``(wavs, lens) -> (states, frame lengths)``
    for at most ``budget`` clips in all; its sizes are public, its weights are not."""

    def __init__(self, teacher, budget: int):
        self._teacher, self.budget, self.queries = teacher, budget, 0
        self.num_layers, self.dim, self.frame_shift = teacher.num_layers, teacher.dim, teacher.frame_shift

    @property
    def upstream(self):
        raise DataError(
            "the teacher is a black box (queries.budget is set): its weights cannot be copied or read; "
            "use a student that learns from outputs alone (student.kind=fithubert) and attention_weight=0"
        )

    def __call__(self, wavs: torch.Tensor, lens: torch.Tensor, **kw):
        if kw:
            raise DataError(f"the black-box teacher answers with hidden states only, not {sorted(kw)}")
        if self.queries + len(wavs) > self.budget:
            raise QueryBudgetError(
                f"query budget exhausted: {self.queries} of {self.budget} clips asked, {len(wavs)} more wanted"
            )
        self.queries += len(wavs)
        return self._teacher(wavs, lens)

    def to(self, device):
        self._teacher.to(device)
        return self

    def parameters(self):
        return iter(())

    @property
    def device(self) -> torch.device:
        return self._teacher.device


def clip_embedding(cut) -> np.ndarray:
    """(26,) the mean and standard deviation of the clip's 13 MFCCs."""
    x = mfcc_with_deltas(load_cut_audio(cut))[:, :13]
    return np.concatenate([x.mean(0), x.std(0)])


def k_center(points: np.ndarray, n: int, first: int) -> list[int]:
    """Greedy k-center: start at ``first``, then repeatedly the point farthest from the chosen."""
    chosen = [first]
    dist = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < n:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


def select_clips(cuts: CutSet, cfg: QueryConfig) -> CutSet:
    """The clips the teacher will be asked about (all of them when no budget is set)."""
    if not cfg.budget:
        return cuts
    order = sorted(cuts, key=lambda c: c.id)
    n = max(1, round(cfg.budget * len(order)))
    rng = random.Random(cfg.seed)
    if cfg.select == "random":
        picked = rng.sample(range(len(order)), n)
    else:
        emb = np.stack([clip_embedding(c) for c in order])
        emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
        picked = k_center(emb, n, rng.randrange(len(order)))
    return CutSet.from_cuts(sorted((order[i] for i in picked), key=lambda c: c.id))
