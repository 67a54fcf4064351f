"""The optimizer step of the acoustic model: AdamW's per-parameter loop (torch's CPU
default, what every recipe uses unless ``optim.fused``), its ``foreach`` form and its
fused kernel (``optim.fused: true``), measured side by side in one process.

    python bench/optimizer.py --config configs/asr/long_medium_aug.yaml --steps 50

The model is the config's, taps included, built without data (its vocabulary sizes are
given); each implementation gets its own copy of the same initial weights and the same
seeded gradients, and the three take turns step by step, so drift of the machine hits
them alike. A step is what the engine does after backward: clip the gradient norm, then
AdamW. Prints the median milliseconds per step, the ratios to the loop, and how far each
one's weights end from the loop's (0: bit-identical).

With ``--train-steps N`` (needs the config's corpus), also whole training steps: two
engines of the config, ``optim.fused`` false and true, each on the same batches of the
task's epoch-0 loader (data work not timed), forward + backward + optimizer step, taking
turns (which goes first alternates; 30 steps without that read 0.98x and 1.11x in two
runs, 80 with it 1.05x); prints the median seconds per step and their ratio. ``--profile N`` then runs N
more steps of the loop's engine under torch.profiler and prints the operators that take
the most time of the step (self CPU time): where a step of the recipe goes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from speechdistill.config import load_config
from speechdistill.engine import cpu_model
from speechdistill.students.model import AcousticModel
from speechdistill.train import TrainConfig, setup

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/asr/long_medium_aug.yaml")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=500, help="size of every unit's output layer")
    ap.add_argument("--train-steps", type=int, default=0, help="also time this many whole training steps")
    ap.add_argument("--profile", type=int, default=0, help="then profile this many steps (needs --train-steps)")
    args = ap.parse_args()
    if args.profile and not args.train_steps:
        ap.error("--profile profiles whole training steps: give --train-steps too")
    cfg = load_config(TrainConfig, args.config, [])
    units = {cfg.model.main_unit} | {t.unit for t in cfg.model.taps}
    torch.manual_seed(0)
    model = AcousticModel(cfg.model, {u: args.vocab for u in units})
    o = cfg.optim
    runs = {}
    for name, kw in IMPLEMENTATIONS.items():
        m = copy.deepcopy(model)
        runs[name] = (
            m,
            torch.optim.AdamW(m.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, o.beta2), **kw),
        )
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g) * 0.1 for p in model.parameters()] for _ in range(3)]
    times = {name: [] for name in runs}
    for i in range(args.steps + 3):
        for name, (m, opt) in runs.items():
            for p, gr in zip(m.parameters(), grads[i % 3], strict=True):
                p.grad = gr.clone()
            t0 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(m.parameters(), o.grad_clip)
            opt.step()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"{args.config}: {n / 1e6:.2f} M parameters in {len(list(model.parameters()))} tensors; "
        f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.steps} steps"
    )
    loop = statistics.median(times["loop"])
    ref = runs["loop"][0]
    for name, (m, _) in runs.items():
        t = statistics.median(times[name])
        diff = max(float((a - b).detach().abs().max()) for a, b in zip(m.parameters(), ref.parameters(), strict=True))
        print(f"  {name:8s} {t * 1e3:7.2f} ms/step  {loop / t:5.2f}x the loop's speed  max |w - w_loop| = {diff:.1e}")
    if args.train_steps:
        whole_steps(args.config, args.train_steps, args.profile)


def whole_steps(config: str, steps: int, profile: int = 0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for fused in (False, True):
            over = [f"out_dir={tmp}/{fused}", f"optim.fused={str(fused).lower()}", "progress=false"]
            engines[fused], task = setup(load_config(TrainConfig, config, over))
        batches = iter(task.batches(0, 0))
        times = {fused: [] for fused in engines}
        for i in range(steps + 3):
            batch = next(batches)
            for fused, engine in sorted(engines.items(), reverse=i % 2 == 1):  # who goes first alternates
                t0 = time.perf_counter()
                engine.forward_backward(batch)
                engine.optimizer_step()
                if i >= 3:
                    times[fused].append(time.perf_counter() - t0)
        if profile:
            batches_ = [next(batches) for _ in range(profile)]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for batch in batches_:
                    engines[False].forward_backward(batch)
                    engines[False].optimizer_step()
        for engine in engines.values():
            engine.close()
    loop, fused = (statistics.median(times[f]) for f in (False, True))
    print(f"whole training steps ({steps}, after 3 untimed; the task's batches, data work not timed):")
    print(
        f"  loop  {loop * 1e3:7.1f} ms/step\n  fused {fused * 1e3:7.1f} ms/step  {loop / fused:5.3f}x the loop's speed"
    )
    if profile:
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        print(f"where {profile} steps of the loop's engine go (torch.profiler, self CPU time, top 10):")
        for e in ops[:10]:
            print(f"  {e.key:40s} {100 * e.self_cpu_time_total / total:5.1f}%  {e.count / profile:6.1f} calls/step")


if __name__ == "__main__":
    main()
