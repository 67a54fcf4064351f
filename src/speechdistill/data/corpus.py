"""The built-in corpus: real English sentences spoken by many synthetic voices,
with exact phone alignments, in lhotse manifests.

    >>> build_corpus("small", "data/small")        # or: speechdistill corpus build
    >>> cuts = load_split("data/small", "train")    # lhotse CutSet

Layout of a corpus directory::

    audio/{split}/{utt}.flac        16 kHz mono FLAC
    align/{split}/{utt}.json        one per finished utterance: the resume marker
    {split}_recordings.jsonl        lhotse RecordingSet (paths relative to the corpus)
    {split}_supervisions.jsonl      lhotse SupervisionSet with phone and word alignments
    lm_text.txt                     text-only corpus: never a train/dev/test sentence
    voices.json, summary.json, DATASHEET.md

Every file is written to a temporary name and renamed, so an interrupted build
leaves only finished files; rerunning it synthesises only what is missing.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import zlib
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from lhotse import AudioSource, CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.supervision import AlignmentItem
from lhotse.utils import fastcopy

from speechdistill.data.alignment import align_words, phones_from_espeak, phones_from_flite
from speechdistill.data.audio import SAMPLE_RATE
from speechdistill.data.layout import SPLITS, CorpusDir
from speechdistill.data.text import Sentence, load_sentences
from speechdistill.data.voices import ESPEAK_ACCENTS, Voice, draw_voice, plan_voices
from speechdistill.progress import progress
from speechdistill.synth.espeak import Espeak
from speechdistill.synth.flite import MissingPackageError, flite_binary, flite_synthesize
from speechdistill.units.lexicon import Lexicon
from speechdistill.utils import DataError, ManifestError, atomic_write_bytes, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusPreset:
    num_train: int
    num_dev: int
    num_test: int
    num_dev_variants: int  # eSpeak voice variants heard only in dev (in every accent)
    num_test_variants: int  # ... only in test
    flite_share: float  # share of each split's utterances spoken by Flite (0: eSpeak only)
    min_words: int = 4
    max_words: int = 20

    def __post_init__(self):
        if not 0.0 <= self.flite_share < 1.0:
            raise DataError(f"flite_share must be in [0, 1), not {self.flite_share}")


PRESETS = {
    # tiny: for tests, eSpeak only (no Debian package needed), < 1 min on 2 cores.
    "tiny": CorpusPreset(64, 16, 16, 2, 2, 0.0, max_words=12),
    # quick: `make demo QUICK=1`'s first look, the small preset's voices at a fifth of its size
    "quick": CorpusPreset(600, 100, 100, 3, 3, 0.2),
    # 23 training variants x 8 accents = 184 accent+variant speakers, plus 2 Flite voices
    "small": CorpusPreset(2700, 300, 300, 3, 3, 0.2),
    "medium": CorpusPreset(12000, 1000, 1000, 3, 3, 0.2),
}


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    voice: Voice
    sentence: Sentence


def plan_corpus(preset: CorpusPreset, sentences: list[Sentence], seed: int):
    """Assign sentences and voices to splits. Returns (utterances, the speakers each split
    may use, LM sentences). Sentences are disjoint across splits and never in the LM text;
    every utterance has its own voice, drawn from its split's speakers (voices.py)."""
    needed = preset.num_train + preset.num_dev + preset.num_test
    if len(sentences) < needed:
        raise DataError(
            f"the text has {len(sentences)} usable sentences; the preset needs {needed} plus more for the LM text"
        )
    by_split = plan_voices(preset.num_dev_variants, preset.num_test_variants, preset.flite_share > 0, seed)
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    counts = {"test": preset.num_test, "dev": preset.num_dev, "train": preset.num_train}
    utterances, cursor = [], 0
    rng = random.Random(seed + 1)
    for split in ("test", "dev", "train"):
        for idx in order[cursor : cursor + counts[split]]:
            voice = draw_voice(by_split[split], rng, preset.flite_share)
            utterances.append(Utterance(f"{voice.speaker}-{idx:06d}", split, voice, sentences[idx]))
        cursor += counts[split]
    lm_sentences = [sentences[i] for i in sorted(order[cursor:])]
    return sorted(utterances, key=lambda u: u.id), by_split, lm_sentences


# -- synthesis (runs in worker processes) -------------------------------------------------


def _spoken(sentence: Sentence) -> str:
    text = sentence.spoken
    return text if text[-1:] in ".?!" else text + "."


def synthesize_utterance(utt: Utterance, out: Path) -> dict:
    """Speak one utterance, write its FLAC and alignment JSON (in that order, each
    atomically), and return the JSON record. Raises on any fault."""
    v = utt.voice
    if v.engine == "espeak":
        audio, sr, events = Espeak.instance().synthesize(
            _spoken(utt.sentence), v.name, v.rate, v.pitch, v.pitch_range, v.word_gap, seed=zlib.crc32(utt.id.encode())
        )
        phones = phones_from_espeak(events, sr, len(audio))
    else:
        audio, sr, flite_phones = flite_synthesize(_spoken(utt.sentence), v.name, v.rate, v.pitch, v.pitch_range)
        phones = phones_from_flite(flite_phones, sr, len(audio))
    if len(audio) == 0:
        raise RuntimeError(f"{v.engine} produced no audio")
    samples = audio.astype(np.float32) / 32768.0
    if sr != SAMPLE_RATE:
        samples = soxr.resample(samples, sr, SAMPLE_RATE)
    num_samples = len(samples)
    duration = num_samples / SAMPLE_RATE
    # Resampling keeps times in seconds; only the end is re-pinned to the new length.
    phones[-1] = AlignmentItem(phones[-1].symbol, phones[-1].start, round(duration - phones[-1].start, 6))
    words = utt.sentence.text.split()
    lexicon = _lexicon()
    word_spans = align_words(words, [lexicon.pronounce(w) for w in words], phones)

    flac = CorpusDir(out).audio(utt.split, utt.id)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    atomic_write_bytes(flac, _flac_bytes(pcm))
    record = {
        "id": utt.id,
        "split": utt.split,
        "speaker": v.speaker,
        "voice": v.to_dict(),
        "text": utt.sentence.text,
        "spoken": utt.sentence.spoken,
        "num_samples": num_samples,
        "audio": f"audio/{utt.split}/{utt.id}.flac",
        "phones": [list(a) for a in phones],
        "words": [list(a) for a in word_spans],
    }
    atomic_write_text(CorpusDir(out).synth_record(utt.split, utt.id), json.dumps(record))
    return record


def _flac_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


_LEXICON = None


def _lexicon():
    global _LEXICON
    if _LEXICON is None:
        _LEXICON = Lexicon()
    return _LEXICON


def _in_fresh_process(utt: Utterance, out: Path) -> dict:
    """Run ``synthesize_utterance`` in a forked child whose eSpeak NG is fresh.

    eSpeak keeps internal state from one utterance to the next (its output for a
    sentence depends on what it spoke before), so an utterance's audio would
    depend on scheduling. Forking a child per utterance from a worker that never
    touched eSpeak makes every utterance independent and the corpus byte-identical
    for any number of jobs. Costs a few ms per utterance.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        code = 0
        try:
            synthesize_utterance(utt, out)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which skips it
            os.write(write_end, f"{type(e).__name__}: {e}".encode()[:8000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(message or f"synthesis process exited with status {status}")
    return json.loads(CorpusDir(out).synth_record(utt.split, utt.id).read_text())


def _worker_init() -> None:
    _lexicon().pronounce("THE")  # loads CMUdict once per worker; forked children share it


def _worker(args: tuple[Utterance, Path]) -> tuple[str, dict | None, str | None]:
    utt, out = args
    try:
        return utt.id, _in_fresh_process(utt, out), None
    except Exception as e:  # noqa: BLE001 - one bad utterance must not stop the build
        return utt.id, None, str(e)


# -- the build ------------------------------------------------------------------------


def _done_record(out: Path, utt: Utterance) -> dict | None:
    path = CorpusDir(out).synth_record(utt.split, utt.id)
    if not path.exists() or not CorpusDir(out).audio(utt.split, utt.id).exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with atomic writes, but re-synthesising is safe


def build_corpus(
    preset: str | CorpusPreset,
    out: str | Path,
    text: str | Path = "kjv",
    seed: int = 0,
    jobs: int = 2,
    show_progress: bool = True,
) -> dict:
    """Build (or finish building) a corpus in ``out``; returns the summary dict."""
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    sentences = load_sentences(text, cfg.min_words, cfg.max_words)
    utterances, voices, lm_sentences = plan_corpus(cfg, sentences, seed)
    if any(u.voice.engine == "flite" for u in utterances):
        if flite_binary() is None:
            raise MissingPackageError(
                "this preset uses Flite voices: run `apt-get install flite` (or `make demo`, which installs it)"
            )

    for stale in list(out.glob("*/*/.*.tmp")) + list(out.glob(".*.tmp")):
        stale.unlink()  # a temporary file of an interrupted build: never a finished one
    records: dict[str, dict] = {}
    todo = []
    for utt in utterances:
        rec = _done_record(out, utt)
        if rec is None:
            todo.append((utt, out))
        else:
            records[utt.id] = rec
    if records:
        log.info("resuming: %d of %d utterances already synthesised", len(records), len(utterances))
    skipped: dict[str, str] = {}
    # "spawn": workers must not inherit an eSpeak engine the caller may have used.
    with get_context("spawn").Pool(max(1, jobs), initializer=_worker_init) as pool:
        results = pool.imap_unordered(_worker, todo, chunksize=4)
        for utt_id, rec, err in progress(results, total=len(todo), desc="synthesising", enable=show_progress):
            if err is None:
                records[utt_id] = rec
            else:
                skipped[utt_id] = err
                log.warning("skipped utterance %s: %s", utt_id, err)

    corpus = CorpusDir(out)
    atomic_write_text(corpus.lm_text, "".join(s.text + "\n" for s in lm_sentences))
    for split in SPLITS:
        recs = [records[u.id] for u in utterances if u.split == split and u.id in records]
        _write_manifests(out, split, recs)
    atomic_write_text(corpus.voices, json.dumps(voice_card(utterances, voices), indent=1) + "\n")
    summary = summarize(out, records, voices, lm_sentences, skipped, cfg, seed, str(text))
    atomic_write_text(corpus.summary, json.dumps(summary, indent=1) + "\n")
    atomic_write_text(corpus.datasheet, datasheet(summary))
    return summary


def _write_manifests(out: Path, split: str, recs: list[dict]) -> None:
    recordings, supervisions = [], []
    for r in recs:
        duration = round(r["num_samples"] / SAMPLE_RATE, 6)
        recordings.append(
            Recording(
                id=r["id"],
                sources=[AudioSource(type="file", channels=[0], source=r["audio"])],
                sampling_rate=SAMPLE_RATE,
                num_samples=r["num_samples"],
                duration=duration,
            )
        )
        supervisions.append(
            SupervisionSegment(
                id=r["id"],
                recording_id=r["id"],
                start=0.0,
                duration=duration,
                channel=0,
                text=r["text"],
                speaker=r["speaker"],
                language="English",
                alignment={
                    "phone": [AlignmentItem(*a) for a in r["phones"]],
                    "word": [AlignmentItem(*a) for a in r["words"]],
                },
                custom={k: r["voice"][k] for k in ("accent", "engine", "rate", "pitch", "pitch_range", "word_gap")},
            )
        )
    write_manifests(CorpusDir(out), split, recordings, supervisions)


def write_manifests(corpus: CorpusDir, split: str, recordings, supervisions) -> None:
    """A split's recording and supervision manifests, one sorted-key JSON object per line."""
    for path, manifest in (
        (corpus.recordings(split), RecordingSet.from_recordings(recordings)),
        (corpus.supervisions(split), SupervisionSet.from_segments(supervisions)),
    ):
        atomic_write_text(path, "".join(json.dumps(item.to_dict(), sort_keys=True) + "\n" for item in manifest))


def check_count(corpus: CorpusDir, split: str, path: Path, found: int) -> None:
    """A manifest cut at a line boundary parses fine: compare with the count recorded
    when the split was imported (import_{split}.json) or else built (summary.json)."""
    want = None
    if corpus.import_report(split).exists():  # an import replaces what a build made
        want = json.loads(corpus.import_report(split).read_text()).get("kept")
    elif corpus.summary.exists():
        want = json.loads(corpus.summary.read_text())["splits"].get(split, {}).get("utterances")
    if want is not None and found != want:
        raise ManifestError(
            f"{path} holds {found} utterances but the corpus recorded {want}: the manifest "
            "is truncated or was edited; rebuild or re-import the corpus"
        )


def load_split(corpus: str | Path | CorpusDir, split: str) -> CutSet:
    """The CutSet of one split of a corpus directory, with absolute audio paths."""
    corpus = CorpusDir(corpus)
    paths = [corpus.recordings(split), corpus.supervisions(split)]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(
                f"{p} is missing: build the corpus first (`speechdistill corpus build --out {corpus}`)"
            )
    root = corpus.root.resolve()
    recordings = []
    rec_rows, sup_rows = read_jsonl(paths[0]), read_jsonl(paths[1])
    check_count(corpus, split, paths[1], len(sup_rows))
    for rec in RecordingSet.from_dicts(rec_rows):  # built-in corpora store relative paths
        sources = [
            fastcopy(s, source=str(root / s.source)) if s.type == "file" and not Path(s.source).is_absolute() else s
            for s in rec.sources
        ]
        recordings.append(fastcopy(rec, sources=sources))
    recordings = RecordingSet.from_recordings(recordings)
    # One cut per utterance (cut id = utterance id), also for recordings cut by `segments`.
    cuts = CutSet.from_manifests(recordings, SupervisionSet.from_dicts(sup_rows))
    return cuts.trim_to_supervisions(keep_overlapping=False).to_eager()


def voice_card(utterances: list[Utterance], voices) -> dict:
    """Per split: the eSpeak variants and Flite voices it may use, and the speakers
    (accent+variant) and utterances per engine its plan drew."""
    card = {}
    for split in SPLITS:
        utts = [u for u in utterances if u.split == split]
        card[split] = {
            "espeak_variants": list(voices[split].espeak_variants),
            "flite_voices": list(voices[split].flite_voices),
            "speakers": len({u.voice.speaker for u in utts}),
            "utterances_by_engine": {e: sum(u.voice.engine == e for u in utts) for e in ("espeak", "flite")},
        }
    return card


def summarize(out, records, voices, lm_sentences, skipped, cfg, seed, text) -> dict:
    splits = {}
    for split in SPLITS:
        recs = [r for r in records.values() if r["split"] == split]
        splits[split] = {
            "utterances": len(recs),
            "hours": round(sum(r["num_samples"] for r in recs) / SAMPLE_RATE / 3600, 3),
            "voices": len({r["speaker"] for r in recs}),
            "variants": list(voices[split].espeak_variants),
            "flite_voices": list(voices[split].flite_voices),
            "words": sum(len(r["text"].split()) for r in recs),
        }
    lm_words = sum(s.num_words for s in lm_sentences)
    return {
        "preset": asdict(cfg),
        "seed": seed,
        "text_source": text,
        "splits": splits,
        "lm_text": {
            "sentences": len(lm_sentences),
            "words": lm_words,
            "ratio_to_train_words": round(lm_words / max(1, splits["train"]["words"]), 1),
        },
        "skipped": skipped,
    }


def datasheet(summary: dict) -> str:
    rows = "\n".join(
        f"| {s} | {d['utterances']} | {d['hours']:.2f} | {d['voices']} | {d['words']} |"
        for s, d in summary["splits"].items()
    )
    lm = summary["lm_text"]
    held = "\n".join(
        f"- {s}: eSpeak variants {', '.join(d['variants'])}"
        + (f"; Flite {', '.join(d['flite_voices'])}" if d["flite_voices"] else "")
        for s, d in summary["splits"].items()
    )
    return f"""# Datasheet: speechdistill built-in corpus

**What it is.** English sentences from a public-domain text ({summary["text_source"]}),
spoken by synthetic voices (eSpeak NG accents and variants; Flite voices built from
recordings where installed), 16 kHz mono FLAC, with exact phone alignments taken
from the synthesiser's own timing and word spans derived from them.

**Voices.** Every utterance has its own voice: an accent (eSpeak NG's {len(ESPEAK_ACCENTS)}
English accents) and a voice variant, or a Flite voice ({summary["preset"]["flite_share"]:.0%} of
utterances where installed), at a rate, pitch, pitch range and word gap drawn per
utterance (seeded; in `supervision.custom`). The speaker (`supervision.speaker`) is the
accent+variant. Dev and test voices are unseen: the variants below are each used in one
split only, in every accent, so no training utterance has a dev or test variant's timbre.
{held}

**Why.** To run and test speech distillation end to end on a laptop with no download.
It is not a substitute for recorded speech: voices are synthetic, prosody is
rule-based, there is no noise or reverberation.

| split | utterances | hours | speakers | words |
|---|---|---|---|---|
{rows}

Text-only corpus (`lm_text.txt`): {lm["sentences"]} sentences, {lm["words"]} words,
{lm["ratio_to_train_words"]}x the training transcripts' words.

**Splits.** Speakers and variants are disjoint across train/dev/test; sentences are disjoint across
all splits and the text-only corpus (duplicate sentences are removed before splitting).

**Labels.** `text`: upper-case words. `alignment.phone`: ARPAbet-39 phones plus `SIL`,
tiling the audio from 0 to its end; eSpeak's and Flite's phone symbols are mapped
by the tables in `speechdistill/units/phones.py`. `alignment.word`: word spans from
a minimum-edit-distance alignment of the lexicon pronunciation (CMUdict, eSpeak
G2P for unknown words) to the spoken phones.

**Reproducibility.** Preset `{json.dumps(summary["preset"])}`, seed {summary["seed"]}:
the same preset and seed give byte-identical manifests.
Utterances skipped: {len(summary["skipped"])}.
"""
