"""Training-step cost of on-the-fly augmentation, measured side by side in one process.

    python bench/augment.py --corpus data/small --steps 30

The baseline recipe (configs/asr/baseline.yaml) three ways on the same batches, alternating
so that machine noise hits all alike: stored features (the default, no augmentation);
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
import subprocess
import time

import torch
from lhotse import CutSet

from speechdistill.config import load_config
from speechdistill.train import TrainConfig, setup


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-seconds", type=float, default=40.0)
    args = p.parse_args()
    common = [f"data.corpus={args.corpus}", "progress=false", "out_dir=/tmp/bench_augment", "data.alignment=own"]
    runs = {
        "stored_features": setup(load_config(TrainConfig, "configs/asr/baseline.yaml", common)),
        "on_the_fly": setup(
            load_config(TrainConfig, "configs/asr/baseline.yaml", [*common, "data.on_the_fly_features=true"])
        ),
        "augmented": setup(load_config(TrainConfig, "configs/asr/augment.yaml", common)),
    }
    print(f"CPU: {cpu_name()}; precision {runs['stored_features'][0].precision}")
    cuts = sorted(runs["augmented"][1].train_cuts, key=lambda c: c.id)
    chunks, cur, dur = [], [], 0.0
    for c in cuts:
        cur.append(c)
        dur += c.duration
        if dur >= args.batch_seconds:
            chunks.append(CutSet.from_cuts(cur))
            cur, dur = [], 0.0
        if len(chunks) == args.steps:
            break
    times = {k: [] for k in runs}
    for chunk in chunks:
        for name, (engine, task) in runs.items():
            t0 = time.perf_counter()
            batch = task.dataset[chunk]
            engine.forward_backward(batch)
            engine.optimizer_step()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[3:]) for k, v in times.items()}  # the first steps warm up
    for k, v in med.items():
        print(f"in process   {k:16s} median step {v * 1000:7.1f} ms   ratio {v / med['stored_features']:.3f}")
    for name in ("stored_features", "augmented"):  # the data work in a worker, overlapped
        engine, task = runs[name]
        loader = torch.utils.data.DataLoader(task.dataset, sampler=chunks, batch_size=None, num_workers=1)
        walls, t0 = [], time.perf_counter()
        for batch in loader:
            engine.forward_backward(batch)
            engine.optimizer_step()
            walls.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
        med[f"worker_{name}"] = statistics.median(walls[3:])
    ratio = med["worker_augmented"] / med["worker_stored_features"]
    for name in ("stored_features", "augmented"):
        print(f"1 worker     {name:16s} median step {med[f'worker_{name}'] * 1000:7.1f} ms")
    print(f"augmentation / stored features, 1 loader worker: {ratio:.3f}")


if __name__ == "__main__":
    main()
