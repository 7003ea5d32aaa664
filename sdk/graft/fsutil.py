"""Writes that survive kill -9 and power loss: the one atomic-write helper of Graft.

A reader (another rank, a resumed run, a person) must see either the old content or the new,
never half of it. So a file is written beside its destination under a temporary name, flushed
and fsynced, renamed over the destination (rename is atomic on POSIX), and the directory is
fsynced so the rename itself is on disk. A directory of files (a checkpoint, an exported
model) is written the same way one level up: files fsynced, then the directory renamed.

No torch here: the trainer and the SDK both use it (`graft.spec` stays free of I/O).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


def atomic_write(path: str | Path, content: bytes | str | Callable[[Path], object], *, durable: bool = True) -> Path:
    """Replace `path` with `content` (bytes, text, or a function that writes a given path).
    `durable=False` skips the fsyncs, for files only live processes read (heartbeats)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def publish_dir(tmp: str | Path, final: str | Path, *, replace: bool = True) -> Path:
    """Make the fully written directory `tmp` appear as `final`. An older `final` is replaced,
    or with `replace=False` kept (then `tmp` is dropped: another writer's identical copy won)."""
    tmp, final = Path(tmp), Path(final)
    for file in tmp.rglob("*"):
        if file.is_file():
            fsync_file(file)
    for directory in [tmp, *(d for d in tmp.rglob("*") if d.is_dir())]:
        fsync_dir(directory)
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(final)  # the older copy goes first; a crash here leaves tmp, never half of final
    try:
        os.replace(tmp, final)
    except OSError:  # `final` appeared meanwhile (a concurrent writer)
        if replace:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)
    return final


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (a rename inside it); a no-op where directories cannot be
    opened for reading."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
