"""Pre-training a HuBERT-style teacher on a corpus: the task the engine runs for
``speechdistill pretrain``.

    speechdistill pretrain configs/ssl/pretrain.yaml data.corpus=data/small

HuBERT's first iteration (Hsu et al. 2021): k-means (scikit-learn's MiniBatchKMeans,
as in fairseq's recipe) on 39-dim MFCCs gives a cluster id per 20 ms frame; a small
Hugging Face ``HubertModel`` learns to predict the ids of masked spans. The model
(``HuBERTPretrainModel``: HuBERT, a projection and learned cluster embeddings, giving
cosine-similarity logits on masked frames) and its loss (``MaskedPrediction``:
cross-entropy at temperature 0.1, and the accuracy) are separate classes; the task
joins them. The result is a Hugging Face directory, a teacher like any downloaded HuBERT.

Options from the papers that followed:

* HuBERT's second iteration: ``labels_from: exp/ssl/teacher/hf`` clusters the hidden
  states of layer ``labels_layer`` of a trained model instead of MFCCs.
* ILS-SSL (Wang et al. 2022): ``ils_layers: [4]`` adds the same masked-prediction loss
  on the output of those intermediate layers (each with its own projection, sharing the
  cluster embeddings); the loss is the sum over the last layer and these.
* WavLM's utterance mixing: ``mix_prob: 0.2`` (see :func:`mix_utterances`).
* A second codebook: ``mfcc_clusters: 100`` beside PBERT's phones (or ``labels_from``'s
  clusters) also predicts MFCC k-means ids, by its own projection and embeddings, as
  fairseq's HuBERT trains on several label sets; phones alone teach a model to discard
  the voice, MFCC clusters keep the spectrum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

from speechdistill.align.store import any_alignment
from speechdistill.checkpoint import save_hf_dir
from speechdistill.config import to_dict
from speechdistill.data.audio import SAMPLE_RATE, load_cut_audio
from speechdistill.data.batching import SkipBatches, WaveData, WaveDataset, load_wave_cuts, make_sampler
from speechdistill.data.features import mfcc_with_deltas
from speechdistill.engine import Engine, EngineConfig, OptimConfig, Task
from speechdistill.masks import padding_mask
from speechdistill.progress import progress
from speechdistill.teachers.ssl import wave_mask
from speechdistill.teachers.upstream import load_upstream
from speechdistill.units.phones import SIL, SIL_ARPABET, strip_stress
from speechdistill.utils import DataError, atomic_write_text

log = logging.getLogger(__name__)


def ssl_optim(lr: float) -> OptimConfig:
    """The SSL tasks' optimisation: warmup, then a straight line down to zero; clipping at 10."""
    return OptimConfig(
        lr=lr,
        weight_decay=0.01,
        warmup_steps=200,
        grad_clip=10.0,
        max_epochs=3,
        schedule="linear",
        final_lr_ratio=0.0,
        early_stop_patience=0,
    )


@dataclass
class PretrainConfig(EngineConfig):
    out_dir: str = "exp/ssl/teacher"
    optim: OptimConfig = field(default_factory=lambda: ssl_optim(5e-4))
    checkpoint_every: int = 0  # steps; 0: epoch ends (a resume is exact at either)
    data: WaveData = field(default_factory=WaveData)
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
    # an upstream (HF directory, SSL student, acoustic model): k-means on its layer
    # `labels_layer` (HuBERT iteration 2; a small CTC model: CTC-clustering)
    labels_from: str = ""
    labels_layer: int = 6
    # PBERT: the targets are the phones of this named alignment of the corpus (e.g. own),
    # not clusters; `clusters` must hold the phone set
    labels_alignment: str = ""
    ils_layers: list[int] = field(default_factory=list)  # ILS-SSL: the loss also on these layers (1-based)
    mix_prob: float = 0.0  # WavLM's utterance mixing: this share of utterances gets part of another added
    # a second codebook beside labels_alignment / labels_from: MFCC k-means with this many
    # clusters, its masked-prediction loss (last layer, own projection) added x mfcc_weight
    mfcc_clusters: int = 0
    mfcc_weight: float = 1.0
    # pre-LN Transformer layers (HF's do_stable_layer_norm, HuBERT Large's and WavLM's);
    # the default is HuBERT Base's post-LN
    pre_norm: bool = False
    dropout: float = 0.1  # hidden and attention dropout
    # HuBERT's pred_nomask_weight: the loss on the frames left unmasked (last layer, main
    # labels) is added at this weight; HuBERT's own recipes keep it at 0
    nomask_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        for k in ("clusters", "hidden_size", "num_layers", "num_heads", "ff_dim", "conv_dim", "final_dim"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.nomask_weight < 0:
            raise ValueError(f"nomask_weight must be >= 0, got {self.nomask_weight}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.mix_prob <= 1:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}")
        if self.labels_alignment and self.labels_from:
            raise ValueError("labels_alignment (PBERT) and labels_from (clustering a model's layer) exclude each other")
        if self.labels_alignment and self.clusters < len(ALIGNED_PHONES):
            raise ValueError(
                f"labels_alignment: clusters must hold the {len(ALIGNED_PHONES)} phones, not {self.clusters}"
            )
        if self.mfcc_clusters < 0 or self.mfcc_weight <= 0:
            raise ValueError(
                f"mfcc_clusters must be >= 0 and mfcc_weight > 0, got {self.mfcc_clusters}, {self.mfcc_weight}"
            )
        if self.mfcc_clusters and not (self.labels_alignment or self.labels_from):
            raise ValueError(
                "mfcc_clusters adds MFCC targets beside labels_alignment or labels_from; "
                "for MFCC targets alone set clusters"
            )
        bad = [k for k in self.ils_layers if not 1 <= k < self.num_layers]
        if bad:
            raise ValueError(f"ils_layers {bad} must be intermediate layers, 1..{self.num_layers - 1}")


def label_features(cuts, cfg: PretrainConfig, show_progress: bool = True) -> dict[str, np.ndarray]:
    """What k-means clusters, per 20 ms frame: every second 10 ms MFCC frame, or (with
    ``labels_from``) the hidden states of layer ``labels_layer`` of that model."""
    if not cfg.labels_from:
        return {
            c.id: mfcc_with_deltas(load_cut_audio(c))[::2]
            for c in progress(cuts, total=len(cuts), desc="MFCC", enable=show_progress)
        }
    model = load_upstream(cfg.labels_from).eval()
    if not 0 <= cfg.labels_layer <= model.num_layers:
        raise DataError(f"labels_layer={cfg.labels_layer}: {cfg.labels_from} has hidden states 0..{model.num_layers}")
    feats = {}
    with torch.no_grad():
        for c in progress(cuts, total=len(cuts), desc=f"layer {cfg.labels_layer}", enable=show_progress):
            wav = torch.from_numpy(load_cut_audio(c))[None]
            states, _ = model(wav, torch.tensor([wav.shape[1]]))
            x = states[cfg.labels_layer][0].float().numpy()
            if not math.isclose(model.frame_shift, FRAME_20MS):  # e.g. a 40 ms CTC model: one frame per
                at = (np.arange(label_frames(wav.shape[1])) * FRAME_20MS / model.frame_shift).astype(np.int64)
                x = x[np.minimum(at, len(x) - 1)]  # two of the teacher's 20 ms frames
            feats[c.id] = x
    return feats


FRAME_20MS = 0.02
ALIGNED_PHONES = SIL_ARPABET


def label_frames(num_samples: int) -> int:
    """20 ms label frames of an utterance: every second 10 ms MFCC frame (snip_edges=False)."""
    return ((num_samples + 80) // 160 + 1) // 2


def alignment_labels(cuts, corpus, name: str) -> dict[str, np.ndarray]:
    """PBERT's targets: the phone (index in SIL + ARPAbet) at the centre of every 20 ms
    frame, from the named alignment; silence where an utterance has none (failed)."""
    aligned, _ = any_alignment(corpus, name, "train")  # the whole split's; ``cuts`` may be a subset
    index = {p: i for i, p in enumerate(ALIGNED_PHONES)}
    out, missing = {}, 0
    for c in cuts:
        n = label_frames(round(c.duration * SAMPLE_RATE))
        lab = np.full(n, index[SIL], dtype=np.int64)
        phones = (aligned.get(c.id) or {}).get("phone") or []
        missing += not phones
        centres = (np.arange(n) + 0.5) * FRAME_20MS
        for a in phones:
            sym = strip_stress(a.symbol)
            if sym not in index:
                raise DataError(f"utterance {c.id}: alignment {name} has the phone {a.symbol!r}, not ARPAbet or SIL")
            lab[(centres >= a.start) & (centres < a.start + a.duration)] = index[sym]
        out[c.id] = lab
    if missing:
        log.warning("PBERT: %d utterances have no %s alignment; their targets are silence", missing, name)
    return out


def kmeans_labels(cuts, cfg: PretrainConfig, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Cluster id per 20 ms frame of every utterance (see :func:`label_features`)."""
    feats = label_features(cuts, cfg, show_progress)
    allf = np.concatenate(list(feats.values()))
    mean, std = allf.mean(0), allf.std(0) + 1e-5
    rng = np.random.default_rng(cfg.seed)
    sample = allf[rng.choice(len(allf), min(cfg.kmeans_frames, len(allf)), replace=False)]
    km = MiniBatchKMeans(cfg.clusters, batch_size=10_000, n_init=3, max_iter=100, random_state=cfg.seed)
    km.fit((sample - mean) / std)
    log.info(
        "k-means: %d clusters on %d of %d frames, inertia per frame %.2f",
        cfg.clusters,
        len(sample),
        len(allf),
        km.inertia_ / len(sample),
    )
    return {k: km.predict((v - mean) / std).astype(np.int64) for k, v in feats.items()}


def mix_utterances(
    wavs: torch.Tensor, lens: torch.Tensor, prob: float, ratio_db: tuple[float, float] = (-5.0, 20.0)
) -> tuple[torch.Tensor, list[dict]]:
    """WavLM's utterance mixing (Chen et al. 2022): each utterance, with probability
    ``prob``, gets a random crop of another utterance of the batch (at most half its own
    length) added at a random place, scaled so that its energy is ``r`` dB below the
    primary's, r uniform in ``ratio_db``. The targets stay the primary's, so the model
    learns to denoise and to follow the main speaker. Draws from torch's global RNG (the
    engine reseeds it every epoch). Returns the mixed batch and what was added where."""
    out, mixes = wavs.clone(), []
    n = len(wavs)
    for i in range(n):
        if n < 2 or float(torch.rand(())) >= prob:
            continue
        j = (i + 1 + int(torch.randint(n - 1, ()))) % n
        li, lj = int(lens[i]), int(lens[j])
        length = max(1, int(float(torch.rand(())) * min(li // 2, lj)))
        src = int(torch.randint(lj - length + 1, ()))
        dst = int(torch.randint(li - length + 1, ()))
        r = ratio_db[0] + (ratio_db[1] - ratio_db[0]) * float(torch.rand(()))
        piece = wavs[j, src : src + length]
        e_primary = wavs[i, :li].pow(2).mean()
        e_piece = piece.pow(2).mean().clamp(min=1e-10)
        out[i, dst : dst + length] += piece * torch.sqrt(e_primary / (e_piece * 10 ** (r / 10)))
        mixes.append({"utterance": i, "other": j, "start": dst, "length": length, "ratio_db": r})
    return out, mixes


class HuBERTPretrainModel(nn.Module):
    """HuBERT with its masked-prediction head: cosine similarity of the projected output
    of each masked frame to learned cluster embeddings."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.hubert = HubertModel(
            HubertConfig(
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.ff_dim,
                conv_dim=(cfg.conv_dim,) * 7,
                num_conv_pos_embeddings=64,
                num_conv_pos_embedding_groups=16,
                hidden_dropout=cfg.dropout,
                attention_dropout=cfg.dropout,
                do_stable_layer_norm=cfg.pre_norm,
                activation_dropout=0.0,
                feat_proj_dropout=0.0,
                layerdrop=0.0,
                apply_spec_augment=True,
                mask_time_prob=cfg.mask_prob,
                mask_time_length=cfg.mask_length,
            )
        )
        self.proj = nn.Linear(cfg.hidden_size, cfg.final_dim)
        self.ils_proj = nn.ModuleList(nn.Linear(cfg.hidden_size, cfg.final_dim) for _ in cfg.ils_layers)
        self.label_embeddings = nn.Parameter(torch.randn(cfg.clusters, cfg.final_dim) * 0.1)
        if cfg.mfcc_clusters:  # the second codebook's own head
            self.mfcc_proj = nn.Linear(cfg.hidden_size, cfg.final_dim)
            self.mfcc_embeddings = nn.Parameter(torch.randn(cfg.mfcc_clusters, cfg.final_dim) * 0.1)

    def num_frames(self, num_samples: int) -> int:
        return int(self.hubert._get_feat_extract_output_lengths(torch.tensor(num_samples)))

    def real_frames(self, lens: torch.Tensor, T: int) -> torch.Tensor:
        """(N,) waveform lengths -> (N, T) True on each utterance's frames, False on padding."""
        return ~padding_mask(self.hubert._get_feat_extract_output_lengths(lens).long(), T)

    def logits(self, h: torch.Tensor, proj: nn.Module, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """(M, C) hidden states -> (M, clusters) cosine similarities to the cluster embeddings."""
        embeddings = self.label_embeddings if embeddings is None else embeddings
        return F.cosine_similarity(proj(h)[:, None, :], embeddings[None], dim=-1)

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(N, S), (N,) -> [(M, clusters)] cosine logits of the M masked frames, from the
        last layer then each of ``ils_layers``, then (``mfcc_clusters``) the last layer's
        against the MFCC codebook, then (``nomask_weight``) the last layer's of the real
        frames left unmasked; (N, T) the mask. The masks are drawn by
        HF's ``_compute_mask_indices`` (numpy's global RNG)."""
        T = self.num_frames(wavs.shape[1])
        real = self.real_frames(lens, T)
        mask = torch.from_numpy(
            _compute_mask_indices(
                (wavs.shape[0], T), self.cfg.mask_prob, self.cfg.mask_length, attention_mask=real.cpu(), min_masks=2
            )
        ).to(wavs.device)
        mask &= real
        att = wave_mask(lens, wavs.shape[1])
        out = self.hubert(
            wavs, attention_mask=att, mask_time_indices=mask, output_hidden_states=bool(self.cfg.ils_layers)
        )
        logits = [self.logits(out.last_hidden_state[mask], self.proj)]
        for k, proj in zip(self.cfg.ils_layers, self.ils_proj, strict=True):
            logits.append(self.logits(out.hidden_states[k][mask], proj))
        if self.cfg.mfcc_clusters:
            logits.append(self.logits(out.last_hidden_state[mask], self.mfcc_proj, self.mfcc_embeddings))
        if self.cfg.nomask_weight:
            logits.append(self.logits(out.last_hidden_state[real & ~mask], self.proj))
        return logits, mask


class MaskedPrediction(nn.Module):
    """HuBERT's loss: cross-entropy of the cosine logits at ``temperature`` against the
    frames' cluster ids, summed over the layers that predict (the last, then ILS-SSL's);
    also the accuracy of the last layer on masked frames."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, float]:
        loss = sum(F.cross_entropy(z / self.temperature, target) for z in logits)
        return loss, float((logits[0].argmax(-1) == target).float().mean())


class _Pretraining(nn.Module):
    """Model then criterion in one forward, so that the loss runs under the precision
    context of the model (bf16 autocast) as it did when the model computed it."""

    def __init__(self, model: HuBERTPretrainModel, criterion: MaskedPrediction):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, wavs, lens, labels, mfcc_labels=None):
        """The loss (plus ``mfcc_weight`` x the MFCC codebook's, when there is one, and
        ``nomask_weight`` x the unmasked frames') and the accuracy of the last layer on the
        main labels of the masked frames."""
        cfg = self.model.cfg
        logits, mask = self.model(wavs, lens)
        labels = labels[:, : mask.shape[1]]
        extra = 0.0
        if cfg.nomask_weight:
            *logits, seen = logits
            seen_frames = self.model.real_frames(lens, mask.shape[1]) & ~mask
            extra = cfg.nomask_weight * self.criterion([seen], labels[seen_frames])[0]
        if mfcc_labels is None:
            loss, acc = self.criterion(logits, labels[mask])
            return loss + extra, acc
        loss, acc = self.criterion(logits[:-1], labels[mask])
        mfcc, _ = self.criterion(logits[-1:], mfcc_labels[:, : mask.shape[1]][mask])
        return loss + cfg.mfcc_weight * mfcc + extra, acc


class WaveTask(Task):
    """A task on batches of waveforms (``cfg.data``: a WaveData), reseeded every epoch."""

    reseed_each_epoch = True
    cfg: PretrainConfig
    cuts: object

    def _sampler(self, epoch: int):
        fabric = self.engine.fabric
        sampler = make_sampler(
            self.cuts, self.cfg.data.max_duration, True, self.cfg.seed, 10, fabric.world_size, fabric.global_rank
        )
        sampler.set_epoch(epoch)
        return sampler

    def batches(self, epoch: int, skip: int):
        loader = torch.utils.data.DataLoader(
            WaveDataset(), sampler=SkipBatches(self._sampler(epoch), skip), batch_size=None
        )
        if not skip:
            return loader
        # Resumed inside the epoch: keep the checkpoint's torch RNG state, which is past the
        # draw (the workers' base seed) that the loader's iterator made when the epoch began.
        rng = torch.get_rng_state()
        batches = iter(loader)
        torch.set_rng_state(rng)
        return batches

    def num_batches(self) -> int:
        return sum(1 for _ in self._sampler(0))


class PretrainTask(WaveTask):
    kind = "ssl-pretraining"

    def __init__(self, cfg: PretrainConfig, engine: Engine, cuts, labels: dict[str, np.ndarray] | None = None):
        self.cfg, self.engine, self.cuts, self.labels = cfg, engine, cuts, labels
        self.mfcc_labels: dict[str, np.ndarray] | None = None
        torch.manual_seed(cfg.seed)
        self.hubert = HuBERTPretrainModel(cfg)
        self.model = _Pretraining(self.hubert, MaskedPrediction(cfg.logit_temperature))

    @staticmethod
    def padded(labels: dict[str, np.ndarray], ids, T: int) -> torch.Tensor:
        lab = torch.zeros(len(ids), T, dtype=torch.long)
        for i, u in enumerate(ids):
            n = min(T, len(labels[u]))
            lab[i, :n] = torch.from_numpy(labels[u][:n])
        return lab

    def step(self, model, batch):
        ids, wavs, lens = batch
        T = self.hubert.num_frames(wavs.shape[1])
        lab = self.padded(self.labels, ids, T)
        if self.cfg.mix_prob:
            wavs, _ = mix_utterances(wavs, lens, self.cfg.mix_prob)
        device = self.engine.fabric.device
        extra = [self.padded(self.mfcc_labels, ids, T).to(device)] if self.cfg.mfcc_clusters else []
        loss, acc = model(wavs.to(device), lens.to(device), lab.to(device), *extra)
        return loss, {"loss": float(loss.detach()), "masked_accuracy": acc}

    def on_epoch_end(self, engine: Engine) -> None:
        if engine.is_main:
            save_hf_dir(self.hubert.hubert, engine.out / "hf")


def cached_labels(path: Path, make) -> dict[str, np.ndarray]:
    """Labels per utterance from ``path``, or made by ``make()`` and written there (whole or not at all)."""
    if path.exists():
        return dict(np.load(path))
    labels = make()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **labels)
    tmp.replace(path)
    return labels


def pretrain(cfg: PretrainConfig) -> dict:
    """Train the teacher; writes ``{out_dir}/hf`` (a Hugging Face directory) and a summary."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuts = load_wave_cuts(cfg.data)
    engine = Engine(cfg)
    task = PretrainTask(cfg, engine, cuts)
    labels_path = out / "labels.npz"
    if cfg.labels_from:  # the source is in the name, so that a run on other labels never reads these
        source = hashlib.sha256(str(Path(cfg.labels_from).resolve()).encode()).hexdigest()[:8]
        labels_path = out / f"labels-{source}-layer{cfg.labels_layer}.npz"
    if cfg.labels_alignment:
        labels_path = out / f"labels-alignment-{cfg.labels_alignment}.npz"
    with engine.fabric.rank_zero_first():  # rank 0 clusters and writes; the others read
        if cfg.labels_alignment:
            task.labels = cached_labels(
                labels_path, lambda: alignment_labels(cuts, cfg.data.corpus, cfg.labels_alignment)
            )
        else:
            task.labels = cached_labels(labels_path, lambda: kmeans_labels(cuts, cfg, cfg.progress))
        if cfg.mfcc_clusters:
            mfcc = dataclasses.replace(
                cfg, clusters=cfg.mfcc_clusters, labels_from="", labels_alignment="", mfcc_clusters=0
            )
            task.mfcc_labels = cached_labels(
                out / f"labels-mfcc{cfg.mfcc_clusters}.npz", lambda: kmeans_labels(cuts, mfcc, cfg.progress)
            )
    state = engine.fit(task)
    summary = {
        "config": to_dict(cfg),
        "utterances": len(cuts),
        "hours": round(sum(c.duration for c in cuts) / 3600, 3),
        "params": sum(p.numel() for p in task.hubert.hubert.parameters()),
    } | state
    if engine.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
