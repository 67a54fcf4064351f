"""Alignments made elsewhere: Kaldi phone CTM and Montreal Forced Aligner TextGrids, in and out.

    speechdistill align import-ctm data/mine exp/tri3_ali/phones.ctm --name kaldi --split train
    speechdistill align import-textgrid data/mine mfa_output/ --name mfa --split train

Phone symbols are mapped onto ARPAbet-39 (stress digits and Kaldi's word-position
suffixes ``_B _E _I _S`` dropped; ``sil``, ``sp``, ``spn``, empty labels -> SIL) and the
segments tiled over the utterance, gaps as silence. Word spans come from the TextGrid's
word tier when its words are the transcript's, else from the phones (``align_words``:
the lexicon's pronunciation matched to the aligned phones). A file that names an
utterance the corpus does not have is an error; an utterance whose segments do not fit
its audio, or whose phones are unknown, is a listed failure.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from lhotse.supervision import AlignmentItem
from praatio import textgrid

from speechdistill.data.alignment import _tile, align_words
from speechdistill.units.lexicon import Lexicon
from speechdistill.units.phones import ARPABET, SIL, strip_stress
from speechdistill.utils import DataError, atomic_write_text

SILENCES = {"", "SIL", "SP", "SPN", "<SIL>", "NSN"}
TOLERANCE = 0.05  # seconds a segment may run past the audio (frame rounding) before it is a failure


def normalize_phone(symbol: str) -> str:
    """Another aligner's phone label -> ARPAbet-39 or SIL; an unknown one is kept as it is."""
    s = re.sub(r"_[BEIS]$", "", symbol.strip().upper())
    s = strip_stress(s)
    return SIL if s in SILENCES else s


def phones_to_alignment(
    utt: str,
    segs: list[tuple[str, float, float]],
    text: str,
    duration: float,
    lexicon: Lexicon,
    word_segs: list[tuple[str, float, float]] | None = None,
) -> dict:
    """(label, start, end) phone segments -> {"phone": tiled ARPAbet items, "word": spans}."""
    segs = sorted(((normalize_phone(p), a, b) for p, a, b in segs), key=lambda s: s[1])
    unknown = sorted({p for p, _, _ in segs if p != SIL and p not in ARPABET})
    if unknown:
        raise DataError(f"utterance {utt}: phones {unknown} are not ARPAbet; map them first")
    if segs and segs[-1][2] > duration + TOLERANCE:
        raise DataError(
            f"utterance {utt}: the alignment ends at {segs[-1][2]:.2f} s, past the audio ({duration:.2f} s)"
        )
    labels, bounds, end = [], [], 0.0
    for p, a, b in segs:
        if a > end + 1e-6:  # a gap is silence
            labels.append(SIL)
            bounds.append(end)
        labels.append(p)
        bounds.append(a)
        end = max(end, b)
    if end < duration - 1e-6:
        labels.append(SIL)
        bounds.append(end)
    phones = _tile(labels, bounds, duration)
    words = text.split()
    if word_segs and [w.upper() for w, _, _ in word_segs] == words:
        spans = [AlignmentItem(w, round(a, 6), round(b - a, 6)) for w, (_, a, b) in zip(words, word_segs, strict=True)]
    else:
        spans = align_words(words, [lexicon.pronounce(w) for w in words], phones)
    return {"phone": phones, "word": spans}


def read_ctm(path: str | Path) -> dict[str, list[tuple[str, float, float]]]:
    """Kaldi CTM lines ``utt channel start duration phone [confidence]`` -> utterance -> (phone, start, end)."""
    out: dict[str, list] = defaultdict(list)
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 5:
            raise DataError(f"{path}:{n}: a CTM line is `utterance channel start duration phone`, got {line!r}")
        start, dur = float(f[2]), float(f[3])
        out[f[0]].append((f[4], start, round(start + dur, 6)))
    return dict(out)


def write_ctm(alignments: dict[str, dict], path: str | Path) -> None:
    """Phones (silences too) as CTM lines, times in seconds with three decimals."""
    atomic_write_text(
        path,
        "".join(
            f"{u} 1 {a.start:.3f} {a.duration:.3f} {a.symbol}\n"
            for u, ali in sorted(alignments.items())
            for a in ali["phone"]
        ),
    )


def read_textgrid(path: str | Path) -> tuple[list[tuple[str, float, float]], list[tuple[str, float, float]]]:
    """An MFA TextGrid -> its phone tier and its word tier as (label, start, end)."""
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    tiers = {name.lower(): tg.getTier(name) for name in tg.tierNames}
    if "phones" not in tiers:
        raise DataError(f"{path} has no `phones` tier (tiers: {', '.join(tg.tierNames)})")
    words = tiers.get("words")
    return (
        [(e.label, e.start, e.end) for e in tiers["phones"].entries],
        [(e.label, e.start, e.end) for e in words.entries] if words else [],
    )


def write_textgrid(alignment: dict, duration: float, path: str | Path) -> None:
    """``words`` and ``phones`` tiers, as MFA writes them (silences left empty)."""
    tg = textgrid.Textgrid()
    for name in ("words", "phones"):
        items = alignment["word" if name == "words" else "phone"]
        entries = [(a.start, a.start + a.duration, a.symbol) for a in items if a.symbol != SIL and a.duration > 0]
        tg.addTier(textgrid.IntervalTier(name, entries, 0.0, duration))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)
