"""Boundary calibration: remove an aligner's systematic offsets, learned from a few utterances
whose phone timings are known.

    speechdistill align calibrate data/small --hyp own --ref synth --utterances 20   # -> own+cal
    >>> cal = fit_calibration(hyp, ref)            # utterance -> {"phone": items}, each side
    >>> calibrate(hyp["utt1"], cal)                # the same phones, boundaries moved

An HMM aligner places a boundary where its models change best, which is not where a
human labeller (or a synthesiser) puts it: the own aligner's vowel onsets after a
fricative come about 20 ms late on every voice (docs/notes.md, #13). Such a bias is
consistent per kind of boundary, so it can be measured on a few utterances with known
timings (hand-checked, or another aligner's) and subtracted everywhere: the median signed
onset error of each (previous phone's class, phone's class) pair, falling back to the
phone's class alone, then to no shift, when fewer than ``min_count`` onsets were seen.
Phones are paired with their reference by edit distance, as ``align score`` pairs them.
Written by hand: post-alignment boundary correction (as in Stolcke et al.'s "Highly
accurate phonetic segmentation using boundary correction models") is not in a maintained
library; this is its simplest, per-class form.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import numpy as np
from lhotse.supervision import AlignmentItem

from speechdistill.align.score import edit_pairs
from speechdistill.align.store import MANIFEST, any_alignment, load_alignments, save_alignments
from speechdistill.data.layout import CorpusDir
from speechdistill.units.phones import SIL, VOWELS, strip_stress
from speechdistill.utils import DataError, atomic_write_text

# broad phone classes: where an aligner's boundary bias differs (ARPABET, without stress)
CLASSES = {
    **dict.fromkeys(VOWELS, "vowel"),
    **dict.fromkeys("P B T D K G".split(), "stop"),
    **dict.fromkeys("F V TH DH S Z SH ZH HH CH JH".split(), "fricative"),
    **dict.fromkeys("M N NG".split(), "nasal"),
    **dict.fromkeys("L R W Y".split(), "approximant"),
    SIL: "silence",
}
MIN_PHONE = 0.005  # seconds: no boundary moves so far that a phone is shorter than this


def phone_class(symbol: str) -> str:
    return CLASSES.get(strip_stress(symbol), "other")


@dataclass
class Calibration:
    """Offsets (seconds, hypothesis minus reference) to subtract from onsets, per
    ``"previous>phone"`` class pair and per phone class, with how many onsets each came from."""

    pairs: dict[str, float] = field(default_factory=dict)
    classes: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    utterances: list[str] = field(default_factory=list)
    min_count: int = 5

    def offset(self, previous: str, symbol: str) -> float:
        prev, cur = phone_class(previous), phone_class(symbol)
        return self.pairs.get(f"{prev}>{cur}", self.classes.get(cur, 0.0))


def fit_calibration(hyp: dict[str, dict], ref: dict[str, dict], min_count: int = 5) -> Calibration:
    """Median onset offsets of ``hyp`` against ``ref`` over the utterances both have."""
    utts = sorted(set(hyp) & set(ref))
    if not utts:
        raise DataError("calibration needs utterances that both alignments have; they share none")
    by_pair, by_class = defaultdict(list), defaultdict(list)
    for utt in utts:
        full = hyp[utt]["phone"]
        h = [(i, a) for i, a in enumerate(full) if a.symbol != SIL]
        r = [a for a in ref[utt]["phone"] if a.symbol != SIL]
        for i, j in edit_pairs([a.symbol for a in r], [a.symbol for _, a in h]):
            k, a = h[j]
            if k == 0:  # the utterance's first segment: its onset is the start of the audio
                continue
            err = a.start - r[i].start
            cur = phone_class(a.symbol)
            by_pair[f"{phone_class(full[k - 1].symbol)}>{cur}"].append(err)
            by_class[cur].append(err)
    cal = Calibration(utterances=utts, min_count=min_count)
    for table, errors in ((cal.pairs, by_pair), (cal.classes, by_class)):
        for key, errs in sorted(errors.items()):
            cal.counts[key] = len(errs)
            if len(errs) >= min_count:
                table[key] = round(float(np.median(errs)), 6)
    return cal


def calibrate(alignment: dict, cal: Calibration, min_phone: float = MIN_PHONE) -> dict:
    """The alignment with every phone onset moved by minus its offset; the first phone's
    start and the last one's end stay, no phone becomes shorter than ``min_phone`` (or than
    it was, if shorter), and words keep their phones' new boundaries."""
    phones = alignment["phone"]
    if len(phones) < 2:
        return alignment
    start, end = phones[0].start, phones[-1].start + phones[-1].duration
    old = np.array([a.start for a in phones[1:]])
    new = old - np.array([cal.offset(p.symbol, a.symbol) for p, a in pairwise(phones)])
    floor = min(min_phone, min(a.duration for a in phones))
    prev = start
    for i in range(len(new)):  # forward: each phone at least ``floor`` long
        new[i] = prev = max(new[i], prev + floor)
    nxt = end
    for i in range(len(new) - 1, -1, -1):  # backward: the same, against the fixed end
        new[i] = nxt = min(new[i], nxt - floor)
    bounds = np.concatenate([[start], new, [end]]).round(6)
    moved = dict(zip(np.concatenate([[start], old, [end]]).round(6).tolist(), bounds.tolist(), strict=True))
    out = dict(alignment)
    out["phone"] = [
        AlignmentItem(a.symbol, float(t0), round(float(t1 - t0), 6))
        for a, t0, t1 in zip(phones, bounds[:-1], bounds[1:], strict=True)
    ]
    if "word" in alignment:  # a word's edges are phone boundaries; an edge that is not one stays
        out["word"] = []
        for w in alignment["word"]:
            t0 = moved.get(round(w.start, 6), w.start)
            t1 = moved.get(round(w.start + w.duration, 6), w.start + w.duration)
            out["word"].append(AlignmentItem(w.symbol, t0, round(t1 - t0, 6)))
    return out


def calibrate_corpus(
    corpus,
    hyp: str,
    ref: str,
    utterances: int = 20,
    name: str | None = None,
    fit_split: str = "train",
    min_count: int = 5,
    seed: int = 0,
) -> dict:
    """Fit on ``utterances`` of ``fit_split`` drawn at random (seeded) from those both
    alignments have, then write every split of ``hyp`` calibrated as the alignment ``name``
    (``{hyp}+cal``), with ``calibration.json`` beside it. Failed utterances stay failed."""
    corpus, name = CorpusDir(corpus), name or f"{hyp}+cal"
    if name in MANIFEST or name == hyp:
        raise DataError(f"--name {name!r} would overwrite an alignment; choose a new name")
    splits = [s for s in corpus.splits() if corpus.alignment(hyp, s).exists()]
    if fit_split not in splits:
        raise DataError(f"{corpus} has no alignment {hyp!r} of {fit_split}: make it with `speechdistill align run`")
    done = [s for s in splits if corpus.alignment(name, s).exists()]
    if done:
        raise DataError(f"{corpus.alignment(name, done[0])} exists; calibrate under another --name or remove it")
    (h, _), (r, _) = any_alignment(corpus, hyp, fit_split), any_alignment(corpus, ref, fit_split)
    shared = sorted(set(h) & set(r))
    if len(shared) < utterances:
        raise DataError(
            f"--utterances {utterances}: only {len(shared)} {fit_split} utterances have both {hyp!r} and {ref!r}"
        )
    chosen = sorted(random.Random(seed).sample(shared, utterances))
    cal = fit_calibration({u: h[u] for u in chosen}, {u: r[u] for u in chosen}, min_count)
    report = {}
    for split in splits:
        aligned, failed = load_alignments(corpus, hyp, split)
        save_alignments(corpus, name, split, {u: calibrate(a, cal) for u, a in aligned.items()}, failed)
        report[split] = {"aligned": len(aligned), "failed": len(failed)}
    about = {"hyp": hyp, "ref": ref, "fit_split": fit_split, "seed": seed} | asdict(cal)
    atomic_write_text(corpus.root / "alignments" / name / "calibration.json", json.dumps(about, indent=1) + "\n")
    return report
