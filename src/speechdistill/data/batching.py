"""Batches: padded features with CTC targets, frame-level targets and soft labels for
acoustic-model training; padded waveforms for the self-supervised models.

    >>> ds = AsrDataset(units, main_unit="subword", taps=cfg.model.taps, frames_fn=enc_frames,
    ...                 frame_shift=0.04)
    >>> sampler = make_sampler(cuts, max_duration=200, shuffle=True, seed=0)
    >>> batch = ds[next(iter(sampler))]        # a Batch
    >>> ids, wavs, lens = WaveDataset()[next(iter(sampler))]

Legend: N batch, T frames, F features, U target units, S samples. Frame-level targets
use -100 where there is no label (padding), so cross-entropy ignores them.
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from torch import nn

from speechdistill.data.audio import load_cut_audio
from speechdistill.data.augment import WaveAugment
from speechdistill.data.corpus import load_split
from speechdistill.data.features import FbankExtractor
from speechdistill.data.layout import SoftLabelSpec
from speechdistill.distill.losses import IGNORE
from speechdistill.distill.taps import TAP_LOSSES
from speechdistill.utils import DataError


@dataclass
class Batch:
    ids: list[str]
    feats: torch.Tensor  # (N, T, F)
    feat_lens: torch.Tensor  # (N,)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # unit -> (N, U) padded CTC class ids, (N,) lengths
    frame_targets: dict[str, torch.Tensor]  # tap name -> (N, T') class ids, IGNORE on padding
    texts: list[str]
    # soft labels spread over the output frames: ((N, T', k) probs, (N, T', k) class ids, (N, T') mask)
    soft_frames: dict[SoftLabelSpec, tuple] = field(default_factory=dict)
    # soft labels per target position (label interpolation): ((N, U, k) probs, (N, U, k) unit ids,
    # (N,) whether the utterance has them)
    soft_positions: dict[SoftLabelSpec, tuple] = field(default_factory=dict)

    def to(self, device) -> Batch:
        return Batch(
            self.ids,
            self.feats.to(device),
            self.feat_lens.to(device),
            {k: (a.to(device), b.to(device)) for k, (a, b) in self.targets.items()},
            {k: v.to(device) for k, v in self.frame_targets.items()},
            self.texts,
            {k: tuple(x.to(device) for x in v) for k, v in self.soft_frames.items()},
            {k: tuple(x.to(device) for x in v) for k, v in self.soft_positions.items()},
        )


def _pad(seqs: list[list[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lens.max()) if len(seqs) else 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lens


class AsrDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one batch from a lhotse sampler) to a ``Batch``: the CTC targets of
    the main unit and of the taps that need them, aligned frame labels of the taps that
    need them, and the soft labels of ``soft_frames`` / ``soft_positions`` (spec -> cache)."""

    def __init__(
        self,
        units,
        main_unit: str,
        taps=(),
        frames_fn: Callable[[int], int] = lambda t: t,
        frame_shift: float = 0.04,
        on_the_fly: bool = False,
        soft_frames=None,
        soft_positions=None,
        augment: WaveAugment | None = None,
    ):
        self.units = units
        self.main_unit = main_unit
        self.taps = list(taps)
        self.frames_fn = frames_fn
        self.frame_shift = frame_shift
        self.augment = augment  # waveform augmentation (features on the fly); None: off
        self.epoch = 0  # the augmentation's draws depend on it: set before each epoch
        self.fbank = FbankExtractor(fast=True) if on_the_fly or augment is not None else None
        self.seq_units = {main_unit} | {t.unit for t in self.taps if TAP_LOSSES[t.kind].sequence}
        self.soft_frames = soft_frames or {}
        self.soft_positions = soft_positions or {}

    def frame_labels(self, cut, unit: str, T: int) -> np.ndarray:
        """(T,) class per frame; IGNORE throughout for an utterance without an alignment (one
        an aligner failed on): its taps learn nothing from it, its main output still does."""
        ali = cut.supervisions[0].alignment or {}
        if "phone" not in ali:
            return np.full(T, IGNORE, dtype=np.int64)
        return self.units[unit].frame_labels(ali, self.frame_shift, T)

    def __getitem__(self, cuts: CutSet) -> Batch:
        speed, audio = {}, {}  # utterance -> speed factor, augmented samples
        if self.augment is not None:
            perturbed = []
            for cut in cuts:
                cut, audio[cut.id], speed[cut.id] = self.augment.load(cut, self.epoch)
                perturbed.append(cut)
            cuts = CutSet.from_cuts(perturbed)
        cuts = cuts.sort_by_duration(ascending=False)
        feats = []
        for cut in cuts:
            if cut.id in audio:
                x = self.fbank(audio.pop(cut.id))
            else:
                x = self.fbank(load_cut_audio(cut)) if self.fbank else cut.load_features()
            feats.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        padded = nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (N, T, F)
        targets = {u: _pad([self.units[u].ctc_targets(c.supervisions[0]) for c in cuts]) for u in self.seq_units}
        T_out = [self.frames_fn(int(t)) for t in feat_lens]
        frame_targets = {}
        for tap in self.taps:
            if not TAP_LOSSES[tap.kind].needs_frame_targets(tap):
                continue
            lab = torch.full((len(cuts), max(T_out)), IGNORE, dtype=torch.long)
            for i, (cut, t) in enumerate(zip(cuts, T_out, strict=True)):
                lab[i, :t] = torch.from_numpy(self.frame_labels(cut, tap.unit, t))
            frame_targets[tap.name] = lab
        soft_frames = {
            spec: self._soft_frames(cache, cuts, T_out, spec.unit, speed) for spec, cache in self.soft_frames.items()
        }
        soft_positions = {
            spec: self._soft_positions(cache, cuts, spec.unit, targets[spec.unit][0].shape[1])
            for spec, cache in self.soft_positions.items()
        }
        return Batch(
            [c.id for c in cuts],
            padded,
            feat_lens,
            targets,
            frame_targets,
            [c.supervisions[0].text for c in cuts],
            soft_frames,
            soft_positions,
        )

    def _soft_frames(self, cache, cuts, T_out: list[int], unit: str, speed: dict[str, float]):
        k, N, T = cache.k, len(cuts), max(T_out)
        values, indices = torch.zeros(N, T, k), torch.zeros(N, T, k, dtype=torch.long)
        mask = torch.zeros(N, T, dtype=torch.bool)
        offset = self.units[unit].offset  # unit id -> frame class id (subwords: 0 = outside a word)
        for i, (cut, t) in enumerate(zip(cuts, T_out, strict=True)):
            if not _aligned(cut):
                continue  # no soft labels for it: masked out
            v, ix, m = cache.frames(cut.id, self.frame_shift, t, time_scale=1.0 / speed.get(cut.id, 1.0))
            values[i, :t], indices[i, :t], mask[i, :t] = v, ix + offset * m[:, None], m
        return values, indices, mask

    def _soft_positions(self, cache, cuts, unit: str, U: int):
        k, N = cache.k, len(cuts)
        values, indices = torch.zeros(N, U, k), torch.zeros(N, U, k, dtype=torch.long)
        has = torch.tensor([_aligned(c) for c in cuts])
        for i, cut in enumerate(cuts):
            if not has[i]:
                continue
            v, ix = cache.positions(cut.id)
            if len(v) != len(self.units[unit].ctc_targets(cut.supervisions[0])):
                raise DataError(
                    f"utterance {cut.id}: the soft-label cache has {len(v)} positions but "
                    "the transcript has a different number of units; rebuild the cache"
                )
            values[i, : len(v)] = v
            indices[i, : len(v)] = ix
        return values, indices, has


def _aligned(cut) -> bool:
    return bool((cut.supervisions[0].alignment or {}).get("phone"))


def make_sampler(
    cuts: CutSet,
    max_duration: float,
    shuffle: bool,
    seed: int,
    num_buckets: int = 10,
    world_size: int = 1,
    rank: int = 0,
    drop_last: bool = False,
) -> DynamicBucketingSampler:
    """Length-bucketed batches of at most ``max_duration`` seconds per process."""
    # lhotse warns that eager CutSets gain nothing from dynamic bucketing; ours fit in
    # memory, and the dynamic sampler is the one that handles DDP ranks and resumption.
    warnings.filterwarnings("ignore", message="You are using DynamicBucketingSampler with an eagerly")
    num_buckets = max(1, min(num_buckets, len(cuts)))  # lhotse asserts buckets <= cuts
    return DynamicBucketingSampler(
        cuts,
        max_duration=max_duration,
        shuffle=shuffle,
        seed=seed,
        num_buckets=num_buckets,
        world_size=world_size,
        rank=rank,
        drop_last=drop_last,
    )


@dataclass
class WaveData:
    """Which waveforms a self-supervised task reads."""

    corpus: str = "data/small"
    split: str = "train"
    max_hours: float = 0.0  # 0: the whole split; else utterances drawn across its voices up to this many hours
    max_duration: float = 60.0  # seconds of audio per batch

    def __post_init__(self):
        if self.max_duration <= 0 or self.max_hours < 0:
            raise ValueError("data.max_duration must be > 0 and data.max_hours >= 0")


def subset_hours(cuts: CutSet, hours: float, seed: int = 0) -> CutSet:
    """Utterances drawn at random (seeded) up to ``hours``, in id order: every voice is
    heard, not only the first ones in the manifest's order, which are grouped by voice
    (the first hour of `small` held 4 of its 9 accents). 0: all."""
    if not hours:
        return cuts
    order = sorted(cuts, key=lambda c: c.id)
    random.Random(seed).shuffle(order)
    kept, total = [], 0.0
    for c in order:
        if total >= hours * 3600:
            break
        kept.append(c)
        total += c.duration
    return CutSet.from_cuts(sorted(kept, key=lambda c: c.id))


def load_wave_cuts(data: WaveData) -> CutSet:
    """The split's utterances, ``max_hours`` of them drawn across its voices (seed 0)."""
    return subset_hours(load_split(data.corpus, data.split), data.max_hours)


class SkipBatches(torch.utils.data.Sampler):
    """A batch sampler's batches after the first ``skip`` (to resume inside an epoch); the
    skipped ones are drawn but never loaded."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(self.sampler, self.skip, None)


class WaveDataset(torch.utils.data.Dataset):
    """A lhotse CutSet batch -> ids, (N, S) zero-padded waveforms, (N,) sample counts."""

    def __getitem__(self, cuts):
        wavs = [torch.from_numpy(load_cut_audio(c)) for c in cuts]
        lens = torch.tensor([w.shape[0] for w in wavs])
        return [c.id for c in cuts], nn.utils.rnn.pad_sequence(wavs, batch_first=True), lens
