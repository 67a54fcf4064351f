"""Two one-thread training runs side by side against one run on every thread, and the
subsampling's width: how `make demo` runs its LMs and runs, and why.

    python bench/parallel.py --corpus data/small --steps 100 --channels 64 32

Each measurement is a fresh process training the demo's baseline (configs/asr/
baseline.yaml: the `xs` Conformer, subword CTC + the phone CTC head, precision auto) on
the corpus's real batches for ``--steps`` steps, timed from its log between step 10 and
the last (batches and steps; not the start-up or the end-of-run dev pass). "one run" uses
every usable CPU's thread; "side by side" starts one one-thread run per CPU at once.
Throughput = steps per second over all runs; the ratio of side by side to one run is
what the demo gains by running jobs in parallel. Then each subsampling width
(``--channels``) alone at one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def worker(threads: int, channels: int, steps: int, corpus: str) -> float:
    """Seconds per training step of one run, from its log's step stamps (log_every 10)
    after the first 10 steps: neither the start-up nor the end-of-run dev pass."""
    import csv
    import tempfile

    import torch

    from speechdistill.config import load_config
    from speechdistill.train import TrainConfig, train

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"data.corpus={corpus}", f"optim.max_steps={steps}", f"out_dir={out}"]
        overrides += [
            "progress=false",
            "precision=auto",
            "log_every=10",
            f"model.encoder.subsampling_channels={channels}",
        ]
        train(load_config(TrainConfig, "configs/asr/baseline.yaml", overrides))
        with open(f"{out}/log.csv") as f:
            stamps = {int(r["step"]): float(r["time"]) for r in csv.DictReader(f) if r["key"] == "total"}
    first, last = min(stamps), max(stamps)
    return (stamps[last] - stamps[first]) / (last - first)


def run(n: int, threads: int, channels: int, args) -> list[float]:
    """``n`` runs at once; each one's seconds per step."""
    cmd = [sys.executable, __file__, "--worker", str(threads), str(channels), str(args.steps), "--corpus", args.corpus]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [json.loads(p.communicate()[0].splitlines()[-1]) for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/small")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 32])
    p.add_argument("--worker", type=int, nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.corpus)))
        return
    from speechdistill.engine import cpu_model
    from speechdistill.parallel import usable_cpus

    cpus, ch = usable_cpus(), args.channels[0]
    print(f"CPU: {cpu_model()}, {cpus} usable; the demo's baseline on {args.corpus}, {args.steps} steps a run")
    one = run(1, cpus, ch, args)[0]
    side = run(cpus, 1, ch, args)
    tp_one, tp_side = 1 / one, sum(1 / t for t in side)
    print(f"one run, {cpus} threads:         {one:.3f} s/step, {tp_one:.2f} steps/s")
    print(f"{cpus} runs side by side, 1 thread: {statistics.median(side):.3f} s/step each, {tp_side:.2f} steps/s")
    print(f"side by side / one run: {tp_side / tp_one:.2f}x the throughput")
    widths = {c: run(1, 1, c, args)[0] for c in args.channels}
    for c, t in widths.items():
        print(f"subsampling {c:3d} channels, 1 thread: {t:.3f} s/step ({t / widths[ch]:.2f}x)")


if __name__ == "__main__":
    main()
