"""Soft-label cache: size per hour of audio and write/read throughput, by top-k and dtype.

    python bench/cache.py --corpus data/small --units phone subword --top-k 1 4 8 16

Needs the unit LMs (`speechdistill lm train`). For every (unit, k, dtype) a cache of
the training split is written to a temporary directory (the corpus's own caches are
not touched). Write: seconds to serialise and write the file (the LM's forward pass,
the same for every k, is excluded). Read: seconds to open the file, check its
fingerprint and spread every utterance's labels over its 40 ms frames, as the
training loader does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--units", nargs="+", default=["senone", "phone", "subword"])
    p.add_argument("--top-k", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--temperature", type=float, default=3.0)
    args = p.parse_args()

    from speechdistill.data.layout import SoftLabelSpec
    from speechdistill.distill.soft_labels import SoftLabelCache, build_cache

    corpus = Path(args.corpus)
    print(
        f"{'unit':8s} {'k':>3s} {'dtype':8s} {'MB/hour':>8s} {'write MB/s':>11s} {'read utt/s':>11s} {'read MB/s':>10s}"
    )
    for unit in args.units:
        for k in args.top_k:
            for dtype in (torch.float16, torch.float32):
                with tempfile.TemporaryDirectory() as tmp:
                    prefix = Path(tmp) / "cache"
                    meta = build_cache(
                        corpus,
                        SoftLabelSpec(unit, k, args.temperature),
                        show_progress=False,
                        values_dtype=dtype,
                        prefix=prefix,
                    )
                    mb = meta["bytes"] / 1e6
                    t0 = time.perf_counter()
                    cache = SoftLabelCache.open(prefix, corpus)
                    utts = [key.split("/")[0] for key in cache.tensors if key.endswith("/spans")]
                    for u in utts:
                        dur = float(cache.tensors[f"{u}/spans"][-1].sum())
                        cache.frames(u, 0.04, int(dur / 0.04) + 1)
                    read = time.perf_counter() - t0
                name = str(dtype).replace("torch.", "")
                print(
                    f"{unit:8s} {k:3d} {name:8s} {mb / meta['hours']:8.2f} {mb / meta['write_seconds']:11.1f} "
                    f"{len(utts) / read:11.0f} {mb / read:10.1f}"
                )


if __name__ == "__main__":
    main()
