"""The slowest path found by profiling (docs/benchmarks.md): the Viterbi CTC alignment that
label interpolation (`interp`) runs on every utterance of every batch. Before and after.

    python bench/viterbi.py --utterances 50

Times ``reference_viterbi`` (the first implementation, kept here verbatim: a torch op
and a Python list of S booleans per frame) against ``speechdistill.distill.losses.ctc_viterbi``
on the same random log-probs of `small`-like sizes (T = 85 frames, U = 20 subwords,
V = 257), checks that they return the same alignment, and prints the speed-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from speechdistill.distill.losses import ctc_viterbi


def reference_viterbi(log_probs: torch.Tensor, targets: list[int]) -> list[int]:
    """Most probable CTC alignment of ``targets`` to (T, V) log-probs (blank = 0).
    Returns, per frame, the index of the target position it emits, or -1 for blank.
    Written by hand: torchaudio's ``forced_align`` cannot be installed beside torch 2.13."""
    T, U = log_probs.shape[0], len(targets)
    S = 2 * U + 1  # blank, y1, blank, y2, ..., yU, blank
    labels = [0 if s % 2 == 0 else targets[s // 2] for s in range(S)]
    lp = log_probs.detach().float().cpu()
    neg = float("-inf")
    score = torch.full((T, S), neg)
    back = torch.zeros((T, S), dtype=torch.long)
    score[0, 0] = lp[0, 0]
    if S > 1:
        score[0, 1] = lp[0, labels[1]]
    for t in range(1, T):
        prev = score[t - 1]
        stay = prev
        step = torch.cat([torch.tensor([neg]), prev[:-1]])
        skip = torch.cat([torch.tensor([neg, neg]), prev[:-2]])
        # a skip over a blank is allowed only between different labels
        allowed = torch.tensor([s % 2 == 1 and s >= 2 and labels[s] != labels[s - 2] for s in range(S)])
        skip = torch.where(allowed, skip, torch.tensor(neg))
        cands = torch.stack([stay, step, skip])  # (3, S)
        best, arg = cands.max(0)
        score[t] = best + lp[t, labels]
        back[t] = arg
    end = S - 1 if S == 1 or score[T - 1, S - 1] >= score[T - 1, S - 2] else S - 2
    path = [0] * T
    s = end
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return [p // 2 if p % 2 == 1 else -1 for p in path]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=50)
    p.add_argument("--frames", type=int, default=85)
    p.add_argument("--targets", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    cases = [
        (torch.randn(args.frames, 257).log_softmax(-1), torch.randint(1, 257, (args.targets,)).tolist())
        for _ in range(args.utterances)
    ]
    times = {}
    for name, fn in (("reference", reference_viterbi), ("speechdistill", ctc_viterbi)):
        t0 = time.perf_counter()
        out = [fn(lp, tg) for lp, tg in cases]
        times[name] = (time.perf_counter() - t0) / len(cases)
        if name == "reference":
            ref = out
    assert out == ref, "the two implementations disagree"
    for name, t in times.items():
        print(f"{name:14s} {t * 1000:8.2f} ms per utterance")
    print(f"speed-up {times['reference'] / times['speechdistill']:.1f}x (same alignments)")


if __name__ == "__main__":
    main()
