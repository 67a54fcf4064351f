"""Flite (Debian package ``flite``) as a subprocess: voices built from real
recordings, with phone end times from ``-psdur``.

    >>> audio, sr, phones = flite_synthesize("Hello world.", voice="slt")
    >>> phones[:2]                     # (flite phone, end time in seconds)
    [("pau", 0.22), ("hh", 0.295)]
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from speechdistill.utils import UsageError

FLITE_VOICES = ("slt", "rms", "awb", "kal16")


class MissingPackageError(UsageError, RuntimeError):
    """A Debian package the corpus builder needs is not installed."""


def flite_binary() -> str | None:
    return shutil.which("flite")


def flite_synthesize(
    text: str, voice: str, stretch: float = 1.0, f0_mean: float | None = None, f0_std: float | None = None
) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
    """Return (int16 samples, sample rate, [(flite phone, end time in s), ...]); the
    voice's own mean F0 and its spread unless ``f0_mean`` / ``f0_std`` (Hz) are given."""
    binary = flite_binary()
    if binary is None:
        raise MissingPackageError("flite is not installed: run `apt-get install flite`")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = [binary, "-voice", voice, "-psdur", "--setf", f"duration_stretch={stretch}"]
        if f0_mean is not None:
            cmd += ["--setf", f"int_f0_target_mean={f0_mean}"]
        if f0_std is not None:
            cmd += ["--setf", f"int_f0_target_stddev={f0_std}"]
        # "-t" would let flite read a leading "-" of the text as an option; a file cannot.
        txt = Path(tmp) / "in.txt"
        txt.write_text(text)
        proc = subprocess.run(cmd + ["-f", str(txt), "-o", str(wav)], capture_output=True, text=True)
        if proc.returncode != 0 or not wav.exists():
            raise RuntimeError(f"flite failed for voice {voice!r}: {proc.stderr.strip()}")
        audio, sr = sf.read(wav, dtype="int16")
    phones = []
    for item in proc.stdout.split():
        name, _, end = item.rpartition(":")
        phones.append((name, float(end)))
    return audio, sr, phones
