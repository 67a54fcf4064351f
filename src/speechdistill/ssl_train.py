"""Training self-supervised teachers and their students on waveforms.

    speechdistill pretrain data/small --out exp/ssl/teacher       # HuBERT iteration 1
    speechdistill distill-ssl configs/ssl/distilhubert.yaml        # or fithubert.yaml

``pretrain`` is HuBERT's first iteration (Hsu et al. 2021): k-means (scikit-learn's
MiniBatchKMeans, as in fairseq's recipe) on 39-dim MFCCs gives a cluster id per
20 ms frame; a small Hugging Face ``HubertModel`` learns to predict the ids of
masked spans (cosine similarity to learned cluster embeddings, temperature 0.1,
cross-entropy on masked frames only). The result is a Hugging Face directory,
so it is a teacher like any downloaded HuBERT.

Both loops run under Lightning Fabric (DDP with ``torchrun``, bf16 with
``precision=bf16-mixed``), checkpoint every epoch (safetensors + JSON, optimizer
and RNG state) and resume from it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechdistill.checkpoint import (
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from speechdistill.config import to_dict
from speechdistill.progress import progress
from speechdistill.students.ssl import StudentConfig, layer_map
from speechdistill.utils import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class WaveData:
    corpus: str = "data/small"
    split: str = "train"
    max_hours: float = 0.0  # 0: the whole split; else its first utterances up to this many hours
    max_duration: float = 60.0  # seconds of audio per batch

    def __post_init__(self):
        if self.max_duration <= 0 or self.max_hours < 0:
            raise ValueError("data.max_duration must be > 0 and data.max_hours >= 0")


@dataclass
class LoopConfig:
    lr: float = 5e-4
    warmup_steps: int = 200
    epochs: int = 3
    grad_clip: float = 10.0
    precision: str = "32-true"
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress: bool = True

    def __post_init__(self):
        if self.lr <= 0 or self.epochs < 1 or self.warmup_steps < 0:
            raise ValueError("optim.lr must be > 0, optim.epochs >= 1, optim.warmup_steps >= 0")


@dataclass
class PretrainConfig:
    out_dir: str = "exp/ssl/teacher"
    seed: int = 0
    data: WaveData = field(default_factory=WaveData)
    optim: LoopConfig = field(default_factory=LoopConfig)
    clusters: int = 100
    kmeans_frames: int = 200_000  # MFCC frames sampled to fit k-means
    hidden_size: int = 192
    num_layers: int = 12
    num_heads: int = 4
    ff_dim: int = 768
    conv_dim: int = 64
    mask_prob: float = 0.5  # about this fraction of frames is masked
    mask_length: int = 5
    final_dim: int = 64
    logit_temperature: float = 0.1

    def __post_init__(self):
        for k in ("clusters", "hidden_size", "num_layers", "num_heads", "ff_dim", "conv_dim", "final_dim"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")


@dataclass
class DistillConfig:
    teacher: str = "exp/ssl/teacher/hf"
    out_dir: str = "exp/ssl/distilhubert"
    seed: int = 0
    data: WaveData = field(default_factory=WaveData)
    optim: LoopConfig = field(default_factory=lambda: LoopConfig(lr=2e-4))
    student: StudentConfig = field(default_factory=StudentConfig)
    cos_weight: float = 1.0  # DistilHuBERT's lambda
    hint_weights: tuple[float, float] = (0.1, 1.0)  # FitHuBERT: intermediate, last
    hidden_weight: float = 0.0  # TinyBERT hidden-state term (distilhubert: student layer j vs teacher map(j))
    attention_weight: float = 0.0  # TinyBERT attention-map term (equal frame rates only)
    cache_teacher: bool = True  # fp16 teacher layers on disk, computed once; else online

    def __post_init__(self):
        if self.attention_weight > 0 and self.student.kind != "distilhubert":
            raise ValueError("attention_weight needs equal frame rates: use it with student.kind=distilhubert")


# -- data ------------------------------------------------------------------------------
def load_wave_cuts(data: WaveData):
    from speechdistill.data.corpus import load_split

    cuts = load_split(data.corpus, data.split)
    if data.max_hours:
        kept, total = [], 0.0
        for c in cuts:
            if total >= data.max_hours * 3600:
                break
            kept.append(c)
            total += c.duration
        from lhotse import CutSet

        cuts = CutSet.from_cuts(kept)
    return cuts


class WaveDataset(torch.utils.data.Dataset):
    """A lhotse CutSet batch -> ids, (N, S) zero-padded waveforms, (N,) sample counts."""

    def __getitem__(self, cuts):
        from speechdistill.data.audio import load_cut_audio

        wavs = [torch.from_numpy(load_cut_audio(c)) for c in cuts]
        lens = torch.tensor([w.shape[0] for w in wavs])
        return [c.id for c in cuts], nn.utils.rnn.pad_sequence(wavs, batch_first=True), lens


# -- the loop ----------------------------------------------------------------------------
class Loop:
    """Epochs of ``step(batch) -> (loss, terms)`` with Fabric, a warmup + linear-decay
    schedule, clipping, a checkpoint per epoch and resume."""

    def __init__(self, module: nn.Module, cuts, cfg: LoopConfig, out: Path, seed: int, max_duration: float,
                 forward_methods: tuple[str, ...] = ()):  # fmt: skip
        from lightning_fabric import Fabric

        from speechdistill.data.batching import make_sampler
        from speechdistill.train import lr_lambda

        self.fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                             strategy=cfg.strategy, precision=cfg.precision)  # fmt: skip
        self.fabric.launch()
        self.cfg, self.out, self.seed, self.cuts = cfg, out, seed, cuts
        self.sampler = make_sampler(cuts, max_duration, True, seed, 10, self.fabric.world_size,
                                    self.fabric.global_rank)  # fmt: skip
        self.sampler.set_epoch(0)
        per_epoch = sum(1 for _ in self.sampler)
        self.raw = module
        self.optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup_steps, "linear", per_epoch * cfg.epochs, 0.0))
        self.state = {"epoch": 0, "step": 0, "history": []}
        if (out / "last.json").exists():
            self.state = load_training_state(out / "last", module, "module.", self.optimizer, self.scheduler)["state"]
            log.info("resumed %s at epoch %d", out, self.state["epoch"])
        self.module, self.optimizer = self.fabric.setup(module, self.optimizer)
        for name in forward_methods:  # methods the step calls instead of forward (DDP must see them)
            self.module.mark_forward_method(name)

    def run(self, step, on_epoch_end=None) -> dict:
        cfg, fabric, st = self.cfg, self.fabric, self.state
        start = time.time()
        while st["epoch"] < cfg.epochs:
            self.sampler.set_epoch(st["epoch"])
            # Dropout draws from torch's RNG and HF's _compute_mask_indices (HuBERT's masks)
            # from numpy's global one: reseed both per epoch and rank, so a run repeats
            # exactly and a run resumed at an epoch boundary continues as if never stopped.
            epoch_seed = int(np.random.SeedSequence([self.seed, st["epoch"], fabric.global_rank]).generate_state(1)[0])
            torch.manual_seed(epoch_seed)
            np.random.seed(epoch_seed)
            loader = torch.utils.data.DataLoader(WaveDataset(), sampler=self.sampler, batch_size=None)
            self.module.train()
            sums: dict[str, float] = {}
            n = 0
            it = iter(progress(loader, desc=f"epoch {st['epoch']}", enable=cfg.progress and fabric.is_global_zero))
            while True:
                batch = next(it, None)
                # every rank continues only while all have a batch (bucketing gives ranks uneven counts)
                ready = fabric.all_reduce(torch.tensor(float(batch is not None)), reduce_op="sum")
                if float(ready) < fabric.world_size:
                    break
                ids, wavs, lens = batch
                loss, terms = step(self.module, ids, wavs.to(fabric.device), lens.to(fabric.device))
                fabric.backward(loss)
                if cfg.grad_clip > 0:
                    fabric.clip_gradients(self.module, self.optimizer, max_norm=cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                st["step"] += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
            row = {"epoch": st["epoch"], "step": st["step"]} | {k: v / max(1, n) for k, v in sums.items()}
            st["history"].append(row)
            st["epoch"] += 1
            if fabric.is_global_zero:
                log.info("epoch %d: %s", row["epoch"], ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                               if k not in ("epoch", "step")))  # fmt: skip
                self.out.mkdir(parents=True, exist_ok=True)
                save_training_state(self.out / "last", self.raw, "module.", self.optimizer, self.scheduler,
                                    {"kind": "ssl-loop", "state": st})  # fmt: skip
                if on_epoch_end is not None:
                    on_epoch_end()
        st["seconds_this_run"] = round(time.time() - start, 1)
        return st


# -- pretraining -------------------------------------------------------------------------
def kmeans_labels(cuts, cfg: PretrainConfig, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Cluster id per 20 ms frame (every second 10 ms MFCC frame) of every utterance."""
    from sklearn.cluster import MiniBatchKMeans

    from speechdistill.data.audio import load_cut_audio
    from speechdistill.data.features import mfcc_with_deltas

    feats = {c.id: mfcc_with_deltas(load_cut_audio(c))[::2] for c in progress(
        cuts, total=len(cuts), desc="MFCC", enable=show_progress)}  # fmt: skip
    allf = np.concatenate(list(feats.values()))
    mean, std = allf.mean(0), allf.std(0) + 1e-5
    rng = np.random.default_rng(cfg.seed)
    sample = allf[rng.choice(len(allf), min(cfg.kmeans_frames, len(allf)), replace=False)]
    km = MiniBatchKMeans(cfg.clusters, batch_size=10_000, n_init=3, max_iter=100, random_state=cfg.seed)
    km.fit((sample - mean) / std)
    log.info("k-means: %d clusters on %d of %d frames, inertia per frame %.2f", cfg.clusters, len(sample),
             len(allf), km.inertia_ / len(sample))  # fmt: skip
    return {k: km.predict((v - mean) / std).astype(np.int64) for k, v in feats.items()}


class HuBERTPretrainModel(nn.Module):
    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        from transformers import HubertConfig, HubertModel

        self.cfg = cfg
        self.hubert = HubertModel(HubertConfig(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.ff_dim, conv_dim=(cfg.conv_dim,) * 7, num_conv_pos_embeddings=64,
            num_conv_pos_embedding_groups=16, hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
            feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=True, mask_time_prob=cfg.mask_prob,
            mask_time_length=cfg.mask_length))  # fmt: skip
        self.proj = nn.Linear(cfg.hidden_size, cfg.final_dim)
        self.label_embeddings = nn.Parameter(torch.randn(cfg.clusters, cfg.final_dim) * 0.1)

    def forward(self, wavs, lens, labels):
        """-> masked-prediction loss, accuracy on masked frames."""
        from transformers.models.hubert.modeling_hubert import _compute_mask_indices

        frame_lens = self.hubert._get_feat_extract_output_lengths(lens).long()
        T = int(self.hubert._get_feat_extract_output_lengths(torch.tensor(wavs.shape[1])))
        real = torch.arange(T, device=wavs.device)[None, :] < frame_lens[:, None]
        mask = torch.from_numpy(_compute_mask_indices((wavs.shape[0], T), self.cfg.mask_prob, self.cfg.mask_length,
                                                      attention_mask=real.cpu(), min_masks=2)).to(wavs.device)  # fmt: skip
        mask &= real
        att = (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lens[:, None]).long()
        h = self.hubert(wavs, attention_mask=att, mask_time_indices=mask).last_hidden_state
        logits = F.cosine_similarity(self.proj(h[mask])[:, None, :], self.label_embeddings[None], dim=-1)
        target = labels[:, :T][mask]
        loss = F.cross_entropy(logits / self.cfg.logit_temperature, target)
        return loss, float((logits.argmax(-1) == target).float().mean())


def pretrain(cfg: PretrainConfig) -> dict:
    """Train the teacher; writes ``{out_dir}/hf`` (a Hugging Face directory) and a summary."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuts = load_wave_cuts(cfg.data)
    torch.manual_seed(cfg.seed)
    model = HuBERTPretrainModel(cfg)
    loop = Loop(model, cuts, cfg.optim, out, cfg.seed, cfg.data.max_duration)
    labels_path = out / "labels.npz"
    with loop.fabric.rank_zero_first():  # rank 0 clusters and writes; the others read
        if labels_path.exists():
            labels = dict(np.load(labels_path))
        else:
            labels = kmeans_labels(cuts, cfg, cfg.optim.progress)
            tmp = out / "labels.tmp.npz"
            np.savez(tmp, **labels)
            tmp.replace(labels_path)

    def step(module, ids, wavs, lens):
        T = int(module.hubert._get_feat_extract_output_lengths(torch.tensor(wavs.shape[1])))
        lab = torch.zeros(len(ids), T, dtype=torch.long)
        for i, u in enumerate(ids):
            n = min(T, len(labels[u]))
            lab[i, :n] = torch.from_numpy(labels[u][:n])
        loss, acc = module(wavs, lens, lab.to(wavs.device))
        return loss, {"loss": float(loss.detach()), "masked_accuracy": acc}

    def export():
        _save_hf(model.hubert, out / "hf")

    state = loop.run(step, export)
    summary = {"config": to_dict(cfg), "utterances": len(cuts),
               "hours": round(sum(c.duration for c in cuts) / 3600, 3),
               "params": sum(p.numel() for p in model.hubert.parameters())} | state  # fmt: skip
    if loop.fabric.is_global_zero:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _save_hf(model, path: Path) -> None:
    """save_pretrained into a temporary directory, then swap it in (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


# -- distillation ------------------------------------------------------------------------
def teacher_fingerprint(teacher_path: str | Path, layers: list[int], cut_ids: list[str]) -> str:
    """Teacher weights + chosen layers + utterances: what a cached target depends on."""
    import hashlib

    h = hashlib.sha256()
    path = Path(teacher_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path.with_suffix(".safetensors")]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps([layers, sorted(cut_ids)]).encode())
    return h.hexdigest()


def cache_teacher(teacher, teacher_path, cuts, layers: list[int], prefix: Path, max_duration: float,
                  show_progress: bool = True) -> dict:  # fmt: skip
    """fp16 hidden states of ``layers`` for every utterance, in one safetensors file
    (written under a temporary name, then renamed); reused while its fingerprint holds,
    refused (never overwritten) when it does not or when the file is damaged."""
    from speechdistill.checkpoint import CheckpointError
    from speechdistill.data.batching import make_sampler
    from speechdistill.distill.soft_labels import StaleCacheError

    want = teacher_fingerprint(teacher_path, layers, [c.id for c in cuts])
    if prefix.with_suffix(".json").exists():
        try:
            tensors, meta = load_checkpoint(prefix)
        except CheckpointError as e:
            raise StaleCacheError(f"teacher cache {prefix} cannot be used ({e}); delete "
                                  f"{prefix}.safetensors and {prefix}.json to rebuild it") from None  # fmt: skip
        if meta.get("fingerprint") != want:
            raise StaleCacheError(f"teacher cache {prefix} was built from another teacher, layer set or "
                                  f"data; delete {prefix}.safetensors and {prefix}.json to rebuild it")  # fmt: skip
        return tensors
    tensors = {}
    sampler = make_sampler(cuts, max_duration, False, 0)
    for ids, wavs, lens in progress(torch.utils.data.DataLoader(WaveDataset(), sampler=sampler, batch_size=None),
                                    desc="teacher cache", enable=show_progress):  # fmt: skip
        device = next(teacher.parameters()).device
        states, flens = teacher(wavs.to(device), lens.to(device))
        for i, u in enumerate(ids):
            for layer in layers:
                tensors[f"{u}/{layer}"] = states[layer][i, : int(flens[i])].half().cpu()
    save_checkpoint(prefix, tensors, {"kind": "teacher-cache", "fingerprint": want, "layers": layers,
                                      "teacher": str(teacher_path)})  # fmt: skip
    return tensors


def distill(cfg: DistillConfig) -> dict:
    """Train a student of ``cfg.teacher``; writes ``{out_dir}/student`` (+ ``student.hf``)."""
    from speechdistill.distill.ssl_losses import (
        align_frames,
        attention_map_loss,
        distilhubert_loss,
        hint_loss,
    )
    from speechdistill.students.ssl import build_student, save_student
    from speechdistill.teachers.ssl import load_teacher

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(cfg.teacher)
    cuts = load_wave_cuts(cfg.data)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, teacher)
    targets = student.targets
    hidden_map = layer_map(cfg.student.num_layers, teacher.num_layers) if cfg.hidden_weight > 0 else []
    if hidden_map:
        student.hidden_proj = nn.ModuleList(nn.Linear(student.dim, teacher.dim) for _ in hidden_map)
    if cfg.attention_weight > 0:  # attention probabilities are returned by the eager kernels only
        teacher.upstream.model.set_attn_implementation("eager")
        student.model.set_attn_implementation("eager")
    need = sorted(set(targets) | set(hidden_map))
    loop = Loop(student, cuts, cfg.optim, out, cfg.seed, cfg.data.max_duration, forward_methods=("predict",))
    teacher.to(loop.fabric.device)
    cache = None
    if cfg.cache_teacher and cfg.attention_weight == 0:
        with loop.fabric.rank_zero_first():  # rank 0 builds the cache; the others read it
            cache = cache_teacher(teacher, cfg.teacher, cuts, need, out / "teacher_cache", cfg.data.max_duration,
                                  cfg.optim.progress and loop.fabric.is_global_zero)  # fmt: skip
    is_fit = cfg.student.kind == "fithubert"
    weights = [cfg.hint_weights[0]] * (len(targets) - 1) + [cfg.hint_weights[1]]

    def teacher_states(ids, wavs, lens):
        if cache is not None:
            flens = torch.tensor([cache[f"{u}/{need[0]}"].shape[0] for u in ids])
            T = int(flens.max())
            states = {}
            for layer in need:
                x = torch.zeros(len(ids), T, teacher.dim)
                for i, u in enumerate(ids):
                    x[i, : flens[i]] = cache[f"{u}/{layer}"].float()
                states[layer] = x.to(wavs.device)
            return states, flens.to(wavs.device), None
        out_ = teacher(wavs, lens, output_attentions=True) if cfg.attention_weight > 0 else teacher(wavs, lens)
        return dict(enumerate(out_[0])), out_[1], (out_[2] if len(out_) > 2 else None)

    def step(module, ids, wavs, lens):
        t_states, t_lens, t_att = teacher_states(ids, wavs, lens)
        T = t_states[need[0]].shape[1]
        preds, p_lens, s_states, s_att = module.predict(wavs, lens, output_attentions=cfg.attention_weight > 0)
        aligned = []
        for p in preds:
            a, mask = align_frames(p, p_lens, T, t_lens)
            aligned.append(a)
        tgt = [t_states[layer] for layer in targets]
        if is_fit:
            loss, terms = hint_loss(aligned, tgt, mask, weights)
        else:
            loss, terms = distilhubert_loss(aligned, tgt, mask, cfg.cos_weight)
        own_lens = p_lens // cfg.student.time_reduction if is_fit else p_lens  # at the student's own rate
        for j, layer in enumerate(hidden_map):
            h, _ = align_frames(module.hidden_proj[j](s_states[j + 1]), own_lens, T, t_lens)
            term = ((h - t_states[layer]).pow(2).mean(-1) * mask).sum() / mask.sum()
            loss = loss + cfg.hidden_weight * term
            terms[f"hidden.{j}"] = float(term.detach())
        if cfg.attention_weight > 0:
            for j, layer in enumerate(layer_map(cfg.student.num_layers, teacher.num_layers)):
                term = attention_map_loss(s_att[j], t_att[layer - 1], mask)
                loss = loss + cfg.attention_weight * term
                terms[f"attention.{j}"] = float(term.detach())
        terms["loss"] = float(loss.detach())
        return loss, terms

    def export():
        save_student(student, out / "student", {"teacher": str(cfg.teacher), "config": to_dict(cfg)})

    state = loop.run(step, export)
    summary = {"utterances": len(cuts), "hours": round(sum(c.duration for c in cuts) / 3600, 3),
               "student_params": sum(p.numel() for n, p in student.named_parameters()
                                     if not n.startswith(("heads", "hidden_proj"))),
               "teacher_params": sum(p.numel() for p in teacher.parameters()),
               "teacher_cached": cache is not None} | state  # fmt: skip
    if loop.fabric.is_global_zero:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
