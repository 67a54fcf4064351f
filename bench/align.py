"""Forced aligners side by side: accuracy against the synthesiser's timings and speed.

    python bench/align.py --corpus data/small            # the own aligner (trains it if needed)
    python bench/align.py --corpus data/small --pocketsphinx
    python bench/align.py --name own-sup init_from=synth train_hours=0 gmm_components=16 gmm_iterations=15

For each backend: phone onsets within 10/20/40 ms of the synthesiser's exact timings on
the dev and test voices (never seen in training), mean and median onset error, failed
utterances; the own aligner's training time (from its history) and its alignment speed
on one core (features, likelihoods and a Viterbi search per utterance: the GMMs' MFCCs
are computed from the audio, a network's fbank read from disk, or computed where the
corpus has no stored features), as a real-time factor.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from speechdistill.align.own import Aligner
from speechdistill.align.run import align_corpus, score_alignments
from speechdistill.data.corpus import load_split
from speechdistill.data.features import load_cuts_with_features
from speechdistill.data.layout import CorpusDir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--pocketsphinx", action="store_true", help="also align dev and test with pocketsphinx")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--name", default="own", help="the own aligner's alignment name (one per set of options)")
    p.add_argument("overrides", nargs="*", help="own aligner options, key=value")
    args = p.parse_args()
    corpus = CorpusDir(args.corpus)
    align_corpus(corpus, "own", args.name, overrides=args.overrides, jobs=args.jobs, show_progress=False)
    model = corpus.root / "alignments" / args.name / "model"
    history = json.loads((model / "history.json").read_text())
    gmm = json.loads((model / "gmm.json").read_text()) if (model / "gmm.json").exists() else None
    gmm_time = f"{gmm['seconds'] / 60:.1f} min" if gmm else "time not recorded"
    rounds = (
        f", {len(history)} network rounds {sum(h['seconds'] for h in history) / 60:.1f} min "
        f"(frames changed per round: {[h.get('frames_changed') for h in history]})"
        if history
        else " (the GMMs align: no network rounds)"
    )
    print(f"own aligner: GMM-HMM stage {gmm_time}{rounds}")
    torch.set_num_threads(1)
    aligner = Aligner.load(model / "aligner")
    test = load_cuts_with_features(corpus, "test") if corpus.cuts("test").exists() else load_split(corpus, "test")
    cuts = sorted(test, key=lambda c: c.duration)  # as align_corpus chunks them
    t0 = time.perf_counter()
    aligner.align(cuts[:1])  # start-up, once per process: the lexicon (CMUdict) loads on first use
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(cuts), 16):
        aligner.align(cuts[i : i + 16])
    seconds = time.perf_counter() - t0
    audio = sum(c.duration for c in cuts)
    print(
        f"own aligner, one core: {audio / seconds:.0f}x real time ({audio / 60:.1f} min of test audio in {seconds:.1f} s, "
        f"after a start-up of {startup:.1f} s once per process)"
    )
    rows = {args.name: score_alignments(corpus, "synth", args.name, ["dev", "test"])}
    if args.pocketsphinx:
        done = all(corpus.alignment("pocketsphinx", split).exists() for split in ("dev", "test"))
        t0 = time.perf_counter()
        align_corpus(corpus, "pocketsphinx", splits=["dev", "test"], jobs=args.jobs, show_progress=False)
        took = "already aligned, not timed" if done else f"{time.perf_counter() - t0:.0f} s with {args.jobs} processes"
        print(f"pocketsphinx: dev + test: {took}")
        rows["pocketsphinx"] = score_alignments(corpus, "synth", "pocketsphinx", ["dev", "test"])
    print(
        "\n| aligner | split | utterances | failed | within 10 ms | within 20 ms | within 40 ms | mean abs ms | median ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, scores in rows.items():
        for split, r in scores.items():
            print(
                f"| {name} | {split} | {r['utterances']} | {r['failed']} | {r['within_10ms']:.1f}% | {r['within_20ms']:.1f}% "
                f"| {r['within_40ms']:.1f}% | {r['mean_abs_ms']:.1f} | {r['median_abs_ms']:.1f} |"
            )


if __name__ == "__main__":
    main()
