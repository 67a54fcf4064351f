"""A thin ctypes binding to libespeak-ng (shipped by the ``espeakng-loader``
wheel) that returns audio together with exact phoneme start times.

    >>> tts = Espeak.instance()
    >>> audio, sr, events = tts.synthesize("In the beginning.", "en-us+m3", rate=160, pitch=45)
    >>> events[0]                      # (eSpeak mnemonic, start sample)
    ("I", 0)

Written by hand because no maintained Python package exposes eSpeak's
phoneme events (the timing we need for exact alignments); ``phonemizer`` and
``espeakng-loader`` only give phoneme strings. The library is not re-entrant:
there is one ``Espeak`` per process, ``Espeak.instance()``.
"""

from __future__ import annotations

import ctypes
from functools import cache

import espeakng_loader
import numpy as np

from speechdistill.utils import DataError

_AUDIO_OUTPUT_RETRIEVAL = 1
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@cache
def _library() -> tuple[ctypes.CDLL, int]:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_RETRIEVAL, 0, espeakng_loader.get_data_path().encode(), _INITIALIZE_PHONEME_EVENTS
    )
    if rate <= 0:
        raise RuntimeError("libespeak-ng failed to initialise; reinstall espeakng-loader")
    return lib, rate


class Espeak:
    """The process-wide eSpeak NG engine. Not thread-safe (neither is eSpeak)."""

    @classmethod
    @cache
    def instance(cls) -> Espeak:
        return cls()

    def __init__(self) -> None:
        self._lib, self.sample_rate = _library()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _Callback(self._on_audio)  # keep a reference: ctypes does not
        self._voice: tuple | None = None  # the voice and parameters last set
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].id.string.decode(), events[i].sample))
            i += 1
        return 0

    def _set_voice(
        self, name: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50, word_gap: int = 0, again: bool = True
    ) -> None:
        """``again=False``: skip it when these are already set (setting a voice costs 0.7 ms,
        as much as phonemizing a word; synthesis always sets it, as it always has)."""
        if not again and self._voice == (name, rate, pitch, pitch_range, word_gap):
            return
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise DataError(f"eSpeak NG has no voice {name!r}")
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        self._lib.espeak_SetParameter(_PARAM_WORDGAP, int(word_gap), 0)
        self._voice = (name, rate, pitch, pitch_range, word_gap)

    def synthesize(
        self,
        text: str,
        voice: str,
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        word_gap: int = 0,
        seed: int = 0,
    ) -> tuple[np.ndarray, int, list[tuple[str, int]]]:
        """Speak ``text`` with ``voice`` (a language plus optional variant, e.g.
        ``en-gb-scotland+f2``) at ``rate`` words per minute, ``pitch`` and ``pitch_range``
        (0-100) and ``word_gap`` x 10 ms of extra pause between words. Returns (int16
        samples, sample rate, [(phoneme mnemonic, start sample), ...]). ``seed``: eSpeak's
        noise generator (the breath of the female variants), which it otherwise seeds from
        the clock: the same call in two fresh processes gave different audio."""
        self._set_voice(voice, rate, pitch, pitch_range, word_gap)
        self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        self._chunks.clear()
        self._events.clear()
        data = text.encode()
        self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        self._lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, self.sample_rate, list(self._events)

    def phonemize(self, word: str) -> list[str]:
        """eSpeak's (American English) letter-to-sound rules: mnemonics for one
        word, stress marks kept."""
        self._set_voice("en-us", again=False)
        buf = ctypes.c_char_p(word.encode())
        ptr = ctypes.cast(ctypes.pointer(buf), ctypes.POINTER(ctypes.c_void_p))
        out = self._lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, ord(" ") << 8)
        return (out or b"").decode().split()
