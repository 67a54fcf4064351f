"""SSL distillation under DDP, for test_ssl.py:
``torchrun --nproc-per-node 2 tests/ssl_ddp.py TEACHER CORPUS OUT [STUDENT]``, STUDENT one of
``fithubert`` (the default), ``supernet`` (a subnet drawn per step, which leaves layers
unused) and ``sandwich`` (a supernet under the sandwich rule). Each rank writes its
student's weights after training, so the test can check that DDP kept them equal."""

import dataclasses
import sys

from safetensors.torch import save_file

from speechdistill.data.batching import WaveData
from speechdistill.distill.ssl_distill import DistillConfig, distill
from speechdistill.engine import Engine
from speechdistill.students.ssl import StudentConfig
from speechdistill.teachers.pretrain import ssl_optim

teacher, corpus, out = sys.argv[1:4]
kind = sys.argv[4] if len(sys.argv) > 4 else "fithubert"
shape = {"num_layers": 2, "d_model": 16, "ff_dim": 32, "num_heads": 2, "conv_dim": 8}
students = {
    "fithubert": StudentConfig(kind="fithubert", **shape),
    "supernet": StudentConfig(kind="supernet", **shape),
    "sandwich": StudentConfig(kind="supernet", sandwich=True, **shape),
}
run = Engine.run


def run_and_save(self):
    state = run(self)
    weights = {k: v.detach().contiguous() for k, v in self.raw.state_dict().items()}
    save_file(weights, f"{out}/rank{self.fabric.global_rank}.safetensors")
    return state


Engine.run = run_and_save
distill(
    DistillConfig(
        teacher=teacher,
        out_dir=out,
        data=WaveData(corpus=corpus, max_duration=20.0),
        optim=dataclasses.replace(ssl_optim(1e-3), max_epochs=1, warmup_steps=1),
        progress=False,
        strategy="ddp",
        devices=2,
        student=students[kind],
    )
)
