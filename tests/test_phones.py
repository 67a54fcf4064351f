"""Synthesiser phone notations map onto ARPAbet-39; alignments and word spans."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from lhotse.supervision import AlignmentItem as A

from speechdistill.data.alignment import align_words, phones_from_espeak, phones_from_flite
from speechdistill.data.voices import ESPEAK_ACCENTS
from speechdistill.synth.espeak import Espeak
from speechdistill.units.phones import (
    ARPABET,
    ESPEAK_TO_ARPABET,
    FLITE_TO_ARPABET,
    MERGE,
    SIL,
    UnknownPhoneError,
    map_espeak,
    map_flite,
)

SENTENCES = [
    "In the beginning God created the heaven and the earth.",
    "The quick brown fox jumps over the lazy dog, and the bottle of water is cold!",
    "Would you measure the pleasure of a young beige cow? Yes: hour after hour.",
    "Nebuchadnezzar and Jehoshaphat judged the righteous thoroughly in June.",
]


def test_tables_target_only_arpabet_sil_merge():
    targets = set(ARPABET) | {SIL, MERGE}
    assert set(ESPEAK_TO_ARPABET.values()) <= targets
    assert set(FLITE_TO_ARPABET.values()) <= targets - {MERGE}
    assert len(ARPABET) == 39


def test_known_symbols():
    assert map_espeak("'eI") == "EY" and map_espeak(",aI@") == "AY" and map_espeak("_:") == SIL
    assert map_espeak("tS") == "CH" and map_espeak(";") == MERGE and map_espeak("@L") == "L"
    assert map_flite("ax") == "AH" and map_flite("pau") == SIL and map_flite("zh") == "ZH"
    with pytest.raises(UnknownPhoneError, match=r"espeak phone 'Q!' has no ARPAbet mapping.*ESPEAK_TO_ARPABET"):
        map_espeak("Q!")
    with pytest.raises(UnknownPhoneError, match="flite phone"):
        map_flite("xx")


@pytest.mark.parametrize("accent", ESPEAK_ACCENTS)
def test_every_espeak_phoneme_of_every_accent_maps(accent):
    tts = Espeak.instance()
    for text in SENTENCES:
        audio, sr, events = tts.synthesize(text, accent)
        phones = phones_from_espeak(events, sr, len(audio))  # raises on an unmapped phoneme
        assert len([p for p in phones if p.symbol != SIL]) > 10


def test_a_breathy_voice_speaks_the_same_in_two_processes():
    """eSpeak seeds the noise of its female variants from the clock unless told: two fresh
    processes a second apart gave different audio. With ``seed`` they agree; another seed differs."""
    code = (
        "import hashlib, sys; from speechdistill.synth.espeak import Espeak; "
        "a = Espeak.instance().synthesize('and the lord spake unto moses', 'en-029+f5', seed=int(sys.argv[1]))[0]; "
        "print(hashlib.md5(a.tobytes()).hexdigest())"
    )

    def run(seed):
        return subprocess.run(
            [sys.executable, "-c", code, str(seed)], capture_output=True, text=True, check=True
        ).stdout

    first = run(3)
    time.sleep(1.1)
    assert run(3) == first and run(4) != first


def test_phonemizing_after_synthesis_sets_its_voice_again():
    """G2P skips re-setting its voice between words, not after a synthesis in another."""
    tts = Espeak.instance()
    first = tts.phonemize("water")  # "t#" in en-us, "t" in en-gb-scotland
    assert tts.phonemize("water") == first
    tts.synthesize("hello there", "en-gb-scotland+f2", rate=220, pitch=80)
    assert tts.phonemize("water") == first


def test_espeak_events_become_a_tiling_alignment():
    # A transition marker (";") merges into the phone before it; pauses join.
    events = [("h", 0), ("@", 100), (";", 200), ("'oU", 250), ("_:", 400), ("_", 450)]
    ali = phones_from_espeak(events, sample_rate=1000, num_samples=500)
    assert ali == [A("HH", 0.0, 0.1), A("AH", 0.1, 0.15), A("OW", 0.25, 0.15), A(SIL, 0.4, 0.1)]
    # audio before the first event is silence
    ali = phones_from_espeak([("h", 100)], sample_rate=1000, num_samples=300)
    assert ali == [A(SIL, 0.0, 0.1), A("HH", 0.1, 0.2)]


def test_flite_end_times_become_a_tiling_alignment():
    ali = phones_from_flite([("pau", 0.2), ("hh", 0.3), ("ax", 0.35), ("pau", 0.5)], 16000, 16000 * 0.6)
    assert ali == [A(SIL, 0.0, 0.2), A("HH", 0.2, 0.1), A("AH", 0.3, 0.05), A(SIL, 0.35, 0.25)]


def test_word_spans_from_edit_distance_alignment():
    phones = [
        A(SIL, 0, 0.1),
        A("DH", 0.1, 0.1),
        A("IY", 0.2, 0.1),  # "THE" said as DH IY
        A("K", 0.3, 0.1),
        A("AE", 0.4, 0.1),
        A("T", 0.5, 0.1),
        A("S", 0.6, 0.1),  # extra S
        A(SIL, 0.7, 0.2),
    ]
    words = align_words(["THE", "CAT"], [["DH", "AH"], ["K", "AE", "T"]], phones)
    assert words == [A("THE", 0.1, 0.2), A("CAT", 0.3, 0.4)]  # the inserted S joins CAT
    # a word whose phones were all dropped gets a zero-length span where it would be
    phones[2] = A("AH", 0.2, 0.1)
    words = align_words(["THE", "OH", "CAT"], [["DH", "AH"], ["OW"], ["K", "AE", "T", "S"]], phones)
    assert words == [A("THE", 0.1, 0.2), A("OH", 0.3, 0.0), A("CAT", 0.3, 0.4)]


def test_g2p_of_random_letter_strings_always_maps():
    # Decoded hypotheses can be any string of subword pieces; scoring pronounces them.
    import random

    from speechdistill.units.lexicon import Lexicon

    lex, rng = Lexicon(), random.Random(0)
    for _ in range(3000):
        word = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 9)))
        assert set(lex.pronounce(word)) <= set(ARPABET)
