"""Features (stored and on the fly) and the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from speechdistill.cli import _parser, main
from speechdistill.data.audio import load_audio
from speechdistill.data.features import FbankExtractor, compute_features, load_cuts_with_features


def test_stored_features_match_on_the_fly(tiny_units):
    corpus = tiny_units.parent
    cuts = load_cuts_with_features(corpus, "dev")
    fbank = FbankExtractor()
    for cut in cuts.subset(first=3):
        stored = cut.load_features()
        fresh = fbank(load_audio(cut.recording))
        assert stored.shape == fresh.shape == (fbank.num_frames(cut.recording.num_samples), 80)
        assert np.abs(stored - fresh).max() < 0.1  # lilcom compression error only


def test_features_in_worker_processes_write_the_same_archive(tiny_units, tmp_path):
    corpus = tiny_units.parent
    copy = tmp_path / "tiny"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("feats", "*_cuts.jsonl", "features.json", "units"))
    compute_features(copy, splits=("dev",), show_progress=False, jobs=2)
    assert (copy / "feats" / "dev.lca").read_bytes() == (corpus / "feats" / "dev.lca").read_bytes()
    # the cuts name their audio by absolute path: the same but for the corpus's root
    assert (copy / "dev_cuts.jsonl").read_text() == (corpus / "dev_cuts.jsonl").read_text().replace(
        str(corpus), str(copy)
    )


def test_both_extractors_give_the_same_frame_count():
    x = np.random.default_rng(0).normal(0, 0.1, 16000 + 77).astype(np.float32)
    a, b = FbankExtractor("kaldi-native")(x), FbankExtractor("lhotse")(x)
    assert a.shape == b.shape == (FbankExtractor().num_frames(len(x)), 80)
    with pytest.raises(ValueError, match="unknown feature extractor 'mfcc'; valid: kaldi-native, lhotse"):
        FbankExtractor("mfcc")


def test_fast_extractor_is_kaldi_native_fbank_to_2e_3(tiny_corpus):
    """The torch path used on the fly computes the stored features' filterbank: same
    frames, same values to 2e-3 in log-mel on speech, digital silence and a whisper; a
    signal shorter than one window falls back to kaldi-native-fbank itself."""
    from speechdistill.data.corpus import load_split

    ref, fast = FbankExtractor(), FbankExtractor(fast=True)
    signals = [load_audio(c.recording) for c in load_split(tiny_corpus, "dev").subset(first=3)]
    rng = np.random.default_rng(0)
    signals += [np.zeros(4000, np.float32), (1e-6 * rng.standard_normal(4001)).astype(np.float32)]
    signals += [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (0, 100, 399, 400, 16001)]
    for x in signals:
        a, b = ref(x), fast(x)
        assert a.shape == b.shape == (ref.num_frames(len(x)), 80)
        if len(a):
            assert np.abs(a - b).max() < 2e-3
    assert fast(signals[0]) is not None and not np.array_equal(ref(signals[0]), fast(signals[0])), (
        "the fast path must be the torch layers, not kaldi-native-fbank again"
    )


def test_fast_mfcc_is_kaldi_native_fbank_to_3e_3(tiny_corpus):
    """The combined aligner's MFCCs through lhotse's torch layer: the same frames as
    kaldi-native-fbank's, the same values to 3e-3 (C0 the raw log energy, floored as Kaldi
    floors it on digital silence), on speech, silence, a whisper; short signals fall back."""
    from speechdistill.data.corpus import load_split
    from speechdistill.data.features import mfcc_with_deltas

    signals = [load_audio(c.recording) for c in load_split(tiny_corpus, "dev").subset(first=3)]
    rng = np.random.default_rng(0)
    signals += [np.zeros(4000, np.float32), (1e-6 * rng.standard_normal(4001)).astype(np.float32)]
    signals += [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (0, 100, 399, 400, 16001)]
    for x in signals:
        for shift in (10.0, 5.0):
            a, b = mfcc_with_deltas(x, shift), mfcc_with_deltas(x, shift, fast=True)
            assert a.shape == b.shape and a.shape[1] == 39
            if len(a):
                assert np.abs(a[:, :13] - b[:, :13]).max() < 3e-3, (len(x), shift)
    silence = mfcc_with_deltas(np.zeros(4000, np.float32), fast=True)
    assert np.allclose(silence[:, 0], np.log(np.finfo(np.float32).eps))
    assert not np.array_equal(mfcc_with_deltas(signals[0]), mfcc_with_deltas(signals[0], fast=True))


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommands(sub, prefix + (name,))


def test_every_subcommand_has_help(capsys):
    """The entry point once in a fresh interpreter, then every subcommand's help in this one
    (a subprocess each cost two minutes of the suite in imports alone)."""
    out = subprocess.run([sys.executable, "-m", "speechdistill.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: speechdistill" in out.stdout
    commands = list(_subcommands(_parser()))
    assert ("corpus", "build") in commands and ("units", "build") in commands
    for cmd in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*cmd, "--help"])
        assert exit_.value.code == 0, cmd
        assert f"usage: speechdistill {' '.join(cmd)}" in capsys.readouterr().out, cmd


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            "--task sid --corpus c --epochs 3 --lr 0.01 --lstm-dim 8 --pool-conv 4 --max-hours 0.5 --tune top "
            "--tune-layers 1 --upstream-lr 0.001 --seed 2",
            dict(task="sid", corpus="c", epochs=3, lr=0.01, lstm_dim=8, pool_conv=4, max_hours=0.5, tune="top")
            | dict(tune_layers=1, upstream_lr=0.001, seed=2),
        ),
        ("--task pr --rate 2 --tune adapters", dict(task="pr", rate=2.0, tune="adapters", epochs=20, lr=5e-3, seed=0)),
        (
            "--task pr --learn-rate 1,2.5 --rate-cost 0.1 --rate-epochs 2 --rate-step 5",
            dict(learn_rates=[1.0, 2.5], rate_cost=0.1, rate_epochs=2, rate_step=5.0, rate=0.0),
        ),
    ],
)
def test_every_probe_option_reaches_its_config(options, expected, monkeypatch):
    """``probe`` hands its options to ProbeConfig by field name: none is dropped or renamed."""
    seen = []

    def kept(upstream, cfg, again):
        seen.append(cfg)
        raise KeyboardInterrupt  # stop before anything runs; main() turns it into an exit

    monkeypatch.setattr("speechdistill.probe.probe_kept", kept)
    with pytest.raises(SystemExit):
        main(["probe", "--upstream", "up", *options.split()])
    assert {k: getattr(seen[0], k) for k in expected} == expected


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "speechdistill.cli", "units", "build", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:") and "lm_text.txt is missing" in out.stderr
    assert "Traceback" not in out.stderr
