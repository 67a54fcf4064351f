"""Small helpers shared by every module: atomic file writes."""

from __future__ import annotations

import json
import os
import re
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


class DirLock:
    """An exclusive lock on a directory (``{dir}/.lock``, ``fcntl.flock``), so that two
    processes never write one run or one corpus stage at once.

    The lock file holds the holder's pid and host while it is held and is emptied on
    release; the kernel drops the lock when its process dies, so a file still naming a
    pid is the trace of a process that was killed: reported, then taken over. flock is
    advisory and local: on NFS use a separate directory per run.
    """

    def __init__(self, directory: str | Path, what: str = "run directory"):
        self.dir, self.what = Path(directory), what
        self.path = self.dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        import fcntl
        import socket
        import time

        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UsageError(
                f"{self.what} {self.dir} is in use by {holder}; wait for it to finish, stop it, "
                "or choose another directory"
            ) from None
        stale = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if stale:
            import logging

            logging.getLogger(__name__).warning(
                "%s %s: a stale lock of %s (no longer running: killed or crashed) was taken over",
                self.what,
                self.dir,
                stale,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%F %T')}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_+@=-]*(?:\.[A-Za-z0-9_+@=-]+)*")


def check_split_name(name: str, what: str = "split") -> str:
    """``name`` if it is an identifier that can be a file-name part (``train``,
    ``test_clean``, ``dev-other``, ``phone@own``): never a path (``../..``, ``a/b``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 100:
        raise UsageError(
            f"{what} name {name!r} is not an identifier: use letters, digits, _ and - (e.g. train, test_clean); "
            "it becomes part of file names, so it cannot hold / or .."
        )
    return name
