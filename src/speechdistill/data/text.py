"""Public-domain English text for the built-in corpus, cleaned and split into
sentences, and the transcript normalisation used everywhere.

    >>> sentences = load_sentences("kjv")          # Debian package bible-kjv
    >>> normalize("And God said, Let there be light: and there was light.")
    'AND GOD SAID LET THERE BE LIGHT AND THERE WAS LIGHT'

Transcripts are upper case words of letters and inner apostrophes, as in
LibriSpeech. The spoken form keeps the punctuation so the synthesiser phrases
the sentence naturally.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from speechdistill.synth.flite import MissingPackageError
from speechdistill.utils import DataError

SOURCES = {
    "kjv": ("bible-kjv", "King James Version (1611/1769), via the `bible` command"),
    "web": ("sword-text-web libsword-utils", "World English Bible, via SWORD's mod2imp"),
}

_WORD = re.compile(r"[A-Z]+(?:'[A-Z]+)*")
_CLAUSE_END = re.compile(r"(?<=[.?!;:])\s+")
_COMMA = re.compile(r"(?<=,)\s+")


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``spoken`` goes to the synthesiser, ``text`` is the transcript."""

    spoken: str
    text: str

    @property
    def num_words(self) -> int:
        return len(self.text.split())


def normalize(text: str) -> str:
    """Upper-case words of letters and inner apostrophes; everything else is a separator."""
    text = unicodedata.normalize("NFKD", text)
    text = text.encode("ascii", "ignore").decode().upper().replace("\u2019", "'")
    return " ".join(_WORD.findall(text))


def _kjv_lines() -> list[str]:
    if shutil.which("bible") is None:
        raise MissingPackageError("the KJV text needs `bible`: run `apt-get install bible-kjv`")
    out = subprocess.run(
        ["bible", "-l", "100000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    # Verse lines look like "  3 And God said, ..."; chapter headings are not indented.
    return [line.strip().split(" ", 1)[1] for line in out.splitlines() if line.startswith("  ")]


def _web_lines() -> list[str]:
    if shutil.which("mod2imp") is None:
        raise MissingPackageError("the WEB text needs SWORD: run `apt-get install sword-text-web libsword-utils`")
    out = subprocess.run(["mod2imp", "engWEB2015eb", "-s"], capture_output=True, text=True, check=True).stdout
    lines, verse = [], []
    for line in out.splitlines():
        if line.startswith("$$$"):
            # "$$$Genesis 1:1": a verse key; keys with chapter 0 or verse 0 are front matter.
            if verse:
                lines.append(" ".join(verse))
            verse = []
            keep = re.search(r" \d+:\d+$", line) and not re.search(r" (0:\d+|\d+:0)$", line)
            verse = [] if keep else None
        elif verse is not None and line.strip():
            verse.append(line.strip())
    if verse:
        lines.append(" ".join(verse))
    return lines


def _file_lines(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read text file {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte {e.start}); convert it with `iconv -t UTF-8`") from None


def _pieces(line: str, max_words: int):
    for clause in _CLAUSE_END.split(line.strip()):
        if len(clause.split()) <= max_words:
            yield clause
            continue
        chunk: list[str] = []
        for phrase in _COMMA.split(clause):
            if chunk and len(" ".join(chunk + [phrase]).split()) > max_words:
                yield " ".join(chunk)
                chunk = []
            chunk.append(phrase)
        yield " ".join(chunk)


def split_sentences(lines: list[str], min_words: int = 4, max_words: int = 20) -> list[Sentence]:
    """Split running text into sentences of ``min_words``..``max_words`` words.

    Lines are split at clause punctuation (``. ? ! ; :``, which end most
    clauses in the Bible); a clause that is still too long is cut at commas
    into the fewest pieces that fit, never inside a phrase. Duplicates (by
    transcript) are dropped, first occurrence kept, so no sentence can be both
    in training and in test.
    """
    seen: set[str] = set()
    out = []
    for line in lines:
        for piece in _pieces(line, max_words):
            spoken = " ".join(piece.split()).strip(" ;:,")
            text = normalize(spoken)
            n = len(text.split())
            if min_words <= n <= max_words and text not in seen:
                seen.add(text)
                out.append(Sentence(spoken=spoken, text=text))
    return out


def load_sentences(source: str | Path, min_words: int = 4, max_words: int = 20) -> list[Sentence]:
    """Sentences from a named Debian source (``kjv``, ``web``) or a UTF-8 text file."""
    if str(source) in SOURCES:
        lines = _kjv_lines() if str(source) == "kjv" else _web_lines()
    else:
        lines = _file_lines(Path(source))
    sentences = split_sentences(lines, min_words, max_words)
    if not sentences:
        raise DataError(
            f"text source {source} gave no sentence of {min_words}-{max_words} words; "
            "give a file with one or more sentences of running English text"
        )
    return sentences
