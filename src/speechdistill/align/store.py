"""Named alignments of a corpus, side by side: ``alignments/{name}/{split}.jsonl`` holds one
line per aligned utterance (``{"id", "phone": [[symbol, start, duration], ...], "word": [...]}``)
and ``{split}.failed.json`` the utterances the aligner could not align, with why.

    >>> save_alignments(corpus, "own", "train", {utt: {"phone": [...], "word": [...]}}, failed={})
    >>> cuts = with_alignment(load_split(corpus, "train"), corpus, "own", "train")

The name ``synth`` (or "") is the alignment a corpus's manifests carry themselves (the
built-in corpus's synthesiser timings, or what an importer read); nothing ever
overwrites it. A named alignment is written whole, atomically, once its split is done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lhotse import CutSet
from lhotse.supervision import AlignmentItem
from lhotse.utils import fastcopy

from speechdistill.data.corpus import load_split
from speechdistill.data.layout import CorpusDir
from speechdistill.utils import DataError, atomic_write_text, read_jsonl

MANIFEST = ("", "synth")  # names of the manifests' own alignment


def items(rows) -> list[AlignmentItem]:
    return [AlignmentItem(r[0], float(r[1]), float(r[2])) for r in rows]


def to_json(alignment: dict) -> dict:
    """{"phone": items, "word": items} -> lists of [symbol, start, duration]."""
    return {k: [[a.symbol, a.start, a.duration] for a in v] for k, v in alignment.items()}


def save_alignments(corpus, name: str, split: str, alignments: dict[str, dict], failed: dict[str, str]) -> Path:
    """Write a split's alignments (utterance -> {"phone": items, "word": items}) and failures."""
    if name in MANIFEST:
        raise DataError(f"alignment name {name!r} is the manifests' own; choose another (e.g. own, pocketsphinx)")
    path = CorpusDir(corpus).alignment(name, split)
    lines = "".join(json.dumps({"id": u} | to_json(ali)) + "\n" for u, ali in sorted(alignments.items()))
    atomic_write_text(path.with_name(f"{split}.failed.json"), json.dumps(failed, indent=1, sort_keys=True) + "\n")
    atomic_write_text(path, lines)
    return path


def load_alignments(corpus, name: str, split: str) -> tuple[dict[str, dict], dict[str, str]]:
    """A split's named alignment: utterance -> {"phone": [AlignmentItem], "word": [...]}, and its failures."""
    path = CorpusDir(corpus).alignment(name, split)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: make the alignment with `speechdistill align {CorpusDir(corpus)} "
            f"--backend ... --name {name}` or import it"
        )
    rows = read_jsonl(path)
    failed_path = path.with_name(f"{split}.failed.json")
    failed = json.loads(failed_path.read_text()) if failed_path.exists() else {}
    return {r["id"]: {k: items(v) for k, v in r.items() if k != "id"} for r in rows}, failed


def alignment_digest(corpus, name: str, split: str) -> str:
    """What a cache made from this alignment depends on: the supervisions' bytes (their
    transcripts, and the manifests' own alignment) and a named alignment file's."""
    c = CorpusDir(corpus)
    h = hashlib.sha256(name.encode())
    for path in [c.supervisions(split)] + ([] if name in MANIFEST else [c.alignment(name, split)]):
        h.update(path.read_bytes())
    return h.hexdigest()


def with_alignment(cuts: CutSet, corpus, name: str, split: str) -> CutSet:
    """``cuts`` with the named alignment as their supervisions' ``alignment`` (``None`` for
    utterances the aligner failed on); the manifests' own for ``""``/``synth``."""
    if name in MANIFEST:
        return cuts
    alignments, _ = load_alignments(corpus, name, split)
    ids = set(cuts.ids)  # once: built per utterance, it cost 59 s of a medium run's start
    unknown = [u for u in alignments if u not in ids]
    if unknown:
        raise DataError(
            f"alignment {name} of {split} names utterances the corpus does not have (e.g. {unknown[0]}); "
            "it was made for another corpus: align again"
        )
    return CutSet.from_cuts(
        fastcopy(c, supervisions=[fastcopy(c.supervisions[0], alignment=alignments.get(c.id))]) for c in cuts
    )


def any_alignment(corpus, name: str, split: str) -> tuple[dict[str, dict], dict[str, str]]:
    """A named alignment, or the manifests' own (``synth``/""): utterance -> {"phone": ...}, failures."""
    if name in MANIFEST:
        return {
            c.id: c.supervisions[0].alignment
            for c in load_split(CorpusDir(corpus), split)
            if (c.supervisions[0].alignment or {}).get("phone")
        }, {}
    return load_alignments(corpus, name, split)
