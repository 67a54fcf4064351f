"""Every SSL teacher and student where its users live: s3prl, Hugging Face and ONNX.

    >>> up = s3prl_upstream("exp/ssl/fithubert/student")     # any upstream load_upstream reads
    >>> out = up([wav1, wav2])                                # s3prl: a list of unpadded 16 kHz waves
    >>> out["hidden_states"]                                  # [(N, T, C)] * (layers + 1), padded
    >>> up.get_downsample_rates("hidden_states")              # samples per frame: 320 at 20 ms

    speechdistill ssl export exp/ssl/fithubert/student --out exp/ssl/fithubert/export

writes ``hf/`` (``transformers.AutoModel.from_pretrained`` loads it once this module is
imported; a teacher stays the plain HuBERT / wav2vec 2.0 / WavLM directory it is) and
``model.onnx`` (``wavs (N, S)``, ``wav_lens (N,)`` -> ``hidden_states (L+1, N, T, C)``,
``lengths (N,)``), checked against eager PyTorch under onnxruntime before it is kept.

s3prl's own ``S3PRLUpstream`` only loads the models of its hub; the contract its
``Featurizer`` (the weighted sum of SUPERB) relies on is what :class:`S3PRLUpstream`
below implements: a callable on a list of waveforms returning a dict with
``hidden_states`` (and ``last_hidden_state``, ``hidden_state_{i}``), and
``get_downsample_rates(key)``. Students that are not Hugging Face models get a
``PreTrainedModel`` of their own (:class:`SSLStudentModel`), registered with
``AutoConfig`` / ``AutoModel`` under ``model_type: speechdistill-ssl-student``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from speechdistill.checkpoint import save_hf_dir
from speechdistill.export import export_checked_onnx, plain_attention
from speechdistill.students.ssl import STUDENTS, StudentConfig
from speechdistill.teachers.ssl import HFUpstream
from speechdistill.teachers.upstream import load_upstream
from speechdistill.utils import DataError, atomic_write_text

SAMPLE_RATE = 16000
MIN_SAMPLES = 1600  # the shortest batch the ONNX file takes: 0.1 s


class S3PRLUpstream(nn.Module):
    """Any speechdistill upstream behind s3prl's upstream interface."""

    def __init__(self, upstream: nn.Module):
        super().__init__()
        self.upstream = upstream
        self.num_layers, self.dim, self.frame_shift = upstream.num_layers, upstream.dim, upstream.frame_shift

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output frame (the same for every feature this upstream gives)."""
        return round(self.frame_shift * SAMPLE_RATE)

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        if not wavs or any(w.dim() != 1 for w in wavs):
            raise ValueError("an s3prl upstream takes a non-empty list of 1-D waveforms (16 kHz)")
        lens = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = nn.utils.rnn.pad_sequence(list(wavs), batch_first=True)
        states, _ = self.upstream(padded, lens)
        out = {"hidden_states": list(states), "last_hidden_state": states[-1]}
        out |= {f"hidden_state_{i}": h for i, h in enumerate(states)}
        return out


def s3prl_upstream(path: str | Path) -> S3PRLUpstream:
    """An upstream (HF directory, SSL student, acoustic model or ``fbank``) for s3prl."""
    return S3PRLUpstream(load_upstream(path))


class SSLStudentConfig(PretrainedConfig):
    """The Hugging Face config of a speechdistill SSL student: its ``StudentConfig``, the
    teacher layers it predicts and their width (and, for a HF-based kind, the inner
    model's config)."""

    model_type = "speechdistill-ssl-student"

    def __init__(self, student=None, targets=None, teacher_dim=768, hf_config=None, **kwargs):
        super().__init__(**kwargs)
        self.student = dict(student or {})
        self.targets = list(targets or [])
        self.teacher_dim = teacher_dim
        self.hf_config = hf_config


class SSLStudentModel(PreTrainedModel):
    """A speechdistill SSL student as a ``PreTrainedModel``: ``input_values (N, S)`` and
    an optional ``attention_mask`` -> ``BaseModelOutput`` with every hidden state."""

    config_class = SSLStudentConfig
    base_model_prefix = "student"
    main_input_name = "input_values"

    def __init__(self, config: SSLStudentConfig):
        super().__init__(config)
        cfg = StudentConfig(**config.student)
        meta = {"targets": config.targets, "teacher_dim": config.teacher_dim, "hf_config": config.hf_config}
        self.student = STUDENTS[cfg.kind].from_meta(cfg, meta)
        self.post_init()

    @classmethod
    def from_student(cls, student: nn.Module) -> SSLStudentModel:
        hf_config = (
            student.model.config.to_dict() if isinstance(getattr(student, "model", None), PreTrainedModel) else None
        )
        config = SSLStudentConfig(asdict(student.cfg), student.targets, student.teacher_dim, hf_config)
        model = cls(config)
        model.student.load_state_dict(student.state_dict())
        return model.eval()

    def forward(self, input_values, attention_mask=None, **kwargs) -> BaseModelOutput:
        if attention_mask is None:
            lens = torch.full((input_values.shape[0],), input_values.shape[1], device=input_values.device)
        else:
            lens = attention_mask.sum(-1)
        states, _ = self.student(input_values, lens)
        return BaseModelOutput(last_hidden_state=states[-1], hidden_states=tuple(states))


AutoConfig.register(SSLStudentConfig.model_type, SSLStudentConfig)
AutoModel.register(SSLStudentConfig, SSLStudentModel)


def hf_model(upstream: nn.Module) -> PreTrainedModel:
    """The Hugging Face model to save for ``upstream``: a teacher's own model, or a
    student wrapped as :class:`SSLStudentModel`."""
    if isinstance(upstream, HFUpstream):
        return upstream.model
    if isinstance(getattr(upstream, "cfg", None), StudentConfig):
        return SSLStudentModel.from_student(upstream)
    raise DataError(
        f"a {type(upstream).__name__} has no Hugging Face form; `ssl export` takes an SSL teacher "
        "(a HF directory) or an SSL student checkpoint"
    )


class _StackedStates(nn.Module):
    """(wavs, wav_lens) -> (hidden states stacked (L+1, N, T, C), lengths): one ONNX output."""

    def __init__(self, upstream: nn.Module):
        super().__init__()
        self.upstream = upstream

    def forward(self, wavs, wav_lens):
        states, lens = self.upstream(wavs, wav_lens)
        return torch.stack(states), lens


def export_upstream_onnx(upstream: nn.Module, path: str | Path, atol: float = 1e-3) -> float:
    """Write ``upstream`` as ONNX, checked against PyTorch on two padded batches (see
    :func:`speechdistill.export.export_checked_onnx`); returns the largest difference."""
    g = torch.Generator().manual_seed(0)
    examples = [
        (0.1 * torch.randn(2, 24000, generator=g), torch.tensor([24000, 17123])),
        (0.1 * torch.randn(3, 12800, generator=g), torch.tensor([9001, 12800, 4000])),
    ]
    batch, samples = (
        torch.export.Dim("N", min=1, max=1024),
        torch.export.Dim("S", min=MIN_SAMPLES, max=3600 * SAMPLE_RATE),
    )
    with plain_attention():
        return export_checked_onnx(
            _StackedStates(upstream.eval()),
            examples,
            Path(path),
            input_names=["wavs", "wav_lens"],
            output_names=["hidden_states", "lengths"],
            frames={"hidden_states": (1, 2)},
            atol=atol,
            dynamic_shapes=({0: batch, 1: samples}, {0: batch}),
        )


def export_upstream(path: str | Path, out: str | Path, hf: bool = True, onnx: bool = True) -> dict:
    """Export the teacher or student at ``path`` into ``out``; returns what was written."""
    upstream = load_upstream(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict = {}
    if hf:
        written["hf"] = save_hf_dir(hf_model(upstream), out / "hf")
    if onnx:
        written["onnx_max_abs_diff"] = f"{export_upstream_onnx(upstream, out / 'model.onnx'):.2e}"
        written["onnx"] = out / "model.onnx"
    card = {
        "source": str(path),
        "num_layers": upstream.num_layers,
        "dim": upstream.dim,
        "downsample_rate": round(upstream.frame_shift * SAMPLE_RATE),
        "hf": "transformers.AutoModel.from_pretrained(dir) after `import speechdistill.hub`",
        "onnx": "wavs (N,S) float32 16 kHz, wav_lens (N,) int64 -> hidden_states (L+1,N,T,C), lengths (N,)",
    }
    atomic_write_text(out / "upstream.json", json.dumps(card, indent=1) + "\n")
    return written
