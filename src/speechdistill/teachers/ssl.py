"""Self-supervised speech models as teachers and as upstreams for probes.

The contract: an upstream maps a padded batch of 16 kHz waveforms to
``(hidden_states, lengths)``, a list of (N, T, C) tensors and the (N,) number of
real frames, where index 0 is the pre-transformer feature (what enters the first
block) and index i the output of block i. Teachers are frozen, in eval mode and
run without gradients.

    >>> up = load_upstream("exp/ssl/teacher")          # teachers/upstream.py: any of the below
    >>> states, lens = up(wavs, wav_lens)              # len(states) == up.num_layers + 1

Implementations: Hugging Face ``HubertModel``, ``Wav2Vec2Model`` and ``WavLMModel``
from a local directory (never the hub); speechdistill's acoustic models (fbank
computed inside); the SSL students of :mod:`speechdistill.students.ssl`; and
``fbank``, the filterbank itself (SUPERB's FBANK baseline, the floor any upstream
has to beat).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from speechdistill.data.features import FbankExtractor
from speechdistill.masks import padding_mask
from speechdistill.utils import DataError

HF_FAMILIES = ("hubert", "wav2vec2", "wavlm")


def wave_mask(lens: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(N,) -> (N, S) long attention mask, 1 on real samples."""
    return (~padding_mask(lens, num_samples)).long()


class HFUpstream(nn.Module):
    """A Hugging Face wav2vec 2.0 / HuBERT / WavLM model. ``hidden_states[0]`` is HF's
    first hidden state: the projected CNN features plus the convolutional positions,
    the input of transformer layer 1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.num_layers, self.dim = cfg.num_hidden_layers, cfg.hidden_size
        self.frame_shift = math.prod(cfg.conv_stride) / 16000

    @classmethod
    def from_dir(cls, path: str | Path) -> HFUpstream:
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        if cfg.model_type not in HF_FAMILIES:
            raise DataError(
                f"{path}: model_type {cfg.model_type!r} is not a speech SSL model; "
                f"expected one of {', '.join(HF_FAMILIES)}"
            )
        return cls(AutoModel.from_pretrained(path, local_files_only=True))

    def frame_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lens).long()

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor, output_attentions: bool = False):
        out = self.model(
            wavs,
            attention_mask=wave_mask(lens, wavs.shape[1]),
            output_hidden_states=True,
            output_attentions=output_attentions,
        )
        states = list(out.hidden_states)
        if output_attentions:
            return states, self.frame_lengths(lens), list(out.attentions)
        return states, self.frame_lengths(lens)


def fbank_each(fbank, wavs: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
    """(N, S) padded waveforms, (N,) -> N (T_i, C) filterbanks of the real samples (CPU)."""
    return [torch.from_numpy(fbank(w[: int(n)].cpu().numpy())) for w, n in zip(wavs, lens, strict=True)]


def pad_frames(feats: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """N (T_i, C) -> (N, T, C) zero-padded, (N,) lengths, on ``device``."""
    lens = torch.tensor([f.shape[0] for f in feats], device=device)
    return nn.utils.rnn.pad_sequence(feats, batch_first=True).to(device), lens


class AcousticModelUpstream(nn.Module):
    """A speechdistill acoustic model (its InferenceModel): fbank of each waveform, normalised, then the
    encoder; index 0 is the subsampled input of block 1."""

    differentiable = False  # in the waveform: the filterbank is computed outside autograd

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fbank = FbankExtractor()
        enc = model.encoder.cfg
        self.num_layers, self.dim = enc.num_blocks, enc.d_model
        self.frame_shift = enc.frame_shift

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor):
        x, feat_lens = pad_frames(fbank_each(self.fbank, wavs, lens), wavs.device)
        x = (x - self.model.feat_mean) / self.model.feat_std
        return self.model.encoder.extract_features(x, feat_lens, with_input=True)


class FbankUpstream(nn.Module):
    """The 80-dim log-mel filterbank itself as an upstream: one hidden state at 10 ms,
    each utterance mean- and variance-normalised over its frames. SUPERB reports the
    same reference (FBANK): a probe on it says what the features alone give."""

    num_layers, dim, frame_shift = 0, 80, 0.01
    differentiable = False  # in the waveform: the filterbank is computed outside autograd

    def __init__(self):
        super().__init__()
        self.fbank = FbankExtractor(num_mel_bins=self.dim)

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor):
        feats = [(f - f.mean(0)) / (f.std(0, unbiased=False) + 1e-5) for f in fbank_each(self.fbank, wavs, lens)]
        x, feat_lens = pad_frames(feats, wavs.device)
        return [x], feat_lens


def is_fbank(path: str | Path) -> bool:
    """``fbank``, or any path whose last part is ``fbank`` and that does not exist
    (e.g. ``exp/ssl/fbank``, so that its probe results land in ``exp/ssl``)."""
    path = Path(path)
    return path.name == "fbank" and not path.exists() and not path.with_suffix(".json").exists()


class FrozenTeacher(nn.Module):
    """Wraps an upstream: eval mode for good (``train()`` is ignored), no gradients."""

    def __init__(self, upstream: nn.Module):
        super().__init__()
        self.upstream = upstream.eval().requires_grad_(False)
        self.num_layers, self.dim, self.frame_shift = upstream.num_layers, upstream.dim, upstream.frame_shift

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, lens: torch.Tensor, **kw):
        return self.upstream(wavs, lens, **kw)
