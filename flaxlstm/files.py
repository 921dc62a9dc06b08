"""Files a run writes: whole or not at all, readable as the umask says, and one run per
directory.

``atomic_write`` writes a temporary file beside the target and renames it, so a reader (or a
crash) never sees a half-written file. ``DirectoryLock`` holds an OS file lock on a directory
for a run's whole life: the OS releases it when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``: a
    reader (or a crash) never sees a half-written file. The file gets the permissions a new
    file gets (0666 less the umask). A directory that cannot be written is a one-line
    OSError naming the file."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode("utf-8")))


class DirectoryInUseError(OSError):
    """Another process holds the directory's lock (another run is writing there)."""


class DirectoryLock:
    """An exclusive lock on ``directory`` (``with DirectoryLock(d): ...``), held in the file
    ``directory/.lock``, which also names the holding process. A second lock on the same
    directory, from this process or another, is a DirectoryInUseError at once; the OS releases
    the lock of a process that ends, even by SIGKILL, so a stale file never blocks."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryInUseError(
                f"{self.directory} is in use by another run (process {holder}); wait for it to"
                " end or give another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
