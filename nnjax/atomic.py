"""Files written atomically: a reader, or a crash at any point, sees the old file or the whole
new one, never a part.

Every file nnjax writes goes through `write_atomically`: the dataset's IDX files and manifest,
a run's checkpoint, metrics, results and curves, the figures, and the results of the
experiments and benchmarks. It imports nothing of nnjax (nor matplotlib), so `nnjax.data` can
use it.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

__all__ = ["write_atomically", "write_text", "write_json", "write_figure", "remove_temporary_files"]

TEMPORARY_SUFFIX = ".tmp"
"""The end of every temporary file's name, `.<name>.<random hex>.tmp`."""


def write_atomically(path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> Path:
    """Calls ``write(file)`` on a new temporary file beside `path`, then renames it over `path`.

    The temporary file is ``.<name>.<random hex>.tmp`` in the same folder (a rename within a
    folder is atomic); it is removed if `write` fails. A killed program leaves it behind:
    `remove_temporary_files` deletes such leftovers.

    Args:
      path: the file to write; its folder is created if missing.
      write: writes the contents to the binary file object it is given.
      durable: also flush the file to disk before the rename and the folder after it, so the
        new file survives a power loss too (checkpoints, datasets); without, a crash of the
        program still leaves the old file or the new one.

    Returns:
      `path`, as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}{TEMPORARY_SUFFIX}"
    try:
        with open(temporary, "xb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def write_text(path, text: str, *, durable: bool = False) -> Path:
    """`text` as UTF-8, written with `write_atomically`."""
    data = text.encode()
    return write_atomically(path, lambda file: file.write(data), durable=durable)


def write_json(path, value, *, durable: bool = False) -> Path:
    """`value` as indented JSON with a final newline, written with `write_atomically`."""
    return write_text(path, json.dumps(value, indent=2) + "\n", durable=durable)


def write_figure(path, fig, *, dpi: float | None = None, durable: bool = False) -> Path:
    """A matplotlib figure saved with `write_atomically`, in the format its suffix names
    (``.png``, ``.svg``, ``.pdf``, ...); a path without one gets ``.png``, as
    ``fig.savefig(path)`` names it.

    Args:
      path: the image file.
      fig: a `matplotlib.figure.Figure`.
      dpi: dots per inch; None keeps the figure's own.

    Returns:
      The path written.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    image_format = path.suffix.lstrip(".")
    return write_atomically(path, lambda file: fig.savefig(file, format=image_format, dpi=dpi or fig.dpi),
                            durable=durable)


def remove_temporary_files(folder, names: Iterable[str]) -> list[Path]:
    """Deletes the temporary files that a killed `write_atomically` of one of `names` left in
    `folder` (never a finished file); returns the paths deleted."""
    folder = Path(folder)
    prefixes = tuple(f".{name}." for name in names)
    stale = [path for path in folder.iterdir()
             if path.name.startswith(prefixes) and path.name.endswith(TEMPORARY_SUFFIX)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_folder(folder: Path) -> None:
    """Flushes a folder's entries to disk, where the OS lets a folder be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
