"""Training-step cost of on-the-fly augmentation, measured side by side in one process.

    python bench/augment.py --corpus data/small --steps 30

The baseline recipe (configs/asr/baseline.yaml) three ways, each with its own engine and
task: stored features (the default, no augmentation); features computed on the fly from
clean audio; and the recipe with every augmentation on at its configured probability
(configs/asr/augment.yaml: speed, reverb, noise, gain, band-limiting, SpecAugment). Each
step is what training does: the next batch of the task's own epoch-0 loader (the
length-bucketed sampler, speed-perturbed durations included; the data work in the
training process) + forward + backward + optimizer step. The three take turns step by
step, who goes first rotating, so drift of the machine hits them alike. Then, from fresh engines and one after the
other, stored features and augmentation with the data work in one loader worker process.
Prints median step times and the ratios to stored features.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from speechdistill.config import load_config
from speechdistill.engine import cpu_model
from speechdistill.train import TrainConfig, setup

log = logging.getLogger("bench.augment")
WARMUP = 3  # steps not timed: allocator and kernel caches
RECIPES = {
    "stored_features": ("configs/asr/baseline.yaml", []),
    "on_the_fly": ("configs/asr/baseline.yaml", ["data.on_the_fly_features=true"]),
    "augmented": ("configs/asr/augment.yaml", []),
}


def cpu_name() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def step_times(names: list[str], common: list[str], steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each recipe, the recipes taking turns."""
    runs = {}
    for name in names:
        recipe, extra = RECIPES[name]
        engine, task = setup(load_config(TrainConfig, recipe, [*common, *extra]))
        runs[name] = (engine, iter(task.batches(0, 0)))
        log.info("%s: precision %s", name, engine.precision)
    times = {name: [] for name in names}
    for i in range(steps + WARMUP):
        # who goes first rotates: a step right after another recipe's may find the caches
        # in another state, and a fixed order would give that to the same recipe each time
        for name in names[i % len(names) :] + names[: i % len(names)]:
            engine, batches = runs[name]
            t0 = time.perf_counter()
            engine.forward_backward(next(batches))
            engine.optimizer_step()
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common = [f"data.corpus={args.corpus}", "progress=false", "out_dir=''", "data.alignment=own"]
    print(f"CPU: {cpu_name()}")
    med = {k: statistics.median(t) for k, t in step_times(list(RECIPES), common, args.steps).items()}
    worker = [*common, "data.num_workers=1"]
    names = ["stored_features", "augmented"]
    for k in names:  # one at a time: two loader workers at once would compete with each other
        med[f"worker_{k}"] = statistics.median(step_times([k], worker, args.steps)[k])
    for k in RECIPES:
        print(f"in process   {k:16s} median step {med[k] * 1000:7.1f} ms   ratio {med[k] / med['stored_features']:.3f}")
    for k in names:
        print(f"1 worker     {k:16s} median step {med[f'worker_{k}'] * 1000:7.1f} ms")
    ratio = med["worker_augmented"] / med["worker_stored_features"]
    print(f"augmentation / stored features, 1 loader worker: {ratio:.3f}")


if __name__ == "__main__":
    main()
