"""The three unit inventories of a corpus, built once and loaded everywhere.

    >>> build_units("data/small", UnitsConfig(vocab_size=256, num_senones=500))  # data/prepare.py
    >>> units = Units("data/small/units")
    >>> units["subword"].tokens("AND GOD SAID"), units.phones("AND GOD SAID"), units.encode("AND GOD SAID", "senone")

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

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from speechdistill.progress import progress
from speechdistill.units.lexicon import Lexicon, UnpronounceableWordError
from speechdistill.units.types import UNIT_TYPES, BuildContext, UnitsConfig, UnitType
from speechdistill.utils import DataError, atomic_write_text

log = logging.getLogger(__name__)
__all__ = ["Units", "UnitsConfig", "build_inventory"]


class Units:
    """A built unit inventory: the lexicon, and one bound unit type per registered name
    (``units["phone"]``, loaded on first use)."""

    def __init__(self, root: str | Path, info: dict | None = None) -> None:
        root = Path(root)
        if info is None and not (root / "units.json").exists():
            raise FileNotFoundError(f"{root} holds no unit inventory: run `speechdistill units build {root.parent}`")
        self.root = root
        self.info = info if info is not None else json.loads((root / "units.json").read_text())
        self.lexicon = Lexicon(g2p=self.info["config"]["g2p"])
        for line in (root / "lexicon.txt").read_text().splitlines():
            word, phones = line.split("\t")
            self.lexicon._cache[word] = phones.split()
        self._types: dict[str, UnitType] = {}

    def __getitem__(self, unit: str) -> UnitType:
        if unit not in self._types:
            if not UNIT_TYPES[unit].available(self.root):
                raise DataError(
                    f"{self.root} holds no {unit} inventory: "
                    + self.info.get(unit, f"run `speechdistill units build {self.root.parent}`")
                )
            self._types[unit] = UNIT_TYPES[unit](self)
        return self._types[unit]

    def names(self) -> list[str]:
        """The unit types this inventory holds."""
        return [u for u in UNIT_TYPES if UNIT_TYPES[u].available(self.root)]

    def vocab_size(self, unit: str) -> int:
        return self[unit].vocab_size

    def vocab(self) -> dict[str, int]:
        """Vocabulary size of every unit type of the inventory."""
        return {u: self.vocab_size(u) for u in self.names()}

    def encode(self, text: str, unit: str) -> list[int]:
        """Integer ids of ``text`` in ``unit``."""
        return self[unit].encode(text)

    def phones(self, text: str) -> list[str]:
        return self.lexicon.phones(text.split())

    def digest(self, unit: str | None = None) -> str:
        """A hash of ``files()`` (of one unit type's files when ``unit`` is given): what a
        model or a cache over these units depends on."""
        h = hashlib.sha256()
        for path in self.files() if unit is None else [self.root / f for f in UNIT_TYPES[unit].files]:
            h.update(path.read_bytes())
        return h.hexdigest()

    def files(self) -> list[Path]:
        """The files that define the inventory's units (what a soft-label cache depends on)."""
        return [self.root / f for u in self.names() for f in UNIT_TYPES[u].files] + [self.root / "lexicon.txt"]


def build_inventory(
    root: str | Path,
    lm_text: str | Path,
    transcripts: Iterable[str],
    train,
    frame_shift: float,
    cfg: UnitsConfig | None = None,
    show_progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Build every registered unit type into ``root``: the lexicon over every word of the LM
    text and the transcripts, each type's files (``UnitType.build``), and the LM text in
    each unit. ``train`` gives the training utterances (see ``BuildContext``). Returns units.json."""
    cfg = cfg or UnitsConfig()
    root, lm_text = Path(root), Path(lm_text)
    root.mkdir(parents=True, exist_ok=True)
    lm_lines = lm_text.read_text().splitlines()

    # Lexicon over every word the toolkit will meet; unpronounceable words are reported.
    lexicon = Lexicon(g2p=cfg.g2p)
    words = sorted({w for line in lm_lines for w in line.split()} | {w for t in transcripts for w in t.split()})
    bad: dict[str, str] = {}
    for w in progress(words, total=len(words), desc="lexicon", enable=show_progress):
        try:
            lexicon.pronounce(w)
        except UnpronounceableWordError as e:
            bad[w] = str(e)
            log.warning("%s", e)
    atomic_write_text(
        root / "lexicon.txt", "".join(f"{w}\t{' '.join(lexicon.pronounce(w))}\n" for w in words if w not in bad)
    )
    atomic_write_text(root / "g2p_words.txt", "".join(f"{w}\n" for w in sorted(lexicon.oov_words)))

    ctx = BuildContext(root, cfg, lm_text, lexicon, train, frame_shift, show_progress)
    stats: dict = {}
    for name in UNIT_TYPES:
        stats |= UNIT_TYPES[name].build(ctx)
    kept = [line for line in lm_lines if not any(w in bad for w in line.split())]
    info = (
        {
            "config": asdict(cfg),
            "vocab": {},
            "lexicon_words": len(words) - len(bad),
            "g2p_words": len(lexicon.oov_words),
            "unpronounceable_words": sorted(bad),
            "lm_sentences_dropped": len(lm_lines) - len(kept),
        }
        | stats
        | (extra or {})
    )
    units = Units(root, info)
    info["vocab"] = units.vocab()

    # The text-only corpus in each unit (sentences with an unpronounceable word are dropped).
    converted: dict[str, list[str]] = {u: [] for u in units.names()}
    for line in progress(kept, total=len(kept), desc="LM text to units", enable=show_progress):
        for u, lines in converted.items():
            lines.append(" ".join(units[u].tokens(line)))
    for u, lines in converted.items():
        atomic_write_text(root / f"lm_text.{u}.txt", "".join(s + "\n" for s in lines))
    atomic_write_text(root / "units.json", json.dumps(info, indent=1) + "\n")
    return info
