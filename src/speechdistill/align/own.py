"""The project's own forced aligner, trained on the corpus itself from transcripts alone.

    speechdistill align data/small --backend own          # trains it, then aligns every split
    >>> aligner = train_aligner("data/small", AlignerConfig(out_dir="data/small/alignments/own/model"))

A monophone HMM aligner, trained flat-start (Young et al.'s HTK book; Kaldi's
``train_mono.sh``): every phone is ``states_per_phone`` left-to-right states, silence may
stand between words. The flat start cuts the utterance's speech (frames above an energy
threshold) into equal parts, one per state of its lexicon phones; Viterbi training of one
Gaussian mixture per state (gmm.py) on per-utterance normalised MFCCs moves the
boundaries to where the acoustics change. Those mixtures are the aligner (``rounds: 0``,
the default). With ``rounds: N`` a frame classifier (the project's encoder at 10 ms, no
subsampling) is trained on the GMM's alignment and re-aligns with scaled likelihoods (log
posterior - prior_scale * log prior), N times: it was worse on the dev voices (71.0 ->
69.9% of onsets within 20 ms; docs/notes.md, #13). The synthesiser's timings are never
read by default; ``init_from=NAME`` is the explicit exception: the GMMs are estimated from
an alignment the training utterances already have (the synthesiser's, an imported MFA or
Kaldi one, a hand-checked subset with ``init_utterances``) instead of the flat start, with
no Viterbi re-training (on the dev voices: 91.8% within 20 ms from all of `small`'s
synthesiser timings, against 73.9% from the flat start). Trained from given timings, a
network round is a hybrid NN-HMM aligner on exact labels, and with ``gmm_weight`` it
scores frames together with the GMMs (log-likelihoods added: the two miss different
boundaries). The model is saved with its phone set, so aligning is a likelihood
computation and a Viterbi search per utterance.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from torch import nn

from speechdistill.align.gmm import StateGMMs, normalise, train_gmm
from speechdistill.align.viterbi import AlignmentError, AlignmentGraph, segments, viterbi
from speechdistill.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from speechdistill.config import from_dict, to_dict
from speechdistill.data.audio import load_cut_audio
from speechdistill.data.batching import make_sampler
from speechdistill.data.features import FRAME_SHIFT, FbankExtractor, feature_stats, mfcc_with_deltas
from speechdistill.distill.losses import IGNORE, frame_ce
from speechdistill.engine import Engine, EngineConfig, OptimConfig, Task
from speechdistill.progress import progress
from speechdistill.students.encoders import Encoder, EncoderConfig
from speechdistill.units.lexicon import Lexicon, UnpronounceableWordError
from speechdistill.units.phones import SIL, SIL_ARPABET, strip_stress
from speechdistill.utils import DataError, atomic_write_text

log = logging.getLogger(__name__)
PHONES = SIL_ARPABET


@dataclass
class AlignerConfig(EngineConfig):
    out_dir: str = "alignments/own/model"
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=2e-3, warmup_steps=50, max_epochs=2, schedule="linear", final_lr_ratio=0.1, early_stop_patience=0
        )
    )
    checkpoint_every: int = 0
    # a time-delay network: 5 convolutions of 7 frames (a 310 ms receptive field) at 10 ms
    encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(
            kind="tdnn", preset=None, num_blocks=5, d_model=192, conv_kernel=7, subsampling=1, dropout=0.1
        )
    )
    states_per_phone: int = 3
    gmm_iterations: int = 12  # monophone GMM-HMM Viterbi training from the flat start (0: none)
    frame_shift_ms: float = 10.0  # the GMMs' frames (a network aligner works at 10 ms)
    gmm_components: int = 8  # Gaussians per state at most (doubled every 3 iterations from 1)
    # then rounds of training a network on the alignment and re-aligning with it (0: the GMMs
    # align; one round was worse on dev, 69.9 against 71.0% within 20 ms, and a 2nd no better)
    rounds: int = 0
    # with rounds > 0, also score frames with the GMMs: network log-likelihoods + gmm_weight *
    # the GMMs' (0: the network alone). From given timings (init_from) the two miss different
    # boundaries: 0.5 took the dev voices from 91.6 (GMMs) and 91.1 (network) to 93.4% within 20 ms
    gmm_weight: float = 0.0
    train_hours: float = 0.5  # hours of the training split, drawn across voices, train the aligner (0: all)
    max_duration: float = 20.0  # seconds of audio per batch
    prior_scale: float = 1.0  # scaled likelihood: log p(state | x) - prior_scale * log p(state)
    speech_threshold: float = 0.3  # flat start: speech where frame energy is above min + this * (max - min)
    g2p: bool = True
    # an explicit option, off by default: estimate the GMMs from this alignment of the
    # training utterances (e.g. `synth`, or an imported MFA one) instead of the flat start
    init_from: str = ""
    init_utterances: int = 0  # how many training utterances with that alignment it reads (0: all in the subset)

    def __post_init__(self):
        super().__post_init__()
        if self.encoder.subsampling != 1:
            raise ValueError("the aligner works at 10 ms: encoder.subsampling must be 1")
        if self.states_per_phone < 1 or self.rounds < 0 or not 0 < self.speech_threshold < 1:
            raise ValueError("states_per_phone >= 1, rounds >= 0 and 0 < speech_threshold < 1 are required")
        if self.rounds and self.frame_shift_ms != 10.0:
            raise ValueError("frame_shift_ms applies to the GMMs alone: a network round works at 10 ms")
        if self.init_utterances < 0:
            raise ValueError("init_utterances must be >= 0 (0: every training utterance)")
        if self.rounds == 0 and self.gmm_iterations < 1:
            raise ValueError("rounds=0 aligns with the GMMs: gmm_iterations must be at least 1")
        if self.gmm_weight < 0 or (self.gmm_weight and (self.rounds == 0 or self.gmm_iterations < 1)):
            raise ValueError(
                "gmm_weight adds the GMMs to a network's scores: it needs rounds >= 1 and gmm_iterations >= 1"
            )


class FrameClassifier(nn.Module):
    """fbank (N, T, 80) -> (N, T, states) logits at 10 ms: the encoder without subsampling."""

    def __init__(self, encoder: EncoderConfig, num_classes: int, input_dim: int = 80):
        super().__init__()
        self.encoder = Encoder(encoder, input_dim)
        self.out = nn.Linear(encoder.d_model, num_classes)
        self.register_buffer("feat_mean", torch.zeros(input_dim))
        self.register_buffer("feat_std", torch.ones(input_dim))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.encoder((feats - self.feat_mean) / self.feat_std, lens)
        return self.out(x), lens


def _feats(cut, fbank: FbankExtractor) -> np.ndarray:
    """The cut's fbank, normalised over the utterance: a voice the aligner never heard looks
    like the ones it did (as the GMM stage's per-utterance normalised MFCCs)."""
    return normalise(cut.load_features() if cut.has_features else fbank(load_cut_audio(cut))).astype(np.float32)


def _mfcc(cut, frame_shift_ms: float = 10.0, fast: bool = False) -> np.ndarray:
    return normalise(mfcc_with_deltas(load_cut_audio(cut), frame_shift_ms, fast))


def _pad(arrays: list[np.ndarray], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(a) for a in arrays])
    out = torch.full(
        (len(arrays), int(lens.max()), *arrays[0].shape[1:]), value, dtype=torch.from_numpy(arrays[0]).dtype
    )
    for i, a in enumerate(arrays):
        out[i, : len(a)] = torch.from_numpy(a)
    return out, lens


class Aligner:
    """A trained frame classifier with its priors, the state GMMs (``gmm``), or both
    (``both``: the network's scaled log-likelihoods plus ``cfg.gmm_weight`` times the GMMs'),
    with the phone set: aligns utterances."""

    def __init__(
        self,
        model: FrameClassifier,
        cfg: AlignerConfig,
        log_prior: np.ndarray,
        gmm: StateGMMs | None = None,
        both: bool = False,
    ):
        self.model, self.cfg, self.log_prior, self.gmm = model.eval(), cfg, log_prior, gmm
        self.mode = "network" if gmm is None else ("both" if both else "gmm")
        self.index = {p: i for i, p in enumerate(PHONES)}
        self.lexicon = Lexicon(g2p=cfg.g2p)
        self.fbank = FbankExtractor()
        self.frame_shift = cfg.frame_shift_ms / 1000 if self.mode == "gmm" else FRAME_SHIFT

    @classmethod
    def load(cls, prefix: str | Path) -> Aligner:
        tensors, meta = load_checkpoint(prefix)
        cfg = from_dict(AlignerConfig, meta["config"])
        model = FrameClassifier(cfg.encoder, len(PHONES) * cfg.states_per_phone)
        gmm_tensors = {k[4:]: v.numpy() for k, v in tensors.items() if k.startswith("gmm.")}
        gmm = StateGMMs.from_tensors(gmm_tensors) if gmm_tensors else None
        if meta["kind"] == "gmm-aligner":
            return cls(model, cfg, np.zeros(model.out.out_features), gmm)
        load_model_state(model, {k: v for k, v in tensors.items() if not k.startswith("gmm.")}, "model.", prefix)
        return cls(model, cfg, np.array(meta["log_prior"]), gmm, both=gmm is not None)

    def save(self, prefix: str | Path, extra: dict | None = None) -> None:
        kind = "gmm-aligner" if self.mode == "gmm" else "frame-aligner"
        meta = {"kind": kind, "config": to_dict(self.cfg), "phones": list(PHONES)}
        tensors = {}
        if self.gmm is not None:
            tensors |= {f"gmm.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.gmm.tensors().items()}
        if self.mode != "gmm":
            tensors |= {f"model.{k}": v for k, v in self.model.state_dict().items()}
            meta["log_prior"] = self.log_prior.tolist()
        save_checkpoint(prefix, tensors, meta | (extra or {}))

    def features(self, cut) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """What the aligner scores: normalised MFCCs with deltas (GMMs), normalised fbank
        (network), or both as (fbank, MFCCs): those through the torch layer, 2x faster and
        within 3e-3 of the GMMs' training MFCCs (the same paths on every test utterance)."""
        if self.mode == "gmm":
            return self.mfcc(cut)
        fbank = _feats(cut, self.fbank)
        return (fbank, self.mfcc(cut)) if self.mode == "both" else fbank

    def mfcc(self, cut) -> np.ndarray:
        """The GMMs' normalised MFCCs; beside a network (``both``) through the torch layer."""
        return _mfcc(cut, self.cfg.frame_shift_ms, fast=self.mode == "both")

    def graph(self, text: str) -> AlignmentGraph:
        try:
            words = [self.lexicon.pronounce(w) for w in text.split()]
        except UnpronounceableWordError as e:
            raise AlignmentError(str(e)) from None
        return AlignmentGraph.build(words, self.cfg.states_per_phone, self.index)

    @torch.no_grad()
    def scores(self, feats: list, states: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """(Scaled) log-likelihoods (T, states) of each utterance's frames (``features``);
        ``states``: the ones each utterance's graph uses (``both`` computes the GMMs' for
        those alone, the others -inf)."""
        if self.mode == "gmm":
            return [self.gmm.log_likelihoods(f) for f in feats]
        fbank = [f[0] for f in feats] if self.mode == "both" else feats
        x, lens = _pad([np.ascontiguousarray(f, dtype=np.float32) for f in fbank])
        logits, lens = self.model(x, lens)
        lp = logits.float().log_softmax(-1).numpy() - self.cfg.prior_scale * self.log_prior
        out = [lp[i, : int(n)] for i, n in enumerate(lens)]
        if self.mode == "both":  # fbank and MFCC frames are both 10 ms from the start: the same count
            for i, (_, mfcc) in enumerate(feats):
                n = min(len(out[i]), len(mfcc))
                gmm = self.gmm.log_likelihoods(mfcc[:n], None if states is None else states[i], np.float32)
                out[i] = out[i][:n] + self.cfg.gmm_weight * gmm
        return out

    def align(self, cuts) -> dict[str, dict | str]:
        """utterance -> {"phone": [...], "word": [...]}, or why it could not be aligned."""
        out: dict[str, dict | str] = {}
        graphs = {}
        for cut in cuts:
            try:
                graphs[cut.id] = self.graph(cut.supervisions[0].text)
            except AlignmentError as e:
                out[cut.id] = f"utterance {cut.id}: {e}"
        todo = [c for c in cuts if c.id in graphs]
        states = [np.unique(graphs[c.id].classes) for c in todo] if self.mode == "both" else None
        scores = self.scores([self.features(c) for c in todo], states) if todo else []
        for cut, lp in zip(todo, scores, strict=True):
            text, graph = cut.supervisions[0].text, graphs[cut.id]
            try:
                phones, words = segments(graph, viterbi(graph, lp), self.frame_shift, cut.duration, text.split())
                out[cut.id] = {"phone": phones, "word": words}
            except AlignmentError as e:
                out[cut.id] = f"utterance {cut.id}: {e}"
        return {c.id: out[c.id] for c in cuts}

    def state_labels(self, cut, feats: np.ndarray, lp: np.ndarray | None) -> np.ndarray:
        """(T,) class per frame: a flat start (``lp`` None) or the Viterbi path."""
        graph = self.graph(cut.supervisions[0].text)
        if lp is not None:
            return graph.classes[viterbi(graph, lp)]
        energy = feats.mean(1)
        speech = np.flatnonzero(energy > energy.min() + self.cfg.speech_threshold * (energy.max() - energy.min()))
        first, last = (speech[0], speech[-1] + 1) if len(speech) else (0, len(feats))
        states = graph.classes[graph.word_states()]
        if last - first < len(states):
            first, last = 0, len(feats)
        labels = np.full(len(feats), self.index[SIL] * self.cfg.states_per_phone, dtype=np.int64)
        labels[first:last] = states[
            np.minimum(np.arange(last - first) * len(states) // (last - first), len(states) - 1)
        ]
        return labels

    def given_labels(self, cut, num_frames: int) -> np.ndarray:
        """(T,) class per frame from the cut's own phone timings (``init_from``): each phone's
        frames cut into ``states_per_phone`` equal parts."""
        S, shift = self.cfg.states_per_phone, self.cfg.frame_shift_ms / 1000
        labels = np.full(num_frames, self.index[SIL] * S, dtype=np.int64)
        for a in (cut.supervisions[0].alignment or {}).get("phone") or []:
            sym = strip_stress(a.symbol)
            if sym not in self.index:
                raise AlignmentError(f"its given alignment has the phone {a.symbol!r}, which is not ARPABET or SIL")
            f0, f1 = round(a.start / shift), min(round((a.start + a.duration) / shift), num_frames)
            if f1 > f0:
                labels[f0:f1] = self.index[sym] * S + np.minimum(np.arange(f1 - f0) * S // (f1 - f0), S - 1)
        return labels


class AlignerTask(Task):
    """Frame classification of the current round's state labels."""

    kind = "frame-aligner-training"

    def __init__(self, cfg: AlignerConfig, engine: Engine, model: FrameClassifier, cuts, labels: dict[str, np.ndarray]):
        self.cfg, self.engine, self.model, self.cuts, self.labels = cfg, engine, model, cuts, labels
        self.fbank = FbankExtractor()

    def _sampler(self, epoch: int):
        f = self.engine.fabric
        sampler = make_sampler(self.cuts, self.cfg.max_duration, True, self.cfg.seed, 10, f.world_size, f.global_rank)
        sampler.set_epoch(epoch)
        return sampler

    def batches(self, epoch: int, skip: int):
        for i, batch in enumerate(self._sampler(epoch)):
            if i >= skip:
                feats, lens = _pad([np.ascontiguousarray(_feats(c, self.fbank), dtype=np.float32) for c in batch])
                labels, _ = _pad([self.labels[c.id][: int(n)] for c, n in zip(batch, lens, strict=True)], IGNORE)
                yield feats, lens, labels

    def num_batches(self) -> int:
        return sum(1 for _ in self._sampler(0))

    def step(self, model, batch):
        feats, lens, labels = (x.to(self.engine.fabric.device) for x in batch)
        logits, _ = model(feats, lens)
        loss = frame_ce(logits, labels)
        return loss, {"ce": float(loss.detach())}


def train_aligner(cuts: CutSet, cfg: AlignerConfig, show_progress: bool = True) -> Aligner:
    """Flat start, then ``cfg.rounds`` rounds of training and re-alignment on ``cuts`` (their
    transcripts only). Each finished round is kept under ``cfg.out_dir`` (``round{r}``), so
    an interrupted training resumes there; returns the last round's aligner."""
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    num_classes = len(PHONES) * cfg.states_per_phone
    model = FrameClassifier(cfg.encoder, num_classes)
    aligner = Aligner(model, cfg, np.zeros(num_classes))
    feats = {
        c.id: _feats(c, aligner.fbank)
        for c in progress(cuts, total=len(cuts), desc="aligner features", enable=show_progress)
    }
    mean, std = feature_stats(feats.values())
    model.feat_mean.copy_(mean)
    model.feat_std.copy_(std)
    flat = {c.id: _labels_or_none(aligner, c, feats[c.id], None) for c in cuts}
    labels = {u: v for u, v in flat.items() if v is not None}
    train = cuts.subset(cut_ids=list(labels))
    gmm_path = out / "gmm_labels.npz"
    if cfg.gmm_iterations and gmm_path.exists() and (cfg.rounds or (out / "gmm-aligner.json").exists()):
        labels = dict(np.load(gmm_path))
        train = cuts.subset(cut_ids=list(labels))  # the utterances the stored labels are of (init_utterances)
    elif cfg.gmm_iterations:
        t0 = time.perf_counter()
        if cfg.init_from:
            train = _given_subset(train, cfg)
        mfcc = [
            _mfcc(c, cfg.frame_shift_ms) for c in progress(train, total=len(train), desc="MFCC", enable=show_progress)
        ]
        graphs = [aligner.graph(c.supervisions[0].text) for c in train]
        if cfg.init_from:
            labels = {c.id: aligner.given_labels(c, len(f)) for c, f in zip(train, mfcc, strict=True)}
        else:  # the flat start was cut at 10 ms: read it at the GMMs' frame times
            for c, f in zip(train, mfcc, strict=True):
                at = (np.arange(len(f)) * cfg.frame_shift_ms / 10).astype(np.int64)
                labels[c.id] = labels[c.id][np.minimum(at, len(labels[c.id]) - 1)]
        new, gmm = train_gmm(
            mfcc,
            graphs,
            [labels[c.id] for c in train],
            num_classes,
            cfg.gmm_iterations,
            max_components=cfg.gmm_components,
            realign=not cfg.init_from,
        )
        labels = {c.id: lab for c, lab in zip(train, new, strict=True)}
        out.mkdir(parents=True, exist_ok=True)
        Aligner(model, cfg, aligner.log_prior, gmm).save(out / "gmm-aligner", {"train_utterances": len(train)})
        np.savez(out / "gmm_labels.tmp.npz", **labels)
        (out / "gmm_labels.tmp.npz").replace(gmm_path)
        stats = {"iterations": cfg.gmm_iterations, "utterances": len(train), "seconds": time.perf_counter() - t0}
        atomic_write_text(out / "gmm.json", json.dumps(stats, indent=1) + "\n")
    if cfg.rounds == 0:  # the GMMs are the aligner
        aligner = Aligner.load(out / "gmm-aligner")
        aligner.save(out / "aligner", {"history": [], "train_utterances": len(train)})
        atomic_write_text(out / "history.json", "[]\n")
        return aligner
    history = []
    if cfg.gmm_weight:  # the network's rounds score with the GMMs beside it
        aligner = Aligner(model, cfg, aligner.log_prior, Aligner.load(out / "gmm-aligner").gmm, both=True)
    for r in range(cfg.rounds):
        prefix = out / f"round{r}"
        if prefix.with_suffix(".json").exists():
            aligner = Aligner.load(prefix)
            history = json.loads(prefix.with_suffix(".json").read_text())["history"]
        else:
            engine = Engine(
                from_dict(AlignerConfig, to_dict(cfg) | {"out_dir": str(out / f"train{r}"), "progress": show_progress})
            )
            state = engine.fit(AlignerTask(cfg, engine, aligner.model, train, labels))
            counts = np.bincount(np.concatenate(list(labels.values())), minlength=num_classes) + 1.0
            aligner.log_prior = np.log(counts / counts.sum())
            history.append({"round": r, "train_ce": state["history"][-1]["ce"], "seconds": state["seconds_this_run"]})
            aligner.save(prefix, {"history": history})
        aligner.model.eval()
        new = {}
        ids = list(labels)
        both = aligner.mode == "both"
        for i in range(0, len(ids), 16):  # re-align: the next round's labels
            chunk = [train[u] for u in ids[i : i + 16]]
            chunk_feats = [(feats[c.id], aligner.mfcc(c)) if both else feats[c.id] for c in chunk]
            for c, lp in zip(chunk, aligner.scores(chunk_feats), strict=True):
                new[c.id] = _labels_or_none(aligner, c, feats[c.id], lp)
        changed = float(np.mean([np.mean(new[u] != labels[u]) for u in ids if new[u] is not None]))
        log.info("aligner round %d: %.1f%% of frames changed state", r, 100 * changed)
        history[-1]["frames_changed"] = round(changed, 4)
        labels = {u: v if v is not None else labels[u] for u, v in new.items()}
    aligner.save(out / "aligner", {"history": history, "train_utterances": len(train)})
    atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    return aligner


def _given_subset(cuts: CutSet, cfg: AlignerConfig) -> CutSet:
    """The training utterances that have a given alignment, the first ``init_utterances`` of a
    seeded shuffle."""
    have = [c for c in cuts if (c.supervisions[0].alignment or {}).get("phone")]
    if not have:
        raise DataError(
            f"init_from={cfg.init_from!r}: no training utterance has that alignment; make or import it first"
        )
    random.Random(cfg.seed).shuffle(have)
    if cfg.init_utterances:
        if len(have) < cfg.init_utterances:
            raise DataError(f"init_utterances={cfg.init_utterances}, but only {len(have)} have {cfg.init_from!r}")
        have = have[: cfg.init_utterances]
    log.info("GMMs estimated from the %s timings of %d utterances (no flat start)", cfg.init_from, len(have))
    return CutSet.from_cuts(sorted(have, key=lambda c: c.id))


def _labels_or_none(aligner: Aligner, cut, feats, lp) -> np.ndarray | None:
    try:
        return aligner.state_labels(cut, feats, lp)
    except AlignmentError as e:
        log.warning("aligner training skips utterance %s: %s", cut.id, e)
        return None
