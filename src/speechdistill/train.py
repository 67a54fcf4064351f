"""Acoustic-model training: the task the engine runs for ``speechdistill train``.

    speechdistill train configs/asr/baseline.yaml data.corpus=data/small
    torchrun --nproc-per-node 8 -m speechdistill.cli train configs/asr/baseline.yaml devices=8 strategy=ddp

It reads in a fixed order: ``compute_loss`` (the total and every named term; every
term reaches the CSV log) -> ``AsrTask`` (data, the step with SpecAugment, dev
scoring, the best checkpoint) -> ``train``. The loop, checkpoints and resume are the
engine's (engine.py): ``--resume`` continues a killed run to the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace

import torch

from speechdistill.align.store import MANIFEST, with_alignment
from speechdistill.checkpoint import save_checkpoint
from speechdistill.config import to_dict
from speechdistill.data.audio import load_cut_audio
from speechdistill.data.augment import AugmentConfig, WaveAugment
from speechdistill.data.batching import AsrDataset, Batch, SkipBatches, make_sampler
from speechdistill.data.corpus import load_split
from speechdistill.data.features import FbankExtractor, feature_stats, load_cuts_with_features
from speechdistill.data.layout import CorpusDir, SoftLabelSpec
from speechdistill.distill.losses import ctc_loss, ctc_viterbi, teacher_kd
from speechdistill.distill.soft_labels import SoftLabelCache
from speechdistill.distill.taps import TAP_LOSSES
from speechdistill.engine import Engine, EngineConfig, Task
from speechdistill.evaluate import decoded_rows, score_rows
from speechdistill.students.model import AcousticModel, ModelConfig, hand_weights, learned_weights, load_acoustic_model
from speechdistill.units.inventory import Units
from speechdistill.utils import DataError, atomic_write_text

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
    # which alignment feeds the taps, soft labels and label interpolation: "" the manifests'
    # own (the built-in corpus's synthesiser timings), else a name (`speechdistill align run`)
    alignment: str = ""

    def __post_init__(self):
        if self.max_duration <= 0 or self.num_buckets <= 0 or self.num_workers < 0:
            raise ValueError("max_duration and num_buckets must be positive, num_workers >= 0")


@dataclass
class SpecAugConfig:
    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: float = 0.05  # fraction of the utterance, per mask
    # schedule: no masks before start_step, then mask widths grow linearly to the above over
    # ramp_steps, so masking does not hold CTC on its blank plateau at the start
    start_step: int = 0
    ramp_steps: int = 0

    def __post_init__(self):
        if min(self.freq_masks, self.freq_width, self.time_masks, self.start_step, self.ramp_steps) < 0:
            raise ValueError("specaug: masks, widths, start_step and ramp_steps must be >= 0")
        if not 0.0 <= self.time_width <= 0.5:
            raise ValueError(f"specaug.time_width must be in [0, 0.5], not {self.time_width}")

    def strength(self, step: int) -> float:
        """The fraction of the mask widths in force at ``step``."""
        if step < self.start_step:
            return 0.0
        return min(1.0, (step - self.start_step + 1) / self.ramp_steps) if self.ramp_steps else 1.0


@dataclass
class InterpConfig:
    """Label interpolation on the main output (Bai et al. 2019; Futami et al. 2020):
    on the frames of the Viterbi CTC path, the main output is also trained towards the
    LM's soft label: L_main = (1 - w) * L_ctc + w * CE(p_LM, main), w ramped linearly
    from 0 over ``ramp_steps`` (0: no ramp). On those frames CTC acts as CE to the
    one-hot label, so the effective target is (1 - w) one_hot + w p_LM
    (``losses.interpolated_target``; the identity is tested). ``soft``: the soft labels
    (their unit is the main output's)."""

    enabled: bool = False
    weight: float = 0.3
    soft: SoftLabelSpec = field(default_factory=SoftLabelSpec)
    ramp_steps: int = 0

    def __post_init__(self):
        if not 0 <= self.weight <= 1:
            raise ValueError(f"interp weight must be in [0, 1], got {self.weight}")


@dataclass
class TeacherConfig:
    """Frame-level distillation of the main output from a trained acoustic model's (e.g. an
    oracle teacher's, ``model.oracle: labels``): weight * T^2 KL(teacher || student) over
    the frames, both softened by ``temperature``. Same main unit and frame rate required."""

    path: str = ""  # an acoustic-model checkpoint prefix ("": none)
    weight: float = 0.5
    temperature: float = 1.0

    def __post_init__(self):
        if self.weight < 0 or self.temperature <= 0:
            raise ValueError("teacher.weight must be >= 0 and teacher.temperature > 0")


@dataclass
class TrainConfig(EngineConfig):
    name: str = "baseline"
    out_dir: str = "exp/baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    specaug: SpecAugConfig = field(default_factory=SpecAugConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    interp: InterpConfig = field(default_factory=InterpConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.interp.soft.unit not in ("", self.model.main_unit):
            raise ValueError(
                f"interp.soft.unit={self.interp.soft.unit!r}: label interpolation works on the "
                f"main output ({self.model.main_unit})"
            )

    @property
    def interp_soft(self) -> SoftLabelSpec:
        """The soft labels of label interpolation: over the main output's unit."""
        return replace(self.interp.soft, unit=self.model.main_unit)

    @property
    def soft_labels(self) -> set[SoftLabelSpec]:
        """Every soft label this run reads (taps' kd, label interpolation), as the model
        holds them; their caches are those of ``data.alignment``."""
        interp = {self.interp_soft} if self.interp.enabled else set()
        return {t.kd for t in self.model.taps if t.kd is not None} | interp


def spec_augment(feats: torch.Tensor, lens: torch.Tensor, cfg: SpecAugConfig, step: int = 10**9) -> torch.Tensor:
    """Frequency and time masks (Park et al. 2019) drawn from torch's global RNG, so
    they are reproduced on resume, at the schedule's strength for ``step``. (N, T, F) ->
    (N, T, F). Written here rather than lhotse's because lhotse's draws from Python's
    ``random`` per worker and has no schedule."""
    scale = cfg.strength(step)
    if scale == 0.0:
        return feats
    feats = feats.clone()
    N, T, F = feats.shape
    for n in range(N):
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, int(cfg.freq_width * scale) + 1, ()))
            f0 = int(torch.randint(0, max(1, F - w), ()))
            feats[n, :, f0 : f0 + w] = 0.0
        t_len = int(lens[n])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, int(cfg.time_width * scale * t_len) + 1, ()))
            t0 = int(torch.randint(0, max(1, t_len - w), ()))
            feats[n, t0 : t0 + w, :] = 0.0
    return feats


def interp_ce(log_probs, lens, targets, target_lens, soft) -> torch.Tensor:
    """Mean over Viterbi-aligned label frames of -sum_c p_LM(c) log q(c): the LM's
    soft label for the target position each frame emits (CTC classes = unit + 1)."""
    values, indices, has = soft  # (N, U, k), (N, U, k), (N,)
    terms = []
    for n in range(log_probs.shape[0]):
        T, U = int(lens[n]), int(target_lens[n])
        if U == 0 or T < U or not has[n]:
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


def compute_loss(
    model, batch: Batch, cfg: TrainConfig, step: int = 0, teacher=None
) -> tuple[torch.Tensor, dict[str, float], dict]:
    """Total loss, every named term (floats, for the logs), and info: the skipped
    utterances and the main output (``log_probs``, ``lens``: what dev scoring decodes).

    L = (1 - w_interp) (1 - sum w_ctc_taps) CTC_main + w_interp CE_interp + sum_taps w_tap L_tap

    where L_tap is the tap's loss (distill/taps.py: a frame tap's ce_weight CE + KD, a CTC
    tap's CTC) and CTC taps take their weight off the main loss (intermediate CTC).

    ``model.loss_weighting: uncertainty`` learns the weights instead (Kendall et al. 2018,
    the classification form): each of the main loss and the taps' enters as
    exp(-s_i) L_i + s_i / 2 with s_i = log sigma_i^2 trained with the model, started at
    -log of the hand weight above. Every weight exp(-s_i) stays positive; at the optimum
    of s_i it is 1 / (2 L_i). The log shows each weight (``w_main``, ``w_{tap}``) and
    their normalised shares, which sum to 1.
    """
    mcfg = cfg.model
    targets, target_lens = batch.targets[mcfg.main_unit]
    answer = (targets, target_lens)  # what an oracle reads
    out = model(batch.feats, batch.feat_lens, *answer) if mcfg.oracle else model(batch.feats, batch.feat_lens)
    main, ok = ctc_loss(out.main, out.lens, targets, target_lens)
    log_vars = model.loss_log_vars if mcfg.loss_weighting == "uncertainty" else None

    def weighted(i: int, weight: float, loss: torch.Tensor) -> torch.Tensor:
        if log_vars is None:
            return weight * loss
        return torch.exp(-log_vars[i]) * loss + 0.5 * log_vars[i]

    total = weighted(0, hand_weights(mcfg)[0], main)
    terms = {"ctc": float(main.detach())}
    soft = batch.soft_positions.get(cfg.interp_soft) if cfg.interp.enabled else None
    if soft is not None:  # dev batches carry no soft labels
        w = cfg.interp.weight * (min(1.0, step / cfg.interp.ramp_steps) if cfg.interp.ramp_steps else 1.0)
        interp = interp_ce(out.main, out.lens, targets, target_lens, soft)
        total = (1.0 - w) * total + w * interp
        terms["interp"] = float(interp.detach())
        terms["interp_weight"] = w
    for i, tap in enumerate(mcfg.taps, 1):
        term, named = TAP_LOSSES[tap.kind].loss(tap, out.taps[tap.name], out.lens, batch)
        total = total + weighted(i, tap.weight, term)
        terms |= named
        if named or not TAP_LOSSES[tap.kind].frames:  # a frame tap with no part computed (dev
            terms[tap.name] = float(term.detach())  # batches have no soft labels) logs no 0
    if log_vars is not None:
        for name, (wi, share) in zip(["main", *(t.name for t in mcfg.taps)], learned_weights(log_vars), strict=True):
            terms[f"w_{name}"], terms[f"share_{name}"] = wi, share
    if teacher is not None:
        with torch.no_grad():
            t = (
                teacher(batch.feats, batch.feat_lens, *answer)
                if teacher.cfg.oracle
                else teacher(batch.feats, batch.feat_lens)
            )
        kd = teacher_kd(out.main, t.main, out.lens, cfg.teacher.temperature)
        total = total + cfg.teacher.weight * kd
        terms["teacher_kd"] = float(kd.detach())
    terms["total"] = float(total.detach())
    skipped = [i for i, good in zip(batch.ids, ok.tolist(), strict=True) if not good]
    return total, terms, {"skipped": skipped, "log_probs": out.main.detach(), "lens": out.lens}


class AsrTask(Task):
    """An acoustic model with its taps, trained on a corpus's training split and scored on dev."""

    kind = "acoustic-model"
    monitor = "dev_error"

    def __init__(self, cfg: TrainConfig, engine: Engine):
        self.cfg, self.engine = cfg, engine
        corpus = CorpusDir(cfg.data.corpus)
        self.units = Units(corpus.units)
        self.vocab = self.units.vocab()
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = AcousticModel(cfg.model, self.vocab)
        self.train_cuts, self.dev_cuts = self._load_cuts()
        self.dev_rows: list[tuple[str, str, str]] = []  # (id, reference, hypothesis) of the last dev pass
        self.teacher = self._load_teacher(engine)
        self._set_feature_stats()
        self.skipped = 0
        sub = self.model.encoder.subsampling
        caches = {s: SoftLabelCache.open_for(corpus, replace(s, alignment=cfg.data.alignment)) for s in cfg.soft_labels}

        def dataset(soft_frames=None, soft_positions=None, augment=None):
            return AsrDataset(
                self.units,
                cfg.model.main_unit,
                cfg.model.taps,
                frames_fn=lambda t: int(sub.out_lengths(torch.tensor([t]))[0]),
                frame_shift=cfg.model.encoder.frame_shift,
                on_the_fly=cfg.data.on_the_fly_features,
                soft_frames=soft_frames,
                soft_positions=soft_positions,
                augment=augment,
            )

        self.dataset = dataset(
            {t.kd: caches[t.kd] for t in cfg.model.taps if t.kd is not None},
            {cfg.interp_soft: caches[cfg.interp_soft]} if cfg.interp.enabled else None,
            WaveAugment(cfg.augment, cfg.seed) if cfg.augment.enabled else None,
        )
        # dev: clean speech, no soft labels (they exist for training utterances only)
        self.dev_dataset = dataset()

    def _load_teacher(self, engine: Engine):
        """The frozen teacher of ``teacher.path`` (its main output must match this model's)."""
        if not self.cfg.teacher.path:
            return None
        teacher, meta = load_acoustic_model(self.cfg.teacher.path)
        if (teacher.cfg.main_unit, teacher.main.out_features) != (
            self.cfg.model.main_unit,
            self.model.main.out_features,
        ):
            raise DataError(
                f"teacher {self.cfg.teacher.path} predicts {teacher.cfg.main_unit} ({teacher.main.out_features} "
                f"classes), this model {self.cfg.model.main_unit} ({self.model.main.out_features}): train them on "
                "the same units"
            )
        if teacher.encoder.cfg.frame_shift != self.model.encoder.cfg.frame_shift:
            raise DataError(
                f"teacher {self.cfg.teacher.path} has {teacher.encoder.cfg.frame_shift * 1000:g} ms frames, this "
                f"model {self.model.encoder.cfg.frame_shift * 1000:g} ms: frame-level distillation needs the same rate"
            )
        return teacher.requires_grad_(False).to(engine.fabric.device)

    def _load_cuts(self):
        d, corpus = self.cfg.data, CorpusDir(self.cfg.data.corpus)
        load = load_split if d.on_the_fly_features else load_cuts_with_features
        # augmented audio needs features on the fly: the stored ones are of the clean audio
        load_train = load_split if self.cfg.augment.enabled else load
        train = with_alignment(load_train(corpus, d.train_split), corpus, d.alignment, d.train_split)
        dev = load(corpus, d.dev_split)
        if d.alignment in MANIFEST or corpus.alignment(d.alignment, d.dev_split).exists():
            dev = with_alignment(dev, corpus, d.alignment, d.dev_split)
        too_long = [c.id for c in train if c.duration > d.max_utterance_duration]
        if too_long:
            log.warning(
                "dropping %d training utterances longer than %.0f s (e.g. %s)",
                len(too_long),
                d.max_utterance_duration,
                too_long[0],
            )
            train = train.filter(lambda c: c.duration <= d.max_utterance_duration).to_eager()
        self.unaligned = [c.id for c in train if not (c.supervisions[0].alignment or {}).get("phone")]
        needs = [t.name for t in self.cfg.model.taps if TAP_LOSSES[t.kind].frames or t.kd is not None]
        needs += ["label interpolation"] if self.cfg.interp.enabled else []
        if needs and len(self.unaligned) == len(train):
            raise DataError(
                f"{', '.join(needs)} need alignments, and no training utterance of {d.corpus} has one "
                f"(alignment {d.alignment or 'of the manifests'}): make one with `speechdistill align run "
                f"{d.corpus}` and set data.alignment"
            )
        if needs and self.unaligned:
            log.warning(
                "%d training utterances have no %s alignment (e.g. %s): they train the main CTC loss only",
                len(self.unaligned),
                d.alignment or "manifest",
                self.unaligned[0],
            )
        return train, dev

    def _set_feature_stats(self, num_cuts: int = 200) -> None:
        """Global mean/std of the features of the first ``num_cuts`` training utterances."""
        fbank = FbankExtractor()
        cuts = self.train_cuts.subset(first=min(num_cuts, len(self.train_cuts)))
        mean, std = feature_stats(c.load_features() if c.has_features else fbank(load_cut_audio(c)) for c in cuts)
        self.model.feat_mean.copy_(mean)
        self.model.feat_std.copy_(std)

    def _sampler(self, cuts, shuffle: bool, epoch: int):
        d, fabric = self.cfg.data, self.engine.fabric
        sampler = make_sampler(
            cuts, d.max_duration, shuffle, self.cfg.seed, d.num_buckets, fabric.world_size, fabric.global_rank
        )
        sampler.set_epoch(epoch)
        return sampler

    def _loader(self, cuts, shuffle: bool, epoch: int, skip: int = 0, dataset=None):
        # Own generator: creating a loader must not draw from the global RNG (resume).
        return torch.utils.data.DataLoader(
            dataset or self.dataset,
            sampler=SkipBatches(self._sampler(cuts, shuffle, epoch), skip),
            batch_size=None,
            num_workers=self.cfg.data.num_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def batches(self, epoch: int, skip: int):
        self.dataset.epoch = epoch  # before the loader copies the dataset into its workers
        return self._loader(self._epoch_cuts(epoch), True, epoch, skip)

    def num_batches(self) -> int:
        return sum(1 for _ in self._sampler(self._epoch_cuts(0), True, 0))

    def _epoch_cuts(self, epoch: int):
        """The training cuts as the sampler sees them (speed-perturbed durations)."""
        aug = self.dataset.augment
        return aug.bucketing_cuts(self.train_cuts, epoch) if aug else self.train_cuts

    def step(self, model, batch: Batch):
        batch = batch.to(self.engine.fabric.device)
        if self.cfg.specaug.enabled:
            batch.feats = spec_augment(batch.feats, batch.feat_lens, self.cfg.specaug, self.engine.state.step)
        loss, terms, info = compute_loss(model, batch, self.cfg, self.engine.state.step, self.teacher)
        self.skipped += len(info["skipped"])
        for utt in info["skipped"]:
            log.debug("skipped %s: transcript too long for its frames (CTC)", utt)
        return loss, terms

    def describe(self, batch: Batch) -> str:
        return f"on utterances {batch.ids[:8]}"

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        """Dev loss terms and the greedy error rate of the main output, in one pass: the
        main output the loss reads is the one decoded. Under DDP each rank scores its
        share of the batches and every rank gets the totals (the same best epoch and early
        stop everywhere)."""
        model.eval()
        unit = self.cfg.model.main_unit
        terms_sum: dict[str, float] = {}
        n, rows = 0, []
        for batch in self._loader(self.dev_cuts, False, 0, dataset=self.dev_dataset):
            batch = batch.to(self.engine.fabric.device)
            _, terms, info = compute_loss(model, batch, self.cfg, self.engine.state.step, self.teacher)
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v
            n += 1
            rows += decoded_rows(batch, info["log_probs"], info["lens"], unit, self.units)
        fabric = self.engine.fabric
        if fabric.world_size > 1:
            shares = [None] * fabric.world_size
            torch.distributed.all_gather_object(shares, (terms_sum, n, rows))
            keys = dict.fromkeys(k for share in shares for k in share[0])  # every rank's, in order
            terms_sum = {k: sum(share[0].get(k, 0.0) for share in shares) for k in keys}
            n = sum(s[1] for s in shares)
            # lhotse hands the last batches out across ranks and, with fewer utterances than
            # ranks, repeats some under new ids: keep each dev utterance once
            dev_ids = set(self.dev_cuts.ids)
            by_id = {r[0]: r for s in shares for r in s[2] if r[0] in dev_ids}
            rows = list(by_id.values())
        result = {f"dev_{k}": v / max(1, n) for k, v in terms_sum.items()}
        scores = score_rows(rows, unit, self.units)
        self.dev_rows = scores["rows"]
        result["dev_error"] = scores["error_rate"]
        model.train()
        return result

    def meta(self) -> dict:
        # the fingerprint of the main unit's inventory: decoding with another one is refused
        main = self.cfg.model.main_unit
        return {"kind": self.kind, "config": to_dict(self.cfg), "vocab": self.vocab, "units": self.units.digest(main)}

    def state_dict(self) -> dict:
        return {"skipped_utterances": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state.get("skipped_utterances", 0)

    def on_epoch_end(self, engine: Engine) -> None:
        if self.unaligned and engine.is_main and (self.cfg.interp.enabled or self.cfg.model.taps):
            log.info(
                "epoch %d: tap losses skipped on %d utterances without an alignment",
                engine.state.epoch - 1,
                len(self.unaligned),
            )

    def on_best(self, engine: Engine) -> None:
        """Weights only (what evaluation and export need)."""
        if engine.is_main:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            save_checkpoint(engine.out / "best", tensors, self.meta() | {"state": asdict(engine.state)})


def setup(cfg: TrainConfig, start: str = "new") -> tuple[Engine, AsrTask]:
    """The engine and the task, set up (optimizer, restored state) but not run: for a
    step by hand (tests, benchmarks) or ``engine.run()``; ``engine.close()`` after.
    ``start``: ``"new"``, ``"resume"``, ``"overwrite"`` or ``"auto"`` (Engine.setup)."""
    engine = Engine(cfg)
    task = AsrTask(cfg, engine)
    engine.setup(task, start)
    return engine, task


def train(cfg: TrainConfig, start: str = "new") -> dict:
    """Train an acoustic model; writes ``{out_dir}/best``, ``last``, ``log.csv`` and
    ``train_summary.json``, and returns the summary. A directory that holds a run is
    refused unless ``start`` is ``"resume"``, ``"overwrite"`` or ``"auto"``."""
    engine, task = setup(cfg, start)
    try:
        return _train(engine, task)
    finally:
        engine.close()


def _train(engine: Engine, task: AsrTask) -> dict:
    st = engine.run()
    summary = {
        "best_dev_error": st["best"],
        "best_epoch": st["best_epoch"],
        "steps": st["step"],
        "epochs": st["epoch"] + bool(st["batch_in_epoch"]),  # run, the last perhaps in part (max_steps)
        "skipped_utterances": task.skipped,
        "unaligned_utterances": len(task.unaligned),
        "train_seconds_this_run": st["seconds_this_run"],
        "precision": engine.precision,
        "params": task.model.num_params(),
        "params_without_taps": task.model.num_params(with_taps=False),
    }
    if engine.is_main:
        atomic_write_text(engine.out / "train_summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
