"""Loss and gradients of a fixed global batch, for test_train.py's DDP check.

Run as ``torchrun --nproc-per-node 2 tests/ddp_step.py CORPUS OUT`` (each rank
takes every second utterance) or ``python tests/ddp_step.py CORPUS OUT`` (one
process, the whole batch). Writes the mean loss and the (all-reduced) gradients, and
each rank's dev scores and decoded rows.
"""

import json
import sys

import torch
from lhotse import CutSet
from safetensors.torch import save_file

from speechdistill.config import from_dict
from speechdistill.train import TrainConfig, setup

corpus, out = sys.argv[1], sys.argv[2]
ddp = "LOCAL_RANK" in __import__("os").environ
cfg = from_dict(
    TrainConfig,
    {
        "out_dir": out,
        "progress": False,
        "strategy": "ddp" if ddp else "auto",
        "devices": 2 if ddp else 1,
        "data": {"corpus": corpus},
        "specaug": {"enabled": False},
        "model": {
            "encoder": {"preset": None, "num_blocks": 2, "d_model": 32, "num_heads": 2, "ff_dim": 64, "dropout": 0.0}
        },
        "optim": {"lr": 0.01, "warmup_steps": 0},
    },
)
engine, task = setup(cfg)
cuts = sorted(task.train_cuts, key=lambda c: c.id)[:8]
rank, world = engine.fabric.global_rank, engine.fabric.world_size
batch = task.dataset[CutSet.from_cuts(cuts[rank::world])]
_, terms = engine.forward_backward(batch)
# Gradients, not Adam's first update: Adam turns numerically-zero gradients
# (e.g. attention key biases) into +-lr steps whose sign is noise.
grads = {n: p.grad.detach().clone() for n, p in task.model.named_parameters() if p.grad is not None}
loss = engine.fabric.all_reduce(torch.tensor(terms["total"]), reduce_op="mean")
dev = task.validate(engine.model)  # each rank scores its share of dev; all get the totals
with open(f"{out}/dev{rank}.json", "w") as f:
    json.dump({"scores": dev, "rows": task.dev_rows}, f)
if engine.is_main:
    save_file(grads, f"{out}/grads.safetensors")
    with open(f"{out}/loss.json", "w") as f:
        json.dump({"loss": float(loss), "world_size": world}, f)
