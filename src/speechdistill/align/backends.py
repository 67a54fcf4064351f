"""Aligner backends, registered by name (``@ALIGNERS.register("name")``).

* ``own``: the project's aligner, trained on the corpus from its transcripts (own.py);
  any language and lexicon; never reads the synthesiser's timings.
* ``pocketsphinx``: CMU Sphinx's US-English HMMs (the ``pocketsphinx`` wheel ships them),
  no training. Words missing from its dictionary get the project lexicon's pronunciation
  (CMUdict + G2P) at run time; an utterance that fails is retried with wider beams.

A backend's ``prepare`` runs once per corpus (training, for ``own``); ``__init__`` builds
it in each worker process; ``align(cuts)`` maps each utterance to ``{"phone": items,
"word": items}`` or to why it failed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
from lhotse import CutSet
from pocketsphinx import Decoder

from speechdistill.align.formats import phones_to_alignment
from speechdistill.align.own import Aligner, AlignerConfig, train_aligner
from speechdistill.align.store import with_alignment
from speechdistill.config import apply_override, from_dict, to_dict
from speechdistill.data.audio import load_cut_audio
from speechdistill.data.batching import subset_hours
from speechdistill.data.layout import CorpusDir
from speechdistill.registry import Registry
from speechdistill.units.lexicon import Lexicon, UnpronounceableWordError
from speechdistill.utils import DataError

ALIGNERS: Registry[type[AlignerBackend]] = Registry("aligner backend")


class AlignerBackend:
    name: ClassVar[str]

    @classmethod
    def prepare(cls, corpus: CorpusDir, name: str, train: CutSet, overrides: list[str], show_progress: bool) -> dict:
        """Once per corpus, before aligning; returns what the workers are built from."""
        return {}

    def __init__(self, options: dict) -> None:
        self.options = options

    def align(self, cuts) -> dict[str, dict | str]:
        raise NotImplementedError


@ALIGNERS.register("own")
class OwnBackend(AlignerBackend):
    @classmethod
    def prepare(cls, corpus, name, train, overrides, show_progress):
        """Train (or resume training) on ``train``'s first ``train_hours``; the model is kept
        in ``alignments/{name}/model``."""
        data = to_dict(AlignerConfig(out_dir=str(corpus.root / "alignments" / name / "model")))
        for o in overrides:
            apply_override(data, o)
        cfg = from_dict(AlignerConfig, data)
        model = Path(cfg.out_dir) / "aligner"
        if not model.with_suffix(".json").exists():
            subset = subset_hours(train, cfg.train_hours, cfg.seed)
            if cfg.init_from:  # given timings start the GMMs: an explicit option, never the default
                subset = with_alignment(subset, corpus, cfg.init_from, "train")
            train_aligner(subset, cfg, show_progress)
        return {"model": str(model)}

    def __init__(self, options):
        super().__init__(options)
        self.aligner = Aligner.load(options["model"])

    def align(self, cuts):
        return self.aligner.align(cuts)


@ALIGNERS.register("pocketsphinx")
class PocketsphinxBackend(AlignerBackend):
    # pocketsphinx's defaults, then wider beams, then (nearly) no pruning at all
    BEAMS = (
        {},
        {"beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80},
        {"beam": 1e-250, "wbeam": 1e-200, "pbeam": 1e-250, "maxhmmpf": -1, "maxwpf": -1},
        {"beam": 1e-300, "wbeam": 1e-300, "pbeam": 1e-300, "maxhmmpf": -1, "maxwpf": -1, "fsgusefiller": False},
    )

    def __init__(self, options):
        super().__init__(options)
        self.decoders = [Decoder(samprate=16000, bestpath=False, lm=None, logfn=os.devnull, **b) for b in self.BEAMS]
        self.lexicon = Lexicon()

    def align(self, cuts):
        out = {}
        for cut in cuts:
            text = cut.supervisions[0].text
            pcm = (np.clip(load_cut_audio(cut), -1, 1) * 32767).astype(np.int16).tobytes()
            why = ""
            for d in self.decoders:
                try:
                    segs, words = self._align(d, text, pcm, cut.duration)
                    out[cut.id] = phones_to_alignment(cut.id, segs, text, cut.duration, self.lexicon, words)
                    break
                except (RuntimeError, UnpronounceableWordError, DataError) as e:
                    why = str(e)
            else:
                out[cut.id] = f"utterance {cut.id}: pocketsphinx could not align it ({why})"
        return out

    def _align(self, d: Decoder, text: str, pcm: bytes, duration: float):
        for w in set(text.split()):
            if d.lookup_word(w.lower()) is None:
                d.add_word(w.lower(), " ".join(self.lexicon.pronounce(w)), True)
        d.set_align_text(text.lower())
        for _ in range(2):  # words first, then phones within them
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            if _ == 0:
                d.set_alignment()
        ali = d.get_alignment()
        # pocketsphinx's frame t covers [t / frate, t / frate + wlen) (no padding), so the boundary
        # between frames t-1 and t is best placed halfway between their centres: (wlen - 1 / frate) / 2
        # after t / frate (7.8 ms at its defaults). Our own features centre their frames (snip_edges=False).
        frate, offset = d.config["frate"], (d.config["wlen"] - 1 / d.config["frate"]) / 2

        def span(seg) -> tuple[float, float]:
            return min(seg.start / frate + offset, duration), min((seg.start + seg.duration) / frate + offset, duration)

        phones = [(p.name, *span(p)) for p in ali.phones()]
        words = [(w.name.split("(")[0], *span(w)) for w in ali if w.name not in ("<sil>", "<s>", "</s>")]
        return phones, words
