"""Forced alignment: the Viterbi graph on hand-made scores, scoring against hand-computed
figures, CTM and TextGrid round trips, and an imported corpus (no timings) aligned by the
project's own aligner and trained on end to end."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
from lhotse.supervision import AlignmentItem as A

from speechdistill.align.formats import normalize_phone, read_ctm, read_textgrid, write_ctm, write_textgrid
from speechdistill.align.score import edit_pairs, score_split
from speechdistill.align.viterbi import AlignmentError, AlignmentGraph, segments, viterbi
from speechdistill.units.phones import SIL

INDEX = {SIL: 0, "AH": 1, "B": 2, "K": 3}

# the own aligner at a size that trains in seconds (tests only); the network's sizes
# matter where a test adds rounds=1
TINY_ALIGNER = [
    "train_hours=0",
    "optim.max_epochs=3",
    "encoder.num_blocks=2",
    "encoder.d_model=48",
    "encoder.ff_dim=96",
    "encoder.num_heads=4",
    "states_per_phone=1",
    "max_duration=30",
]


def _scores(frames: list[str], S: int = 1) -> np.ndarray:
    """Log-likelihoods that favour, frame by frame, the given phone's states."""
    lp = np.full((len(frames), len(INDEX) * S), -10.0)
    for t, p in enumerate(frames):
        lp[t, INDEX[p] * S : (INDEX[p] + 1) * S] = -0.1
    return lp


def test_viterbi_places_phones_and_optional_silences():
    graph = AlignmentGraph.build([["B", "AH"], ["K"]], 1, INDEX)
    # silence, B B, AH, silence silence, K, silence: both optional silences taken
    frames = [SIL, "B", "B", "AH", SIL, SIL, "K", SIL]
    path = viterbi(graph, _scores(frames))
    phones, words = segments(graph, path, 0.01, 0.08, ["BA", "K"])
    assert [(a.symbol, a.start, a.duration) for a in phones] == [
        (SIL, 0.0, 0.01),
        ("B", 0.01, 0.02),
        ("AH", 0.03, 0.01),
        (SIL, 0.04, 0.02),
        ("K", 0.06, 0.01),
        (SIL, 0.07, 0.01),
    ]
    assert words == [A("BA", 0.01, 0.03), A("K", 0.06, 0.01)]
    # no silence where the scores want none: the optional states are skipped
    phones, _ = segments(graph, viterbi(graph, _scores(["B", "AH", "K"])), 0.01, 0.03, ["BA", "K"])
    assert [a.symbol for a in phones] == ["B", "AH", "K"]


def test_viterbi_ties_go_to_the_earlier_candidate():
    """Equal scores everywhere: staying beats moving on, moving on beats skipping a silence,
    and the first end state wins (worked by hand over the graph's states)."""
    graph = AlignmentGraph.build([["AH"]], 1, INDEX)  # SIL(0) AH(1) SIL(2)
    assert viterbi(graph, np.zeros((3, len(INDEX)))).tolist() == [1, 1, 1]
    graph = AlignmentGraph.build([["AH"], ["K"]], 1, INDEX)  # SIL AH SIL K SIL; K skips from AH
    assert graph.skip.tolist() == [-1, -1, -1, 1, -1]
    assert viterbi(graph, np.zeros((2, len(INDEX)))).tolist() == [1, 3]  # through the skip
    assert viterbi(graph, np.zeros((3, len(INDEX)))).tolist() == [1, 3, 3]  # K stays rather than re-enter


def test_three_states_per_phone_and_too_short_audio():
    graph = AlignmentGraph.build([["AH", "K"]], 3, INDEX)
    assert graph.min_frames == 6 and list(graph.word_states()) == [3, 4, 5, 6, 7, 8]
    path = viterbi(graph, _scores(["AH"] * 3 + ["K"] * 4, S=3))
    assert [graph.symbols[graph.phone[s]] for s in path] == ["AH"] * 3 + ["K"] * 4
    with pytest.raises(AlignmentError, match="5 frames are too few for the transcript's 6 states"):
        viterbi(graph, _scores(["AH"] * 5, S=3))
    with pytest.raises(AlignmentError, match="phone 'ZH' is not in the aligner's phone set"):
        AlignmentGraph.build([["ZH"]], 1, INDEX)


def test_gmm_log_likelihoods_by_hand():
    """Two states, 1-D, state 1 a two-component mixture with one component 500 sd away
    (its exp is a float32 denormal, floored): by hand, in float64 and float32, all states or
    some (the rest -inf)."""
    from speechdistill.align.gmm import StateGMMs

    gmm = StateGMMs.from_tensors(
        {
            "means": np.array([[0.0], [1.0], [0.0], [500.0]]),  # copy 0: states 0, 1; copy 1: states 0, 1
            "vars": np.array([[1.0], [4.0], [1.0], [1.0]]),
            "log_w": np.log([0.5, 0.75, 0.5, 0.25]),
            "state": np.array([0, 1, 0, 1]),
        }
    )
    x = np.array([[0.0], [3.0]])

    def normal(v, m, var):
        return -0.5 * (math.log(2 * math.pi * var) + (v - m) ** 2 / var)

    want = np.array(
        [
            [normal(v, 0, 1), np.logaddexp(math.log(0.75) + normal(v, 1, 4), math.log(0.25) + normal(v, 500, 1))]
            for v in (0.0, 3.0)
        ]
    )
    np.testing.assert_allclose(gmm.log_likelihoods(x), want, rtol=1e-12)
    ll32 = gmm.log_likelihoods(x, dtype=np.float32)
    assert ll32.dtype == np.float32
    np.testing.assert_allclose(ll32, want, rtol=1e-6)
    some = gmm.log_likelihoods(x, np.array([1]), np.float32)
    assert np.isneginf(some[:, 0]).all()
    np.testing.assert_allclose(some[:, 1], want[:, 1], rtol=1e-6)


def test_score_by_hand():
    ref = {"u": {"phone": [A(SIL, 0, 0.1), A("B", 0.1, 0.1), A("AH", 0.2, 0.1), A("K", 0.3, 0.1)]}}
    # B 5 ms early, AH (spoken as AH) 30 ms late, K missing, an inserted AH
    hyp = {"u": {"phone": [A("B", 0.095, 0.13), A("AH", 0.23, 0.05), A("AH", 0.28, 0.12)]}}
    assert edit_pairs(["B", "AH", "K"], ["B", "AH", "AH"]) == [(0, 0), (1, 1), (2, 2)]
    s = score_split(ref, hyp, {"v": "utterance v: too short"})
    # pairs: B (5 ms), AH (30 ms), K~AH substitution (20 ms)
    assert s["paired_phones"] == 3 and s["reference_phones"] == 3 and s["failed"] == 1
    assert s["within_10ms"] == pytest.approx(100 / 3, abs=0.01) and s["within_20ms"] == pytest.approx(200 / 3, abs=0.01)
    assert s["within_40ms"] == 100.0 and s["mean_abs_ms"] == pytest.approx(55 / 3, abs=0.01)
    assert s["median_abs_ms"] == pytest.approx(20.0) and s["phone_agreement"] == pytest.approx(200 / 3, abs=0.01)
    with pytest.raises(ValueError, match="cover different utterances .* e.g. w"):
        score_split(ref | {"w": ref["u"]}, hyp)


def test_ctm_and_textgrid_round_trips(tmp_path):
    ali = {
        "u1": {
            "phone": [A(SIL, 0.0, 0.12), A("B", 0.12, 0.08), A("AH", 0.2, 0.1), A(SIL, 0.3, 0.05)],
            "word": [A("BA", 0.12, 0.18)],
        },
        "u2": {"phone": [A("K", 0.0, 0.2), A("AH", 0.2, 0.2)], "word": [A("KA", 0.0, 0.4)]},
    }
    write_ctm(ali, tmp_path / "a.ctm")
    back = read_ctm(tmp_path / "a.ctm")
    assert back["u1"] == [(SIL, 0.0, 0.12), ("B", 0.12, 0.2), ("AH", 0.2, 0.3), (SIL, 0.3, 0.35)]
    write_textgrid(ali["u1"], 0.35, tmp_path / "u1.TextGrid")
    phones, words = read_textgrid(tmp_path / "u1.TextGrid")
    assert [(p, round(a, 3), round(b, 3)) for p, a, b in phones] == [("B", 0.12, 0.2), ("AH", 0.2, 0.3)]
    assert words == [("BA", 0.12, 0.3)]
    assert [normalize_phone(p) for p in ("ah0_B", "sil", "SPN", "", "T_E", "er1")] == ["AH", SIL, SIL, SIL, "T", "ER"]


def _kaldi_dir(src, split, out, n):
    """A plain Kaldi data dir (wav.scp, text, utt2spk; no timings) of the first n utterances."""
    sups = [json.loads(line) for line in (src / f"{split}_supervisions.jsonl").read_text().splitlines()[:n]]
    recs = {
        json.loads(line)["id"]: json.loads(line)
        for line in (src / f"{split}_recordings.jsonl").read_text().splitlines()
    }
    out.mkdir(parents=True)
    (out / "wav.scp").write_text("".join(f"{s['id']} {src / recs[s['id']]['sources'][0]['source']}\n" for s in sups))
    (out / "text").write_text("".join(f"{s['id']} {s['text'].lower()}\n" for s in sups))
    (out / "utt2spk").write_text("".join(f"{s['id']} {s['speaker']}\n" for s in sups))


def test_imported_corpus_is_aligned_and_trained_end_to_end(tiny_units, tmp_path):
    """Kaldi dirs in, own alignment, units with senones, LMs, soft labels, a short hier run, decoding."""
    from speechdistill.align.run import align_corpus, score_alignments
    from speechdistill.config import from_dict
    from speechdistill.data.features import compute_features
    from speechdistill.data.importers import import_kaldi_dir, import_lm_text
    from speechdistill.data.layout import SoftLabelSpec
    from speechdistill.data.units import build_units
    from speechdistill.distill.soft_labels import SoftLabelCache, StaleCacheError, build_cache
    from speechdistill.evaluate import evaluate
    from speechdistill.teachers.lm import LMConfig
    from speechdistill.teachers.lm_train import train_lm
    from speechdistill.train import TrainConfig, train
    from speechdistill.units.inventory import UnitsConfig

    src, corpus = tiny_units.parent, tmp_path / "mine"
    for split, n in (("train", 48), ("dev", 8), ("test", 8)):
        _kaldi_dir(src, split, tmp_path / "kaldi" / split, n)
        import_kaldi_dir(tmp_path / "kaldi" / split, corpus, split)
    import_lm_text(src / "lm_text.txt", corpus)
    compute_features(corpus, show_progress=False)
    units = UnitsConfig(vocab_size=96, num_senones=130, min_senone_frames=10)
    info = build_units(corpus, units, show_progress=False)  # no alignment yet: no senones, and it says why
    assert "senone" not in info["vocab"] and "align run" in info["senone"]
    report = align_corpus(corpus, "own", overrides=TINY_ALIGNER, show_progress=False)
    assert report["train"]["aligned"] + report["train"]["failed"] == 48 and report["train"]["aligned"] >= 40
    scores = score_alignments(tmp_path / "mine", "own", "own")  # an alignment against itself: perfect
    assert scores["dev"]["within_10ms"] == 100.0 and scores["dev"]["mean_abs_ms"] == 0.0
    info = build_units(corpus, units, show_progress=False, alignment="own")
    assert info["vocab"]["senone"] > 100 and info["alignment"] == "own"
    for unit in ("senone", "phone", "subword"):
        train_lm(corpus, unit, LMConfig(d_model=16, num_layers=1), max_sentences=100, show_progress=False)
        build_cache(corpus, SoftLabelSpec(unit, 4, 2.0, alignment="own"), show_progress=False)
    with pytest.raises(FileNotFoundError, match="phone-k4-T2 is missing"):  # a cache of another alignment
        SoftLabelCache.open_for(corpus, SoftLabelSpec("phone", 4, 2.0))
    kd = {"kd": {"top_k": 4, "temperature": 2.0}, "ce_weight": 0.0}
    cfg = from_dict(
        TrainConfig,
        {
            "out_dir": str(tmp_path / "hier"),
            "progress": False,
            "data": {"corpus": str(corpus), "max_duration": 30.0, "alignment": "own"},
            "model": {
                "encoder": {"preset": None, "num_blocks": 3, "d_model": 32, "num_heads": 2, "ff_dim": 64},
                "taps": [
                    {"layer": 1, "unit": "senone"} | kd,
                    {"layer": 2, "unit": "phone"} | kd,
                    {"layer": 3, "unit": "subword"} | kd,
                ],
            },
            "optim": {"max_epochs": 1, "warmup_steps": 2},
        },
    )
    summary = train(cfg)
    assert summary["epochs"] == 1 and math.isfinite(summary["best_dev_error"])
    scores = evaluate(tmp_path / "hier" / "best", corpus, "test")
    assert scores["num_utterances"] == 8 and scores["words"]
    # a stored alignment changed: the caches made from it are stale, never used
    path = corpus / "alignments" / "own" / "train.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(StaleCacheError, match="is stale"):
        SoftLabelCache.open_for(corpus, SoftLabelSpec("phone", 4, 2.0, alignment="own"))


def test_gmm_and_network_aligners_save_load_and_agree_with_training(tiny_units, tmp_path):
    """rounds=0 (the default) keeps the GMMs as the aligner, rounds=1 a network trained on
    their alignment; each reloads to the same alignments, and a second call resumes."""
    from speechdistill.align.own import Aligner, AlignerConfig, train_aligner
    from speechdistill.config import apply_override, from_dict, to_dict
    from speechdistill.data.corpus import load_split

    cuts = load_split(tiny_units.parent, "train")
    dev = sorted(load_split(tiny_units.parent, "dev"), key=lambda c: c.id)[:6]
    for rounds, kind in ((0, "gmm-aligner"), (1, "frame-aligner")):
        data = to_dict(AlignerConfig(out_dir=str(tmp_path / f"r{rounds}"), progress=False))
        for o in [*TINY_ALIGNER, "gmm_iterations=4", f"rounds={rounds}"]:
            apply_override(data, o)
        cfg = from_dict(AlignerConfig, data)
        aligner = train_aligner(cuts, cfg, show_progress=False)
        meta = json.loads((tmp_path / f"r{rounds}" / "aligner.json").read_text())
        assert meta["kind"] == kind and len(meta["history"]) == rounds
        first = aligner.align(dev)
        assert all(isinstance(v, dict) for v in first.values())
        assert Aligner.load(tmp_path / f"r{rounds}" / "aligner").align(dev) == first
        stamp = (tmp_path / f"r{rounds}" / "gmm-aligner.safetensors").stat().st_mtime_ns
        assert train_aligner(cuts, cfg, show_progress=False).align(dev) == first  # resumed, not retrained
        assert (tmp_path / f"r{rounds}" / "gmm-aligner.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="gmm_iterations must be at least 1"):
        AlignerConfig(rounds=0, gmm_iterations=0)


def test_network_and_gmms_together_score_their_weighted_sum(tiny_units, tmp_path):
    """``gmm_weight``: the network's scaled log-likelihoods plus the weight times the GMMs';
    both are in one checkpoint and reload to the same alignments."""
    from speechdistill.align.own import Aligner, AlignerConfig, train_aligner
    from speechdistill.config import apply_override, from_dict, to_dict
    from speechdistill.data.corpus import load_split

    cuts = load_split(tiny_units.parent, "train")
    dev = sorted(load_split(tiny_units.parent, "dev"), key=lambda c: c.id)[:4]
    data = to_dict(AlignerConfig(out_dir=str(tmp_path / "both"), progress=False))
    for o in [*TINY_ALIGNER, "gmm_iterations=3", "rounds=1", "gmm_weight=0.5"]:
        apply_override(data, o)
    aligner = train_aligner(cuts, from_dict(AlignerConfig, data), show_progress=False)
    assert aligner.mode == "both"
    net = Aligner(aligner.model, aligner.cfg, aligner.log_prior)
    gmm = Aligner(aligner.model, aligner.cfg, aligner.log_prior, aligner.gmm)
    for c in dev:
        fbank, mfcc = aligner.features(c)
        assert np.array_equal(fbank, net.features(c))
        # its MFCCs are the torch layer's (fast), the GMM stage's kaldi-native-fbank's: near, not equal
        assert 0 < np.abs(mfcc - gmm.features(c)).max() < 0.01
        (both,), (n,), (g,) = aligner.scores([(fbank, mfcc)]), net.scores([fbank]), gmm.scores([mfcc])
        assert len(both) == min(len(n), len(g)) > 0
        np.testing.assert_allclose(both, n[: len(both)] + 0.5 * g[: len(both)], rtol=1e-5, atol=1e-3)
        used = np.unique(aligner.graph(c.supervisions[0].text).classes)  # what align() computes
        (sub,) = aligner.scores([(fbank, mfcc)], [used])
        np.testing.assert_allclose(sub[:, used], both[:, used], rtol=1e-5)
        assert np.isneginf(np.delete(sub, used, axis=1)).all()
    loaded = Aligner.load(tmp_path / "both" / "aligner")
    assert loaded.mode == "both" and loaded.align(dev) == aligner.align(dev)
    with pytest.raises(ValueError, match="gmm_weight adds the GMMs to a network's scores: it needs rounds >= 1"):
        AlignerConfig(gmm_weight=0.5)


def test_failed_utterances_are_listed_and_training_goes_on(tiny_units, tmp_path):
    """An alignment that lacks utterances: they are listed, their taps learn nothing, the
    main CTC loss still trains on them, and the run finishes."""
    from speechdistill.align.store import load_alignments, save_alignments
    from speechdistill.config import from_dict
    from speechdistill.data.corpus import load_split
    from speechdistill.train import TrainConfig, train

    corpus = tmp_path / "c"
    shutil.copytree(tiny_units.parent, corpus, symlinks=True)
    cuts = sorted(load_split(corpus, "train"), key=lambda c: c.id)
    good = {c.id: c.supervisions[0].alignment for c in cuts[:40]}
    failed = {c.id: f"utterance {c.id}: made up" for c in cuts[40:]}
    save_alignments(corpus, "half", "train", good, failed)
    assert load_alignments(corpus, "half", "train")[1] == failed
    cfg = from_dict(
        TrainConfig,
        {
            "out_dir": str(tmp_path / "run"),
            "progress": False,
            "log_every": 1,
            "data": {"corpus": str(corpus), "max_duration": 30.0, "alignment": "half"},
            "model": {
                "encoder": {"preset": None, "num_blocks": 2, "d_model": 32, "num_heads": 2, "ff_dim": 64},
                "taps": [{"layer": 1, "unit": "phone"}],
            },
            "optim": {"max_epochs": 1, "warmup_steps": 2},
        },
    )
    summary = train(cfg)
    assert summary["epochs"] == 1 and summary["unaligned_utterances"] == len(failed)
    rows = [line.split(",") for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert all(math.isfinite(float(r[2])) for r in rows if r[1] in ("phone@1", "ctc"))


def test_pocketsphinx_aligns_unseen_voices_without_training(tiny_units, tmp_path):
    """The stock CMU model aligns the tiny corpus's dev voices: no failures, the phones tile
    each utterance, and the onsets land near the synthesiser's (whose timings it never sees)."""
    from speechdistill.align.run import align_corpus, score_alignments
    from speechdistill.align.store import load_alignments

    corpus = tmp_path / "c"
    shutil.copytree(tiny_units.parent, corpus, symlinks=True)
    counts = align_corpus(corpus, "pocketsphinx", splits=["dev"], show_progress=False)
    assert counts["dev"]["failed"] == 0
    alignments, _ = load_alignments(corpus, "pocketsphinx", "dev")
    for ali in alignments.values():
        phones = ali["phone"]
        assert phones[0].start == 0 and all(
            math.isclose(a.start + a.duration, b.start, abs_tol=1e-4) for a, b in itertools.pairwise(phones)
        )
    scores = score_alignments(corpus, "synth", "pocketsphinx", ["dev"])["dev"]
    assert scores["phone_agreement"] > 80 and scores["within_40ms"] > 75, scores


def test_bad_alignment_input_is_named_and_nothing_stored_is_overwritten(tiny_units, tmp_path):
    """Utterances a CTM does not know, phones that run past the audio, a second import under a
    taken name, a word with no pronunciation: each is refused or listed, naming the utterance."""
    from lhotse.utils import fastcopy

    from speechdistill.align.own import PHONES, Aligner, AlignerConfig, FrameClassifier
    from speechdistill.align.run import import_ctm
    from speechdistill.align.store import load_alignments
    from speechdistill.data.corpus import load_split
    from speechdistill.utils import DataError

    corpus = tmp_path / "c"
    shutil.copytree(tiny_units.parent, corpus, symlinks=True)
    cuts = sorted(load_split(corpus, "dev"), key=lambda c: c.id)
    good, late = cuts[0], cuts[1]
    lines = [
        f"{good.id} 1 {a.start:.3f} {a.duration:.3f} {a.symbol}\n" for a in good.supervisions[0].alignment["phone"]
    ]
    lines.append(f"{late.id} 1 0.000 {late.duration + 1.0:.3f} AH\n")  # one second past its audio
    (tmp_path / "a.ctm").write_text("".join(lines) + "nobody 1 0.000 0.100 AH\n")
    with pytest.raises(DataError, match=r"1 aligned utterances are not in .* dev \(e.g. nobody\)"):
        import_ctm(corpus, tmp_path / "a.ctm", "kaldi", "dev")
    (tmp_path / "a.ctm").write_text("".join(lines))
    assert import_ctm(corpus, tmp_path / "a.ctm", "kaldi", "dev") == {"aligned": 1, "failed": len(cuts) - 1}
    stored, failed = load_alignments(corpus, "kaldi", "dev")
    assert list(stored) == [good.id] and "past the audio" in failed[late.id] and late.id in failed[late.id]
    before = (corpus / "alignments" / "kaldi" / "dev.jsonl").read_bytes()
    with pytest.raises(DataError, match="exists; import under another --name"):
        import_ctm(corpus, tmp_path / "a.ctm", "kaldi", "dev")
    assert (corpus / "alignments" / "kaldi" / "dev.jsonl").read_bytes() == before

    cfg = AlignerConfig()
    aligner = Aligner(FrameClassifier(cfg.encoder, len(PHONES) * cfg.states_per_phone), cfg, np.zeros(1))
    odd = fastcopy(good, supervisions=[fastcopy(good.supervisions[0], text="IN THE 1234")])
    assert aligner.align([odd]) == {
        good.id: f"utterance {good.id}: word '1234' is not in CMUdict and grapheme-to-phoneme rules give no phones; "
        "add it to a lexicon file or remove it from the transcript"
    }


def _fricative_vowel_stop(vowel_onset: float) -> dict:
    """SIL S AH T SIL, 100 ms each but the vowel's onset; the word AT spans AH T."""
    p = [A(SIL, 0, 0.1), A("S", 0.1, vowel_onset - 0.1), A("AH", vowel_onset, 0.3 - vowel_onset)]
    return {"phone": [*p, A("T", 0.3, 0.1), A(SIL, 0.4, 0.1)], "word": [A("S", 0.1, vowel_onset - 0.1)]}


def test_calibration_by_hand():
    """Median signed onset error per (previous class, class) pair, the class's alone when a
    pair is rare, none when both are; onsets move by minus it, words follow, edges stay."""
    from speechdistill.align.calibrate import Calibration, calibrate, fit_calibration

    ref = {u: {"phone": [A(SIL, 0, 0.1), A("S", 0.1, 0.08), A("AH", 0.18, 0.13), A("T", 0.31, 0.09)]} for u in "uv"}
    # u: AH 20 ms late, T 10 ms early; v: AH 40 ms late, T 10 ms early; S on time
    hyp = {"u": _fricative_vowel_stop(0.2), "v": _fricative_vowel_stop(0.22)}
    hyp["v"]["phone"][3] = A("T", 0.3, 0.1)
    cal = fit_calibration(hyp, ref, min_count=2)
    assert cal.pairs == {"silence>fricative": 0.0, "fricative>vowel": pytest.approx(0.03), "vowel>stop": -0.01}
    assert cal.classes == {"fricative": 0.0, "vowel": pytest.approx(0.03), "stop": -0.01}
    assert cal.counts["fricative>vowel"] == 2 and cal.utterances == ["u", "v"]
    assert cal.offset("N", "AH1") == pytest.approx(0.03)  # unseen pair: the vowel's offset
    assert cal.offset("AH", "N") == 0.0  # unseen class: not moved
    assert fit_calibration(hyp, ref, min_count=3).pairs == {}

    out = calibrate(hyp["u"], cal)
    assert [(a.symbol, a.start, a.duration) for a in out["phone"]] == [
        (SIL, 0.0, 0.1),
        ("S", 0.1, 0.07),
        ("AH", 0.17, 0.14),
        ("T", 0.31, 0.09),
        (SIL, 0.4, 0.1),
    ]
    assert [(w.symbol, w.start, w.duration) for w in out["word"]] == [("S", 0.1, pytest.approx(0.07))]
    # an offset larger than the phone before it: that phone keeps 5 ms, nothing crosses
    far = calibrate(hyp["u"], Calibration(pairs={"fricative>vowel": 0.5}))
    assert [a.start for a in far["phone"]] == [0.0, 0.1, 0.105, 0.3, 0.4]
    with pytest.raises(ValueError, match="share none"):
        fit_calibration(hyp, {"w": ref["u"]})


def test_calibrate_corpus_corrects_a_biased_alignment_and_overwrites_nothing(tiny_corpus, tmp_path):
    """A copy of the synthesiser's timings with every vowel onset 30 ms late: calibrated on
    a few training utterances, every split's vowel onsets come back; the biased alignment
    stays as it was."""
    from speechdistill.align.calibrate import calibrate_corpus
    from speechdistill.align.run import score_alignments
    from speechdistill.align.store import load_alignments, save_alignments
    from speechdistill.data.corpus import load_split
    from speechdistill.units.phones import VOWELS

    corpus = tmp_path / "c"
    shutil.copytree(tiny_corpus, corpus, ignore=shutil.ignore_patterns("features", "units", "lm", "soft_labels"))
    for split in ("train", "dev"):
        late = {}
        for c in load_split(corpus, split):
            p = c.supervisions[0].alignment["phone"]
            starts = [
                a.start + (0.03 if a.symbol in VOWELS and i and p[i - 1].duration > 0.04 else 0)
                for i, a in enumerate(p)
            ]
            ends = [*starts[1:], p[-1].start + p[-1].duration]
            late[c.id] = {"phone": [A(a.symbol, s, e - s) for a, s, e in zip(p, starts, ends, strict=True)]}
        save_alignments(corpus, "late", split, late, {})
    before = score_alignments(corpus, "synth", "late", ["dev"])["dev"]
    assert calibrate_corpus(corpus, "late", "synth", utterances=5) == {
        s: {"aligned": len(load_split(corpus, s)), "failed": 0} for s in ("train", "dev")
    }
    after = score_alignments(corpus, "synth", "late+cal", ["dev"])["dev"]
    assert before["within_20ms"] < 90 and after["within_20ms"] > before["within_20ms"] + 5
    meta = json.loads((corpus / "alignments" / "late+cal" / "calibration.json").read_text())
    assert meta["hyp"] == "late" and len(meta["utterances"]) == 5 and meta["classes"]["vowel"] == pytest.approx(0.03)
    stored = (corpus / "alignments" / "late" / "dev.jsonl").read_text()
    with pytest.raises(ValueError, match="late\\+cal/train.jsonl exists"):
        calibrate_corpus(corpus, "late", "synth", utterances=5)
    with pytest.raises(ValueError, match="would overwrite"):
        calibrate_corpus(corpus, "late", "synth", name="late")
    with pytest.raises(ValueError, match="--utterances 100000: only"):
        calibrate_corpus(corpus, "late", "synth", utterances=100000, name="x")
    assert (corpus / "alignments" / "late" / "dev.jsonl").read_text() == stored
    assert len(load_alignments(corpus, "late+cal", "dev")[0]) == len(load_split(corpus, "dev"))


def test_aligner_started_from_given_timings(tiny_units, tmp_path):
    """``init_from``: each given phone's frames split into equal state parts (by hand), the
    GMMs estimated on them with no flat start; they align the dev voices closer to the
    synthesiser than a flat start does at the same size; no given timings is an error."""
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    from speechdistill.align.own import PHONES, Aligner, AlignerConfig, FrameClassifier, train_aligner
    from speechdistill.align.score import score_split
    from speechdistill.config import apply_override, from_dict, to_dict
    from speechdistill.data.corpus import load_split

    cuts = load_split(tiny_units.parent, "train")
    one = next(iter(cuts))
    one = fastcopy(
        one,
        supervisions=[
            fastcopy(
                one.supervisions[0], alignment={"phone": [A(SIL, 0, 0.03), A("AH1", 0.03, 0.06), A("B", 0.09, 0.01)]}
            )
        ],
    )
    index = {p: i for i, p in enumerate(PHONES)}
    cfg = AlignerConfig()
    labels = Aligner(FrameClassifier(cfg.encoder, 3 * len(PHONES)), cfg, None).given_labels(
        one, 12
    )  # frames past the last phone: silence
    s, ah, b = 3 * index[SIL], 3 * index["AH"], 3 * index["B"]
    assert labels.tolist() == [s, s + 1, s + 2, ah, ah, ah + 1, ah + 1, ah + 2, ah + 2, b, s, s]

    dev = sorted(load_split(tiny_units.parent, "dev"), key=lambda c: c.id)[:10]
    within = {}
    for start in ("", "synth"):
        data = to_dict(AlignerConfig(out_dir=str(tmp_path / (start or "flat")), progress=False))
        for o in [*TINY_ALIGNER, "gmm_iterations=6"] + ([f"init_from={start}"] if start else []):
            apply_override(data, o)
        aligner = train_aligner(cuts, from_dict(AlignerConfig, data), show_progress=False)
        ref = {c.id: c.supervisions[0].alignment for c in dev}
        within[start] = score_split(ref, aligner.align(dev))["within_20ms"]
    assert within["synth"] > within[""] + 5, within
    bare = CutSet.from_cuts(fastcopy(c, supervisions=[fastcopy(c.supervisions[0], alignment=None)]) for c in cuts)
    cfg = from_dict(AlignerConfig, data | {"out_dir": str(tmp_path / "bare")})
    with pytest.raises(ValueError, match="init_from='synth': no training utterance has that alignment"):
        train_aligner(bare, cfg, show_progress=False)


def test_gmm_frames_at_5_ms(tiny_units, tmp_path):
    """frame_shift_ms=5: MFCCs at twice the rate (deltas over the same +-20 ms), the GMM
    aligner trains and places boundaries on a 5 ms grid; a network round refuses it."""
    from speechdistill.align.own import AlignerConfig, train_aligner
    from speechdistill.config import apply_override, from_dict, to_dict
    from speechdistill.data.audio import load_cut_audio
    from speechdistill.data.corpus import load_split
    from speechdistill.data.features import mfcc_with_deltas

    cuts = load_split(tiny_units.parent, "train")
    audio = load_cut_audio(next(iter(cuts)))
    n10, n5 = len(mfcc_with_deltas(audio)), len(mfcc_with_deltas(audio, 5.0))
    assert n10 == (len(audio) + 80) // 160 and n5 == (len(audio) + 40) // 80
    data = to_dict(AlignerConfig(out_dir=str(tmp_path / "a5"), progress=False))
    for o in [*TINY_ALIGNER, "gmm_iterations=3", "frame_shift_ms=5"]:
        apply_override(data, o)
    aligner = train_aligner(cuts, from_dict(AlignerConfig, data), show_progress=False)
    dev = sorted(load_split(tiny_units.parent, "dev"), key=lambda c: c.id)[:3]
    starts = [a.start for ali in aligner.align(dev).values() for a in ali["phone"]]
    assert all(abs(s * 200 - round(s * 200)) < 1e-6 for s in starts)  # on the 5 ms grid
    assert any(abs(s * 100 - round(s * 100)) > 1e-6 for s in starts)  # and not all on 10 ms
    with pytest.raises(ValueError, match="frame_shift_ms applies to the GMMs alone"):
        AlignerConfig(rounds=1, frame_shift_ms=5)
