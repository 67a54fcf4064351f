"""The built-in corpus's voices: eSpeak NG accents x voice variants x speaking
rate x pitch, and Flite's voices built from recordings.

A voice is a speaker in every manifest (``supervision.speaker``), so splits
with disjoint voices test generalisation to unseen speakers.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from speechdistill.utils import DataError

ESPEAK_ACCENTS = tuple("en-us en en-gb-scotland en-gb-x-rp en-gb-x-gbclan en-gb-x-gbcwmd en-029 en-us-nyc".split())
ESPEAK_VARIANTS = tuple(
    """
    m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5 adam benjamin david edward ian john paul robert steph
    linda belinda aunty grandma grandpa quincy shelby zac
""".split()
)
FLITE_F0 = {"slt": 170.0, "rms": 100.0, "awb": 110.0, "kal16": 105.0}


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" or "flite"
    name: str  # eSpeak "accent+variant" or a Flite voice
    rate: float  # eSpeak words per minute; Flite duration stretch
    pitch: float  # eSpeak pitch 0-100; Flite mean F0 in Hz

    @property
    def id(self) -> str:
        name = self.name.replace("+", "-")
        return f"{self.engine}-{name}-r{self.rate:g}-p{self.pitch:g}"

    @property
    def accent(self) -> str:
        accent = self.name.split("+")[0]
        return ("en-gb" if accent == "en" else accent) if self.engine == "espeak" else "en-us (flite)"

    def to_dict(self) -> dict:
        return asdict(self) | {"id": self.id, "accent": self.accent}


def make_voices(num_espeak: int, num_flite: int, seed: int) -> list[Voice]:
    """A deterministic voice inventory: every accent is used before any repeats,
    and no (accent, variant) pair is used twice."""
    if num_flite > len(FLITE_F0):
        raise ValueError(f"flite has only {len(FLITE_F0)} voices ({', '.join(FLITE_F0)})")
    rng = random.Random(seed)
    variants = list(ESPEAK_VARIANTS)
    rng.shuffle(variants)
    voices = []
    for i in range(num_espeak):
        accent = ESPEAK_ACCENTS[i % len(ESPEAK_ACCENTS)]
        variant = variants[i % len(variants)]
        voices.append(
            Voice(
                "espeak",
                f"{accent}+{variant}",
                rate=rng.choice((140, 155, 170, 185)),
                pitch=rng.choice((30, 40, 50, 60, 70)),
            )
        )
    for name in list(FLITE_F0)[:num_flite]:
        stretch = rng.choice((0.9, 1.0, 1.1))
        voices.append(Voice("flite", name, rate=stretch, pitch=FLITE_F0[name]))
    return voices


def split_voices(voices: list[Voice], num_dev: int, num_test: int, seed: int):
    """Disjoint train/dev/test voices. Each engine is represented in each
    held-out split when it has enough voices, so a test speaker can be a
    natural-sounding Flite voice, not only eSpeak."""
    rng = random.Random(seed + 1)
    by_engine: dict[str, list[Voice]] = {}
    for v in voices:
        by_engine.setdefault(v.engine, []).append(v)
    dev, test = [], []
    for pool in by_engine.values():
        rng.shuffle(pool)
    flite = by_engine.get("flite", [])
    if len(flite) >= 3:
        dev.append(flite.pop())
        test.append(flite.pop())
    espeak = by_engine.get("espeak", [])
    while len(dev) < num_dev and espeak:
        dev.append(espeak.pop())
    while len(test) < num_test and espeak:
        test.append(espeak.pop())
    train = sorted(espeak + flite, key=lambda v: v.id)
    if not train or len(dev) < num_dev or len(test) < num_test:
        raise DataError(f"{len(voices)} voices are too few for {num_dev} dev + {num_test} test")
    return train, sorted(dev, key=lambda v: v.id), sorted(test, key=lambda v: v.id)
