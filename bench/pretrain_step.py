"""The SSL teacher's pre-training step: dropout on or off, one torch thread or two, side by side.

    python bench/pretrain_step.py --repeats 5
    python bench/pretrain_step.py --config configs/ssl/pretrain.yaml --seconds 4 4 4 4 4

The teacher of ``--config`` (default: `make demo-ssl`'s, configs/ssl/pretrain-pbert.yaml)
on random waveforms of ``--seconds`` each (one batch, the demo's 20 s), with random phone
and MFCC-codebook targets: forward, the masked-prediction loss, backward and AdamW, under
the precision ``precision: auto`` picks here. Each setting gets a warm-up step, then the
settings take turns for ``--repeats`` steps (machine noise hits all alike); medians and
their ratios against the first ``--dropout`` on one thread (0.1: HuBERT's and
pretrain.yaml's; the demo's teacher has none). Dropout is worth timing on
its own: on CPU, HF's attention dropout falls back from the fused SDPA kernel and draws a
Bernoulli mask per attention weight.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import numpy as np
import torch

from speechdistill.config import load_config
from speechdistill.engine import cpu_model, resolve_precision
from speechdistill.teachers.pretrain import HuBERTPretrainModel, MaskedPrediction, PretrainConfig, _Pretraining


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ssl/pretrain-pbert.yaml")
    p.add_argument("--seconds", type=float, nargs="+", default=[5.0, 5.0, 5.0, 5.0])
    p.add_argument("--dropout", type=float, nargs="+", default=[0.1, 0.0], help="the first is the reference")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    cfg = load_config(PretrainConfig, args.config)
    chosen, why = resolve_precision(cfg.precision, "cpu")
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if chosen.startswith("bf16") else contextlib.nullcontext
    lens = torch.tensor([int(s * 16000) for s in args.seconds])
    g = torch.Generator().manual_seed(0)
    wavs = 0.1 * torch.randn(len(lens), int(lens.max()), generator=g)
    settings = {}
    for dropout in args.dropout:
        torch.manual_seed(0)
        model = HuBERTPretrainModel(dataclasses.replace(cfg, dropout=dropout)).train()
        step_fn = _Pretraining(model, MaskedPrediction(cfg.logit_temperature))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for threads in (1, 2):
            settings[f"dropout {dropout:g}, {threads} thread{'s' * (threads > 1)}"] = (step_fn, opt, threads)
    T = model.num_frames(wavs.shape[1])
    labels = torch.randint(cfg.clusters, (len(lens), T), generator=g)
    mfcc = torch.randint(max(1, cfg.mfcc_clusters), (len(lens), T), generator=g) if cfg.mfcc_clusters else None

    def step(step_fn, opt, threads) -> float:
        torch.set_num_threads(threads)
        np.random.seed(0)  # HF's masks
        t0 = time.perf_counter()
        with ctx():
            loss, _ = step_fn(wavs, lens, labels, mfcc)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for s in settings.values():  # warm-up
        step(*s)
    times = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, s in settings.items():
            times[name].append(step(*s))
    med = {name: statistics.median(v) for name, v in times.items()}
    ref = next(iter(med.values()))
    print(f"CPU: {cpu_model()}; precision auto chose {chosen} ({why})")
    print(f"{args.config}: batch of {' + '.join(f'{s:g}' for s in args.seconds)} s, median of {args.repeats} steps")
    for name, t in med.items():
        print(f"  {name:24s} {t:.3f} s/step  {ref / t:.2f}x")


if __name__ == "__main__":
    main()
