"""How close one alignment is to another: phone onsets and phone sequences.

    speechdistill align score data/small --ref synth --hyp own
    >>> score_split(ref, hyp)       # {utt: {"phone": [...]}} each -> the figures below

The phones of each utterance (silences left out) are paired by minimum edit distance,
since an aligner's phones (the lexicon's) and the spoken ones can differ; a pair is a
match or a substitution. Reported: the fraction of paired phones whose onsets are within
10, 20 and 40 ms, the mean and median absolute onset error, and the phone-sequence
agreement (identical pairs / reference phones). Utterances the hypothesis failed on are
counted and listed; utterances that only one side knows are an error.
"""

from __future__ import annotations

import numpy as np

from speechdistill.units.phones import SIL
from speechdistill.utils import DataError

TOLERANCES_MS = (10, 20, 40)


def edit_pairs(ref: list[str], hyp: list[str]) -> list[tuple[int, int]]:
    """Index pairs (i, j) of the matches and substitutions on a minimum-edit-distance path."""
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0], cost[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def score_split(ref: dict[str, dict], hyp: dict[str, dict], failed: dict[str, str] | None = None) -> dict:
    """Figures of ``hyp`` against ``ref`` (utterance -> {"phone": AlignmentItems}) over one split."""
    failed = failed or {}
    only_ref = sorted(set(ref) - set(hyp) - set(failed))
    only_hyp = sorted(set(hyp) - set(ref))
    if only_ref or only_hyp:
        example = (only_ref or only_hyp)[0]
        raise DataError(
            f"the alignments cover different utterances ({len(only_ref)} only in the reference, "
            f"{len(only_hyp)} only in the hypothesis, e.g. {example}): score alignments of one corpus"
        )
    errors, ref_phones, identical = [], 0, 0
    for utt in sorted(set(ref) & set(hyp)):
        r = [a for a in ref[utt]["phone"] if a.symbol != SIL]
        h = [a for a in hyp[utt]["phone"] if a.symbol != SIL]
        pairs = edit_pairs([a.symbol for a in r], [a.symbol for a in h])
        ref_phones += len(r)
        identical += sum(r[i].symbol == h[j].symbol for i, j in pairs)
        errors += [abs(r[i].start - h[j].start) * 1000 for i, j in pairs]
    e = np.array(errors)
    out = {
        "utterances": len(set(ref) & set(hyp)),
        "failed": len(failed),
        "failed_utterances": sorted(failed),
        "paired_phones": len(e),
        "reference_phones": ref_phones,
        "phone_agreement": round(100 * identical / max(1, ref_phones), 2),
    }
    for tol in TOLERANCES_MS:
        out[f"within_{tol}ms"] = round(100 * float((e <= tol).mean()), 2) if len(e) else float("nan")
    out["mean_abs_ms"] = round(float(e.mean()), 2) if len(e) else float("nan")
    out["median_abs_ms"] = round(float(np.median(e)), 2) if len(e) else float("nan")
    return out


def markdown(scores: dict[str, dict], ref: str, hyp: str) -> str:
    """One row per split."""
    head = (
        f"Alignment `{hyp}` against `{ref}`\n\n| split | utterances | failed | paired phones | within 10 ms "
        "| within 20 ms | within 40 ms | mean abs (ms) | median abs (ms) | phone agreement |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {s} | {r['utterances']} | {r['failed']} | {r['paired_phones']} | {r['within_10ms']:.2f}% "
        f"| {r['within_20ms']:.2f}% | {r['within_40ms']:.2f}% | {r['mean_abs_ms']:.1f} | {r['median_abs_ms']:.1f} "
        f"| {r['phone_agreement']:.2f}% |\n"
        for s, r in scores.items()
    )
