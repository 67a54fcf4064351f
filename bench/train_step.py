"""Training-step time and peak memory against utterance length and batch size, per encoder.

    python bench/train_step.py --kinds conformer transformer blstm --lengths 1 5 10 20 30 --batch 1 8

Each (encoder, length, batch) runs in a fresh process (so its peak resident memory is
its own): an `xs` acoustic model with subword CTC, random features of that length,
one warm-up step, then the median of `--repeats` steps of forward + backward + AdamW.
Peak memory = the process's high-water mark (VmHWM) minus its resident size before
the first step. The growth exponent between two lengths is log(t2/t1)/log(L2/L1):
1 is linear, 2 quadratic.

Where the time goes: one more forward pass with timing hooks on the encoder's parts
(convolutional subsampling, self-attention, Conformer convolution module,
feed-forward, LSTM) gives each part's share of the forward time; the rest (CTC head,
norms, residuals, positions) is "other". Forward only: backward has no module hooks
that time it cleanly, and its split follows the forward's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time


def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


PARTS = {
    "ConvSubsampling": "subsample",
    "SelfAttention": "attention",
    "ConvModule": "conv",
    "FeedForward": "ff",
    "LSTM": "lstm",
}


def forward_shares(model, feats, lens) -> dict[str, float]:
    """Share of one forward pass's wall time spent in each part of PARTS (and "other")."""
    spent = dict.fromkeys(PARTS.values(), 0.0)
    started: dict[int, float] = {}

    def enter(module, args):
        started[id(module)] = time.perf_counter()

    def leave(module, args, output):
        spent[PARTS[type(module).__name__]] += time.perf_counter() - started[id(module)]

    hooks = []
    for module in model.modules():
        if type(module).__name__ in PARTS:
            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    t0 = time.perf_counter()
    model(feats, lens)
    total = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    shares = {k: v / total for k, v in spent.items()}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def child(kind: str, seconds: float, batch: int, repeats: int) -> None:
    import torch

    from speechdistill.config import from_dict
    from speechdistill.distill.losses import ctc_loss
    from speechdistill.students.model import AcousticModel, ModelConfig

    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, {"encoder": {"kind": kind, "preset": "xs", "dropout": 0.0}})
    model = AcousticModel(cfg, {"subword": 256, "phone": 40, "senone": 500})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    T = int(seconds * 100)
    feats, lens = torch.randn(batch, T, 80), torch.full((batch,), T)
    U = max(1, int(seconds * 3))  # ~3 subwords per second
    targets, tlens = torch.randint(1, 256, (batch, U)), torch.full((batch,), U)
    base = _rss_kb("VmRSS")
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = model(feats, lens)
        loss = ctc_loss(out.main, out.lens, targets, tlens)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    peak_mb = (_rss_kb("VmHWM") - base) / 1024
    shares = forward_shares(model, feats, lens)
    print(json.dumps({"seconds": statistics.median(times), "peak_mb": peak_mb, "shares": shares}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["conformer", "transformer", "blstm"])
    p.add_argument("--lengths", nargs="+", type=float, default=[1, 5, 10, 20, 30])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], float(args.child[1]), int(args.child[2]), args.repeats)
        return
    parts = list(PARTS.values()) + ["other"]
    print(
        f"{'encoder':12s} {'batch':>5s} {'length s':>8s} {'step s':>8s} {'peak MB':>8s} {'growth':>7s}  "
        + " ".join(f"{p:>9s}" for p in parts)
        + "   (share of forward time)"
    )
    for kind in args.kinds:
        for batch in args.batch:
            prev = None
            for length in args.lengths:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--repeats",
                        str(args.repeats),
                        "--child",
                        kind,
                        str(length),
                        str(batch),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                growth = f"{math.log(r['seconds'] / prev[1]) / math.log(length / prev[0]):7.2f}" if prev else "      -"
                share = " ".join(f"{r['shares'][p]:9.0%}" for p in parts)
                print(
                    f"{kind:12s} {batch:5d} {length:8.0f} {r['seconds']:8.3f} {r['peak_mb']:8.0f} {growth}  {share}",
                    flush=True,
                )
                prev = (length, r["seconds"])


if __name__ == "__main__":
    main()
