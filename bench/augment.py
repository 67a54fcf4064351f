"""Training-step cost of on-the-fly augmentation, measured side by side in one process.

    python bench/augment.py --corpus data/small --steps 30

The baseline recipe (configs/asr/baseline.yaml) three ways on the same batches in one
process, each with its own engine and its own copy of the cuts: stored features (the
default, no augmentation); features computed on the fly from clean audio; and the recipe
with every augmentation on at its configured probability (configs/asr/augment.yaml:
speed, reverb, noise, gain, band-limiting, SpecAugment). Each step is data preparation +
forward + backward + optimizer step in one process, the three recipes taking turns step
by step (so drift of the machine hits them alike). Then, from fresh engines, stored
features and augmentation through a DataLoader with one worker process, wall time per
step. Prints median times and the ratios to stored features.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from speechdistill.config import load_config
from speechdistill.engine import cpu_model
from speechdistill.train import TrainConfig, setup

WARMUP = 3  # steps not timed: allocator and kernel caches


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
    engines = {name: setup(load_config(TrainConfig, r, [*common, *extra])) for name, (r, extra) in recipes.items()}
    engine, task = engines["stored_features"]
    print(f"CPU: {cpu_name()}; precision {engine.precision}")
    ids = _chunks(sorted(task.train_cuts, key=lambda c: c.id), args.batch_seconds, args.steps + WARMUP)
    batches = {name: [task.train_cuts.subset(cut_ids=chunk) for chunk in ids] for name, (_, task) in engines.items()}
    times = {name: [] for name in recipes}
    for i in range(len(ids)):  # round robin: every recipe sees the machine in the same state
        for name, (engine, task) in engines.items():
            t0 = time.perf_counter()
            engine.forward_backward(task.dataset[batches[name][i]])
            engine.optimizer_step()
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in ("stored_features", "augmented"):  # the data work in a worker process, overlapped with training
        recipe, extra = recipes[name]
        engine, task = setup(load_config(TrainConfig, recipe, [*common, *extra]))  # from the start again
        chunks = [task.train_cuts.subset(cut_ids=chunk) for chunk in ids]  # each task's own cuts
        loader = torch.utils.data.DataLoader(task.dataset, sampler=chunks, batch_size=None, num_workers=1)
        walls, t0 = [], time.perf_counter()
        for batch in loader:
            engine.forward_backward(batch)
            engine.optimizer_step()
            walls.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
        med[f"worker_{name}"] = statistics.median(walls[WARMUP:])
    for k in recipes:
        print(f"in process   {k:16s} median step {med[k] * 1000:7.1f} ms   ratio {med[k] / med['stored_features']:.3f}")
    for k in ("stored_features", "augmented"):
        print(f"1 worker     {k:16s} median step {med[f'worker_{k}'] * 1000:7.1f} ms")
    ratio = med["worker_augmented"] / med["worker_stored_features"]
    print(f"augmentation / stored features, 1 loader worker: {ratio:.3f}")


def _chunks(cuts, seconds: float, n: int) -> list[list[str]]:
    """The ids of ``n`` batches of about ``seconds`` of audio each."""
    chunks, cur, dur = [], [], 0.0
    for c in cuts:
        cur.append(c.id)
        dur += c.duration
        if dur >= seconds:
            chunks.append(cur)
            cur, dur = [], 0.0
        if len(chunks) == n:
            break
    return chunks


if __name__ == "__main__":
    main()
