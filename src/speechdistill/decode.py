"""CTC decoding (greedy and prefix beam search) and error rates.

    >>> greedy_decode(log_probs, lens)            # [[ids], ...], blank = 0
    >>> beam_decode(log_probs, lens, beam=8)
    >>> error_rates(refs, hyps)                  # {"wer":..., "cer":...} via jiwer

The prefix beam search is written by hand (Graves 2012; Hannun et al. 2014)
because torchaudio's CTC decoder cannot be installed beside torch 2.13 and
pyctcdecode would add a KenLM dependency we do not use: no LM is applied
(the point of distillation is that the acoustic model needs none).
"""

from __future__ import annotations

import math
from collections import defaultdict

import jiwer
import torch


def greedy_decode(log_probs: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
    """(N, T, V), (N,) -> best path with repeats merged and blanks (0) removed."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for n, T in enumerate(lens.tolist()):
        ids = torch.unique_consecutive(best[n, :T]).tolist()
        out.append([i for i in ids if i != 0])
    return out


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def prefix_beam_search(log_probs: torch.Tensor, beam: int = 8, prune: float = -12.0) -> list[int]:
    """(T, V) log-probs of one utterance -> best label sequence (blank = 0).

    Each prefix keeps two scores: ending in blank and ending in its last label,
    so "a a" (with a blank between) and "a" (repeat) are told apart. Symbols
    whose frame log-prob is below ``prune`` are not expanded.
    """
    lp = log_probs.float().cpu()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for t in range(lp.shape[0]):
        frame = lp[t]
        candidates = [int(i) for i in torch.nonzero(frame >= prune).flatten()] or [int(frame.argmax())]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (p_b, p_nb) in beams.items():
            total = _logsumexp(p_b, p_nb)
            for c in candidates:
                p = float(frame[c])
                if c == 0:
                    entry = nxt[prefix]
                    entry[0] = _logsumexp(entry[0], total + p)
                    continue
                last = prefix[-1] if prefix else None
                extended = prefix + (c,)
                entry = nxt[extended]
                if c == last:
                    entry[1] = _logsumexp(entry[1], p_b + p)  # needs a blank in between
                    same = nxt[prefix]
                    same[1] = _logsumexp(same[1], p_nb + p)  # repeat collapses
                else:
                    entry[1] = _logsumexp(entry[1], total + p)
        ranked = sorted(nxt.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    return list(max(beams.items(), key=lambda kv: _logsumexp(*kv[1]))[0])


def beam_decode(log_probs: torch.Tensor, lens: torch.Tensor, beam: int = 8) -> list[list[int]]:
    return [prefix_beam_search(log_probs[n, :T], beam) for n, T in enumerate(lens.tolist())]


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus-level WER and CER in percent (jiwer). For phones, pass space-separated
    phones: the "wer" is then the PER."""
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"wer": 100.0 * jiwer.wer(r, h), "cer": 100.0 * jiwer.cer(r, h)}
