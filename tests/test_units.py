"""Unit inventories: subword spans, senone states and tying, text conversion."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from lhotse.supervision import AlignmentItem as A

from speechdistill.data.corpus import load_split
from speechdistill.units.inventory import Units
from speechdistill.units.lexicon import Lexicon, UnpronounceableWordError
from speechdistill.units.phones import ARPABET, SIL
from speechdistill.units.senone import ContextStats, SenoneTree, accumulate_stats
from speechdistill.units.subword import split_span, subword_alignment


def test_split_span_in_proportion():
    assert split_span(1.0, 0.6, [1, 2, 3]) == [(1.0, 0.1), (1.1, 0.2), (1.3, 0.3)]
    assert split_span(0.0, 0.2, [0, 0]) == [(0.0, 0.1), (0.1, 0.1)]


class _FakeSP:
    def encode(self, word, out_type=str):
        return {"HEAVEN": ["\u2581HEAV", "EN"], "A": ["\u2581", "A"]}[word]


def test_subword_spans_share_the_word_by_letters():
    spans = subword_alignment([A("HEAVEN", 1.0, 0.6), A("A", 2.0, 0.1)], _FakeSP())
    assert spans == [A("\u2581HEAV", 1.0, 0.4), A("EN", 1.4, 0.2), A("\u2581", 2.0, 0.0), A("A", 2.0, 0.1)]


def test_lexicon_cmudict_then_g2p_then_clear_error():
    lex = Lexicon()
    assert lex.pronounce("HEAVEN") == ["HH", "EH", "V", "AH", "N"]
    assert set(lex.pronounce("ZORBLAXIAN")) <= set(ARPABET) and "ZORBLAXIAN" in lex.oov_words
    with pytest.raises(UnpronounceableWordError, match=r"word \"'''\" is not in CMUdict"):
        lex.pronounce("'''")
    with pytest.raises(UnpronounceableWordError, match="ZORBLAX.*G2P is off"):
        Lexicon(g2p=False).pronounce("ZORBLAX")


def _stats_two_contexts():
    # AH state 0 after a vowel sounds like +5, after a consonant like -5: the tree
    # must split AH/0 on the left context first.
    stats = {}
    rng = np.random.default_rng(0)
    for left, mean in (("IY", 5.0), ("EH", 5.0), ("K", -5.0), ("T", -5.0)):
        x = rng.normal(mean, 1.0, size=(200, 2))
        stats[(left, "AH", SIL, 0)] = ContextStats(200.0, x.sum(0), (x * x).sum(0))
    return stats


def test_tree_splits_on_the_informative_question_and_is_deterministic():
    roots = 3 * (len(ARPABET) + 1)
    tree = SenoneTree.build(_stats_two_contexts(), num_senones=roots + 1, min_count=50)
    assert tree.num_senones == roots + 1
    a, b = tree.senone("AH", 0, left="IY"), tree.senone("AH", 0, left="EH")
    c, d = tree.senone("AH", 0, left="K"), tree.senone("AH", 0, left="T")
    assert a == b and c == d and a != c
    assert tree.senone("AH", 0, left="AO") == a, "an unseen vowel context follows the vowel branch"
    again = SenoneTree.build(_stats_two_contexts(), num_senones=roots + 1, min_count=50)
    assert again.to_json() == tree.to_json()
    assert SenoneTree.from_json(tree.to_json()).rules == tree.rules
    with pytest.raises(ValueError, match="below the 120 untied monophone states"):
        SenoneTree.build(_stats_two_contexts(), num_senones=100)


def test_states_split_each_phone_by_duration():
    tree = SenoneTree.build(_stats_two_contexts(), num_senones=120)  # untied: one id per (phone, state)
    ali = [A(SIL, 0.0, 0.03), A("AH", 0.03, 0.06), A(SIL, 0.09, 0.01)]
    labels = tree.frame_labels(ali, frame_shift=0.01, num_frames=10)
    ah = [tree.senone("AH", s) for s in range(3)]
    assert labels.tolist()[3:9] == [ah[0], ah[0], ah[1], ah[1], ah[2], ah[2]]
    assert len(tree.sequence(["AH", "T"])) == 6
    tied = SenoneTree.build(_stats_two_contexts(), num_senones=121, min_count=50)
    for phones in (["AH", "T"], ["AO", "AH", "AH", "T"], ["AH"], []):  # twice: then from its cache
        for _ in range(2):
            padded = [SIL, *phones, SIL]
            triphones = [padded[i - 1 : i + 2] for i in range(1, len(padded) - 1)]
            want = [tied.senone(c, s, lt, rt) for lt, c, rt in triphones for s in range(3)]
            assert tied.sequence(phones) == want
    # frames past the alignment's end stay in its last phone, in its last state
    sil = [tree.senone(SIL, s) for s in range(3)]
    want = [sil[0], sil[1], sil[2], ah[0], ah[0], ah[1], ah[1], ah[2], ah[2], sil[1], sil[2], sil[2]]
    assert tree.frame_labels(ali, 0.01, 12).tolist() == want
    assert tree.frame_states(ali, 0.01, 12)[8:] == [(1, 2), (2, 1), (2, 2), (2, 2)]
    assert tree.frame_labels(ali, 0.01, 0).tolist() == []


def test_accumulate_stats_counts_frames_per_triphone_state():
    ali = [A(SIL, 0.0, 0.02), A("AH", 0.02, 0.03), A("T", 0.05, 0.03)]
    feats = np.arange(8, dtype=np.float32)[:, None]
    stats = {}
    accumulate_stats(ali, feats, 0.01, 3, stats)
    assert stats[(SIL, "AH", "T", 0)].count == 1 and stats[(SIL, "AH", "T", 0)].sum[0] == 2
    assert sum(s.count for s in stats.values()) == 8


def test_built_inventory_every_phone_has_its_states(tiny_units):
    units = Units(tiny_units)
    info = units.info
    assert info["vocab"]["phone"] == 40 and info["vocab"]["subword"] == 128
    assert info["vocab"]["senone"] <= 160
    tree = units["senone"].tree
    S = tree.states_per_phone
    for phone in (SIL,) + ARPABET:
        ids = {tree.senone(phone, s) for s in range(S)}
        assert len(ids) == S, f"{phone} lacks distinct states"
    # frame-level labels of real utterances use only the states of the aligned phone
    owner = {}
    for (phone, _), leaves in tree.rules.items():
        owner.update({sid: phone for _, sid in leaves})
    for cut in load_split(tiny_units.parent, "train").subset(first=5):
        ali = cut.supervisions[0].alignment["phone"]
        labels = tree.frame_labels(ali, 0.01, cut.num_samples // 160)
        for t, lab in enumerate(labels):
            centre = (t + 0.5) * 0.01
            seg = next(a for a in ali if a.start <= centre < a.start + a.duration + 1e-9)
            assert owner[int(lab)] == seg.symbol


def test_text_converts_to_every_unit(tiny_units):
    units = Units(tiny_units)
    text = "AND GOD SAID LET THERE BE LIGHT"
    phones = units.phones(text)
    assert phones[:3] == ["AH", "N", "D"]
    assert len(units.encode(text, "senone")) == 3 * len(phones)
    expanded = units["senone"].expanded(text, frame_shift=0.01)
    assert len(expanded) > 3 * len(phones)
    assert "".join(units["subword"].tokens(text)).replace("\u2581", " ").strip() == text
    lm_lines = (tiny_units / "lm_text.senone.txt").read_text().splitlines()
    assert len(lm_lines) == len((tiny_units.parent / "lm_text.txt").read_text().splitlines())
    assert max(units.encode(text, "phone")) < units.vocab_size("phone")


def test_subword_model_is_byte_identical_across_trainings(tmp_path):
    from speechdistill.units.subword import train_subword_model

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"AND THE LORD SPAKE UNTO MOSES SAYING {i} TIMES" for i in range(200)) + "\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = train_subword_model(text, tmp_path / "a" / "sp", vocab_size=40)
    b = train_subword_model(text, tmp_path / "b" / "sp", vocab_size=40)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["sp.model", "sp.vocab"]  # no scratch left


def test_units_with_worker_processes_are_the_same(tiny_units, tmp_path):
    from speechdistill.data.units import build_units
    from speechdistill.units.inventory import UnitsConfig

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_units.parent, copy, ignore=shutil.ignore_patterns("units", "feats", "*_cuts.jsonl"))
    cfg = UnitsConfig(vocab_size=128, num_senones=160, min_senone_frames=20)  # the fixture's
    build_units(copy, cfg, show_progress=False, jobs=2)
    for name in ("senones.json", "durations.json", "phones.txt", "lexicon.txt"):
        assert (copy / "units" / name).read_bytes() == (tiny_units / name).read_bytes(), name
