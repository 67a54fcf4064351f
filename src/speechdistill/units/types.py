"""Unit types: one class per kind of unit (subword, phone, senone), registered by name.

    >>> units = Units("data/small/units")
    >>> units["phone"].encode("AND GOD SAID")                 # unit ids from a transcript
    >>> units["senone"].frame_labels(alignment, 0.04, T)      # (T,) class ids from an alignment
    >>> units["subword"].to_text(ids)                         # back to text

A unit type knows its vocabulary (the files it builds under ``units/``), how a
transcript becomes its tokens (the LM text is written with them), how an alignment
(``{"phone": [...], "word": [...]}`` of lhotse AlignmentItems) gives each reference
position a time span, and how ids become text. Everything else (CTC targets, frame
labels, soft labels) is derived from those. A new unit type is one class here (or in
your own module) with ``@UNIT_TYPES.register("name")``: see docs/extending.md.

Class ids of an output layer over a unit: ``vocab_size + offset`` classes, unit id i is
class i + offset; class 0 is CTC's blank and, on frame outputs, "in no unit" (pauses).
Phones have offset 0: their id 0 is SIL, which doubles as the blank.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from lhotse.supervision import AlignmentItem

from speechdistill.progress import progress
from speechdistill.registry import Registry
from speechdistill.units.lexicon import Lexicon
from speechdistill.units.phones import ARPABET, SIL
from speechdistill.units.senone import SenoneTree, accumulate_stats
from speechdistill.units.subword import load_subword_model, split_span, subword_alignment, train_subword_model
from speechdistill.utils import atomic_write_text

UNIT_TYPES: Registry[type[UnitType]] = Registry("unit type")


@dataclass
class UnitsConfig:
    """How the inventory is built (``speechdistill units build``)."""

    vocab_size: int = 256  # subword pieces
    subword_type: str = "unigram"  # or "bpe"
    num_senones: int = 500
    states_per_phone: int = 3
    min_senone_frames: float = 50.0
    g2p: bool = True  # words missing from CMUdict pronounced by eSpeak's rules


@dataclass
class BuildContext:
    """What a unit type may read while the inventory is built."""

    root: Path  # the units/ directory to write into
    cfg: UnitsConfig
    lm_text: Path  # the text-only corpus, one sentence per line
    lexicon: Lexicon
    # (utterance id, phone alignment or None, a function loading its fbank frames), per training utterance
    train: Callable[[], Iterable[tuple[str, list[AlignmentItem] | None, Callable[[], np.ndarray]]]]
    frame_shift: float  # of those fbank frames
    show_progress: bool = True


class UnitType:
    name: ClassVar[str]
    offset: ClassVar[int] = 1
    ctc: ClassVar[bool] = True  # may be the main output or a CTC tap
    words: ClassVar[bool] = False  # to_text gives words (scored by WER)
    files: ClassVar[tuple[str, ...]] = ()  # what defines it under units/ (soft-label caches fingerprint them)

    def __init__(self, units) -> None:
        self.units = units  # the inventory (units/inventory.py) this type is bound to

    @classmethod
    def build(cls, ctx: BuildContext) -> dict:
        """Write this type's files under ``ctx.root``; returns statistics for units.json. A type
        that cannot be built yet (senones without an alignment) writes nothing and says why."""
        return {}

    @classmethod
    def available(cls, root: Path) -> bool:
        """Whether an inventory at ``root`` holds this type (all its files are there)."""
        return all((root / f).exists() for f in cls.files)

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.vocab_size + self.offset

    def tokens(self, text: str) -> list[str]:
        """A transcript's tokens; the LM text is written with these, space-separated."""
        raise NotImplementedError

    def token_id(self, token: str) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return [self.token_id(t) for t in self.tokens(text)]

    def ctc_targets(self, supervision) -> list[int]:
        """CTC class ids of an utterance (blank excluded)."""
        return [i + self.offset for i in self.encode(supervision.text)]

    def positions(self, alignment: dict) -> tuple[list[int], list[tuple[float, float]]]:
        """Unit ids of the reference sequence and each position's (start, duration)."""
        raise NotImplementedError

    def frame_labels(self, alignment: dict, frame_shift: float, num_frames: int) -> np.ndarray:
        """(T,) class id of each frame: the position whose span holds the frame's centre, 0 in none."""
        ids, spans = self.positions(alignment)
        labels = np.zeros(num_frames, np.int64)
        centres = (np.arange(num_frames) + 0.5) * frame_shift
        for i, (start, dur) in zip(ids, spans, strict=True):
            labels[(centres >= start) & (centres < start + dur)] = i + self.offset
        return labels

    def to_text(self, ids: list[int]) -> str:
        """Unit ids -> text (words for word-level units, else space-separated units)."""
        raise NotImplementedError


def _phone_items(alignment: dict) -> list[AlignmentItem]:
    return [a for a in alignment["phone"] if a.symbol != SIL]


@UNIT_TYPES.register("subword")
class Subwords(UnitType):
    """SentencePiece pieces (unigram or BPE) trained on the LM text. A word's time span is
    shared among its pieces in proportion to their letters (units/subword.py)."""

    words = True
    files = ("subword.model",)

    @classmethod
    def build(cls, ctx: BuildContext) -> dict:
        train_subword_model(ctx.lm_text, ctx.root / "subword", ctx.cfg.vocab_size, ctx.cfg.subword_type)
        return {}

    def __init__(self, units) -> None:
        super().__init__(units)
        self.sp = load_subword_model(units.root / "subword.model")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def tokens(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def token_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def positions(self, alignment: dict):
        pieces = subword_alignment(alignment["word"], self.sp)
        return [self.sp.piece_to_id(a.symbol) for a in pieces], [(a.start, a.duration) for a in pieces]

    def to_text(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


@UNIT_TYPES.register("phone")
class Phones(UnitType):
    """ARPAbet-39 plus SIL (id 0, also CTC's blank), from the lexicon (CMUdict, else G2P)."""

    offset = 0
    files = ("phones.txt",)

    @classmethod
    def build(cls, ctx: BuildContext) -> dict:
        atomic_write_text(ctx.root / "phones.txt", "".join(f"{p}\n" for p in (SIL,) + ARPABET))
        return {}

    def __init__(self, units) -> None:
        super().__init__(units)
        self.symbols = (units.root / "phones.txt").read_text().split()
        self.index = {p: i for i, p in enumerate(self.symbols)}

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def tokens(self, text: str) -> list[str]:
        return self.units.phones(text)

    def token_id(self, token: str) -> int:
        return self.index[token]

    def ctc_targets(self, supervision) -> list[int]:
        """What was said: the aligned phones when the utterance has an alignment, else the lexicon's."""
        ali = (supervision.alignment or {}).get("phone")
        if not ali:
            return self.encode(supervision.text)
        return [self.index[a.symbol] for a in ali if a.symbol != SIL]

    def positions(self, alignment: dict):
        phones = _phone_items(alignment)
        return [self.index[a.symbol] for a in phones], [(a.start, a.duration) for a in phones]

    def to_text(self, ids: list[int]) -> str:
        return " ".join(self.symbols[i] for i in ids)


@UNIT_TYPES.register("senone")
class Senones(UnitType):
    """Tied triphone states (units/senone.py): each phone cut into equal-duration states,
    states tied by a decision tree grown on the training frames. Frame units: no CTC."""

    offset = 0
    ctc = False
    files = ("senones.json",)

    @classmethod
    def build(cls, ctx: BuildContext) -> dict:
        stats: dict = {}
        durs: dict[str, list[float]] = {}
        no_align, phones_seen = 0, []
        items = list(ctx.train())
        for _, ali, load_feats in progress(items, total=len(items), desc="senone stats", enable=ctx.show_progress):
            if not ali:
                no_align += 1
                continue
            accumulate_stats(ali, load_feats(), ctx.frame_shift, ctx.cfg.states_per_phone, stats)
            phones_seen.append(ali)
            for a in ali:
                durs.setdefault(a.symbol, []).append(a.duration)
        if not stats:
            for name in ("senones.json", "durations.json"):  # a tree of another alignment must not stay
                (ctx.root / name).unlink(missing_ok=True)
            return {
                "senone": "not built: no training utterance has a phone alignment; make one with `speechdistill "
                "align run CORPUS`, then `speechdistill units build CORPUS --alignment own`"
            }
        tree = SenoneTree.build(stats, ctx.cfg.num_senones, ctx.cfg.states_per_phone, ctx.cfg.min_senone_frames)
        atomic_write_text(ctx.root / "senones.json", tree.to_json())
        mean_durs = {p: round(float(np.mean(v)), 5) for p, v in sorted(durs.items())}
        atomic_write_text(ctx.root / "durations.json", json.dumps(mean_durs, indent=1) + "\n")
        return {
            "train_utterances_without_alignment": no_align,
            "triphone_states_seen": len(stats),
            "phones_without_frame": {str(fs): _phones_without_frame(phones_seen, fs) for fs in (0.01, 0.02, 0.04)},
        }

    def __init__(self, units) -> None:
        super().__init__(units)
        self.tree = SenoneTree.from_json((units.root / "senones.json").read_text())
        self.durations: dict[str, float] = json.loads((units.root / "durations.json").read_text())

    @property
    def vocab_size(self) -> int:
        return self.tree.num_senones

    def tokens(self, text: str) -> list[str]:
        return [str(s) for s in self.tree.sequence(self.units.phones(text))]

    def token_id(self, token: str) -> int:
        return int(token)

    def expanded(self, text: str, frame_shift: float) -> list[int]:
        """Each state repeated for its mean number of frames in training (at least one): the
        duration-expanded sequence, an option for frame-level LMs."""
        phones = self.units.phones(text)
        S = self.tree.states_per_phone
        reps = [
            max(1, round(self.durations.get(p, frame_shift * S) / S / frame_shift)) for p in phones for _ in range(S)
        ]
        return [s for s, r in zip(self.tree.sequence(phones), reps, strict=True) for _ in range(r)]

    def positions(self, alignment: dict):
        phones = _phone_items(alignment)
        S = self.tree.states_per_phone
        ids = self.tree.sequence([a.symbol for a in phones])  # the LM text's convention: no pauses
        return ids, [s for a in phones for s in split_span(a.start, a.duration, [1] * S)]

    def frame_labels(self, alignment: dict, frame_shift: float, num_frames: int) -> np.ndarray:
        # pauses have senones of their own (SIL's states), unlike the reference positions
        return self.tree.frame_labels(alignment["phone"], frame_shift, num_frames)

    def to_text(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def _phones_without_frame(alignments: list[list[AlignmentItem]], frame_shift: float) -> float:
    """Fraction of non-silence phones whose span contains no frame centre at ``frame_shift``."""
    total = missed = 0
    for ali in alignments:
        for a in ali:
            if a.symbol == SIL:
                continue
            total += 1
            first = np.ceil(a.start / frame_shift - 0.5)  # first frame whose centre >= start
            missed += (first + 0.5) * frame_shift >= a.start + a.duration
    return round(float(missed) / max(1, total), 4)
