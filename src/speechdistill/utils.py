"""Small helpers shared by every module: atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one,
    never a partial one: write a temporary file beside it, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class UsageError(Exception):
    """A fault in what the user gave (config, data, files, set-up), not in the code: the
    message names it and what to do. The CLI prints these as one line; any other
    exception is a bug and keeps its traceback."""


class DataError(UsageError, ValueError):
    """Input data (a corpus, manifest, alignment, text or model file) that cannot be used."""


class ManifestError(DataError):
    """A manifest that is truncated or corrupt; the message names the file and line."""


def read_jsonl(path: str | Path) -> list[dict]:
    """One JSON object per line. A line cut short (a truncated file) or otherwise not
    JSON is an error naming the file and line, never a silently shorter list."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ManifestError(
                    f"{path}:{n}: not a complete JSON line ({e.msg}); the manifest is "
                    "truncated or corrupt: rebuild or re-import the corpus"
                ) from None
    return rows
