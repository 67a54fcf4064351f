"""The built-in corpus: alignments, splits, LM text, determinism, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf

from conftest import manifest_hash
from speechdistill.data.corpus import PRESETS, build_corpus, load_split, plan_corpus
from speechdistill.data.text import load_sentences
from speechdistill.data.voices import ESPEAK_FEMALE
from speechdistill.units.phones import ARPABET, SIL

SPLITS = ("train", "dev", "test")


def test_alignments_tile_the_audio_within_one_frame(tiny_corpus):
    for split in SPLITS:
        cuts = load_split(tiny_corpus, split)
        assert len(cuts) == getattr(PRESETS["tiny"], f"num_{split}")
        for cut in cuts:
            sup = cut.supervisions[0]
            phones = sup.alignment["phone"]
            audio_dur = sf.info(cut.recording.sources[0].source).duration
            assert abs(phones[0].start) < 1e-6
            assert abs(phones[-1].start + phones[-1].duration - audio_dur) <= 0.01
            for a, b in zip(phones, phones[1:], strict=False):
                assert abs(a.start + a.duration - b.start) < 1e-5, cut.id
                assert a.duration > 0
            assert {a.symbol for a in phones} <= set(ARPABET) | {SIL}
            words = sup.alignment["word"]
            assert [w.symbol for w in words] == sup.text.split()
            assert all(w.start + w.duration <= audio_dur + 1e-6 for w in words)
            assert all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))


def test_splits_disjoint_in_voices_and_sentences_and_lm_text_excludes_them(tiny_corpus):
    voices, texts = {}, {}
    for split in SPLITS:
        sups = [c.supervisions[0] for c in load_split(tiny_corpus, split)]
        voices[split] = {s.speaker for s in sups}
        texts[split] = {s.text for s in sups}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not voices[a] & voices[b]
        assert not texts[a] & texts[b]
    lm = set((tiny_corpus / "lm_text.txt").read_text().splitlines())
    assert not lm & (texts["dev"] | texts["test"] | texts["train"])
    summary = json.loads((tiny_corpus / "summary.json").read_text())
    assert summary["lm_text"]["words"] >= 10 * summary["splits"]["train"]["words"]
    assert summary["skipped"] == {}


def _variant(speaker: str) -> str:
    return speaker.rsplit("-", 1)[1]  # espeak-en-gb-scotland-f2 -> f2, flite-slt -> slt


def test_held_out_variants_never_speak_in_training_and_the_card_lists_them(tiny_corpus):
    card = json.loads((tiny_corpus / "voices.json").read_text())
    variants = {s: set(card[s]["espeak_variants"]) | set(card[s]["flite_voices"]) for s in SPLITS}
    assert not variants["dev"] & variants["test"]
    assert not (variants["dev"] | variants["test"]) & variants["train"]
    heard = {s: {_variant(c.supervisions[0].speaker) for c in load_split(tiny_corpus, s)} for s in SPLITS}
    for split in SPLITS:
        assert heard[split] <= variants[split], split
    assert not heard["train"] & (variants["dev"] | variants["test"])
    sheet = (tiny_corpus / "DATASHEET.md").read_text()
    for split in ("dev", "test"):
        assert f"- {split}: eSpeak variants {', '.join(sorted(variants[split]))}" in sheet


def test_small_preset_plan_has_150_plus_training_voices_each_utterance_its_own_and_10x_text():
    sentences = load_sentences("kjv")
    utts, voices, lm = plan_corpus(PRESETS["small"], sentences, seed=0)
    train = [u for u in utts if u.split == "train"]
    assert len({u.voice.speaker for u in train}) >= 150  # accent+variant speakers heard in training
    assert len({u.voice for u in train}) >= 0.95 * len(train)  # prosody drawn per utterance
    for split in ("dev", "test"):
        assert {u.voice.engine for u in utts if u.split == split} == {"espeak", "flite"}
        assert not set(voices[split].espeak_variants) & set(voices["train"].espeak_variants)
        assert len(voices[split].espeak_variants) == 3
        assert set(voices[split].espeak_variants) & ESPEAK_FEMALE, "a female variant in each held-out split"
    assert plan_corpus(PRESETS["small"], sentences, seed=0)[0] == utts  # seeded
    train_words = sum(u.sentence.num_words for u in utts if u.split == "train")
    assert sum(s.num_words for s in lm) >= 10 * train_words


def test_same_seed_gives_byte_identical_manifests(tiny_corpus, tmp_path):
    build_corpus("tiny", tmp_path / "again", show_progress=False, jobs=1)
    assert manifest_hash(tmp_path / "again") == manifest_hash(tiny_corpus)
    build_corpus("tiny", tmp_path / "seed1", seed=1, show_progress=False)
    assert manifest_hash(tmp_path / "seed1") != manifest_hash(tiny_corpus)


def test_killed_build_resumes_without_resynthesising(tiny_corpus, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "speechdistill.cli",
            "corpus",
            "build",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--jobs",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("align/*/*.json"))) < 20:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the builder and its synthesis workers
    proc.wait()
    done = sorted(out.glob("align/*/*.json"))
    assert 20 <= len(done) < 96, "the kill should land mid-build"
    for path in done:  # every finished file is whole
        json.loads(path.read_text())
        sf.read(out / "audio" / path.parent.name / (path.stem + ".flac"))
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    build_corpus("tiny", out, show_progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "finished work was redone"
    assert manifest_hash(out) == manifest_hash(tiny_corpus)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_user_text_file_and_its_errors(tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("The cat sat on the mat today. A dog ran across the green field quickly.\n" * 3)
    assert [s.text for s in load_sentences(text)] == [
        "THE CAT SAT ON THE MAT TODAY",
        "A DOG RAN ACROSS THE GREEN FIELD QUICKLY",
    ]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\xe9 au lait is nice to drink.".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8.*iconv"):
        load_sentences(bad)
    with pytest.raises(FileNotFoundError, match="cannot read text file"):
        load_sentences(tmp_path / "nope.txt")
    empty = tmp_path / "short.txt"
    empty.write_text("Hi.\n")
    with pytest.raises(ValueError, match="gave no sentence of 4-20 words"):
        load_sentences(empty)


def test_missing_debian_packages_are_named(monkeypatch, tmp_path):
    import shutil

    from speechdistill.synth.flite import MissingPackageError

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name in ("bible", "flite") else real_which(name))
    with pytest.raises(MissingPackageError, match="apt-get install bible-kjv"):
        load_sentences("kjv")
    text = tmp_path / "t.txt"
    names = ["".join(chr(97 + (i // 26**k) % 26) for k in range(3)) for i in range(4000)]
    text.write_text("\n".join(f"Sentence {n} is spoken here by a voice." for n in names))
    with pytest.raises(MissingPackageError, match="apt-get install flite"):
        build_corpus("small", tmp_path / "c", text=text, show_progress=False)


def test_build_from_a_user_text_file(tmp_path):
    names = ["".join(chr(97 + (i // 26**k) % 26) for k in range(3)) for i in range(400)]
    text = tmp_path / "mine.txt"
    text.write_text("\n".join(f"The {n} walked to the market early." for n in names))
    summary = build_corpus("tiny", tmp_path / "c", text=text, show_progress=False)
    assert summary["text_source"] == str(text) and summary["skipped"] == {}
    assert summary["splits"]["train"]["utterances"] == 64
    assert summary["lm_text"]["sentences"] == 400 - 96


@pytest.mark.slow
def test_small_preset_builds_three_hours_with_150_training_voices(tmp_path):
    summary = build_corpus("small", tmp_path / "small", show_progress=False)
    hours = sum(s["hours"] for s in summary["splits"].values())
    assert hours >= 3.0 and summary["splits"]["train"]["voices"] >= 150 and summary["skipped"] == {}
    assert summary["lm_text"]["ratio_to_train_words"] >= 10
