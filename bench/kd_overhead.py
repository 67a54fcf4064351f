"""Training-step cost of distillation, measured side by side in one process.

    python bench/kd_overhead.py --corpus data/small --steps 30

Needs the three unit LMs and their soft-label caches (see configs/hier.yaml).
Prints the median step time of `baseline`, of `hier` with cached soft labels,
and of `hier` with the LMs run online (soft labels computed for each batch),
and the ratios to the baseline. The configs alternate on the same batches so
that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lhotse import CutSet

from speechdistill.config import load_config
from speechdistill.train import TrainConfig, Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-utterances", type=int, default=12)
    args = p.parse_args()
    common = [f"data.corpus={args.corpus}", "progress=false", "out_dir=/tmp/kd_overhead"]
    base = Trainer(load_config(TrainConfig, "configs/baseline.yaml", common))
    hier = Trainer(load_config(TrainConfig, "configs/hier.yaml", common))
    from speechdistill.distill.soft_labels import reference_positions
    from speechdistill.teachers.lm import top_k_soft_labels
    from speechdistill.teachers.lm_train import load_lm

    lms = {t.unit: load_lm(f"{args.corpus}/lm/{t.unit}")[0] for t in hier.cfg.model.taps}
    cuts = sorted(base.train_cuts, key=lambda c: c.id)
    times = {"baseline": [], "hier_cached": [], "hier_online_lm": []}
    for i in range(args.steps):
        chunk = CutSet.from_cuts(cuts[i * args.batch_utterances : (i + 1) * args.batch_utterances])
        for name, trainer in (("baseline", base), ("hier_cached", hier)):
            t0 = time.perf_counter()
            batch = trainer.dataset[chunk]
            trainer.forward_backward(batch)
            trainer.optimizer_step()
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # online: the LMs score every reference sequence of the batch
        with torch.no_grad():
            for tap in hier.cfg.model.taps:
                for cut in chunk:
                    ids, _ = reference_positions(cut, tap.unit, hier.units)
                    top_k_soft_labels(lms[tap.unit].position_logits(torch.tensor([ids]))[0], tap.top_k,
                                      tap.temperature)
        batch = hier.dataset[chunk]
        hier.forward_backward(batch)
        hier.optimizer_step()
        times["hier_online_lm"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[3:]) for k, v in times.items()}  # first steps warm up
    for k, v in med.items():
        print(f"{k:16s} median step {v * 1000:7.1f} ms   ratio to baseline {v / med['baseline']:.3f}")


if __name__ == "__main__":
    main()
