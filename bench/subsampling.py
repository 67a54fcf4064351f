"""The convolutional subsampling's first Conv2d (one input channel) against the same
convolution written as an unfold + matmul ("im2col"), forward and backward, side by side
in one process: a lever the notes listed for the demo's time on CPUs without native bf16.
Measured (docs/benchmarks.md, twenty-seventh session): it is not one (0.97x in fp32,
1.14x under bf16 autocast, 1.13x with oneDNN and ATen held to AVX2), so the model keeps
its Conv2d; the script stays as the record of how that was measured.

    python bench/subsampling.py                  # the xs student's front end, a 20 s batch
    python bench/subsampling.py --threads 1 --precision bf16

A profile of the long recipe's step on an AVX2-only EPYC (docs/notes.md, twenty-fifth
session) put the subsampling at about a fifth of a step, its convolutions' backward 3.4x
their forward. A 3x3 kernel over one channel is 9 multiply-adds per output: oneDNN's
direct convolution has little to vectorise over, while the matmul form puts the 64 output
channels in the inner dimension. Both arms share the weights and see the same input and
output gradient; they take turns (who goes first alternates), and the script prints the
median milliseconds of forward + backward of the whole subsampling module, the ratio, and
how far the outputs and weight gradients differ (float sums in another order).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from speechdistill.students.encoders import ConvSubsampling, padding_mask


def im2col_forward(sub: ConvSubsampling, x: torch.Tensor, lens: torch.Tensor):
    """ConvSubsampling.forward with its first Conv2d as unfold + matmul (same weights)."""
    x = x.masked_fill(padding_mask(lens, x.shape[1])[..., None], 0.0)
    first = sub.convs[0]
    patches = x.unfold(1, 3, 2).unfold(2, 3, 2)  # (N, T', F', 3, 3)
    N, T, f = patches.shape[:3]
    w = first.weight.reshape(first.out_channels, 9)
    y = F.relu(patches.reshape(N, T, f, 9) @ w.t() + first.bias)  # (N, T', F', ch)
    y = sub.convs[2:](y.permute(0, 3, 1, 2))  # after the first Conv2d and its ReLU
    N, ch, T, f = y.shape
    return sub.out(y.transpose(1, 2).reshape(N, T, ch * f)), sub.out_lengths(lens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="utterances per batch")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each (100 frames a second)")
    ap.add_argument("--d-model", type=int, default=144, help="the encoder width (xs: 144)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sub = ConvSubsampling(80, args.d_model, 4)
    T = int(args.seconds * 100)
    x = torch.randn(args.batch, T, 80)
    lens = torch.full((args.batch,), T)
    lens[-1] = T - 37  # one padded utterance, as in a real batch
    grad = torch.randn_like(sub(x, lens)[0])
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else contextlib.nullcontext
    )

    def run(forward):
        sub.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with autocast():
            y, _ = forward(x, lens)
        y.backward(grad.to(y.dtype))
        return time.perf_counter() - t0, y.detach().float(), [p.grad.clone() for p in sub.parameters()]

    arms = {"conv2d": sub.forward, "im2col": lambda a, b: im2col_forward(sub, a, b)}
    times = {k: [] for k in arms}
    for step in range(args.steps + 3):
        order = list(arms) if step % 2 == 0 else list(arms)[::-1]
        for k in order:
            dt, y, g = run(arms[k])
            if step >= 3:  # warm-up steps not counted
                times[k].append(dt)
    (_, y0, g0), (_, y1, g1) = run(arms["conv2d"]), run(arms["im2col"])
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"batch {args.batch} x {args.seconds} s, {args.precision}, {torch.get_num_threads()} threads")
    for k, v in med.items():
        print(f"{k:7s} {v:8.2f} ms forward + backward (median of {args.steps})")
    print(f"im2col / conv2d: {med['im2col'] / med['conv2d']:.3f}")
    print(f"max |output difference| {(y0 - y1).abs().max().item():.2e}")
    print(
        f"max |weight-gradient difference| {max((a - b).abs().max().item() for a, b in zip(g0, g1, strict=True)):.2e}"
    )


if __name__ == "__main__":
    main()
