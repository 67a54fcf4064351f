"""Corpus synthesis throughput: hours of audio per wall-clock minute.

    python bench/synthesis.py --utterances 400 --jobs 2

Builds a corpus of the `small` preset's voices (every utterance its own voice; Flite for
its share when installed) with ``--utterances`` training utterances into a temporary
directory, and prints the audio made per wall minute. The issue's floor: 1 hour per minute
on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

from speechdistill.data.corpus import PRESETS, build_corpus
from speechdistill.engine import cpu_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=400)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    n = args.utterances
    preset = replace(PRESETS["small"], num_train=n, num_dev=max(10, n // 10), num_test=max(10, n // 10))
    cpu = cpu_model()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = build_corpus(preset, out, jobs=args.jobs, show_progress=False)
        minutes = (time.perf_counter() - t0) / 60
    hours = sum(s["hours"] for s in summary["splits"].values())
    utts = sum(s["utterances"] for s in summary["splits"].values())
    print(f"CPU: {cpu}; {args.jobs} jobs")
    print(
        f"{utts} utterances, {hours:.3f} h of audio in {minutes:.2f} min: {hours / minutes:.2f} h of audio per minute"
    )


if __name__ == "__main__":
    main()
