"""Subword units (SentencePiece) and their time spans.

    >>> train_subword_model("lm_text.txt", "units/subword", vocab_size=256)
    >>> sp = load_subword_model("units/subword.model")
    >>> subword_alignment(word_spans, sp)

Time spans of pieces: a word's span is shared among its pieces in proportion
to their number of letters (the ``▁`` word-start marker counts for nothing).
Letters are a fair proxy for phones in English spelling and need no
letter-to-phone alignment, which would be a second model to get wrong.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm
from lhotse.supervision import AlignmentItem

from speechdistill.utils import atomic_write_bytes


def train_subword_model(
    text: str | Path, prefix: str | Path, vocab_size: int = 256, model_type: str = "unigram"
) -> Path:
    """Train a SentencePiece model on a one-sentence-per-line file; writes
    ``{prefix}.model`` and ``{prefix}.vocab`` atomically. Deterministic: the same text
    gives the same bytes wherever it lives (sentences go in through an iterator and the
    model comes out through a writer, so no file path is recorded in the model)."""
    prefix = Path(prefix)
    lines = [line for line in Path(text).read_text().splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=2_000_000,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    atomic_write_bytes(f"{prefix}.model", model.getvalue())
    atomic_write_bytes(f"{prefix}.vocab", vocab.encode())
    return Path(f"{prefix}.model")


def load_subword_model(path: str | Path):
    if not Path(path).exists():
        raise FileNotFoundError(f"subword model {path} is missing: run `speechdistill units build`")
    return spm.SentencePieceProcessor(model_file=str(path))


def split_span(start: float, duration: float, weights: list[int]) -> list[tuple[float, float]]:
    """Cut ``[start, start+duration)`` into consecutive parts proportional to
    ``weights`` (all-zero weights share equally)."""
    if not weights:
        return []
    if sum(weights) == 0:
        weights = [1] * len(weights)
    total, acc, out = sum(weights), 0, []
    for w in weights:
        a = start + duration * acc / total
        acc += w
        b = start + duration * acc / total
        out.append((round(a, 6), round(b - a, 6)))
    return out


def subword_alignment(words: list[AlignmentItem], sp) -> list[AlignmentItem]:
    """Pieces with time spans from word spans (see module docstring)."""
    out = []
    for w in words:
        pieces = sp.encode(w.symbol, out_type=str)
        weights = [len(p.replace("\u2581", "")) for p in pieces]
        for piece, (start, dur) in zip(pieces, split_span(w.start, w.duration, weights), strict=True):
            out.append(AlignmentItem(piece, start, dur))
    return out
