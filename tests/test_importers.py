"""Importers (Kaldi data dir, lhotse manifests) and bad-input handling, on fixtures made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

from speechdistill.data.audio import BadAudioError, inspect_audio, load_audio, load_cut_audio, to_mono_16k
from speechdistill.data.corpus import load_split
from speechdistill.data.importers import import_kaldi_dir, import_lhotse, import_lm_text


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture
def kaldi_dir(tmp_path):
    """A Kaldi data dir with one good utterance and one of each fault."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", _tone(1.0), 16000)
    sf.write(audio / "long.wav", _tone(3.0), 16000)  # split by `segments` into two utterances
    sf.write(audio / "rate8k.wav", _tone(1.0, 8000), 8000)
    sf.write(audio / "stereo.wav", np.stack([_tone(1.0), _tone(1.0)], 1), 16000)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = _tone(1.0)
    nan[100] = np.nan
    sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
    (audio / "garbage.wav").write_bytes(b"this is not audio at all")
    sf.write(audio / "notext.wav", _tone(1.0), 16000)
    d = tmp_path / "kaldi"
    d.mkdir()
    recs = ["good", "long", "rate8k", "stereo", "empty", "nan", "garbage", "notext"]
    (d / "wav.scp").write_text("".join(f"{r} {audio / r}.wav\n" for r in recs) + "piped sox x.wav -t wav - |\n")
    utts = {
        "good-1": ("good", 0, 1),
        "long-1": ("long", 0, 1.5),
        "long-2": ("long", 1.5, 3.0),
        "rate8k-1": ("rate8k", 0, -1),
        "stereo-1": ("stereo", 0, -1),
        "empty-1": ("empty", 0, -1),
        "nan-1": ("nan", 0, -1),
        "garbage-1": ("garbage", 0, -1),
        "notext-1": ("notext", 0, -1),
        "piped-1": ("piped", 0, -1),
    }
    (d / "segments").write_text("".join(f"{u} {r} {s} {e}\n" for u, (r, s, e) in utts.items()))
    text = {u: "hello, world said the test!" for u in utts} | {"notext-1": "  ... !!"}
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in text.items()))
    (d / "utt2spk").write_text("".join(f"{u} spk{u[0]}\n" for u in utts))
    return d


def test_kaldi_import_keeps_good_converts_and_skips_with_messages(kaldi_dir, tmp_path):
    out = tmp_path / "corpus"
    report = import_kaldi_dir(kaldi_dir, out, split="dev")
    skipped = report["skipped_utterances"]
    assert report["kept"] == 5  # good-1, long-1, long-2, rate8k-1, stereo-1
    assert report["converted"] == {"8000 Hz, resampled to 16000 Hz": 1, "multi-channel, averaged to mono": 1}
    assert "is empty (0 samples)" in skipped["empty"]
    assert "NaN or infinite" in skipped["nan"] and "nan.wav" in skipped["nan"]
    assert "cannot read audio file" in skipped["garbage"] and "garbage.wav" in skipped["garbage"]
    assert "empty transcript" in skipped["notext-1"] and "notext-1" in skipped["notext-1"]
    assert "pipe command" in skipped["piped"]
    assert json.loads((out / "import_dev.json").read_text())["kept"] == 5
    cuts = load_split(out, "dev")
    by_id = {c.supervisions[0].id: c for c in cuts}
    assert set(by_id) == {"good-1", "long-1", "long-2", "rate8k-1", "stereo-1"}
    assert by_id["long-2"].start == 1.5 and by_id["long-2"].duration == 1.5
    assert by_id["good-1"].supervisions[0].text == "HELLO WORLD SAID THE TEST"
    assert by_id["good-1"].supervisions[0].speaker == "spkg"
    assert load_audio(by_id["rate8k-1"].recording).shape == (16000,)
    assert load_cut_audio(by_id["long-2"]).shape == (24000,)
    assert load_audio(by_id["stereo-1"].recording).ndim == 1


def test_kaldi_import_errors_name_the_file(tmp_path):
    (tmp_path / "wav.scp").write_text("a x.wav\na y.wav\n")
    (tmp_path / "text").write_text("a hi\n")
    with pytest.raises(ValueError, match=r"wav.scp:2: duplicate id 'a'"):
        import_kaldi_dir(tmp_path, tmp_path / "out")
    (tmp_path / "wav.scp").write_text("a x.wav\n")
    (tmp_path / "text").unlink()
    with pytest.raises(FileNotFoundError, match="text is missing"):
        import_kaldi_dir(tmp_path, tmp_path / "out")


def test_lhotse_import_and_lm_text_without_dev_test(kaldi_dir, tmp_path):
    audio = kaldi_dir.parent / "audio"
    recs = RecordingSet.from_recordings([Recording.from_file(audio / f"{r}.wav") for r in ("good", "stereo")])
    sups = SupervisionSet.from_segments(
        [
            SupervisionSegment("u1", "good", 0, 1.0, text="Let there be light."),
            SupervisionSegment("u1", "good", 0, 1.0, text="duplicate id"),
            SupervisionSegment("u2", "stereo", 0, 1.0, text="and there was light"),
            SupervisionSegment("u3", "missing", 0, 1.0, text="no such recording"),
        ]
    )
    recs.to_file(tmp_path / "r.jsonl")
    sups.to_file(tmp_path / "s.jsonl")
    out = tmp_path / "c"
    report = import_lhotse(tmp_path / "r.jsonl", tmp_path / "s.jsonl", out, split="test")
    assert report["kept"] == 2 and report["skipped"] == 2
    assert "duplicate utterance id u1" in report["skipped_utterances"]["u1"]
    assert "recording missing is missing" in report["skipped_utterances"]["u3"]
    assert [c.supervisions[0].text for c in load_split(out, "test")] == ["LET THERE BE LIGHT", "AND THERE WAS LIGHT"]
    lm = tmp_path / "lm.txt"
    lm.write_text("Let there be light.\nThe firmament was made.\n\nAnd there was light\n")
    assert import_lm_text(lm, out) == {"sentences": 1, "dropped_dev_test": 2, "backup": None}
    assert (out / "lm_text.txt").read_text() == "THE FIRMAMENT WAS MADE\n"


def test_audio_checks_directly(tmp_path):
    with pytest.raises(BadAudioError, match="utterance u9: cannot read audio file .*missing.wav"):
        inspect_audio(tmp_path / "missing.wav", "u9")
    x = to_mono_16k(np.stack([_tone(0.5, 48000), _tone(0.5, 48000)], 1), 48000, "u")
    assert x.shape == (8000,) and x.dtype == np.float32
    with pytest.raises(BadAudioError, match="recording r1: audio contains NaN"):
        to_mono_16k(np.array([0.0, np.inf], np.float32), 16000, "recording r1")
