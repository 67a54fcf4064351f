"""A corpus's unit inventory, built from its manifests, alignments and features.

    speechdistill units build data/small --vocab-size 256 --num-senones 500
    >>> build_units("data/small", UnitsConfig(vocab_size=256))

The inventory itself (``units/``) knows nothing of corpora; this reads the corpus for it:
the LM text, every split's transcripts (for the lexicon) and the training utterances'
phone alignments with their filterbank frames (for the senone tree).
"""

from __future__ import annotations

from pathlib import Path

from speechdistill.align.store import with_alignment
from speechdistill.data.corpus import load_split
from speechdistill.data.features import FRAME_SHIFT, FbankExtractor, extracted
from speechdistill.data.layout import CorpusDir
from speechdistill.units.inventory import UnitsConfig, build_inventory


def build_units(
    corpus: str | Path | CorpusDir,
    cfg: UnitsConfig | None = None,
    show_progress: bool = True,
    alignment: str = "",
    jobs: int = 1,
) -> dict:
    """Build every inventory of ``corpus`` into ``corpus/units``; the senone tree and the
    phone durations come from the training split's alignment ``alignment`` ("": the
    manifests' own; without any, senones are left out until one exists). Returns units.json.
    ``jobs`` processes compute the aligned utterances' filterbanks (the same inventory)."""
    corpus = CorpusDir(corpus)
    if not corpus.lm_text.exists():
        raise FileNotFoundError(f"{corpus.lm_text} is missing: build or import the corpus first")
    cuts = {s: load_split(corpus, s) for s in corpus.splits()}
    if "train" not in cuts:
        raise FileNotFoundError(f"{corpus.supervisions('train')} is missing")
    cuts["train"] = with_alignment(cuts["train"], corpus, alignment, "train")
    fbank = FbankExtractor()

    def train():
        aligned = [c for c in cuts["train"] if (c.supervisions[0].alignment or {}).get("phone")]
        stream, ready = extracted([c for c in aligned if not c.has_features], fbank, jobs), {}

        def computed(cut_id):
            while cut_id not in ready:  # the senone pass asks in the cuts' order: a short wait
                c, f = next(stream)
                ready[c.id] = f
            return ready.pop(cut_id)

        for cut in cuts["train"]:
            sup = cut.supervisions[0]
            feats = (lambda c=cut: c.load_features()) if cut.has_features else (lambda c=cut: computed(c.id))
            yield cut.id, (sup.alignment or {}).get("phone"), feats

    transcripts = [s.text or "" for cs in cuts.values() for c in cs for s in c.supervisions]
    info = build_inventory(
        corpus.units, corpus.lm_text, transcripts, train, FRAME_SHIFT, cfg, show_progress, {"alignment": alignment}
    )
    return info
