"""Bring other corpora into speechdistill's layout: Kaldi data directories,
lhotse manifests (so every lhotse recipe, LibriSpeech included, plugs in).

    >>> import_kaldi_dir("data/kaldi/train_clean_100", "data/libri", split="train")
    >>> import_lhotse("recordings.jsonl.gz", "supervisions.jsonl.gz", "data/libri", split="dev")
    >>> import_librispeech("/corpora/LibriSpeech", "data/libri")   # lhotse's recipe, local files

Every utterance is checked on the way in: audio that cannot be read, is empty
or holds NaN, an empty transcript and a duplicate id are skipped with a
message naming the utterance; stereo and non-16 kHz audio are kept and noted
(loading averages channels and resamples). The counts are returned and saved
in ``import_{split}.json``. The manifests keep the original audio paths
(absolute), so nothing is copied.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from pathlib import Path

from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.recipes import prepare_librispeech
from lhotse.utils import fastcopy

from speechdistill.data.audio import SAMPLE_RATE, BadAudioError, inspect_audio
from speechdistill.data.text import normalize
from speechdistill.utils import DataError, atomic_write_text

log = logging.getLogger(__name__)


class ImportReport:
    """Counts of what an import kept, converted and skipped, with one message per skip."""

    def __init__(self) -> None:
        self.kept = 0
        self.notes: Counter[str] = Counter()
        self.skipped: dict[str, str] = {}

    def skip(self, utt: str, why: str) -> None:
        self.skipped[utt] = why
        log.warning("skipped %s: %s", utt, why)

    def to_dict(self) -> dict:
        return {
            "kept": self.kept,
            "converted": dict(self.notes),
            "skipped": len(self.skipped),
            "skipped_utterances": self.skipped,
        }


def _read_table(path: Path, required: bool = True) -> dict[str, str]:
    """Kaldi ``key value...`` lines -> dict. Duplicate keys are an error naming the line."""
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path} is missing: a Kaldi data dir needs wav.scp and text")
        return {}
    table: dict[str, str] = {}
    try:
        content = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        n = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{n}: not UTF-8 (byte 0x{e.object[e.start]:02x}); convert the file, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name}`"
        ) from None
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if key in table:
            raise DataError(f"{path}:{n}: duplicate id {key!r}; ids must be unique")
        table[key] = value.strip()
    return table


def _write(out: Path, split: str, recordings, supervisions, report: ImportReport) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (
        ("recordings", RecordingSet.from_recordings(recordings)),
        ("supervisions", SupervisionSet.from_segments(supervisions)),
    ):
        atomic_write_text(
            out / f"{split}_{name}.jsonl", "".join(json.dumps(i.to_dict(), sort_keys=True) + "\n" for i in items)
        )
    summary = report.to_dict()
    atomic_write_text(out / f"import_{split}.json", json.dumps(summary, indent=1) + "\n")
    return summary


MAX_WORDS_PER_SECOND = 8.0  # fast read speech is ~4; more means transcript and audio do not match


def _transcript_fault(utt: str, transcript: str, seconds: float) -> str | None:
    """Why a normalised transcript cannot go with ``seconds`` of audio, or None."""
    if not transcript:
        return f"utterance {utt} has an empty transcript (nothing left after normalisation)"
    words = len(transcript.split())
    if words / seconds > MAX_WORDS_PER_SECOND:
        return (
            f"utterance {utt}: {words} words for {seconds:.2f} s of audio (more than "
            f"{MAX_WORDS_PER_SECOND:g} words/s); the transcript does not match the audio"
        )
    return None


def _recording(rec_id: str, path: str, report: ImportReport, check_samples: bool) -> Recording | None:
    try:
        info = inspect_audio(path, rec_id, check_samples)
    except BadAudioError as e:
        report.skip(rec_id, str(e))
        return None
    if info.num_channels > 1:
        report.notes["multi-channel, averaged to mono"] += 1
    if info.sampling_rate != SAMPLE_RATE:
        report.notes[f"{info.sampling_rate} Hz, resampled to {SAMPLE_RATE} Hz"] += 1
    for note in info.notes:
        log.warning("recording %s: %s", rec_id, note)
        if note.startswith("clipped"):
            report.notes["clipped (kept)"] += 1
    return Recording(
        id=rec_id,
        sampling_rate=info.sampling_rate,
        num_samples=info.num_samples,
        duration=info.num_samples / info.sampling_rate,
        sources=[AudioSource(type="file", channels=list(range(info.num_channels)), source=str(Path(path).resolve()))],
    )


def import_kaldi_dir(data_dir: str | Path, out: str | Path, split: str = "train", check_samples: bool = True) -> dict:
    """Import ``wav.scp``, ``text`` and optional ``utt2spk`` and ``segments``."""
    data_dir, out = Path(data_dir), Path(out)
    wav = _read_table(data_dir / "wav.scp")
    text = _read_table(data_dir / "text")
    utt2spk = _read_table(data_dir / "utt2spk", required=False)
    segments = _read_table(data_dir / "segments", required=False)
    report = ImportReport()
    recordings: dict[str, Recording] = {}
    for rec_id, path in sorted(wav.items()):
        if path.endswith("|"):
            report.skip(
                rec_id,
                f"wav.scp entry is a pipe command ({path!r}); write the audio "
                "to files first (e.g. `wav-copy scp:wav.scp ark,scp:...`)",
            )
            continue
        rec = _recording(rec_id, path, report, check_samples)
        if rec is not None:
            recordings[rec_id] = rec
    supervisions = []
    for utt, words in sorted(text.items()):
        if segments:
            if utt not in segments:
                report.skip(utt, f"utterance {utt} is in text but not in segments")
                continue
            rec_id, start, end = segments[utt].split()
            start, end = float(start), float(end)
        else:
            rec_id, start, end = utt, 0.0, None
        rec = recordings.get(rec_id)
        if rec is None:
            if rec_id not in report.skipped:
                report.skip(utt, f"utterance {utt}: recording {rec_id} is not in wav.scp")
            continue
        transcript = normalize(words)
        end = rec.duration if end is None or end < 0 else min(end, rec.duration)
        if end <= start:
            report.skip(utt, f"utterance {utt}: segment [{start}, {end}] is empty")
            continue
        fault = _transcript_fault(utt, transcript, end - start)
        if fault:
            report.skip(utt, f"{fault} ({data_dir / 'text'})")
            continue
        supervisions.append(
            SupervisionSegment(
                id=utt,
                recording_id=rec_id,
                start=start,
                duration=round(end - start, 6),
                channel=0,
                text=transcript,
                speaker=utt2spk.get(utt, utt),
                language="English",
            )
        )
        report.kept += 1
    used = {s.recording_id for s in supervisions}
    return _write(out, split, [r for r in recordings.values() if r.id in used], supervisions, report)


def import_lhotse(
    recordings_path: str | Path,
    supervisions_path: str | Path,
    out: str | Path,
    split: str = "train",
    check_samples: bool = True,
) -> dict:
    """Import lhotse manifests (any format lhotse reads). Audio is checked the same way."""
    report = ImportReport()
    kept_recs: dict[str, Recording] = {}
    for rec in RecordingSet.from_file(recordings_path):
        if rec.id in kept_recs:
            report.skip(rec.id, f"duplicate recording id {rec.id} in {recordings_path}")
            continue
        src = rec.sources[0]
        if src.type == "file":
            fresh = _recording(rec.id, src.source, report, check_samples)
            if fresh is None:
                continue
        kept_recs[rec.id] = rec
    supervisions, seen = [], set()
    for sup in SupervisionSet.from_file(supervisions_path):
        if sup.id in seen:
            report.skip(sup.id, f"duplicate utterance id {sup.id} in {supervisions_path}")
            continue
        seen.add(sup.id)
        if sup.recording_id not in kept_recs:
            if sup.recording_id not in report.skipped:
                report.skip(sup.id, f"utterance {sup.id}: recording {sup.recording_id} is missing")
            continue
        transcript = normalize(sup.text or "")
        fault = _transcript_fault(sup.id, transcript, sup.duration)
        if fault:
            report.skip(sup.id, fault)
            continue
        supervisions.append(fastcopy(sup, text=transcript))
        report.kept += 1
    used = {s.recording_id for s in supervisions}
    return _write(Path(out), split, [r for r in kept_recs.values() if r.id in used], supervisions, report)


def import_librispeech(
    corpus_dir: str | Path,
    out: str | Path,
    lm_text: str | Path | None = None,
    parts=("train-clean-100", "dev-clean", "test-clean"),
) -> dict:
    """LibriSpeech from local files via lhotse's recipe; parts map to train/dev/test."""
    out = Path(out)
    names = dict(zip(("train", "dev", "test"), parts, strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        manifests = prepare_librispeech(corpus_dir, dataset_parts=list(parts), output_dir=tmp)
        reports = {}
        for split, part in names.items():
            if part not in manifests:
                raise FileNotFoundError(f"LibriSpeech part {part} not found under {corpus_dir}")
            m = manifests[part]
            m["recordings"].to_file(f"{tmp}/r.jsonl")
            m["supervisions"].to_file(f"{tmp}/s.jsonl")
            reports[split] = import_lhotse(f"{tmp}/r.jsonl", f"{tmp}/s.jsonl", out, split)
    if lm_text is not None:
        reports["lm_text"] = import_lm_text(lm_text, out)
    return reports


def import_lm_text(path: str | Path, out: str | Path) -> dict:
    """Normalise a text-only corpus into ``out/lm_text.txt``, dropping every sentence
    that is a dev or test transcript (the LM must not have seen the test set)."""
    out = Path(out)
    held_out = set()
    for split in ("dev", "test"):
        p = out / f"{split}_supervisions.jsonl"
        if p.exists():
            held_out |= {s.text for s in SupervisionSet.from_file(p)}
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = normalize(line)
            if not text:
                continue
            if text in held_out:
                dropped += 1
                continue
            kept.append(text + "\n")
    atomic_write_text(out / "lm_text.txt", "".join(kept))
    return {"sentences": len(kept), "dropped_dev_test": dropped}
