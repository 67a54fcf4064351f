"""The one training loop, for every task: acoustic models, SSL pre-training and
distillation, unit LMs, probes. Lightning Fabric underneath: CPU or GPUs, one process or
DDP over many GPUs and nodes (``torchrun``-compatible), fp32 or bf16.

    >>> engine = Engine(cfg)                   # an EngineConfig (or a task config extending it)
    >>> task = MyTask(cfg, engine)             # gives its model, batches and loss
    >>> state = engine.fit(task, resume=True)  # setup(task) + run()

A task supplies ``model``, ``batches(epoch, skip)`` and ``step(model, batch) -> (loss,
terms)``; optionally ``validate``, ``monitor`` (a validation key that picks the best
epoch and stops early), ``on_best``, ``on_epoch_end`` and state of its own. The engine
owns the rest, once: Fabric, the "every rank still has a batch" barrier, gradient
accumulation, clipping, the learning-rate schedule, per-epoch reseeding (when the task
asks), checkpoint/resume of the training state (``{out_dir}/last``), the CSV log (and
TensorBoard when installed), progress and early stopping. Every term a step returns
reaches the log. Resuming continues a killed run to the weights of an uninterrupted one,
and a run stopped by ``max_steps`` inside an epoch, given a larger one, to those of a run
given that budget from the start (under a schedule that max_steps does not shape).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning_fabric import Fabric
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from speechdistill.checkpoint import (
    finish_interrupted_save,
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)
from speechdistill.config import config_changes, read_yaml, save_config, to_dict
from speechdistill.utils import DirLock, UsageError

log = logging.getLogger(__name__)
SCHEDULES = ("noam", "linear", "constant")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic. Without one, PyTorch emulates
# bf16 on CPU and autocast is slower than fp32 (8x measured on an AVX2-only AMD EPYC).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpuinfo_field(keys: tuple[str, ...], cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first CPU's value of the first of ``keys`` in /proc/cpuinfo; "" where the file
    or the key is absent (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first CPU (x86 ``flags``, Arm ``Features``)."""
    return set(_cpuinfo_field(("flags", "Features"), cpuinfo).split())


def cpu_model() -> str:
    """The CPU's model name (as `lscpu` prints it), for timings; "?" where unknown."""
    return _cpuinfo_field(("model name",)) or "?"


def resolve_precision(precision: str, accelerator: str, flags: set[str] | None = None) -> tuple[str, str]:
    """The Fabric precision for ``precision`` ("auto" resolved) and why. On CPU, "auto" is
    bf16 autocast only with native bf16 instructions; on a GPU, bf16 where supported, else
    fp16 mixed precision."""
    if precision != "auto":
        return precision, "set in the config"
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "the GPU supports bf16"
        return "16-mixed", "the GPU has no bf16: fp16 mixed precision"
    flags = cpu_flags() if flags is None else flags
    native = sorted(f for f in _BF16_CPU_FLAGS if f in flags)
    if native:
        return "bf16-mixed", f"the CPU has native bf16 ({', '.join(native)})"
    return "32-true", "the CPU has no native bf16 instructions, where bf16 autocast is slower than fp32"


@dataclass
class OptimConfig:
    lr: float = 2e-3  # peak learning rate, reached after warmup
    weight_decay: float = 1e-3  # AdamW's
    beta2: float = 0.999  # AdamW's second-moment decay (torch's default; ESPnet's Conformers use 0.98)
    warmup_steps: int = 300
    grad_clip: float = 5.0  # max gradient norm; 0: no clipping
    accumulate: int = 1
    max_epochs: int = 30
    max_steps: int = 0  # 0: no limit
    early_stop_patience: int = 4  # epochs without a better monitored score; 0: never stop early
    # noam: warmup then lr * sqrt(warmup / step); linear: warmup then a straight line down to
    # final_lr_ratio * lr at the last step of max_epochs (better when the budget is short);
    # constant: warmup then lr
    schedule: str = "noam"
    final_lr_ratio: float = 0.05
    # torch's fused AdamW kernel (CPU and CUDA): the optimizer step of the xs student 2.4-2.7x
    # faster on 2 AVX2 cores, a whole training step 1.05x (bench/optimizer.py). Its arithmetic
    # differs from the per-parameter loop in the last bits (~1e-7 after a few steps), so
    # the recipes whose tables the README prints keep the loop.
    fused: bool = False

    def __post_init__(self):
        if self.lr <= 0 or self.accumulate < 1 or self.max_epochs < 1 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, accumulate >= 1, max_epochs >= 1, warmup_steps >= 0")
        if not 0.0 < self.beta2 < 1.0:
            raise ValueError(f"beta2={self.beta2} must be in (0, 1)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError("final_lr_ratio must be in [0, 1]")


@dataclass
class EngineConfig:
    """How a task is trained; every task's config extends it."""

    out_dir: str = "exp/run"  # "": no checkpoints and no log files
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    # "auto": bf16 autocast where the hardware computes bf16 natively (a GPU that supports it,
    # a CPU with AVX512-BF16 / AMX / Arm BF16), else fp32 (see ``resolve_precision``)
    precision: str = "32-true"  # or "auto", "bf16-mixed", "16-mixed"
    # "cpu", "gpu", "auto". Not "auto" by default: only the acoustic-model loop (train.py,
    # evaluate) has run on a GPU; the LM, probe and SSL tasks have not (tools/gpu_smoke_on_device.sh).
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several processes
    log_every: int = 25
    checkpoint_every: int = 100  # steps; 0: at epoch ends only
    progress: bool = True
    debug_kill_at_step: int = 0  # tests: SIGKILL this process when the step is reached

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; valid: {', '.join(PRECISIONS)}")

    def leaves_parameters_unused(self) -> bool:
        """Whether a training step may leave some of the model's parameters without a
        gradient (then DDP must look for them each step, or it waits for them forever)."""
        return False


RUN_STARTS = ("auto", "new", "resume", "overwrite")
# what makes a directory hold a run (config.yaml alone is written before any work)
RUN_FILES = ("last.json", "last.safetensors", "log.csv", "best.json", "best.safetensors", "train_summary.json")


class NonFiniteLossError(UsageError, RuntimeError):
    pass


def lr_lambda(warmup: int, schedule: str = "noam", total_steps: int = 0, final: float = 0.05):
    """The learning-rate factor at a step: linear warmup to 1, then inverse square root
    decay (``noam``, Vaswani et al. 2017), a straight line from 1 at the end of the warmup
    to ``final`` at ``total_steps``, held after it (``linear``), or 1 (``constant``)."""

    def f(step: int) -> float:
        step = step + 1
        if step < warmup:
            return step / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "noam":
            return math.sqrt(warmup / step) if warmup > 0 else 1.0
        span = max(1, total_steps - warmup)
        return max(final, 1.0 - (1.0 - final) * (step - warmup) / span)

    return f


class Task:
    """What the engine trains. Subclasses set ``model`` and implement ``batches`` and ``step``;
    they are built with the engine (``self.engine``: its fabric, state and wrapped model)."""

    kind = "task"  # written into checkpoints
    model: torch.nn.Module
    engine: Engine
    forward_methods: tuple[str, ...] = ()  # methods the step calls instead of forward (DDP must see them)
    reseed_each_epoch = False  # reseed torch and numpy per (seed, epoch, rank) before each epoch
    monitor: str | None = None  # validation key that picks the best epoch (and stops early)
    higher_is_better = False

    def batches(self, epoch: int, skip: int) -> Iterable:
        """This rank's batches of ``epoch``, after the first ``skip`` (a resumed epoch)."""
        raise NotImplementedError

    def num_batches(self) -> int:
        """Batches of epoch 0 on this rank (what a linear schedule spans)."""
        return sum(1 for _ in self.batches(0, 0))

    def step(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a batch and its named terms (floats, for the log)."""
        raise NotImplementedError

    def describe(self, batch) -> str:
        """Names the batch in error messages."""
        return ""

    def validate(self, model) -> dict[str, float]:
        return {}

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups; a group may set its own ``lr`` (scheduled alike).
        Learned loss weights (a model's ``loss_log_vars``) take no weight decay: it would pull
        every weight to 1."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        learned = [p for n, p in named if n == "loss_log_vars"]
        rest = [{"params": [p for n, p in named if n != "loss_log_vars"]}]
        return rest + ([{"params": learned, "weight_decay": 0.0}] if learned else [])

    def on_best(self, engine: Engine) -> None:
        pass

    def on_epoch_end(self, engine: Engine) -> None:
        pass

    def meta(self) -> dict:
        """What the checkpoint's JSON records besides the training state."""
        return {"kind": self.kind}

    def state_dict(self) -> dict:
        """The task's own resumable state (JSON)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)


class Engine:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.precision, why = resolve_precision(cfg.precision, cfg.accelerator)
        self.fabric = Fabric(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy="ddp_find_unused_parameters_true"
            if cfg.strategy == "ddp" and cfg.leaves_parameters_unused()
            else cfg.strategy,
            precision=self.precision,
        )
        self.fabric.launch()
        if self.fabric.is_global_zero:
            if cfg.precision == "auto":
                log.info("precision auto -> %s: %s", self.precision, why)
            log.info("device %s (%d process(es))", self.fabric.device, self.fabric.world_size)
        self.out = Path(cfg.out_dir) if cfg.out_dir else None
        self.state = State()
        self._tb = None
        self._lock: DirLock | None = None

    @property
    def is_main(self) -> bool:
        return self.fabric.is_global_zero

    # -- set-up ---------------------------------------------------------------------
    def fit(self, task: Task, start: str = "auto") -> dict:
        """Train ``task`` (``start``: see ``setup``). Returns the state, with the seconds
        this call trained."""
        self.setup(task, start)
        try:
            return self.run()
        finally:
            self.close()

    def setup(self, task: Task, start: str = "auto") -> None:
        """Optimizer, schedule, restored state and the Fabric-wrapped model of ``task``.

        ``start`` says what to do with ``{out_dir}``: ``"auto"`` continues from its
        ``last`` checkpoint when there is one, else starts (pipelines that resume by
        themselves); ``"new"`` starts and refuses a directory that holds a run;
        ``"resume"`` continues and refuses a directory without ``last.json``;
        ``"overwrite"`` moves a run that is there aside (``{out_dir}.old-{time}``) and
        starts. The main process holds ``{out_dir}/.lock`` until ``close()``: a second
        process into the same directory is refused."""
        if start not in RUN_STARTS:
            raise ValueError(f"start must be one of {RUN_STARTS}, not {start!r}")
        cfg, o, fabric = self.cfg, self.cfg.optim, self.fabric
        if self.out is not None:
            refused = ""
            if self.is_main:
                try:
                    self._lock = DirLock(self.out).acquire()
                    finish_interrupted_save(self.out / "last")
                    self._prepare_out_dir(start)
                except UsageError as e:
                    self.close()
                    refused = str(e)
            if fabric.world_size > 1:  # every rank stops, not only the one that checked
                refused = fabric.broadcast(refused, src=0)
            if refused:
                raise UsageError(refused)
        self.task, self.raw = task, task.model
        optimizer = torch.optim.AdamW(
            task.param_groups(), lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, o.beta2), fused=o.fused or None
        )
        total = o.max_steps
        if o.schedule == "linear" and not total:
            n = torch.tensor(float(task.num_batches()))
            per_epoch = int(fabric.all_reduce(n, reduce_op="min")) if fabric.world_size > 1 else int(n)
            total = o.max_epochs * per_epoch // o.accumulate
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(o.warmup_steps, o.schedule, total, o.final_lr_ratio)
        )
        if self.out is not None and start in ("auto", "resume") and (self.out / "last.json").exists():
            meta = load_training_state(self.out / "last", task.model, "model.", optimizer, scheduler)
            self.state = State(**meta["state"])
            task.load_state_dict(meta.get("task_state", {}))
            log.info(
                "resumed %s at step %d (epoch %d, batch %d)",
                self.out,
                self.state.step,
                self.state.epoch,
                self.state.batch_in_epoch,
            )
        self.model, self.optimizer = fabric.setup(task.model, optimizer)
        self.scheduler = scheduler
        for name in task.forward_methods:
            self.model.mark_forward_method(name)
        if self.out is not None and self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")

    def _prepare_out_dir(self, start: str) -> None:
        """Checks ``start`` against what ``{out_dir}`` holds; moves a run aside for
        ``"overwrite"``. Nothing is ever deleted."""
        held = sorted(p.name for p in self.out.iterdir() if p.name != ".lock")
        has_run = any(n in held for n in RUN_FILES)
        if start == "resume" and "last.json" not in held:
            what = f"it holds {', '.join(held[:8])}" if held else "it is empty"
            raise UsageError(
                f"--resume: {self.out} has no last.json to continue from ({what}); run without --resume "
                "to start a new run there (add --overwrite to move what is there aside)"
            )
        if start in ("resume", "auto") and "last.json" in held and "config.yaml" in held:
            self._warn_config_changes(read_yaml(self.out / "config.yaml"))
        if start == "new" and has_run:
            step = ""
            if (self.out / "last.json").exists():
                with contextlib.suppress(ValueError, KeyError, OSError):
                    step = f" (stopped at step {json.loads((self.out / 'last.json').read_text())['state']['step']})"
            raise UsageError(
                f"{self.out} already holds a run{step}: {', '.join(n for n in held if n in RUN_FILES)}. "
                "Continue it with --resume, or start again with --overwrite (the old run is moved aside, "
                "not deleted), or set out_dir to another directory"
            )
        if start == "overwrite" and held:
            aside = self.out.with_name(f"{self.out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while aside.exists():
                aside, n = aside.with_name(f"{self.out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
            aside.mkdir()
            for name in held:
                os.replace(self.out / name, aside / name)
            log.warning("--overwrite: the run that was in %s was moved to %s", self.out, aside)

    def _warn_config_changes(self, before: dict) -> None:
        """A resumed run continues under the config it is given now; say what differs from
        the one it started with. (A run stopped by max_steps and given a larger one reaches
        the weights of a run given that budget from the start, except under the linear
        schedule, which max_steps stretches.)"""
        changed = config_changes(before, to_dict(self.cfg))
        if changed:
            log.warning("resuming %s with a config that differs from the run's own: %s", self.out, "; ".join(changed))

    def close(self) -> None:
        """Release ``{out_dir}``'s lock (the end of ``fit``; call it after ``setup`` + ``run``)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # -- the loop -------------------------------------------------------------------
    def run(self) -> dict:
        cfg, st, task = self.cfg, self.state, self.task
        start = time.time()
        while st.epoch < cfg.optim.max_epochs:
            if task.reseed_each_epoch and st.batch_in_epoch == 0:
                # Dropout draws from torch's RNG and some models (HF's HuBERT masks) from numpy's
                # global one: reseeding both per epoch and rank makes a run repeat exactly and a run
                # resumed at an epoch boundary continue as if never stopped (inside an epoch, the
                # checkpoint's RNG states continue it).
                seed = np.random.SeedSequence([cfg.seed, st.epoch, self.fabric.global_rank]).generate_state(1)[0]
                torch.manual_seed(int(seed))
                np.random.seed(int(seed))
            ended, means = self.train_one_epoch()
            rng = None if ended else rng_state()  # stopped by max_steps inside the epoch
            scores = task.validate(self.model)
            row = {"epoch": st.epoch, "step": st.step} | means | scores
            st.history.append(row)
            self._log({"step": st.step, "epoch": st.epoch} | scores)  # the means are in the steps' rows already
            if task.monitor is not None:
                value = scores[task.monitor]
                if st.best is None or (value > st.best if task.higher_is_better else value < st.best):
                    st.best, st.best_epoch, st.bad_epochs = value, st.epoch, 0
                    task.on_best(self)
                else:
                    st.bad_epochs += 1
            if self.is_main:
                log.info(
                    "epoch %d: %s",
                    st.epoch,
                    ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float)),
                )
            if ended:
                st.epoch += 1
                st.batch_in_epoch = 0
            else:
                # The checkpoint keeps the epoch's place and the RNG states of the stop, not of
                # the validation, so that a resume with a larger max_steps continues the epoch
                # as a run given that budget from the start would.
                set_rng_state(*rng)
            self.save()
            task.on_epoch_end(self)
            patience = cfg.optim.early_stop_patience
            at_max_steps = cfg.optim.max_steps and st.step >= cfg.optim.max_steps
            if at_max_steps or (task.monitor is not None and patience and st.bad_epochs >= patience):
                break
        return asdict(st) | {"seconds_this_run": round(time.time() - start, 1)}

    def forward_backward(self, batch, accumulating: bool = False) -> tuple[float, dict[str, float]]:
        """The task's loss of ``batch``, then backward (gradients synchronised unless accumulating).
        Returns the loss and its named terms."""
        with self.fabric.no_backward_sync(self.model, enabled=accumulating):
            loss, terms = self.task.step(self.model, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {float(loss.detach())} at step {self.state.step} (epoch {self.state.epoch}) "
                    f"{self.task.describe(batch)}; terms {terms}. Nothing was saved from this step; "
                    "lower optim.lr or check these utterances"
                )
            self.fabric.backward(loss / self.cfg.optim.accumulate)
        return float(loss.detach()), terms

    def train_one_epoch(self) -> tuple[bool, dict[str, float]]:
        """Whether the epoch's batches ran out (False: max_steps stopped it inside the
        epoch), and the epoch's mean of every term."""
        cfg, fabric, st = self.cfg, self.fabric, self.state
        it = iter(self.task.batches(st.epoch, st.batch_in_epoch))
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        with self._progress() as bar:
            job = bar.add_task(f"epoch {st.epoch}", total=None, completed=st.batch_in_epoch, loss="")
            while True:
                batch = next(it, None)
                # Every rank continues only while all have data (uneven bucketing under DDP).
                ready = fabric.all_reduce(torch.tensor(float(batch is not None)), reduce_op="sum")
                if float(ready) < fabric.world_size:
                    break
                if cfg.optim.max_steps and st.step >= cfg.optim.max_steps:
                    # (after the fetch, so that batches that ran out at max_steps end the epoch;
                    # a run resumed from its checkpoint at max_steps takes no more steps)
                    return False, {k: v / max(1, n) for k, v in sums.items()}
                accumulating = (st.batch_in_epoch + 1) % cfg.optim.accumulate != 0
                loss, terms = self.forward_backward(batch, accumulating)
                st.batch_in_epoch += 1
                n += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(job, advance=1, loss=f"loss {loss:.3f}")
                if accumulating:
                    continue
                self.optimizer_step()
                if st.step % cfg.log_every == 0:
                    self._log({"step": st.step, "epoch": st.epoch, "lr": self.scheduler.get_last_lr()[0]} | terms)
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    self.save()
                if cfg.debug_kill_at_step and st.step == cfg.debug_kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)
        return True, {k: v / max(1, n) for k, v in sums.items()}

    def optimizer_step(self) -> None:
        if self.cfg.optim.grad_clip > 0:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1

    # -- checkpoints and logs ---------------------------------------------------------
    def save(self) -> None:
        """``{out_dir}/last``: weights, optimizer, scheduler, RNG states and the loop's state."""
        if self.out is None or not self.is_main:
            return
        meta = self.task.meta() | {"state": asdict(self.state), "task_state": self.task.state_dict()}
        save_training_state(self.out / "last", self.raw, "model.", self.optimizer, self.scheduler, meta)

    def _progress(self) -> Progress:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[loss]}"),
        )
        return Progress(
            *columns, console=Console(stderr=True), transient=True, disable=not (self.cfg.progress and self.is_main)
        )

    def _log(self, row: dict) -> None:
        if self.out is None or not self.is_main:
            return
        if self._tb is None:
            try:  # TensorBoard when installed; the CSV always
                from torch.utils.tensorboard import SummaryWriter  # optional dependency

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self._tb = False
        if self._tb:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, row["step"])
        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["time", "key", "value", "step"])
            for k, v in row.items():
                if k != "step":
                    w.writerow([f"{time.time():.1f}", k, v, row["step"]])
