"""Phone and word alignments: from synthesiser timings to ARPAbet segments that
tile the whole utterance, and word spans by aligning the lexicon's
pronunciation to the phones actually spoken.

An alignment is a list of ``(symbol, start, duration)`` in seconds (lhotse's
``AlignmentItem``). Phone alignments tile ``[0, duration]`` exactly: the first
segment starts at 0, each starts where the previous ended, the last ends at
the end of the audio.
"""

from __future__ import annotations

from collections.abc import Sequence

from lhotse.supervision import AlignmentItem

from speechdistill.units.phones import MERGE, SIL, map_espeak, map_flite


def _tile(labels: Sequence[str], bounds: Sequence[float], total: float) -> list[AlignmentItem]:
    """Segments ``labels[i]`` over ``[bounds[i], bounds[i+1])``; merges MERGE into the
    phone before it, joins adjacent SILs and drops empty segments."""
    segs: list[list] = []  # [label, start, end]
    ends = list(bounds[1:]) + [total]
    for label, start, end in zip(labels, bounds, ends, strict=True):
        start, end = min(max(start, 0.0), total), min(max(end, 0.0), total)
        if end <= start:
            continue
        if segs and (label == MERGE or (label == SIL and segs[-1][0] == SIL)):
            segs[-1][2] = end
        elif label == MERGE:  # a transition at the very start belongs to silence
            segs.append([SIL, start, end])
        else:
            segs.append([label, start, end])
    if not segs:
        return [AlignmentItem(SIL, 0.0, round(total, 6))]
    segs[0][1] = 0.0
    segs[-1][2] = total
    for prev, nxt in zip(segs, segs[1:], strict=False):
        nxt[1] = prev[2]
    return [AlignmentItem(lab, round(s, 6), round(e - s, 6)) for lab, s, e in segs]


def phones_from_espeak(events: Sequence[tuple[str, int]], sample_rate: int, num_samples: int):
    """eSpeak phoneme events (mnemonic, start sample) -> tiled ARPAbet alignment."""
    labels = [map_espeak(name) for name, _ in events]
    starts = [sample / sample_rate for _, sample in events]
    if not starts or starts[0] > 0:
        labels, starts = [SIL] + labels, [0.0] + starts
    return _tile(labels, starts, num_samples / sample_rate)


def phones_from_flite(phones: Sequence[tuple[str, float]], sample_rate: int, num_samples: int):
    """Flite ``-psdur`` output (phone, end time) -> tiled ARPAbet alignment."""
    labels = [map_flite(name) for name, _ in phones]
    starts = [0.0] + [end for _, end in phones[:-1]]
    return _tile(labels, starts, num_samples / sample_rate)


def align_words(
    words: Sequence[str], pronunciations: Sequence[Sequence[str]], phones: Sequence[AlignmentItem]
) -> list[AlignmentItem]:
    """Word time spans from a phone alignment.

    The lexicon's phones (word by word) are aligned to the spoken phones by
    minimum edit distance; each spoken phone belongs to the word of the
    lexicon phone it is matched or substituted with (an inserted phone to the
    word before it). A word whose phones were all deleted gets a zero-length
    span where it would have been. Silences belong to no word.
    """
    spoken = [a for a in phones if a.symbol != SIL]
    ref = [(w, p) for w, pron in enumerate(pronunciations) for p in pron]
    n, m = len(ref), len(spoken)
    # Levenshtein table; costs: match 0, substitution/insertion/deletion 1.
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = i
    for j in range(1, m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = cost[i - 1][j - 1] + (ref[i - 1][1] != spoken[j - 1].symbol)
            cost[i][j] = min(sub, cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    owner = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1][1] != spoken[j - 1].symbol):
            owner[j - 1] = ref[i - 1][0]
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    for k in range(m):  # insertions: the word before, or the first word
        if owner[k] < 0:
            owner[k] = owner[k - 1] if k > 0 else 0
    spans: list[AlignmentItem] = []
    cursor = phones[0].start if phones else 0.0
    for w, word in enumerate(words):
        mine = [spoken[k] for k in range(m) if owner[k] == w]
        if mine:
            start, end = mine[0].start, mine[-1].start + mine[-1].duration
        else:
            start = end = cursor
        spans.append(AlignmentItem(word, round(start, 6), round(end - start, 6)))
        cursor = end
    return spans
