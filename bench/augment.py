"""Training-step cost of on-the-fly augmentation, measured side by side in one process.

    python bench/augment.py --corpus data/small --steps 30

The baseline recipe (configs/asr/baseline.yaml) three ways on the same batches, one after
the other in one process: stored features (the default, no augmentation);
features computed on the fly from clean audio; and the recipe with every augmentation on
at its configured probability (configs/asr/augment.yaml: speed, reverb, noise, gain,
band-limiting, SpecAugment). Each step is data preparation + forward + backward +
optimizer step in one process (the worst case: a DataLoader worker would overlap the data
work with training). Then the same batches through a DataLoader with one worker process,
wall time per step. Prints median times and the ratios to stored features.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lhotse import CutSet

from speechdistill.config import load_config
from speechdistill.engine import cpu_model
from speechdistill.train import TrainConfig, setup


def cpu_name() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-seconds", type=float, default=40.0)
    args = p.parse_args()
    common = [f"data.corpus={args.corpus}", "progress=false", "out_dir=''", "data.alignment=own"]
    recipes = {
        "stored_features": ("configs/asr/baseline.yaml", []),
        "on_the_fly": ("configs/asr/baseline.yaml", ["data.on_the_fly_features=true"]),
        "augmented": ("configs/asr/augment.yaml", []),
    }
    chunks = None
    med = {}
    for name, (recipe, extra) in recipes.items():  # one engine at a time, the same batches
        engine, task = setup(load_config(TrainConfig, recipe, [*common, *extra]))
        if chunks is None:
            print(f"CPU: {cpu_name()}; precision {engine.precision}")
            chunks = _chunks(sorted(task.train_cuts, key=lambda c: c.id), args.batch_seconds, args.steps)
        times = []
        for chunk in chunks:
            t0 = time.perf_counter()
            engine.forward_backward(task.dataset[chunk])
            engine.optimizer_step()
            times.append(time.perf_counter() - t0)
        med[name] = statistics.median(times[3:])  # the first steps warm up
        if name != "on_the_fly":  # the data work in a worker process, overlapped with training
            loader = torch.utils.data.DataLoader(task.dataset, sampler=chunks, batch_size=None, num_workers=1)
            walls, t0 = [], time.perf_counter()
            for batch in loader:
                engine.forward_backward(batch)
                engine.optimizer_step()
                walls.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
            med[f"worker_{name}"] = statistics.median(walls[3:])
    for k in recipes:
        print(f"in process   {k:16s} median step {med[k] * 1000:7.1f} ms   ratio {med[k] / med['stored_features']:.3f}")
    for k in ("stored_features", "augmented"):
        print(f"1 worker     {k:16s} median step {med[f'worker_{k}'] * 1000:7.1f} ms")
    ratio = med["worker_augmented"] / med["worker_stored_features"]
    print(f"augmentation / stored features, 1 loader worker: {ratio:.3f}")


def _chunks(cuts, seconds: float, n: int) -> list[CutSet]:
    chunks, cur, dur = [], [], 0.0
    for c in cuts:
        cur.append(c)
        dur += c.duration
        if dur >= seconds:
            chunks.append(CutSet.from_cuts(cur))
            cur, dur = [], 0.0
        if len(chunks) == n:
            break
    return chunks


if __name__ == "__main__":
    main()
