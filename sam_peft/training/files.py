"""Crash-safe file operations of a run folder: a kill at any instant leaves either the old content or the new one,
never a mix (write to a temporary name, flush to the disk, rename into place)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Name prefix of what is being written or removed: never a result, never read as one.
TEMPORARY_PREFIX = ".tmp-"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's content, or a folder's entries (names created or renamed in it), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(directory: str | os.PathLike) -> None:
    """Flush every file and folder below `directory`, and `directory` itself."""
    for root, _, names in os.walk(directory):
        for name in names:
            fsync_path(Path(root, name))
        fsync_path(root)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Replace `path` by what `write(temporary)` writes to a temporary name in the same folder (`.tmp-<pid>-<name>`,
    so with the same extension), flushed to the disk and renamed into place: an error or a kill leaves `path` as it
    was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")
    try:
        write(temporary)
        fsync_path(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` by a file holding `text`, atomically and durably (`write_atomically`)."""
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """`write_text_atomic` of `value` as indented JSON."""
    write_text_atomic(path, json.dumps(value, indent=2))


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete folder `source` to `target`, replacing a folder there; a kill leaves `target` either old or
    new (the old one is renamed aside first, removed last)."""
    fsync_tree(source)
    aside = target.with_name(f"{TEMPORARY_PREFIX}old-{target.name}")
    if aside.exists():
        shutil.rmtree(aside)
    replacing = target.exists()
    if replacing:
        os.replace(target, aside)
    os.replace(source, target)
    fsync_path(target.parent)
    if replacing:
        shutil.rmtree(aside)


@contextmanager
def result_files(output_dir: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder inside `output_dir` to write result files into; when the block ends without an error,
    they are flushed and moved into `output_dir` (replacing files of the same names), and the folder is removed."""
    output_dir = Path(output_dir)
    temporary = output_dir / f"{TEMPORARY_PREFIX}results"
    if temporary.exists():  # left by a kill while the results were written
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    yield temporary
    fsync_tree(temporary)
    for path in sorted(temporary.iterdir()):
        os.replace(path, output_dir / path.name)
    fsync_path(output_dir)
    temporary.rmdir()
