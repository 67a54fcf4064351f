"""Distilling a self-supervised teacher into a small student: the task the engine runs
for ``speechdistill distill-ssl``.

    speechdistill distill-ssl configs/ssl/distilhubert.yaml teacher=exp/ssl/teacher/hf
    speechdistill distill-ssl configs/ssl/fithubert.yaml

The student (students/ssl.py, a registered kind) predicts chosen teacher layers; the
criterion (``DistillCriterion``) puts its frames on the teacher's time axis and sums the
kind's loss (DistilHuBERT's L1 - log sigmoid(cos), or FitHuBERT's hints) with the
optional TinyBERT terms (hidden states, attention maps). The teacher's layers are cached
on disk in fp16 (computed once, fingerprinted) or computed online.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from speechdistill.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from speechdistill.config import to_dict
from speechdistill.data.batching import WaveData, WaveDataset, load_wave_cuts, make_sampler
from speechdistill.distill.queries import BlackBoxTeacher, QueryConfig, select_clips
from speechdistill.distill.soft_labels import StaleCacheError
from speechdistill.distill.ssl_losses import align_frames, attention_map_loss, distilhubert_loss, hint_loss
from speechdistill.engine import Engine, EngineConfig, OptimConfig
from speechdistill.progress import progress
from speechdistill.students.model import LOSS_WEIGHTINGS, learned_weights, loss_log_vars
from speechdistill.students.ssl import TRAINING_ONLY, StudentConfig, build_student, layer_map, save_student
from speechdistill.teachers.pretrain import WaveTask, ssl_optim
from speechdistill.teachers.upstream import load_teacher
from speechdistill.utils import atomic_write_text


@dataclass
class DistillConfig(EngineConfig):
    teacher: str = "exp/ssl/teacher/hf"
    out_dir: str = "exp/ssl/distilhubert"
    optim: OptimConfig = field(default_factory=lambda: ssl_optim(2e-4))
    checkpoint_every: int = 0  # steps; 0: epoch ends (a resume is exact at either)
    data: WaveData = field(default_factory=WaveData)
    student: StudentConfig = field(default_factory=StudentConfig)
    cos_weight: float = 1.0  # DistilHuBERT's lambda
    hint_weights: tuple[float, float] = (0.1, 1.0)  # FitHuBERT: intermediate, last
    hidden_weight: float = 0.0  # TinyBERT hidden-state term (distilhubert: student layer j vs teacher map(j))
    attention_weight: float = 0.0  # TinyBERT attention-map term (equal frame rates only)
    cache_teacher: bool = True  # fp16 teacher layers on disk, computed once; else online
    init: str = ""  # a student checkpoint of the same kind and shape to start from (e.g. a supernet's stage 1)
    queries: QueryConfig = field(default_factory=QueryConfig)  # budget > 0: a black-box teacher (queries.py)
    # fixed: the per-layer weights above (1 each for distilhubert, hint_weights for hints);
    # uncertainty: learned per target layer (Kendall et al. 2018), started at them
    loss_weighting: str = "fixed"

    def leaves_parameters_unused(self) -> bool:
        # a supernet's sampled subnet skips layers; the sandwich rule's largest uses them all
        return self.student.kind == "supernet" and self.student.sample and not self.student.sandwich

    def __post_init__(self):
        super().__post_init__()
        if self.queries.budget and not self.cache_teacher:
            raise ValueError("queries.budget asks each chosen clip once: it needs cache_teacher=true")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting={self.loss_weighting!r}; valid: {', '.join(LOSS_WEIGHTINGS)}")
        if self.attention_weight > 0 and self.student.kind != "distilhubert":
            raise ValueError("attention_weight needs equal frame rates: use it with student.kind=distilhubert")


def teacher_fingerprint(teacher_path: str | Path, layers: list[int], cut_ids: list[str]) -> str:
    """Teacher weights + chosen layers + utterances: what a cached target depends on."""
    h = hashlib.sha256()
    path = Path(teacher_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path.with_suffix(".safetensors")]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps([layers, sorted(cut_ids)]).encode())
    return h.hexdigest()


def cache_teacher(
    teacher, teacher_path, cuts, layers: list[int], prefix: Path, max_duration: float, show_progress: bool = True
) -> dict:
    """fp16 hidden states of ``layers`` for every utterance, in one safetensors file
    (written under a temporary name, then renamed); reused while its fingerprint holds,
    refused (never overwritten) when it does not or when the file is damaged."""
    want = teacher_fingerprint(teacher_path, layers, [c.id for c in cuts])
    if prefix.with_suffix(".json").exists():
        try:
            tensors, meta = load_checkpoint(prefix)
        except CheckpointError as e:
            raise StaleCacheError(
                f"teacher cache {prefix} cannot be used ({e}); delete "
                f"{prefix}.safetensors and {prefix}.json to rebuild it"
            ) from None
        if meta.get("fingerprint") != want:
            raise StaleCacheError(
                f"teacher cache {prefix} was built from another teacher, layer set or "
                f"data; delete {prefix}.safetensors and {prefix}.json to rebuild it"
            )
        return tensors
    tensors = {}
    sampler = make_sampler(cuts, max_duration, False, 0)
    for ids, wavs, lens in progress(
        torch.utils.data.DataLoader(WaveDataset(), sampler=sampler, batch_size=None),
        desc="teacher cache",
        enable=show_progress,
    ):
        device = teacher.device
        states, flens = teacher(wavs.to(device), lens.to(device))
        for i, u in enumerate(ids):
            for layer in layers:
                tensors[f"{u}/{layer}"] = states[layer][i, : int(flens[i])].half().cpu()
    save_checkpoint(
        prefix, tensors, {"kind": "teacher-cache", "fingerprint": want, "layers": layers, "teacher": str(teacher_path)}
    )
    return tensors


class DistillCriterion:
    """The student's predictions against the teacher's layers, on the teacher's frames:

        L = L_kind(preds, teacher layers) + hidden_weight * sum_j MSE(proj_j(student_j), teacher_map(j))
            + attention_weight * sum_j KL(teacher attention || student attention)

    L_kind is DistilHuBERT's sum over layers of L1 + cos_weight * (-log sigmoid(cos)), or
    FitHuBERT's hints (0.1 on intermediate layers, 1.0 on the last). Returns the loss and
    every named term.

    ``loss_weighting: uncertainty`` learns the target layers' weights instead, as the
    acoustic model's taps do (train.compute_loss): layer i's loss enters as
    exp(-s_i) L_i + s_i / 2, s_i (the student's ``loss_log_vars``) started at -log of its
    hand weight; the log keeps each weight ``w.{i}`` and its share ``share.{i}`` (sum 1)."""

    def __init__(self, cfg: DistillConfig, student, teacher_layers: int):
        self.cfg, self.student, self.teacher_layers = cfg, student, teacher_layers
        self.hidden_map = layer_map(cfg.student.num_layers, teacher_layers) if cfg.hidden_weight > 0 else []
        n = len(student.targets)  # the target layers' hand weights
        self.weights = (
            [cfg.hint_weights[0]] * (n - 1) + [cfg.hint_weights[1]] if student.criterion == "hints" else [1.0] * n
        )

    def __call__(self, module, out, t_states: dict, t_lens: torch.Tensor, t_att) -> tuple[torch.Tensor, dict]:
        cfg, student = self.cfg, self.student
        preds, p_lens, s_states, s_att = out
        T = t_states[min(t_states)].shape[1]
        aligned = []
        for p in preds:
            a, mask = align_frames(p, p_lens, T, t_lens)
            aligned.append(a)
        tgt = [t_states[layer] for layer in student.targets]
        log_vars = module.loss_log_vars if cfg.loss_weighting == "uncertainty" else None
        learned = None if log_vars is None else torch.exp(-log_vars)
        if student.criterion == "hints":
            loss, terms = hint_loss(aligned, tgt, mask, self.weights if learned is None else learned)
        else:
            loss, terms = distilhubert_loss(aligned, tgt, mask, cfg.cos_weight, learned)
        if learned is not None:
            loss = loss + 0.5 * log_vars.sum()
            for i, (wi, share) in enumerate(learned_weights(log_vars)):
                terms[f"w.{i}"], terms[f"share.{i}"] = wi, share
        own_lens = student.own_lengths(p_lens)  # at the student's own rate
        for j, layer in enumerate(self.hidden_map):
            h, _ = align_frames(module.hidden_proj[j](s_states[j + 1]), own_lens, T, t_lens)
            term = ((h - t_states[layer]).pow(2).mean(-1) * mask).sum() / mask.sum()
            loss = loss + cfg.hidden_weight * term
            terms[f"hidden.{j}"] = float(term.detach())
        if cfg.attention_weight > 0:
            for j, layer in enumerate(layer_map(cfg.student.num_layers, self.teacher_layers)):
                term = attention_map_loss(s_att[j], t_att[layer - 1], mask)
                loss = loss + cfg.attention_weight * term
                terms[f"attention.{j}"] = float(term.detach())
        terms["loss"] = float(loss.detach())
        return loss, terms


class DistillTask(WaveTask):
    """A student learning a frozen teacher's layers on the corpus's waveforms."""

    kind = "ssl-distillation"
    forward_methods = ("predict",)

    def __init__(self, cfg: DistillConfig, engine: Engine, cuts):
        self.cfg, self.engine, self.cuts = cfg, engine, cuts
        self.teacher = load_teacher(cfg.teacher)
        if cfg.queries.budget:  # seen through its answers on the chosen clips only
            self.teacher = BlackBoxTeacher(self.teacher, len(cuts))
        torch.manual_seed(cfg.seed)
        self.model = build_student(cfg.student, self.teacher)
        if cfg.init:
            tensors, _ = load_checkpoint(cfg.init)
            load_model_state(self.model, tensors, "student.", cfg.init)
        self.criterion = DistillCriterion(cfg, self.model, self.teacher.num_layers)
        if cfg.loss_weighting == "uncertainty":  # in the model, so that DDP averages its gradients
            self.model.loss_log_vars = loss_log_vars(self.criterion.weights)
        if self.criterion.hidden_map:
            self.model.hidden_proj = nn.ModuleList(
                nn.Linear(self.model.dim, self.teacher.dim) for _ in self.criterion.hidden_map
            )
        if cfg.attention_weight > 0:  # attention probabilities are returned by the eager kernels only
            self.teacher.upstream.model.set_attn_implementation("eager")
            self.model.model.set_attn_implementation("eager")
        self.layers = sorted(set(self.model.targets) | set(self.criterion.hidden_map))
        self.teacher.to(engine.fabric.device)
        self.cache = None

    def teacher_states(self, ids, wavs, lens):
        """{layer: (N, T, C)}, (N,) frame lengths, and the attention maps (online, when asked)."""
        if self.cache is not None:
            flens = torch.tensor([self.cache[f"{u}/{self.layers[0]}"].shape[0] for u in ids])
            T = int(flens.max())
            states = {}
            for layer in self.layers:
                x = torch.zeros(len(ids), T, self.teacher.dim)
                for i, u in enumerate(ids):
                    x[i, : flens[i]] = self.cache[f"{u}/{layer}"].float()
                states[layer] = x.to(wavs.device)
            return states, flens.to(wavs.device), None
        if self.cfg.attention_weight > 0:
            states, flens, att = self.teacher(wavs, lens, output_attentions=True)
            return dict(enumerate(states)), flens, att
        states, flens = self.teacher(wavs, lens)
        return dict(enumerate(states)), flens, None

    def step(self, model, batch):
        ids, wavs, lens = batch
        device = self.engine.fabric.device
        wavs, lens = wavs.to(device), lens.to(device)
        t_states, t_lens, t_att = self.teacher_states(ids, wavs, lens)
        step_subnets = getattr(self.model, "step_subnets", None)
        if step_subnets is None:
            out = model.predict(wavs, lens, output_attentions=self.cfg.attention_weight > 0)
            return self.criterion(model, out, t_states, t_lens, t_att)
        # a supernet: the mean of the losses of the subnets this step trains (three under the
        # sandwich rule), one backward; each subnet is drawn once, here
        subnets = step_subnets()
        runs = [self.criterion(model, model.predict(wavs, lens, subnet=s), t_states, t_lens, t_att) for s in subnets]
        terms = {k: sum(t[k] for _, t in runs) / len(runs) for k in runs[0][1]}
        return sum(loss for loss, _ in runs) / len(runs), terms

    def on_epoch_end(self, engine: Engine) -> None:
        if engine.is_main:
            save_student(
                self.model, engine.out / "student", {"teacher": str(self.cfg.teacher), "config": to_dict(self.cfg)}
            )


def distill(cfg: DistillConfig) -> dict:
    """Train a student of ``cfg.teacher``; writes ``{out_dir}/student`` (+ ``student.hf``)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(cfg)
    cuts = select_clips(load_wave_cuts(cfg.data), cfg.queries)
    task = DistillTask(cfg, engine, cuts)
    if cfg.cache_teacher and cfg.attention_weight == 0:
        with engine.fabric.rank_zero_first():  # rank 0 builds the cache; the others read it
            task.cache = cache_teacher(
                task.teacher,
                cfg.teacher,
                cuts,
                task.layers,
                out / "teacher_cache",
                cfg.data.max_duration,
                cfg.progress and engine.is_main,
            )
    state = engine.fit(task)
    student = task.model
    summary = {
        "utterances": len(cuts),
        "hours": round(sum(c.duration for c in cuts) / 3600, 3),
        "student_params": sum(
            p.numel() for n, p in student.named_parameters() if not n.startswith(("heads", *TRAINING_ONLY))
        ),
        "teacher_params": sum(p.numel() for p in task.teacher.parameters()) or None,
        "teacher_cached": task.cache is not None,
        "queries": {"budget": cfg.queries.budget, "select": cfg.queries.select, "clips": len(cuts)}
        | ({"asked_this_run": task.teacher.queries} if cfg.queries.budget else {}),
    } | state
    if engine.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
