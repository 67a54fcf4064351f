"""The downstream tasks that `probe`, `attack` and the SSL comparisons know: names and scoring
(and the attacks' names).

Kept apart from ``probe.py`` (which loads models, audio and lhotse) so that the CLI can offer
the names as choices without importing any of that.
"""

from __future__ import annotations

TASKS = ("pr", "asr", "sid", "accent", "rate")
CLASSIFY = ("sid", "accent")  # pooled over the utterance, scored by accuracy
POOLED = (*CLASSIFY, "rate")  # one answer per utterance (rate: a regression, scored by MAE)
METRICS = {"pr": "per", "asr": "wer", "sid": "accuracy", "accent": "accuracy", "rate": "mae"}
ATTACKABLE = tuple(t for t in TASKS if t != "asr")  # `attack` scores these; the BiLSTM asr probe is left out
ATTACKS = ("fgsm", "pgd", "noise")  # robust.py's waveform attacks, and random noise at the bound (the control)
