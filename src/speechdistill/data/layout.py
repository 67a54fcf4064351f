"""Where everything of a corpus lives: one object owns the paths, so no module rebuilds
them from strings.

    >>> corpus = CorpusDir("data/small")
    >>> corpus.supervisions("train"), corpus.lm("phone"), corpus.soft_labels(SoftLabelSpec("phone", 8, 3.0))

Layout::

    {split}_recordings.jsonl, {split}_supervisions.jsonl   lhotse manifests (built or imported)
    {split}_cuts.jsonl, feats/{split}.lca, features.json   stored features
    lm_text.txt                                            the text-only corpus
    units/                                                 unit inventories (units/inventory.py)
    lm/{unit}.safetensors + .json                          one LM per unit
    soft_labels/{unit}-k{k}-T{T}.safetensors + .json       an LM's cached soft labels
    alignments/{name}/{split}.jsonl                        named alignments (forced, imported)
    audio/, align/, summary.json, voices.json, DATASHEET.md   the built-in corpus's own files
    import_{split}.json                                    what an import kept and skipped
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechdistill.utils import check_split_name

SPLITS = ("train", "dev", "test")


def _split(name: str) -> str:
    return check_split_name(name, "split")


@dataclass(frozen=True)
class SoftLabelSpec:
    """The identity of a set of soft labels: the unit LM's distribution over ``unit``,
    softened with ``temperature`` and cut to the ``top_k`` best, at the reference positions
    read off the alignment ``alignment`` ("": the manifests' own). Taps and label
    interpolation hold one (the unit is the tap's; the alignment is the training config's
    ``data.alignment``); the cache on disk is keyed by it."""

    unit: str = ""
    top_k: int = 8
    temperature: float = 3.0
    alignment: str = ""

    def __post_init__(self):
        if self.top_k < 1 or not 0 < self.temperature < float("inf"):
            raise ValueError(f"soft labels need top_k >= 1 and temperature > 0, got {self.top_k}, {self.temperature}")

    @property
    def name(self) -> str:
        return f"{self.unit}-k{self.top_k}-T{self.temperature:g}" + (f"@{self.alignment}" if self.alignment else "")


class CorpusDir:
    """The paths of one corpus directory (fixed files as attributes, per-split and per-name
    files as methods)."""

    def __init__(self, root: str | Path | CorpusDir) -> None:
        self.root = root = root.root if isinstance(root, CorpusDir) else Path(root)
        self.lm_text = root / "lm_text.txt"  # the text-only corpus
        self.units = root / "units"  # unit inventories (units/inventory.py)
        self.features_info = root / "features.json"
        self.summary = root / "summary.json"  # the built-in corpus's record of itself
        self.voices = root / "voices.json"
        self.datasheet = root / "DATASHEET.md"

    def __repr__(self) -> str:
        return f"CorpusDir({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def recordings(self, split: str) -> Path:
        return self.root / f"{_split(split)}_recordings.jsonl"

    def supervisions(self, split: str) -> Path:
        return self.root / f"{_split(split)}_supervisions.jsonl"

    def cuts(self, split: str) -> Path:
        """The cut manifest of the stored features."""
        return self.root / f"{_split(split)}_cuts.jsonl"

    def features_archive(self, split: str) -> Path:
        return self.root / "feats" / f"{_split(split)}.lca"

    def splits(self) -> list[str]:
        """The splits that have manifests."""
        return [s for s in SPLITS if self.supervisions(s).exists()]

    def lm_text_in(self, unit: str) -> Path:
        """The text-only corpus converted to ``unit``, one sentence per line."""
        return self.units / f"lm_text.{unit}.txt"

    def lm(self, unit: str) -> Path:
        """Checkpoint prefix of the unit's LM."""
        return self.root / "lm" / unit

    def soft_labels(self, spec: SoftLabelSpec) -> Path:
        """Checkpoint prefix of a soft-label cache."""
        return self.root / "soft_labels" / spec.name

    def alignment(self, name: str, split: str) -> Path:
        """A named alignment of a split (one JSON line per utterance)."""
        return self.root / "alignments" / check_split_name(name, "alignment") / f"{_split(split)}.jsonl"

    def import_report(self, split: str) -> Path:
        return self.root / f"import_{_split(split)}.json"

    def audio(self, split: str, utt: str) -> Path:
        return self.root / "audio" / split / f"{utt}.flac"

    def synth_record(self, split: str, utt: str) -> Path:
        """The built-in corpus's per-utterance record (its resume marker)."""
        return self.root / "align" / split / f"{utt}.json"
