"""The built-in corpus's voices: every utterance has its own, drawn per utterance.

A voice is an engine's speaker (eSpeak NG: an accent + a voice variant; Flite: a voice
built from recordings) spoken at a rate, pitch, pitch range and word gap drawn for the
utterance. The speaker in every manifest (``supervision.speaker``) is the engine's
speaker, e.g. ``espeak-en-gb-scotland-f2``; the prosody is in ``supervision.custom``.

Dev and test are unseen at the variant level: the variants of each held-out split are
never used in training in any accent, nor in the other held-out split (likewise Flite
voices), so test voices differ from every training voice in timbre, not only in accent
or prosody.

    >>> plan = plan_voices(3, 3, use_flite=True, seed=0)  # which variants each split may use
    >>> voice = draw_voice(plan["train"], random.Random(0), flite_share=0.2)
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
# Variants with a female voice; each held-out split gets at least one.
ESPEAK_FEMALE = frozenset("f1 f2 f3 f4 f5 steph linda belinda aunty grandma shelby".split())
FLITE_F0 = {"slt": 170.0, "rms": 100.0, "awb": 110.0, "kal16": 105.0}

# Per-utterance prosody ranges (uniform draws). eSpeak: words per minute, pitch and pitch
# range on its 0-100 scales, extra pause between words in units of 10 ms. Flite: duration
# stretch, and mean F0 and its standard deviation as factors of the voice's own mean.
ESPEAK_RATE = (130, 200)
ESPEAK_PITCH = (25, 75)
ESPEAK_RANGE = (20, 80)
ESPEAK_WORD_GAP = (0, 2)
FLITE_STRETCH = (0.85, 1.15)
FLITE_F0_FACTOR = (0.85, 1.15)
FLITE_F0_STD_FACTOR = (0.08, 0.2)


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" or "flite"
    name: str  # eSpeak "accent+variant" or a Flite voice
    rate: float  # eSpeak words per minute; Flite duration stretch
    pitch: float  # eSpeak pitch 0-100; Flite mean F0 in Hz
    pitch_range: float = 50.0  # eSpeak pitch range 0-100; Flite F0 standard deviation in Hz
    word_gap: int = 0  # eSpeak extra pause between words, units of 10 ms (Flite: unused)

    @property
    def speaker(self) -> str:
        """The engine's speaker (accent + variant), without the utterance's prosody."""
        return f"{self.engine}-{self.name.replace('+', '-')}"

    @property
    def variant(self) -> str:
        return self.name.split("+")[1] if self.engine == "espeak" else self.name

    @property
    def accent(self) -> str:
        accent = self.name.split("+")[0]
        return ("en-gb" if accent == "en" else accent) if self.engine == "espeak" else "en-us (flite)"

    def to_dict(self) -> dict:
        return asdict(self) | {"speaker": self.speaker, "accent": self.accent}


@dataclass(frozen=True)
class SplitVoices:
    """The speakers one split may use."""

    espeak_variants: tuple[str, ...]
    flite_voices: tuple[str, ...]


def plan_voices(num_dev_variants: int, num_test_variants: int, use_flite: bool, seed: int) -> dict[str, SplitVoices]:
    """Hold out eSpeak variants (each held-out split gets at least one female variant) and,
    with Flite, one Flite voice each for dev and test; training gets the rest."""
    held = num_dev_variants + num_test_variants
    if num_dev_variants < 1 or num_test_variants < 1 or held > len(ESPEAK_VARIANTS) - 8:
        raise DataError(
            f"hold out 1 to {len(ESPEAK_VARIANTS) - 8} eSpeak variants in all for dev and test, "
            f"not {num_dev_variants} + {num_test_variants}"
        )
    rng = random.Random(seed)
    female = sorted(v for v in ESPEAK_VARIANTS if v in ESPEAK_FEMALE)
    others = sorted(v for v in ESPEAK_VARIANTS if v not in ESPEAK_FEMALE)
    rng.shuffle(female)
    rng.shuffle(others)
    dev = [female.pop()]
    test = [female.pop()]
    rest = female + others
    rng.shuffle(rest)
    while len(dev) < num_dev_variants:
        dev.append(rest.pop())
    while len(test) < num_test_variants:
        test.append(rest.pop())
    flite = sorted(FLITE_F0) if use_flite else []
    rng.shuffle(flite)
    flite_dev, flite_test = (flite[:1], flite[1:2]) if flite else ([], [])
    return {
        "train": SplitVoices(tuple(sorted(rest)), tuple(sorted(flite[2:]))),
        "dev": SplitVoices(tuple(sorted(dev)), tuple(flite_dev)),
        "test": SplitVoices(tuple(sorted(test)), tuple(flite_test)),
    }


def draw_voice(split: SplitVoices, rng: random.Random, flite_share: float) -> Voice:
    """One utterance's voice: Flite with probability ``flite_share`` (when the split has
    Flite voices), else eSpeak with a uniform accent and variant; prosody drawn uniformly."""
    if split.flite_voices and rng.random() < flite_share:
        name = rng.choice(split.flite_voices)
        f0 = round(FLITE_F0[name] * rng.uniform(*FLITE_F0_FACTOR))
        return Voice(
            "flite",
            name,
            rate=round(rng.uniform(*FLITE_STRETCH), 2),
            pitch=f0,
            pitch_range=round(f0 * rng.uniform(*FLITE_F0_STD_FACTOR), 1),
        )
    accent = rng.choice(ESPEAK_ACCENTS)
    variant = rng.choice(split.espeak_variants)
    return Voice(
        "espeak",
        f"{accent}+{variant}",
        rate=rng.randint(*ESPEAK_RATE),
        pitch=rng.randint(*ESPEAK_PITCH),
        pitch_range=rng.randint(*ESPEAK_RANGE),
        word_gap=rng.randint(*ESPEAK_WORD_GAP),
    )
