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

from speechdistill.utils import DataError

ARPABET: tuple[str, ...] = tuple(
    """
    AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH
""".split()
)
SIL = "SIL"
SIL_ARPABET = (SIL, *ARPABET)  # what an alignment's phones are, after normalisation
MERGE = "MERGE"
VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())


def _table(text: str) -> dict[str, str]:
    """``"P p, T t t#"`` (a phone, then the symbols that map onto it; groups split by
    commas) -> ``{"p": "P", "t": "T", "t#": "T"}``."""
    return {sym: phone for group in text.split(",") for phone, *syms in [group.split()] for sym in syms}


# eSpeak NG English mnemonics (all English accents shipped with espeak-ng), stress
# marks stripped. Several eSpeak allophones collapse onto one ARPAbet phone; the
# British centring diphthongs map to their first element because the rhotic
# element is a separate ``r`` event where the accent pronounces it. Lines: plosives,
# affricates and fricatives; nasals, liquids and glides (syllabic forms keep their
# consonant); vowels; pauses and transitions.
ESPEAK_TO_ARPABET: dict[str, str] = _table("""
    P p, B b, T t t# t[ t2 ?, D d d#, K k x, G g, CH tS, JH dZ, F f, V v, TH T, DH D, S s, Z z z#, SH S, ZH Z, HH h,
    M m m-, N n n-, NG N, L l l- l# @L, R r r-, W w w#, Y j,
    AE a a# a: a#:, AA aa A: A@ A# 0, AO O: O@ O2 o@ O, OY OI, OW oU o, AH @ @2 @5 @- V, ER 3 3: VR IR @r, EH E e@ e,
    EY eI, IH I I2 I#, IY i i: i@ i@3, UH U U@, UW u: u, AY aI aI@ aI2 aI3, AW aU aU@,
    SIL _ _: _| _! _!! _^_, MERGE ;
""")

# Flite's CMU US phone set is ARPAbet in lower case plus two reduced vowels.
FLITE_TO_ARPABET: dict[str, str] = {p.lower(): p for p in ARPABET} | _table("AH ax, ER axr, SIL pau h# brth")


class UnknownPhoneError(DataError):
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
