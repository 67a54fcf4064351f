"""Batches for acoustic-model training: padded features, CTC targets, and the
frame-level targets of every tap at the encoder's frame rate.

    >>> ds = AsrDataset(units, main_unit="subword", taps=cfg.model.taps, frames_fn=enc_frames,
    ...                 frame_shift=0.04)
    >>> sampler = make_sampler(cuts, max_duration=200, shuffle=True, seed=0)
    >>> batch = ds(next(iter(sampler)))        # a Batch

Legend: N batch, T frames, F features, U target units. Frame-level targets use
-100 where there is no label (padding), so cross-entropy ignores them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler

from speechdistill.data.audio import load_cut_audio
from speechdistill.data.features import FbankExtractor
from speechdistill.units.phones import SIL
from speechdistill.units.subword import subword_alignment

IGNORE = -100


@dataclass
class Batch:
    ids: list[str]
    feats: torch.Tensor  # (N, T, F)
    feat_lens: torch.Tensor  # (N,)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # unit -> (N, U) padded ids, (N,) lengths
    frame_targets: dict[str, torch.Tensor]  # tap name -> (N, T') class ids, IGNORE on padding
    texts: list[str]
    # soft labels: KD tap name -> ((N, T', k) probs, (N, T', k) class ids, (N, T') mask);
    # "main" (label interpolation) -> ((N, U, k) probs, (N, U, k) unit ids) per target position
    soft: dict[str, tuple] = field(default_factory=dict)

    def to(self, device) -> Batch:
        return Batch(self.ids, self.feats.to(device), self.feat_lens.to(device),
                     {k: (a.to(device), b.to(device)) for k, (a, b) in self.targets.items()},
                     {k: v.to(device) for k, v in self.frame_targets.items()}, self.texts,
                     {k: tuple(x.to(device) for x in v) for k, v in self.soft.items()})  # fmt: skip


def _pad(seqs: list[list[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lens.max()) if len(seqs) else 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lens


def ctc_sequence(cut, unit: str, units) -> list[int]:
    """CTC target ids (blank = 0 excluded): subword ids + 1; phone ids (SIL = 0 is
    the blank), from the alignment when there is one (what was said), else the lexicon."""
    sup = cut.supervisions[0]
    if unit == "subword":
        return [i + 1 for i in units.sp.encode(sup.text)]
    ali = (sup.alignment or {}).get("phone")
    phones = [a.symbol for a in ali if a.symbol != SIL] if ali else units.phones(sup.text)
    return [units.phone_index[p] for p in phones]


class AsrDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one batch from a lhotse sampler) to a ``Batch``."""

    def __init__(self, units, main_unit: str, taps=(), frames_fn: Callable[[int], int] = lambda t: t,
                 frame_shift: float = 0.04, on_the_fly: bool = False, caches=None):  # fmt: skip
        self.units = units
        self.main_unit = main_unit
        self.taps = list(taps)
        self.frames_fn = frames_fn
        self.frame_shift = frame_shift
        self.fbank = FbankExtractor() if on_the_fly else None
        self.seq_units = {main_unit} | {t.unit for t in self.taps if t.kind == "ctc"}
        self.caches = caches or {}

    def sequence(self, cut, unit: str) -> list[int]:
        return ctc_sequence(cut, unit, self.units)

    def frame_labels(self, cut, unit: str, T: int) -> np.ndarray:
        sup = cut.supervisions[0]
        ali = sup.alignment or {}
        if "phone" not in ali:
            raise ValueError(f"utterance {cut.id} has no phone alignment; frame-level {unit} taps "
                             "need alignments (the built-in corpus has them)")  # fmt: skip
        phones = ali["phone"]
        if unit == "senone":
            return self.units.tree.frame_labels(phones, self.frame_shift, T)
        if unit == "phone":
            spans = [(a.start, a.duration, self.units.phone_index[a.symbol]) for a in phones]
        else:
            pieces = subword_alignment(ali["word"], self.units.sp)
            spans = [(a.start, a.duration, self.units.sp.piece_to_id(a.symbol) + 1) for a in pieces]
        labels = np.zeros(T, np.int64)  # 0: SIL for phones, "outside a word" for subwords
        centres = (np.arange(T) + 0.5) * self.frame_shift
        for start, dur, label in spans:
            labels[(centres >= start) & (centres < start + dur)] = label
        return labels

    def __getitem__(self, cuts: CutSet) -> Batch:
        cuts = cuts.sort_by_duration(ascending=False)
        feats = []
        for cut in cuts:
            x = self.fbank(load_cut_audio(cut)) if self.fbank else cut.load_features()
            feats.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (N, T, F)
        targets = {u: _pad([self.sequence(c, u) for c in cuts]) for u in self.seq_units}
        T_out = [self.frames_fn(int(t)) for t in feat_lens]
        frame_targets = {}
        for tap in self.taps:
            if tap.kind != "frame":
                continue
            lab = torch.full((len(cuts), max(T_out)), IGNORE, dtype=torch.long)
            for i, (cut, t) in enumerate(zip(cuts, T_out, strict=True)):
                lab[i, :t] = torch.from_numpy(self.frame_labels(cut, tap.unit, t))
            frame_targets[tap.name] = lab
        soft = {}
        for tap in self.taps:
            if tap.name in self.caches:
                soft[tap.name] = self._soft_frames(self.caches[tap.name], cuts, T_out, tap.unit)
        if "main" in self.caches:
            soft["main"] = self._soft_positions(self.caches["main"], cuts, targets[self.main_unit][0].shape[1])
        return Batch([c.id for c in cuts], padded, feat_lens, targets, frame_targets,
                     [c.supervisions[0].text for c in cuts], soft)  # fmt: skip

    def _soft_frames(self, cache, cuts, T_out: list[int], unit: str):
        k, N, T = cache.k, len(cuts), max(T_out)
        values, indices = torch.zeros(N, T, k), torch.zeros(N, T, k, dtype=torch.long)
        mask = torch.zeros(N, T, dtype=torch.bool)
        offset = 1 if unit == "subword" else 0  # frame subword classes: 0 = outside a word
        for i, (cut, t) in enumerate(zip(cuts, T_out, strict=True)):
            v, ix, m = cache.frames(cut.id, self.frame_shift, t)
            values[i, :t], indices[i, :t], mask[i, :t] = v, ix + offset * m[:, None], m
        return values, indices, mask

    def _soft_positions(self, cache, cuts, U: int):
        k, N = cache.k, len(cuts)
        values, indices = torch.zeros(N, U, k), torch.zeros(N, U, k, dtype=torch.long)
        for i, cut in enumerate(cuts):
            v, ix = cache.positions(cut.id)
            if len(v) != len(self.sequence(cut, self.main_unit)):
                raise ValueError(f"utterance {cut.id}: the soft-label cache has {len(v)} positions but "
                                 "the transcript has a different number of units; rebuild the cache")  # fmt: skip
            values[i, : len(v)] = v
            indices[i, : len(v)] = ix
        return values, indices


def make_sampler(cuts: CutSet, max_duration: float, shuffle: bool, seed: int, num_buckets: int = 10,
                 world_size: int = 1, rank: int = 0, drop_last: bool = False) -> DynamicBucketingSampler:  # fmt: skip
    """Length-bucketed batches of at most ``max_duration`` seconds per process."""
    # lhotse warns that eager CutSets gain nothing from dynamic bucketing; ours fit in
    # memory, and the dynamic sampler is the one that handles DDP ranks and resumption.
    warnings.filterwarnings("ignore", message="You are using DynamicBucketingSampler with an eagerly")
    num_buckets = max(1, min(num_buckets, len(cuts)))  # lhotse asserts buckets <= cuts
    return DynamicBucketingSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                   num_buckets=num_buckets, world_size=world_size, rank=rank,
                                   drop_last=drop_last)  # fmt: skip
