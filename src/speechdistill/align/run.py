"""Aligning a corpus, importing alignments made elsewhere, and scoring one against another.

    speechdistill align run data/small --backend own              # -> alignments/own/{split}.jsonl
    speechdistill align run data/mine --backend pocketsphinx --jobs 2
    speechdistill align score data/small --ref synth --hyp own    # -> alignments/own/score-synth.{md,json}

``align_corpus`` prepares the backend once (the own aligner trains on the training
split), then aligns every split in chunks, in ``jobs`` worker processes, with progress.
Each chunk's results are appended to ``alignments/{name}/.{split}.part.jsonl`` as they
come, so an interrupted run resumes where it stopped; a split's alignment is written
whole (atomically) when all its utterances are done, with the failures listed in
``{split}.failed.json``. A finished split is never aligned again or overwritten.
"""

from __future__ import annotations

import json
import logging
from multiprocessing import get_context
from pathlib import Path

import torch

from speechdistill.align.backends import ALIGNERS
from speechdistill.align.formats import phones_to_alignment, read_ctm, read_textgrid
from speechdistill.align.score import markdown, score_split
from speechdistill.align.store import MANIFEST, any_alignment, items, save_alignments, to_json
from speechdistill.data.corpus import load_split
from speechdistill.data.features import load_cuts_with_features
from speechdistill.data.layout import CorpusDir
from speechdistill.progress import progress
from speechdistill.units.lexicon import Lexicon
from speechdistill.utils import DataError, atomic_write_text

log = logging.getLogger(__name__)
CHUNK = 16
_WORKER = None


def _cuts(corpus: CorpusDir, split: str):
    """A split's cuts, with stored features when there are any (an aligner needs no other)."""
    return load_cuts_with_features(corpus, split) if corpus.cuts(split).exists() else load_split(corpus, split)


def _init_worker(backend: str, options: dict) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = ALIGNERS[backend](options)


def _align_chunk(cuts):
    return _WORKER.align(cuts)


def _read_part(path: Path) -> dict[str, dict | str]:
    """What an interrupted run finished (a line cut short by a kill is dropped)."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row.get("error") or {k: items(v) for k, v in row.items() if k != "id"}
    return done


def align_corpus(
    corpus,
    backend: str = "own",
    name: str | None = None,
    splits=None,
    jobs: int = 1,
    overrides: list[str] = (),
    show_progress: bool = True,
) -> dict[str, dict]:
    """Align ``splits`` (all by default) with ``backend`` into the alignment ``name``
    (the backend's name by default); returns, per split, the aligned and failed counts."""
    corpus, name = CorpusDir(corpus), name or backend
    cls = ALIGNERS[backend]
    if name in MANIFEST:
        raise DataError(f"alignment name {name!r} is the manifests' own; choose another")
    splits = splits or corpus.splits()
    options = cls.prepare(corpus, name, _cuts(corpus, "train"), list(overrides), show_progress)
    report, pool = {}, None
    try:
        for split in splits:
            final = corpus.alignment(name, split)
            if final.exists():
                log.info("%s is done; remove it to align %s again", final, split)
                report[split] = {"done": True}
                continue
            cuts = _cuts(corpus, split)
            part = final.with_name(f".{split}.part.jsonl")
            done = _read_part(part)
            # by duration: a chunk's utterances are padded to its longest (the file is sorted by id)
            todo = sorted((c for c in cuts if c.id not in done), key=lambda c: (c.duration, c.id))
            chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
            part.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "a") as f:
                if jobs > 1:  # one pool for every split: a worker's start-up costs seconds
                    pool = pool or get_context("spawn").Pool(jobs, _init_worker, (backend, options))
                    _collect(pool.imap(_align_chunk, chunks), chunks, f, done, split, show_progress)
                else:
                    worker = cls(options)
                    _collect(map(worker.align, chunks), chunks, f, done, split, show_progress)
            failed = {u: v for u, v in done.items() if isinstance(v, str)}
            for why in list(failed.values())[:5]:
                log.warning("%s", why)
            save_alignments(corpus, name, split, {u: v for u, v in done.items() if not isinstance(v, str)}, failed)
            part.unlink()
            report[split] = {"aligned": len(done) - len(failed), "failed": len(failed)}
            log.info(
                "%s %s: %d aligned, %d failed (%s)",
                name,
                split,
                len(done) - len(failed),
                len(failed),
                final.with_name(f"{split}.failed.json"),
            )
    finally:
        if pool is not None:
            pool.terminate()  # every chunk has been collected, or the run is failing
    return report


def _collect(results, chunks, f, done: dict, split: str, show_progress: bool) -> None:
    for res in progress(results, total=len(chunks), desc=f"aligning {split}", enable=show_progress):
        for utt, ali in res.items():
            row = {"id": utt, "error": ali} if isinstance(ali, str) else {"id": utt} | to_json(ali)
            f.write(json.dumps(row) + "\n")
            done[utt] = ali
        f.flush()


def import_alignment(corpus, name: str, split: str, per_utt: dict[str, tuple[list, list]]) -> dict:
    """Store phone (and word) segments per utterance, made elsewhere, as the alignment ``name``."""
    corpus = CorpusDir(corpus)
    if corpus.alignment(name, split).exists():
        raise DataError(f"{corpus.alignment(name, split)} exists; import under another --name or remove it first")
    cuts = {c.id: c for c in load_split(corpus, split)}
    unknown = sorted(set(per_utt) - set(cuts))
    if unknown:
        raise DataError(
            f"{len(unknown)} aligned utterances are not in {corpus} {split} (e.g. {unknown[0]}): "
            "the alignment belongs to another corpus or split"
        )
    lexicon, aligned, failed = Lexicon(), {}, {}
    for utt, cut in cuts.items():
        if utt not in per_utt:
            failed[utt] = f"utterance {utt}: not in the imported alignment"
            continue
        phones, words = per_utt[utt]
        try:
            aligned[utt] = phones_to_alignment(utt, phones, cut.supervisions[0].text, cut.duration, lexicon, words)
        except DataError as e:
            failed[utt] = str(e)
    save_alignments(corpus, name, split, aligned, failed)
    return {"aligned": len(aligned), "failed": len(failed)}


def import_ctm(corpus, path, name: str, split: str) -> dict:
    return import_alignment(corpus, name, split, {u: (p, None) for u, p in read_ctm(path).items()})


def import_textgrids(corpus, directory, name: str, split: str) -> dict:
    """``{utterance}.TextGrid`` files (MFA's output) in ``directory``."""
    files = sorted(Path(directory).rglob("*.TextGrid"))
    if not files:
        raise DataError(f"{directory} holds no .TextGrid files")
    return import_alignment(corpus, name, split, {f.stem: read_textgrid(f) for f in files})


def score_alignments(corpus, ref: str, hyp: str, splits=None) -> dict[str, dict]:
    """Per split, ``hyp`` against ``ref``; writes ``score-{ref}.md`` and ``.json`` beside ``hyp``."""
    corpus = CorpusDir(corpus)
    splits = splits or [s for s in corpus.splits() if hyp in MANIFEST or corpus.alignment(hyp, s).exists()]
    if not splits:
        raise DataError(f"{corpus} has no alignment {hyp!r}: make it with `speechdistill align run`")
    scores = {}
    for s in splits:
        (ref_ali, _), (hyp_ali, failed) = any_alignment(corpus, ref, s), any_alignment(corpus, hyp, s)
        scores[s] = score_split(ref_ali, hyp_ali, failed)
    out = corpus.root / "alignments" / (hyp if hyp not in MANIFEST else "synth")
    atomic_write_text(out / f"score-{ref or 'synth'}.json", json.dumps(scores, indent=1) + "\n")
    atomic_write_text(out / f"score-{ref or 'synth'}.md", markdown(scores, ref or "synth", hyp or "synth"))
    return scores
