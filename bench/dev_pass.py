"""The end-of-epoch dev pass: one forward for loss and decoding against the two it took.

    python bench/dev_pass.py --config configs/asr/baseline.yaml --repeats 3

The config's task on its corpus (the demo's baseline on `small` by default), its model as
set up (trained weights from ``--checkpoint``, else the initial ones: the cost of a pass
hardly depends on them), on this process's threads. ``AsrTask.validate`` as it is now
(dev loss terms and greedy decoding from the same forward) against what it was before: a
loss pass over dev, then ``decode_cuts`` through the inference model (a second forward).
The two take turns, who goes first alternating; prints the median seconds of each, their
ratio, and whether they scored the same dev error (they must in fp32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from speechdistill.checkpoint import load_checkpoint, load_model_state
from speechdistill.config import load_config
from speechdistill.engine import cpu_model
from speechdistill.evaluate import decode_cuts
from speechdistill.train import TrainConfig, compute_loss, setup


@torch.no_grad()
def two_passes(task, model) -> float:
    """The dev pass before the twenty-sixth session: loss terms, then a decode."""
    model.eval()
    for batch in task._loader(task.dev_cuts, False, 0, dataset=task.dev_dataset):
        compute_loss(model, batch.to(task.engine.fabric.device), task.cfg, task.engine.state.step, task.teacher)
    scores = decode_cuts(
        task.model.without_taps(),
        task.dev_dataset,
        task.dev_cuts,
        task.cfg.model.main_unit,
        task.units,
        max_duration=task.cfg.data.max_duration,
    )
    model.train()
    return scores["error_rate"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/asr/baseline.yaml")
    p.add_argument("--checkpoint", default="", help="a run's `best` or `last` (its model weights are loaded)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="key=value on the config")
    args = p.parse_args()
    cfg = load_config(TrainConfig, args.config, ["progress=false", "out_dir=''", *args.overrides])
    engine, task = setup(cfg)
    if args.checkpoint:
        tensors, _ = load_checkpoint(args.checkpoint)
        load_model_state(task.model, tensors, "model.", args.checkpoint)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; precision {engine.precision}")
    print(f"dev: {len(task.dev_cuts)} utterances, batches of at most {cfg.data.max_duration:g} s")
    ways = {
        "one pass (validate)": lambda: task.validate(engine.model)["dev_error"],
        "two passes (before)": lambda: two_passes(task, engine.model),
    }
    times = {k: [] for k in ways}
    errors = {}
    for i in range(args.repeats):
        for name in list(ways)[i % 2 :] + list(ways)[: i % 2]:
            t0 = time.perf_counter()
            errors[name] = ways[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ways:
        print(f"{k:22s} median {med[k]:7.2f} s   dev error {errors[k]:.2f}")
    one, two = med["one pass (validate)"], med["two passes (before)"]
    print(f"one pass / two passes = {one / two:.3f}")
    engine.close()


if __name__ == "__main__":
    main()
