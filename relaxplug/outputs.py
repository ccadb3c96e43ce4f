"""Output files and directories: checked before the work, written atomically, locked while in use.

* :func:`check_output_dir` refuses an output directory that is a file or cannot be written,
  before any compute (it creates the directory and writes and removes a probe file in it).
* :func:`lock_output_dir` holds an exclusive ``fcntl.flock`` on ``<dir>/.relaxplug.lock`` for
  the length of a run, so two runs never write into one directory; the second is refused
  naming the first one's process id.
* :func:`atomic_write` writes a temporary file beside the target (named with the writer's
  process id), fsyncs it and renames it over the target; on any failure the temporary file is
  removed. :func:`remove_orphans` deletes temporary files whose writer process is gone (a kill
  between write and rename leaves one behind).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from relaxplug.errors import RunFailure

__all__ = [
    "LOCK_NAME",
    "OutputDirInUse",
    "OutputError",
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "lock_output_dir",
    "remove_orphans",
]

LOCK_NAME = ".relaxplug.lock"


class OutputError(ValueError):
    """An output path that cannot be used: an existing file where a directory is needed, or not writable."""


class OutputDirInUse(RunFailure):
    """Another process holds the output directory's lock."""


def _describe(error: OSError) -> str:
    return error.strerror or type(error).__name__


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and prove it writable (a probe file); raise :class:`OutputError` otherwise."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{what} '{target}' is an existing file, not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target, prefix=".relaxplug-probe."):
            pass
    except OSError as error:
        raise OutputError(f"{what} '{target}' cannot be created or written: {_describe(error)}") from error
    return target


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written: not a directory, its directory writable."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{what} '{target}' is an existing directory, not a file")
    check_output_dir(target.parent, f"directory of {what}")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"{what} '{target}' is not writable")
    return target


@contextlib.contextmanager
def lock_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on output directory ``path`` (created if needed) while the block runs.

    The lock is ``fcntl.flock`` on ``<path>/.relaxplug.lock``: the kernel releases it when the
    holder exits, killed or not, so a stale lock file never blocks a later run.
    """
    target = check_output_dir(path)
    lock_path = target / LOCK_NAME
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputDirInUse(
                f"output directory '{target}' is in use by another relaxplug run (pid {holder}); "
                "wait for it or choose another out_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield target
    finally:
        handle.close()  # releases the flock


_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete ``.<name>.<pid>.<random>.tmp`` files in ``directory`` whose writer process is gone.

    ``name`` restricts it to the temporary files of one target; returns the removed paths.
    """
    folder = Path(directory)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TMP.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if int(match["pid"]) != os.getpid() and _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str = "file") -> Path:
    """Write ``path`` by ``write(handle)`` into a temporary sibling, fsync, then ``os.replace``.

    A failure (disk full included) removes the temporary file and raises ``OSError`` naming the
    target; the previous content of ``path``, if any, is kept.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as error:
        _unlink(tmp)
        raise OSError(error.errno, f"cannot write {what} '{target}': {_describe(error)}") from error
    except RuntimeError as error:  # torch.save reports write failures as an internal RuntimeError
        _unlink(tmp)
        free = shutil.disk_usage(target.parent).free / 2**20
        raise OSError(errno.EIO, f"cannot write {what} '{target}': the write failed (disk full or over a "
                                 f"file size limit? {free:.0f} MiB free there)") from error
    except BaseException:
        _unlink(tmp)
        raise
    return target


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
