"""fp32 against bf16 autocast on this CPU: the demo's training step, side by side.

    python bench/precision.py --batch 8 --seconds 5 --repeats 5

The demo's student (`xs` Conformer, subword CTC + a phone CTC head, as configs/asr/
baseline.yaml builds it) on random features: forward + backward + AdamW, one warm-up
step each, then the two precisions take turns for ``--repeats`` steps (machine noise
hits both alike); medians and their ratio, the CPU's model and its bf16 flags, and
what ``precision: auto`` chose here (engine.resolve_precision).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from speechdistill.config import from_dict
from speechdistill.distill.losses import ctc_loss
from speechdistill.engine import _BF16_CPU_FLAGS, cpu_flags, cpu_model, resolve_precision
from speechdistill.students.model import AcousticModel, ModelConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="length of every utterance")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, {"encoder": {"kind": "conformer", "preset": "xs", "dropout": 0.0}})
    model = AcousticModel(cfg, {"subword": 256, "phone": 40, "senone": 500})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    T = int(args.seconds * 100)
    feats, lens = torch.randn(args.batch, T, 80), torch.full((args.batch,), T)
    U = max(1, int(args.seconds * 3))
    targets, tlens = torch.randint(1, 256, (args.batch, U)), torch.full((args.batch,), U)
    modes = {"fp32": contextlib.nullcontext, "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}

    def step(ctx) -> float:
        t0 = time.perf_counter()
        with ctx():
            out = model(feats, lens)
            loss = ctc_loss(out.main.float(), out.lens, targets, tlens)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for ctx in modes.values():  # warm-up
        step(ctx)
    times = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, ctx in modes.items():
            times[name].append(step(ctx))
    med = {name: statistics.median(v) for name, v in times.items()}
    flags = sorted(f for f in _BF16_CPU_FLAGS if f in cpu_flags())
    chosen, why = resolve_precision("auto", "cpu")
    print(f"CPU: {cpu_model()}; bf16 flags: {', '.join(flags) or 'none'}; {torch.get_num_threads()} threads")
    print(f"batch {args.batch} x {args.seconds:g} s, median of {args.repeats} steps")
    for name, t in med.items():
        print(f"  {name:14s} {t:.3f} s/step")
    print(f"bf16 / fp32 = {med['bf16 autocast'] / med['fp32']:.2f}; precision auto chose {chosen} ({why})")


if __name__ == "__main__":
    main()
