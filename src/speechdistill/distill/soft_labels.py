"""Soft labels from the unit LMs, computed once and cached on disk.

    speechdistill teach data/small --unit phone --top-k 8 --temperature 3
    >>> spec = SoftLabelSpec("phone", top_k=8, temperature=3.0)
    >>> build_cache("data/small", spec)
    >>> cache = SoftLabelCache.open_for("data/small", spec)
    >>> values, indices, mask = cache.frames(utt_id, frame_shift=0.04, num_frames=T)

For each training utterance the *reference* unit sequence is read off its
alignment (``UnitType.positions``: subword pieces from the word spans, shared by
letters; phones without SIL; senones: each phone's tied states, the phone's span cut
into equal parts), the LM gives its distribution at every position
(``UnitLM.position_logits``), softened with temperature T, truncated to the
top k and renormalised. Stored per position: fp16 values (P, k), int32 unit
ids (P, k) and the position's time span (P, 2) in seconds, so the labels
can be spread over frames at any frame rate. A frame takes the label of the
position whose span contains its centre; frames in no span (pauses) have
none.

The cache's JSON holds a fingerprint of (LM weights, unit inventory, unit,
k, T); opening it with an LM or inventory that does not match is an error.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from speechdistill.align.store import alignment_digest, with_alignment
from speechdistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from speechdistill.data.corpus import load_split
from speechdistill.data.layout import CorpusDir, SoftLabelSpec
from speechdistill.progress import progress
from speechdistill.teachers.lm import top_k_soft_labels
from speechdistill.teachers.lm_train import load_lm_teacher
from speechdistill.units.inventory import Units
from speechdistill.utils import DataError


class StaleCacheError(DataError):
    """A soft-label cache that does not match the LM or unit inventory in use."""


def fingerprint(
    lm_prefix: str | Path, units_dir: str | Path, unit: str, k: int, temperature: float, data: str = ""
) -> str:
    """What a cache depends on: the LM's weights, the unit inventory, (unit, k, T) and
    ``data``, a digest of the transcripts and alignment it was read off (``alignment_digest``)."""
    h = hashlib.sha256()
    lm_prefix = Path(lm_prefix)
    if lm_prefix.is_dir():  # a Hugging Face model directory: every file in it
        for f in sorted(p for p in lm_prefix.rglob("*") if p.is_file()):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    else:
        h.update(Path(f"{lm_prefix}.safetensors").read_bytes())
    h.update(Units(units_dir).digest().encode())
    h.update(f"{unit}|{k}|{temperature:g}|{data}".encode())
    return h.hexdigest()


def reference_positions(cut, unit: str, units: Units) -> tuple[list[int], list[tuple[float, float]]]:
    """Unit ids of an utterance's reference sequence and each position's (start, duration)."""
    ali = cut.supervisions[0].alignment or {}
    if "phone" not in ali:
        raise DataError(f"utterance {cut.id} has no phone alignment; soft labels need one")
    return units[unit].positions(ali)


def spread_to_frames(spans: np.ndarray, frame_shift: float, num_frames: int) -> np.ndarray:
    """(P, 2) spans -> (T,) position index of each frame (by its centre), -1 for none; where
    spans overlap, the last position that covers the centre."""
    centres = (np.arange(num_frames) + 0.5) * frame_shift
    starts, ends = spans[:, 0], spans[:, 0] + spans[:, 1]
    some = np.flatnonzero(ends > starts)  # a span of no length covers no centre
    if np.all(np.diff(starts[some]) >= 0) and np.all(np.diff(ends[some]) >= 0):
        # the usual case, spans in time order: the last span starting at or before a centre is
        # the last that can cover it (a binary search per frame, not a pass over the frames
        # per position: 5-9x faster for senones' ~120 positions an utterance)
        last = np.searchsorted(starts[some], centres, side="right") - 1
        covered = (last >= 0) & (centres < ends[some][last.clip(min=0)])
        return np.where(covered, some[last.clip(min=0)], -1).astype(np.int64)
    owner = np.full(num_frames, -1, dtype=np.int64)
    for p, (start, end) in enumerate(zip(starts, ends, strict=True)):
        owner[(centres >= start) & (centres < end)] = p
    return owner


@torch.no_grad()
def build_cache(
    corpus: str | Path | CorpusDir,
    spec: SoftLabelSpec,
    lm_prefix: str | Path | None = None,
    split: str = "train",
    show_progress: bool = True,
    values_dtype: torch.dtype = torch.float16,
    prefix: str | Path | None = None,
) -> dict:
    """Compute and write the cache of ``spec`` (``CorpusDir.soft_labels``, or ``prefix``);
    returns its metadata, with its size and the seconds spent writing it."""
    corpus = CorpusDir(corpus)
    unit, k, temperature = spec.unit, spec.top_k, spec.temperature
    own_lm = lm_prefix is None  # the corpus's own LM: found again wherever the corpus moves
    lm_prefix = Path(lm_prefix or corpus.lm(unit))
    units = Units(corpus.units)
    if k > units.vocab_size(unit):
        raise DataError(
            f"top_k {k} is more than the {units.vocab_size(unit)} {unit} units there are; "
            f"choose at most {units.vocab_size(unit)} (8 is the usual)"
        )
    lm, lm_meta = load_lm_teacher(lm_prefix, unit, units)
    if lm_meta["unit"] != unit:
        raise DataError(f"{lm_prefix} is a {lm_meta['unit']} LM, not a {unit} LM")
    tensors: dict[str, torch.Tensor] = {}
    cuts = with_alignment(load_split(corpus, split), corpus, spec.alignment, split)
    positions, unaligned = 0, []
    for cut in progress(cuts, total=len(cuts), desc=f"{unit} soft labels", enable=show_progress):
        if spec.alignment and not cut.supervisions[0].alignment:
            unaligned.append(cut.id)  # the aligner failed on it: no soft labels, its tap losses are skipped
            continue
        ids, spans = reference_positions(cut, unit, units)
        if not ids:
            continue
        logits = lm.position_logits(torch.tensor([ids]))[0]  # (P, V)
        values, indices = top_k_soft_labels(logits, k, temperature)
        tensors[f"{cut.id}/values"] = values.to(values_dtype)
        tensors[f"{cut.id}/indices"] = indices.int()
        tensors[f"{cut.id}/spans"] = torch.tensor(spans, dtype=torch.float32)
        positions += len(ids)
    hours = sum(c.duration for c in cuts) / 3600
    prefix = Path(prefix or corpus.soft_labels(spec))
    meta = {
        "kind": "soft-labels",
        "unit": unit,
        "top_k": k,
        "temperature": temperature,
        "lm": "corpus" if own_lm else str(lm_prefix),
        "lm_dev_perplexity": lm_meta.get("dev_perplexity"),
        "split": split,
        "alignment": spec.alignment,
        "utterances": len(tensors) // 3,
        "unaligned_utterances": unaligned,
        "positions": positions,
        "fingerprint": fingerprint(
            lm_prefix, corpus.units, unit, k, temperature, alignment_digest(corpus, spec.alignment, split)
        ),
    }
    start = time.perf_counter()
    path = save_checkpoint(prefix, tensors, meta)
    write_seconds = time.perf_counter() - start
    size = path.stat().st_size
    return meta | {
        "bytes": size,
        "bytes_per_hour_of_audio": round(size / hours) if hours else None,
        "write_seconds": write_seconds,
        "hours": hours,
    }


class SoftLabelCache:
    """A loaded cache. ``frames`` spreads one utterance's labels over frames."""

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict):
        self.tensors, self.meta = tensors, meta
        self.k = meta["top_k"]

    @classmethod
    def open(cls, prefix: str | Path, corpus: str | Path | CorpusDir) -> SoftLabelCache:
        """The cache at ``prefix``, checked against what it was made from: its LM, the corpus's
        unit inventory, transcripts and alignment."""
        try:
            tensors, meta = load_checkpoint(prefix)
        except CheckpointError as e:
            raise StaleCacheError(f"soft-label cache {prefix} cannot be used: {e}") from None
        corpus = CorpusDir(corpus)
        lm, units_dir = corpus.lm(meta["unit"]) if meta["lm"] == "corpus" else meta["lm"], corpus.units
        want = fingerprint(
            lm,
            units_dir,
            meta["unit"],
            meta["top_k"],
            meta["temperature"],
            alignment_digest(corpus, meta.get("alignment", ""), meta["split"]),
        )
        if meta.get("fingerprint") != want:
            raise StaleCacheError(
                f"soft-label cache {prefix} is stale: it was built from another LM, unit inventory, "
                f"transcripts or alignment than {lm}, {units_dir} and {corpus}; rebuild it with `speechdistill teach`"
            )
        return cls(tensors, meta)

    @classmethod
    def open_for(cls, corpus: str | Path | CorpusDir, spec: SoftLabelSpec) -> SoftLabelCache:
        """The cache of ``spec`` in ``corpus``, checked against the corpus's LM and units."""
        corpus = CorpusDir(corpus)
        prefix = corpus.soft_labels(spec)
        if not prefix.with_suffix(".json").exists():
            raise FileNotFoundError(
                f"soft-label cache {prefix} is missing: run `speechdistill teach {corpus} "
                f"--unit {spec.unit} --top-k {spec.top_k} --temperature {spec.temperature:g}`"
            )
        return cls.open(prefix, corpus)

    def __contains__(self, utt: str) -> bool:
        return f"{utt}/values" in self.tensors

    def positions(self, utt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (P, k) float32 probabilities, (P, k) int64 unit ids, one row per position."""
        if utt not in self:
            raise StaleCacheError(
                f"utterance {utt} is not in soft-label cache {self.meta['unit']}; rebuild it with `speechdistill teach`"
            )
        return self.tensors[f"{utt}/values"].float(), self.tensors[f"{utt}/indices"].long()

    def frames(self, utt: str, frame_shift: float, num_frames: int, time_scale: float = 1.0):
        """-> (T, k) float32 probabilities, (T, k) int64 unit ids, (T,) bool mask. ``time_scale``
        stretches the stored spans (1 / the speed factor of a speed-perturbed utterance)."""
        values, indices = self.positions(utt)
        spans = self.tensors[f"{utt}/spans"].numpy() * time_scale
        owner = torch.from_numpy(spread_to_frames(spans, frame_shift, num_frames))
        mask = owner >= 0
        idx = owner.clamp(min=0)
        return values[idx] * mask[:, None], indices[idx] * mask[:, None], mask
