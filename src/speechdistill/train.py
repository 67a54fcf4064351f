"""The one training loop (Lightning Fabric): CPU or GPUs, one process or DDP
over many GPUs and nodes (``torchrun``-compatible), fp32 or bf16.

    speechdistill train configs/baseline.yaml data.corpus=data/small
    torchrun --nproc-per-node 8 -m speechdistill.cli train configs/baseline.yaml devices=8

It reads in a fixed order: ``compute_loss`` -> ``train_one_epoch`` ->
``validate`` -> ``run``. ``compute_loss`` returns the total and every named
term; every term reaches the CSV log. A checkpoint (``last``) is written every
``checkpoint_every`` steps and at each epoch end, with optimizer, scheduler,
RNG and data position, so ``--resume`` continues a killed run to the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speechdistill.checkpoint import (
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from speechdistill.config import save_config, to_dict
from speechdistill.data.batching import AsrDataset, Batch, make_sampler
from speechdistill.distill.losses import ctc_loss, ctc_viterbi, frame_ce, kd_kl
from speechdistill.students.model import AcousticModel, ModelConfig

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    corpus: str = "data/small"
    train_split: str = "train"
    dev_split: str = "dev"
    max_duration: float = 160.0  # seconds of audio per batch per process
    num_buckets: int = 10
    num_workers: int = 0
    on_the_fly_features: bool = False
    max_utterance_duration: float = 30.0

    def __post_init__(self):
        if self.max_duration <= 0 or self.num_buckets <= 0 or self.num_workers < 0:
            raise ValueError("max_duration and num_buckets must be positive, num_workers >= 0")


@dataclass
class OptimConfig:
    lr: float = 2e-3  # peak learning rate, reached after warmup
    weight_decay: float = 1e-3
    warmup_steps: int = 300
    grad_clip: float = 5.0
    accumulate: int = 1
    max_epochs: int = 30
    max_steps: int = 0  # 0: no limit
    early_stop_patience: int = 4  # epochs without a better dev error rate
    # noam: warmup then lr * sqrt(warmup / step); linear: warmup then a straight line down to
    # final_lr_ratio * lr at the last step of max_epochs (better when the budget is short)
    schedule: str = "noam"
    final_lr_ratio: float = 0.05

    def __post_init__(self):
        if self.lr <= 0 or self.accumulate < 1 or self.max_epochs < 1 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, accumulate >= 1, max_epochs >= 1, warmup_steps >= 0")
        if self.schedule not in ("noam", "linear"):
            raise ValueError(f"schedule must be 'noam' or 'linear', not {self.schedule!r}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError("final_lr_ratio must be in [0, 1]")


@dataclass
class SpecAugConfig:
    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: float = 0.05  # fraction of the utterance, per mask


@dataclass
class InterpConfig:
    """Label interpolation on the main output (Bai et al. 2019; Futami et al. 2020):
    on the frames of the Viterbi CTC path, the main output is also trained towards the
    LM's soft label: L_main = (1 - w) * L_ctc + w * CE(p_LM, main), w ramped linearly
    from 0 over ``ramp_steps`` (0: no ramp). On those frames CTC acts as CE to the
    one-hot label, so the effective target is (1 - w) one_hot + w p_LM
    (``losses.interpolated_target``; the identity is tested)."""

    enabled: bool = False
    weight: float = 0.3
    top_k: int = 8
    temperature: float = 3.0
    ramp_steps: int = 0

    def __post_init__(self):
        if not 0 <= self.weight <= 1:
            raise ValueError(f"interp weight must be in [0, 1], got {self.weight}")


@dataclass
class TrainConfig:
    name: str = "baseline"
    seed: int = 0
    out_dir: str = "exp/baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    specaug: SpecAugConfig = field(default_factory=SpecAugConfig)
    interp: InterpConfig = field(default_factory=InterpConfig)
    precision: str = "32-true"  # or "bf16-mixed"
    accelerator: str = "cpu"  # "cpu", "gpu", "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several processes
    log_every: int = 25
    checkpoint_every: int = 100
    progress: bool = True
    debug_kill_at_step: int = 0  # tests: SIGKILL this process when the step is reached

    def __post_init__(self):
        if self.precision not in ("32-true", "bf16-mixed", "16-mixed"):
            raise ValueError(f"precision={self.precision!r}; valid: 32-true, bf16-mixed, 16-mixed")


class NonFiniteLossError(RuntimeError):
    pass


def spec_augment(feats: torch.Tensor, lens: torch.Tensor, cfg: SpecAugConfig) -> torch.Tensor:
    """Frequency and time masks (Park et al. 2019) drawn from torch's global RNG, so
    they are reproduced on resume. (N, T, F) -> (N, T, F). Written here rather than
    lhotse's because lhotse's draws from Python's ``random`` per worker."""
    feats = feats.clone()
    N, T, F = feats.shape
    for n in range(N):
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_width + 1, ()))
            f0 = int(torch.randint(0, max(1, F - w), ()))
            feats[n, :, f0 : f0 + w] = 0.0
        t_len = int(lens[n])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, int(cfg.time_width * t_len) + 1, ()))
            t0 = int(torch.randint(0, max(1, t_len - w), ()))
            feats[n, t0 : t0 + w, :] = 0.0
    return feats


def interp_ce(log_probs, lens, targets, target_lens, soft) -> torch.Tensor:
    """Mean over Viterbi-aligned label frames of -sum_c p_LM(c) log q(c): the LM's
    soft label for the target position each frame emits (CTC classes = unit + 1)."""
    values, indices = soft  # (N, U, k) each
    terms = []
    for n in range(log_probs.shape[0]):
        T, U = int(lens[n]), int(target_lens[n])
        if U == 0 or T < U:
            continue
        pos = torch.tensor(ctc_viterbi(log_probs[n, :T], targets[n, :U].tolist()), device=log_probs.device)
        frames = (pos >= 0).nonzero().flatten()
        if len(frames) == 0:
            continue
        p = values[n, pos[frames]].float()  # (F, k)
        logq = log_probs[n, frames].gather(-1, indices[n, pos[frames]] + 1)
        terms.append(-(p * logq).sum(-1))
    if not terms:
        return log_probs.sum() * 0.0
    return torch.cat(terms).mean()


def compute_loss(model, batch: Batch, cfg: TrainConfig, step: int = 0) -> tuple[torch.Tensor, dict[str, float], dict]:
    """Total loss, every named term (floats, for the logs), and info (skipped utterances).

    L = (1 - w_interp) (1 - sum w_ctc_taps) CTC_main + w_interp CE_interp
        + sum_ctc_taps w CTC_tap + sum_frame_taps w (KD_tap + ce_weight CE_tap)
    """
    out = model(batch.feats, batch.feat_lens)
    mcfg = cfg.model
    targets, target_lens = batch.targets[mcfg.main_unit]
    main, ok = ctc_loss(out.main, out.lens, targets, target_lens)
    ctc_tap_weight = sum(t.weight for t in mcfg.taps if t.kind == "ctc")
    total = (1.0 - ctc_tap_weight) * main
    terms = {"ctc": float(main.detach())}
    if cfg.interp.enabled and "main" in batch.soft:  # dev batches carry no soft labels
        w = cfg.interp.weight * (min(1.0, step / cfg.interp.ramp_steps) if cfg.interp.ramp_steps else 1.0)
        interp = interp_ce(out.main, out.lens, targets, target_lens, batch.soft["main"])
        total = (1.0 - w) * total + w * interp
        terms["interp"] = float(interp.detach())
        terms["interp_weight"] = w
    for tap in mcfg.taps:
        if tap.kind == "ctc":
            t, tl = batch.targets[tap.unit]
            term, _ = ctc_loss(out.taps[tap.name], out.lens, t, tl)
        else:
            term = out.taps[tap.name].sum() * 0.0
            if tap.ce_weight > 0:
                ce = frame_ce(out.taps[tap.name], batch.frame_targets[tap.name])
                term = term + tap.ce_weight * ce
                terms[f"{tap.name}.ce"] = float(ce.detach())
            if tap.kd and tap.name in batch.soft:
                kd = kd_kl(out.taps[tap.name], *batch.soft[tap.name], tap.temperature)
                term = term + kd
                terms[f"{tap.name}.kd"] = float(kd.detach())
        total = total + tap.weight * term
        terms[tap.name] = float(term.detach())
    terms["total"] = float(total.detach())
    skipped = [i for i, good in zip(batch.ids, ok.tolist(), strict=True) if not good]
    return total, terms, {"skipped": skipped}


def lr_lambda(warmup: int, schedule: str = "noam", total_steps: int = 0, final: float = 0.05):
    """The learning-rate factor at a step: linear warmup to 1, then either inverse square
    root decay (``noam``, Vaswani et al. 2017) or a straight line from 1 at the end of the
    warmup to ``final`` at ``total_steps`` (``linear``), held at ``final`` after it."""
    def f(step: int) -> float:
        step = step + 1
        if step < warmup:
            return step / warmup
        if schedule == "noam":
            return math.sqrt(warmup / step) if warmup > 0 else 1.0
        span = max(1, total_steps - warmup)
        return max(final, 1.0 - (1.0 - final) * (step - warmup) / span)
    return f


class _Skip(torch.utils.data.Sampler):
    """The sampler's batches after the first ``skip`` (to resume mid-epoch)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, cuts in enumerate(self.sampler):
            if i >= self.skip:
                yield cuts


@dataclass
class State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_error: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    skipped_utterances: int = 0
    history: list = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        from lightning_fabric import Fabric

        from speechdistill.units.inventory import Units

        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                             strategy=cfg.strategy, precision=cfg.precision)  # fmt: skip
        self.fabric.launch()
        self.units = Units(Path(cfg.data.corpus) / "units")
        self.vocab = {u: self.units.vocab_size(u) for u in ("subword", "phone", "senone")}
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = AcousticModel(cfg.model, self.vocab)
        self.train_cuts, self.dev_cuts = self._load_cuts()
        self._set_feature_stats()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay)  # fmt: skip
        o = cfg.optim
        total = o.max_steps or o.max_epochs * self._batches_per_epoch() // o.accumulate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.warmup_steps, o.schedule, total, o.final_lr_ratio))
        self.state = State()
        self._tb = None
        if resume and (self.out / "last.json").exists():
            self._restore(self.out / "last")
        elif not resume:
            for name in ("last.json", "last.safetensors", "log.csv"):
                if self.fabric.is_global_zero:
                    (self.out / name).unlink(missing_ok=True)
        self.model, self.optimizer = self.fabric.setup(self.model, self.optimizer)
        enc = cfg.model.encoder
        sub = self._raw_model().encoder.subsampling
        def dataset(caches):
            return AsrDataset(self.units, cfg.model.main_unit, cfg.model.taps,
                              frames_fn=lambda t: int(sub.out_lengths(torch.tensor([t]))[0]),
                              frame_shift=enc.frame_shift, on_the_fly=cfg.data.on_the_fly_features,
                              caches=caches)  # fmt: skip

        self.dataset = dataset(self._open_caches())
        self.dev_dataset = dataset(None)  # soft labels exist for training utterances only

    # -- set-up ---------------------------------------------------------------------
    def _batches_per_epoch(self) -> int:
        """Batches in epoch 0 on the rank with fewest (what the linear schedule spans)."""
        if self.cfg.optim.schedule != "linear" or self.cfg.optim.max_steps:
            return 0
        sampler = make_sampler(self.train_cuts, self.cfg.data.max_duration, True, self.cfg.seed,
                               self.cfg.data.num_buckets, self.fabric.world_size, self.fabric.global_rank)  # fmt: skip
        sampler.set_epoch(0)
        n = torch.tensor(float(sum(1 for _ in sampler)))
        return int(self.fabric.all_reduce(n, reduce_op="min")) if self.fabric.world_size > 1 else int(n)
    def _raw_model(self) -> AcousticModel:
        m = self.model
        while hasattr(m, "module") and not isinstance(m, AcousticModel):
            m = m.module
        return m

    def _load_cuts(self):
        from speechdistill.data.corpus import load_split
        from speechdistill.data.features import load_cuts_with_features

        load = load_split if self.cfg.data.on_the_fly_features else load_cuts_with_features
        train = load(self.cfg.data.corpus, self.cfg.data.train_split)
        dev = load(self.cfg.data.corpus, self.cfg.data.dev_split)
        too_long = [c.id for c in train if c.duration > self.cfg.data.max_utterance_duration]
        if too_long:
            log.warning("dropping %d training utterances longer than %.0f s (e.g. %s)",
                        len(too_long), self.cfg.data.max_utterance_duration, too_long[0])  # fmt: skip
            train = train.filter(lambda c: c.duration <= self.cfg.data.max_utterance_duration).to_eager()
        if any(t.kind == "frame" for t in self.cfg.model.taps):
            for c in train.subset(first=1):
                if not (c.supervisions[0].alignment or {}).get("phone"):
                    raise ValueError(f"frame-level taps need phone alignments; utterance {c.id} "
                                     f"of {self.cfg.data.corpus} has none")  # fmt: skip
        return train, dev

    def _set_feature_stats(self, num_cuts: int = 200) -> None:
        """Global mean/std of the features of the first ``num_cuts`` training utterances."""
        from speechdistill.data.audio import load_cut_audio
        from speechdistill.data.features import FbankExtractor

        fbank = FbankExtractor()
        s = ss = n = 0
        for cut in self.train_cuts.subset(first=min(num_cuts, len(self.train_cuts))):
            x = torch.from_numpy(cut.load_features() if cut.has_features else fbank(load_cut_audio(cut))).double()
            s, ss, n = s + x.sum(0), ss + (x * x).sum(0), n + x.shape[0]
        mean = s / n
        std = (ss / n - mean**2).clamp(min=1e-6).sqrt()
        self.model.feat_mean.copy_(mean.float())
        self.model.feat_std.copy_(std.float())

    def _open_caches(self) -> dict:
        """Soft-label caches of the KD taps ("tap name") and of label interpolation ("main")."""
        from speechdistill.distill.soft_labels import SoftLabelCache

        corpus = Path(self.cfg.data.corpus)
        wanted = {t.name: (t.unit, t.top_k, t.temperature) for t in self.cfg.model.taps if t.kd}
        if self.cfg.interp.enabled:
            i = self.cfg.interp
            wanted["main"] = (self.cfg.model.main_unit, i.top_k, i.temperature)
        caches, opened = {}, {}
        for name, (unit, k, temp) in wanted.items():
            prefix = corpus / "soft_labels" / f"{unit}-k{k}-T{temp:g}"
            if not prefix.with_suffix(".json").exists():
                raise FileNotFoundError(f"soft-label cache {prefix} is missing: run `speechdistill "
                                        f"teach {corpus} --unit {unit} --top-k {k} --temperature {temp:g}`")  # fmt: skip
            if prefix not in opened:
                opened[prefix] = SoftLabelCache.open(prefix, corpus / "lm" / unit, corpus / "units")
            caches[name] = opened[prefix]
        return caches

    # -- checkpoints ----------------------------------------------------------------
    def _meta(self) -> dict:
        return {"kind": "acoustic-model", "config": to_dict(self.cfg), "vocab": self.vocab,
                "state": self.state.__dict__}  # fmt: skip

    def save(self, name: str = "last") -> None:
        if not self.fabric.is_global_zero:
            return
        save_training_state(self.out / name, self._raw_model(), "model.", self.optimizer, self.scheduler,
                            self._meta())  # fmt: skip

    def save_model(self, name: str) -> None:
        """Weights only (what evaluation and export need)."""
        if self.fabric.is_global_zero:
            model = self._raw_model()
            save_checkpoint(self.out / name, {f"model.{k}": v for k, v in model.state_dict().items()}, self._meta())

    def _restore(self, prefix: Path) -> None:
        meta = load_training_state(prefix, self.model, "model.", self.optimizer, self.scheduler)
        self.state = State(**meta["state"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", prefix, self.state.step,
                 self.state.epoch, self.state.batch_in_epoch)  # fmt: skip

    # -- the loop -------------------------------------------------------------------
    def _loader(self, cuts, shuffle: bool, epoch: int, skip: int = 0, dataset=None):
        sampler = make_sampler(cuts, self.cfg.data.max_duration, shuffle, self.cfg.seed,
                               self.cfg.data.num_buckets, self.fabric.world_size, self.fabric.global_rank)  # fmt: skip
        sampler.set_epoch(epoch)
        # Own generator: creating a loader must not draw from the global RNG (resume).
        return torch.utils.data.DataLoader(dataset or self.dataset, sampler=_Skip(sampler, skip), batch_size=None,
                                           num_workers=self.cfg.data.num_workers,
                                           generator=torch.Generator().manual_seed(self.cfg.seed))  # fmt: skip

    def forward_backward(self, batch: Batch, accumulating: bool = False) -> tuple[dict, dict]:
        """SpecAugment, loss, backward (gradients synchronised unless accumulating)."""
        cfg, fabric = self.cfg, self.fabric
        batch = batch.to(fabric.device)
        if cfg.specaug.enabled:
            batch.feats = spec_augment(batch.feats, batch.feat_lens, cfg.specaug)
        with fabric.no_backward_sync(self.model, enabled=accumulating):
            loss, terms, info = compute_loss(self.model, batch, cfg, self.state.step)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {float(loss)} at step {self.state.step} (epoch {self.state.epoch}) "
                    f"on utterances {batch.ids[:8]}; terms {terms}. Nothing was saved from this "
                    "step; lower optim.lr or check these utterances")  # fmt: skip
            fabric.backward(loss / cfg.optim.accumulate)
        return terms, info

    def optimizer_step(self) -> None:
        if self.cfg.optim.grad_clip > 0:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1

    def train_one_epoch(self, epoch: int) -> bool:
        """Returns False when max_steps is reached."""
        cfg, fabric, st = self.cfg, self.fabric, self.state
        self.model.train()
        loader = self._loader(self.train_cuts, True, epoch, skip=st.batch_in_epoch)
        it = iter(loader)
        bar = None
        if cfg.progress and fabric.is_global_zero:
            from tqdm import tqdm

            bar = tqdm(desc=f"epoch {epoch}", unit="batch", initial=st.batch_in_epoch, leave=False)
        while True:
            batch = next(it, None)
            # Every rank continues only while all have data (uneven bucketing under DDP).
            ready = fabric.all_reduce(torch.tensor(float(batch is not None)), reduce_op="sum")
            if float(ready) < fabric.world_size:
                break
            accumulating = (st.batch_in_epoch + 1) % cfg.optim.accumulate != 0
            terms, info = self.forward_backward(batch, accumulating)
            st.skipped_utterances += len(info["skipped"])
            for utt in info["skipped"]:
                log.debug("skipped %s: transcript too long for its frames (CTC)", utt)
            st.batch_in_epoch += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.3f}")
            if accumulating:
                continue
            self.optimizer_step()
            if st.step % cfg.log_every == 0:
                self._log({"step": st.step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0]} | terms)
            if st.step % cfg.checkpoint_every == 0:
                self.save("last")
            if cfg.debug_kill_at_step and st.step == cfg.debug_kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if cfg.optim.max_steps and st.step >= cfg.optim.max_steps:
                if bar is not None:
                    bar.close()
                return False
        if bar is not None:
            bar.close()
        return True

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Dev loss terms and greedy error rate of the main output (rank 0 decodes all)."""
        from speechdistill.evaluate import decode_cuts

        self.model.eval()
        terms_sum: dict[str, float] = {}
        n = 0
        for batch in self._loader(self.dev_cuts, False, 0, dataset=self.dev_dataset):
            _, terms, _ = compute_loss(self.model, batch.to(self.fabric.device), self.cfg, self.state.step)
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v
            n += 1
        result = {f"dev_{k}": v / max(1, n) for k, v in terms_sum.items()}
        scores = decode_cuts(self._raw_model().without_taps(), self.dev_dataset, self.dev_cuts,
                             self.cfg.model.main_unit, self.units, max_duration=self.cfg.data.max_duration)  # fmt: skip
        result["dev_error"] = scores["error_rate"]
        self.model.train()
        return result

    def _log(self, row: dict) -> None:
        if not self.fabric.is_global_zero:
            return
        if self._tb is None:
            try:  # TensorBoard when installed; the CSV always
                from torch.utils.tensorboard import SummaryWriter

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

    def run(self) -> dict:
        cfg, st = self.cfg, self.state
        if self.fabric.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        start = time.time()
        while st.epoch < cfg.optim.max_epochs:
            more = self.train_one_epoch(st.epoch)
            scores = self.validate()
            self._log({"step": st.step, "epoch": st.epoch} | scores)
            st.history.append({"epoch": st.epoch, "step": st.step} | scores)
            if scores["dev_error"] < st.best_error:
                st.best_error, st.best_epoch, st.bad_epochs = scores["dev_error"], st.epoch, 0
                self.save_model("best")
            else:
                st.bad_epochs += 1
            if self.fabric.is_global_zero:
                log.info("epoch %d step %d: dev loss %.3f, dev %s error %.2f%% (best %.2f%% @ %d)",
                         st.epoch, st.step, scores.get("dev_total", float("nan")), cfg.model.main_unit,
                         scores["dev_error"], st.best_error, st.best_epoch)  # fmt: skip
            st.epoch += 1
            st.batch_in_epoch = 0
            self.save("last")
            if not more or st.bad_epochs >= cfg.optim.early_stop_patience:
                break
        summary = {"best_dev_error": st.best_error, "best_epoch": st.best_epoch, "steps": st.step,
                   "epochs": st.epoch, "skipped_utterances": st.skipped_utterances,
                   "train_seconds_this_run": round(time.time() - start, 1),
                   "params": self._raw_model().num_params(), "params_without_taps":
                   self._raw_model().num_params(with_taps=False)}  # fmt: skip
        if self.fabric.is_global_zero:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    return Trainer(cfg, resume).run()
