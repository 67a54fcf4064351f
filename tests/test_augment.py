"""On-the-fly augmentation: seeded, length- and label-consistent, each kind switchable."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from speechdistill.config import from_dict, save_config
from speechdistill.data.audio import SAMPLE_RATE, load_cut_audio
from speechdistill.data.augment import (
    AugmentConfig,
    BandConfig,
    GainConfig,
    NoiseConfig,
    ReverbConfig,
    SpeedConfig,
    WaveAugment,
    add_noise,
    coloured_noise,
)
from speechdistill.data.batching import AsrDataset
from speechdistill.data.corpus import load_split
from speechdistill.data.features import FbankExtractor, load_cuts_with_features
from speechdistill.data.layout import SoftLabelSpec
from speechdistill.students.model import TapConfig
from speechdistill.train import SpecAugConfig, TrainConfig, setup, spec_augment, train
from speechdistill.units.inventory import Units
from speechdistill.utils import DataError

EVERYTHING = AugmentConfig(
    speed=SpeedConfig(True),
    reverb=ReverbConfig(True, prob=1.0, num_rooms=3),
    noise=NoiseConfig(True, prob=1.0),
    gain=GainConfig(True, prob=1.0),
    band=BandConfig(True, prob=1.0),
)


@pytest.fixture(scope="module")
def cuts(tiny_corpus):
    return load_split(tiny_corpus, "dev").subset(first=4)


def test_each_augmentation_is_seeded_and_keeps_the_length(cuts):
    aug = WaveAugment(EVERYTHING, seed=7)
    for cut in cuts:
        clean = load_cut_audio(cut)
        a, x, f = aug.load(cut, epoch=2)
        b, y, g = WaveAugment(EVERYTHING, seed=7).load(cut, epoch=2)
        assert f == g and np.array_equal(x, y) and a.duration == b.duration
        assert len(x) == a.num_samples and abs(len(x) - len(clean) / f) <= 1
        assert x.dtype == np.float32 and np.abs(x).max() <= 1.0
        if f == 1.0:
            assert not np.allclose(x, clean), "every kind is on with prob 1: the audio must change"
    draws = {WaveAugment(EVERYTHING, seed=7).load(cuts[0], epoch=e)[1].tobytes() for e in range(4)}
    assert len(draws) == 4, "each epoch draws anew"
    assert not np.array_equal(aug.load(cuts[0], 2)[1], WaveAugment(EVERYTHING, seed=8).load(cuts[0], 2)[1])


def test_switching_one_kind_off_leaves_the_others_draws():
    x = 0.1 * np.sin(np.arange(16000) / 7.0).astype(np.float32)
    both = AugmentConfig(noise=NoiseConfig(True, prob=1.0), gain=GainConfig(True, prob=1.0))
    gain_only = AugmentConfig(gain=GainConfig(True, prob=1.0))
    noisy = WaveAugment(both, 0)(x, "u1", 0)
    gained = WaveAugment(gain_only, 0)(x, "u1", 0)
    loud = np.abs(x) > 0.01
    ratio = gained[loud] / x[loud]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    # same gain draw: the noisy one is the gained signal plus gained noise
    gain = ratio[0]
    noise = WaveAugment(AugmentConfig(noise=NoiseConfig(True, prob=1.0)), 0)(x, "u1", 0) - x
    np.testing.assert_allclose(noisy, gain * (x + noise), atol=1e-5)
    assert np.array_equal(WaveAugment(AugmentConfig(), 0)(x, "u1", 0), x), "all off: unchanged"


def test_noise_is_mixed_at_the_drawn_snr_and_coloured_as_named():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(32000).astype(np.float32)
    for snr in (0.0, 10.0, 20.0):
        n = coloured_noise(32000, 1.0, rng)
        mixed = add_noise(x, n, snr)
        measured = 10 * np.log10(np.mean(x**2) / np.mean((mixed - x) ** 2))
        assert measured == pytest.approx(snr, abs=1e-3)
    for exponent, slope in ((0.0, 0.0), (1.0, -10.0), (2.0, -20.0)):  # dB per decade of frequency
        p = np.abs(np.fft.rfft(coloured_noise(2**16, exponent, np.random.default_rng(1)))) ** 2
        f = np.fft.rfftfreq(2**16)
        lo, hi = p[(f > 0.002) & (f < 0.004)].mean(), p[(f > 0.02) & (f < 0.04)].mean()
        assert 10 * np.log10(hi / lo) == pytest.approx(slope, abs=2.0)


def test_coloured_noise_comes_from_a_seeded_pool_in_stretches():
    """Each utterance takes its own stretch of the process's minute of noise; the pool
    is the seed's, and its colour is the one named."""
    x = np.zeros(16000, np.float32)
    x[::50] = 0.5  # not silent: noise is mixed relative to the signal's power
    cfg = AugmentConfig(noise=NoiseConfig(True, prob=1.0, snr_db=[0.0, 0.0], colours=["brown"]))
    a, b = WaveAugment(cfg, 0), WaveAugment(cfg, 0)
    n1, n2 = a(x, "u1", 0) - x, a(x, "u2", 0) - x
    assert np.array_equal(n1, b(x, "u1", 0) - x) and not np.allclose(n1, n2)
    assert np.array_equal(a.coloured_pool["brown"], b.coloured_pool["brown"])
    assert not np.array_equal(a.coloured_pool["brown"], WaveAugment(cfg, 1).coloured_pool["brown"])
    assert len(a.coloured_pool["brown"]) == 60 * SAMPLE_RATE
    p = np.abs(np.fft.rfft(n1)) ** 2
    f = np.fft.rfftfreq(len(n1))
    assert p[(f > 0.002) & (f < 0.004)].mean() > 30 * p[(f > 0.02) & (f < 0.04)].mean(), "brown: -20 dB/decade"


def test_speed_perturbation_leaves_the_callers_cut_alone(tiny_units):
    """lhotse's perturb_speed detaches a cut's features in place; the augmentation must
    not do that to the cut it was given (a loader's or a stored-feature task's)."""
    cut = load_cuts_with_features(tiny_units.parent, "dev")[0]
    aug = WaveAugment(AugmentConfig(speed=SpeedConfig(True, factors=[1.1])), 0)
    perturbed, samples, factor = aug.load(cut, epoch=0)
    assert factor == 1.1 and cut.has_features and not perturbed.has_features
    assert perturbed.duration == pytest.approx(cut.duration / 1.1, abs=1e-3)


def test_band_limiting_removes_the_band_above_the_cutoff():
    t = np.arange(16000) / SAMPLE_RATE
    x = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    y = WaveAugment(AugmentConfig(band=BandConfig(True, prob=1.0, rates=[8000])), 0)(x, "u", 0)
    spectrum = np.abs(np.fft.rfft(y))
    assert spectrum[6000] < 0.01 * spectrum[1000] and len(y) == len(x)


def test_reverb_keeps_the_direct_path_in_place():
    """The impulse response starts at its direct path: an onset stays within 1 ms."""
    x = np.zeros(16000, np.float32)
    x[8000:8400] = 0.5 * np.sin(np.arange(400) / 3.0)
    y = WaveAugment(AugmentConfig(reverb=ReverbConfig(True, prob=1.0, num_rooms=2)), 0)(x, "u", 0)
    onset = int(np.argmax(np.abs(y) > 0.05 * np.abs(y).max()))
    assert abs(onset - 8000) <= 16 and len(y) == len(x)


def test_speed_perturbation_moves_frames_and_alignment_together(tiny_units):
    corpus = tiny_units.parent
    units = Units(tiny_units)
    cuts = load_split(corpus, "train").subset(first=3)
    tap = TapConfig(layer=1, unit="phone")
    fast = WaveAugment(AugmentConfig(speed=SpeedConfig(True, factors=[1.1])), 0)
    batch = AsrDataset(units, "subword", [tap], frame_shift=0.01, augment=fast)[cuts]
    clean = AsrDataset(units, "subword", [tap], frame_shift=0.01, on_the_fly=True)[cuts]
    fbank = FbankExtractor()
    for i, utt in enumerate(batch.ids):
        cut = cuts[utt]
        T = int(batch.feat_lens[i])
        assert T == fbank.num_frames(round(cut.num_samples / 1.1))
        j = clean.ids.index(utt)
        assert T == pytest.approx(int(clean.feat_lens[j]) / 1.1, abs=1)
        # the tap's labels: the clean alignment with every time divided by 1.1
        scaled = {
            "phone": [
                type(a)(a.symbol, a.start / 1.1, a.duration / 1.1) for a in cut.supervisions[0].alignment["phone"]
            ]
        }
        want = units["phone"].frame_labels(scaled, 0.01, T)
        got = batch.frame_targets[tap.name][i, :T].numpy()
        assert (got == want).mean() >= 0.98
        assert torch.equal(batch.targets["subword"][0][i], clean.targets["subword"][0][j]), "same transcript"
    # a KD-only frame tap (ce_weight 0, as hier's) trains on soft labels alone: no truth labels built
    kd_only = TapConfig(layer=1, unit="phone", ce_weight=0.0)
    assert AsrDataset(units, "subword", [kd_only], frame_shift=0.01)[cuts].frame_targets == {}


def test_batches_are_bucketed_on_the_perturbed_durations(tiny_units):
    """Slowed down 0.5x, every utterance doubles: the sampler must see that, so a batch
    holds at most max_duration seconds of the audio it trains on; the dataset still loads
    (and perturbs once) the clean cut of each id."""
    from speechdistill.config import load_config

    max_duration = 20.0
    cfg = load_config(
        TrainConfig,
        "configs/asr/baseline.yaml",
        [f"data.corpus={tiny_units.parent}", f"data.max_duration={max_duration}", "data.alignment=''"],
    )
    cfg.augment.speed = SpeedConfig(True, factors=[0.5])
    engine, task = setup(replace(cfg, out_dir=""))
    clean = {c.id: c.duration for c in task.train_cuts}
    n = 0
    for batch in task.batches(epoch=0, skip=0):
        seconds = batch.feat_lens.sum().item() * 0.01
        assert seconds <= max_duration + 0.01 * len(batch.ids)  # a frame of rounding each
        for utt, T in zip(batch.ids, batch.feat_lens.tolist(), strict=True):
            assert T == pytest.approx(clean[utt] / 0.5 * 100, abs=1), "perturbed once, from the clean cut"
        n += 1
    assert n >= math.ceil(2 * sum(clean.values()) / max_duration)
    engine.close()


def test_speed_perturbed_soft_labels_are_stretched_with_the_audio(tiny_units):
    """The dataset asks the soft-label cache for the utterance's spans stretched by 1 / speed."""
    units = Units(tiny_units)
    cuts = load_split(tiny_units.parent, "train").subset(first=2)

    class Cache:
        k, scales = 2, []

        def frames(self, utt, frame_shift, T, time_scale=1.0):
            self.scales.append(time_scale)
            return torch.zeros(T, 2), torch.zeros(T, 2, dtype=torch.long), torch.zeros(T, dtype=torch.bool)

    cache = Cache()
    slow = WaveAugment(AugmentConfig(speed=SpeedConfig(True, factors=[0.9])), 0)
    AsrDataset(
        units, "subword", [], frame_shift=0.04, soft_frames={SoftLabelSpec("phone", 2, 1.0): cache}, augment=slow
    )[cuts]
    assert cache.scales == pytest.approx([1 / 0.9, 1 / 0.9])


def test_specaugment_schedule_hand_computed():
    cfg = SpecAugConfig(start_step=10, ramp_steps=4)
    assert [cfg.strength(s) for s in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    feats = torch.ones(2, 50, 20)
    assert torch.equal(spec_augment(feats, torch.tensor([50, 40]), cfg, step=3), feats), "off before start"
    torch.manual_seed(0)
    masked = spec_augment(feats, torch.tensor([50, 40]), SpecAugConfig(freq_width=5, time_width=0.1), step=0)
    assert masked.shape == feats.shape and (masked == 0).any() and feats.min() == 1.0


def test_noise_directory_is_read_and_a_bad_one_is_named(tmp_path):
    noise_dir = tmp_path / "musan"
    (noise_dir / "free-sound").mkdir(parents=True)
    hum = (0.2 * np.sin(2 * np.pi * 50 * np.arange(8000) / 8000)).astype(np.float32)
    sf.write(noise_dir / "free-sound" / "hum.wav", hum, 8000)
    cfg = AugmentConfig(noise=NoiseConfig(True, prob=1.0, snr_db=[10.0, 10.0], noise_dir=str(noise_dir)))
    x = 0.1 * np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    noise = WaveAugment(cfg, 0)(x, "u", 0) - x
    spectrum = np.abs(np.fft.rfft(noise))
    f = np.fft.rfftfreq(len(noise), 1 / SAMPLE_RATE)
    assert f[np.argmax(spectrum)] == pytest.approx(50, abs=2), "the noise is the file's 50 Hz hum"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="noise_dir=.*empty: no .wav/.flac/.ogg files"):
        WaveAugment(AugmentConfig(noise=NoiseConfig(True, noise_dir=str(tmp_path / "empty"))), 0)


def test_bad_augment_settings_name_the_key():
    for key, value, message in (
        ("speed", {"factors": [0.9, 3.0]}, "augment.speed.factors"),
        ("noise", {"snr_db": [30, 5]}, "augment.noise.snr_db"),
        ("noise", {"colours": ["purple"]}, "augment.noise.colours"),
        ("reverb", {"prob": 1.5}, "augment.reverb.prob"),
        ("band", {"rates": [16000]}, "augment.band.rates"),
    ):
        with pytest.raises(ValueError, match=message):
            from_dict(TrainConfig, {"augment": {key: value}})


def test_training_with_every_augmentation_runs_and_a_killed_run_resumes_identically(tiny_units, tmp_path):
    def cfg(out):
        return from_dict(
            TrainConfig,
            {
                "out_dir": str(out),
                "progress": False,
                "checkpoint_every": 2,
                "data": {"corpus": str(tiny_units.parent), "max_duration": 30.0},
                "model": {"encoder": {"preset": None, "num_blocks": 2, "d_model": 32, "num_heads": 4, "ff_dim": 64}},
                "specaug": {"start_step": 1, "ramp_steps": 2},
                "augment": asdict(EVERYTHING),
                "optim": {"lr": 0.003, "warmup_steps": 2, "max_epochs": 2, "max_steps": 6},
            },
        )

    summary = train(cfg(tmp_path / "a"))
    assert summary["steps"] == 6
    save_config(cfg(tmp_path / "b"), tmp_path / "b.yaml")
    cli = [sys.executable, "-m", "speechdistill.cli", "train", str(tmp_path / "b.yaml")]
    killed = subprocess.run([*cli, "debug_kill_at_step=5"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = subprocess.run([*cli, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_file(tmp_path / d / "last.safetensors") for d in "ab")
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k}: augmented runs resume identically")
