"""Senones: phones split into HMM-like states, context-dependent (triphone)
states tied by a phonetic decision tree, as in Kaldi's ``build-tree``.

    >>> tree = SenoneTree.build(stats, num_senones=500)         # stats from train frames
    >>> tree.senone("AH", state=1, left="DH", right="SIL")      # -> int id
    >>> tree.sequence(["DH", "AH"])                             # [s, s, s, s, s, s]
    >>> tree.frame_labels(alignment, frame_shift=0.04, num_frames=T)

States: a phone segment is cut into ``states_per_phone`` equal parts by time,
so state k covers ``[start + k d / S, start + (k+1) d / S)``. A frame belongs to
the phone and state containing its centre.

Tying: one tree per (centre phone, state). Every question asks whether the
left or right neighbour is in a phone class (broad classes plus every single
phone). Leaves are split greedily, best gain first across all trees, where the
gain is the increase in log-likelihood of the leaf's acoustic frames under one
diagonal Gaussian per leaf (Kaldi's criterion), until the inventory reaches
``num_senones`` or no split leaves both sides ``min_count`` frames. Ties are
broken by question order, so the tree is deterministic. Written by hand: no
maintained Python library builds Kaldi-style state-tying trees.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from speechdistill.units.phones import ARPABET, SIL, VOWELS

PHONE_CLASSES: dict[str, frozenset[str]] = {
    "sil": frozenset({SIL}),
    "vowel": VOWELS,
    "stop": frozenset({"P", "B", "T", "D", "K", "G"}),
    "fricative": frozenset({"F", "V", "TH", "DH", "S", "Z", "SH", "ZH", "HH"}),
    "affricate": frozenset({"CH", "JH"}),
    "nasal": frozenset({"M", "N", "NG"}),
    "approximant": frozenset({"L", "R", "W", "Y"}),
    "voiced": frozenset({"B", "D", "G", "V", "DH", "Z", "ZH", "JH", "M", "N", "NG", "L", "R", "W", "Y"}) | VOWELS,
    "labial": frozenset({"P", "B", "M", "F", "V", "W"}),
    "coronal": frozenset({"T", "D", "N", "S", "Z", "SH", "ZH", "CH", "JH", "L", "R", "TH", "DH"}),
    "dorsal": frozenset({"K", "G", "NG", "Y"}),
    "front_vowel": frozenset({"IY", "IH", "EH", "EY", "AE"}),
    "back_vowel": frozenset({"UW", "UH", "OW", "AO", "AA"}),
    "diphthong": frozenset({"AY", "AW", "OY", "EY", "OW"}),
    "rhotic": frozenset({"R", "ER"}),
} | {p: frozenset({p}) for p in ARPABET}
QUESTIONS: list[tuple[int, str]] = [(side, c) for side in (0, 1) for c in PHONE_CLASSES]
PHONES_WITH_SIL = (SIL,) + ARPABET
Context = tuple[str, str, str, int]  # (left, centre, right, state)


@dataclass
class ContextStats:
    """Sufficient statistics of the frames of one triphone state."""

    count: float
    sum: np.ndarray
    sumsq: np.ndarray


def _loglike(count: float, s: np.ndarray, ss: np.ndarray, var_floor: float = 1e-3) -> float:
    # Log-likelihood of the data under its ML diagonal Gaussian, without constants.
    var = np.maximum(ss / count - (s / count) ** 2, var_floor)
    return -0.5 * count * float(np.log(var).sum())


@dataclass
class _Leaf:
    contexts: list[Context]
    count: float
    sum: np.ndarray
    sumsq: np.ndarray
    path: list[tuple[int, str, bool]] = field(default_factory=list)


class SenoneTree:
    """Maps (left, centre, right, state) to a tied state id in [0, num_senones)."""

    def __init__(self, states_per_phone: int, rules: dict[tuple[str, int], list]) -> None:
        # rules[(centre, state)] = [(path, senone_id), ...]; path = [(side, class, answer)]
        self.states_per_phone = states_per_phone
        self.rules = rules
        self.num_senones = 1 + max(i for leaves in rules.values() for _, i in leaves)
        self._cache: dict[Context, int] = {}
        self._states: dict[tuple[str, str, str], list[int]] = {}  # (left, centre, right) -> its senones

    @classmethod
    def build(
        cls, stats: dict[Context, ContextStats], num_senones: int, states_per_phone: int = 3, min_count: float = 50.0
    ) -> SenoneTree:
        roots: dict[tuple[str, int], _Leaf] = {}
        dim = next(iter(stats.values())).sum.shape[0] if stats else 1
        for p in PHONES_WITH_SIL:
            for s in range(states_per_phone):
                roots[(p, s)] = _Leaf([], 0.0, np.zeros(dim), np.zeros(dim))
        for ctx, st in sorted(stats.items()):
            leaf = roots[(ctx[1], ctx[3])]
            leaf.contexts.append(ctx)
            leaf.count += st.count
            leaf.sum = leaf.sum + st.sum
            leaf.sumsq = leaf.sumsq + st.sumsq
        if num_senones < len(roots):
            raise ValueError(
                f"num_senones={num_senones} is below the {len(roots)} untied "
                f"monophone states ({len(PHONES_WITH_SIL)} phones x "
                f"{states_per_phone} states); raise it"
            )
        leaves: dict[tuple[str, int], list[_Leaf]] = {k: [v] for k, v in roots.items()}
        heap: list = []
        counter = 0

        def push(key, leaf):
            nonlocal counter
            best = cls._best_split(leaf, stats, min_count)
            if best is not None:
                heapq.heappush(heap, (-best[0], counter, key, leaf, best[1]))
                counter += 1

        for key, (leaf,) in leaves.items():
            push(key, leaf)
        total = len(roots)
        while total < num_senones and heap:
            _, _, key, leaf, (side, cname, yes, no) = heapq.heappop(heap)
            leaves[key].remove(leaf)
            for part, answer in ((yes, True), (no, False)):
                part.path = leaf.path + [(side, cname, answer)]
                leaves[key].append(part)
                push(key, part)
            total += 1
        rules, next_id = {}, 0
        for key in roots:  # fixed order: phones, then states, then creation order
            rules[key] = []
            for leaf in leaves[key]:
                rules[key].append((leaf.path, next_id))
                next_id += 1
        return cls(states_per_phone, rules)

    @staticmethod
    def _best_split(leaf: _Leaf, stats, min_count):
        if leaf.count < 2 * min_count or len(leaf.contexts) < 2:
            return None
        base = _loglike(leaf.count, leaf.sum, leaf.sumsq)
        best = None
        for side, cname in QUESTIONS:
            members = PHONE_CLASSES[cname]
            yes = [c for c in leaf.contexts if (c[0] if side == 0 else c[2]) in members]
            if not yes or len(yes) == len(leaf.contexts):
                continue
            n = sum(stats[c].count for c in yes)
            if n < min_count or leaf.count - n < min_count:
                continue
            s = sum(stats[c].sum for c in yes)
            ss = sum(stats[c].sumsq for c in yes)
            gain = _loglike(n, s, ss) + _loglike(leaf.count - n, leaf.sum - s, leaf.sumsq - ss) - base
            if best is None or gain > best[0] + 1e-9:
                chosen = set(yes)
                no = [c for c in leaf.contexts if c not in chosen]
                best = (
                    gain,
                    (side, cname, _Leaf(yes, n, s, ss), _Leaf(no, leaf.count - n, leaf.sum - s, leaf.sumsq - ss)),
                )
        return best if best is not None and best[0] > 0 else None

    def senone(self, centre: str, state: int, left: str = SIL, right: str = SIL) -> int:
        key = (left, centre, right, state)
        if key not in self._cache:
            try:
                candidates = self.rules[(centre, state)]
            except KeyError:
                raise KeyError(f"no senone tree for phone {centre!r} state {state}") from None
            for path, sid in candidates:
                if all(((left if side == 0 else right) in PHONE_CLASSES[c]) == ans for side, c, ans in path):
                    self._cache[key] = sid
                    break
        return self._cache[key]

    def sequence(self, phones: Sequence[str]) -> list[int]:
        """Token sequence: each phone expanded into its tied states, in order.
        Context at the edges is SIL."""
        padded = [SIL, *phones, SIL]
        out, states = [], self._states
        for i in range(1, len(padded) - 1):  # a dict hit per phone
            left, centre, right = padded[i - 1 : i + 2]
            ids = states.get((left, centre, right))  # (the LM text meets 7.5 M states)
            if ids is None:
                ids = states[left, centre, right] = [
                    self.senone(centre, s, left, right) for s in range(self.states_per_phone)
                ]
            out += ids
        return out

    def frame_states(self, alignment, frame_shift: float, num_frames: int) -> list[tuple[int, int]]:
        """(phone index in the alignment, state) for each frame centre."""
        out, k = [], 0
        for t in range(num_frames):
            centre = (t + 0.5) * frame_shift
            while k + 1 < len(alignment) and centre >= alignment[k].start + alignment[k].duration:
                k += 1
            a = alignment[k]
            pos = (centre - a.start) / a.duration if a.duration > 0 else 0.0
            out.append((k, min(self.states_per_phone - 1, max(0, int(pos * self.states_per_phone)))))
        return out

    def frame_labels(self, alignment, frame_shift: float, num_frames: int) -> np.ndarray:
        """(T,) int64 senone per frame of a tiled phone alignment (lhotse AlignmentItems)."""
        symbols = [a.symbol for a in alignment]
        labels = np.empty(num_frames, np.int64)
        for t, (k, s) in enumerate(self.frame_states(alignment, frame_shift, num_frames)):
            left = symbols[k - 1] if k > 0 else SIL
            right = symbols[k + 1] if k + 1 < len(symbols) else SIL
            labels[t] = self.senone(symbols[k], s, left, right)
        return labels

    def to_json(self) -> str:
        return json.dumps(
            {
                "states_per_phone": self.states_per_phone,
                "num_senones": self.num_senones,
                "trees": [
                    {"phone": p, "state": s, "leaves": [{"path": path, "id": i} for path, i in v]}
                    for (p, s), v in self.rules.items()
                ],
            },
            indent=None,
        )

    @classmethod
    def from_json(cls, text: str) -> SenoneTree:
        d = json.loads(text)
        rules = {
            (t["phone"], t["state"]): [([tuple(q) for q in leaf["path"]], leaf["id"]) for leaf in t["leaves"]]
            for t in d["trees"]
        }
        return cls(d["states_per_phone"], rules)


def accumulate_stats(
    alignment, feats: np.ndarray, frame_shift: float, states_per_phone: int, stats: dict[Context, ContextStats]
) -> None:
    """Add one utterance's frames ``feats`` (T, C) to per-triphone-state statistics."""
    probe = SenoneTree(states_per_phone, {(SIL, 0): [([], 0)]})
    symbols = [a.symbol for a in alignment]
    keys: dict[Context, int] = {}
    index = np.empty(len(feats), np.int64)
    for t, (k, s) in enumerate(probe.frame_states(alignment, frame_shift, len(feats))):
        ctx = (symbols[k - 1] if k > 0 else SIL, symbols[k], symbols[k + 1] if k + 1 < len(symbols) else SIL, s)
        index[t] = keys.setdefault(ctx, len(keys))
    x = feats.astype(np.float64)
    sums = np.zeros((len(keys), x.shape[1]))
    sumsqs = np.zeros((len(keys), x.shape[1]))
    np.add.at(sums, index, x)
    np.add.at(sumsqs, index, x * x)
    counts = np.bincount(index, minlength=len(keys))
    for ctx, i in keys.items():
        st = stats.get(ctx)
        if st is None:
            stats[ctx] = ContextStats(float(counts[i]), sums[i], sumsqs[i])
        else:
            st.count += float(counts[i])
            st.sum += sums[i]
            st.sumsq += sumsqs[i]
