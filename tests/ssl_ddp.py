"""SSL distillation under DDP, for test_ssl.py:
``torchrun --nproc-per-node 2 tests/ssl_ddp.py TEACHER CORPUS OUT``. Each rank writes its
student's weights after training, so the test can check that DDP kept them equal."""

import sys

from safetensors.torch import save_file

import speechdistill.ssl_train as ssl_train
from speechdistill.students.ssl import StudentConfig

teacher, corpus, out = sys.argv[1:4]
run = ssl_train.Loop.run


def run_and_save(self, step, on_epoch_end=None):
    state = run(self, step, on_epoch_end)
    weights = {k: v.detach().contiguous() for k, v in self.raw.state_dict().items()}
    save_file(weights, f"{out}/rank{self.fabric.global_rank}.safetensors")
    return state


ssl_train.Loop.run = run_and_save
ssl_train.distill(ssl_train.DistillConfig(
    teacher=teacher, out_dir=out, data=ssl_train.WaveData(corpus=corpus, max_duration=20.0),
    optim=ssl_train.LoopConfig(lr=1e-3, epochs=1, warmup_steps=1, progress=False, strategy="ddp", devices=2),
    student=StudentConfig(kind="fithubert", num_layers=2, d_model=16, ff_dim=32, num_heads=2, conv_dim=8)))
