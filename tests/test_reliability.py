"""Reliability: hostile inputs, truncated files, config fuzzing and pickle-free loading.
Every fault must give a message naming the file, utterance or key, and lose nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechdistill.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from speechdistill.config import ConfigError, from_dict
from speechdistill.data.corpus import load_split
from speechdistill.data.importers import import_kaldi_dir
from speechdistill.utils import ManifestError

SRC = Path(__file__).parent.parent / "src"


def _tone(seconds: float, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "speechdistill.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A Kaldi data dir holding one of every hostile input the issue lists, plus two good ones."""
    root = tmp_path_factory.mktemp("hostile")
    audio = root / "audio"
    audio.mkdir()
    nan = _tone(1.0)
    nan[500] = np.nan
    clipped = np.clip(_tone(1.0, amp=3.0), -1, 1)
    files = {
        "good": (_tone(2.0), 16000),
        "zero": (np.zeros(0, np.float32), 16000),
        "one": (np.array([0.1], np.float32), 16000),
        "hour": (np.zeros(16000 * 3600, np.int16), 16000),
        "rate8k": (_tone(1.0, 8000), 8000),
        "rate48k": (_tone(1.0, 48000), 48000),
        "stereo": (np.stack([_tone(1.0), _tone(1.0)], 1), 16000),
        "clipped": (clipped, 16000),
        "silence": (np.zeros(16000, np.float32), 16000),
        "nan": (nan, 16000),
        "emptytext": (_tone(1.0), 16000),
        "punct": (_tone(1.0), 16000),
        "tenk": (_tone(2.0), 16000),
    }
    for name, (x, sr) in files.items():
        sf.write(audio / f"{name}.wav", x, sr, subtype="FLOAT" if name == "nan" else "PCM_16")
    d = root / "kaldi"
    d.mkdir()
    wav = {name: audio / f"{name}.wav" for name in files} | {"missing": audio / "missing.wav"}
    (d / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in wav.items()))
    text = {k: "and god said let there be light" for k in wav}
    text |= {"emptytext": "", "punct": "... !!! ,,, ?", "tenk": " ".join(["amen"] * 10_000)}
    (d / "text").write_text("".join(f"{k} {v}\n" for k, v in text.items()))
    return d


def test_every_hostile_input_is_kept_converted_or_skipped_with_a_message(hostile, tmp_path):
    report = import_kaldi_dir(hostile, tmp_path / "out", split="dev")
    s = report["skipped_utterances"]
    expected = {
        "zero": "is empty (0 samples)",
        "one": "is 1 samples (0.1 ms) long, shorter than 100 ms",
        "hour": "is 60.0 minutes long (more than 10); cut it into utterances with a Kaldi `segments` file",
        "silence": "is silent (peak 0.0e+00)",
        "nan": "contains NaN or infinite samples",
        "missing": "cannot read audio file",
        "emptytext": "has an empty transcript",
        "punct": "has an empty transcript (nothing left after normalisation)",
        "tenk": "10000 words for 2.00 s of audio (more than 8 words/s)",
    }
    assert set(s) == set(expected)
    for utt, msg in expected.items():
        assert msg in s[utt] and utt in s[utt], (utt, s[utt])
    assert report["kept"] == 5  # good, rate8k, rate48k, stereo, clipped
    assert report["converted"] == {
        "8000 Hz, resampled to 16000 Hz": 1,
        "48000 Hz, resampled to 16000 Hz": 1,
        "multi-channel, averaged to mono": 1,
        "clipped (kept)": 1,
    }
    cuts = load_split(tmp_path / "out", "dev")
    assert sorted(c.id for c in cuts) == ["clipped", "good", "rate48k", "rate8k", "stereo"]
    from speechdistill.data.audio import load_cut_audio

    for c in cuts:  # every kept utterance loads as finite 16 kHz mono
        x = load_cut_audio(c)
        assert x.ndim == 1 and np.isfinite(x).all() and abs(len(x) - 16000 * c.duration) <= 1


def test_non_utf8_and_duplicate_ids_abort_the_import_and_keep_the_old_manifests(hostile, tmp_path):
    out = tmp_path / "out"
    import_kaldi_dir(hostile, out, split="dev")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad"
    shutil.copytree(hostile, bad)
    (bad / "text").write_bytes(b"good and god said\nrate8k caf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"text:2: not UTF-8 \(byte 0xe9\); convert the file"):
        import_kaldi_dir(bad, out, split="dev")
    (bad / "text").write_text("good and god said\ngood twice\n")
    with pytest.raises(ValueError, match=r"text:2: duplicate id 'good'"):
        import_kaldi_dir(bad, out, split="dev")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_truncated_manifests_are_named(tiny_corpus, tmp_path):
    corpus = tmp_path / "c"
    # without features, so `features compute` must read the manifests (other tests may have computed them)
    shutil.copytree(
        tiny_corpus, corpus, ignore=shutil.ignore_patterns("audio", "feats", "*_cuts.jsonl", "features.json")
    )
    path = corpus / "train_supervisions.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut mid-line
    line = data[: len(data) // 2].count(b"\n") + 1
    with pytest.raises(ManifestError, match=rf"train_supervisions.jsonl:{line}: not a complete JSON line"):
        load_split(corpus, "train")
    lines = data.decode().splitlines(keepends=True)
    path.write_text("".join(lines[:10]))  # cut at a line boundary: only the count tells
    with pytest.raises(ManifestError, match=f"holds 10 utterances but the corpus recorded {len(lines)}"):
        load_split(corpus, "train")
    proc = _cli("features", "compute", corpus)
    assert proc.returncode == 1 and "holds 10 utterances" in proc.stderr and "Traceback" not in proc.stderr


def test_truncated_soft_label_cache_is_refused_and_kept(tiny_units, tmp_path):
    from speechdistill.distill.soft_labels import SoftLabelCache, StaleCacheError
    from speechdistill.teachers.lm import LMConfig
    from speechdistill.teachers.lm_train import train_lm

    corpus = tmp_path / "c"
    shutil.copytree(tiny_units.parent, corpus, symlinks=True)
    train_lm(corpus, "phone", LMConfig(d_model=16, num_layers=1), max_sentences=50, show_progress=False)
    from speechdistill.data.layout import SoftLabelSpec
    from speechdistill.distill.soft_labels import build_cache

    build_cache(corpus, SoftLabelSpec("phone", 4, 2.0), show_progress=False)
    shard = corpus / "soft_labels" / "phone-k4-T2.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    damaged = shard.read_bytes()
    with pytest.raises(StaleCacheError, match="phone-k4-T2 cannot be used: .*truncated"):
        SoftLabelCache.open(shard.with_suffix(""), corpus)
    assert shard.read_bytes() == damaged


def test_truncated_checkpoint_stops_resume_and_is_not_overwritten(tiny_units, tmp_path):
    from speechdistill.train import train
    from test_train import tiny_config

    out = tmp_path / "run"
    train(tiny_config(tiny_units.parent, out, max_steps=4))
    last = out / "last.safetensors"
    last.write_bytes(last.read_bytes()[:5000])
    damaged = last.read_bytes()
    with pytest.raises(CheckpointError, match="last.safetensors is truncated"):
        train(tiny_config(tiny_units.parent, out, max_steps=8), resume=True)
    assert last.read_bytes() == damaged


def test_checkpoint_with_unexpected_or_missing_tensors_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "extra", tensors | {"model.evil": torch.zeros(1)}, {"kind": "x"})
    t, _ = load_checkpoint(tmp_path / "extra")
    with pytest.raises(CheckpointError, match="unexpected.*model.evil|evil"):
        load_model_state(model, t, "model.", tmp_path / "extra")
    save_checkpoint(tmp_path / "short", {"model.weight": model.weight}, {"kind": "x"})
    t, _ = load_checkpoint(tmp_path / "short")
    with pytest.raises(CheckpointError, match="bias"):
        load_model_state(model, t, "model.", tmp_path / "short")


def test_nothing_unpickles_user_files():
    offenders = []
    for path in SRC.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bpickle\b|\bjoblib\.load|np\.load\(.*allow_pickle=True", line):
                offenders.append(f"{path}:{n}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}:{n}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.learning_rate=1", "unknown config key optim.learning_rate"),
        ("model.encoder.num_blocks=six", "expected an integer, got 'six'"),
        ("model.encoder.preset=null", None),  # valid: the control
        ("model.encoder.d_model=-3", "d_model=-3 conflicts with preset 'xs'"),
        ("data.max_duration=-5", "max_duration and num_buckets must be positive"),
        ("model.taps=[{layer: 9, unit: phone}]", "layer 9"),
        ("optim.schedule=cosine", "schedule must be one of noam, linear, constant"),
    ],
)
def test_bad_configs_are_rejected_before_any_work(tiny_units, tmp_path, override, message):
    out = tmp_path / "never"
    proc = _cli(
        "train",
        "configs/asr/baseline.yaml",
        f"data.corpus={tiny_units.parent}",
        f"out_dir={out}",
        "optim.max_epochs=1",
        "optim.max_steps=1",
        "progress=false",
        override,
    )
    if message is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists(), "a rejected config must not create its output directory"


def test_bad_ssl_and_ablation_configs_are_rejected(tmp_path):
    from speechdistill.ablate import ablate
    from speechdistill.distill.ssl_distill import DistillConfig
    from speechdistill.teachers.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="hidden_size=100 is not divisible by num_heads=3"):
        from_dict(PretrainConfig, {"hidden_size": 100, "num_heads": 3})
    with pytest.raises(
        ConfigError, match="student: unknown SSL student kind 'tinyhubert'; valid: distilhubert, fithubert"
    ):
        from_dict(DistillConfig, {"student": {"kind": "tinyhubert"}})
    with pytest.raises(ConfigError, match="attention_weight needs equal frame rates"):
        from_dict(DistillConfig, {"student": {"kind": "fithubert"}, "attention_weight": 1.0})
    abl = tmp_path / "abl.yaml"
    abl.write_text(
        json.dumps(
            {
                "base": str(Path(__file__).parent.parent / "configs" / "asr" / "baseline.yaml"),
                "out_dir": str(tmp_path / "abl"),
                "variants": {"baseline": [], "bad": ["model.encoder.d_model=-1"]},
            }
        )
    )
    with pytest.raises(ConfigError, match="d_model=-1 conflicts with preset 'xs'"):
        ablate(abl, seeds=1)
    assert not (tmp_path / "abl").exists()
