"""Waveform augmentation on the fly, seeded per (seed, epoch, utterance), each kind
switchable in the config (``augment:`` in a training recipe).

    >>> aug = WaveAugment(AugmentConfig(speed=SpeedConfig(enabled=True)), seed=0)
    >>> cut, samples, factor = aug.load(cut, epoch=3)  # the cut's times rescaled, its audio

Order, as in Kaldi's and ESPnet's recipes: speed, then room reverberation, additive noise,
gain and band-limiting. Speed perturbation (Ko et al. 2015) resamples the audio with soxr
(from 16 kHz to 16/f kHz, played at 16 kHz: f times faster, pitch up) and takes the cut's
new duration and alignments from lhotse's ``perturb_speed``, so frame labels stay on
their phones (lhotse's own resampler without torchaudio is 8x slower than soxr). Reverberation convolves with a room impulse response simulated by
pyroomacoustics (image source method, a seeded pool of shoebox rooms), then drops the
direct path's delay so the alignment still holds. Band-limiting goes down to a lower
sampling rate and back up with soxr, whose anti-aliasing filter is the low-pass.
Coloured noise (white, pink, brown: power ~ 1/f^a, a = 0, 1, 2) is shaped in the
frequency domain here, by hand (no maintained library makes it without torchaudio), once
per process into a seeded minute of each colour that utterances take stretches of.
Every draw comes from ``numpy.random.default_rng((seed, epoch, crc32(utterance)))``:
the same for any number of workers, ranks or a resumed run.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.fft
import soxr
from lhotse import CutSet
from lhotse.utils import fastcopy
from scipy.signal import fftconvolve

from speechdistill.data.audio import SAMPLE_RATE, load_cut_audio
from speechdistill.utils import DataError

log = logging.getLogger(__name__)
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
NOISE_POOL_SECONDS = 60.0  # of each colour


def _check_range(name: str, lo_hi, lo: float, hi: float) -> None:
    a, b = lo_hi
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must be a range [a, b] with {lo} <= a <= b <= {hi}, not {list(lo_hi)}")


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], not {p}")


@dataclass
class SpeedConfig:
    enabled: bool = False
    factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # drawn uniformly

    def __post_init__(self):
        if not self.factors or any(not 0.5 <= f <= 2.0 for f in self.factors):
            raise ValueError(f"augment.speed.factors must be non-empty, each in [0.5, 2], not {self.factors}")


@dataclass
class NoiseConfig:
    enabled: bool = False
    prob: float = 0.5
    snr_db: list[float] = field(default_factory=lambda: [5.0, 25.0])  # uniform
    colours: list[str] = field(default_factory=lambda: ["white", "pink", "brown"])
    # a directory of noise recordings (e.g. MUSAN's noise/): used instead of coloured noise
    noise_dir: str = ""

    def __post_init__(self):
        _check_prob("augment.noise.prob", self.prob)
        _check_range("augment.noise.snr_db", self.snr_db, -20.0, 60.0)
        bad = [c for c in self.colours if c not in NOISE_COLOURS]
        if bad or not self.colours:
            raise ValueError(f"augment.noise.colours: {bad or '[]'} invalid; valid: {', '.join(NOISE_COLOURS)}")


@dataclass
class ReverbConfig:
    enabled: bool = False
    prob: float = 0.3
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.6])  # seconds, uniform over the pool
    num_rooms: int = 16  # simulated once per process, seeded

    def __post_init__(self):
        _check_prob("augment.reverb.prob", self.prob)
        _check_range("augment.reverb.rt60", self.rt60, 0.05, 1.5)
        if self.num_rooms < 1:
            raise ValueError("augment.reverb.num_rooms must be >= 1")


@dataclass
class GainConfig:
    enabled: bool = False
    prob: float = 0.5
    db: list[float] = field(default_factory=lambda: [-12.0, 6.0])

    def __post_init__(self):
        _check_prob("augment.gain.prob", self.prob)
        _check_range("augment.gain.db", self.db, -60.0, 20.0)


@dataclass
class BandConfig:
    enabled: bool = False
    prob: float = 0.2
    # intermediate sampling rates: 8 kHz keeps < 4 kHz (telephone), 11025 < 5.5 kHz
    rates: list[int] = field(default_factory=lambda: [8000, 11025, 12000])

    def __post_init__(self):
        _check_prob("augment.band.prob", self.prob)
        if not self.rates or any(not 2000 <= r < SAMPLE_RATE for r in self.rates):
            raise ValueError(f"augment.band.rates must be in [2000, {SAMPLE_RATE}), not {self.rates}")


@dataclass
class AugmentConfig:
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    band: BandConfig = field(default_factory=BandConfig)

    @property
    def enabled(self) -> bool:
        return any(c.enabled for c in (self.speed, self.reverb, self.noise, self.gain, self.band))


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) noise with power spectral density ~ 1/f^exponent, unit RMS."""
    m = scipy.fft.next_fast_len(max(n, 2), real=True)  # a prime length would make the FFT slow
    spectrum = scipy.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m)
    f[0] = f[1]
    x = scipy.fft.irfft(spectrum / f ** (exponent / 2), m)[:n]
    return (x / max(np.sqrt(np.mean(x**2)), 1e-12)).astype(np.float32)


def _stretch(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) of ``noise`` from a random offset, looped to length."""
    return np.take(noise, np.arange(n) + int(rng.integers(len(noise))), mode="wrap")


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled so that 10 log10(P_x / P_noise) = snr_db."""
    p_x, p_n = float(np.mean(x**2)), float(np.mean(noise**2))
    if p_x == 0.0 or p_n == 0.0:
        return x
    return x + noise * np.sqrt(p_x / (p_n * 10 ** (snr_db / 10)))


class WaveAugment:
    """The augmentation of ``cfg`` with the training ``seed``."""

    def __init__(self, cfg: AugmentConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.clean = {}  # id -> clean cut, of the cuts bucketing_cuts gave the sampler
        if cfg.noise.enabled and cfg.noise.noise_dir:
            self.noise_files  # noqa: B018 - fail at set-up, not mid-training

    def rng(self, utt: str, epoch: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng((self.seed, epoch, zlib.crc32(utt.encode()), salt))

    def speed_factor(self, utt: str, epoch: int) -> float:
        if not self.cfg.speed.enabled:
            return 1.0
        return float(self.rng(utt, epoch, 1).choice(self.cfg.speed.factors))

    def bucketing_cuts(self, cuts: CutSet, epoch: int) -> CutSet:
        """``cuts`` as the sampler should see them in ``epoch``: each with the duration that
        its drawn speed gives it, so a length bucket and ``max_duration`` hold the audio a
        batch will really have (bucketing on clean durations padded batches 15% instead of
        8%; docs/benchmarks.md). Only durations change: the dataset loads the clean cut of
        the same id and perturbs it (``load``)."""
        if not self.cfg.speed.enabled:
            return cuts
        self.clean = {c.id: c for c in cuts}
        return CutSet.from_cuts(fastcopy(c, duration=c.duration / self.speed_factor(c.id, epoch)) for c in cuts)

    def load(self, cut, epoch: int):
        """(the cut at its drawn speed, its augmented (S,) float32 samples, the speed factor).
        The cut keeps its id (soft labels are looked up by it); S is its num_samples. A cut
        from ``bucketing_cuts`` is replaced by its clean original first."""
        cut = self.clean.get(cut.id, cut)
        samples = load_cut_audio(cut)
        factor = self.speed_factor(cut.id, epoch)
        if factor != 1.0:
            if cut.has_features:  # lhotse's perturb_speed would detach them from the caller's cut
                cut = cut.drop_features()
            cut = cut.perturb_speed(factor, affix_id=False)
            n = cut.num_samples
            samples = soxr.resample(samples, SAMPLE_RATE, SAMPLE_RATE / factor)
            samples = np.pad(samples, (0, max(0, n - len(samples))))[:n]
        return cut, self(samples, cut.id, epoch), factor

    @cached_property
    def rooms(self) -> list[np.ndarray]:
        """Impulse responses of ``num_rooms`` shoebox rooms (random size, RT60, source and
        microphone positions), each starting at its direct path."""
        import pyroomacoustics as pra

        rng = np.random.default_rng((self.seed, 0x52, 0x1E))
        rirs = []
        for _ in range(self.cfg.reverb.num_rooms):
            dims = rng.uniform([3.0, 3.0, 2.4], [9.0, 7.0, 3.5])
            rt60 = rng.uniform(*self.cfg.reverb.rt60)
            absorption, max_order = pra.inverse_sabine(rt60, dims)
            room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=max_order)
            room.add_source(rng.uniform(0.5, dims - 0.5))
            room.add_microphone(rng.uniform(0.5, dims - 0.5))
            room.compute_rir()
            rir = np.asarray(room.rir[0][0], dtype=np.float64)
            rirs.append((rir[int(np.argmax(np.abs(rir))) :] / np.abs(rir).max()).astype(np.float32))
        return rirs

    @cached_property
    def noise_files(self) -> list[Path]:
        root = Path(self.cfg.noise.noise_dir)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not files:
            raise DataError(
                f"augment.noise.noise_dir={root}: no {'/'.join(AUDIO_SUFFIXES)} files there; "
                "give a directory of noise recordings (e.g. MUSAN's noise/) or leave it empty for coloured noise"
            )
        return files

    @cached_property
    def coloured_pool(self) -> dict[str, np.ndarray]:
        """``NOISE_POOL_SECONDS`` of each colour, made once per process from the seed: an
        utterance takes a stretch at a random offset, as from a noise recording (one FFT
        per utterance cost as much as the fbank itself)."""
        rng = np.random.default_rng((self.seed, 0x4E, 0x15))
        n = int(NOISE_POOL_SECONDS * SAMPLE_RATE)
        return {c: coloured_noise(n, NOISE_COLOURS[c], rng) for c in self.cfg.noise.colours}

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if not self.cfg.noise.noise_dir:
            return _stretch(self.coloured_pool[rng.choice(self.cfg.noise.colours)], n, rng)
        import soundfile as sf

        path = self.noise_files[int(rng.integers(len(self.noise_files)))]
        try:
            noise, sr = sf.read(path, dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as e:
            raise DataError(f"noise file {path}: {e}; remove it from augment.noise.noise_dir") from e
        noise = noise[:, 0]
        if sr != SAMPLE_RATE:
            noise = soxr.resample(noise, sr, SAMPLE_RATE)
        if len(noise) == 0:
            raise DataError(f"noise file {path} is empty; remove it from augment.noise.noise_dir")
        return _stretch(noise, n, rng)

    def __call__(self, x: np.ndarray, utt: str, epoch: int) -> np.ndarray:
        """The utterance's (S,) float32 samples after reverb, noise, gain and band-limiting
        (each with its probability); same length."""
        c, n = self.cfg, len(x)
        # each kind its own generator: switching one off leaves the others' draws unchanged
        reverb, noise, gain, band = (self.rng(utt, epoch, salt) for salt in (2, 3, 4, 5))
        if c.reverb.enabled and reverb.random() < c.reverb.prob:
            wet = fftconvolve(x, self.rooms[int(reverb.integers(len(self.rooms)))])[:n]
            x = wet * np.sqrt(np.mean(x**2) / max(np.mean(wet**2), 1e-12))
        if c.noise.enabled and noise.random() < c.noise.prob:
            x = add_noise(x, self._noise(n, noise), noise.uniform(*c.noise.snr_db))
        if c.gain.enabled and gain.random() < c.gain.prob:
            x = x * 10 ** (gain.uniform(*c.gain.db) / 20)
        if c.band.enabled and band.random() < c.band.prob:
            rate = int(band.choice(c.band.rates))
            x = soxr.resample(soxr.resample(x, SAMPLE_RATE, rate), rate, SAMPLE_RATE)
            x = np.pad(x, (0, max(0, n - len(x))))[:n]
        return np.clip(x, -1.0, 1.0).astype(np.float32)
