"""Forced alignment of a transcript's phones to frames: the HMM graph and its Viterbi path.

    >>> graph = AlignmentGraph.build([["DH", "AH"], ["K", "AE", "T"]], states_per_phone=3)
    >>> path = viterbi(graph, scores)          # scores: (T, classes) log-likelihoods
    >>> phones, words = segments(graph, path, frame_shift=0.01, duration=1.23)

The graph is a left-to-right chain: every phone of every word is ``states_per_phone``
states in a row, each with a self-loop; a silence (SIL's states) may stand before the
first word, between any two words and after the last, and may be skipped. State class
ids: phone ``p`` (its index in the phone list, SIL = 0) state ``k`` is class
``p * states_per_phone + k``. Written by hand (NumPy, one vector step per frame, as
``losses.ctc_viterbi``) because torchaudio's ``forced_align`` cannot be installed beside
torch 2.13 and its CTC topology has no optional silence and no minimum duration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lhotse.supervision import AlignmentItem

from speechdistill.units.phones import SIL
from speechdistill.utils import DataError


class AlignmentError(DataError):
    """An utterance that cannot be aligned; the message says why."""


@dataclass
class AlignmentGraph:
    classes: np.ndarray  # (S,) class id of each state
    skip: np.ndarray  # (S,) a state it may also be entered from, past an optional silence (-1: none)
    phone: np.ndarray  # (S,) index of the phone occurrence the state belongs to
    symbols: list[str]  # per phone occurrence: its phone (SIL for silences)
    word: list[int]  # per phone occurrence: its word (-1 for silences)
    starts: list[int]  # states a path may start in
    ends: list[int]  # states a path may end in
    min_frames: int  # frames of the shortest path (no silence)

    def word_states(self) -> np.ndarray:
        """Indices of the words' states (every state but the optional silences')."""
        return np.flatnonzero(np.array(self.word)[self.phone] >= 0)

    @classmethod
    def build(cls, words: list[list[str]], states_per_phone: int, phone_index: dict[str, int]) -> AlignmentGraph:
        """``words``: each word's phones (no SIL); ``phone_index``: phone -> index (SIL = 0)."""
        if not words or not all(words):
            raise AlignmentError("the transcript has no words, or a word without phones")
        S = states_per_phone
        classes, skip, phone, symbols, word = [], [], [], [], []

        def add(sym: str, w: int, skip_from: int = -1) -> None:
            if sym not in phone_index:
                raise AlignmentError(f"phone {sym!r} is not in the aligner's phone set")
            for k in range(S):
                classes.append(phone_index[sym] * S + k)
                skip.append(skip_from if k == 0 else -1)
                phone.append(len(symbols))
            symbols.append(sym)
            word.append(w)

        last_word_end = -1
        for w, phones in enumerate(words):
            add(SIL, -1)  # an optional silence before each word ...
            for i, p in enumerate(phones):  # ... skipped by entering the word from the one before
                add(p, w, last_word_end if i == 0 else -1)
            last_word_end = len(classes) - 1
        add(SIL, -1)  # and after the last
        ends = [last_word_end, len(classes) - 1]
        return cls(
            np.array(classes), np.array(skip), np.array(phone), symbols, word, [0, S], ends, sum(map(len, words)) * S
        )


def viterbi(graph: AlignmentGraph, scores: np.ndarray) -> np.ndarray:
    """(T, classes) frame log-likelihoods -> (T,) the state of each frame on the best path."""
    T, S = scores.shape[0], len(graph.classes)
    if T < graph.min_frames:
        raise AlignmentError(
            f"{T} frames are too few for the transcript's {graph.min_frames} states: "
            "the transcript is too long for the audio"
        )
    emit = scores[:, graph.classes]  # (T, S)
    neg = -np.inf
    score = np.full(S, neg)
    score[graph.starts] = emit[0, graph.starts]
    back = np.zeros((T, S), dtype=np.int8)  # 0: stayed, 1: from the state before, 2: past a silence
    skips = np.flatnonzero(graph.skip >= 0)
    skip_from = graph.skip[skips]
    prev = np.full(S, neg)
    for t in range(1, T):  # ties go to the earlier candidate (stay, then the state before, then skip)
        prev[1:] = score[:-1]
        arg = (prev > score).view(np.int8)
        best = np.maximum(score, prev)
        from_skip = score[skip_from]
        take = from_skip > best[skips]
        won = skips[take]
        arg[won] = 2
        best[won] = from_skip[take]
        back[t] = arg
        score = best + emit[t]
    end = max(graph.ends, key=lambda s: score[s])
    if not np.isfinite(score[end]):
        raise AlignmentError("no path through the transcript's states reaches the end of the audio")
    path = np.empty(T, dtype=np.int64)
    s = end
    for t in range(T - 1, -1, -1):
        path[t] = s
        a = back[t, s]
        s = s if a == 0 else (s - 1 if a == 1 else graph.skip[s])
    return path


def segments(
    graph: AlignmentGraph, path: np.ndarray, frame_shift: float, duration: float, words: list[str]
) -> tuple[list[AlignmentItem], list[AlignmentItem]]:
    """The path as phone segments that tile ``[0, duration]`` (silences as SIL) and the
    words' spans (first phone's start to last phone's end)."""
    occ = graph.phone[path]  # (T,) phone occurrence per frame
    bounds = np.flatnonzero(np.diff(occ)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(occ)]])
    phones, spans = [], {}
    for a, b in zip(starts, ends, strict=True):
        o = int(occ[a])
        t0, t1 = a * frame_shift, (duration if b == len(occ) else b * frame_shift)
        sym = graph.symbols[o]
        if phones and sym == SIL and phones[-1][0] == SIL:
            phones[-1][2] = t1
            continue
        phones.append([sym, t0, t1])
        w = graph.word[o]
        if w >= 0:
            spans[w] = (spans.get(w, (t0, t1))[0], t1)
    items = [AlignmentItem(s, round(t0, 6), round(t1 - t0, 6)) for s, t0, t1 in phones]
    word_items = [
        AlignmentItem(w, round(spans[i][0], 6), round(spans[i][1] - spans[i][0], 6)) for i, w in enumerate(words)
    ]
    return items, word_items
