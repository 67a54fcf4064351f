"""Loading any upstream, the one place that knows every kind of speech model the toolkit
can read (teachers/ssl.py holds the upstreams themselves).

    >>> up = load_upstream("exp/ssl/teacher/hf")        # HF HuBERT / wav2vec 2.0 / WavLM directory
    >>> up = load_upstream("exp/ssl/distilhubert/student")   # an SSL student checkpoint
    >>> up = load_upstream("exp/baseline/best")         # an acoustic model (fbank inside)
    >>> teacher = load_teacher("fbank")                 # the filterbank reference, frozen
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from speechdistill.checkpoint import CheckpointError
from speechdistill.students.model import load_inference_model
from speechdistill.students.ssl import load_student
from speechdistill.teachers.ssl import AcousticModelUpstream, FbankUpstream, FrozenTeacher, HFUpstream, is_fbank

# checkpoint kind (the JSON's "kind") -> the upstream it holds
CHECKPOINT_UPSTREAMS = {
    "ssl-student": load_student,
    "acoustic-model": lambda path: AcousticModelUpstream(load_inference_model(path)[0]),
}


def load_upstream(path: str | Path) -> nn.Module:
    """A HF directory, a checkpoint prefix of a kind in ``CHECKPOINT_UPSTREAMS``, or
    ``fbank`` (see :func:`is_fbank`)."""
    path = Path(path)
    if is_fbank(path):
        return FbankUpstream()
    if path.is_dir():
        return HFUpstream.from_dir(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{path}: neither a Hugging Face directory nor a checkpoint ({meta_path} is "
            "missing); `fbank` names the filterbank reference"
        )
    kind = json.loads(meta_path.read_text()).get("kind")
    if kind not in CHECKPOINT_UPSTREAMS:
        raise CheckpointError(
            f"{path} is a {kind!r} checkpoint; an upstream is an SSL model, an SSL student or an acoustic model"
        )
    return CHECKPOINT_UPSTREAMS[kind](path)


def load_teacher(path: str | Path) -> FrozenTeacher:
    """An upstream, frozen: eval mode for good, no gradients."""
    return FrozenTeacher(load_upstream(path))
