"""The canonical phone set (ARPAbet-39, as in CMUdict without stress) and the
tables that map each synthesiser's phone notation onto it.

    >>> from speechdistill.units.phones import map_espeak, map_flite
    >>> map_espeak("'eI"), map_flite("ax")
    ('EY', 'AH')

Every synthesiser phone maps to exactly one ARPAbet phone, to ``SIL`` (pauses),
or to ``MERGE`` (a short transition segment that belongs to the phone before
it, such as eSpeak's palatalisation marker ``;``). An unknown symbol is an
error, never a silent guess: a new eSpeak release that adds phonemes must fail
the tests, not corrupt the alignments.
"""

from __future__ import annotations

ARPABET: tuple[str, ...] = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY",
    "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P",
    "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
SIL = "SIL"
MERGE = "MERGE"
VOWELS = frozenset(
    {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
)

# eSpeak NG English mnemonics (all English accents shipped with espeak-ng), stress
# marks stripped. Several eSpeak allophones collapse onto one ARPAbet phone; the
# British centring diphthongs map to their first element because the rhotic
# element is a separate ``r`` event where the accent pronounces it.
ESPEAK_TO_ARPABET: dict[str, str] = {
    # plosives, affricates, fricatives
    "p": "P", "b": "B", "t": "T", "t#": "T", "t[": "T", "t2": "T", "?": "T",
    "d": "D", "d#": "D", "k": "K", "x": "K", "g": "G",
    "tS": "CH", "dZ": "JH",
    "f": "F", "v": "V", "T": "TH", "D": "DH", "s": "S", "z": "Z", "z#": "Z",
    "S": "SH", "Z": "ZH", "h": "HH",
    # nasals, liquids, glides (syllabic forms keep their consonant)
    "m": "M", "m-": "M", "n": "N", "n-": "N", "N": "NG",
    "l": "L", "l-": "L", "l#": "L", "@L": "L", "r": "R", "r-": "R", "w": "W", "w#": "W", "j": "Y",
    # vowels
    "a": "AE", "a#": "AE", "a:": "AE", "a#:": "AE", "aa": "AA", "A:": "AA", "A@": "AA", "A#": "AA", "0": "AA",
    "O:": "AO", "O@": "AO", "O2": "AO", "o@": "AO", "O": "AO", "OI": "OY",
    "oU": "OW", "o": "OW", "@": "AH", "@2": "AH", "@5": "AH", "@-": "AH", "V": "AH",
    "3": "ER", "3:": "ER", "VR": "ER", "IR": "ER", "@r": "ER",
    "E": "EH", "e@": "EH", "e": "EH", "eI": "EY",
    "I": "IH", "I2": "IH", "I#": "IH", "i": "IY", "i:": "IY", "i@": "IY", "i@3": "IY",
    "U": "UH", "U@": "UH", "u:": "UW", "u": "UW",
    "aI": "AY", "aI@": "AY", "aI2": "AY", "aI3": "AY", "aU": "AW", "aU@": "AW",
    # pauses and transitions
    "_": SIL, "_:": SIL, "_|": SIL, "_!": SIL, "_!!": SIL, "_^_": SIL, ";": MERGE,
}  # fmt: skip

# Flite's CMU US phone set is ARPAbet in lower case plus two reduced vowels.
FLITE_TO_ARPABET: dict[str, str] = {p.lower(): p for p in ARPABET} | {
    "ax": "AH",
    "axr": "ER",
    "pau": SIL,
    "h#": SIL,
    "brth": SIL,
}


class UnknownPhoneError(ValueError):
    """A synthesiser produced a phone that no mapping table knows."""


def _lookup(table: dict[str, str], symbol: str, notation: str) -> str:
    try:
        return table[symbol]
    except KeyError:
        raise UnknownPhoneError(
            f"{notation} phone {symbol!r} has no ARPAbet mapping; add it to "
            f"speechdistill/units/phones.py ({notation.upper()}_TO_ARPABET)"
        ) from None


def map_espeak(symbol: str) -> str:
    """Map one eSpeak NG phoneme mnemonic (stress marks allowed) to ARPAbet/SIL/MERGE."""
    return _lookup(ESPEAK_TO_ARPABET, symbol.lstrip("',%="), "espeak")


def map_flite(symbol: str) -> str:
    """Map one Flite phone to ARPAbet/SIL."""
    return _lookup(FLITE_TO_ARPABET, symbol.strip().lower(), "flite")


def strip_stress(phone: str) -> str:
    """``"AH0" -> "AH"``: CMUdict marks stress with a trailing digit."""
    return phone.rstrip("012")
