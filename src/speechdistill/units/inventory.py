"""The three unit inventories of a corpus, built once and loaded everywhere.

    >>> build_units("data/small", UnitsConfig(vocab_size=256, num_senones=500))
    >>> units = Units.load("data/small/units")
    >>> units.subwords("AND GOD SAID"), units.phones("AND GOD SAID"), units.senones("AND GOD SAID")

Layout of ``{corpus}/units``::

    subword.model, subword.vocab   SentencePiece
    phones.txt                     SIL + ARPAbet-39, one per line (line number = id)
    lexicon.txt                    WORD<TAB>PHONES for every word of the corpus and LM text
    g2p_words.txt                  the words CMUdict lacked (pronounced by eSpeak's rules)
    senones.json                   the state-tying tree
    durations.json                 mean duration (s) of each phone in the training alignments
    lm_text.{subword,phone,senone}.txt   the text-only corpus in each unit
    units.json                     the config and statistics of the build
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speechdistill.progress import progress
from speechdistill.units.lexicon import Lexicon, UnpronounceableWordError
from speechdistill.units.phones import ARPABET, SIL
from speechdistill.units.senone import SenoneTree, accumulate_stats
from speechdistill.units.subword import load_subword_model, train_subword_model
from speechdistill.utils import atomic_write_text

log = logging.getLogger(__name__)
UNITS = ("subword", "phone", "senone")


@dataclass
class UnitsConfig:
    vocab_size: int = 256
    subword_type: str = "unigram"  # or "bpe"
    num_senones: int = 500
    states_per_phone: int = 3
    min_senone_frames: float = 50.0
    g2p: bool = True


class Units:
    """A built unit inventory: text -> subword pieces, phones, senone ids."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not (root / "units.json").exists():
            raise FileNotFoundError(f"{root} holds no unit inventory: run "
                                    f"`speechdistill units build {root.parent}`")  # fmt: skip
        self.root = root
        self.info = json.loads((root / "units.json").read_text())
        self.sp = load_subword_model(root / "subword.model")
        self.phone_list = (root / "phones.txt").read_text().split()
        self.phone_index = {p: i for i, p in enumerate(self.phone_list)}
        self.lexicon = Lexicon(g2p=self.info["config"]["g2p"])
        for line in (root / "lexicon.txt").read_text().splitlines():
            word, phones = line.split("\t")
            self.lexicon._cache[word] = phones.split()
        self.tree = SenoneTree.from_json((root / "senones.json").read_text())
        self.durations: dict[str, float] = json.loads((root / "durations.json").read_text())

    load = classmethod(lambda cls, root: cls(root))

    def vocab_size(self, unit: str) -> int:
        return {"subword": self.sp.get_piece_size(), "phone": len(self.phone_list),
                "senone": self.tree.num_senones}[unit]  # fmt: skip

    def subwords(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def phones(self, text: str) -> list[str]:
        return self.lexicon.phones(text.split())

    def senones(self, text: str, frame_shift: float | None = None) -> list[int]:
        """Tied states of each phone in order; with ``frame_shift``, each state is
        repeated for its mean number of frames (at least one)."""
        phones = self.phones(text)
        seq = self.tree.sequence(phones)
        if frame_shift is None:
            return seq
        S = self.tree.states_per_phone
        reps = [max(1, round(self.durations.get(p, frame_shift * S) / S / frame_shift))
                for p in phones for _ in range(S)]  # fmt: skip
        return [s for s, r in zip(seq, reps, strict=True) for _ in range(r)]

    def encode(self, text: str, unit: str) -> list[int]:
        """Integer ids of ``text`` in ``unit``."""
        if unit == "subword":
            return self.sp.encode(text)
        if unit == "phone":
            return [self.phone_index[p] for p in self.phones(text)]
        if unit == "senone":
            return self.senones(text)
        raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(UNITS)}")


def build_units(corpus: str | Path, cfg: UnitsConfig | None = None, show_progress: bool = True) -> dict:
    """Build every inventory of ``corpus`` into ``corpus/units``; returns units.json."""
    from speechdistill.data.corpus import SPLITS, load_split
    from speechdistill.data.features import FRAME_SHIFT, FbankExtractor

    cfg = cfg or UnitsConfig()
    corpus = Path(corpus)
    root = corpus / "units"
    root.mkdir(parents=True, exist_ok=True)
    lm_path = corpus / "lm_text.txt"
    if not lm_path.exists():
        raise FileNotFoundError(f"{lm_path} is missing: build or import the corpus first")
    lm_lines = lm_path.read_text().splitlines()
    cuts = {s: load_split(corpus, s) for s in SPLITS if (corpus / f"{s}_supervisions.jsonl").exists()}

    # Lexicon over every word the toolkit will meet; unpronounceable words are reported.
    lexicon = Lexicon(g2p=cfg.g2p)
    words = sorted({w for line in lm_lines for w in line.split()}
                   | {w for cs in cuts.values() for c in cs for s in c.supervisions
                      for w in (s.text or "").split()})  # fmt: skip
    bad: dict[str, str] = {}
    for w in progress(words, total=len(words), desc="lexicon", enable=show_progress):
        try:
            lexicon.pronounce(w)
        except UnpronounceableWordError as e:
            bad[w] = str(e)
            log.warning("%s", e)
    atomic_write_text(root / "lexicon.txt", "".join(
        f"{w}\t{' '.join(lexicon.pronounce(w))}\n" for w in words if w not in bad))  # fmt: skip
    atomic_write_text(root / "g2p_words.txt", "".join(f"{w}\n" for w in sorted(lexicon.oov_words)))
    atomic_write_text(root / "phones.txt", "".join(f"{p}\n" for p in (SIL,) + ARPABET))

    train_subword_model(lm_path, root / "subword", cfg.vocab_size, cfg.subword_type)

    # Senone tree from the training frames; phone durations from the training alignments.
    fbank = FbankExtractor()
    stats: dict = {}
    durs: dict[str, list[float]] = {}
    train = cuts.get("train")
    if train is None:
        raise FileNotFoundError(f"{corpus}/train_supervisions.jsonl is missing")
    from speechdistill.data.audio import load_cut_audio

    no_align = 0
    for cut in progress(train, total=len(train), desc="senone stats", enable=show_progress):
        sup = cut.supervisions[0]
        if not sup.alignment or "phone" not in sup.alignment:
            no_align += 1
            continue
        feats = cut.load_features() if cut.has_features else fbank(load_cut_audio(cut))
        accumulate_stats(sup.alignment["phone"], feats, FRAME_SHIFT, cfg.states_per_phone, stats)
        for a in sup.alignment["phone"]:
            durs.setdefault(a.symbol, []).append(a.duration)
    if not stats:
        raise ValueError(f"no training utterance of {corpus} has a phone alignment; senones "
                         "need alignments (import them, or use the built-in corpus)")  # fmt: skip
    tree = SenoneTree.build(stats, cfg.num_senones, cfg.states_per_phone, cfg.min_senone_frames)
    atomic_write_text(root / "senones.json", tree.to_json())
    mean_durs = {p: round(float(np.mean(v)), 5) for p, v in sorted(durs.items())}
    atomic_write_text(root / "durations.json", json.dumps(mean_durs, indent=1) + "\n")

    # The text-only corpus in each unit (sentences with an unpronounceable word are dropped).
    sp = load_subword_model(root / "subword.model")
    kept = [line for line in lm_lines if not any(w in bad for w in line.split())]
    converted = {"subword": [], "phone": [], "senone": []}
    for line in progress(kept, total=len(kept), desc="LM text to units", enable=show_progress):
        phones = lexicon.phones(line.split())
        converted["subword"].append(" ".join(sp.encode(line, out_type=str)))
        converted["phone"].append(" ".join(phones))
        converted["senone"].append(" ".join(map(str, tree.sequence(phones))))
    for unit, lines in converted.items():
        atomic_write_text(root / f"lm_text.{unit}.txt", "".join(s + "\n" for s in lines))

    info = {
        "config": asdict(cfg),
        "vocab": {"subword": sp.get_piece_size(), "phone": 1 + len(ARPABET),
                  "senone": tree.num_senones},
        "lexicon_words": len(words) - len(bad), "g2p_words": len(lexicon.oov_words),
        "unpronounceable_words": sorted(bad), "lm_sentences_dropped": len(lm_lines) - len(kept),
        "train_utterances_without_alignment": no_align,
        "triphone_states_seen": len(stats),
        "phones_without_frame": {str(fs): _phones_without_frame(train, fs) for fs in (0.01, 0.02, 0.04)},
    }  # fmt: skip
    atomic_write_text(root / "units.json", json.dumps(info, indent=1) + "\n")
    return info


def _phones_without_frame(cuts, frame_shift: float) -> float:
    """Fraction of non-silence phones whose span contains no frame centre at ``frame_shift``."""
    total = missed = 0
    for cut in cuts:
        for a in cut.supervisions[0].alignment.get("phone", []) if cut.supervisions[0].alignment else []:
            if a.symbol == SIL:
                continue
            total += 1
            first = np.ceil(a.start / frame_shift - 0.5)  # first frame whose centre >= start
            missed += (first + 0.5) * frame_shift >= a.start + a.duration
    return round(float(missed) / max(1, total), 4)
