"""Reading audio the one way the whole toolkit does: mono float32 at 16 kHz,
checked for the faults that otherwise surface as NaN losses hours later.

    >>> samples = load_audio(recording)            # (num_samples,) float32, 16 kHz
    >>> report = inspect_audio("a.wav", "utt1")     # raises BadAudioError on faults
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speechdistill.utils import DataError

SAMPLE_RATE = 16000
MIN_SECONDS = 0.1  # shorter audio cannot hold one 40 ms output frame after subsampling
MAX_SECONDS = 600.0  # longer "utterances" are whole recordings: give a segments file
SILENCE_PEAK = 1e-4  # peak |sample| below this: nothing was recorded
CLIPPED_FRACTION = 0.01  # more samples than this at full scale: noted as clipped


class BadAudioError(DataError):
    """An audio file that cannot be used; the message names the file and the fix."""


@dataclass
class AudioReport:
    """What ``inspect_audio`` found: facts plus notes on what will be converted."""

    path: str
    sampling_rate: int
    num_channels: int
    num_samples: int
    notes: list[str] = field(default_factory=list)


def to_mono_16k(samples: np.ndarray, sampling_rate: int, what: str) -> np.ndarray:
    """``samples`` (T,) or (T, C) -> (T',) float32 at 16 kHz; NaN/inf is an error."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if not np.isfinite(samples).all():
        raise BadAudioError(f"{what}: audio contains NaN or infinite samples; re-export the file")
    if sampling_rate != SAMPLE_RATE:
        samples = soxr.resample(samples, sampling_rate, SAMPLE_RATE).astype(np.float32)
    return samples


def check_regular_file(path: str | Path, what: str) -> None:
    """A FIFO, device or directory would hang or fail deep inside a reader: named here,
    before anything opens it (a missing file is left to the reader's own message)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise BadAudioError(f"{what} {path} is {kind}; give a regular file")


def inspect_audio(path: str | Path, utt: str, check_samples: bool = True, segmented: bool = False) -> AudioReport:
    """Check that an audio file is readable, non-empty and finite; note stereo and
    sample-rate conversions that loading will do. A ``segmented`` recording (cut into
    utterances by a ``segments`` file) may be of any length and is read in blocks."""
    check_regular_file(path, f"utterance {utt}: audio file")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise BadAudioError(
            f"utterance {utt}: cannot read audio file {path} ({e}); check that it exists and is WAV/FLAC/OGG"
        ) from None
    if info.frames == 0:
        raise BadAudioError(f"utterance {utt}: audio file {path} is empty (0 samples)")
    seconds = info.frames / info.samplerate
    if seconds < MIN_SECONDS:
        raise BadAudioError(
            f"utterance {utt}: audio file {path} is {info.frames} samples ({seconds * 1000:.1f} ms) "
            f"long, shorter than {MIN_SECONDS * 1000:.0f} ms: too short to recognise"
        )
    if seconds > MAX_SECONDS and not segmented:
        raise BadAudioError(
            f"utterance {utt}: audio file {path} is {seconds / 60:.1f} minutes long (more than "
            f"{MAX_SECONDS / 60:.0f}); cut it into utterances with a Kaldi `segments` file"
        )
    report = AudioReport(str(path), info.samplerate, info.channels, info.frames)
    if info.channels > 1:
        report.notes.append(f"{info.channels} channels, averaged to mono")
    if info.samplerate != SAMPLE_RATE:
        report.notes.append(f"sample rate {info.samplerate} Hz, resampled to {SAMPLE_RATE} Hz")
    if check_samples:  # in blocks of a minute: an hour-long recording is never held whole
        peak, at_full_scale = 0.0, 0
        for block in sf.blocks(str(path), blocksize=60 * info.samplerate, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise BadAudioError(
                    f"utterance {utt}: audio file {path} contains NaN or infinite samples; re-export it"
                )
            peak = max(peak, float(np.abs(block).max()))
            at_full_scale += int((np.abs(block) >= 0.999).sum())
        if peak < SILENCE_PEAK:
            raise BadAudioError(
                f"utterance {utt}: audio file {path} is silent (peak {peak:.1e}); check the recording or its channel"
            )
        clipped = at_full_scale / (info.frames * info.channels)
        if clipped > CLIPPED_FRACTION:
            report.notes.append(f"clipped ({100 * clipped:.1f}% of samples at full scale)")
    return report


def load_audio(recording, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """A lhotse ``Recording`` (or the part ``[offset, offset + duration)`` of it) ->
    (T,) float32 mono at 16 kHz. Channels are averaged; resampling is soxr's."""
    source = recording.sources[0]
    sr = recording.sampling_rate
    start = int(round(offset * sr))
    frames = -1 if duration is None else int(round(duration * sr))
    if len(recording.sources) == 1 and source.type == "file" and not recording.transforms:
        try:
            samples, sr = sf.read(source.source, start=start, frames=frames, dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError, OSError) as e:
            raise BadAudioError(f"recording {recording.id}: cannot read {source.source} ({e})") from None
    else:
        samples = recording.load_audio(offset=offset, duration=duration).T
    return to_mono_16k(samples, sr, f"recording {recording.id}")


def load_cut_audio(cut) -> np.ndarray:
    """The audio of a lhotse cut (its recording between the cut's start and end)."""
    return load_audio(cut.recording, cut.start, cut.duration)
