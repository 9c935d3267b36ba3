"""Writing files so that a crash, a kill, a full disk or a failed check never leaves a half-written one behind.

Every write goes to a temporary file in the destination folder (a rename within one file system is atomic; a move
from the system's temp folder is a copy), is flushed to the disk, then renamed over the destination. The temporary
file's name carries the writing process's id, so a later write to the same destination clears what a killed
process left.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from vgg_lightning.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)


class DiskFullError(DataError):
    """A write ran out of space; the files that were there before are unchanged."""

    def __init__(self, path: Path, needed: int, free: int, hint: str) -> None:
        super().__init__(
            f"no space left on the device for {path}: it needs about {megabytes(needed)}, {megabytes(free)} are free"
            f" there. Free some space, or {hint}. The files written before are unchanged."
        )


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def display_name(path: object) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 shown as escapes (``\\xff``)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_dead_partials(path: Path) -> None:
    """Delete the temporary files of writes to ``path`` whose process is gone (killed while writing)."""
    for partial in path.parent.glob(f"{path.name}.*.partial"):
        pid = partial.name[len(path.name) + 1 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            partial.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path, needed: Optional[int] = None, hint: str = "write it elsewhere") -> Iterator[Path]:
    """A temporary file beside ``path`` to write; when the block ends without an exception it is flushed to disk and
    replaces ``path`` in one rename, else it is deleted and ``path`` stays as it was. Running out of space is a
    DiskFullError naming the size (``needed``, else what was written when the space ran out) and ``hint``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_partials(path)
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # as a plain open() would create it, not mkstemp's owner-only 0600
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on the disk before the rename makes it the file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(path, max(needed or 0, written), free, hint) from None
        raise


def write_bytes_atomically(path: Path, data: bytes, hint: str = "write it elsewhere") -> Path:
    with atomic_path(path, needed=len(data), hint=hint) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text_atomically(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
